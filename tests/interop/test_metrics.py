"""The echo binary's /metrics (Prometheus text format) and /stats (JSON) endpoints.

A known amount of traffic goes through the `websockets` client, then /metrics is
parsed with prometheus_client's own parser of the text format, so the exposition is
checked by an independent reader rather than by our own string matching. Every
connection goes to 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from conftest import _no_proxy_opener, http_get, run

CONNECTIONS = 2
MESSAGES = 5


def scrape(server) -> tuple[dict, dict]:
    """GET /metrics, parsed: ({family name: type}, {(sample name, labels): value})."""
    with http_get(server.http("/metrics")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    types, samples = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, samples


def stats_json(server) -> dict:
    with http_get(server.http("/stats")) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json"
        return json.loads(response.read())


async def traffic(server) -> None:
    async def one(n: int) -> None:
        async with connect(server.ws("/echo"), proxy=None, open_timeout=5,
                           close_timeout=5) as ws:
            for i in range(MESSAGES):
                text = f"conn {n} message {i}"
                await ws.send(text)
                assert await asyncio.wait_for(ws.recv(), 5) == text
        # Leaving the block closes with 1000 and waits for the server's close frame.

    await asyncio.gather(*(one(n) for n in range(CONNECTIONS)))


def settled(server, deadline: float = 5.0):
    """Scrapes until every connection is reported closed: the loop settles the
    closes (and copies its gauges) asynchronously to the client's view."""
    end = time.monotonic() + deadline
    while True:
        types, samples = scrape(server)
        if (samples.get(("wsreactor_open_connections", ())) == 0
                and samples.get(("wsreactor_closes_total", (("code", "1000"),)))
                == CONNECTIONS):
            return types, samples
        if time.monotonic() > end:
            pytest.fail(f"not settled after {deadline} s: {samples}")
        time.sleep(0.05)


def test_metrics_count_known_traffic(servers):
    server = servers("wsreactor")
    run(traffic(server), timeout=20)
    types, samples = settled(server)

    # Every family is there with its type (the parser names a counter family
    # without its _total suffix; its samples keep it).
    for counter in ("accepted", "refused", "handshakes", "http_responses", "messages_in",
                    "messages_out", "bytes_in", "bytes_out", "fanout_frames_encoded",
                    "fanout_deliveries", "protocol_errors", "handler_panics",
                    "sends_refused", "messages_dropped", "queue_full_closes",
                    "incoming_budget_closes", "outgoing_budget_closes",
                    "message_timeouts", "loop_stalls", "closes"):
        assert types.get(f"wsreactor_{counter}") == "counter", counter
    for gauge in ("open_connections", "handshakes_in_progress", "deadline_entries",
                  "incoming_bytes", "outgoing_bytes", "topic_memberships",
                  "inflaters_lent"):
        assert types.get(f"wsreactor_{gauge}") == "gauge", gauge

    def value(name, **labels):
        return samples[(name, tuple(sorted(labels.items())))]

    total = CONNECTIONS * MESSAGES
    assert value("wsreactor_messages_in_total") == total
    assert value("wsreactor_messages_out_total") == total
    assert value("wsreactor_handshakes_total") == CONNECTIONS
    assert value("wsreactor_open_connections") == 0
    assert value("wsreactor_closes_total", code="1000") == CONNECTIONS
    # The scrapes are TCP connections too (a response is counted once it is sent,
    # so a scrape does not see itself in http_responses: checked on /stats below).
    assert value("wsreactor_accepted_total") >= CONNECTIONS + 1
    assert value("wsreactor_protocol_errors_total") == 0
    assert value("wsreactor_handler_panics_total") == 0
    sent = sum(len(f"conn {n} message {i}") for n in range(CONNECTIONS)
               for i in range(MESSAGES))
    assert value("wsreactor_bytes_in_total") == sent
    assert value("wsreactor_bytes_out_total") == sent
    # Everyone has gone: the bounds are back at zero, but for the scrape itself,
    # which may have been accepted (and still upgrading) when the gauges were copied
    # at the end of the turn before the one that answered it.
    assert value("wsreactor_handshakes_in_progress") <= 1
    for gauge in ("incoming_bytes", "outgoing_bytes",
                  "topic_memberships", "inflaters_lent"):
        assert value(f"wsreactor_{gauge}") == 0, gauge

    # /stats says the same.
    stats = stats_json(server)
    assert stats["messages_in"] == total
    assert stats["messages_out"] == total
    assert stats["handshakes"] == CONNECTIONS
    assert stats["open_connections"] == 0
    assert stats["closes"] == {"1000": CONNECTIONS}
    assert stats["bytes_in"] == sent
    assert stats["http_responses"] >= 1  # the scrapes before this request


def test_stats_endpoints_can_be_turned_off(servers):
    server = servers("wsreactor", None, "--no-stats-endpoints")
    for path in ("/metrics", "/stats"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            http_get(server.http(path))
        assert refused.value.code == 404, path
    with http_get(server.http("/")) as response:
        assert response.status == 200


def test_stats_honour_the_origin_allow_list(servers):
    server = servers("wsreactor", None, "--allowed-origin", "http://ok.example")

    def get(path: str, origin: str | None):
        request = urllib.request.Request(server.http(path))
        if origin is not None:
            request.add_header("Origin", origin)
        return _no_proxy_opener.open(request, timeout=5)

    for path in ("/stats", "/metrics"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            get(path, "http://evil.example")
        assert refused.value.code == 403, path
        with get(path, "http://ok.example") as response:
            assert response.status == 200
        with get(path, None) as response:
            assert response.status == 200

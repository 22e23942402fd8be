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
                    "message_timeouts", "loop_stalls", "cluster_published",
                    "cluster_publishes_dropped", "cluster_received",
                    "cluster_received_dropped", "tls_handshake_failures", "closes"):
        assert types.get(f"wsreactor_{counter}") == "counter", counter
    for gauge in ("open_connections", "handshakes_in_progress", "deadline_entries",
                  "incoming_bytes", "outgoing_bytes", "send_pool_bytes",
                  "topic_memberships", "inflaters_lent", "timers_pending",
                  "cluster_connected"):
        assert types.get(f"wsreactor_{gauge}") == "gauge", gauge
    for histogram in ("turn_seconds", "callback_seconds", "ping_rtt_seconds",
                      "flush_bytes"):
        assert types.get(f"wsreactor_{histogram}") == "histogram", histogram

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
                  "topic_memberships", "inflaters_lent", "timers_pending"):
        assert value(f"wsreactor_{gauge}") == 0, gauge

    # Histograms: cumulative buckets that end in +Inf == _count. Every on_message
    # (and on_request, on_open, on_close...) was timed; every echo was flushed.
    for histogram in ("turn_seconds", "callback_seconds", "flush_bytes"):
        name = f"wsreactor_{histogram}"
        buckets = sorted(
            (float(labels[0][1]), v) for (sample, labels), v in samples.items()
            if sample == f"{name}_bucket")
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), f"{name} buckets are not cumulative: {buckets}"
        assert buckets[-1][0] == float("inf")
        assert buckets[-1][1] == value(f"{name}_count"), name
    assert value("wsreactor_callback_seconds_count") >= total
    assert value("wsreactor_flush_bytes_count") >= total
    # No echo here took a second in a callback.
    assert value("wsreactor_callback_seconds_bucket", le="1.048576") == \
        value("wsreactor_callback_seconds_count")
    assert value("wsreactor_turn_seconds_count") > 0

    # /stats says the same.
    stats = stats_json(server)
    assert stats["messages_in"] == total
    assert stats["messages_out"] == total
    assert stats["handshakes"] == CONNECTIONS
    assert stats["open_connections"] == 0
    assert stats["closes"] == {"1000": CONNECTIONS}
    assert stats["bytes_in"] == sent
    assert stats["http_responses"] >= 1  # the scrapes before this request
    callbacks = stats["callback_micros"]
    assert sum(callbacks["buckets"]) == callbacks["count"] >= total


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


def test_stats_stream_sends_the_stats_on_open_then_every_second(servers):
    server = servers("wsreactor")

    async def watch():
        async with connect(server.ws("/stats/ws"), proxy=None, open_timeout=5,
                           close_timeout=5) as viewer:
            started = time.monotonic()
            first = json.loads(await asyncio.wait_for(viewer.recv(), 2))
            assert time.monotonic() - started < 0.5, "the first sample comes at once"
            assert first["open_connections"] >= 0 and "closes" in first
            # Its own messages are not echoed; the next thing it gets is a sample.
            await viewer.send("not an echo")
            await traffic(server)
            samples = [json.loads(await asyncio.wait_for(viewer.recv(), 3))
                       for _ in range(2)]
            assert "not an echo" not in [json.dumps(s) for s in samples]
            # The traffic shows up; the viewer's own message was counted in.
            assert samples[-1]["messages_in"] >= CONNECTIONS * MESSAGES + 1
            return time.monotonic() - started

    elapsed = run(watch(), timeout=20)
    # Two ticks after the first sample: about two seconds, not a flood.
    assert 1.0 < elapsed < 5.0, elapsed


def test_stats_stream_is_off_with_the_endpoints(servers):
    from websockets.exceptions import InvalidStatus

    server = servers("wsreactor", None, "--no-stats-endpoints")

    async def refused():
        with pytest.raises(InvalidStatus) as error:
            async with connect(server.ws("/stats/ws"), proxy=None, open_timeout=5):
                pass
        assert error.value.response.status_code == 404

    run(refused(), timeout=10)

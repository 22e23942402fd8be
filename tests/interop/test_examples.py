"""The example binaries (chat, embed, reject, ticker) against the `websockets` client."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.exceptions import InvalidStatus

from conftest import client, recv, recv_until, run


# chat -------------------------------------------------------------------------------


def test_chat_broadcasts_one_clients_message_to_the_others(servers):
    chat = servers("chat")

    async def go():
        async with client(chat.ws("/chat?name=alice")) as alice, \
                client(chat.ws("/chat?name=bob")) as bob, \
                client(chat.ws("/chat?name=carol")) as carol:
            # Everyone is in the room once everyone has seen carol join.
            for ws in (alice, bob, carol):
                await recv_until(ws, "* carol joined")
            await alice.send("hello from alice")
            for name, ws in (("bob", bob), ("carol", carol), ("alice", alice)):
                got = await recv(ws)
                assert got == "alice: hello from alice", f"{name} got {got!r}"
            await carol.send(b"binary is not chat")  # the example ignores non-text
            await bob.send("hi all")
            for ws in (alice, bob, carol):
                assert await recv(ws) == "bob: hi all"

    run(go(), 20)


def test_chat_names_a_nameless_client_guest(servers):
    chat = servers("chat")

    async def go():
        async with client(chat.ws("/chat")) as guest, \
                client(chat.ws("/chat?name=bad%20name")) as other:
            assert await recv(guest) == "* guest-1 joined"
            await recv_until(guest, "* guest-2 joined")
            await other.send("hi")
            assert await recv(guest) == "guest-2: hi"

    run(go(), 15)


# embed ------------------------------------------------------------------------------


def tick_number(message) -> int | None:
    if isinstance(message, str) and message.startswith("tick "):
        return int(message[5:])
    return None


async def collect_ticks(ws, seconds: float, probes=()) -> tuple[list[int], list]:
    """Ticks received in `seconds`, and everything else; sends `probes` halfway."""
    ticks, others = [], []
    start = time.monotonic()
    deadline = start + seconds
    probed = not probes
    while (left := deadline - time.monotonic()) > 0:
        if not probed and time.monotonic() - start >= seconds / 2:
            for probe in probes:
                await ws.send(probe)
            probed = True
        try:
            message = await asyncio.wait_for(ws.recv(), min(left, 0.1))
        except TimeoutError:
            continue
        n = tick_number(message)
        if n is None:
            others.append(message)
        else:
            ticks.append(n)
    return ticks, others


def test_embed_delivers_ticks_while_echoing(servers):
    embed = servers("embed")

    async def go():
        # max_queue=None: by default websockets stops reading the socket once 16 received
        # messages wait unread, and its close() does not read on, so with ticks arriving
        # every millisecond it would not see the server's close reply or FIN and both
        # sides would sit out their 5 s close timeouts. Unbounded is fine for a second.
        async with client(embed.ws("/"), max_queue=None) as echoing, \
                client(embed.ws("/"), max_queue=None) as listening:
            # Wait for the first tick on each, then count for one second on both at once.
            for ws in (echoing, listening):
                first = await recv(ws, 5)
                assert tick_number(first) is not None, f"first message {first!r}"
            probes = ["echo me", b"\x00\x01 binary echo"]
            (ticks, others), (ticks2, others2) = await asyncio.gather(
                collect_ticks(echoing, 1.0, probes), collect_ticks(listening, 1.0)
            )
            # The echoes may come after the window closes, behind queued ticks.
            while len(others) < len(probes):
                message = await recv(echoing, 5)
                if tick_number(message) is None:
                    others.append(message)
            assert others == probes
            assert others2 == []
            for name, got in (("echoing", ticks), ("listening", ticks2)):
                assert len(got) >= 500, f"{name} client: {len(got)} ticks in 1 s"
                bad = [(a, b) for a, b in zip(got, got[1:]) if b <= a]
                assert not bad, f"{name} client: ticks not increasing at {bad[:5]}"
            # The close handshake completes promptly while ticks keep being published.
            for name, ws in (("listening", listening), ("echoing", echoing)):
                start = time.monotonic()
                await asyncio.wait_for(ws.close(), 10)
                took = time.monotonic() - start
                received = ws.protocol.close_rcvd
                assert received is not None and received.code == 1000, (
                    f"{name} client: server answered close with {received}")
                assert took < 2, f"{name} client: closing took {took:.2f} s"

    run(go(), 20)


# reject -----------------------------------------------------------------------------


def test_reject_accepts_the_v1_demo_subprotocol(servers):
    reject = servers("reject")

    async def go():
        async with client(reject.ws("/"), subprotocols=["v2.other", "v1.demo"]) as ws:
            assert ws.subprotocol == "v1.demo"
            assert ws.response.headers["Sec-WebSocket-Protocol"] == "v1.demo"
            await ws.send("hello")
            assert await recv(ws) == "hello"
        # An allowed Origin (a page served from localhost:9998) is let through too.
        async with client(reject.ws("/"), subprotocols=["v1.demo"],
                          origin="http://localhost:9998") as ws:
            await ws.send(b"hi")
            assert await recv(ws) == b"hi"

    run(go(), 15)


@pytest.mark.parametrize(
    "subprotocols, origin, status",
    [
        (None, None, 400),
        (["v2.other"], None, 400),
        (["v1.demo"], "https://evil.example", 403),
        (None, "https://evil.example", 403),
    ],
    ids=["no-subprotocol", "other-subprotocol", "foreign-origin", "foreign-origin-no-subprotocol"],
)
def test_reject_refuses(servers, subprotocols, origin, status):
    reject = servers("reject")

    async def go():
        with pytest.raises(InvalidStatus) as e:
            async with client(reject.ws("/"), subprotocols=subprotocols, origin=origin):
                pass
        assert e.value.response.status_code == status, e.value

    run(go(), 15)


# ticker ------------------------------------------------------------------------------


def test_ticker_publishes_from_a_loop_timer_and_reports_round_trips(servers):
    import json

    ticker = servers("ticker", None, "--every", "50")

    async def go():
        # websockets answers the server's keepalive pings itself, as browsers do.
        async with client(ticker.ws("/prices")) as ws:
            started = time.monotonic()
            prices, rtt = [], None
            async with asyncio.timeout(10):
                while rtt is None or len(prices) < 20:
                    update = json.loads(await ws.recv())
                    if update["type"] == "price":
                        prices.append(update)
                    elif update["type"] == "rtt":
                        rtt = update["micros"]
            elapsed = time.monotonic() - started
            seqs = [p["seq"] for p in prices]
            # In order, none missed by a client that keeps up.
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
            assert all(p["symbol"] == "WSR" and p["price"] >= 1.0 for p in prices)
            # Every 50 ms: 20 updates take about a second, not a burst.
            assert len(prices) / elapsed < 40, (len(prices), elapsed)
            # A ping after 1 s of silence, its round trip reported at the 2 s timer:
            # loopback, answered at once.
            assert 0 < rtt < 1_000_000, rtt

    run(go(), 20)

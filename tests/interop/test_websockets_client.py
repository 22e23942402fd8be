"""The `wsreactor` echo binary against the `websockets` client (asyncio implementation).

Every connection goes to 127.0.0.1 with proxy=None (websockets reads proxy variables
from the environment by default), and every await is bounded.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import time
import urllib.error

import pytest
from websockets.asyncio.client import connect

from conftest import http_get, run

MAX_SIZE = 4 * 1024 * 1024
SIZES = [0, 125, 126, 65536, 1 << 20]
RECV = 10.0  # seconds for any one recv


def client(url: str, **kwargs):
    options = dict(proxy=None, open_timeout=5, close_timeout=5, max_size=MAX_SIZE)
    options.update(kwargs)
    return connect(url, **options)


async def recv(ws, timeout: float = RECV):
    return await asyncio.wait_for(ws.recv(), timeout)


def text_of_size(size: int) -> str:
    """A str whose UTF-8 encoding is exactly `size` bytes, with 1- to 4-byte characters."""
    unit = "aé€😀"  # 1 + 2 + 3 + 4 bytes
    encoded = (unit * (size // 10 + 1)).encode()[:size]
    text = encoded.decode("utf-8", errors="ignore")
    text += "a" * (size - len(text.encode()))
    assert len(text.encode()) == size
    return text


def assert_same(got, want) -> None:
    """Compares long payloads without printing megabytes on failure."""
    if got == want:
        return
    if type(got) is not type(want):
        raise AssertionError(f"got a {type(got).__name__}, sent a {type(want).__name__}")
    first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
    raise AssertionError(
        f"echo differs: got {len(got)} {'chars' if isinstance(got, str) else 'bytes'}, "
        f"sent {len(want)}; first difference at index {first}"
    )


@pytest.mark.parametrize("size", SIZES)
def test_text_echo(live_echo_server, size):
    message = text_of_size(size)

    async def go():
        async with client(live_echo_server.ws("/echo")) as ws:
            await ws.send(message)
            assert_same(await recv(ws), message)

    run(go(), 30)


@pytest.mark.parametrize("size", SIZES)
def test_binary_echo(live_echo_server, size):
    message = random.Random(size).randbytes(size)

    async def go():
        async with client(live_echo_server.ws("/echo")) as ws:
            await ws.send(message)
            assert_same(await recv(ws), message)

    run(go(), 30)


def test_fragmented_text_message(live_echo_server):
    fragments = ["Message ", "in ", "", "four fragments: ", "ü€😀"]

    async def go():
        async with client(live_echo_server.ws("/echo")) as ws:
            await ws.send(fragments)  # an iterable: one frame per item, one message
            assert_same(await recv(ws), "".join(fragments))

    run(go(), 15)


def test_fragmented_binary_message_from_async_iterator(live_echo_server):
    rng = random.Random(7)
    fragments = [rng.randbytes(n) for n in (1, 125, 126, 65535, 65536, 100_000, 0, 3)]

    async def chunks():
        for fragment in fragments:
            yield fragment
            await asyncio.sleep(0)  # let each fragment reach the socket on its own

    async def go():
        async with client(live_echo_server.ws("/echo")) as ws:
            await ws.send(chunks())
            assert_same(await recv(ws), b"".join(fragments))
            # The connection is still usable afterwards.
            await ws.send("after")
            assert await recv(ws) == "after"

    run(go(), 15)


def test_ping_is_answered_with_pong(live_echo_server):
    async def go():
        async with client(live_echo_server.ws("/echo")) as ws:
            for payload in (b"", b"ping payload", bytes(range(125))):
                pong = await ws.ping(payload)
                # The future resolves when a pong with the same payload arrives.
                await asyncio.wait_for(pong, 5)
            await ws.send("still echoing")
            assert await recv(ws) == "still echoing"

    run(go(), 15)


def test_close_1000_with_reason_is_echoed(live_echo_server):
    async def go():
        async with client(live_echo_server.ws("/echo")) as ws:
            await ws.send("hi")
            assert await recv(ws) == "hi"
            start = time.monotonic()
            await asyncio.wait_for(ws.close(1000, "bye"), 10)
            took = time.monotonic() - start
            # websockets waits (up to close_timeout, 5 s) for the server to end TCP.
            assert took < 2, f"closing handshake + TCP close took {took:.2f} s"
            sent, received = ws.protocol.close_sent, ws.protocol.close_rcvd
            assert (sent.code, sent.reason) == (1000, "bye")
            assert received is not None, "no close frame from the server (TCP closed without one)"
            assert received.code == 1000, f"server answered close 1000 with {received}"
            assert ws.close_code == 1000

    run(go(), 15)


def test_permessage_deflate_offer_is_declined_by_default(live_echo_server):
    compressible = "a" * (1 << 20)

    async def go():
        # websockets offers permessage-deflate unless told compression=None.
        async with client(live_echo_server.ws("/echo")) as ws:
            offered = ws.request.headers.get("Sec-WebSocket-Extensions", "")
            assert "permessage-deflate" in offered, f"client did not offer it: {offered!r}"
            assert "Sec-WebSocket-Extensions" not in ws.response.headers, (
                "server negotiated an extension: "
                f"{ws.response.headers.get_all('Sec-WebSocket-Extensions')}"
            )
            assert ws.protocol.extensions == []
            await ws.send(compressible)
            assert_same(await recv(ws), compressible)
            await ws.send(b"\x00" * 1000)
            assert await recv(ws) == b"\x00" * 1000

    run(go(), 20)


@pytest.mark.parametrize("flags", [("--deflate",), ("--deflate-takeover",)],
                         ids=["deflate", "deflate-takeover"])
def test_permessage_deflate_when_enabled(servers, flags):
    """With --deflate (opt-in) websockets' default offer is accepted and used both ways."""
    server = servers("wsreactor", None, *flags)
    rng = random.Random(1)
    messages = [
        "", "short", "a" * 1000, text_of_size(65536), "z" * (1 << 20),
        b"", b"\x00" * 5000, rng.randbytes(200_000),  # incompressible
    ]

    async def go():
        async with client(server.ws("/echo")) as ws:
            answer = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert answer.startswith("permessage-deflate"), f"extensions answer: {answer!r}"
            assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]
            for message in messages:
                await ws.send(message)
                assert_same(await recv(ws), message)
            await ws.send(["frag", "mented ", "and compressed" * 100])
            assert_same(await recv(ws), "fragmented " + "and compressed" * 100)
            await asyncio.wait_for(ws.close(), 10)
            assert ws.protocol.close_rcvd is not None and ws.protocol.close_rcvd.code == 1000

    run(go(), 30)


def test_many_concurrent_clients(live_echo_server):
    count = 200

    async def go():
        # All connections open at once, then all send, then all read their own echoes.
        conns = await asyncio.gather(
            *(client(live_echo_server.ws("/echo"), compression=None) for _ in range(count))
        )
        try:
            await asyncio.gather(*(ws.send(f"client {i} says hello") for i, ws in enumerate(conns)))
            await asyncio.gather(*(ws.send(i.to_bytes(4, "big") * 100) for i, ws in enumerate(conns)))
            texts = await asyncio.gather(*(recv(ws, 20) for ws in conns))
            blobs = await asyncio.gather(*(recv(ws, 20) for ws in conns))
            assert texts == [f"client {i} says hello" for i in range(count)]
            assert blobs == [i.to_bytes(4, "big") * 100 for i in range(count)]
        finally:
            await asyncio.gather(*(asyncio.wait_for(ws.close(), 10) for ws in conns),
                                 return_exceptions=True)
        assert all(ws.close_code == 1000 for ws in conns), [ws.close_code for ws in conns]

    run(go(), 45)


def test_demo_page_and_plain_get(live_echo_server):
    with http_get(live_echo_server.http("/")) as response:
        assert response.status == 200
        assert response.headers.get_content_type() == "text/html"
        page = response.read().decode()
    assert "<title>wsreactor echo</title>" in page
    assert "/echo" in page and "__ECHO_PATH__" not in page
    with pytest.raises(urllib.error.HTTPError) as e:
        http_get(live_echo_server.http("/echo"))
    assert e.value.code == 426


def test_sigterm_closes_every_client_with_1001_and_exits_0(servers):
    server = servers("wsreactor")
    count = 20

    async def go():
        conns = await asyncio.gather(*(client(server.ws("/echo")) for _ in range(count)))
        # An echo on each proves the server has every one of them open.
        for i, ws in enumerate(conns):
            await ws.send(f"before shutdown {i}")
            assert await recv(ws) == f"before shutdown {i}"
        server.expect_exit = True
        server.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*(asyncio.wait_for(ws.wait_closed(), 10) for ws in conns))
        codes = [ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None for ws in conns]
        assert codes == [1001] * count, f"close codes received: {codes}"

    run(go(), 30)
    code = server.proc.wait(timeout=10)
    assert code == 0, f"exit status {code}; log tail:\n{server.log_tail()}"


def test_sigterm_with_no_clients_exits_0(servers):
    server = servers("wsreactor")
    # An answered GET shows the event loop is running (and so, in main.rs, that the
    # signal handler is installed); the next test is about the moments before that.
    http_get(server.http("/")).close()
    server.expect_exit = True
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(timeout=10)
    assert code == 0, f"exit status {code}; log tail:\n{server.log_tail()}"


def test_sigterm_as_soon_as_the_port_accepts_exits_0(servers):
    """What a supervisor sees when it stops a server it has just seen listening."""
    outcomes = []
    for _ in range(30):
        server = servers("wsreactor")
        server.expect_exit = True
        server.proc.send_signal(signal.SIGTERM)
        try:
            outcomes.append(server.proc.wait(timeout=5))
        except subprocess.TimeoutExpired:
            outcomes.append(f"pid {server.pid} still running 5 s after SIGTERM")
            server.stop()
    assert outcomes == [0] * len(outcomes), f"exit statuses: {outcomes}"

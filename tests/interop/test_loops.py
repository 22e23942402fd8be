"""Several loops (`--threads 2`): the chat and embed examples and the binary's topic
rooms and stats, against the `websockets` client.

Which loop a connection lands on is the kernel's choice (SO_REUSEPORT hashes the
client's port): with 16 connections the chance that all land on one loop is 2^-15,
and the binary's test checks from /metrics that both loops hold some.
"""

from __future__ import annotations

import asyncio
import json
import time


from conftest import client, http_get, recv, recv_until, run
from test_metrics import scrape

CLIENTS = 16


def test_chat_with_two_loops_reaches_every_member(servers):
    chat = servers("chat", None, "--threads", "2")

    async def go():
        members = []
        try:
            for n in range(CLIENTS):
                members.append(await client(chat.ws(f"/chat?name=m{n}")).__aenter__())
            last = f"* m{CLIENTS - 1} joined"
            for ws in members:
                await recv_until(ws, last)
            await members[3].send("hello from m3")
            await members[11].send("and from m11")
            for n, ws in enumerate(members):
                got = {await recv(ws), await recv(ws)}
                assert got == {"m3: hello from m3", "m11: and from m11"}, f"m{n}: {got}"
        finally:
            for ws in members:
                await ws.close()

    run(go(), 30)


def test_embed_with_two_loops_delivers_every_tick_in_order(servers):
    embed = servers("embed", None, "--threads", "2")

    async def go():
        listeners = [await client(embed.ws("/"), max_queue=None).__aenter__()
                     for _ in range(CLIENTS)]
        try:
            for n, ws in enumerate(listeners):
                first = None
                got = []
                while len(got) < 200:
                    message = await recv(ws, 5)
                    tick = int(message[5:])
                    if first is None:
                        first = tick
                    got.append(tick)
                # Every tick, consecutively, on whichever loop: the publisher's order
                # is kept and none is lost on the way between loops.
                assert got == list(range(first, first + 200)), f"client {n}: {got[:10]}..."
        finally:
            for ws in listeners:
                await ws.close()

    run(go(), 30)


def test_binary_with_two_loops_rooms_span_loops_and_stats_sum(servers):
    server = servers("wsreactor", None, "--threads", "2")

    async def go():
        members = [await client(server.ws("/topic/lobby")).__aenter__()
                   for _ in range(CLIENTS)]
        try:
            # Both loops hold members, and the sums add up.
            deadline = time.monotonic() + 5
            while True:
                _, samples = scrape(server)
                per_loop = [samples.get(("wsreactor_loop_open_connections",
                                         (("loop", str(i)),))) for i in range(2)]
                if samples.get(("wsreactor_open_connections", ())) == CLIENTS:
                    break
                assert time.monotonic() < deadline, f"not settled: {per_loop}"
                await asyncio.sleep(0.05)
            assert sum(per_loop) == CLIENTS and min(per_loop) > 0, per_loop
            with http_get(server.http("/stats")) as response:
                stats = json.loads(response.read())
            assert stats["open_connections"] == CLIENTS
            assert [s["open_connections"] for s in stats["loops"]] == per_loop
            # A message in the room reaches every member, the sender included, on
            # both loops.
            await members[5].send("hi room")
            for n, ws in enumerate(members):
                assert await recv(ws) == "hi room", f"member {n}"
        finally:
            for ws in members:
                await ws.close()

    run(go(), 30)

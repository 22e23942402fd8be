#!/usr/bin/env python3
"""An echo server on Python `websockets` (asyncio, one thread): the out-of-process
peer that compresses, for `make bench`'s compressed-echo workload (g).

No Rust WebSocket server on crates.io that the bench already builds negotiates
permessage-deflate (tokio-tungstenite 0.30 and fastwebsockets 0.10 have no such
feature); `websockets` implements RFC 7692 on C zlib (the zlib uWebSockets uses too),
so its compressor and inflater cost what zlib costs, and the rest is the interpreter.

    .venv/bin/python bench/websockets_echo.py --listen 127.0.0.1:9998 --deflate no-takeover

--deflate no-takeover: server_no_context_takeover and client_no_context_takeover in
every answer (a fresh compressor and inflater per message, as `wsreactor --deflate`);
takeover: context kept both ways (as `wsreactor --deflate-takeover`); off: no
extension. 15-bit windows (the client's offer decides), level 6, memLevel 8 (zlib's
defaults): the settings the issue's uWebSockets figures used. No keepalive pings, so
nothing but the echo runs. Stops on SIGTERM or SIGINT.
"""

import argparse
import asyncio
import signal

from websockets.asyncio.server import serve
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory


async def echo(ws):
    # Text stays text and binary stays binary: `send` picks the opcode from the type.
    async for message in ws:
        await ws.send(message)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:9998")
    parser.add_argument("--path", default="/echo", help="accepted and ignored (any path)")
    parser.add_argument("--deflate", choices=("off", "no-takeover", "takeover"),
                        default="no-takeover")
    parser.add_argument("--level", type=int, default=6)
    args = parser.parse_args()
    host, port = args.listen.rsplit(":", 1)
    extensions = []
    if args.deflate != "off":
        no_takeover = args.deflate == "no-takeover"
        extensions.append(ServerPerMessageDeflateFactory(
            server_no_context_takeover=no_takeover,
            client_no_context_takeover=no_takeover,
            compress_settings={"level": args.level, "memLevel": 8},
        ))
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(echo, host, int(port), compression=None, extensions=extensions,
                     max_size=64 * 1024 * 1024, max_queue=16, ping_interval=None,
                     backlog=1024):
        await stop


if __name__ == "__main__":
    asyncio.run(main())

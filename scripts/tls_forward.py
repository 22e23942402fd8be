#!/usr/bin/env python3
"""Conformance over wss://: kosoku 0.1.0 speaks only ws:// ("invalid url scheme wss"), so
this puts a TLS client in front of the server. It starts the echo binary with TLS (a
throwaway self-signed certificate made with openssl) on a free loopback port, and
forwards each plain connection it accepts on --listen to it over TLS, byte for byte. The
suite's frames thus go through the server's TLS transport: every read split, record
boundary and partial write of the cases meets it.

  make conformance-tls       (scripts/conformance.py --server-cmd "python3 $0 ...")

Stops the server it started (by PID) when it exits; dies with its parent.
Stdlib only.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def die_with_parent() -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, ssl.SSLError, RuntimeError):
        pass
    finally:
        if not writer.can_write_eof():
            writer.close()


async def serve(listen: int, target: int) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE

    async def client(reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", target, ssl=context, server_hostname="localhost")
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        for w in (writer, up_writer):
            w.close()

    server = await asyncio.start_server(client, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", type=int, required=True, help="plain port to accept on")
    parser.add_argument("--binary", required=True, help="the wsreactor binary")
    parser.add_argument("server_args", nargs="*", help="more flags for the server")
    args = parser.parse_args()
    die_with_parent()
    tmp = Path(tempfile.mkdtemp(prefix="wsreactor-tls-conformance-"))
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)
    target = free_port()
    server = subprocess.Popen(
        [args.binary, "--listen", f"127.0.0.1:{target}", "--tls-cert", str(cert),
         "--tls-key", str(key), *args.server_args],
        preexec_fn=die_with_parent)

    def stop(*_):
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
        sys.exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", target), timeout=0.5).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop()
            time.sleep(0.05)
    try:
        asyncio.run(serve(args.listen, target))
    finally:
        stop()


if __name__ == "__main__":
    main()

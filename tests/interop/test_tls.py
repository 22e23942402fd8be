"""wss:// and https:// (the binary with --tls-cert/--tls-key): Python `websockets` over TLS
trusting a test CA made here with openssl, the bad input a TLS port meets, and the demo
page in headless Chromium over https (marked `browser`, run by `make test-browser`).

The CA and the server's certificate (for 127.0.0.1 and localhost) are made once per
module in pytest's tmp dir; nothing is trusted outside the tests' own SSL contexts.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import HOST, run
from test_browser import browser  # noqa: F401  (the fixture, for the https page test)

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="the test CA is made with the openssl command")


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A test CA and a server certificate it signed: paths to ca.pem, cert.pem, key.pem."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=wsreactor interop CA",
            "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", "/CN=localhost", "-keyout", "key.pem", "-out", "server.csr", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "cert.pem", cwd=d)
    return {"ca": d / "ca.pem", "cert": d / "cert.pem", "key": d / "key.pem"}


def client_context(pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    context.set_alpn_protocols(["http/1.1"])
    return context


def tls_server(servers, pki, *extra: str):
    return servers("wsreactor", None, "--tls-cert", str(pki["cert"]),
                   "--tls-key", str(pki["key"]), *extra)


def https_get(url: str, pki) -> str:
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPSHandler(context=client_context(pki)))
    with opener.open(url, timeout=5) as response:
        return response.read().decode()


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_websockets_client_over_wss_with_permessage_deflate(servers, pki):
    from websockets.asyncio.client import connect

    server = tls_server(servers, pki, "--deflate")

    async def scenario():
        uri = f"wss://localhost:{server.port}/echo"
        async with connect(uri, ssl=client_context(pki), max_size=None) as ws:
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert "permessage-deflate" in extensions, extensions
            tls = ws.transport.get_extra_info("ssl_object")
            assert tls.selected_alpn_protocol() == "http/1.1"
            await ws.send("hello over wss")
            assert await ws.recv() == "hello over wss"
            big = bytes(range(256)) * 4096  # 1 MiB
            await ws.send(big)
            assert await ws.recv() == big
            text = "compressible " * 10000
            await ws.send(text)
            assert await ws.recv() == text
            for i in range(200):
                await ws.send(f"burst {i}")
            for i in range(200):
                assert await ws.recv() == f"burst {i}"
        assert ws.close_code == 1000

    run(scenario(), timeout=30)
    server.check_alive()


def test_plain_http_on_the_tls_port_is_an_alert_and_counted(servers, pki):
    server = tls_server(servers, pki)
    with socket.create_connection((HOST, server.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        answer = b""
        while True:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            answer += chunk
    assert answer[:1] == b"\x15", answer  # a TLS alert record, not an HTTP answer
    metrics = https_get(f"https://localhost:{server.port}/metrics", pki)
    assert metric(metrics, "wsreactor_tls_handshake_failures_total") == 1
    server.check_alive()


def test_a_certificate_that_does_not_load_is_a_start_up_error(pki, tmp_path):
    from conftest import BINARIES
    missing = tmp_path / "missing.pem"
    result = subprocess.run(
        [str(BINARIES["wsreactor"]), "--listen", f"{HOST}:0", "--tls-cert", str(missing),
         "--tls-key", str(pki["key"])],
        capture_output=True, text=True, timeout=10)
    assert result.returncode == 2
    assert str(missing) in result.stderr, result.stderr


@pytest.mark.browser
def test_demo_page_over_https_uses_wss(servers, pki, browser):
    from playwright.sync_api import expect

    server = tls_server(servers, pki, "--deflate")
    context = browser.new_context(ignore_https_errors=True)
    try:
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.goto(f"https://localhost:{server.port}/")
        expect(page.locator("#state")).to_have_text("open")
        expect(page.locator("#url")).to_have_text(f"wss://localhost:{server.port}/echo")
        message = f"hello over wss {uuid.uuid4().hex[:8]}"
        page.fill("#text", message)
        page.click("#form button[type=submit]")
        expect(page.locator("#log li.echo")).to_have_text([f"echo: {message}"])
        page.click("#close")
        expect(page.locator("#log li.event", has_text="close:")).to_contain_text(
            "close: code 1000")
        expect(page.locator("#log li.error")).to_have_count(0)
    finally:
        context.close()

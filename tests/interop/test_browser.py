"""Pages in Debian's headless Chromium, driven by Playwright (`make test-browser`).

Playwright's own browser download (`playwright install`) is never used: the browser is
/usr/bin/chromium (apt package `chromium`; override with CHROMIUM=...). The flags keep
it from reaching for the network on its own, which this machine refuses.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from conftest import TARGET, port_in_use

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-proxy-server",  # loopback only, whatever proxy the environment names
    "--disable-default-apps",
    "--disable-extensions",
]
ARTICLE = Path(__file__).resolve().parent / "article.html"
ARTICLE_PORT = 9998  # the article's page hard-codes ws://localhost:9998/echo
SCREENSHOTS = TARGET / "interop"
TIMEOUT_MS = 10_000


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} not found: `apt-get install chromium` (make test-browser does)")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def new_page(browser):
    """Opens pages, each in its own context (like separate browser profiles)."""
    contexts = []

    def open_page():
        context = browser.new_context(viewport={"width": 900, "height": 600})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.set_default_navigation_timeout(TIMEOUT_MS)
        return page

    yield open_page
    for context in contexts:
        context.close()


def test_demo_page_echoes_and_closes_with_1000(servers, new_page):
    from playwright.sync_api import expect

    server = servers("wsreactor")
    page = new_page()
    page.goto(server.http("/"))
    expect(page.locator("#state")).to_have_text("open")
    expect(page.locator("#url")).to_have_text(server.ws("/echo"))

    message = f"hello from chromium {uuid.uuid4().hex[:8]}"
    page.fill("#text", message)
    page.click("#form button[type=submit]")
    expect(page.locator("#log li.sent", has_text=f"sent: {message}")).to_have_count(1)
    expect(page.locator("#log li.echo")).to_have_text([f"echo: {message}"])

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "demo-page.png"), full_page=True)

    page.click("#close")
    expect(page.locator("#state")).to_have_text("closed")
    close_line = page.locator("#log li.event", has_text="close:")
    expect(close_line).to_have_count(1)
    expect(close_line).to_contain_text("close: code 1000")
    expect(close_line).to_contain_text("clean true")
    expect(page.locator("#log li.error")).to_have_count(0)
    page.screenshot(path=str(SCREENSHOTS / "demo-page-closed.png"), full_page=True)


def test_demo_page_with_permessage_deflate(servers, new_page):
    """Chromium always offers permessage-deflate; with --deflate the server takes it."""
    from playwright.sync_api import expect

    server = servers("wsreactor", None, "--deflate")
    page = new_page()
    page.goto(server.http("/"))
    expect(page.locator("#state")).to_have_text("open")
    expect(page.locator("#log li.event").first).to_contain_text(
        "open; compression: permessage-deflate")
    message = "compress me " * 200  # over the 128-byte threshold, so compressed both ways
    page.fill("#text", message)
    page.click("#form button[type=submit]")
    expect(page.locator("#log li.echo")).to_have_text([f"echo: {message}".strip()])
    page.click("#close")
    expect(page.locator("#log li.event", has_text="close:")).to_contain_text(
        "close: code 1000")


def test_article_page_unchanged(servers, new_page):
    """The reference article's page: alerts around ws://localhost:9998/echo."""
    if port_in_use(ARTICLE_PORT):
        pytest.skip(f"port {ARTICLE_PORT} is busy (the article's page hard-codes "
                    f"ws://localhost:{ARTICLE_PORT}/echo); stop whatever listens there")
    server = servers("wsreactor", ARTICLE_PORT)
    page = new_page()
    alerts: list[str] = []

    def on_dialog(dialog):
        alerts.append(dialog.message)
        dialog.accept()

    page.on("dialog", on_dialog)

    def wait_for_alert(text: str) -> None:
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while text not in alerts:
            assert time.monotonic() < deadline, f"no {text!r} alert; alerts so far: {alerts}"
            page.wait_for_timeout(50)  # lets Playwright deliver dialog events

    page.goto(ARTICLE.as_uri())
    page.click("text=Run WebSocket")
    wait_for_alert("Message is received...")
    assert alerts == [
        "WebSocket is supported by your Browser!",
        "Message is sent...",
        "Message is received...",
    ]

    # Graceful shutdown reaches the browser as a close: the page's onclose alert.
    server.expect_exit = True
    server.proc.send_signal(signal.SIGTERM)
    wait_for_alert("Connection is closed...")
    code = server.proc.wait(timeout=10)
    assert code == 0, f"exit status {code}; log tail:\n{server.log_tail()}"


def _ada_greets_bob(ada_server, bob_server, new_page):
    """examples/chat.html: ada opens the chat on one server, bob on the other (or the
    same); ada sees bob join, types a line, and both see it. Returns both pages."""
    from playwright.sync_api import expect

    ada, bob = new_page(), new_page()
    ada.goto(ada_server.http("/?name=ada"))
    expect(ada.locator("#state")).to_have_text("open")
    bob.goto(bob_server.http("/?name=bob"))
    expect(bob.locator("#state")).to_have_text("open")
    expect(ada.locator("#log li", has_text="* bob joined")).to_have_count(1)
    ada.fill("#text", "hello bob")
    ada.click("#form button[type=submit]")
    expect(bob.locator("#log li", has_text="ada: hello bob")).to_have_count(1)
    expect(ada.locator("#log li", has_text="ada: hello bob")).to_have_count(1)
    return ada, bob


def test_chat_message_typed_in_one_page_appears_in_the_other(servers, new_page):
    from playwright.sync_api import expect

    chat = servers("chat")
    ada, bob = _ada_greets_bob(chat, chat, new_page)
    expect(ada.locator("#text")).to_have_value("")

    bob.fill("#text", "hi ada")
    bob.press("#text", "Enter")
    expect(ada.locator("#log li").last).to_have_text("bob: hi ada")
    expect(bob.locator("#log li").last).to_have_text("bob: hi ada")


def test_live_panel_shows_messages_rising_while_a_client_sends(servers, new_page):
    """The demo page's live panel, fed by /stats/ws once a second, counts the
    messages a separate client sends while the page watches."""
    import asyncio
    import threading

    from playwright.sync_api import expect
    from websockets.asyncio.client import connect

    from conftest import run

    server = servers("wsreactor")
    page = new_page()
    page.goto(server.http("/"))
    expect(page.locator("#live-state")).to_have_text("live, every second")
    expect(page.locator("#live-messages-in")).to_have_text("0")

    stop = threading.Event()
    sent = []

    async def send_until_stopped():
        async with connect(server.ws("/echo"), proxy=None, open_timeout=5,
                           close_timeout=5) as ws:
            while not stop.is_set():
                for _ in range(20):
                    await ws.send("tick")
                    await asyncio.wait_for(ws.recv(), 5)
                    sent.append(1)
                await asyncio.sleep(0.02)

    sender = threading.Thread(target=lambda: run(send_until_stopped(), timeout=30))
    sender.start()
    try:
        readings = []
        deadline = time.monotonic() + 8
        # Three rising readings of the total, a second or so apart (the stream ticks).
        while len(readings) < 3 and time.monotonic() < deadline:
            value = int(page.locator("#live-messages-in").text_content())
            if not readings or value > readings[-1]:
                readings.append(value)
            time.sleep(0.2)
        assert len(readings) == 3 and readings[0] < readings[1] < readings[2], readings
        # A rate above zero is shown and drawn.
        expect(page.locator("#live-in-rate")).not_to_have_text("0")
        assert float(page.locator("#live-in-rate").text_content().rstrip("k")) > 0
        points = page.locator("#live-in-line").get_attribute("points")
        assert len(points.split()) >= 2, points
        expect(page.locator("#live-open")).not_to_have_text("-")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "live-panel.png"), full_page=True)
    finally:
        stop.set()
        sender.join(timeout=15)
    assert sent and readings[-1] <= len(sent) + 1, (readings, len(sent))


def test_live_panel_is_hidden_without_stats_endpoints(servers, new_page):
    from playwright.sync_api import expect

    server = servers("wsreactor", None, "--no-stats-endpoints")
    page = new_page()
    page.goto(server.http("/"))
    expect(page.locator("#state")).to_have_text("open")
    expect(page.locator("#live")).to_be_hidden()


@pytest.fixture
def redis_url():
    """A redis-server of our own on a free loopback port (no persistence), stopped by PID.

    `make test-browser` installs Debian's redis-server when it is missing."""
    import shutil
    import subprocess

    from conftest import free_port

    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server not found: `apt-get install redis-server` "
                    "(make test-browser does)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 10
        while not port_in_use(port):
            assert proc.poll() is None, "redis-server exited at start"
            assert time.monotonic() < deadline, "redis-server did not listen"
            time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_demo_topic_room_spans_two_servers_through_redis(servers, new_page, redis_url):
    """The demo page's topic room on two `wsreactor --redis` nodes: one room."""
    from playwright.sync_api import expect

    a = servers("wsreactor", None, "--redis", redis_url)
    b = servers("wsreactor", None, "--redis", redis_url)
    pages = []
    for server in (a, b):
        page = new_page()
        page.goto(server.http("/"))
        page.fill("#room-name", "lobby")
        page.click("#room-join button[type=submit]")
        expect(page.locator("#room-state")).to_have_text("in lobby")
        pages.append(page)
    # A subscription takes a round trip to the broker: retry until the other side hears.
    message = f"hello across nodes {uuid.uuid4().hex[:8]}"
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while pages[1].locator("#room-log li", has_text=message).count() == 0:
        assert time.monotonic() < deadline, "node B never got node A's message"
        pages[0].fill("#room-text", message)
        pages[0].click("#room-form button[type=submit]")
        pages[0].wait_for_timeout(200)
    # The sender gets its own copy too (once per send).
    expect(pages[0].locator("#room-log li", has_text=message).first).to_be_visible()
    pages[1].screenshot(path=str(SCREENSHOTS / "demo-topic-room.png"), full_page=True)


def test_chat_spans_two_servers_through_redis(servers, new_page, redis_url):
    """examples/chat.rs on two ports with --redis: one conversation."""
    a = servers("chat", None, "--redis", redis_url)
    b = servers("chat", None, "--redis", redis_url)
    # Broadcasts need no subscription: bob's arrival on B reaches ada on A.
    _ada_greets_bob(a, b, new_page)

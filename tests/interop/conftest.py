"""Fixtures for the client-interop tests: start the release binaries, never build them.

`make test-interop` / `make test-browser` run `cargo build --release --examples --bins --features cli`
first; here a missing binary is an error that says so. Every server a test starts
listens on 127.0.0.1 (a free port, or 9998 for the article page), logs to a file under
pytest's tmp dir, and is killed by its PID at teardown: only the process the fixture
started, never anything found by name. A server that died on its own during a test
fails that test, with the tail of its log.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

ROOT = Path(__file__).resolve().parents[2]
_target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
TARGET = _target if _target.is_absolute() else ROOT / _target
RELEASE = TARGET / "release"

# name -> binary; the echo binary takes flags, the examples take ADDR as argv[1].
BINARIES = {
    "wsreactor": RELEASE / "wsreactor",
    "chat": RELEASE / "examples" / "chat",
    "embed": RELEASE / "examples" / "embed",
    "reject": RELEASE / "examples" / "reject",
    "echo-example": RELEASE / "examples" / "echo",
    "ticker": RELEASE / "examples" / "ticker",
}

HOST = "127.0.0.1"
START_TIMEOUT = 15.0


def run(coro, timeout: float):
    """Runs one test's coroutine in a fresh event loop, bounded as a whole."""

    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def client(url: str, **kwargs):
    """A `websockets` client connection (loopback, no proxy, 5 s to open and close)."""
    options = dict(proxy=None, open_timeout=5, close_timeout=5)
    options.update(kwargs)
    return connect(url, **options)


async def recv(ws, timeout: float = 10.0):
    """The next message, or TimeoutError."""
    return await asyncio.wait_for(ws.recv(), timeout)


async def recv_until(ws, wanted: str, timeout: float = 10.0) -> list[str]:
    """Everything received up to and including `wanted`."""
    seen = []
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.recv()
            seen.append(message)
            if message == wanted:
                return seen


# Loopback only: never through a proxy named in the environment.
_no_proxy_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 5.0):
    """urlopen without proxies; raises urllib.error.HTTPError for a 4xx/5xx."""
    return _no_proxy_opener.open(url, timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    """True if anything accepts on port `port` of 127.0.0.1 or ::1 (what `localhost` may be)."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            with socket.socket(family) as s:
                s.settimeout(1)
                if s.connect_ex((host, port)) == 0:
                    return True
        except OSError:
            pass  # no IPv6 on this machine
    # Nothing accepts, but something may still hold the port bound. SO_REUSEADDR, as the
    # server (mio) sets it, so that TIME_WAIT leftovers of an earlier run don't count.
    try:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((HOST, port))
    except OSError:
        return True
    return False


def _die_with_parent() -> None:
    # If pytest itself is killed, the server goes too (Linux PR_SET_PDEATHSIG).
    try:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except Exception:
        pass


class Server:
    """One running server process that this test session started."""

    def __init__(self, name: str, proc: subprocess.Popen, port: int, log: Path):
        self.name = name
        self.proc = proc
        self.port = port
        self.log = log
        # Set by a test that stops the server itself (SIGTERM), so that its exit is expected.
        self.expect_exit = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ws(self, path: str = "/") -> str:
        return f"ws://{HOST}:{self.port}{path}"

    def http(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        code = self.proc.poll()
        if code is not None:
            pytest.fail(
                f"{self.name} (pid {self.pid}) exited on its own with {code}; log tail:\n"
                f"{self.log_tail()}"
            )

    def stop(self) -> None:
        """Kills the process this fixture started, by PID, and reaps it."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _wait_for_tcp(proc: subprocess.Popen, port: int, deadline: float) -> bool:
    """True once the port accepts; False if the process exited first."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing accepted on {HOST}:{port} within {START_TIMEOUT} s")


def start_server(name: str, log_dir: Path, port: int | None = None,
                 extra_args: tuple[str, ...] = ()) -> Server:
    binary = BINARIES[name]
    if not binary.exists():
        pytest.fail(
            f"{binary} is missing: run `cargo build --release --examples --bins --features cli` "
            "(`make test-interop` does)"
        )
    fixed_port = port is not None
    # A free port found by binding port 0 can be taken before the server binds it;
    # then the server exits at once and we try another.
    for attempt in range(5):
        use_port = port if fixed_port else free_port()
        addr = f"{HOST}:{use_port}"
        if name == "wsreactor":
            argv = [str(binary), "--listen", addr, "--stats-interval", "0", *extra_args]
        else:
            argv = [str(binary), addr, *extra_args]
        log = log_dir / f"{name}-{use_port}-{attempt}.log"
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, preexec_fn=_die_with_parent,
            )
        server = Server(name, proc, use_port, log)
        try:
            if _wait_for_tcp(proc, use_port, time.monotonic() + START_TIMEOUT):
                return server
        except TimeoutError:
            server.stop()
            raise
        server.stop()
        if fixed_port or "in use" not in server.log_tail().lower():
            pytest.fail(f"{name} exited at start with {proc.returncode}:\n{server.log_tail()}")
    pytest.fail(f"{name}: no free port after 5 tries")


class ServerFactory:
    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.started: list[Server] = []

    def __call__(self, name: str, port: int | None = None, *extra_args: str) -> Server:
        server = start_server(name, self.log_dir, port, tuple(extra_args))
        self.started.append(server)
        return server

    def finish(self) -> None:
        died = []
        for server in self.started:
            if not server.expect_exit and server.proc.poll() is not None:
                died.append(server)
            server.stop()
        if died:
            s = died[0]
            pytest.fail(
                f"{s.name} (pid {s.pid}) exited during the test with {s.proc.returncode}; "
                f"log tail:\n{s.log_tail()}"
            )


@pytest.fixture
def servers(tmp_path):
    """Starts servers for one test: `servers("chat")`, `servers("wsreactor", 9998)`."""
    factory = ServerFactory(tmp_path)
    yield factory
    factory.finish()


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory):
    """One `wsreactor` echo binary shared by a module's tests (echo on /echo)."""
    factory = ServerFactory(tmp_path_factory.mktemp("echo"))
    server = factory("wsreactor")
    yield server
    factory.finish()


@pytest.fixture
def live_echo_server(echo_server):
    """The shared echo server, checked to be still running before and after each test."""
    echo_server.check_alive()
    yield echo_server
    echo_server.check_alive()

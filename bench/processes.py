"""The processes a bench runner (run.py, run_attacks.py) starts: servers on a free
loopback port, and anything else it tracks, each stopped by its PID (SIGTERM, then
SIGKILL), also on failure or Ctrl-C. Nothing here stops a process it did not start.
"""

import os
import signal
import socket
import subprocess
import sys
import time

WHO = os.path.basename(sys.argv[0])
STARTED = {}  # pid -> Popen: what this runner started and has not stopped


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def env_num(name, default, kind=float):
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        return kind(value)
    except ValueError:
        sys.exit(f"{WHO}: {name}={value!r} is not a number")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    """Whether something listens on 127.0.0.1:port (from /proc/net/tcp, no connect)."""
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1] == want and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


def track(proc):
    """Puts a process this runner started in the list that `stop_all` stops."""
    STARTED[proc.pid] = proc
    return proc


def start_server(argv_of_port, log_path, preexec_fn):
    """Starts `argv_of_port(port)` on a free port, its output in `log_path`, and waits
    (15 s at most) until it listens; returns the process and the port."""
    port = free_port()
    argv = argv_of_port(port)
    env = dict(os.environ)
    env.pop("RUST_LOG", None)  # each server's default logging, as `make run` has it
    with open(log_path, "wb") as logfile:
        proc = track(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logfile,
                                      stderr=subprocess.STDOUT, env=env,
                                      preexec_fn=preexec_fn))
    deadline = time.monotonic() + 15
    while not listening(port):
        if proc.poll() is not None:
            raise RuntimeError(f"{argv} exited with {proc.returncode} before listening "
                               f"(log: {log_path})")
        if time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"{argv} is not listening on {port} after 15 s")
        time.sleep(0.02)
    # A process pinned with taskset is taskset's child after exec: the same PID.
    return proc, port


def stop(proc):
    """SIGTERM by PID, then SIGKILL; only a process this runner started."""
    if proc.pid not in STARTED:
        return
    if proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        except ProcessLookupError:
            pass
    STARTED.pop(proc.pid, None)


def stop_all():
    for proc in list(STARTED.values()):
        try:
            stop(proc)
        except Exception as e:  # keep stopping the others
            log(f"{WHO}: stopping {proc.pid}: {e}")


def stop_all_on_signals():
    """SIGINT and SIGTERM stop everything started, then exit."""
    def on_signal(signum, _frame):
        stop_all()
        sys.exit(128 + signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

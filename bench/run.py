#!/usr/bin/env python3
"""`make bench`: wsreactor against a raw TCP echo (the ceiling), tokio-tungstenite and
fastwebsockets, on this machine, and one markdown table of medians.

Each server runs pinned to core 0 (`taskset -c 0`), the load generator
(bench/src/bin/loadgen.rs) pinned to core 1. For every workload and run the servers
take turns (a fresh server process per run), so slow drifts in machine load hit them
alike. The server's CPU time (utime + stime from /proc/PID/stat) is read by the load
generator at the two edges of the measured window; CPU-µs per echoed message and
messages per server-CPU-second come from it, and stay comparable when the client is
the bottleneck.

Workloads: (a) 100 conns x 20 B, (b) 500 x 512 B, (c) 10 x 64 KiB, (d) 1 x 16 MiB,
(e) 10,000 idle connections -> server VmRSS per connection, (f) fan-out: 1 publisher and
1,000 / 10,000 subscribers on one topic, 100 B messages (bench/src/bin/fanout.rs), against
wsreactor's pub/sub endpoint and the tokio-tungstenite and fastwebsockets pub/sub peers
(bench/src/bin/*-pubsub.rs) -> deliveries/s, server CPU per delivery, publish->deliver
latency, messages missed, (g) compressed echo: 100 conns x 1 KiB and 16 KiB of JSON-like
text, permessage-deflate without and with context takeover, against the Python `websockets`
peer (bench/websockets_echo.py, C zlib), beside each server's plain echo of the same
messages -> server CPU per message, its ratio to the plain echo, bytes on the wire,
(h) open-loop tail: 100 conns x 20 B at a fixed send rate (50% and 80% of the saturated
rate) -> latency p50/p99/p99.9/p99.99/max from the scheduled send time.

Then the criterion micro benches (short times) and the allocation count per echoed
message (benches/alloc_per_message.rs).

Knobs (environment):
  BENCH_SECONDS=5     measured seconds per run        BENCH_WARMUP=1   warm-up seconds
  BENCH_RUNS=5        runs per server and workload (medians are reported; 5 because
                      this machine drifts between a fast and a slow state for minutes)
  BENCH_QUICK=1       1 run x 1 s, 1,000 idle connections, very short criterion
  BENCH_SERVERS=wsreactor,rawecho,tokio-tungstenite,fastwebsockets
  BENCH_BASELINE=PATH another wsreactor binary, run side by side as server "baseline"
  BENCH_WORKLOADS=a,b,c,d,e,f,g,h
  BENCH_IDLE_CONNS=10000
  BENCH_FANOUT_SUBS=1000,10000   (f): subscriber counts, one row each
  BENCH_FANOUT_RUNS=3 BENCH_FANOUT_SECONDS=3 BENCH_FANOUT_WARMUP=1   (f)'s own (1 x 1 s
                      with BENCH_QUICK=1; never more than BENCH_RUNS / BENCH_SECONDS)
  BENCH_FANOUT_WINDOW=16   (f): messages in flight (not yet delivered to every subscriber)
  BENCH_FANOUT_WSREACTOR=auto   (f): `binary` (the wsreactor binary's /topic/NAME endpoint),
                      `example` (examples/broadcast.rs: every message to every connection,
                      the same thing for one topic), `auto` (binary if its --help mentions
                      /topic/, else example)
  BENCH_FANOUT_WSREACTOR_ARGS=""   (f): more arguments for that server (e.g. "--threads 2")
  BENCH_FANOUT_BATCH=0     1 adds the peers' tuned variants (tokio-tungstenite-batch,
                      fastwebsockets-batch: every waiting message in one write) to (f)
  BENCH_COMPRESS_SERVERS=wsreactor,websockets-py   (g)'s servers
  BENCH_COMPRESS_SIZES=1024,16384   BENCH_COMPRESS_MODES=plain,no-takeover,takeover
  BENCH_COMPRESS_CONNS=100   BENCH_COMPRESS_RUNS=3   BENCH_COMPRESS_SECONDS=3   (g)'s own
                      (1 x 1 s with BENCH_QUICK=1); the peer runs from .venv (made by
                      `make venv-bench` when missing; skipped, saying so, if that fails)
  BENCH_TAIL_SERVERS=wsreactor,tokio-tungstenite,fastwebsockets,rawecho   (h)'s servers
  BENCH_TAIL_LOADS=50%,80%   (h): fractions of the saturated rate, or N/conn (msgs/s
                      per connection, e.g. 1000/conn: the issue's reference point)
  BENCH_TAIL_SATURATED=N   (h): the saturated rate in msgs/s (default: measured, as
                      wsreactor's closed-loop msgs/s on the same connections and size)
  BENCH_TAIL_CONNS=100 BENCH_TAIL_SIZE=20 BENCH_TAIL_RUNS=3 BENCH_TAIL_SECONDS=5
  BENCH_TAIL_WSREACTOR_ARGS=""   (h): more arguments for wsreactor (e.g. --stats-interval 0)
  BENCH_CRITERION=1   0 skips the criterion benches   BENCH_ALLOCS=1   0 skips the alloc count
  BENCH_BUILD=1       0 skips the cargo builds (use what is built)
  BENCH_SERVER_CPU=0  BENCH_CLIENT_CPU=1   the cores to pin to
  BENCH_LOOPS=1       e.g. 1,2: also run wsreactor with --threads N for each N > 1, as
                      server "wsreactor-Nloops" in (a)-(e) and (f), pinned to the cores
                      0..N-1 (BENCH_LOOPS_CPUS overrides, e.g. "0,1"): on a 2-core
                      machine the load generator then shares a core with a loop
  BENCH_NICE=0        e.g. -10 (root only) to run the server and the load generator
                      ahead of other work on a shared machine
Everything it writes goes to bench/target/results/<UTC time>/ (JSON of every run,
server logs, table.md); the table also goes to stdout.

Only loopback; every run is bounded (the load generator stops itself, and is killed
past a timeout). Servers are stopped by PID (SIGTERM, then SIGKILL), also on failure
or Ctrl-C.
"""

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import processes
from processes import env_num, log, stop, stop_all, stop_all_on_signals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
SECONDS = env_num("BENCH_SECONDS", 1.0 if QUICK else 5.0)
WARMUP = env_num("BENCH_WARMUP", 0.3 if QUICK else 1.0)
RUNS = env_num("BENCH_RUNS", 1 if QUICK else 5, int)
IDLE_CONNS = env_num("BENCH_IDLE_CONNS", 1000 if QUICK else 10000, int)
CRITERION = os.environ.get("BENCH_CRITERION", "1") != "0"
ALLOCS = os.environ.get("BENCH_ALLOCS", "1") != "0"
BUILD = os.environ.get("BENCH_BUILD", "1") != "0"
SERVER_CPU = os.environ.get("BENCH_SERVER_CPU", "0")
CLIENT_CPU = os.environ.get("BENCH_CLIENT_CPU", "1")
NICE = env_num("BENCH_NICE", 0, int)
CARGO = os.environ.get("CARGO", "cargo")

ROOT_TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BENCH_TARGET = os.path.join(BENCH, "target")
LOADGEN = os.path.join(BENCH_TARGET, "release", "loadgen")
FANOUT = os.path.join(BENCH_TARGET, "release", "fanout")

# name -> (argv builder, the server echoes raw bytes)
SERVERS = {
    "wsreactor": (
        lambda port: [os.path.join(ROOT_TARGET, "release", "wsreactor"),
                      "--listen", f"127.0.0.1:{port}"],
        False,
    ),
    "rawecho": (
        lambda port: [os.path.join(BENCH_TARGET, "release", "rawecho"),
                      "--listen", f"127.0.0.1:{port}"],
        True,
    ),
    "tokio-tungstenite": (
        lambda port: [os.path.join(BENCH_TARGET, "release", "tokio-tungstenite-echo"),
                      "--listen", f"127.0.0.1:{port}", "--path", "/echo"],
        False,
    ),
    "fastwebsockets": (
        lambda port: [os.path.join(BENCH_TARGET, "release", "fastwebsockets-echo"),
                      "--listen", f"127.0.0.1:{port}", "--path", "/echo"],
        False,
    ),
}

# BENCH_BASELINE=PATH adds another wsreactor build (e.g. the last commit's, built in a
# worktree) as server "baseline", run in the same rounds: a change's cost measured side
# by side, not against a number from another day.
BASELINE = os.environ.get("BENCH_BASELINE", "")
if BASELINE:
    SERVERS["baseline"] = (
        lambda port: [BASELINE, "--listen", f"127.0.0.1:{port}"],
        False,
    )

# BENCH_LOOPS=1,2: wsreactor with N loops beside the single loop, on N cores.
LOOPS = [int(n) for n in os.environ.get("BENCH_LOOPS", "1").split(",") if n.strip()]
MULTI_LOOPS = [n for n in LOOPS if n > 1]
# Server name -> the cores it is pinned to, where not SERVER_CPU.
SERVER_CPUS = {}
for n in MULTI_LOOPS:
    SERVERS[f"wsreactor-{n}loops"] = (
        (lambda n: lambda port: [os.path.join(ROOT_TARGET, "release", "wsreactor"),
                                 "--listen", f"127.0.0.1:{port}", "--threads", str(n)])(n),
        False,
    )
    SERVER_CPUS[f"wsreactor-{n}loops"] = os.environ.get(
        "BENCH_LOOPS_CPUS", ",".join(str(i) for i in range(n)))

FANOUT_SUBS = [int(n) for n in os.environ.get("BENCH_FANOUT_SUBS", "1000,10000").split(",")
               if n.strip()]
FANOUT_RUNS = min(RUNS, env_num("BENCH_FANOUT_RUNS", 1 if QUICK else 3, int))
FANOUT_SECONDS = min(SECONDS, env_num("BENCH_FANOUT_SECONDS", 1.0 if QUICK else 3.0))
FANOUT_WARMUP = env_num("BENCH_FANOUT_WARMUP", 0.3 if QUICK else 1.0)
FANOUT_WINDOW = env_num("BENCH_FANOUT_WINDOW", 16, int)
FANOUT_SIZE = 100
FANOUT_TOPIC = "/topic/bench"
FANOUT_BATCH = os.environ.get("BENCH_FANOUT_BATCH", "0") not in ("", "0")
WSREACTOR_BIN = os.path.join(ROOT_TARGET, "release", "wsreactor")

# (g) compressed echo: every server's plain echo of the same JSON-like messages runs in
# the same rounds, so the cost of compression is a ratio to its own plain echo.
COMPRESS_SIZES = [int(n) for n in os.environ.get("BENCH_COMPRESS_SIZES", "1024,16384").split(",")
                  if n.strip()]
COMPRESS_MODES = [m.strip() for m in os.environ.get(
    "BENCH_COMPRESS_MODES", "plain,no-takeover,takeover").split(",") if m.strip()]
for _m in COMPRESS_MODES:
    if _m not in ("plain", "no-takeover", "takeover"):
        sys.exit(f"run.py: BENCH_COMPRESS_MODES: {_m!r}: plain, no-takeover or takeover")
COMPRESS_CONNS = env_num("BENCH_COMPRESS_CONNS", 100, int)
COMPRESS_RUNS = env_num("BENCH_COMPRESS_RUNS", 1 if QUICK else 3, int)
COMPRESS_SECONDS = env_num("BENCH_COMPRESS_SECONDS", 1.0 if QUICK else 3.0)
VENV_PYTHON = os.path.join(ROOT, ".venv", "bin", "python")
WEBSOCKETS_ECHO = os.path.join(BENCH, "websockets_echo.py")

# (h) open-loop tail.
TAIL_CONNS = env_num("BENCH_TAIL_CONNS", 100, int)
TAIL_SIZE = env_num("BENCH_TAIL_SIZE", 20, int)
TAIL_RUNS = env_num("BENCH_TAIL_RUNS", 1 if QUICK else 3, int)
TAIL_SECONDS = env_num("BENCH_TAIL_SECONDS", 1.0 if QUICK else 5.0)
TAIL_LOADS = [x.strip() for x in os.environ.get("BENCH_TAIL_LOADS", "50%,80%").split(",")
              if x.strip()]
TAIL_SATURATED = env_num("BENCH_TAIL_SATURATED", 0.0)
TAIL_WSREACTOR_ARGS = os.environ.get("BENCH_TAIL_WSREACTOR_ARGS", "").split()
# The generator wakes for sends once per tick (a periodic timer): every send is up to a
# tick late, counted in its latency, for a fraction of the wake-ups; 0 = each send at its
# own time (the timer re-armed per send, which costs the generator ~15% more CPU).
TAIL_TICK_US = env_num("BENCH_TAIL_TICK_US", 50, int)
# 1: server and generator under SCHED_FIFO (chrt -f 1, root only), ahead of every other
# process on their cores, so that the tail is the servers' and not the other builds on
# a shared machine (they wait while a run lasts; the kernel still keeps 5% of each
# second for them).
TAIL_RT = os.environ.get("BENCH_TAIL_RT", "0") not in ("", "0")
# wsreactor variants run beside the others in (h): "NAME=ARGS;NAME=ARGS", e.g.
# "wsreactor-nostats=--stats-interval 0 --no-stats-endpoints".
TAIL_VARIANTS = {}
for _v in os.environ.get("BENCH_TAIL_VARIANTS", "").split(";"):
    if "=" in _v:
        _name, _args = _v.split("=", 1)
        TAIL_VARIANTS[_name.strip()] = _args.split()
BROADCAST_EXAMPLE = os.path.join(ROOT_TARGET, "release", "examples", "broadcast")
FANOUT_WSREACTOR_ARGS = os.environ.get("BENCH_FANOUT_WSREACTOR_ARGS", "").split()


def wsreactor_fanout_mode():
    """Which wsreactor server (f) runs: the binary's /topic/NAME endpoint, or, until it
    exists, examples/broadcast.rs (every message to every connection on any path: for
    a single topic, the same thing)."""
    mode = os.environ.get("BENCH_FANOUT_WSREACTOR", "auto")
    if mode not in ("auto", "binary", "example"):
        sys.exit(f"run.py: BENCH_FANOUT_WSREACTOR={mode!r}: auto, binary or example")
    if mode != "auto":
        return mode
    try:
        out = subprocess.run([WSREACTOR_BIN, "--help"], capture_output=True, text=True,
                             timeout=10)
        return "binary" if "/topic/" in out.stdout + out.stderr else "example"
    except (OSError, subprocess.TimeoutExpired):
        return "example"


def fanout_servers(mode):
    """name -> argv builder of the pub/sub server (f) runs for it."""
    peer = lambda binary, *extra: (lambda port: [os.path.join(BENCH_TARGET, "release", binary),
                                                 "--listen", f"127.0.0.1:{port}", *extra])
    servers = {
        "wsreactor": ((lambda port: [WSREACTOR_BIN, "--listen", f"127.0.0.1:{port}",
                                     *FANOUT_WSREACTOR_ARGS])
                      if mode == "binary" else
                      (lambda port: [BROADCAST_EXAMPLE, f"127.0.0.1:{port}",
                                     *FANOUT_WSREACTOR_ARGS])),
        "tokio-tungstenite": peer("tokio-tungstenite-pubsub"),
        "fastwebsockets": peer("fastwebsockets-pubsub"),
    }
    if mode == "binary":
        for n in MULTI_LOOPS:
            servers[f"wsreactor-{n}loops"] = (
                lambda n: lambda port: [WSREACTOR_BIN, "--listen", f"127.0.0.1:{port}",
                                        "--threads", str(n), *FANOUT_WSREACTOR_ARGS])(n)
    if FANOUT_BATCH:
        servers["tokio-tungstenite-batch"] = peer("tokio-tungstenite-pubsub", "--batch")
        servers["fastwebsockets-batch"] = peer("fastwebsockets-pubsub", "--batch")
    return servers


WORKLOADS = {
    "a": {"label": "(a) 100 conns × 20 B", "conns": 100, "size": 20},
    "b": {"label": "(b) 500 conns × 512 B", "conns": 500, "size": 512},
    "c": {"label": "(c) 10 conns × 64 KiB", "conns": 10, "size": 64 * 1024},
    "d": {"label": "(d) 1 conn × 16 MiB", "conns": 1, "size": 16 * 1024 * 1024},
    "e": {"label": f"(e) {IDLE_CONNS:,} idle conns", "conns": IDLE_CONNS, "idle": True},
    # (f) is one row per subscriber count: the keys f1000, f10000, ... (CASES below).
    "f": {"label": "(f) fan-out", "fanout": True},
    # (g) is one row per size and mode (COMPRESS_CASES), (h) one per load (TAIL_CASES).
    "g": {"label": "(g) compressed echo", "compress": True},
    "h": {"label": "(h) open-loop tail", "tail": True},
}
FANOUT_CASES = {f"f{n}": {"label": f"(f) 1 → {n:,} subs × {FANOUT_SIZE} B", "subs": n,
                          "fanout": True} for n in FANOUT_SUBS}


MODE_LABEL = {"plain": "plain", "no-takeover": "deflate, no takeover",
              "takeover": "deflate, takeover"}
COMPRESS_CASES = {
    f"g{size}-{mode}": {"label": f"(g) {COMPRESS_CONNS} × {size // 1024 if size % 1024 == 0 else size}"
                                 f"{' KiB' if size % 1024 == 0 else ' B'} JSON, {MODE_LABEL[mode]}",
                        "conns": COMPRESS_CONNS, "size": size, "mode": mode, "compress": True}
    for size in COMPRESS_SIZES for mode in COMPRESS_MODES}
TAIL_CASES = {f"h{load}": {"label": f"(h) {TAIL_CONNS} × {TAIL_SIZE} B open loop at {load}",
                           "load": load, "tail": True} for load in TAIL_LOADS}


def compress_argv(name, mode):
    """(g): the argv builder of server `name` in `mode`."""
    if name == "wsreactor":
        extra = {"plain": [], "no-takeover": ["--deflate"], "takeover": ["--deflate-takeover"]}[mode]
        return lambda port: [WSREACTOR_BIN, "--listen", f"127.0.0.1:{port}", *extra]
    if name == "websockets-py":
        off = "off" if mode == "plain" else mode
        return lambda port: [VENV_PYTHON, WEBSOCKETS_ECHO, "--listen", f"127.0.0.1:{port}",
                             "--deflate", off]
    sys.exit(f"run.py: BENCH_COMPRESS_SERVERS: unknown {name!r} (wsreactor, websockets-py)")


def tail_argv(name):
    """(h): the argv builder of server `name` (wsreactor with BENCH_TAIL_WSREACTOR_ARGS,
    or a BENCH_TAIL_VARIANTS variant)."""
    if name in TAIL_VARIANTS:
        return rt(lambda port: [WSREACTOR_BIN, "--listen", f"127.0.0.1:{port}",
                                *TAIL_VARIANTS[name]])
    if name == "wsreactor" and TAIL_WSREACTOR_ARGS:
        return rt(lambda port: [WSREACTOR_BIN, "--listen", f"127.0.0.1:{port}",
                                *TAIL_WSREACTOR_ARGS])
    return rt(SERVERS[name][0])


def rt(argv_of):
    """`argv_of` under SCHED_FIFO when BENCH_TAIL_RT=1."""
    return (lambda port: ["chrt", "-f", "1", *argv_of(port)]) if TAIL_RT else argv_of


def pick(env, known):
    names = [n.strip() for n in os.environ.get(env, ",".join(known)).split(",") if n.strip()]
    for n in names:
        if n not in known:
            sys.exit(f"run.py: {env}: unknown {n!r} (known: {', '.join(known)})")
    return names


SERVER_NAMES = pick("BENCH_SERVERS", list(SERVERS))
WORKLOAD_NAMES = pick("BENCH_WORKLOADS", list(WORKLOADS))
# The echo workloads, then (f)'s, (g)'s and (h)'s rows.
ECHO_NAMES = [w for w in WORKLOAD_NAMES if w not in ("f", "g", "h")]
FANOUT_NAMES = list(FANOUT_CASES) if "f" in WORKLOAD_NAMES else []
COMPRESS_NAMES = list(COMPRESS_CASES) if "g" in WORKLOAD_NAMES else []
TAIL_NAMES = list(TAIL_CASES) if "h" in WORKLOAD_NAMES else []
COMPRESS_SERVERS = [n.strip() for n in os.environ.get(
    "BENCH_COMPRESS_SERVERS", "wsreactor,websockets-py").split(",") if n.strip()]
TAIL_SERVERS = pick("BENCH_TAIL_SERVERS", [n for n in SERVERS if n in
                                            ("wsreactor", "tokio-tungstenite",
                                             "fastwebsockets", "rawecho", "baseline")]
                    + list(TAIL_VARIANTS))

def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def pinned(cpu, argv):
    prefix = ["nice", "-n", str(NICE)] if NICE else []
    return prefix + ["taskset", "-c", cpu] + argv


def start_server(name, logdir, tag, argv_of=None):
    raw = False
    if argv_of is None:
        argv_of, raw = SERVERS[name]
    cpu = SERVER_CPUS.get(name, SERVER_CPU)
    proc, port = processes.start_server(lambda port: pinned(cpu, argv_of(port)),
                                        os.path.join(logdir, f"{name}-{tag}.log"),
                                        raise_nofile)
    return proc, port, raw


def proc_stat_cpu():
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def pid_cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return int(rest[11]) + int(rest[12])
    except (OSError, IndexError, ValueError):
        return 0


def run_loadgen(name, workload, port, pid, raw):
    if workload.get("fanout"):
        argv = [FANOUT, "--addr", f"127.0.0.1:{port}", "--path", FANOUT_TOPIC,
                "--subscribers", str(workload["subs"]), "--size", str(FANOUT_SIZE),
                "--window", str(FANOUT_WINDOW), "--seconds", str(FANOUT_SECONDS),
                "--warmup", str(FANOUT_WARMUP), "--server-pid", str(pid),
                "--drain", "5", "--stall", "10", "--connect-timeout", "60"]
        return run_client(pinned(CLIENT_CPU, argv), pid,
                          FANOUT_SECONDS + FANOUT_WARMUP + 90)
    argv = pinned(CLIENT_CPU, [LOADGEN, "--addr", f"127.0.0.1:{port}",
                               "--conns", str(workload["conns"]), "--server-pid", str(pid)])
    if workload.get("idle"):
        argv += ["--idle", "--settle", "1", "--connect-timeout", "60", "--verify-timeout", "30"]
        timeout = 150
    else:
        argv += ["--size", str(workload["size"]), "--seconds", str(SECONDS),
                 "--warmup", str(WARMUP), "--connect-timeout", "30"]
        timeout = SECONDS + WARMUP + 90
    if raw:
        argv.append("--raw")
    return run_client(argv, pid, timeout)


def run_compressed(case, port, pid):
    """(g): the closed loop of JSON-like text, compressed or not, as the case says."""
    argv = [LOADGEN, "--addr", f"127.0.0.1:{port}", "--conns", str(case["conns"]),
            "--server-pid", str(pid), "--size", str(case["size"]), "--payload", "json",
            "--seconds", str(COMPRESS_SECONDS), "--warmup", str(WARMUP),
            "--connect-timeout", "30"]
    argv += {"plain": [], "no-takeover": ["--deflate"],
             "takeover": ["--deflate-takeover"]}[case["mode"]]
    return run_client(pinned(CLIENT_CPU, argv), pid, COMPRESS_SECONDS + WARMUP + 90)


def run_tail(rate_per_conn, port, pid, raw, seconds=None):
    """(h): the open loop at `rate_per_conn` msgs/s on each connection."""
    seconds = seconds or TAIL_SECONDS
    argv = [LOADGEN, "--addr", f"127.0.0.1:{port}", "--conns", str(TAIL_CONNS),
            "--server-pid", str(pid), "--size", str(TAIL_SIZE), "--rate", f"{rate_per_conn:.3f}",
            "--tick-us", str(TAIL_TICK_US),
            "--seconds", str(seconds), "--warmup", str(WARMUP),
            "--drain-time", "1" if QUICK else "5",
            "--connect-timeout", "30"]
    if raw:
        argv.append("--raw")
    argv = pinned(CLIENT_CPU, argv)
    return run_client(["chrt", "-f", "1", *argv] if TAIL_RT else argv, pid,
                      seconds + WARMUP + 90)


def saturated_rate(outdir):
    """(h)'s reference: BENCH_TAIL_SATURATED, or wsreactor's closed-loop msgs/s on the
    tail's connections and size (one run of BENCH_TAIL_SECONDS)."""
    if TAIL_SATURATED > 0:
        return TAIL_SATURATED, "given (BENCH_TAIL_SATURATED)", None
    # With BENCH_TAIL_RT=1 under SCHED_FIFO too, or a busy machine's builds would set
    # the rate; both sides saturate their cores, so the kernel's RT throttling (95% of
    # each second) takes up to ~5% off the figure.
    proc, port, _ = start_server("wsreactor", outdir, "h-saturation", tail_argv("wsreactor"))
    try:
        argv = pinned(CLIENT_CPU, [LOADGEN, "--addr", f"127.0.0.1:{port}", "--conns",
                                   str(TAIL_CONNS), "--server-pid", str(proc.pid), "--size",
                                   str(TAIL_SIZE), "--seconds", str(TAIL_SECONDS), "--warmup",
                                   str(WARMUP), "--connect-timeout", "30"])
        result = run_client(["chrt", "-f", "1", *argv] if TAIL_RT else argv, proc.pid,
                            TAIL_SECONDS + WARMUP + 90)
    finally:
        stop(proc)
    rate = result.get("msgs_per_sec")
    if not rate or result.get("errors"):
        sys.exit(f"run.py: (h): the saturation run failed: {result.get('error_samples')}")
    return rate, (f"measured: wsreactor closed loop, {TAIL_CONNS} conns × {TAIL_SIZE} B"
                  f"{', SCHED_FIFO' if TAIL_RT else ''}, "
                  f"server CPU {result.get('server_cpu_util') or 0:.0%}, client CPU "
                  f"{result.get('client_cpu_util') or 0:.0%}"), result


def tail_rate_per_conn(load, saturated):
    """A BENCH_TAIL_LOADS entry (`80%` or `1000/conn`) as msgs/s per connection."""
    if load.endswith("%"):
        return float(load[:-1]) / 100 * saturated / TAIL_CONNS
    if load.endswith("/conn"):
        return float(load[:-len("/conn")])
    sys.exit(f"run.py: BENCH_TAIL_LOADS: {load!r}: e.g. 80% or 1000/conn")


def ensure_venv_peer():
    """True when .venv has `websockets` for (g)'s peer, making it (`make venv-bench`) if
    need be."""
    check = [VENV_PYTHON, "-c", "import websockets"]
    ok = lambda: os.access(VENV_PYTHON, os.X_OK) and subprocess.run(
        check, capture_output=True, timeout=30).returncode == 0
    if ok():
        return True
    log("== (g): making .venv for the websockets peer (make venv-bench)")
    subprocess.run(["make", "--no-print-directory", "venv-bench"], cwd=ROOT)
    return ok()


def run_client(argv, pid, timeout):
    """Runs a load generator to its end; its JSON line, with the other load on the
    machine meanwhile."""
    hz = os.sysconf("SC_CLK_TCK")
    busy0, _ = proc_stat_cpu()
    server0 = pid_cpu_ticks(pid)
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, text=True)
    except subprocess.TimeoutExpired:
        return {"errors": 1, "error_samples": [f"load generator timed out after {timeout} s"]}
    wall = time.monotonic() - t0
    busy1, _ = proc_stat_cpu()
    server1 = pid_cpu_ticks(pid)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
    if not lines:
        return {"errors": 1, "error_samples": [
            f"loadgen exit {done.returncode}: {done.stderr.strip()[-300:]}"]}
    result = json.loads(lines[-1])
    # Everything else the machine did meanwhile (other processes, steal), in cores.
    ours = (server1 - server0) / hz + (
        (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime))
    result["other_load_cores"] = max(0.0, ((busy1 - busy0) / hz - ours) / wall)
    return result


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=1, unit=""):
    if value is None:
        return "—"
    if abs(value) >= 1000 and digits <= 1:
        return f"{value:,.0f}{unit}"
    return f"{value:,.{digits}f}{unit}"


def fmt_ratio(value):
    return "—" if value is None else f"{value:.2f}×"


def fmt_pct(value):
    """A fraction (a core's utilization) as a whole percentage."""
    return "—" if value is None else f"{value * 100:.0f}%"


def summarize(runs):
    def m(key, sub=None):
        vals = []
        for r in runs:
            v = r.get(key)
            if sub is not None:
                v = (v or {}).get(sub)
            vals.append(v)
        return median(vals)

    return {
        "runs": len(runs),
        "msgs_per_sec": m("msgs_per_sec"),
        "mb_per_sec": m("mb_per_sec"),
        "p50": m("rtt_us", "p50"),
        "p99": m("rtt_us", "p99"),
        "p999": m("rtt_us", "p999"),
        "cpu_per_msg": m("server_cpu_us_per_msg"),
        "msgs_per_cpu_sec": m("msgs_per_server_cpu_sec"),
        "server_util": m("server_cpu_util"),
        "client_util": m("client_cpu_util"),
        "rss_per_conn": m("rss_per_conn"),
        "minflt_per_msg": m("server_minflt_per_msg"),
        "ctxsw_per_msg": m("server_ctxsw_per_msg"),
        "errors": sum(int(r.get("errors") or 0) for r in runs),
        # (f)
        "publish_per_sec": m("publish_per_sec"),
        "missed": sum(int(r.get("missed") or 0) for r in runs),
        "undelivered": sum(int(r.get("undelivered_at_end") or 0) for r in runs),
        "given_up": sum(int(r.get("given_up") or 0) for r in runs),
        # (g)
        "wire_sent": m("wire", "sent_frame_bytes_per_msg"),
        "wire_echo": m("wire", "echo_frame_bytes_per_msg"),
        "echo_ratio": m("wire", "echo_ratio"),
        # (h)
        "target_rate": m("target_msgs_per_sec"),
        "lat": {q: m("latency_us", q) for q in ("p50", "p99", "p999", "p9999", "max")},
        "lat_p999_runs": [(r.get("latency_us") or {}).get("p999") for r in runs],
        "rtt_p999": m("rtt_from_actual_send_us", "p999"),
        "lag_p999": m("gen_lag_us", "p999"),
        "lag_max": max(((r.get("gen_lag_us") or {}).get("max") or 0.0 for r in runs),
                       default=None),
        "kept_up": all(r.get("gen_kept_up") for r in runs),
        "sent": sum(int(r.get("sent") or 0) for r in runs),
        "received": sum(int(r.get("received") or 0) for r in runs),
        "other_load": m("other_load_cores"),
        "max_other_load": max((r.get("other_load_cores") or 0.0 for r in runs), default=0.0),
    }


def headline(wkey):
    """The figure each workload is judged by, and whether lower is better."""
    if wkey in ("a", "b"):
        return "cpu_per_msg", True
    if wkey in ("c", "d"):
        return "msgs_per_sec", False
    return "rss_per_conn", True


def ratio(results, wkey, server, base):
    key, _ = headline(wkey)
    mine = results.get((wkey, server), {}).get(key)
    theirs = results.get((wkey, base), {}).get(key)
    if mine is None or theirs is None or theirs == 0 or server == base:
        return None
    return mine / theirs


def best_peer(results, wkey):
    """The peer (not wsreactor) with the lowest server CPU per delivery in (f) row
    `wkey`, and that figure."""
    peers = [(s["cpu_per_msg"], name) for (w, name), s in results.items()
             if w == wkey and not name.startswith("wsreactor") and name != "baseline"
             and s.get("cpu_per_msg") is not None]
    if not peers:
        return None, None
    cpu, name = min(peers)
    return name, cpu


def fanout_table(results, servers):
    head = ("| workload | server | deliveries/s | published/s | latency p50 ms | p99 ms "
            "| srv CPU µs/delivery | deliveries per srv-CPU-s | srv CPU | client CPU "
            "| ×best peer | missed | errors |")
    lines = [head, "|---|---|" + "---:|" * (head.count("|") - 3)]
    ms = lambda us: "—" if us is None else f"{us / 1000:,.2f}"
    for wkey in FANOUT_NAMES:
        _, best = best_peer(results, wkey)
        for server in servers:
            s = results.get((wkey, server))
            if s is None:
                continue
            r = (s["cpu_per_msg"] / best if best and s["cpu_per_msg"] is not None
                 and server == "wsreactor" else None)
            lines.append("| " + " | ".join([
                FANOUT_CASES[wkey]["label"], server,
                fmt(s["msgs_per_sec"], 0), fmt(s["publish_per_sec"], 0),
                ms(s["p50"]), ms(s["p99"]),
                fmt(s["cpu_per_msg"], 3), fmt(s["msgs_per_cpu_sec"], 0),
                fmt_pct(s["server_util"]), fmt_pct(s["client_util"]),
                fmt_ratio(r), str(s["missed"]), str(s["errors"]),
            ]) + " |")
    return "\n".join(lines)


def compress_table(results, servers):
    head = ("| workload | server | msgs/s | srv CPU µs/msg | ×own plain | sent B/msg "
            "| echo B/msg | echo ÷ plain bytes | RTT p50 µs | p99 µs | srv CPU | client CPU "
            "| errors |")
    lines = [head, "|---|---|" + "---:|" * (head.count("|") - 3)]
    for wkey in COMPRESS_NAMES:
        case = COMPRESS_CASES[wkey]
        for server in servers:
            s = results.get((wkey, server))
            if s is None:
                continue
            plain = results.get((f"g{case['size']}-plain", server), {}).get("cpu_per_msg")
            r = (s["cpu_per_msg"] / plain if plain and s["cpu_per_msg"] is not None
                 and case["mode"] != "plain" else None)
            lines.append("| " + " | ".join([
                case["label"], server, fmt(s["msgs_per_sec"], 0), fmt(s["cpu_per_msg"], 2),
                fmt_ratio(r), fmt(s["wire_sent"], 0), fmt(s["wire_echo"], 0),
                "—" if s["echo_ratio"] is None else f"{s['echo_ratio']:.3f}",
                fmt(s["p50"]), fmt(s["p99"]), fmt_pct(s["server_util"]), fmt_pct(s["client_util"]),
                str(s["errors"]),
            ]) + " |")
    return "\n".join(lines)


def tail_table(results, servers, rates):
    head = ("| workload | server | target msgs/s | echoed msgs/s | p50 µs | p99 µs | p99.9 µs "
            "| p99.99 µs | max µs | p99.9 per run µs | p99.9 from actual send µs | sent / echoed "
            "| gen lag p99.9 µs "
            "| gen kept up | srv CPU | srv CPU µs/msg | errors |")
    lines = [head, "|---|---|" + "---:|" * (head.count("|") - 3)]
    for wkey in TAIL_NAMES:
        for server in servers:
            s = results.get((wkey, server))
            if s is None:
                continue
            lat = s["lat"]
            runs = " / ".join(fmt(v, 0) for v in s["lat_p999_runs"])
            lines.append("| " + " | ".join([
                TAIL_CASES[wkey]["label"] + f" ({rates[wkey]:,.0f}/s per conn)", server,
                fmt(s["target_rate"], 0), fmt(s["msgs_per_sec"], 0),
                fmt(lat["p50"]), fmt(lat["p99"]), fmt(lat["p999"]), fmt(lat["p9999"]),
                fmt(lat["max"]), runs, fmt(s["rtt_p999"]), f"{s['sent']:,} / {s['received']:,}",
                fmt(s["lag_p999"]), "yes" if s["kept_up"] else "NO",
                fmt_pct(s["server_util"]), fmt(s["cpu_per_msg"], 2), str(s["errors"]),
            ]) + " |")
    return "\n".join(lines)


def table(results):
    head = ("| workload | server | msgs/s | MB/s | RTT p50 µs | p99 µs | p99.9 µs "
            "| srv CPU µs/msg | msgs per srv-CPU-s | srv CPU | client CPU | idle RSS/conn "
            "| ×raw | ×fws | errors |")
    lines = [head, "|---|---|" + "---:|" * (head.count("|") - 3)]
    for wkey in ECHO_NAMES:
        for server in SERVER_NAMES:
            s = results.get((wkey, server))
            if s is None:
                continue
            idle = WORKLOADS[wkey].get("idle")
            lines.append("| " + " | ".join([
                WORKLOADS[wkey]["label"],
                server,
                "—" if idle else fmt(s["msgs_per_sec"], 0),
                "—" if idle else fmt(s["mb_per_sec"], 1 if s["mb_per_sec"] and s["mb_per_sec"] >= 10 else 2),
                "—" if idle else fmt(s["p50"]),
                "—" if idle else fmt(s["p99"]),
                "—" if idle else fmt(s["p999"]),
                "—" if idle else fmt(s["cpu_per_msg"], 2),
                "—" if idle else fmt(s["msgs_per_cpu_sec"], 0),
                "—" if idle else fmt_pct(s["server_util"]),
                "—" if idle else fmt_pct(s["client_util"]),
                fmt(s["rss_per_conn"], 0, " B") if idle else "—",
                fmt_ratio(ratio(results, wkey, server, "rawecho")),
                fmt_ratio(ratio(results, wkey, server, "fastwebsockets")),
                str(s["errors"]),
            ]) + " |")
    return "\n".join(lines)


def targets(results):
    """The issue's targets for wsreactor, checked against this run."""
    out = []
    get = lambda w, s, k: results.get((w, s), {}).get(k)

    def check(text, ok):
        out.append(f"- [{'x' if ok else ' '}] {text}")

    for w in ("a", "b"):
        if (w, "wsreactor") not in results:
            continue
        for base, name in (("rawecho", "raw echo"), ("fastwebsockets", "fastwebsockets")):
            r = ratio(results, w, "wsreactor", base)
            if r is not None:
                check(f"{WORKLOADS[w]['label']}: server CPU per message ≤ 0.9× {name}: {r:.2f}×",
                      r <= 0.9)
        mine, theirs = get(w, "wsreactor", "p99"), get(w, "fastwebsockets", "p99")
        if mine is not None and theirs is not None:
            check(f"{WORKLOADS[w]['label']}: p99 RTT no worse than fastwebsockets': "
                  f"{mine:,.0f} µs vs {theirs:,.0f} µs", mine <= theirs)
    for w in ("c", "d"):
        r = ratio(results, w, "wsreactor", "fastwebsockets")
        if r is not None:
            check(f"{WORKLOADS[w]['label']}: msgs/s ≥ 1.1× fastwebsockets': {r:.2f}×", r >= 1.1)
    rss = get("e", "wsreactor", "rss_per_conn")
    if rss is not None:
        check(f"{WORKLOADS['e']['label']}: ≤ 256 B of RSS per idle connection: {rss:,.0f} B",
              rss <= 256)
    for size in COMPRESS_SIZES:
        plain = get(f"g{size}-plain", "wsreactor", "cpu_per_msg")
        comp = get(f"g{size}-no-takeover", "wsreactor", "cpu_per_msg")
        if size == 1024 and plain and comp:
            check(f"{COMPRESS_CASES[f'g{size}-no-takeover']['label']}: server CPU per message "
                  f"≤ 5× the plain echo's (issue 17): {comp:.2f} / {plain:.2f} µs = "
                  f"{comp / plain:.2f}×", comp <= 5 * plain)
    for w in TAIL_NAMES:
        mine = (results.get((w, "wsreactor")) or {}).get("lat", {}).get("p999")
        peers = [((results.get((w, n)) or {}).get("lat", {}).get("p999"), n)
                 for n in ("tokio-tungstenite", "fastwebsockets")]
        peers = [(v, n) for v, n in peers if v is not None]
        if mine is not None and peers:
            best, name = min(peers)
            kept = all((results.get((w, n)) or {}).get("kept_up", True)
                       for n in ("wsreactor", name))
            check(f"{TAIL_CASES[w]['label']}: p99.9 no worse than the best WebSocket peer's "
                  f"({name}, {best:,.0f} µs): {mine:,.0f} µs"
                  + ("" if kept else " (the generator fell behind in these runs: its own "
                     "lag is in both figures, see gen lag)"), mine <= best)
    for w in FANOUT_NAMES:
        mine = get(w, "wsreactor", "cpu_per_msg")
        peer, best = best_peer(results, w)
        if mine is not None and best:
            check(f"{FANOUT_CASES[w]['label']}: server CPU per delivery ≤ 0.5× the best "
                  f"peer's ({peer}, {best:.3f} µs): {mine:.3f} µs = {mine / best:.2f}×",
                  mine <= 0.5 * best)
    return out


def diagnostics(results):
    out = []
    for wkey in ECHO_NAMES:
        if WORKLOADS[wkey].get("idle"):
            continue
        cells = []
        for server in SERVER_NAMES:
            r = results.get((wkey, server))
            if r and r["minflt_per_msg"] is not None:
                cells.append(f"{server} {r['minflt_per_msg']:.3g} / {r['ctxsw_per_msg']:.3g}")
        if cells:
            out.append(f"- {WORKLOADS[wkey]['label']}: " + "; ".join(cells))
    return out


def build():
    log("== build (release): wsreactor, bench crate")
    subprocess.run([CARGO, "build", "--release", "--features", "cli", "--bin", "wsreactor"]
                   + (["--example", "broadcast"] if FANOUT_NAMES else []),
                   cwd=ROOT, check=True)
    subprocess.run([CARGO, "build", "--release", "--manifest-path",
                    os.path.join(BENCH, "Cargo.toml")], cwd=ROOT, check=True)


def run_allocs(outdir):
    log("== allocations per echoed message (benches/alloc_per_message.rs)")
    done = subprocess.run([CARGO, "bench", "--bench", "alloc_per_message"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    with open(os.path.join(outdir, "alloc_per_message.txt"), "w") as f:
        f.write(done.stdout + done.stderr)
    for line in done.stdout.splitlines():
        if line.startswith("ALLOCS_JSON "):
            return json.loads(line[len("ALLOCS_JSON "):])
    log(f"run.py: alloc_per_message failed:\n{done.stderr[-2000:]}")
    return None


def run_criterion(outdir):
    log("== criterion micro benches (benches/proto.rs, short times)")
    warm, measure = ("0.1", "0.3") if QUICK else ("0.5", "1.5")
    started = time.time()
    done = subprocess.run([CARGO, "bench", "--bench", "proto", "--", "--warm-up-time", warm,
                           "--measurement-time", measure, "--noplot"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    with open(os.path.join(outdir, "criterion.txt"), "w") as f:
        f.write(done.stdout + done.stderr)
    if done.returncode != 0:
        log(f"run.py: criterion failed:\n{done.stderr[-2000:]}")
        return None
    found = {}
    base = os.path.join(ROOT_TARGET, "criterion")
    for dirpath, _dirs, files in os.walk(base):
        if os.path.basename(dirpath) != "new" or "benchmark.json" not in files:
            continue
        if os.path.getmtime(os.path.join(dirpath, "estimates.json")) < started:
            continue  # a stale result from an earlier, differently filtered run
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            meta = json.load(f)
        with open(os.path.join(dirpath, "estimates.json")) as f:
            est = json.load(f)
        found[meta["full_id"]] = {"ns": est["median"]["point_estimate"],
                                  "throughput": meta.get("throughput")}
    return found


def criterion_lines(found):
    out = []
    gbs = lambda e: e["throughput"]["Bytes"] / e["ns"]  # bytes/ns = GB/s
    for size in ("16B", "1KiB", "64KiB", "1MiB"):
        un, cp = found.get(f"unmask/mask_apply/{size}"), found.get(f"unmask/memcpy/{size}")
        if un and cp:
            out.append(f"- unmask {size}: {gbs(un):.2f} GB/s vs memcpy {gbs(cp):.2f} GB/s "
                       f"→ {gbs(un) / gbs(cp):.2f}× memcpy")
    odd = found.get("unmask/mask_apply_offset3/64KiB")
    if odd:
        out.append(f"- unmask 64KiB at payload offset 3: {gbs(odd):.2f} GB/s")
    for full_id in sorted(found):
        if full_id.startswith("unmask/"):
            continue
        e = found[full_id]
        t = e["throughput"] or {}
        extra = ""
        if "Bytes" in t:
            extra = f", {gbs(e):.2f} GB/s"
        elif "Elements" in t and t["Elements"] > 1:
            extra = f", {e['ns'] / t['Elements']:.1f} ns per element"
        out.append(f"- {full_id}: {e['ns']:,.1f} ns{extra}")
    return out


def revision():
    """The wsreactor commit measured, and whether src/ had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown revision"
    if not head:
        return "unknown revision"
    return f"wsreactor {head}" + (" with uncommitted changes in src/" if dirty else "")


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), Linux {platform.release()}"


def main():
    stop_all_on_signals()
    t_start = time.monotonic()
    measured = revision()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    outdir = os.path.join(BENCH_TARGET, "results", stamp)
    os.makedirs(outdir, exist_ok=True)
    if BUILD:
        build()
    fanout_mode = wsreactor_fanout_mode() if FANOUT_NAMES else None
    fanout_argv = fanout_servers(fanout_mode) if FANOUT_NAMES else {}
    # (f) runs the selected servers that have a pub/sub side (not rawecho), and the
    # peers' batch variants when asked for.
    fanout_names = [n for n in fanout_argv if n.removesuffix("-batch") in SERVER_NAMES]
    compress_servers = list(COMPRESS_SERVERS) if COMPRESS_NAMES else []
    notes = []
    if "websockets-py" in compress_servers and not ensure_venv_peer():
        compress_servers.remove("websockets-py")
        notes.append("(g): the websockets peer did not run: .venv could not be made "
                     "(`make venv-bench`).")
    checks = [SERVERS[name][0](0)[0] for name in SERVER_NAMES if ECHO_NAMES]
    checks += [[a for a in tail_argv(name)(0) if a not in ("chrt", "-f", "1")][0]
               for name in TAIL_SERVERS if TAIL_NAMES]
    checks += [fanout_argv[name](0)[0] for name in fanout_names]
    checks += [FANOUT] if FANOUT_NAMES else []
    for path in checks:
        if not os.access(path, os.X_OK):
            sys.exit(f"run.py: {path} is missing (BENCH_BUILD=0 without a build?)")
    raise_nofile()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if "e" in WORKLOAD_NAMES and soft < IDLE_CONNS + 100:
        sys.exit(f"run.py: RLIMIT_NOFILE hard limit {soft} is too low for "
                 f"{IDLE_CONNS} idle connections (set BENCH_IDLE_CONNS lower)")
    if FANOUT_NAMES and soft < max(FANOUT_SUBS) + 100:
        sys.exit(f"run.py: RLIMIT_NOFILE hard limit {soft} is too low for "
                 f"{max(FANOUT_SUBS)} subscribers (set BENCH_FANOUT_SUBS lower)")

    log(f"== load: servers {', '.join(SERVER_NAMES)}; workloads {', '.join(WORKLOAD_NAMES)}; "
        f"{RUNS} run(s) x {SECONDS:g} s (+{WARMUP:g} s warm-up); server on CPU {SERVER_CPU}, "
        f"loadgen on CPU {CLIENT_CPU}; nice {NICE}; loadavg {open('/proc/loadavg').read().split()[0]}")
    raw_runs = {}
    all_runs = []
    plan = [(w, RUNS, SERVER_NAMES, WORKLOADS[w]) for w in ECHO_NAMES]
    plan += [(w, FANOUT_RUNS, fanout_names, FANOUT_CASES[w]) for w in FANOUT_NAMES]
    plan += [(w, COMPRESS_RUNS, compress_servers, COMPRESS_CASES[w]) for w in COMPRESS_NAMES]
    if FANOUT_NAMES:
        log(f"== (f): wsreactor side = {fanout_mode}; {FANOUT_RUNS} run(s) x {FANOUT_SECONDS:g} s "
            f"(+{FANOUT_WARMUP:g} s warm-up) per server and subscriber count; window "
            f"{FANOUT_WINDOW}; servers {', '.join(fanout_names)}")
    try:
        for wkey, runs, names, workload in plan:
            for run in range(runs):
                for name in names:
                    tag = f"{wkey}{run}"
                    if workload.get("compress"):
                        argv_of = compress_argv(name, workload["mode"])
                    elif workload.get("fanout"):
                        argv_of = fanout_argv.get(name)
                    else:
                        argv_of = None
                    proc, port, raw = start_server(name, outdir, tag, argv_of)
                    try:
                        if workload.get("compress"):
                            result = run_compressed(workload, port, proc.pid)
                        else:
                            result = run_loadgen(name, workload, port, proc.pid, raw)
                    finally:
                        stop(proc)
                    result.update({"server": name, "workload": wkey, "run": run})
                    all_runs.append(result)
                    raw_runs.setdefault((wkey, name), []).append(result)
                    if workload.get("idle"):
                        brief = f"{fmt(result.get('rss_per_conn'), 0)} B/conn"
                    elif workload.get("fanout"):
                        lat = result.get("latency_us") or {}
                        brief = (f"{fmt(result.get('deliveries_per_sec'), 0)} deliveries/s, "
                                 f"{fmt(result.get('server_cpu_us_per_delivery'), 3)} "
                                 f"CPU-µs/delivery, p50 {fmt(lat.get('p50'))} µs, p99 "
                                 f"{fmt(lat.get('p99'))} µs, missed {result.get('missed')}")
                    elif workload.get("compress"):
                        wire = result.get("wire") or {}
                        brief = (f"{fmt(result.get('msgs_per_sec'), 0)} msgs/s, "
                                 f"{fmt(result.get('server_cpu_us_per_msg'), 2)} CPU-µs/msg, "
                                 f"wire {fmt(wire.get('sent_frame_bytes_per_msg'), 0)} / "
                                 f"{fmt(wire.get('echo_frame_bytes_per_msg'), 0)} B/msg, "
                                 f"deflate {result.get('deflate')}")
                    else:
                        brief = (f"{fmt(result.get('msgs_per_sec'), 0)} msgs/s, "
                                 f"{fmt(result.get('server_cpu_us_per_msg'), 2)} CPU-µs/msg, "
                                 f"p99 {fmt((result.get('rtt_us') or {}).get('p99'))} µs")
                    errs = result.get("errors") or 0
                    if errs:
                        brief += f"; ERRORS {errs}: {result.get('error_samples')}"
                    log(f"   {workload['label']:<26} {name:<18} run {run + 1}: {brief}")
        tail_rates = {}
        if TAIL_NAMES:
            saturated, how, sat_run = saturated_rate(outdir)
            if sat_run:
                sat_run.update({"server": "wsreactor", "workload": "h-saturation", "run": 0})
                all_runs.append(sat_run)
            notes.append(f"(h): saturated rate {saturated:,.0f} msgs/s ({how}).")
            log(f"== (h): saturated rate {saturated:,.0f} msgs/s ({how}); {TAIL_RUNS} run(s) x "
                f"{TAIL_SECONDS:g} s per server and load; servers {', '.join(TAIL_SERVERS)}")
            for wkey in TAIL_NAMES:
                rate = tail_rate_per_conn(TAIL_CASES[wkey]["load"], saturated)
                tail_rates[wkey] = rate
                for run in range(TAIL_RUNS):
                    # A different server goes first in each round.
                    k = run % len(TAIL_SERVERS)
                    for name in TAIL_SERVERS[k:] + TAIL_SERVERS[:k]:
                        tag = wkey.replace("/", "per").replace("%", "pct") + str(run)
                        proc, port, raw = start_server(name, outdir, tag,
                                                       tail_argv(name))
                        raw = name in SERVERS and SERVERS[name][1]
                        try:
                            result = run_tail(rate, port, proc.pid, raw)
                        finally:
                            stop(proc)
                        result.update({"server": name, "workload": wkey, "run": run})
                        all_runs.append(result)
                        raw_runs.setdefault((wkey, name), []).append(result)
                        lat = result.get("latency_us") or {}
                        brief = (f"{fmt(result.get('msgs_per_sec'), 0)} msgs/s, p50/p99/p99.9/"
                                 f"p99.99 {fmt(lat.get('p50'))} / {fmt(lat.get('p99'))} / "
                                 f"{fmt(lat.get('p999'))} / {fmt(lat.get('p9999'))} µs, gen lag "
                                 f"p99.9 {fmt((result.get('gen_lag_us') or {}).get('p999'))} µs, "
                                 f"other load {result.get('other_load_cores', 0):.2f}")
                        errs = result.get("errors") or 0
                        if errs:
                            brief += f"; ERRORS {errs}: {result.get('error_samples')}"
                        log(f"   {TAIL_CASES[wkey]['label']:<26} {name:<18} run {run + 1}: {brief}")
    finally:
        stop_all()
        with open(os.path.join(outdir, "runs.json"), "w") as f:
            json.dump(all_runs, f, indent=1)

    results = {key: summarize(runs) for key, runs in raw_runs.items()}
    criterion = run_criterion(outdir) if CRITERION else None
    allocs = run_allocs(outdir) if ALLOCS else None

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    other = [r.get("other_load_cores") or 0.0 for r in all_runs]
    report = [
        f"## make bench — {date}, {machine()}, {measured}",
        "",
    ]
    if ECHO_NAMES:
        report += [
        f"Medians of {RUNS} run(s) of {SECONDS:g} s (after {WARMUP:g} s of warm-up) per server "
        f"and workload; server pinned to CPU {SERVER_CPU}, load generator (closed loop, one "
        f"message in flight per connection, every echo verified) to CPU {CLIENT_CPU}"
        f"{f', both at nice {NICE}' if NICE else ''}. "
        "srv CPU = utime+stime of the server over the measured window; ×raw and ×fws compare "
        "each workload's headline figure with the raw TCP echo's and fastwebsockets': server "
        "CPU per message for (a) and (b) (lower is better), msgs/s for (c) and (d) (higher is "
        "better), RSS per idle connection for (e) (lower is better). MB/s counts payload bytes "
        "echoed, one direction.",
        "",
        table(results),
        "",
        ]
    if FANOUT_NAMES:
        wsr = ("examples/broadcast.rs (every message to every connection: one topic)"
               if fanout_mode == "example" else "the wsreactor binary's /topic/NAME endpoint")
        report += [
            f"(f) fan-out: medians of {FANOUT_RUNS} run(s) of {FANOUT_SECONDS:g} s (after "
            f"{FANOUT_WARMUP:g} s) per server and row; 1 publisher + N subscribers on "
            f"{FANOUT_TOPIC}, {FANOUT_SIZE} B binary messages, at most {FANOUT_WINDOW} messages "
            f"not yet delivered to every subscriber (closed loop; bench/src/bin/fanout.rs). "
            f"wsreactor side: {wsr}. Peers: tokio-tungstenite-pubsub and fastwebsockets-pubsub "
            "(a tokio broadcast channel per topic, a forwarding task per connection, one "
            "write per message per subscriber; current-thread runtime). Deliveries count the "
            "N subscribers only (the publisher's own copies are read but not counted); "
            "latency is publish→deliver over every delivery in the window; ×best peer = "
            "wsreactor's server CPU per delivery ÷ the lowest peer's (target ≤ 0.5×); "
            "missed = sequence gaps summed over subscribers and runs. "
            + ("The -batch rows are the peers' tuned variants (every waiting message in one "
               "write), not the usual pattern." if FANOUT_BATCH else
               "BENCH_FANOUT_BATCH=1 adds the peers' tuned variants that batch their writes "
               "as wsreactor does (bench/README.md: parity)."),
            "",
            fanout_table(results, fanout_names),
            "",
        ]
    if COMPRESS_NAMES:
        report += [
            f"(g) compressed echo: medians of {COMPRESS_RUNS} run(s) of {COMPRESS_SECONDS:g} s "
            f"(after {WARMUP:g} s) per server and row; closed loop, {COMPRESS_CONNS} connections, "
            "text frames of JSON-like text (`loadgen --payload json`: new content every "
            "message), level 6 and 15-bit windows on both sides. no takeover = "
            "server_ and client_no_context_takeover (wsreactor `--deflate`); takeover = "
            "context kept both ways (`--deflate-takeover`). ×own plain = server CPU per "
            "message ÷ the same server's plain echo of the same messages in this run "
            "(issue 17's target for wsreactor at 1 KiB without takeover: ≤ 5×). Bytes are "
            "per message, frame headers included; echo ÷ plain = compressed echo payload ÷ "
            "message size. websockets-py: Python `websockets` 17.4 on asyncio and C zlib "
            "(bench/websockets_echo.py), one process.",
            "",
            compress_table(results, compress_servers),
            "",
        ]
    if TAIL_NAMES:
        report += [
            f"(h) open-loop tail: medians of {TAIL_RUNS} run(s) of {TAIL_SECONDS:g} s (after "
            f"{WARMUP:g} s) per server and load, a different server first in each round; "
            f"{TAIL_CONNS} connections × {TAIL_SIZE} B binary, each sending at a fixed rate on "
            "a timetable spread evenly over the connections (`loadgen --rate`), several "
            "messages in flight if need be; latency from the *scheduled* send to the whole "
            "echo (coordinated omission corrected); from actual send = the same without "
            "the generator's own lag; gen lag = how late the generator "
            f"itself sent (kept up = no send over 1 ms late, none skipped); sends go out "
            f"once per {TAIL_TICK_US} µs tick (up to a tick late, in the latency: the same "
            "for every server)"
            + ("; server and generator under SCHED_FIFO (BENCH_TAIL_RT=1), ahead of the "
               "machine's other work." if TAIL_RT else "."),
            "",
            tail_table(results, TAIL_SERVERS, tail_rates),
            "",
        ]
    report += [n for n in notes] + ([""] if notes else [])
    if other:
        report.append(f"Other load on the machine during the runs (not ours): median "
                      f"{statistics.median(other):.2f} cores, max {max(other):.2f} cores.")
        report.append("")
    diag = diagnostics(results)
    if diag:
        report += ["Server diagnostics (medians over the measured window, per echoed message: "
                   "minor page faults / context switches):", ""] + diag + [""]
    checks = targets(results)
    if checks:
        report += ["Targets (issue 3; (f): issue 13; (g), (h): issue 17) for wsreactor in this run:", ""] + checks + [""]
    if criterion:
        report += ["Micro benches (criterion medians, short runs):", ""] + criterion_lines(criterion) + [""]
    if allocs:
        report += ["Allocations on the server thread per echoed message (counting allocator, "
                   "measured after warm-up):", ""]
        for a in allocs:
            if a.get("case") == "idle":
                report.append(f"- idle: {a['heap_bytes_per_conn']:,.0f} heap bytes allocated per open "
                              f"connection after start-up ({a['conns']} open, in-process; the "
                              f"connection slots reserved at start-up are not in it: (e) "
                              f"measures RSS)")
                continue
            report.append(f"- {a['case']}: {a['allocs_per_msg']:.3f} allocs + "
                          f"{a['reallocs_per_msg']:.3f} reallocs per message, "
                          f"{a['bytes_per_msg']:.0f} bytes per message over {a['msgs']:,.0f} "
                          f"messages (connection set-up + first echo: {a['setup_allocs']} allocations)")
        report.append("")
    report.append(f"Command: `make bench` ({time.monotonic() - t_start:.0f} s); raw results in "
                  f"`{os.path.relpath(outdir, ROOT)}/`.")
    text = "\n".join(report)
    with open(os.path.join(outdir, "table.md"), "w") as f:
        f.write(text + "\n")
    print(text, flush=True)
    failed = sum(s["errors"] for s in results.values())
    if failed:
        log(f"run.py: {failed} load generator error(s); see {outdir}/runs.json")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        stop_all()

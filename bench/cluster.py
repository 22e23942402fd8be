#!/usr/bin/env python3
"""`make bench-cluster`: two `wsreactor --redis` nodes, one redis-server, fan-out across them.

Starts redis-server (free loopback port, no persistence) and two release `wsreactor`
binaries linked by --redis, then for each rate runs `cluster-fanout` (bench/src/bin/cluster-fanout.rs):
SUBS subscribers on each node to one topic, a publisher on node A publishing RATE
messages a second. Reports per rate: deliveries/s on each node, publish->deliver
p50/p99 on A (local) and on B (through the broker), deliveries missing, each server's
CPU and CPU per delivery, and redis-server's CPU. Every process it started is stopped
by PID at the end. Bounded: (warm-up + window + 2 s) per rate plus connection set-up.

  BENCH_SUBS=1000          subscribers per node
  BENCH_RATES=100,200,400  messages published per second, one run each
  BENCH_SECONDS=5          measured window per run
  BENCH_SIZE=64            payload bytes
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBS = int(os.environ.get("BENCH_SUBS", "1000"))
RATES = [float(r) for r in os.environ.get("BENCH_RATES", "100,200,400").split(",")]
SECONDS = float(os.environ.get("BENCH_SECONDS", "5"))
SIZE = int(os.environ.get("BENCH_SIZE", "64"))
CARGO = os.environ.get("CARGO", "cargo")
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited at start with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    sys.exit(f"{what} did not listen on {port}")


def main() -> None:
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        sys.exit("redis-server not found: apt-get install redis-server")
    subprocess.run([CARGO, "build", "--release", "--features", "cli,cluster", "--bin", "wsreactor"],
                   cwd=ROOT, check=True)
    subprocess.run([CARGO, "build", "--release", "--bin", "cluster-fanout"], cwd=ROOT / "bench", check=True)
    fanout = ROOT / "bench" / "target" / "release" / "cluster-fanout"
    wsreactor = TARGET / "release" / "wsreactor"

    procs: list[subprocess.Popen] = []
    try:
        redis_port = free_port()
        redis = subprocess.Popen(
            [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        procs.append(redis)
        wait_listening(redis_port, redis, "redis-server")
        url = f"redis://127.0.0.1:{redis_port}"
        nodes = []
        for name in ("A", "B"):
            port = free_port()
            node = subprocess.Popen(
                [str(wsreactor), "--listen", f"127.0.0.1:{port}", "--redis", url,
                 "--stats-interval", "0", "--idle-timeout", "0"],
                env={**os.environ, "RUST_LOG": "warn"})
            procs.append(node)
            wait_listening(port, node, f"node {name}")
            nodes.append((node, port))
        rows = []
        for rate in RATES:
            argv = [str(fanout), "--a", f"127.0.0.1:{nodes[0][1]}", "--b", f"127.0.0.1:{nodes[1][1]}",
                    "--subs", str(SUBS), "--rate", str(rate), "--seconds", str(SECONDS),
                    "--size", str(SIZE), "--topic", f"bench{int(rate)}",
                    "--pids", f"{nodes[0][0].pid},{nodes[1][0].pid},{redis.pid}"]
            print("+", " ".join(argv), file=sys.stderr)
            out = subprocess.run(argv, capture_output=True, text=True,
                                 timeout=120 + SECONDS).stdout.strip()
            if not out:
                sys.exit("cluster-fanout printed nothing")
            result = json.loads(out)
            print(out, file=sys.stderr)
            rows.append(result)
        print(f"\nTwo nodes x {SUBS} subscribers on one topic, a publisher on node A, "
              f"{SIZE}-byte messages, {SECONDS:g} s per rate; {os.cpu_count()} CPUs shared by "
              "both nodes, redis-server and the client.\n")
        print("| publishes/s | A deliveries/s | B deliveries/s | missing A/B | A p50/p99 µs (local) "
              "| B p50/p99 µs (via Redis) | A CPU % (ns/delivery) | B CPU % (ns/delivery) | redis CPU % |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['rate']:g} | {r['a_deliveries_per_s']:,} | {r['b_deliveries_per_s']:,} "
                  f"| {r['a_missing']}/{r['b_missing']} | {r['a_p50_us']}/{r['a_p99_us']} "
                  f"| {r['b_p50_us']}/{r['b_p99_us']} "
                  f"| {r.get('a_cpu_pct', '-')} ({r.get('a_cpu_ns_per_delivery', '-')}) "
                  f"| {r.get('b_cpu_pct', '-')} ({r.get('b_cpu_ns_per_delivery', '-')}) "
                  f"| {r.get('redis_cpu_pct', '-')} |")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()

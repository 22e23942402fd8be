#!/usr/bin/env python3
"""wss:// figures (`make bench-tls`, also the last step of `make bench`): workloads (a), (b),
(c) and (e) over TLS for wsreactor (--tls-cert) and the tokio-tungstenite and
fastwebsockets peers behind tokio-rustls (BENCH_TLS_CERT/BENCH_TLS_KEY), plus wsreactor
over plain ws:// driven by the same client, for the TLS cost, and `rawecho` (TCP echo, no
protocol) as the floor under all of them. Servers alternate within each round.

The client is bench's `tlsclient` (rustls + ring, every connection on one thread over
mio, one message in flight per connection, echoes compared), not `loadgen` (plain
only): its figures compare with each other, not with run.py's table. Server CPU per message is read from
/proc/PID/stat over the measured seconds; idle RSS per connection is the server's VmRSS
delta over N wss connections (TLS handshake and upgrade done, then held).

  BENCH_QUICK=1        1 run x 2 s, 2,000 idle connections
  BENCH_RUNS=3  BENCH_SECONDS=5  BENCH_IDLE_CONNS=10000
  BENCH_SERVER_CPU=0  BENCH_CLIENT_CPU=1   (the client gets every core but the server's
                       when the machine has more than two)

The certificate is a throwaway self-signed one made with openssl in the results dir.
Loopback only; servers are stopped by PID; every client run has a timeout.
"""

import datetime
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import processes  # noqa: E402
import run as bench  # noqa: E402  (its pinning, server start and helpers)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
QUICK = os.environ.get("BENCH_QUICK") == "1"
RUNS = int(os.environ.get("BENCH_RUNS", "1" if QUICK else "3"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "2" if QUICK else "5"))
IDLE_CONNS = int(os.environ.get("BENCH_IDLE_CONNS", "2000" if QUICK else "10000"))
TLSCLIENT = os.path.join(bench.BENCH_TARGET, "release", "tlsclient")
WORKLOADS = [("a", 100, 20), ("b", 500, 512), ("c", 10, 64 * 1024)]


def certificate(outdir):
    cert, key = os.path.join(outdir, "cert.pem"), os.path.join(outdir, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", "/CN=localhost", "-keyout", key, "-out", cert],
                   check=True, capture_output=True, timeout=30)
    return cert, key


def servers(cert, key):
    wsreactor = os.path.join(bench.ROOT_TARGET, "release", "wsreactor")
    release = os.path.join(bench.BENCH_TARGET, "release")
    return {
        "wsreactor": (lambda port: [wsreactor, "--listen", f"127.0.0.1:{port}",
                                    "--stats-interval", "0", "--tls-cert", cert,
                                    "--tls-key", key], True),
        "tokio-tungstenite": (lambda port: [os.path.join(release, "tokio-tungstenite-echo"),
                                            "--listen", f"127.0.0.1:{port}"], True),
        "fastwebsockets": (lambda port: [os.path.join(release, "fastwebsockets-echo"),
                                         "--listen", f"127.0.0.1:{port}"], True),
        "wsreactor (plain ws)": (lambda port: [wsreactor, "--listen", f"127.0.0.1:{port}",
                                               "--stats-interval", "0"], False),
        # The floor under every row: TCP echo with no protocol, no TLS, same client.
        "rawecho (plain, no protocol)": (lambda port: [os.path.join(release, "rawecho"),
                                                       "--listen", f"127.0.0.1:{port}"], False),
    }


def client(port, pid, tls, extra, timeout):
    argv = [TLSCLIENT, "--addr", f"127.0.0.1:{port}", "--server-pid", str(pid), *extra]
    if not tls:
        argv.append("--plain")
    try:
        done = subprocess.run(bench.pinned(bench.CLIENT_CPU, argv), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
    if not lines:
        return {"error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
    return json.loads(lines[-1])


def build():
    if os.environ.get("BENCH_BUILD", "1") == "0":
        return
    subprocess.run([bench.CARGO, "build", "--release", "--features", "cli,tls", "--bin",
                    "wsreactor"], cwd=ROOT, check=True)
    subprocess.run([bench.CARGO, "build", "--release", "--manifest-path",
                    os.path.join(HERE, "Cargo.toml"), "--bin", "tlsclient", "--bin",
                    "tokio-tungstenite-echo", "--bin", "fastwebsockets-echo", "--bin",
                    "rawecho"], cwd=ROOT,
                   check=True)


def main():
    build()
    bench.raise_nofile()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    outdir = os.path.join(bench.BENCH_TARGET, "results", f"tls-{stamp}")
    os.makedirs(outdir, exist_ok=True)
    cert, key = certificate(outdir)
    os.environ["BENCH_TLS_CERT"], os.environ["BENCH_TLS_KEY"] = cert, key
    results = {}
    # Runs outside, servers inside: every server is measured once per round, side by
    # side, so a machine that drifts between rounds (a shared VM does) moves them all.
    for run in range(RUNS):
        for name, (argv_of, tls) in servers(cert, key).items():
            proc, port, _ = bench.start_server(name, outdir, f"tls-{run}", argv_of)
            try:
                for wkey, conns, size in WORKLOADS:
                    r = client(port, proc.pid, tls, ["--conns", str(conns), "--size", str(size),
                                                     "--seconds", str(SECONDS), "--warmup", "1"],
                               SECONDS + 60)
                    results.setdefault((name, wkey), []).append(r)
                    print(f"{name} ({wkey}) run {run + 1}: {r}", flush=True)
            finally:
                processes.stop(proc)
            if run == 0 and not name.startswith("rawecho"):
                proc, port, _ = bench.start_server(name, outdir, "idle", argv_of)
                try:
                    r = client(port, proc.pid, tls, ["--idle", str(IDLE_CONNS)], 180)
                    results.setdefault((name, "e"), []).append(r)
                    print(f"{name} (e) {r}", flush=True)
                finally:
                    processes.stop(proc)
    names = list(servers(cert, key))
    lines = [f"wss:// — {RUNS} run(s) × {SECONDS:g} s, client tlsclient (rustls, one "
             f"thread over mio), server on CPU {bench.SERVER_CPU}; medians.", "",
             "| server | workload | msgs/s | srv CPU µs/msg | vs best TLS peer |",
             "|---|---|---|---|---|"]
    for wkey, conns, size in WORKLOADS:
        per = {n: bench.median([r.get("cpu_us_per_msg") for r in results.get((n, wkey), [])
                                if "error" not in r]) for n in names}
        rate = {n: bench.median([r.get("msgs_per_sec") for r in results.get((n, wkey), [])
                                 if "error" not in r]) for n in names}
        peers = [per[n] for n in ("tokio-tungstenite", "fastwebsockets") if per.get(n)]
        best = min(peers) if peers else None
        for n in names:
            vs = f"{per[n] / best:.2f}×" if per.get(n) and best else "—"
            lines.append(f"| {n} | ({wkey}) {conns} conns × {size:,} B | "
                         f"{bench.fmt(rate.get(n), 0)} | {bench.fmt(per.get(n), 2)} | {vs} |")
    lines += ["", f"(e) {IDLE_CONNS:,} idle connections, server VmRSS delta / N:", ""]
    for n in names:
        if n.startswith("rawecho"):
            continue
        r = (results.get((n, "e")) or [{}])[0]
        lines.append(f"- {n}: {bench.fmt(r.get('rss_per_conn'), 0, ' B')}"
                     + (f" ({r['error']})" if "error" in r else ""))
    table = "\n".join(lines)
    with open(os.path.join(outdir, "table.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(outdir, "runs.json"), "w") as f:
        json.dump({f"{k[0]}|{k[1]}": v for k, v in results.items()}, f, indent=1)
    print("\n" + table)


if __name__ == "__main__":
    main()

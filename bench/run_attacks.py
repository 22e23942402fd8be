#!/usr/bin/env python3
"""The hostile-client measurement set (bench/src/bin/attack.rs), one markdown table.

Each measurement gets a fresh server process pinned to core 0 (`taskset -c 0`), the
attack tool pinned to core 1, and ends with the server stopped by its PID (SIGTERM,
then SIGKILL). Only 127.0.0.1 is targeted (the tool also binds 127.0.0.2..250 as
source addresses), and every run is bounded by the tool's own --seconds and by a
timeout here.

    python3 bench/run_attacks.py [--server-bin PATH] [--server-args "ARGS"]
                                 [--fanout-bin PATH] [--fanout-path /] [--quick]
                                 [--only hold,good,fanout,flood,storm,churn] [--no-build]

  --server-bin      the wsreactor binary        [target/release/wsreactor]
  --server-args S   extra arguments for it, split like a shell would
                    (--server-args "--max-handshakes 2048"); also --server-arg=ARG,
                    one at a time; not given to the fan-out server
  --fanout-bin      a server that broadcasts every message to every connection
                    [target/release/examples/broadcast]; the chat example works too
                    with --fanout-path /chat (it only relays text)
  --quick / QUICK=1 everything at small scale, under ~2 minutes
  --only            a subset of the measurements
  --no-build        use the binaries as they are (default: cargo build --release at
                    the repo root, then in bench/, one after the other)

Knobs (environment): FANOUT_SECONDS (30; quick 5), HOLD_SECONDS (10; quick 2),
GOOD_SECONDS (10; quick 3), RSS_LIMIT (bytes, default 12 GiB: a run whose server grows
past it stops early and says so — the machine has 24 GiB, and an unbounded server
would otherwise take it: 1000 deflate bombs of 15 MiB are ~15 GiB).

Everything goes to bench/target/attack-results/<UTC time>/: each run's JSON and stderr,
the server logs, and table.md (also printed).
"""

import argparse
import datetime
import json
import os
import resource
import shlex
import subprocess
import sys
import time

from processes import env_num, log, start_server, stop, stop_all, stop_all_on_signals, track

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
ATTACK = os.path.join(BENCH, "target", "release", "attack")
SERVER_CPU, CLIENT_CPU = "0", "1"


def nofile():
    """Raise RLIMIT_NOFILE (in the child, before exec): 65536 if allowed, else the
    hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (65536, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
            return
        except (ValueError, OSError):
            continue


class Runner:
    def __init__(self, args, outdir):
        self.args = args
        self.outdir = outdir
        self.rows = []

    def start_server(self, name, argv_of_port):
        return start_server(lambda port: ["taskset", "-c", SERVER_CPU] + argv_of_port(port),
                            os.path.join(self.outdir, f"{name}.server.log"), nofile)

    def wsreactor(self, name, deflate=False):
        extra = list(self.args.server_arg or [])
        if deflate and "--deflate" not in extra and "--deflate-takeover" not in extra:
            extra.append("--deflate")
        return self.start_server(name, lambda port: [
            self.args.server_bin, "--listen", f"127.0.0.1:{port}"] + extra)

    def broadcaster(self, name):
        return self.start_server(name, lambda port: [self.args.fanout_bin, f"127.0.0.1:{port}"])

    def attack_argv(self, mode, port, pid, flags):
        return (["taskset", "-c", CLIENT_CPU, ATTACK, mode, "--addr", f"127.0.0.1:{port}",
                 "--server-pid", str(pid), "--rss-limit", str(int(RSS_LIMIT))]
                + [str(f) for f in flags])

    def attack(self, name, mode, port, pid, flags, timeout):
        argv = self.attack_argv(mode, port, pid, flags)
        log(f"# {name}: {' '.join(argv[3:])}")
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  text=True, timeout=timeout, preexec_fn=nofile)
        except subprocess.TimeoutExpired:
            return {"error": f"attack timed out after {timeout} s"}
        with open(os.path.join(self.outdir, f"{name}.stderr"), "w") as f:
            f.write(done.stderr)
        for line in done.stderr.splitlines():
            log(f"  {line}")
        lines = [l for l in done.stdout.splitlines() if l.startswith("{")]
        if not lines:
            return {"error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}
        with open(os.path.join(self.outdir, f"{name}.json"), "w") as f:
            f.write(lines[-1] + "\n")
        return json.loads(lines[-1])

    def row(self, name, client, result, summary):
        self.rows.append((name, client, result, summary))


# ---------------------------------------------------------------------------------
# Formatting

def mib(v):
    return "—" if v is None else f"{v / 2**20:,.1f}"


def num(v, digits=0):
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


def ms(obj, key):
    v = (obj or {}).get(key)
    return "—" if v is None else f"{v:,.1f}"


def codes(tally):
    return ", ".join(f"{k}: {v}" for k, v in (tally or {}).items()) or "none"


def server_mem(r):
    s = r.get("server") or {}
    return f"{mib(s.get('rss_before'))} / {mib(s.get('rss_peak'))} / {mib(s.get('rss_after'))}"


def closed_col(r, key="closed_by_server"):
    c = r.get(key) or {}
    if not c.get("count"):
        return "0"
    return (f"{c['count']} ({codes(c.get('how'))}; first {num(c.get('first_secs'), 1)} s, "
            f"last {num(c.get('last_secs'), 1)} s)")


def aborted(r):
    if r.get("error"):
        return f" **{r['error']}**"
    return f" **aborted: {r['aborted']}**" if r.get("aborted") else ""


def cpu(r):
    """Server CPU seconds (and seconds it waited for its core), client cores used."""
    s, c = r.get("server") or {}, r.get("client") or {}
    if s.get("cpu_us") is None:
        return "—"
    wait, cwait = s.get("run_wait_ms"), c.get("run_wait_ms")
    return (f"{s['cpu_us'] / 1e6:.2f} s"
            + (f" (waited {wait / 1000:.2f} s)" if wait is not None else "")
            + f" / {num(c.get('cpu_util'), 2)}"
            + (f" (waited {cwait / 1000:.2f} s)" if cwait is not None else ""))


def table(rows):
    head = ("| measurement | client side | server RSS before / peak / after (MiB) "
            "| RSS growth ÷ bytes sent | closed by the server | result "
            "| server CPU s (waiting for its core) / client cores (waiting) |")
    lines = [head, "|---|---|---|---:|---|---|---|"]
    for name, client, r, summary in rows:
        ratio = r.get("rss_growth_per_byte_sent", r.get("rss_growth_per_byte_published"))
        lines.append("| " + " | ".join([
            name, client, server_mem(r), num(ratio, 2) if ratio is not None else "—",
            r.get("_closed", closed_col(r)), summary + aborted(r), cpu(r)]) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------
# The measurements

def run_hold(rn, q):
    secs = HOLD_SECONDS
    for deflate in (False, True):
        for conns in ((10, 50) if q else (20, 1000)):
            name = f"hold-{conns}{'-deflate' if deflate else ''}"
            proc, port = rn.wsreactor(name, deflate=deflate)
            flags = ["--conns", conns, "--seconds", secs] + (["--deflate"] if deflate else [])
            r = rn.attack(name, "hold", port, proc.pid, flags, timeout=secs + 150)
            stop(proc)
            what = (f"{conns} × first fragment, FIN=0, "
                    + (f"deflate bomb {mib(r.get('size'))} MiB → "
                       f"{num(r.get('fragment_wire_payload'))} B" if deflate
                       else f"{mib(r.get('size'))} MiB") + f", {num(secs)} s")
            summary = (f"{num(r.get('fragments_written'))}/{conns} fragments written; "
                       f"{mib(r.get('bytes_sent'))} MiB sent; "
                       f"{num(r.get('still_open_at_end'))} still open; "
                       f"RSS after disconnect {mib(r.get('rss_after_disconnect'))} MiB")
            rn.row(f"hold {conns}{' --deflate' if deflate else ''}", what, r, summary)


def run_good(rn, q):
    holders = 50 if q else 1000
    good_secs = GOOD_SECONDS
    name = f"good-vs-{holders}-bombs"
    proc, port = rn.wsreactor(name, deflate=True)
    hold_secs = 2 * good_secs + 5
    argv = rn.attack_argv("hold", port, proc.pid,
                          ["--conns", holders, "--deflate", "--seconds", hold_secs])
    log(f"# {name}: holders: {' '.join(argv[3:])}")
    hold_err = open(os.path.join(rn.outdir, f"{name}.hold.stderr"), "w+")
    hold_out = open(os.path.join(rn.outdir, f"{name}.hold.json"), "w+")
    holder = track(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=hold_out,
                                    stderr=hold_err, preexec_fn=nofile))
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and holder.poll() is None:
            hold_err.seek(0)
            if "holding" in hold_err.read():
                break
            time.sleep(0.2)
        time.sleep(1)  # the server inflates what the holders wrote
        for deflate in (True, False):
            tag = "compressed" if deflate else "uncompressed"
            flags = ["--size", "1M", "--seconds", good_secs] + (["--deflate"] if deflate else [])
            r = rn.attack(f"{name}-{tag}", "good", port, proc.pid, flags,
                          timeout=good_secs + 60)
            rtt = r.get("rtt_ms") or {}
            summary = (f"{num(r.get('ok'))} echoes verified, {num(r.get('failed'))} failed "
                       f"({codes(r.get('failures'))}); RTT p50 {ms(rtt, 'p50')} ms, "
                       f"p99 {ms(rtt, 'p99')} ms")
            closed = {k: v for k, v in (r.get("failures") or {}).items()
                      if k.startswith("closed by server")}
            r["_closed"] = codes(closed) if closed else "0"
            rn.row(f"good, {tag}, vs {holders} bomb holders",
                   f"1 conn × 1 MiB random payload, closed loop, {num(good_secs)} s",
                   r, summary)
        holder.wait(timeout=hold_secs + 150)
    except subprocess.TimeoutExpired:
        pass
    finally:
        stop(holder)
        stop(proc)
        hold_out.seek(0)
        text = hold_out.read().strip()
        if text:
            h = json.loads(text.splitlines()[-1])
            rn.row(f"(the {holders} bomb holders)", "hold --deflate during the good runs", h,
                   f"{num(h.get('still_open_at_end'))} still open at the end")


def run_fanout(rn, q):
    subs, readers = (50, 10) if q else (1000, 100)
    secs = FANOUT_SECONDS
    name = "fanout"
    proc, port = rn.broadcaster(name)
    flags = ["--subscribers", subs, "--readers", readers, "--size", 60000,
             "--seconds", secs, "--path", rn.args.fanout_path]
    r = rn.attack(name, "fanout", port, proc.pid, flags, timeout=secs + 150)
    stop(proc)
    rd = r.get("readers") or {}
    lag = rd.get("lag_ms") or {}
    r["_closed"] = closed_col(r, "non_readers") + " of the non-readers"
    summary = (f"{num(r.get('published_msgs'))} msgs published ({num(r.get('publish_rate'))}/s); "
               f"per reader delivered min {num(rd.get('delivered_min'))}, median "
               f"{num(rd.get('delivered_median'))} (min {num(rd.get('rate_min'))}/s), "
               f"missed {num(rd.get('missed_total'))}; lag p50 {ms(lag, 'p50')} ms, "
               f"p99 {ms(lag, 'p99')} ms")
    rn.row("fanout", f"{subs} non-readers + {readers} readers, 60,000 B msgs, {num(secs)} s",
           r, summary)


def run_flood(rn, q):
    connects, rate, echoers = (2000, 2000, 20) if q else (20000, 5000, 100)
    name = "flood"
    proc, port = rn.wsreactor(name)
    flags = ["--connects", connects, "--rate", rate, "--echoers", echoers]
    r = rn.attack(name, "flood", port, proc.pid, flags, timeout=2 * connects / rate + 60)
    stop(proc)
    b, f = r.get("echo_baseline_ms") or {}, r.get("echo_flood_ms") or {}
    others = {k: v for k, v in (r.get("probes") or {}).items() if k not in ("101", "503")}
    summary = (f"connects: {num(r.get('upgraded_101'))} × 101, {num(r.get('refused_503'))} × 503, "
               f"other: {codes(others)}; echo RTT p50/p99/max baseline {ms(b, 'p50')}/"
               f"{ms(b, 'p99')}/{ms(b, 'max')} ms → flood {ms(f, 'p50')}/{ms(f, 'p99')}/"
               f"{ms(f, 'max')} ms; echo failures: {codes(r.get('echo_failures'))}")
    r["_closed"] = "—"
    rn.row("flood", f"{num(connects)} upgrade connects at {num(rate)}/s vs {echoers} echoers",
           r, summary)


def run_storm(rn, q):
    secs = 2 if q else 5
    for rate in ((1000, 3000) if q else (10000, 30000)):
        name = f"storm-{rate}"
        proc, port = rn.wsreactor(name)
        r = rn.attack(name, "storm", port, proc.pid, ["--rate", rate, "--seconds", secs],
                      timeout=secs + 60)
        stop(proc)
        cyc, late = r.get("cycle_ms") or {}, r.get("start_lateness_ms") or {}
        summary = (f"{num(r.get('attempted'))} attempted, {num(r.get('completed'))} completed, "
                   f"{num(r.get('refused_503'))} refused (503), {num(r.get('failed'))} failed "
                   f"({codes(r.get('failures'))}); server CPU "
                   f"{num(r.get('server_cpu_us_per_cycle'), 1)} µs per completed cycle; "
                   f"cycle p50/p99 {ms(cyc, 'p50')}/{ms(cyc, 'p99')} ms; client start "
                   f"lateness p99 {ms(late, 'p99')} ms")
        r["_closed"] = "—"
        rn.row(f"storm {num(rate)}/s", f"connect, upgrade, 1 echo, close; open loop, {secs} s",
               r, summary)


def run_churn(rn, q):
    total, held = (5000, 50) if q else (150000, 50)
    name = "churn"
    proc, port = rn.wsreactor(name)
    r = rn.attack(name, "churn", port, proc.pid, ["--total", total, "--hold", held],
                  timeout=900)
    stop(proc)
    summary = (f"{num(r.get('completed'))} completed ({num(r.get('cycles_per_sec'))}/s), "
               f"{num(r.get('refused_503'))} refused, {num(r.get('failed'))} failed; "
               f"RSS growth {num(r.get('rss_growth_per_cycle'), 2)} B per cycle; "
               f"{num(r.get('held_verified'))}/{held} held still echo")
    r["_closed"] = codes(r.get("held_lost")) if r.get("held_lost") else "0"
    rn.row("churn", f"{num(total)} cycles, 4 at a time, next to {held} held", r, summary)


RUNS = {"hold": run_hold, "good": run_good, "fanout": run_fanout, "flood": run_flood,
        "storm": run_storm, "churn": run_churn}


def main():
    global FANOUT_SECONDS, HOLD_SECONDS, GOOD_SECONDS, RSS_LIMIT
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--server-bin", default=os.path.join(ROOT, "target", "release", "wsreactor"))
    p.add_argument("--server-arg", action="append", default=[])
    p.add_argument("--server-args", default="")
    p.add_argument("--fanout-bin",
                   default=os.path.join(ROOT, "target", "release", "examples", "broadcast"))
    p.add_argument("--fanout-path", default="/")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default=",".join(RUNS))
    p.add_argument("--no-build", action="store_true")
    args = p.parse_args()
    args.server_arg = shlex.split(args.server_args) + args.server_arg
    quick = args.quick or os.environ.get("QUICK", "") not in ("", "0")
    FANOUT_SECONDS = env_num("FANOUT_SECONDS", 5 if quick else 30)
    HOLD_SECONDS = env_num("HOLD_SECONDS", 2 if quick else 10)
    GOOD_SECONDS = env_num("GOOD_SECONDS", 3 if quick else 10)
    RSS_LIMIT = env_num("RSS_LIMIT", 12 * 2**30)
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    for n in only:
        if n not in RUNS:
            sys.exit(f"run_attacks: unknown measurement {n!r} (known: {', '.join(RUNS)})")
    stop_all_on_signals()
    if not args.no_build:
        # One build at a time (2 cores).
        subprocess.run(["cargo", "build", "--release", "--features", "cli", "--bin", "wsreactor",
                        "--example", "broadcast"], cwd=ROOT, check=True)
        subprocess.run(["cargo", "build", "--release", "--bin", "attack"], cwd=BENCH,
                       check=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    outdir = os.path.join(BENCH, "target", "attack-results", stamp)
    os.makedirs(outdir, exist_ok=True)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    log(f"run_attacks: {'quick' if quick else 'full'} set; results in {outdir}; "
        f"open-file limit here {soft}/{hard} (children ask for 65536)")
    rn = Runner(args, outdir)
    t0 = time.monotonic()
    try:
        for n in only:
            try:
                RUNS[n](rn, quick)
            except Exception as e:  # one failed measurement must not lose the others
                log(f"run_attacks: {n}: {e}")
                rn.row(n, "—", {"error": str(e)}, "")
    finally:
        stop_all()
    text = (f"Server: `{args.server_bin} {' '.join(args.server_arg)}`; fan-out server: "
            f"`{args.fanout_bin}`; {'quick' if quick else 'full'} set, "
            f"{time.monotonic() - t0:.0f} s.\n\n" + table(rn.rows) + "\n")
    with open(os.path.join(outdir, "table.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()

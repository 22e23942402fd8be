#!/usr/bin/env python3
"""Run the kosoku (Autobahn-style) fuzzingclient against our echo server.

Starts the server on a free loopback port, waits until it accepts TCP, runs
kosoku, always stops the server it started (by PID), then summarises
OUTDIR/index.json. Exits 0 only if every case is OK or INFORMATIONAL (for both
the message verdict `behavior` and the closing-handshake verdict
`behaviorClose`); NON-STRICT, FAILED, UNIMPLEMENTED, ERROR, a missing report or
an empty one all fail.

Stdlib only, so it runs with the venv's python or the system python3.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Sections 1-10 of the suite. There is no section 8 in it: kosoku rejects a
# pattern that matches nothing ("no cases match pattern: 8.*"), so it's left
# out. 12/13 (permessage-deflate) run separately against a server started with
# --deflate (`make conformance-deflate`).
DEFAULT_CASES = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*"]
PASSING = {"OK", "INFORMATIONAL"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", "-i", action="append", metavar="GLOB",
                   help="case id or glob to run, repeatable (default: 1.*-10.*)")
    p.add_argument("--exclude", "-x", action="append", default=[], metavar="GLOB",
                   help="case id or glob to skip, repeatable")
    # Honour CARGO_TARGET_DIR, where cargo will have put the release build.
    binary = Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "release" / "wsreactor"
    p.add_argument("--server-cmd",
                   default=f"{shlex.quote(str(binary))} --listen 127.0.0.1:{{port}} --path {{path}}",
                   help="server command; {port} and {path} are substituted "
                        "(split with shlex, run without a shell so its PID is the server's)")
    p.add_argument("--path", default="/echo", help="WebSocket path to test")
    p.add_argument("--kosoku", default=None,
                   help="kosoku executable (default: .venv/bin/kosoku, else PATH)")
    p.add_argument("--outdir", default=str(ROOT / "target" / "conformance"),
                   help="report directory; index.json/index.html and server.log land here")
    p.add_argument("--parallelism", "-p", type=int, default=1,
                   help="cases in parallel (default 1: with more, timing-sensitive "
                        "cases such as 3.4 and 4.x.5 flip between OK and NON-STRICT)")
    p.add_argument("--timeout", type=float, default=20 * 60,
                   help="seconds before kosoku is killed (default 1200)")
    return p.parse_args()


def free_port() -> int:
    # Ask the OS for an unused port. Another process could grab it before the
    # server binds; the server then exits early and we report that clearly.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def die_with_parent() -> None:
    # Runs in the child before exec: if this script is SIGKILLed (so its
    # `finally` can't run), the kernel still sends the child SIGTERM, so
    # neither the server nor kosoku outlives us.
    try:
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


def tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no server log)"


def wait_for_tcp(port: int, server: subprocess.Popen, log: Path, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"conformance: server exited with {server.returncode} before "
                     f"accepting connections; log tail:\n{tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"conformance: server not accepting on 127.0.0.1:{port} after {limit}s; "
             f"log tail:\n{tail(log)}")


def stop(server: subprocess.Popen) -> None:
    # Only ever signal the process we spawned, by its PID.
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def find_kosoku(explicit: str | None) -> str:
    if explicit:
        return explicit
    venv = ROOT / ".venv" / "bin" / "kosoku"
    if venv.exists():
        return str(venv)
    if shutil.which("kosoku"):
        return shutil.which("kosoku")
    sys.exit("conformance: kosoku not found; run `make venv` or pass --kosoku")


def clear_old_report(outdir: Path) -> None:
    # kosoku writes index.json only when it finishes, so a stale one from an
    # earlier run would otherwise be read as this run's result.
    for pattern in ("index.json", "index.html", "*_case_*.json", "*_case_*.html"):
        for f in outdir.glob(pattern):
            f.unlink()


def brief(value: object, limit: int = 200) -> str:
    """One short plain line: the reports' prose carries HTML and multi-line
    hex dumps that would drown the summary (the full text is in the report)."""
    text = value if isinstance(value, str) else json.dumps(value)
    text = " ".join(re.sub(r"<[^>]+>", " ", text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def case_key(case_id: str) -> list[int]:
    return [int(x) for x in case_id.split(".")]  # 1.2.10 after 1.2.9


def summarise(outdir: Path, kosoku_rc: int, problems: list[str]) -> int:
    """Print verdict counts and every non-passing case; return the exit code.

    `problems` are run-level failures (e.g. the server died) that fail the run
    even if every case in the report passed.
    """
    index_file = outdir / "index.json"
    if not index_file.exists():
        for problem in problems:
            print(f"conformance: {problem}")
        print(f"conformance: no report at {index_file} (kosoku exit {kosoku_rc})")
        return 1
    # Layout: {agent (server's `Server` header): {case id: {"behavior",
    # "behaviorClose", "remoteCloseCode", "duration", "reportfile"}}}.
    index = json.loads(index_file.read_text())
    cases = [(cid, e) for per_agent in index.values() for cid, e in per_agent.items()]
    if not cases:
        print(f"conformance: {index_file} holds no cases")
        return 1
    cases.sort(key=lambda c: case_key(c[0]))

    behaviors = collections.Counter(e["behavior"] for _, e in cases)
    closes = collections.Counter(e["behaviorClose"] for _, e in cases)
    bad = [(cid, e) for cid, e in cases
           if e["behavior"] not in PASSING or e["behaviorClose"] not in PASSING]

    print(f"\n== conformance summary ({len(cases)} cases, agent: {', '.join(index) or '?'}) ==")
    print("behavior:      " + ", ".join(f"{k} {v}" for k, v in sorted(behaviors.items())))
    print("behaviorClose: " + ", ".join(f"{k} {v}" for k, v in sorted(closes.items())))
    if bad:
        print("\nnot OK/INFORMATIONAL:")
    for cid, e in bad:
        # The per-case report holds the prose; index.json only the verdicts.
        try:
            detail = json.loads((outdir / e["reportfile"]).read_text())
        except (OSError, KeyError, ValueError):
            detail = {}
        print(f"  {cid}: behavior={e['behavior']} behaviorClose={e['behaviorClose']} "
              f"remoteCloseCode={e.get('remoteCloseCode')}")
        for key in ("description", "expectation", "received", "result", "resultClose"):
            if key in detail and not (key == "resultClose" and detail[key] == detail.get("result")):
                print(f"      {key}: {brief(detail[key])}")

    # kosoku exits 1 when a case fails by its own (laxer) standard, so a
    # non-zero exit with nothing bad in the report means something else broke.
    if not bad and kosoku_rc != 0:
        problems.append(f"kosoku exited {kosoku_rc} although every case passed")
    for problem in problems:
        print(f"conformance: {problem}")
    print(f"report: {outdir / 'index.html'}")
    # Plain closing line that CI's log reader recognises; run-level problems
    # count as failures so it never reads "0 failed" on a failing run.
    print(f"conformance: {len(cases) - len(bad)} passed, {len(bad) + len(problems)} failed")
    return 1 if bad or problems else 0


def main() -> int:
    args = parse_args()
    os.chdir(ROOT)  # so relative paths in --server-cmd work from any cwd
    kosoku = find_kosoku(args.kosoku)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    clear_old_report(outdir)

    port = free_port()
    cmd = shlex.split(args.server_cmd.format(port=port, path=args.path))
    url = f"ws://127.0.0.1:{port}{args.path}"
    log = outdir / "server.log"
    env = dict(os.environ)
    # Quiet unless asked: per-message logging over 300 cases, some with
    # multi-MB messages, would bury the few lines that matter.
    env.setdefault("RUST_LOG", "warn")

    # SIGTERM (e.g. CI teardown) should unwind like Ctrl-C so `finally` runs.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    print(f"conformance: starting {shlex.join(cmd)} (log: {log})", flush=True)
    with open(log, "wb") as log_fh:
        server = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_fh,
                                  stderr=subprocess.STDOUT, env=env,
                                  preexec_fn=die_with_parent)
    try:
        wait_for_tcp(port, server, log)
        kcmd = [kosoku, "-m", "fuzzingclient", "-o", str(outdir),
                "-p", str(args.parallelism)]
        for c in args.cases or DEFAULT_CASES:
            kcmd += ["-i", c]
        for x in args.exclude:
            kcmd += ["-x", x]
        kcmd.append(url)
        print(f"conformance: {shlex.join(kcmd)}", flush=True)
        start = time.monotonic()
        try:
            rc = subprocess.run(kcmd, stdin=subprocess.DEVNULL, timeout=args.timeout,
                                preexec_fn=die_with_parent).returncode
        except subprocess.TimeoutExpired:  # subprocess.run has killed kosoku
            print(f"conformance: kosoku timed out after {args.timeout:.0f}s")
            return 1
        print(f"conformance: kosoku finished in {time.monotonic() - start:.1f}s (exit {rc})")
        problems = []
        if server.poll() is not None:  # an echo server must survive the fuzzer
            print(f"conformance: server log tail:\n{tail(log)}")
            problems.append(f"server died during the run (exit {server.returncode})")
    finally:
        stop(server)
    return summarise(outdir, rc, problems)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # `finally` in main() has already stopped the server
        print("conformance: interrupted", file=sys.stderr)
        sys.exit(130)

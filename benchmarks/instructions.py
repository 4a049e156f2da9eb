#!/usr/bin/env python3
"""Instructions per request of one berth worker, counted by callgrind: a cost that does not
drift with a shared, noisy machine, for comparing a change with the commit before it.

    python benchmarks/instructions.py --baseline HEAD~1            # working tree vs HEAD~1
    python benchmarks/instructions.py --threads 4 --app big:app --baseline 1a2b3c4
    python benchmarks/instructions.py --app flaskapp:app --granian --inprocess

berth runs under `valgrind --tool=callgrind --trace-children=yes` (`-w 1`, access log off, the
app from `benchmarks/`); one client sends requests one after another on a keep-alive
connection: a warm-up, then N1, and in a second run N2. The worker's instruction count grows
with the requests, so (I(N2) - I(N1)) / (N2 - N1) is its cost per request, start-up and import
costs cancelled out; the N1 run keeps its connection open until it has lasted as long as the N2
run, so that the work a worker does on a clock (berth's ticks) cancels out too. The same code
measured twice agrees within about 0.1%. It counts instructions, not time: a cache miss or a
GIL hand-off costs the same as an add, so wall-clock runs (`bench.py`) stay the judge of
throughput; this one tells whether a change made the request path do more work. Needs valgrind
(`apt-get install -y valgrind`). Linux only.

`--granian` counts Granian's worker the same way (1 worker, `--blocking-threads` = `--threads`,
all of its threads), and `--inprocess` the app alone, called in-process as
`benchmarks/inprocess.py` calls it (a copied environ, the body iterated, `close()`): each
server's count minus the app's is that server's own share of a request, in instructions, the
steady twin of `bench.py`'s "share us/req".
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import REPO_ROOT, BenchError, baseline_worktree  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
WARMUP = 50
START_TIMEOUT = 300.0  # importing under valgrind is slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_response(sock: socket.socket, buf: bytes) -> bytes:
    """Read one Content-Length-framed response; return what follows it."""
    while True:
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"\r\ncontent-length: *(\d+)", head, re.I)
            if m is None:
                raise BenchError(f"the app's response has no Content-Length: {head[:200]!r}")
            length = int(m.group(1))
            while len(rest) < length:
                data = sock.recv(1 << 20)
                if not data:
                    raise BenchError("the server closed the connection")
                rest += data
            return rest[length:]
        data = sock.recv(1 << 20)
        if not data:
            raise BenchError("the server closed the connection")
        buf += data


def berth_argv(port: int, app: str, threads: int) -> list[str]:
    """berth itself is found through PYTHONPATH: the working tree's, or a baseline's."""
    return ["-m", "berth", "-b", f"127.0.0.1:{port}", "-w", "1", "--threads", str(threads),
            "--access-logfile", "none", "--chdir", str(BENCH_DIR), app]


def granian_argv(port: int, app: str, threads: int) -> list[str]:
    return ["-m", "granian", "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--blocking-threads", str(threads), "--no-access-log",
            "--working-dir", str(BENCH_DIR), app]


def callgrind_counts(out_dir: Path, leave_out: str | None = None) -> list[int]:
    """The totals of the callgrind files in `out_dir` (all but `leave_out`), which goes."""
    counts = []
    for path in glob.glob(f"{out_dir}/callgrind.*"):
        text = Path(path).read_text(errors="replace")
        m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if m and path != leave_out:
            counts.append(int(m.group(1)))
        os.unlink(path)
    os.rmdir(out_dir)
    if not counts:
        raise BenchError("callgrind wrote no counts")
    return counts


def worker_instructions(root: Path, requests: int, app: str, threads: int,
                        argv=berth_argv, last: float = 0.0) -> tuple[int, float]:
    """Run a server (berth from `root`, or what `argv` makes) under callgrind, send WARMUP +
    `requests` requests, keep the connection until `last` seconds have passed since the
    first, stop the server, and return the instructions of its busiest child process (the
    worker: with few requests the master can count more, so its file is left out) and the
    seconds the requests took."""
    out_dir = Path(tempfile.mkdtemp(prefix="berth-callgrind-"))
    port = free_port()
    # a fixed hash seed: dict and set layouts (and so instruction counts) repeat run to run
    env = dict(os.environ, PYTHONPATH=str(root), BERTH_IN_CONTAINER="0", PYTHONHASHSEED="0")
    server = argv(port, app, threads)
    cmd = ["valgrind", "--tool=callgrind", "--trace-children=yes",
           f"--callgrind-out-file={out_dir}/callgrind.%p", sys.executable, *server]
    # cwd: `python -m` puts the current directory first on sys.path, before PYTHONPATH: run
    # from a checkout, every measurement would import that checkout's berth, baselines too
    proc = subprocess.Popen(cmd, env=env, cwd=BENCH_DIR, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=60)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise BenchError(f"{server[1]} did not start "
                                     "under valgrind") from None
                time.sleep(0.5)
        with sock:
            sock.settimeout(60)
            request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            buf = b""
            started = time.monotonic()
            for _ in range(WARMUP + requests):
                sock.sendall(request)
                buf = read_response(sock, buf)
            took = time.monotonic() - started
            time.sleep(max(0.0, last - took))
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)  # our own child, by pid
        try:
            proc.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
    # (valgrind keeps the pid: the master's file is named after it, not the worker's)
    return max(callgrind_counts(out_dir, leave_out=f"{out_dir}/callgrind.{proc.pid}")), took


INPROCESS = """
import sys
sys.path[:0] = [sys.argv[1]]
import inprocess
app = inprocess.load_app(sys.argv[2])
environ = inprocess.request_environ()
for _ in range(int(sys.argv[3])):
    inprocess.call_once(app, environ)
"""


def inprocess_instructions(calls: int, app: str) -> int:
    """The instructions of a process that imports `app` and calls it WARMUP + `calls` times
    in-process (benchmarks/inprocess.py's call_once, no server)."""
    out_dir = Path(tempfile.mkdtemp(prefix="berth-callgrind-"))
    env = dict(os.environ, PYTHONHASHSEED="0")
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/callgrind.%p",
           sys.executable, "-c", INPROCESS, str(BENCH_DIR), app, str(WARMUP + calls)]
    done = subprocess.run(cmd, env=env, cwd=BENCH_DIR, stdin=subprocess.DEVNULL,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          timeout=START_TIMEOUT)
    if done.returncode != 0:
        raise BenchError(f"the app failed in-process: {done.stderr.strip()[-500:]}")
    return max(callgrind_counts(out_dir))


def per_request(root: Path, n1: int, n2: int, app: str, threads: int,
                argv=berth_argv) -> float:
    """The two runs last as long: a worker's work on a clock (berth's ticks, twice a second,
    some 250k instructions each) cancels out instead of being charged to the requests of the
    longer run, the more so the slower the app is under valgrind."""
    high, took = worker_instructions(root, n2, app, threads, argv)
    low, _ = worker_instructions(root, n1, app, threads, argv, last=took)
    return (high - low) / (n2 - n1)


def per_call_inprocess(n1: int, n2: int, app: str) -> float:
    return (inprocess_instructions(n2, app) - inprocess_instructions(n1, app)) / (n2 - n1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", action="append", default=[], metavar="REF",
                        help="also measure berth as of this commit (repeatable)")
    parser.add_argument("--app", default="hello:app", help="an app of benchmarks/")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--requests", type=int, nargs=2, default=(200, 2200),
                        metavar=("N1", "N2"), help="the two request counts (default 200 2200)")
    parser.add_argument("--granian", action="store_true",
                        help="also count Granian (1 worker, --blocking-threads = --threads)")
    parser.add_argument("--inprocess", action="store_true",
                        help="also count the app alone in-process: each server's share")
    args = parser.parse_args(argv)
    if subprocess.run(["valgrind", "--version"], capture_output=True).returncode != 0:
        print("valgrind is needed: apt-get install -y valgrind", file=sys.stderr)
        return 2
    n1, n2 = args.requests
    try:
        here = per_request(REPO_ROOT, n1, n2, args.app, args.threads)
        print(f"working tree: {here:,.0f} instructions per request "
              f"({args.app}, --threads {args.threads})")
        for ref in args.baseline:
            with baseline_worktree(ref) as base:
                then = per_request(base.path, n1, n2, args.app, args.threads)
            print(f"{base.short} ({base.subject[:60]}): {then:,.0f}; working tree / it: "
                  f"{here / then:.3f}x instructions")
        peer = None
        if args.granian:
            peer = per_request(REPO_ROOT, n1, n2, args.app, args.threads, granian_argv)
            print(f"granian (--blocking-threads {args.threads}): {peer:,.0f}; working tree / "
                  f"it: {here / peer:.3f}x instructions")
        if args.inprocess:
            alone = per_call_inprocess(n1, n2, args.app)
            line = (f"the app alone, in-process: {alone:,.0f}; the server's own share: "
                    f"working tree {here - alone:,.0f}")
            if peer is not None:
                line += (f", granian {peer - alone:,.0f} (working tree / it: "
                         f"{(here - alone) / (peer - alone):.2f}x)")
            print(line)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

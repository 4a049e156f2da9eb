"""The admin listener's latency while every app thread is busy.

    python benchmarks/admin.py [--workers 2] [--threads 1] [--requests 50]

Starts berth with `--admin-bind`, occupies every app thread of every worker with a long
request (`/sleep`), then asks `/livez`, `/readyz`, `/metrics` and `/status` N times each and
prints their latency (median, p99 and max, in ms). The master answers them from the
scoreboard, so they must stay fast (the goal: under 100 ms) however busy the workers are.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(err: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while "ready: " not in err.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"berth did not start:\n{err.read_text(errors='replace')}")
        time.sleep(0.05)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--requests", type=int, default=50)
    args = ap.parse_args()
    port, admin = free_port(), free_port()
    env = dict(os.environ, BERTH_IN_CONTAINER="0", PYTHONPATH=f"{APPS}{os.pathsep}{ROOT}")
    with tempfile.TemporaryDirectory(prefix="berth-admin-bench-") as tmp:
        err = Path(tmp) / "stderr.log"
        with open(err, "wb") as err_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "berth", "-b", f"127.0.0.1:{port}", "--admin-bind",
                 f"127.0.0.1:{admin}", "-w", str(args.workers), "--threads", str(args.threads),
                 "--access-logfile", "none", "super_app:app"],
                env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=err_file,
                stdin=subprocess.DEVNULL)
        try:
            wait_ready(err, proc)
            busy = []
            for _ in range(args.workers * args.threads * 2):  # every thread, and a queue
                s = socket.create_connection(("127.0.0.1", port), timeout=60)
                s.sendall(b"GET /sleep?s=30 HTTP/1.1\r\nHost: x\r\n\r\n")
                busy.append(s)
            time.sleep(1.5)  # the workers have published their busy state
            print(f"berth -w {args.workers} --threads {args.threads}: every app thread busy "
                  f"({len(busy)} 30 s requests sent); {args.requests} requests per endpoint")
            print(f"{'endpoint':<10} {'median ms':>10} {'p99 ms':>8} {'max ms':>8}")
            for path in ("/livez", "/readyz", "/metrics", "/status"):
                times = []
                for _ in range(args.requests):
                    t0 = time.perf_counter()
                    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
                    conn.request("GET", path)
                    resp = conn.getresponse()
                    resp.read()
                    conn.close()
                    times.append((time.perf_counter() - t0) * 1000)
                    if resp.status != 200:
                        print(f"  {path}: status {resp.status}")
                times.sort()
                p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
                print(f"{path:<10} {statistics.median(times):>10.2f} {p99:>8.2f} "
                      f"{times[-1]:>8.2f}")
            for s in busy:
                s.close()
        finally:
            os.kill(proc.pid, signal.SIGINT)  # our own child, by pid: stop at once
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())

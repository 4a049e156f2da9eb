#!/usr/bin/env python3
"""How fast berth replaces a worker killed with SIGKILL, and what a client notices.

Run from the repository root:

    python benchmarks/recovery.py --trials 10

It starts `python -m berth -w 2 --threads 2 --log-level debug ... hello:app` on a free
127.0.0.1 port and waits for `ready: `. Then, per trial, it SIGKILLs one worker (a child of the
master, from /proc/<master>/task/<master>/children) and polls until the master has 2 workers
again and logged `worker <new pid> ready` (berth's master logs it, at debug level, when the new
worker has loaded the app and entered its loop). It reports, from the kill:

* reaped: the master has reaped the killed worker (it is gone from its children);
* forked: the replacement's pid exists;
* ready: the `worker <new pid> ready` line was read from berth's stderr.

Meanwhile one client thread sends GET / over a keep-alive connection (reconnecting after an
error) and counts failures per trial. Trials alternate between killing the worker that holds the
client's connection (its request in flight, or its next one on the dead connection, may fail:
at most 1 failure) and killing the other worker (no failure expected).

Standard library only; Linux only (/proc). berth is stopped by PID: SIGTERM, SIGKILL after a
timeout, then SIGKILL for any worker seen that outlived it. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

import bench  # benchmarks/ is sys.path[0] when this file is run as a script

HOST = bench.HOST
WORKERS = 2
THREADS = 2
POLL_S = 0.0005  # /proc polling interval while waiting for the replacement
REQUEST_TIMEOUT_S = 2.0
STOP_GRACE_S = 10.0
READY_LINE = "ready: "
WORKER_READY = re.compile(r"\bworker (\d+) ready$")


class RecoveryError(RuntimeError):
    """berth did not start, died, or did not replace a worker in time."""


# --------------------------------------------------------------------------------------------
# berth's stderr, read by a thread so every line gets the time it arrived
# --------------------------------------------------------------------------------------------


class LineLog:
    """Lines of a stream, each with the monotonic time it was read."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            with self._cond:
                self.lines.append((time.monotonic(), line))
                self._cond.notify_all()
        stream.close()

    def __len__(self) -> int:
        with self._cond:
            return len(self.lines)

    def find(self, text: str, start: int = 0) -> float | None:
        """Arrival time of the first line from index `start` containing `text`."""
        with self._cond:
            return next((t for t, line in self.lines[start:] if text in line), None)

    def wait_for(self, text: str, timeout: float, start: int = 0) -> float | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while (found := self.find(text, start)) is None:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return None
                self._cond.wait(min(left, 0.1))
            return found

    def tail(self, n: int = 15) -> str:
        with self._cond:
            return "\n".join(line for _, line in self.lines[-n:])

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


# --------------------------------------------------------------------------------------------
# berth, its workers, and which worker holds a given connection
# --------------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Children of process `pid` (zombies included until reaped)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:  # kernel without CONFIG_PROC_CHILDREN: scan /proc
        return [st.pid for st in bench.process_tree(pid) if st.ppid == pid]
    return [int(p) for p in text.split()]


def socket_inode(local_port: int, remote_port: int) -> int | None:
    """Inode of the IPv4 TCP socket 127.0.0.1:local_port <-> 127.0.0.1:remote_port."""
    want = (f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}")
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if (fields[1], fields[2]) == want:
            return int(fields[9])
    return None


def holds_socket(pid: int, inode: int) -> bool:
    target = f"socket:[{inode}]"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except OSError:
            continue
    return False


class Berth:
    """`python -m berth` with 2 workers x 2 threads, stopped by PID only."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.command = [sys.executable, "-m", "berth", "-b", f"{HOST}:{port}"]
        self.command += ["-w", str(WORKERS), "--threads", str(THREADS)]
        self.command += ["--access-logfile", "none", "--log-level", "debug"]
        self.command += ["--chdir", str(bench.BENCH_DIR), "hello:app"]
        self.proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=bench.BENCH_DIR,
            env=bench.server_env(),  # BERTH_IN_CONTAINER=0, PYTHONPATH=<repo root>
            start_new_session=True,
        )
        self.pid = self.proc.pid
        assert self.proc.stderr is not None
        self.log = LineLog(self.proc.stderr)
        self._known: dict[int, int] = {}  # pid -> start time of every worker seen

    def workers(self) -> list[int]:
        pids = children(self.pid)
        for pid in pids:
            if pid not in self._known and (st := bench.read_stat(pid)) is not None:
                self._known[pid] = st.start_ticks
        return pids

    def started(self, pid: int) -> int:
        """Start time of a worker seen by `workers()` (clock ticks since boot; 0 if unknown)."""
        return self._known.get(pid, 0)

    def check_alive(self) -> None:
        if (rc := self.proc.poll()) is not None:
            raise RecoveryError(f"berth exited with status {rc}\n{self.log.tail()}")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.log.wait_for(READY_LINE, 0.1) is None:
            self.check_alive()
            if time.monotonic() > deadline:
                raise RecoveryError(f"berth not ready after {timeout:.0f} s\n{self.log.tail()}")
        self.workers()

    def stop(self) -> None:
        """SIGTERM the master, SIGKILL after STOP_GRACE_S; then SIGKILL surviving workers."""
        if self.proc.poll() is None:
            self.workers()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                print(f"! berth ignored SIGTERM for {STOP_GRACE_S:.0f} s: SIGKILL", file=sys.stderr)
                self.proc.kill()
                self.proc.wait(STOP_GRACE_S)
        deadline = time.monotonic() + 2.0
        while leftovers := [p for p, t in self._known.items() if bench.is_same_process(p, t)]:
            if time.monotonic() > deadline:
                for pid in leftovers:
                    print(f"! worker {pid} outlived the master: SIGKILL", file=sys.stderr)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                break
            time.sleep(0.05)
        self.log.join(2.0)


# --------------------------------------------------------------------------------------------
# The client: one keep-alive connection, GET / in a loop
# --------------------------------------------------------------------------------------------


class Client(threading.Thread):
    def __init__(self, port: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.interval = interval
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.done: list[float] = []  # completion time of every successful request
        self.failures: list[tuple[float, str]] = []  # (time the failure was seen, what)
        self.local_port: int | None = None  # of the current connection

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while not self.stopping.is_set():
            if conn is None:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=REQUEST_TIMEOUT_S)
            try:
                conn.request("GET", "/")
                if conn.sock is not None:
                    self.local_port = conn.sock.getsockname()[1]
                response = conn.getresponse()
                response.read()
                with self.lock:
                    if response.status == 200:
                        self.done.append(time.monotonic())
                    else:
                        self.failures.append((time.monotonic(), f"status {response.status}"))
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                with self.lock:
                    self.failures.append((time.monotonic(), type(exc).__name__))
                if conn is not None:
                    conn.close()
                conn = None
                self.local_port = None
            if self.interval:
                self.stopping.wait(self.interval)
        if conn is not None:
            conn.close()

    def worker_of(self, berth: Berth, workers: Sequence[int]) -> int | None:
        """The worker holding this client's connection, if it can be told right now."""
        local = self.local_port
        inode = socket_inode(berth.port, local) if local is not None else None
        if inode is None:
            return None
        return next((pid for pid in workers if holds_socket(pid, inode)), None)

    def between(self, start: float, end: float) -> tuple[int, list[str], float | None]:
        """(successes, failures, longest gap between successes) in [start, end)."""
        with self.lock:
            done = [t for t in self.done if start <= t < end]
            failed = [what for t, what in self.failures if start <= t < end]
            before = [t for t in self.done if t < start]
        times = before[-1:] + done  # the gap the kill opened starts at the last success before
        gaps = [b - a for a, b in zip(times, times[1:])]
        return len(done), failed, max(gaps) if gaps else None


# --------------------------------------------------------------------------------------------
# Trials
# --------------------------------------------------------------------------------------------


@dataclass
class Trial:
    number: int
    killed: int
    client_worker: bool | None  # whether the killed worker held the client's connection
    new_pid: int | None = None
    reaped_ms: float | None = None
    forked_ms: float | None = None
    ready_ms: float | None = None
    requests_ok: int = 0
    failures: list[str] = field(default_factory=list)
    longest_gap_ms: float | None = None
    error: str | None = None


def pick_victim(berth: Berth, client: Client | None, workers: list[int], number: int) -> Trial:
    """Odd trials: the worker holding the client's connection; even ones: another worker."""
    holder = client.worker_of(berth, workers) if client is not None else None
    if holder is None:
        victim = min(workers, key=berth.started)  # the oldest
    elif number % 2 == 1:
        victim = holder
    else:
        victim = next(p for p in workers if p != holder)
    return Trial(
        number=number,
        killed=victim,
        client_worker=None if holder is None else victim == holder,
    )


def run_trial(berth: Berth, client: Client | None, number: int, timeout: float) -> Trial:
    workers = berth.workers()
    if len(workers) != WORKERS:
        raise RecoveryError(f"berth has {len(workers)} workers, expected {WORKERS}")
    trial = pick_victim(berth, client, workers, number)
    st = bench.read_stat(trial.killed)
    if st is None or st.ppid != berth.pid:
        raise RecoveryError(f"worker {trial.killed} is no longer berth's child")
    mark = len(berth.log)
    before = set(workers)

    def ms(t: float) -> float:
        return (t - t0) * 1e3

    t0 = time.monotonic()
    os.kill(trial.killed, signal.SIGKILL)
    deadline = t0 + timeout
    while True:
        pids = children(berth.pid)
        now = time.monotonic()
        if trial.reaped_ms is None and trial.killed not in pids:
            trial.reaped_ms = ms(now)
        if trial.new_pid is None and (fresh := [p for p in pids if p not in before]):
            trial.new_pid, trial.forked_ms = fresh[0], ms(now)
            berth.workers()  # remember it, so stop() can find it
        if trial.new_pid is not None and trial.ready_ms is None:
            ready_at = berth.log.find(f"worker {trial.new_pid} ready", mark)
            if ready_at is not None:
                trial.ready_ms = ms(ready_at)
        if trial.ready_ms is not None and trial.reaped_ms is not None and len(pids) == WORKERS:
            break
        berth.check_alive()
        if now > deadline:
            trial.error = f"not replaced within {timeout:g} s\n{berth.log.tail()}"
            break
        time.sleep(POLL_S)
    return trial


def settle(client: Client | None, pause: float) -> None:
    """Let the client run for `pause` seconds (and the new worker take connections)."""
    if pause > 0:
        time.sleep(pause)
    if client is not None and not client.is_alive():
        raise RecoveryError("the client thread died")


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def describe(trial: Trial, trials: int, load: bool) -> str:
    holder = {
        True: " (held the client's connection)",
        False: " (idle for the client)",
        None: " (client's worker unknown)" if load else "",
    }
    text = (
        f"  trial {trial.number}/{trials}: SIGKILL worker {trial.killed}"
        f"{holder[trial.client_worker]} -> reaped {fmt_ms(trial.reaped_ms)}, "
        f"new worker {trial.new_pid or '-'} forked {fmt_ms(trial.forked_ms)}, "
        f"ready {fmt_ms(trial.ready_ms)}"
    )
    if load:
        text += (
            f"; client: {trial.requests_ok} ok, {len(trial.failures)} failed"
            + (f" ({', '.join(trial.failures)})" if trial.failures else "")
            + f", longest gap {fmt_ms(trial.longest_gap_ms)}"
        )
    if trial.error:
        text += "\n    FAILED: " + trial.error.replace("\n", "\n      ")
    return text


def stats_line(label: str, values: Sequence[float | None]) -> str:
    present = [v for v in values if v is not None]
    label = f"{label}:"
    if not present:
        return f"  {label:<40} -"
    return (
        f"  {label:<40} median {statistics.median(present):5.1f} ms, "
        f"min {min(present):.1f}, max {max(present):.1f} (n={len(present)})"
    )


def summary(trials: Sequence[Trial], load: bool) -> str:
    lines = [
        "",
        f"summary over {len(trials)} trials (times from the SIGKILL):",
        stats_line("replaced ('worker <new pid> ready')", [t.ready_ms for t in trials]),
        stats_line("replacement forked (its pid exists)", [t.forked_ms for t in trials]),
        stats_line("killed worker reaped by the master", [t.reaped_ms for t in trials]),
    ]
    failed = [t.number for t in trials if t.error]
    if failed:
        lines.append(f"  ! trials not recovered: {', '.join(map(str, failed))}")
    if not load:
        return "\n".join(lines)
    lines.append(
        stats_line("client: longest gap between responses", [t.longest_gap_ms for t in trials])
    )
    counts = [len(t.failures) for t in trials]
    on_holder = sum(len(t.failures) for t in trials if t.client_worker)
    elsewhere = sum(len(t.failures) for t in trials if not t.client_worker)
    lines.append(
        f"  client failures: {sum(counts)} (per trial: {' '.join(map(str, counts))}); "
        f"{on_holder} when the killed worker held the client's connection (at most 1 each "
        f"expected), {elsewhere} otherwise (0 expected)"
    )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Measure how fast berth replaces a SIGKILLed worker.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--trials", type=int, default=10, help="workers to kill, one at a time")
    parser.add_argument(
        "--trial-timeout", type=float, default=10.0, help="seconds to wait for a replacement"
    )
    parser.add_argument(
        "--pause", type=float, default=0.5, help="seconds between a replacement and the next kill"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=0.001,
        help="the client's pause between requests, seconds (0: back to back)",
    )
    parser.add_argument("--no-load", action="store_true", help="no client during the trials")
    parser.add_argument(
        "--ready-timeout", type=float, default=30.0, help="seconds to wait for berth to start"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the trials as JSON")
    args = parser.parse_args(argv)
    if args.trials < 1 or args.trial_timeout <= 0 or args.pause < 0 or args.interval < 0:
        parser.error("--trials and --trial-timeout must be positive, --pause and --interval >= 0")
    return args


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through main()'s `finally`: berth is stopped


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)

    berth = Berth(bench.free_port())
    client: Client | None = None
    trials: list[Trial] = []
    first_kill = 0.0
    print("berth:", bench.shell_join(berth.command))
    print("  (cwd benchmarks/, env BERTH_IN_CONTAINER=0 PYTHONPATH=<repo root>)")
    try:
        berth.wait_ready(args.ready_timeout)
        print(f"ready: master {berth.pid}, workers {' '.join(map(str, berth.workers()))}")
        if not args.no_load:
            client = Client(berth.port, args.interval)
            client.start()
            print(f"client: one keep-alive connection, GET / every {args.interval * 1e3:g} ms")
        settle(client, args.pause)
        first_kill = time.monotonic()
        for number in range(1, args.trials + 1):
            start = time.monotonic()
            trial = run_trial(berth, client, number, args.trial_timeout)
            settle(client, args.pause)
            if client is not None:
                ok, failed, gap = client.between(start, time.monotonic())
                trial.requests_ok, trial.failures = ok, failed
                trial.longest_gap_ms = None if gap is None else gap * 1e3
            trials.append(trial)
            print(describe(trial, args.trials, client is not None))
            if trial.error:
                break
    except RecoveryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        if client is not None:
            client.stopping.set()
            client.join(REQUEST_TIMEOUT_S + 1.0)
        berth.stop()

    print(summary(trials, client is not None))
    if client is not None and trials:
        _, early, _ = client.between(0.0, first_kill)
        print(f"  client failures before the first kill: {len(early)} (0 expected)")
    if args.json:
        raw = {"command": berth.command, "trials": [asdict(t) for t in trials]}
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
        print(f"\ntrials written to {args.json}")
    return 1 if any(t.error for t in trials) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: berth was stopped", file=sys.stderr)
        sys.exit(130)

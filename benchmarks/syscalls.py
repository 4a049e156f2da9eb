#!/usr/bin/env python3
"""System calls per request of one berth worker under wrk load: futex calls (GIL and lock
hand-offs between threads) and all calls, for --threads 1 against --threads 4.

    python benchmarks/syscalls.py                          # --threads 1 and 4, strace, 3 s
    python benchmarks/syscalls.py --threads 4 --tool perf --duration 5 --json syscalls.json

Per thread count: berth starts (`-w 1 --threads N --access-logfile none`, the app from
benchmarks/, pinned like bench.py's servers), a 1 s wrk warm-up runs, then the tracer attaches
to the worker (all its threads), wrk runs for `--duration` seconds, and the tracer is stopped
with SIGINT, by PID, as soon as wrk has exited. The counts are divided by the requests wrk
completed in that window (the few calls of the idle worker just before and after wrk are
included: the window is shown next to wrk's duration).

Tools:

* `strace` (`strace -c -f -p WORKER`): every call by name. It stops the worker at each system
  call, so the server runs many times slower; it counts calls, not time. Slowing the threads
  also changes how often they wait for one another, so its futex count is an upper bound.
* `perf` (`perf stat -e syscalls:sys_enter_futex,raw_syscalls:sys_enter,... -p WORKER`):
  kernel tracepoints counted in the kernel, with little slowdown, so thread hand-offs happen
  at their natural rate. Needs perf and permission to trace (root, or a low
  kernel.perf_event_paranoid).

Linux only; 127.0.0.1 only. Reuses bench.py's server start/stop and wrk helpers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

Tool = Literal["strace", "perf"]
ATTACH_TIMEOUT_S = 10.0
DETACH_TIMEOUT_S = 30.0
PERF_SETTLE_S = 0.5  # perf prints nothing when attached; give it this long to open its events
WARMUP_S = 1
# perf: the total, and a few calls of a request's path by name
PERF_EVENTS = {
    "raw_syscalls:sys_enter": "total",
    "syscalls:sys_enter_futex": "futex",
    "syscalls:sys_enter_recvfrom": "recvfrom",
    "syscalls:sys_enter_sendto": "sendto",
    "syscalls:sys_enter_epoll_wait": "epoll_wait",
}


def parse_strace_summary(text: str) -> dict[str, int]:
    """Calls per syscall (and "total") from `strace -c` output. Columns are sliced at the
    dashed rule, because the errors and usecs/call cells may be blank."""
    lines = text.splitlines()
    try:
        header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("% time"))
    except StopIteration:
        raise ValueError(f"no strace -c table in:\n{text}") from None
    rule = lines[header + 1]
    spans, start = [], 0
    for part in rule.split(" "):
        if part:
            spans.append((start, start + len(part)))
        start += len(part) + 1
    names = [lines[header][a:b].strip() for a, b in spans[:-1]] + ["syscall"]
    calls_col = names.index("calls")
    counts: dict[str, int] = {}
    for line in lines[header + 2 :]:
        if not line.strip() or line.startswith("-"):
            continue
        name = line[spans[-1][0] :].strip()
        a, b = spans[calls_col]
        counts[name] = int(line[a:b].strip() or 0)
    if "total" not in counts:
        raise ValueError(f"no total row in strace -c output:\n{text}")
    return counts


def parse_perf_stat(text: str) -> dict[str, int]:
    """Counts by PERF_EVENTS name from `perf stat -x,` output."""
    counts: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split(",")
        if line.startswith("#") or len(fields) < 3 or fields[2] not in PERF_EVENTS:
            continue
        if not fields[0].isdigit():  # "<not counted>", "<not supported>"
            raise ValueError(f"perf could not count {fields[2]}: {fields[0]}")
        counts[PERF_EVENTS[fields[2]]] = int(fields[0])
    if "total" not in counts:
        raise ValueError(f"no raw_syscalls:sys_enter count in perf output:\n{text}")
    return counts


def tracer_command(tool: Tool, pid: int, out: Path) -> list[str]:
    if tool == "strace":
        return ["strace", "-c", "-f", "-p", str(pid), "-o", str(out)]
    return ["perf", "stat", "-x", ",", "-o", str(out), "-e", ",".join(PERF_EVENTS), "-p", str(pid)]


@contextmanager
def tracing(tool: Tool, pid: int, out: Path, log: Path) -> Iterator[None]:
    """Attach `tool` to `pid`; on the way out stop it with SIGINT by its PID (it then writes its
    summary to `out`), SIGKILL if it does not exit."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            tracer_command(tool, pid, out), stdin=subprocess.DEVNULL, stdout=err, stderr=err
        )
    try:
        deadline = time.monotonic() + ATTACH_TIMEOUT_S
        if tool == "strace":  # strace says so once it has stopped every thread of the worker
            while "attached" not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise bench.BenchError(f"strace did not attach: {log.read_text().strip()}")
                time.sleep(0.02)
        else:
            time.sleep(PERF_SETTLE_S)
            if proc.poll() is not None:
                raise bench.BenchError(f"perf stat failed: {log.read_text().strip()}")
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(DETACH_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(DETACH_TIMEOUT_S)
                raise bench.BenchError(
                    f"{tool} ignored SIGINT for {DETACH_TIMEOUT_S:.0f} s"
                ) from None


def worker_pid(server: bench.ServerProcess) -> int:
    """The only child of berth's master (`-w 1`)."""
    children = [st.pid for st in server.tree() if st.ppid == server.pid]
    if len(children) != 1:
        raise bench.BenchError(f"expected 1 worker under the master, found {children}")
    return children[0]


@dataclass
class SyscallResult:
    tool: str
    threads: int
    requests: int
    wrk_seconds: float
    window_seconds: float  # tracer attached .. wrk exited
    rps: float  # while traced
    errors: int
    counts: dict[str, int]

    def per_request(self, name: str) -> float | None:
        if name not in self.counts or not self.requests:
            return None
        return self.counts[name] / self.requests


def count_syscalls(
    tool: Tool,
    threads: int,
    args: argparse.Namespace,
    wrk: str,
    cpus: tuple[int | None, int | None],
    tmp: Path,
) -> SyscallResult:
    server_cpu, client_cpu = cpus
    spec = bench.berth(f"berth-t{threads}", args.app, workers=1, threads=threads)
    with bench.running_server(spec, server_cpu, tmp, bench.READY_TIMEOUT_S) as server:

        def wrk_cmd(seconds: int) -> list[str]:
            return bench.wrk_command(wrk, server.port, args.connections, seconds, (), client_cpu)

        bench.run_wrk(wrk_cmd(WARMUP_S), WARMUP_S)  # threads started, caches warm
        worker = worker_pid(server)
        out = tmp / f"{tool}-t{threads}.out"
        with tracing(tool, worker, out, tmp / f"{tool}-t{threads}.log"):
            start = time.monotonic()
            result = bench.run_wrk(wrk_cmd(args.duration), args.duration)
            window = time.monotonic() - start
        if server.proc.poll() is not None:
            raise bench.BenchError(f"berth died during the run\n{server.log_tail()}")
    text = out.read_text(errors="replace")
    if tool == "strace":
        counts = parse_strace_summary(text)
        counts.setdefault("futex", 0)  # strace -c leaves out the calls that were not made
    else:
        counts = parse_perf_stat(text)
    return SyscallResult(
        tool=tool,
        threads=threads,
        requests=result.requests,
        wrk_seconds=result.seconds,
        window_seconds=window,
        rps=result.rps,
        errors=result.errors,
        counts=counts,
    )


def report(results: Sequence[SyscallResult]) -> str:
    header = ["tool", "threads", "requests", "req/s traced", "window", "futex/req", "calls/req"]
    rows = []
    for r in results:
        rows.append(
            [
                r.tool,
                str(r.threads),
                f"{r.requests:,}",
                f"{r.rps:,.0f}",
                f"{r.window_seconds:.1f}s/{r.wrk_seconds:.1f}s",
                bench._fmt(r.per_request("futex"), ".2f"),
                bench._fmt(r.per_request("total"), ".2f"),
            ]
        )
    lines = [bench.table(header, rows), "", "  most frequent calls per request:"]
    for r in results:
        top = sorted(((c, n) for n, c in r.counts.items() if n != "total"), reverse=True)[:6]
        shown = ", ".join(f"{n} {c / r.requests:.2f}" for c, n in top) if r.requests else "-"
        lines.append(f"    {r.tool} --threads {r.threads}: {shown}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="System calls (futex and all) per request of one berth worker under wrk.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--threads", type=int, action="append", help="berth --threads (repeatable; default 1, 4)"
    )
    parser.add_argument(
        "--tool",
        choices=["strace", "perf"],
        action="append",
        help="tracer (repeatable; default strace)",
    )
    parser.add_argument("--duration", type=int, default=3, help="traced wrk run, seconds")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument("--app", default="hello:app", help="an app of benchmarks/")
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU berth is pinned to")
    parser.add_argument("--client-cpu", type=int, default=1, help="CPU wrk is pinned to")
    parser.add_argument("--no-pin", action="store_true", help="do not pin anything")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 600 or args.connections < 1:
        parser.error("--duration must be 1..600 and --connections >= 1")
    threads = args.threads or [1, 4]
    tools: list[Tool] = args.tool or ["strace"]
    wrk = shutil.which("wrk")
    missing = [name for name in ("wrk", *tools) if shutil.which(name) is None]
    if wrk is None or missing:
        print(f"error: not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, bench._exit_on_signal)  # unwinds: tracer and berth stopped
    cpus = bench.pick_cpus(args)
    results: list[SyscallResult] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="berth-syscalls-") as tmp:
        for tool in tools:
            for n in threads:
                try:
                    r = count_syscalls(tool, n, args, wrk, cpus, Path(tmp))
                except (bench.BenchError, ValueError) as exc:
                    print(f"  {tool} --threads {n}: FAILED: {exc}", file=sys.stderr)
                    failed = True
                    continue
                results.append(r)
                print(
                    f"  {tool} --threads {n}: {r.requests:,} requests, "
                    f"futex {bench._fmt(r.per_request('futex'), '.2f')}/req, "
                    f"all {bench._fmt(r.per_request('total'), '.2f')}/req",
                    flush=True,
                )
    print()
    print(f"  berth -w 1, {args.app}, wrk -c{args.connections} -d{args.duration}s")
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

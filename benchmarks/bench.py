#!/usr/bin/env python3
"""Benchmark berth against Gunicorn (sync, gthread, asgi), Granian and Uvicorn with wrk.

Run from the repository root:

    python benchmarks/bench.py                                   # every scenario, 5 rounds x 5 s
    python benchmarks/bench.py --scenario hello-t1 --rounds 5 --duration 5
    python benchmarks/bench.py --list                            # scenarios and their servers
    python benchmarks/bench.py --scenario hello-t1 --server 'berth*' --baseline HEAD~1

Method (see benchmarks/README.md for the targets):

* Each measurement starts the server fresh on a free 127.0.0.1 port, waits until it is ready,
  runs a short wrk warm-up (discarded), then the measured wrk run, then stops the server by PID
  (SIGTERM, SIGKILL after a timeout; surviving children are killed by PID too).
* The server is pinned to one CPU (`taskset -c 0`, inherited by every forked worker) and wrk to
  another (`taskset -c 1`), except in scenarios that say otherwise.
* Rounds alternate the servers: in round r every server of the scenario runs once, in an order
  rotated by r, so slow drifts of the machine hit every server alike.
* The server's CPU time is utime+stime of its whole process tree, read from /proc before and
  after the measured run, divided by the requests wrk completed; `kernel` is its stime part
  (system calls and the network stack: where sending responses one by one shows).
* The report shows medians over rounds, error counts, and berth / peer req/s ratios.
* `--baseline REF` adds, next to every berth server, the same server run from a temporary
  `git worktree` of commit REF (named e.g. `berth-t1@1a2b3c4`), and reports berth / baseline.

Standard library only; Linux only (/proc, taskset).
"""

from __future__ import annotations

import argparse
import fnmatch
import http.client
import importlib.metadata
import io
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
HOST = "127.0.0.1"
PORT_PLACEHOLDER = "{PORT}"
CERT_PLACEHOLDER = "{CERT}"  # a self-signed certificate and key made for the run (bench_cert)
CLK_TCK = os.sysconf("SC_CLK_TCK")

READY_TIMEOUT_S = 30.0  # server start-up
STOP_GRACE_S = 10.0  # SIGTERM -> SIGKILL
WRK_SLACK_S = 30.0  # wrk may take this much longer than -d before we give up on it
PROBE_TIMEOUT_S = 5.0
FOREIGN_CPU_WARN_PCT = 5.0  # warn when others use more than this much of the server's CPU

Family = Literal["berth", "gunicorn", "granian", "uvicorn"]
Stream = Literal["stdout", "stderr"]


# --------------------------------------------------------------------------------------------
# Servers and scenarios
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    """One server configuration. `argv` contains PORT_PLACEHOLDER where the port goes."""

    name: str
    family: Family
    argv: tuple[str, ...]
    ready_stream: Stream  # where the server says its workers are up
    ready_text: str
    ready_count: int  # how many times ready_text must appear (e.g. once per worker)
    stdout_to_devnull: bool = False  # for access logs written to stdout
    pythonpath: Path = REPO_ROOT  # where `berth` is imported from (a worktree for a baseline)
    baseline_of: str | None = None  # for a baseline: the name of the current server it mirrors

    @property
    def source(self) -> str:
        """What the server is run from: its family, plus `@<short hash>` for a baseline."""
        if self.baseline_of is None:
            return self.family
        return f"{self.family}@{self.name.removeprefix(self.baseline_of + '@')}"

    @property
    def tls(self) -> bool:
        return CERT_PLACEHOLDER in self.argv

    def command(self, port: int | str, cpu: int | None) -> list[str]:
        argv = [arg.replace(PORT_PLACEHOLDER, str(port)) for arg in self.argv]
        if self.tls:
            argv = [arg.replace(CERT_PLACEHOLDER, bench_cert()) for arg in argv]
        return (["taskset", "-c", str(cpu)] if cpu is not None else []) + argv


@dataclass(frozen=True)
class Target:
    """`server`'s median req/s must reach `minimum` x that of `versus`, or of `ceiling_rps` if
    None. `versus` names a server or one of the scenario's `best_of` groups (then the group's
    best member in this run). `goal`: a higher ratio aimed at, reported but never a FAIL."""

    server: str
    minimum: float
    versus: str | None = None
    goal: float | None = None


@dataclass(frozen=True)
class LatencyTarget:
    """`server`'s median p99 latency (over rounds, from wrk --latency) must stay below
    `p99_below_ms`."""

    server: str
    p99_below_ms: float


@dataclass(frozen=True)
class BestOf:
    """A derived peer named `name`: whichever of `members` had the highest median req/s in this
    run, so that a peer with several configurations is judged in its best one. It exists only
    when every member was measured (a best of the survivors could flatter us)."""

    name: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    connections: int
    servers: tuple[ServerSpec, ...]
    pin_servers: bool = True
    wrk_headers: tuple[str, ...] = ()
    ceiling_rps: float | None = None
    targets: tuple[Target | LatencyTarget, ...] = ()
    best_of: tuple[BestOf, ...] = ()
    # MODULE:NAME of the app to also time in-process, with no server (benchmarks/inprocess.py),
    # to split each server's CPU us/req into the app's part and the server's share.
    inprocess_app: str | None = None
    notes: tuple[str, ...] = ()


def berth(
    name: str,
    app: str,
    *,
    workers: int,
    threads: int | None,
    worker_class: str | None = None,
    access_log: bool = False,
    extra: Sequence[str] = (),
) -> ServerSpec:
    """`threads` None: no --threads (-k asgi has no app threads); `worker_class` None: no -k
    (berth's default, gthread)."""
    argv = [sys.executable, "-m", "berth", "-b", f"{HOST}:{PORT_PLACEHOLDER}"]
    argv += ["-k", worker_class] if worker_class else []
    argv += ["-w", str(workers)]
    argv += ["--threads", str(threads)] if threads is not None else []
    argv += extra
    argv += ["--access-logfile", "-" if access_log else "none", "--chdir", str(BENCH_DIR), app]
    return ServerSpec(
        name=name,
        family="berth",
        argv=tuple(argv),
        ready_stream="stderr",
        ready_text="ready: ",
        ready_count=1,
        stdout_to_devnull=access_log,
    )


def gunicorn(
    name: str,
    app: str,
    *,
    workers: int,
    worker_class: str,
    threads: int = 1,
    extra: Sequence[str] = (),
) -> ServerSpec:
    argv = [sys.executable, "-m", "gunicorn", "-w", str(workers), "-k", worker_class]
    if worker_class == "gthread":
        argv += ["--threads", str(threads)]
    argv += ["-b", f"{HOST}:{PORT_PLACEHOLDER}", "--chdir", str(BENCH_DIR), *extra, app]
    return ServerSpec(
        name=name,
        family="gunicorn",
        argv=tuple(argv),
        ready_stream="stderr",
        ready_text="Booting worker with pid",
        ready_count=workers,
    )


def granian(
    name: str,
    app: str,
    *,
    workers: int,
    blocking_threads: int | None,
    interface: Literal["wsgi", "asgi"] = "wsgi",
    extra: Sequence[str] = (),
) -> ServerSpec:
    """`blocking_threads` None: Granian's default (for ASGI, where the app runs on the loop)."""
    argv = [sys.executable, "-m", "granian", "--interface", interface]
    argv += ["--host", HOST, "--port", PORT_PLACEHOLDER, "--workers", str(workers)]
    if blocking_threads is not None:
        argv += ["--blocking-threads", str(blocking_threads)]
    argv += extra
    argv += ["--no-access-log", "--working-dir", str(BENCH_DIR), app]
    return ServerSpec(
        name=name,
        family="granian",
        argv=tuple(argv),
        ready_stream="stdout",
        ready_text="Started worker-",
        ready_count=workers,
    )


def uvicorn(name: str, app: str, *, extra: Sequence[str] = ()) -> ServerSpec:
    """Uvicorn on uvloop and httptools (what `uvicorn[standard]` picks by default), one
    process: with --workers 1 Uvicorn serves in the process it starts in, no supervisor."""
    argv = [sys.executable, "-m", "uvicorn", "--host", HOST, "--port", PORT_PLACEHOLDER]
    argv += ["--workers", "1", "--loop", "uvloop", "--http", "httptools", *extra]
    argv += ["--no-access-log", "--app-dir", str(BENCH_DIR), app]
    return ServerSpec(
        name=name,
        family="uvicorn",
        argv=tuple(argv),
        ready_stream="stderr",
        ready_text="Uvicorn running on",
        ready_count=1,
    )


GTHREAD_NOTE = (
    "gunicorn gthread runs with --threads 4 (its usual configuration; the targets are "
    "stated against 'gunicorn gthread')"
)
GRANIAN_NOTE = (
    "granian: --interface wsgi, --workers as shown, --blocking-threads = threads per "
    "worker, default --runtime-threads 1, access log off (--no-access-log)"
)
PIN_NOTE = "server pinned to one CPU (taskset, inherited by its workers), wrk to another"
T4_DEFAULT_NOTE = "berth-t4-default: --threads 4, berth's default (--threads auto is 4)"
GRANIAN_BEST_NOTE = (
    "granian-best: granian-bt1 or granian-bt4, whichever had the higher median req/s in this run "
    "(granian judged in its best configuration)"
)
ASGI_NOTE = (
    "every server on uvloop, 1 worker, access log off: berth -k asgi (--asgi-loop auto, its "
    "default: uvloop when installed), uvicorn --loop uvloop --http httptools, gunicorn -k asgi "
    "--asgi-loop uvloop (its pure-Python parser unless gunicorn_h1c is installed), granian "
    "--interface asgi --loop uvloop (default --runtime-threads 1)"
)
INPROCESS_NOTE = (
    "app in-process: each round, the app's CPU us/req called with no server (inprocess.py, "
    "pinned like the servers); share = a server's CPU us/req minus that"
)


def build_scenarios(gunicorn_extra: Sequence[str]) -> dict[str, Scenario]:
    hello, big, slow = "hello:app", "big:app", "slow:app"
    flask, django = "flaskapp:app", "djangoapp:application"
    asgi_hello, fastapi = "asgihello:app", "fastapiapp:app"

    def gsync(app: str) -> ServerSpec:
        return gunicorn("gunicorn-sync", app, workers=1, worker_class="sync", extra=gunicorn_extra)

    def gthread(app: str, workers: int = 1) -> ServerSpec:
        name = "gunicorn-gthread-t4" if workers == 1 else f"gunicorn-gthread-{workers}x4"
        return gunicorn(
            name, app, workers=workers, worker_class="gthread", threads=4, extra=gunicorn_extra
        )

    def framework(name: str, app: str, what: str) -> Scenario:
        return Scenario(
            name=name,
            description=f"{what}, 1 worker, keep-alive, 50 connections",
            connections=50,
            servers=(
                berth("berth-t1", app, workers=1, threads=1),
                berth("berth-t4-default", app, workers=1, threads=4),
                granian("granian-bt1", app, workers=1, blocking_threads=1),
                granian("granian-bt4", app, workers=1, blocking_threads=4),
                gthread(app),
            ),
            best_of=(BestOf("granian-best", ("granian-bt1", "granian-bt4")),),
            targets=(
                Target("berth-t4-default", 1.05, "granian-best", goal=1.1),
                Target("berth-t1", 1.05, "granian-best"),
            ),
            inprocess_app=app,
            notes=(
                PIN_NOTE,
                T4_DEFAULT_NOTE,
                GTHREAD_NOTE,
                GRANIAN_NOTE,
                GRANIAN_BEST_NOTE,
                INPROCESS_NOTE,
            ),
        )

    def asgi(
        name: str, app: str, what: str, targets: tuple[Target, ...], inprocess: bool = False
    ) -> Scenario:
        return Scenario(
            name=name,
            description=f"{what}, 1 worker, keep-alive, 50 connections",
            connections=50,
            servers=(
                berth("berth-asgi", app, workers=1, threads=None, worker_class="asgi"),
                uvicorn("uvicorn", app),
                gunicorn(
                    "gunicorn-asgi",
                    app,
                    workers=1,
                    worker_class="asgi",
                    extra=(*gunicorn_extra, "--asgi-loop", "uvloop"),
                ),
                granian(
                    "granian-asgi",
                    app,
                    workers=1,
                    blocking_threads=None,
                    interface="asgi",
                    extra=("--loop", "uvloop"),
                ),
            ),
            targets=targets,
            inprocess_app=app if inprocess else None,
            notes=(PIN_NOTE, ASGI_NOTE, *([INPROCESS_NOTE] if inprocess else [])),
        )

    scenarios = [
        Scenario(
            name="hello-t1",
            description="hello world, 1 worker, keep-alive, 50 connections; berth --threads 1",
            connections=50,
            servers=(
                berth("berth-t1", hello, workers=1, threads=1),
                berth("berth-t1-log", hello, workers=1, threads=1, access_log=True),
                gsync(hello),
                gthread(hello),
                granian("granian-bt1", hello, workers=1, blocking_threads=1),
            ),
            targets=(
                Target("berth-t1", 8.0, "gunicorn-gthread-t4"),
                Target("berth-t1", 1.0, "granian-bt1"),
                Target("berth-t1-log", 0.85, "berth-t1"),
            ),
            notes=(
                PIN_NOTE,
                GTHREAD_NOTE,
                GRANIAN_NOTE,
                "berth-t1-log: --access-logfile - with stdout redirected to /dev/null",
            ),
        ),
        Scenario(
            name="hello-t4",
            description="hello world, 1 worker, keep-alive, 50 connections; berth --threads 4 "
            "(the default) and --threads 1",
            connections=50,
            servers=(
                berth("berth-t4", hello, workers=1, threads=4),
                berth("berth-t1", hello, workers=1, threads=1),
                gthread(hello),
            ),
            targets=(
                Target("berth-t4", 6.0, "gunicorn-gthread-t4"),
                # The default thread pool must cost (almost) nothing when the app never blocks.
                Target("berth-t4", 0.95, "berth-t1"),
                LatencyTarget("berth-t4", 2.0),
            ),
            notes=(
                PIN_NOTE,
                "berth-t4: --threads 4, berth's default (--threads auto is 4)",
                GTHREAD_NOTE,
            ),
        ),
        Scenario(
            name="tls",
            description="hello world over TLS (the same self-signed certificate), 1 worker, "
            "keep-alive, 50 connections",
            connections=50,
            servers=(
                berth(
                    "berth-t4", hello, workers=1, threads=4, extra=("--certfile", CERT_PLACEHOLDER)
                ),
                berth(
                    "berth-t1", hello, workers=1, threads=1, extra=("--certfile", CERT_PLACEHOLDER)
                ),
                gunicorn(
                    "gunicorn-gthread-t4",
                    hello,
                    workers=1,
                    worker_class="gthread",
                    threads=4,
                    extra=(*gunicorn_extra, "--certfile", CERT_PLACEHOLDER),
                ),
            ),
            targets=(Target("berth-t4", 4.0, "gunicorn-gthread-t4"),),
            notes=(
                PIN_NOTE,
                GTHREAD_NOTE,
                "both servers: --certfile with the same "
                "trustme certificate and key (one PEM file); TLS 1.3",
            ),
        ),
        Scenario(
            name="close",
            description="hello world, 1 worker, 'Connection: close', 50 connections",
            connections=50,
            wrk_headers=("Connection: close",),
            servers=(
                berth("berth-t1", hello, workers=1, threads=1),
                gsync(hello),
                gthread(hello),
                granian("granian-bt1", hello, workers=1, blocking_threads=1),
            ),
            targets=(Target("berth-t1", 3.0, "gunicorn-gthread-t4"),),
            notes=(PIN_NOTE, GTHREAD_NOTE, GRANIAN_NOTE),
        ),
        Scenario(
            name="big",
            description="1 MiB response, 1 worker, keep-alive, 10 connections",
            connections=10,
            servers=(
                berth("berth-t1", big, workers=1, threads=1),
                gsync(big),
                gthread(big),
                granian("granian-bt1", big, workers=1, blocking_threads=1),
            ),
            targets=(Target("berth-t1", 1.5, "gunicorn-gthread-t4"),),
            notes=(PIN_NOTE, GTHREAD_NOTE, GRANIAN_NOTE),
        ),
        Scenario(
            name="sleep",
            description="50 ms sleep app, 2 workers x 4 threads, keep-alive, 32 connections",
            connections=32,
            pin_servers=False,
            ceiling_rps=2 * 4 / 0.05,
            servers=(
                berth("berth-2x4", slow, workers=2, threads=4),
                gthread(slow, workers=2),
                granian("granian-2x4", slow, workers=2, blocking_threads=4),
            ),
            targets=(Target("berth-2x4", 0.97),),
            notes=(
                "servers NOT pinned (2 workers may use both CPUs); wrk still pinned",
                "ceiling = 2 workers x 4 threads / 0.05 s = 160 req/s",
                GRANIAN_NOTE,
            ),
        ),
        Scenario(
            name="wait",
            description="1 ms wait app (a quick database call), 1 worker, keep-alive, "
            "50 connections",
            connections=50,
            servers=(
                berth("berth-t4", "slow:wait", workers=1, threads=4),
                berth("berth-t1", "slow:wait", workers=1, threads=1),
                gthread("slow:wait"),
                granian("granian-bt4", "slow:wait", workers=1, blocking_threads=4),
            ),
            targets=(Target("berth-t4", 3.0, "berth-t1"),),
            notes=(
                PIN_NOTE,
                "short waits (1 ms): with --threads 4 they must "
                "overlap (berth-t4 >= 3x berth-t1, which waits one request at a time)",
                GTHREAD_NOTE,
                GRANIAN_NOTE,
            ),
        ),
        framework("flask", flask, "Flask jsonify view"),
        framework("django", django, "Django JsonResponse view behind the default middleware"),
        asgi(
            "asgi-hello",
            asgi_hello,
            "ASGI hello world (a raw ASGI app)",
            (Target("berth-asgi", 1.0, "uvicorn", goal=1.3),),
        ),
        asgi(
            "asgi-fastapi",
            fastapi,
            "FastAPI JSON endpoint (async, a dict)",
            (Target("berth-asgi", 1.0, "uvicorn"),),
            inprocess=True,
        ),
    ]
    return {s.name: s for s in scenarios}


# --------------------------------------------------------------------------------------------
# /proc: process trees and CPU time
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    cpu_ticks: int  # utime + stime + cutime + cstime
    sys_ticks: int  # stime + cstime: the kernel's part (system calls, the network stack)
    start_ticks: int  # identifies the process across PID reuse


def read_stat(pid: int) -> ProcStat | None:
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (comm) state ppid ..." where comm may contain spaces and parentheses.
    fields = data[data.rindex(")") + 2 :].split()
    # fields[0] is stat field 3 (state), so stat field n is fields[n - 3].
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return ProcStat(
        pid=pid,
        ppid=int(fields[1]),
        cpu_ticks=utime + stime + cutime + cstime,
        sys_ticks=stime + cstime,
        start_ticks=int(fields[19]),
    )


def process_tree(root: int) -> list[ProcStat]:
    """The process `root` and all its live descendants (found by scanning /proc for ppids).

    Summing utime+stime+cutime+cstime over the tree also keeps the CPU time of descendants that
    exited and were reaped in the meantime (it moves into the reaping parent's cutime/cstime).
    """
    stats: dict[int, ProcStat] = {}
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (st := read_stat(int(entry.name))) is not None:
            stats[st.pid] = st
            children[st.ppid].append(st.pid)
    if root not in stats:
        return []
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(stats[pid])
        todo.extend(child for child in children[pid] if child in stats)
    return tree


def cpu_busy_seconds(cpu: int) -> float:
    """Non-idle time of one CPU since boot, from /proc/stat (all processes, IRQs included)."""
    prefix = f"cpu{cpu} "
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(prefix):
            ticks = [int(v) for v in line.split()[1:]]
            idle, iowait = ticks[3], ticks[4]
            return (sum(ticks[:8]) - idle - iowait) / CLK_TCK  # guest time is already in user
    raise ValueError(f"no {prefix.strip()} in /proc/stat")


def is_same_process(pid: int, start_ticks: int) -> bool:
    st = read_stat(pid)
    return st is not None and st.start_ticks == start_ticks


# --------------------------------------------------------------------------------------------
# Running a server
# --------------------------------------------------------------------------------------------


class BenchError(RuntimeError):
    """A measurement that could not be made (server or wrk failure); the run is reported failed."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def server_env(pythonpath: Path = REPO_ROOT) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GUNICORN_", "GRANIAN_", "UVICORN_", "BERTH_"))
        and k not in ("PORT", "WEB_CONCURRENCY", "PYTHONPATH")
    }
    env["BERTH_IN_CONTAINER"] = "0"
    # The working tree's berth (or a baseline's worktree), even if berth is pip-installed: an
    # editable install's import hook comes after PYTHONPATH.
    env["PYTHONPATH"] = str(pythonpath)
    env["PYTHONUNBUFFERED"] = "1"  # so readiness lines reach the log files at once
    return env


def bench_cert() -> str:
    """A certificate and key for 127.0.0.1 in one PEM file, made once per run (trustme, in
    the bench extras): the same for every server of a TLS scenario."""
    global _BENCH_CERT
    if _BENCH_CERT is None:
        try:
            import trustme
        except ImportError:
            raise BenchError("the TLS scenario needs trustme: pip install -e '.[bench]'") from None
        path = Path(tempfile.mkdtemp(prefix="berth-bench-cert-")) / "server.pem"
        trustme.CA().issue_cert(HOST).private_key_and_cert_chain_pem.write_to_path(str(path))
        _BENCH_CERT = str(path)
    return _BENCH_CERT


_BENCH_CERT: str | None = None


def http_probe(port: int, tls: bool = False) -> bool:
    if tls:
        import ssl

        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            HOST, port, timeout=PROBE_TIMEOUT_S, context=ssl._create_unverified_context()
        )
    else:
        conn = http.client.HTTPConnection(HOST, port, timeout=PROBE_TIMEOUT_S)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        conn.close()


class ServerProcess:
    """A server started with Popen, always stopped by PID (see `stop`)."""

    def __init__(self, spec: ServerSpec, port: int, cpu: int | None, log_dir: Path) -> None:
        self.spec = spec
        self.port = port
        self.command = spec.command(port, cpu)
        self.log_paths: dict[Stream, Path] = {
            "stdout": log_dir / f"{spec.name}-{port}.out",
            "stderr": log_dir / f"{spec.name}-{port}.err",
        }
        self._known: dict[int, int] = {}  # pid -> start_ticks of every process seen in the tree
        stdout_path = os.devnull if spec.stdout_to_devnull else self.log_paths["stdout"]
        with open(stdout_path, "wb") as out, open(self.log_paths["stderr"], "wb") as err:
            self.proc = subprocess.Popen(
                self.command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=BENCH_DIR,
                env=server_env(spec.pythonpath),
                start_new_session=True,
            )
        self.pid = self.proc.pid

    def tree(self) -> list[ProcStat]:
        tree = process_tree(self.pid)
        self._known.update((st.pid, st.start_ticks) for st in tree)
        return tree

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU seconds of the tree so far: (all, the kernel's part)."""
        tree = self.tree()
        return (sum(st.cpu_ticks for st in tree) / CLK_TCK,
                sum(st.sys_ticks for st in tree) / CLK_TCK)

    def log_tail(self, lines: int = 15) -> str:
        parts = []
        for stream, path in self.log_paths.items():
            if path.exists() and (text := path.read_text(errors="replace").strip()):
                tail = "\n".join(text.splitlines()[-lines:])
                parts.append(f"--- {self.spec.name} {stream} (last {lines} lines) ---\n{tail}")
        return "\n".join(parts)

    def wait_ready(self, timeout: float) -> None:
        """Wait for the readiness line(s) in the server's log, then for a 200 on GET /."""
        deadline = time.monotonic() + timeout
        log = self.log_paths[self.spec.ready_stream]
        while True:
            if (rc := self.proc.poll()) is not None:
                raise BenchError(f"{self.spec.name} exited with status {rc} during start-up")
            text = log.read_text(errors="replace") if log.exists() else ""
            if text.count(self.spec.ready_text) >= self.spec.ready_count and http_probe(
                self.port, self.spec.tls
            ):
                self.tree()
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{self.spec.name} not ready after {timeout:.0f} s")
            time.sleep(0.05)

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM the master, SIGKILL it after `grace`; then SIGKILL any leftover descendant.

        Only PIDs seen in this server's tree are signalled, and only if their start time still
        matches (so a reused PID is never hit).
        """
        if self.proc.poll() is None:
            self.tree()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                print(
                    f"  ! {self.spec.name} ignored SIGTERM for {grace:.0f} s: SIGKILL",
                    file=sys.stderr,
                )
                self.proc.kill()
                self.proc.wait(grace)
        deadline = time.monotonic() + 2.0
        while True:
            leftovers = [
                pid
                for pid, start in self._known.items()
                if pid != self.pid and is_same_process(pid, start)
            ]
            if not leftovers:
                return
            if time.monotonic() > deadline:
                for pid in leftovers:
                    print(
                        f"  ! {self.spec.name}: child {pid} outlived its master: SIGKILL",
                        file=sys.stderr,
                    )
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                return
            time.sleep(0.05)


@contextmanager
def running_server(
    spec: ServerSpec, cpu: int | None, log_dir: Path, ready_timeout: float
) -> Iterator[ServerProcess]:
    server = ServerProcess(spec, free_port(), cpu, log_dir)
    try:
        try:
            server.wait_ready(ready_timeout)
        except BenchError as exc:
            raise BenchError(f"{exc}\n{server.log_tail()}") from None
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    socket_errors: dict[str, int]
    non_2xx_3xx: int
    client_cpu_seconds: float = 0.0  # wrk's own CPU time: near 100% of one CPU = client-bound

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx_3xx


_TIME_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_TIME = r"([\d.]+)(us|ms|s|m|h)"


def _ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS_MS[unit]


def parse_wrk(output: str) -> WrkResult:
    done = re.search(r"^\s*(\d+) requests in " + _TIME, output, re.MULTILINE)
    rps = re.search(r"^Requests/sec:\s*([\d.]+)", output, re.MULTILINE)
    if not done or not rps:
        raise ValueError(f"unexpected wrk output:\n{output}")
    percentiles = {
        int(p): _ms(v, u)
        for p, v, u in re.findall(r"^\s*(50|99)(?:\.0+)?%\s+" + _TIME, output, re.MULTILINE)
    }
    socket_errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    if m := re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    ):
        socket_errors = dict(zip(socket_errors, map(int, m.groups())))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        requests=int(done.group(1)),
        seconds=_ms(done.group(2), done.group(3)) / 1e3,
        rps=float(rps.group(1)),
        p50_ms=percentiles.get(50),
        p99_ms=percentiles.get(99),
        socket_errors=socket_errors,
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def wrk_command(
    wrk: str,
    port: int | str,
    connections: int,
    seconds: int,
    headers: Sequence[str],
    cpu: int | None,
    scheme: str = "http",
) -> list[str]:
    cmd = ["taskset", "-c", str(cpu)] if cpu is not None else []
    cmd += [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for header in headers:
        cmd += ["-H", header]
    return cmd + [f"{scheme}://{HOST}:{port}/"]


def run_wrk(cmd: Sequence[str], seconds: int) -> WrkResult:
    # Servers are only reaped when stopped, so the children's rusage delta is wrk's alone.
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        done = subprocess.run(
            cmd,
            check=False,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=seconds + WRK_SLACK_S,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk did not finish within {seconds + WRK_SLACK_S:.0f} s") from None
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        result = parse_wrk(done.stdout)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    result.client_cpu_seconds = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return result


# --------------------------------------------------------------------------------------------
# Measurements and summaries
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    rounds: int
    duration: int
    warmup: int
    server_cpu: int | None  # None: no pinning
    client_cpu: int | None
    wrk: str
    ready_timeout: float


@dataclass
class Run:
    server: str
    round: int
    ok: bool
    error: str | None = None
    wrk: WrkResult | None = None
    cpu_seconds: float | None = None
    cpu_us_per_request: float | None = None
    sys_us_per_request: float | None = None  # the kernel's part of cpu_us_per_request
    affinity: list[int] | None = None  # CPUs the server's processes were allowed to use
    # Pinned runs: busy time of the server's CPU not spent by the server, in % of the run. More
    # than a few % means something else (another benchmark, a build) shared the CPU.
    foreign_cpu_pct: float | None = None


def measure(
    scenario: Scenario, spec: ServerSpec, rnd: int, settings: Settings, log_dir: Path
) -> Run:
    cpu = settings.server_cpu if scenario.pin_servers else None
    try:
        with running_server(spec, cpu, log_dir, settings.ready_timeout) as server:

            def wrk(seconds: int) -> WrkResult:
                return run_wrk(
                    wrk_command(
                        settings.wrk,
                        server.port,
                        scenario.connections,
                        seconds,
                        scenario.wrk_headers,
                        settings.client_cpu,
                        "https" if spec.tls else "http",
                    ),
                    seconds,
                )

            if settings.warmup > 0:
                wrk(settings.warmup)
            affinity: set[int] = set()
            for st in server.tree():
                try:
                    affinity |= os.sched_getaffinity(st.pid)
                except OSError:
                    pass
            busy_before = cpu_busy_seconds(cpu) if cpu is not None else 0.0
            cpu_before, sys_before = server.cpu_seconds()
            result = wrk(settings.duration)
            cpu_after, sys_after = server.cpu_seconds()
            cpu_used = cpu_after - cpu_before
            sys_used = sys_after - sys_before
            busy = cpu_busy_seconds(cpu) - busy_before if cpu is not None else None
            if server.proc.poll() is not None:
                raise BenchError(f"{spec.name} died during the run\n{server.log_tail()}")
    except BenchError as exc:
        return Run(server=spec.name, round=rnd, ok=False, error=str(exc))
    per_request = cpu_used / result.requests * 1e6 if result.requests else None
    sys_per_request = sys_used / result.requests * 1e6 if result.requests else None
    foreign = None if busy is None else max(0.0, busy - cpu_used) / result.seconds * 100
    return Run(
        server=spec.name,
        round=rnd,
        ok=True,
        wrk=result,
        cpu_seconds=cpu_used,
        cpu_us_per_request=per_request,
        sys_us_per_request=sys_per_request,
        affinity=sorted(affinity),
        foreign_cpu_pct=foreign,
    )


INPROCESS_TIMEOUT_S = 180.0  # inprocess.py bounds itself at 120 s; this also covers imports
INPROCESS_REPEATS = 3  # x 0.3 CPU seconds per round: enough for a median, short next to wrk


@dataclass
class InprocessRun:
    """The scenario's app timed in-process (no server) once per round, on the server's CPU."""

    round: int
    ok: bool
    us_per_request: float | None = None
    repeats_us: list[float] | None = None
    calls_per_repeat: int | None = None
    error: str | None = None


def inprocess_command(app: str, cpu: int | None) -> list[str]:
    cmd = ["taskset", "-c", str(cpu)] if cpu is not None else []
    script = str(BENCH_DIR / "inprocess.py")
    return cmd + [sys.executable, script, "--json", "--repeats", str(INPROCESS_REPEATS), app]


def measure_inprocess(app: str, rnd: int, cpu: int | None) -> InprocessRun:
    """Run inprocess.py in a subprocess, like a server: same CPU, cwd and environment."""
    try:
        done = subprocess.run(
            inprocess_command(app, cpu),
            check=False,
            capture_output=True,
            text=True,
            cwd=BENCH_DIR,
            env=server_env(),
            stdin=subprocess.DEVNULL,
            timeout=INPROCESS_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return InprocessRun(rnd, ok=False, error=f"timed out after {INPROCESS_TIMEOUT_S:.0f} s")
    if done.returncode != 0:
        return InprocessRun(rnd, ok=False, error=_last_line(done.stderr or done.stdout))
    try:
        data = json.loads(done.stdout.strip().splitlines()[-1])
        return InprocessRun(
            rnd,
            ok=True,
            us_per_request=float(data["us_per_call"]),
            repeats_us=[float(v) for v in data["repeats_us"]],
            calls_per_repeat=int(data["calls_per_repeat"]),
        )
    except (ValueError, KeyError, IndexError, TypeError):
        return InprocessRun(rnd, ok=False, error=f"unexpected output: {done.stdout[-300:]!r}")


def add_server_share(summaries: Mapping[str, Summary], app_us: float | None) -> dict[str, Summary]:
    """Each summary with `server_share_us_per_request` = its CPU us/req - the app's."""
    return {
        name: replace(
            s,
            server_share_us_per_request=None
            if app_us is None or s.cpu_us_per_request is None
            else s.cpu_us_per_request - app_us,
        )
        for name, s in summaries.items()
    }


@dataclass
class Summary:
    server: str
    runs: int
    rps: float
    rps_min: float
    rps_max: float
    p50_ms: float | None
    p99_ms: float | None
    cpu_us_per_request: float | None
    server_cpu_pct: float | None
    wrk_cpu_pct: float | None
    errors: int
    requests: int
    # CPU us/req minus the app's in-process us/req (scenarios with an `inprocess_app` only)
    server_share_us_per_request: float | None = None
    sys_us_per_request: float | None = None  # the kernel's part of cpu_us_per_request


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(name: str, runs: Sequence[Run]) -> Summary | None:
    good = [r for r in runs if r.ok and r.wrk is not None]
    if not good:
        return None
    results = [r.wrk for r in good if r.wrk is not None]
    rps = [w.rps for w in results]
    return Summary(
        server=name,
        runs=len(good),
        rps=statistics.median(rps),
        rps_min=min(rps),
        rps_max=max(rps),
        p50_ms=_median([w.p50_ms for w in results]),
        p99_ms=_median([w.p99_ms for w in results]),
        cpu_us_per_request=_median([r.cpu_us_per_request for r in good]),
        server_cpu_pct=_median(
            [
                r.cpu_seconds / r.wrk.seconds * 100
                for r in good
                if r.wrk and r.cpu_seconds is not None
            ]
        ),
        wrk_cpu_pct=_median([w.client_cpu_seconds / w.seconds * 100 for w in results if w.seconds]),
        errors=sum(w.errors for w in results),
        requests=sum(w.requests for w in results),
        sys_us_per_request=_median([r.sys_us_per_request for r in good]),
    )


def pick_best(groups: Sequence[BestOf], summaries: Mapping[str, Summary]) -> dict[str, str]:
    """group name -> its member with the highest median req/s, for groups whose members all
    have a summary."""
    picks = {}
    for group in groups:
        if group.members and all(m in summaries for m in group.members):
            picks[group.name] = max(group.members, key=lambda m: summaries[m].rps)
    return picks


def with_best(summaries: Mapping[str, Summary], picks: Mapping[str, str]) -> dict[str, Summary]:
    """`summaries` plus each picked group under its own name (the member's summary)."""
    return {**summaries, **{group: summaries[member] for group, member in picks.items()}}


@dataclass
class TargetResult:
    text: str
    kind: Literal["ratio", "ceiling", "p99"]  # what `value` is: x versus, of ceiling, ms
    value: float | None
    minimum: float  # for "p99": the bound `value` must stay below
    passed: bool | None  # None: not evaluated
    goal: float | None = None
    goal_met: bool | None = None
    rounds: list[float] = field(default_factory=list)  # a ratio's value round by round

    def shown(self) -> str:
        if self.value is None:
            return "not measured"
        if self.kind == "ceiling":
            return f"{self.value:.1%}"
        if self.kind == "p99":
            return _fmt_ms(self.value)
        goal = ""
        if self.goal is not None:
            goal = f" (goal {self.goal:g}x: {'met' if self.goal_met else 'not yet'})"
        return f"{self.value:.2f}x{goal}{self.spread()}"

    def spread(self) -> str:
        """The ratio round by round, and whether the rounds agree on the verdict: where some
        pass and some fail, the median's PASS or FAIL is the noise's, not the servers'."""
        if len(self.rounds) < 2:
            return ""
        low, high = min(self.rounds), max(self.rounds)
        agree = (low >= self.minimum) == (high >= self.minimum)
        verdict = "every round agrees" if agree else "the rounds disagree: undecided"
        return f"; rounds {low:.2f}x..{high:.2f}x, {verdict}"


def round_ratios(runs: Sequence[Run], ours: str, theirs: str) -> list[float]:
    """ours / theirs req/s in each round where both ran well: the servers of a round ran
    minutes apart at most, so a slow spell of the machine shows in both."""
    rps = {(r.server, r.round): r.wrk.rps for r in runs if r.ok and r.wrk and r.wrk.rps}
    return [rps[ours, n] / rps[theirs, n] for (name, n) in sorted(rps, key=lambda k: k[1])
            if name == ours and (theirs, n) in rps]


def evaluate(
    scenario: Scenario, summaries: Mapping[str, Summary], runs: Sequence[Run] = ()
) -> list[TargetResult]:
    """Each target against the medians; with the `runs`, a ratio target also gets its ratio
    round by round (`TargetResult.rounds`)."""
    picks = pick_best(scenario.best_of, summaries)
    known = with_best(summaries, picks)
    out = []
    for target in scenario.targets:
        ours = summaries.get(target.server)
        if isinstance(target, LatencyTarget):
            value = ours.p99_ms if ours else None
            out.append(
                TargetResult(
                    text=f"{target.server} p99 < {target.p99_below_ms:g}ms",
                    kind="p99",
                    value=value,
                    minimum=target.p99_below_ms,
                    passed=None if value is None else value < target.p99_below_ms,
                )
            )
            continue
        if target.versus is None:
            assert scenario.ceiling_rps is not None
            text = f"{target.server} >= {target.minimum:.0%} of {scenario.ceiling_rps:.0f} req/s"
            value = ours.rps / scenario.ceiling_rps if ours else None
        else:
            text = f"{target.server} >= {target.minimum:g}x {target.versus}"
            if target.versus in picks:
                text += f" (= {picks[target.versus]})"
            theirs = known.get(target.versus)
            value = ours.rps / theirs.rps if ours and theirs and theirs.rps else None
            rounds = round_ratios(runs, target.server, picks.get(target.versus, target.versus))
        out.append(
            TargetResult(
                text=text,
                kind="ceiling" if target.versus is None else "ratio",
                value=value,
                minimum=target.minimum,
                passed=None if value is None else value >= target.minimum,
                goal=target.goal,
                goal_met=None if value is None or target.goal is None else value >= target.goal,
                rounds=rounds if target.versus is not None else [],
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1e3:.0f}us" if value < 1 else f"{value:.2f}ms"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    lines = []
    for i, row in enumerate([header, *rows]):
        cells = [
            str(c).ljust(w) if j == 0 else str(c).rjust(w)
            for j, (c, w) in enumerate(zip(row, widths))
        ]
        lines.append(indent + "  ".join(cells).rstrip())
        if i == 0:
            lines.append(indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _ratio(ours: float | None, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}x" if ours is not None and theirs else "-"


def ratio_tables(
    servers: Sequence[ServerSpec], summaries: Mapping[str, Summary], groups: Sequence[str] = ()
) -> list[str]:
    """berth / peer req/s for every berth server (baselines included), plus, with a baseline,
    berth / its baseline for req/s and for CPU us/req (below 1 is cheaper). `groups`: derived
    peers (best-of groups) that have an entry in `summaries`, shown after the servers."""
    ours = [s.name for s in servers if s.family == "berth" and s.name in summaries]
    peers = [s.name for s in servers if s.family != "berth" and s.name in summaries]
    peers += [g for g in groups if g in summaries]
    twins = {
        s.baseline_of: s.name
        for s in servers
        if s.baseline_of is not None and s.name in summaries and s.baseline_of in summaries
    }
    if not peers:  # then only a berth server with a baseline has a row
        ours = [name for name in ours if name in twins]
    if not ours:
        return []
    header = ["", *peers]
    if twins:
        suffix = next(iter(twins.values())).removeprefix(next(iter(twins)))  # e.g. "@1a2b3c4"
        header += [f"req/s vs {suffix}", f"CPU/req vs {suffix}"]
    rows = []
    for name in ours:
        row = [name] + [_ratio(summaries[name].rps, summaries[p].rps) for p in peers]
        if twins:
            twin = summaries.get(twins.get(name, ""))
            row += [
                _ratio(summaries[name].rps, twin.rps if twin else None),
                _ratio(
                    summaries[name].cpu_us_per_request, twin.cpu_us_per_request if twin else None
                ),
            ]
        rows.append(row)
    titles = ["berth / peer (median req/s)"] if peers else []
    if twins:
        titles.append("berth / its baseline (median req/s; median CPU us/req, below 1x is cheaper)")
    title = ";\n  ".join(titles)
    return [f"\n  {title}:\n" + table(header, rows, indent="    ")]


def report(
    scenario: Scenario,
    servers: Sequence[ServerSpec],
    summaries: Mapping[str, Summary],
    runs: Sequence[Run],
    targets: Sequence[TargetResult],
    rounds: int,
    app_us: float | None = None,
    inproc: Sequence[InprocessRun] = (),
) -> str:
    share = scenario.inprocess_app is not None
    header = [
        "server",
        "req/s",
        "min..max",
        "p50",
        "p99",
        "CPU us/req",
        "kernel",
        *(["share us/req"] if share else []),
        "srv CPU",
        "wrk CPU",
        "errors",
        "runs",
    ]
    if scenario.ceiling_rps:
        header.insert(2, "% ceiling")

    def row(name: str, s: Summary | None) -> list[str]:
        if s is None:
            return [name, "failed"] + ["-"] * (len(header) - 3) + [f"0/{rounds}"]
        cells = [
            name,
            f"{s.rps:,.0f}",
            f"{s.rps_min:,.0f}..{s.rps_max:,.0f}",
            _fmt_ms(s.p50_ms),
            _fmt_ms(s.p99_ms),
            _fmt(s.cpu_us_per_request, ".1f"),
            _fmt(s.sys_us_per_request, ".1f"),
            *([_fmt(s.server_share_us_per_request, ".1f")] if share else []),
            _fmt(s.server_cpu_pct, ".0f", "%"),
            _fmt(s.wrk_cpu_pct, ".0f", "%"),
            f"{s.errors:,}",
            f"{s.runs}/{rounds}",
        ]
        if scenario.ceiling_rps:
            cells.insert(2, f"{s.rps / scenario.ceiling_rps:.1%}")
        return cells

    rows = [row(spec.name, summaries.get(spec.name)) for spec in servers]
    # Derived rows: a best-of group shows its picked member's numbers under its own name.
    picks = pick_best(scenario.best_of, summaries)
    rows += [row(f"{group} (= {member})", summaries[member]) for group, member in picks.items()]
    parts = [table(header, rows)]
    if share:
        values = [r.us_per_request for r in inproc if r.ok and r.us_per_request is not None]
        spread = f", {min(values):.1f}..{max(values):.1f}" if values else ""
        parts.append(
            f"\n  app in-process ({scenario.inprocess_app}, no server): "
            f"{_fmt(app_us, '.1f')} us/req (median of {len(values)}/{len(inproc)} rounds{spread})"
        )

    parts.extend(ratio_tables(servers, with_best(summaries, picks), list(picks)))
    if targets:
        lines = ["\n  targets:"]
        for t in targets:
            status = {True: "PASS", False: "FAIL", None: "n/a "}[t.passed]
            lines.append(f"    [{status}] {t.text}: {t.shown()}")
        parts.append("\n".join(lines))
    noisy = [r for r in runs if (r.foreign_cpu_pct or 0.0) > FOREIGN_CPU_WARN_PCT]
    if noisy:
        parts.append(
            f"\n  ! {len(noisy)} of {len(runs)} runs shared the server's CPU with other processes "
            f"(> {FOREIGN_CPU_WARN_PCT:.0f}% of it): rerun on a quiet machine before trusting this"
        )
    failed_inproc = [r for r in inproc if not r.ok]
    if failed_inproc:
        parts.append(
            "\n  failed app in-process runs:\n"
            + "\n".join(f"    round {r.round}: {r.error}" for r in failed_inproc)
        )
    failures = [r for r in runs if not r.ok]
    if failures:
        parts.append(
            "\n  failed runs:\n"
            + "\n".join(
                f"    round {r.round} {r.server}: " + (r.error or "").replace("\n", "\n      ")
                for r in failures
            )
        )
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------
# Environment checks
# --------------------------------------------------------------------------------------------


@dataclass
class Availability:
    ok: bool
    version: str | None = None
    reason: str | None = None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def check_berth(pythonpath: Path = REPO_ROOT) -> Availability:
    """`python -m berth --help` works, and `berth` is imported from `pythonpath`."""
    env = server_env(pythonpath)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            check=False,
            capture_output=True,
            text=True,
            cwd=BENCH_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            timeout=30,
        )

    try:
        done = run("-m", "berth", "--help")
        if done.returncode != 0:
            return Availability(
                False,
                reason="`python -m berth --help` failed: " + _last_line(done.stderr or done.stdout),
            )
        where = run("-c", "import berth; print(berth.__file__); print(berth.__version__)")
    except subprocess.TimeoutExpired:
        return Availability(False, reason="`python -m berth` timed out")
    lines = where.stdout.split("\n")
    if where.returncode != 0 or len(lines) < 2:
        return Availability(False, reason="`import berth` failed: " + _last_line(where.stderr))
    if not Path(lines[0]).resolve().is_relative_to(pythonpath.resolve()):
        return Availability(False, reason=f"berth was imported from {lines[0]}, not {pythonpath}")
    return Availability(True, version=lines[1].strip() or "?")


# --------------------------------------------------------------------------------------------
# Baseline: berth at another commit, from a temporary git worktree
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Baseline:
    ref: str  # as given, e.g. HEAD~3
    commit: str  # full hash
    short: str  # short hash, the suffix of the baseline servers' names
    subject: str
    path: Path  # the worktree, used as PYTHONPATH


def git(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(REPO_ROOT), *args],
        check=False,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


def resolve_ref(ref: str) -> tuple[str, str, str]:
    """(full hash, short hash, subject) of the commit `ref` names; BenchError if none."""
    done = git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if done.returncode != 0 or not done.stdout.strip():
        raise BenchError(f"--baseline {ref}: not a commit of {REPO_ROOT}")
    commit = done.stdout.strip()
    short = git("rev-parse", "--short", commit).stdout.strip() or commit[:7]
    subject = git("log", "-1", "--format=%s", commit).stdout.strip()
    return commit, short, subject


@contextmanager
def baseline_worktree(ref: str) -> Iterator[Baseline]:
    """A detached `git worktree` of `ref` in a temporary directory, removed on the way out
    (also on Ctrl-C / SIGTERM, which unwind through here as exceptions)."""
    commit, short, subject = resolve_ref(ref)
    path = Path(tempfile.mkdtemp(prefix=f"berth-baseline-{short}-"))
    try:
        done = git("worktree", "add", "--detach", str(path), commit, timeout=120.0)
        if done.returncode != 0:
            raise BenchError(f"git worktree add failed: {_last_line(done.stderr)}")
        yield Baseline(ref=ref, commit=commit, short=short, subject=subject, path=path)
    finally:
        try:
            git("worktree", "remove", "--force", str(path))
        finally:
            git("worktree", "prune")
            shutil.rmtree(path, ignore_errors=True)


def with_baselines(servers: Sequence[ServerSpec], baseline: Baseline) -> list[ServerSpec]:
    """`servers`, each berth server followed by its twin run from the baseline's worktree."""
    out: list[ServerSpec] = []
    for spec in servers:
        out.append(spec)
        if spec.family == "berth" and spec.baseline_of is None:
            out.append(
                replace(
                    spec,
                    name=f"{spec.name}@{baseline.short}",
                    pythonpath=baseline.path,
                    baseline_of=spec.name,
                )
            )
    return out


def selected(spec: ServerSpec, globs: Sequence[str] | None) -> bool:
    """Whether `--server` globs select `spec`; a baseline comes with the server it mirrors."""
    if not globs:
        return True
    names = [spec.name] + ([spec.baseline_of] if spec.baseline_of else [])
    return any(fnmatch.fnmatch(name, g) for name in names for g in globs)


def check_package(name: str) -> Availability:
    try:
        version = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return Availability(
            False,
            reason=f"{name} is not installed for {sys.executable} (pip install -e '.[bench]')",
        )
    return Availability(True, version=version)


def check_gunicorn() -> Availability:
    """Gunicorn, and whether its C parser (gunicorn_h1c, `gunicorn[fast]`) is installed: with
    `--http-parser auto` (its default) Gunicorn >= 25 uses it when it is, else parses in Python."""
    avail = check_package("gunicorn")
    if avail.ok:
        h1c = check_package("gunicorn_h1c")
        avail.version = f"{avail.version} (" + (
            f"gunicorn_h1c {h1c.version})" if h1c.ok else "no gunicorn_h1c: Python parser)"
        )
    return avail


def gunicorn_extra_args() -> list[str]:
    """Gunicorn >= 24 opens a control socket under ~/.gunicorn by default; turn it off."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gunicorn", "--help"],
            check=False,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=30,
        )
    except (subprocess.TimeoutExpired, OSError):
        return []
    return ["--no-control-socket"] if "--no-control-socket" in done.stdout else []


def wrk_version(wrk: str) -> str:
    """First line of `wrk --version` (which exits with status 1), e.g. "wrk 4.1.0 [epoll] ..."."""
    done = subprocess.run(
        [wrk, "--version"],
        check=False,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=10,
    )
    lines = (done.stdout or done.stderr).splitlines()
    return lines[0].split(" Copyright")[0].strip() if lines else "wrk ?"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def pick_cpus(args: argparse.Namespace) -> tuple[int | None, int | None]:
    if args.no_pin:
        return None, None
    allowed = os.sched_getaffinity(0)
    wanted = {args.server_cpu, args.client_cpu}
    if shutil.which("taskset") is None:
        print("! taskset not found (util-linux): running without CPU pinning", file=sys.stderr)
        return None, None
    if args.server_cpu == args.client_cpu or not wanted <= allowed:
        print(
            f"! cannot pin server to CPU {args.server_cpu} and wrk to CPU {args.client_cpu} "
            f"(allowed CPUs: {sorted(allowed)}): running without pinning",
            file=sys.stderr,
        )
        return None, None
    return args.server_cpu, args.client_cpu


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def shell_join(args: Sequence[str]) -> str:
    """Like shlex.join, but leaves a literal $PORT expandable for copy-paste."""

    def quote(arg: str) -> str:
        rest = arg.replace("$PORT", "")
        if "$PORT" in arg and (not rest or shlex.quote(rest) == rest):
            return arg
        return shlex.quote(arg)

    return " ".join(quote(arg) for arg in args)


def run_scenario(
    scenario: Scenario,
    servers: Sequence[ServerSpec],
    settings: Settings,
    log_dir: Path,
) -> tuple[list[Run], list[InprocessRun], list[str]]:
    server_cpu = settings.server_cpu if scenario.pin_servers else None
    commands = [
        ("" if s.baseline_of is None else f"PYTHONPATH=<git worktree of {s.source}> ")
        + shell_join(s.command("$PORT", server_cpu))
        + (" >/dev/null" if s.stdout_to_devnull else "")
        for s in servers
    ]
    wrk_cmds = [
        shell_join(
            wrk_command(
                settings.wrk,
                "$PORT",
                scenario.connections,
                seconds,
                scenario.wrk_headers,
                settings.client_cpu,
                "https" if any(s.tls for s in servers) else "http",
            )
        )
        for seconds in ([settings.warmup] if settings.warmup else []) + [settings.duration]
    ]
    print("  commands (cwd benchmarks/, env BERTH_IN_CONTAINER=0 PYTHONPATH=<repo root>):")
    for spec, cmd in zip(servers, commands):
        print(f"    {spec.name}: {cmd}")
    for cmd, label in zip(wrk_cmds, (["warm-up", "measured"] if settings.warmup else ["measured"])):
        print(f"    wrk {label}: {cmd}")
    if scenario.inprocess_app:
        inproc_cmd = shell_join(inprocess_command(scenario.inprocess_app, server_cpu))
        print(f"    app in-process: {inproc_cmd}")
        wrk_cmds.append(inproc_cmd)
    for note in scenario.notes:
        print(f"  note: {note}")
    print()

    runs: list[Run] = []
    inproc: list[InprocessRun] = []
    for rnd in range(1, settings.rounds + 1):
        if scenario.inprocess_app:
            # Once per round, so that it shares the rounds' machine conditions with the servers.
            app_run = measure_inprocess(scenario.inprocess_app, rnd, server_cpu)
            inproc.append(app_run)
            prefix = f"  [{scenario.name} round {rnd}/{settings.rounds}] {'app in-process':<22}"
            if app_run.ok:
                print(f"{prefix} {app_run.us_per_request:>10.1f} us/req (CPU, no server)")
            else:
                print(f"{prefix} FAILED: {app_run.error}")
        shift = (rnd - 1) % len(servers)
        for spec in [*servers[shift:], *servers[:shift]]:
            run = measure(scenario, spec, rnd, settings, log_dir)
            runs.append(run)
            prefix = f"  [{scenario.name} round {rnd}/{settings.rounds}] {spec.name:<22}"
            if run.ok and run.wrk is not None:
                w = run.wrk
                print(
                    f"{prefix} {w.rps:>10,.0f} req/s  p50 {_fmt_ms(w.p50_ms):>8}  "
                    f"p99 {_fmt_ms(w.p99_ms):>8}  cpu {_fmt(run.cpu_us_per_request, '.1f')} us/req"
                    f"  wrk cpu {w.client_cpu_seconds / w.seconds:.0%}  errors {w.errors}"
                    + (f" {w.socket_errors} non-2xx/3xx {w.non_2xx_3xx}" if w.errors else "")
                )
                if scenario.pin_servers and run.affinity and run.affinity != [server_cpu]:
                    print(
                        f"    ! {spec.name} processes ran on CPUs {run.affinity}, "
                        f"expected [{server_cpu}]"
                    )
                if run.foreign_cpu_pct is not None and run.foreign_cpu_pct > FOREIGN_CPU_WARN_PCT:
                    print(
                        f"    ! CPU {server_cpu} was {run.foreign_cpu_pct:.0f}% busy with other "
                        "processes during this run: the machine is not quiet"
                    )
            else:
                print(f"{prefix} FAILED: {(run.error or '').splitlines()[0]}")
    return runs, inproc, commands + wrk_cmds


def parse_args(argv: Sequence[str] | None, scenario_names: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark berth against gunicorn, granian and uvicorn with wrk.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=scenario_names,
        help="scenario to run (repeatable; default: all)",
    )
    parser.add_argument(
        "--server",
        action="append",
        metavar="GLOB",
        help="only run servers whose name matches (repeatable), e.g. 'berth*'",
    )
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per scenario")
    parser.add_argument("--duration", type=int, default=5, help="measured wrk run, seconds")
    parser.add_argument(
        "--warmup", type=int, default=1, help="discarded wrk run, seconds (0: none)"
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="CPU the servers are pinned to")
    parser.add_argument("--client-cpu", type=int, default=1, help="CPU wrk is pinned to")
    parser.add_argument("--no-pin", action="store_true", help="do not pin anything")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=READY_TIMEOUT_S,
        help="seconds to wait for a server to start",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write raw results as JSON")
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 if a target is missed"
    )
    parser.add_argument("--list", action="store_true", help="list scenarios and servers, then exit")
    parser.add_argument(
        "--baseline",
        metavar="REF",
        help="also run every berth server as of git commit REF (from a temporary git worktree), "
        "named e.g. berth-t1@<short hash>, and report berth / baseline",
    )
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0:
        parser.error("--rounds and --duration must be >= 1, --warmup >= 0")
    return args


def print_header(
    settings: Settings, availability: dict[str, Availability], machine: dict[str, Any]
) -> None:
    print(
        f"berth benchmarks: {machine['cpu']}, {machine['cpus']} CPUs, "
        f"Python {machine['python']}, {machine['wrk']}"
    )
    for family, avail in availability.items():
        print(
            f"  {family}: {avail.version}" if avail.ok else f"  {family}: SKIPPED ({avail.reason})"
        )
    pin = (
        f"servers on CPU {settings.server_cpu}, wrk on CPU {settings.client_cpu}"
        if settings.server_cpu is not None
        else "no CPU pinning"
    )
    print(
        f"  {settings.rounds} rounds x ({settings.warmup} s warm-up + {settings.duration} s "
        f"measured), {pin}"
    )


def bench_scenario(
    scenario: Scenario, servers: Sequence[ServerSpec], settings: Settings, log_dir: Path
) -> tuple[dict[str, Any], list[TargetResult]]:
    """Run, print the report, and return (JSON-ready results, target results)."""
    runs, inproc, commands = run_scenario(scenario, servers, settings, log_dir)
    summaries = {
        s.name: summary
        for s in servers
        if (summary := summarize(s.name, [r for r in runs if r.server == s.name])) is not None
    }
    app_us = _median([r.us_per_request for r in inproc if r.ok])
    if scenario.inprocess_app:
        summaries = add_server_share(summaries, app_us)
    targets = evaluate(scenario, summaries, runs)
    picks = pick_best(scenario.best_of, summaries)
    print()
    print(
        f"  results: median of {settings.rounds} rounds; errors = socket errors + non-2xx/3xx "
        "responses, summed over rounds;\n"
        "  srv CPU / wrk CPU = CPU use of the server's process tree / of wrk, in % of one CPU\n"
        "  (a pinned server below ~100% is waiting, not working; wrk near 100% is the bottleneck)\n"
        "  kernel = the part of CPU us/req spent in the kernel (system calls, the network stack)"
    )
    if scenario.inprocess_app:
        print(
            "  share us/req = CPU us/req - the app's CPU us/req in-process: what the server "
            "itself spends per request"
        )
    print(report(scenario, servers, summaries, runs, targets, settings.rounds, app_us, inproc))
    results: dict[str, Any] = {
        "description": scenario.description,
        "connections": scenario.connections,
        "pinned": scenario.pin_servers and settings.server_cpu is not None,
        "commands": commands,
        "notes": list(scenario.notes),
        "runs": [asdict(r) for r in runs],
        "summary": {name: asdict(summary) for name, summary in summaries.items()},
        "best_of": {
            g.name: {"members": list(g.members), "picked": picks.get(g.name)}
            for g in scenario.best_of
        },
        "targets": [asdict(t) for t in targets],
    }
    if scenario.inprocess_app:
        results["inprocess"] = {
            "app": scenario.inprocess_app,
            "us_per_request": app_us,
            "runs": [asdict(r) for r in inproc],
        }
    return results, targets


def _exit_on_signal(signum: int, frame: object) -> None:
    # Unwinds through running_server()'s `finally`, so the server under test is stopped too.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv, list(build_scenarios(gunicorn_extra=())))
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # progress lines show up while running
    scenarios = build_scenarios(gunicorn_extra_args())
    if args.list:
        for sc in scenarios.values():
            print(f"{sc.name}: {sc.description}")
            for spec in sc.servers:
                print(f"    {spec.name}")
            for group in sc.best_of:
                print(f"    {group.name} = the best of {', '.join(group.members)}")
        return 0

    wrk = shutil.which("wrk")
    if wrk is None:
        print("error: wrk not found (apt-get install -y wrk)", file=sys.stderr)
        return 2
    try:
        # The worktree is removed when this block is left, whichever way (Ctrl-C included).
        with ExitStack() as stack:
            baseline = None
            if args.baseline:
                baseline = stack.enter_context(baseline_worktree(args.baseline))
            return run_all(args, scenarios, wrk, baseline)
    except BenchError as exc:  # only set-up errors get here: a bad --baseline REF, git failing
        print(f"error: {exc}", file=sys.stderr)
        return 2


def run_all(
    args: argparse.Namespace, scenarios: dict[str, Scenario], wrk: str, baseline: Baseline | None
) -> int:
    server_cpu, client_cpu = pick_cpus(args)
    settings = Settings(
        rounds=args.rounds,
        duration=args.duration,
        warmup=args.warmup,
        server_cpu=server_cpu,
        client_cpu=client_cpu,
        wrk=wrk,
        ready_timeout=args.ready_timeout,
    )
    availability: dict[str, Availability] = {
        "berth": check_berth(),
        "gunicorn": check_gunicorn(),
        "granian": check_package("granian"),
        "uvicorn": check_package("uvicorn"),
    }
    if baseline is not None:
        availability[f"berth@{baseline.short}"] = check_berth(baseline.path)
    machine = {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "wrk": wrk_version(wrk),
    }
    print_header(settings, availability, machine)
    if baseline is not None:
        print(
            f"  baseline: berth at {baseline.ref}"
            + ("" if baseline.commit.startswith(baseline.ref) else f" = {baseline.short}")
            + f" {baseline.subject!r}, from a temporary git worktree"
        )

    results: dict[str, Any] = {}
    missed = False
    with tempfile.TemporaryDirectory(prefix="berth-bench-") as tmp:
        for scenario in (scenarios[name] for name in (args.scenario or scenarios)):
            print(f"\n== {scenario.name}: {scenario.description} ==")
            candidates = (
                with_baselines(scenario.servers, baseline) if baseline else list(scenario.servers)
            )
            skipped = [s.name for s in candidates if not availability[s.source].ok]
            if skipped:
                print(f"  skipped (not available): {', '.join(skipped)}")
            servers = [
                s for s in candidates if availability[s.source].ok and selected(s, args.server)
            ]
            if not servers:
                print("  nothing to run")
                continue
            results[scenario.name], targets = bench_scenario(scenario, servers, settings, Path(tmp))
            missed |= any(t.passed is False for t in targets)

    if args.json:
        raw = {
            "settings": asdict(settings),
            "machine": machine,
            "servers": {source: asdict(a) for source, a in availability.items()},
            "baseline": None  # its worktree (path) is gone by then
            if baseline is None
            else {k: v for k, v in asdict(baseline).items() if k != "path"},
            "scenarios": results,
        }
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
        print(f"\nraw results written to {args.json}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: the server under test was stopped", file=sys.stderr)
        sys.exit(130)

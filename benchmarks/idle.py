#!/usr/bin/env python3
"""Memory of idle keep-alive connections: what one open, idle connection costs a worker.

    python benchmarks/idle.py                                  # berth and granian, 10,000 each
    python benchmarks/idle.py --server berth --connections 10000 --json idle.json

Per server: it starts with 1 worker (berth: `-w 1 --threads 4 --keep-alive 300`, its default
thread count, and a keep-alive long enough that no connection times out during the
measurement; granian: `--workers 1 --blocking-threads 4 --backpressure N`, HTTP/1 keep-alive
on, its default: by default it serves at most 1024 connections at a time, idle ones included).
A warm-up opens 100 connections, sends one request on each and closes them, so that the
worker's per-connection code paths and allocator pools have been used once. Then:

1. "before": the worker's memory from /proc/PID/smaps_rollup.
2. One client process (non-blocking sockets and a selector, at most 200 connections in
   progress at a time, bounded by --timeout) opens --connections connections to 127.0.0.1,
   sends `GET / HTTP/1.1` on each and reads the whole response; the connections then stay
   open and idle.
3. After --settle seconds, "after": the same reading. It also counts the worker's open
   sockets (/proc/PID/fd) and, before closing them, the connections the server closed or
   wrote to meanwhile (they are readable), so a timed-out keep-alive cannot pass unnoticed.

It reports (after - before) / connections in KiB for RSS, Pss and USS (Private_Clean +
Private_Dirty: memory only this process uses, the honest measure of growth; the target is
judged on it). Socket buffers are kernel memory and are in none of these. Both processes need
a file descriptor per connection: the script raises its soft RLIMIT_NOFILE to what the
connections need (the server inherits it) and stops if the hard limit is lower.

With `--pipelined KIB`, each connection instead sends KIB of tiny pipelined requests (`GET /
HTTP/1.1` with a Host field, 40 bytes each) and reads none of the responses: a client that
floods a connection and never reads. Its cost to the worker must stay bounded by what a
connection may hold (the requests queued on it and its responses not yet sent), not grow with
what the client sends: the target is then PIPELINED_TARGET_KIB per connection.

Linux only; 127.0.0.1 only. Reuses bench.py's server start/stop helpers.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import resource
import selectors
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

TARGET_KIB = 4.0  # berth: USS per idle connection at most this
# berth, --pipelined: USS per connection at most this. A connection that reads nothing holds its
# unsent responses (berth.worker.connection.HIGH_WATER, 256 KiB), the bytes of one read not yet
# parsed (64 KiB) and up to 16 parsed requests: 384 KiB leaves room for the allocator.
PIPELINED_TARGET_KIB = 384.0
MAX_IN_PROGRESS = 200  # below every server's listen backlog, so no SYN is dropped
WARMUP_CONNECTIONS = 100
FD_MARGIN = 256  # descriptors besides the connections (logs, pipes, epoll, the listener)
RESPONSE_LIMIT = 1 << 16  # a hello-world response is far smaller; more is a broken server


def smaps_rollup(pid: int) -> dict[str, int]:
    """Fields of /proc/PID/smaps_rollup in KiB (Rss, Pss, Private_Clean, ...)."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+):\s+(\d+) kB$", text, re.MULTILINE)}


@dataclass(frozen=True)
class Memory:
    rss_kib: int
    pss_kib: int
    uss_kib: int  # Private_Clean + Private_Dirty

    @classmethod
    def of(cls, pid: int) -> Memory:
        f = smaps_rollup(pid)
        return cls(f["Rss"], f["Pss"], f["Private_Clean"] + f["Private_Dirty"])


def socket_fds(pid: int) -> int:
    count = 0
    for entry in os.scandir(f"/proc/{pid}/fd"):
        try:
            count += os.readlink(entry.path).startswith("socket:")
        except OSError:  # closed meanwhile
            pass
    return count


def response_complete(data: bytes) -> bool | None:
    """True: a whole 200 response with its Content-Length body; None: not yet; False: not a
    200, or a response this client cannot frame (no Content-Length)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
        return False
    m = re.search(rb"\r\ncontent-length:\s*(\d+)", head, re.IGNORECASE)
    if m is None:
        return False
    return True if len(body) >= int(m[1]) else None


@dataclass
class _Pending:
    sock: socket.socket
    request: bytes
    received: bytearray = field(default_factory=bytearray)
    sent: bool = False


def open_idle_connections(
    port: int, count: int, timeout: float, in_progress: int = MAX_IN_PROGRESS
) -> tuple[list[socket.socket], list[str]]:
    """Open `count` connections, one request and its whole response on each, and return the
    open sockets (now idle) and the errors of those that failed. Raises TimeoutError after
    `timeout` seconds (closing every socket)."""
    request = f"GET / HTTP/1.1\r\nHost: {bench.HOST}:{port}\r\n\r\n".encode()
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    idle: list[socket.socket] = []
    errors: list[str] = []
    started = 0

    def fail(p: _Pending, why: str) -> None:
        sel.unregister(p.sock)
        p.sock.close()
        errors.append(why)

    try:
        while len(idle) + len(errors) < count:
            while started < count and len(sel.get_map()) < in_progress:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setblocking(False)
                rc = sock.connect_ex((bench.HOST, port))
                started += 1
                if rc not in (0, errno.EINPROGRESS):
                    sock.close()
                    errors.append(f"connect: {os.strerror(rc)}")
                    continue
                sel.register(sock, selectors.EVENT_WRITE, _Pending(sock, request))
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{len(idle):,} of {count:,} connections ready after {timeout:.0f} s"
                )
            for key, _ in sel.select(timeout=1.0):
                p: _Pending = key.data
                try:
                    if not p.sent:
                        if rc := p.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                            fail(p, f"connect: {os.strerror(rc)}")
                            continue
                        p.sock.sendall(p.request)  # 40 bytes: fits any socket buffer at once
                        p.sent = True
                        sel.modify(p.sock, selectors.EVENT_READ, p)
                        continue
                    data = p.sock.recv(4096)
                except OSError as exc:
                    fail(p, f"{type(exc).__name__}: {exc}")
                    continue
                if not data:
                    fail(p, "closed by the server before a whole response")
                    continue
                p.received += data
                done = response_complete(bytes(p.received))
                if done is None and len(p.received) < RESPONSE_LIMIT:
                    continue
                if done:
                    sel.unregister(p.sock)
                    idle.append(p.sock)
                else:
                    fail(p, f"unexpected response: {bytes(p.received[:80])!r}")
    except BaseException:
        for sock in idle:
            sock.close()
        for key in list(sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]
        raise
    finally:
        sel.close()
    return idle, errors


def open_pipelining_connections(
    port: int, count: int, nbytes: int, timeout: float
) -> tuple[list[socket.socket], list[str]]:
    """Open `count` connections and send `nbytes` of pipelined requests on each, reading
    nothing: what the kernel's buffers take once the server stops reading stays unsent.
    Returns the open sockets and the errors of those that failed."""
    one = f"GET / HTTP/1.1\r\nHost: {bench.HOST}:{port}\r\n\r\n".encode()
    payload = one * (nbytes // len(one) + 1)
    socks: list[socket.socket] = []
    errors: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        for _ in range(count):
            sock = socket.create_connection((bench.HOST, port), timeout=max(1.0, timeout))
            sock.setblocking(False)
            socks.append(sock)
        left = {sock: memoryview(payload)[:nbytes] for sock in socks}
        while left and time.monotonic() < deadline:  # until each is sent or stuck for 1 s
            sent_any = False
            for sock, rest in list(left.items()):
                try:
                    n = sock.send(rest)
                except BlockingIOError:
                    continue
                except OSError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                    del left[sock]
                    continue
                sent_any = True
                if n == len(rest):
                    del left[sock]
                else:
                    left[sock] = rest[n:]
            if not sent_any:
                with selectors.DefaultSelector() as sel:
                    for sock in left:
                        sel.register(sock, selectors.EVENT_WRITE)
                    if not sel.select(timeout=1.0):
                        break  # the server reads no more: the rest stays in our buffers
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks, errors


def closed_or_written(socks: Sequence[socket.socket]) -> int:
    """How many idle sockets are readable now: the server closed them (EOF) or sent bytes."""
    with selectors.DefaultSelector() as sel:
        for sock in socks:
            sel.register(sock, selectors.EVENT_READ)
        return len(sel.select(timeout=0))


@dataclass
class IdleResult:
    server: str
    command: list[str]
    connections: int  # asked for
    held: int  # open and idle when "after" was read
    errors: list[str]
    closed_early: int  # of the held ones, closed or written to by the server by the end
    worker_sockets: int  # sockets in the worker's fd table at "after"
    open_seconds: float
    before: Memory
    after: Memory

    def kib_per_connection(self, kind: str) -> float | None:
        if not self.held:
            return None
        return (getattr(self.after, kind) - getattr(self.before, kind)) / self.held


def worker_pid(server: bench.ServerProcess) -> int:
    """The only child of the server's main process (berth -w 1, granian --workers 1)."""
    children = [st.pid for st in server.tree() if st.ppid == server.pid]
    if len(children) != 1:
        raise bench.BenchError(f"expected 1 worker under the main process, found {children}")
    return children[0]


def measure(
    spec: bench.ServerSpec,
    count: int,
    timeout: float,
    settle: float,
    log_dir: Path,
    pipelined: int = 0,
) -> IdleResult:
    with bench.running_server(spec, None, log_dir, bench.READY_TIMEOUT_S) as server:
        worker = worker_pid(server)
        warm, warm_errors = open_idle_connections(server.port, WARMUP_CONNECTIONS, timeout)
        for sock in warm:
            sock.close()
        if warm_errors:
            raise bench.BenchError(f"warm-up failed: {warm_errors[:3]}")
        time.sleep(settle)  # the worker sees the closes and drops the connections
        before = Memory.of(worker)
        start = time.monotonic()
        if pipelined:
            idle, errors = open_pipelining_connections(server.port, count, pipelined, timeout)
            # a worker busy with the floods accepts the rest late: wait until it holds them all
            until = time.monotonic() + timeout
            while socket_fds(worker) < len(idle) and time.monotonic() < until:
                time.sleep(0.1)
        else:
            idle, errors = open_idle_connections(server.port, count, timeout)
        opened = time.monotonic() - start
        try:
            time.sleep(settle)
            after = Memory.of(worker)
            sockets = socket_fds(worker)
            early = 0 if pipelined else closed_or_written(idle)
        finally:
            for sock in idle:
                sock.close()
        if server.proc.poll() is not None:
            raise bench.BenchError(f"{spec.name} died\n{server.log_tail()}")
    return IdleResult(
        server=spec.name,
        command=server.command,
        connections=count,
        held=len(idle),
        errors=errors,
        closed_early=early,
        worker_sockets=sockets,
        open_seconds=opened,
        before=before,
        after=after,
    )


def raise_fd_limit(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE to at least `needed` (children inherit it); the new soft
    limit, or BenchError if the hard limit is lower."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise bench.BenchError(
            f"{needed:,} file descriptors needed, the hard limit is {hard:,}: raise it "
            f"(e.g. prlimit --nofile={needed}:{needed} --pid {os.getpid()}, or ulimit -Hn as root)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


def server_specs(names: Sequence[str], connections: int) -> list[bench.ServerSpec]:
    # Granian serves at most --backpressure connections at once (default backlog/workers =
    # 1024), and an idle keep-alive connection keeps its place: the rest would wait forever.
    backpressure = str(connections + WARMUP_CONNECTIONS)
    specs = {
        "berth": bench.berth(
            "berth-t4", "hello:app", workers=1, threads=4, extra=("--keep-alive", "300")
        ),
        "berth-t1": bench.berth(
            "berth-t1", "hello:app", workers=1, threads=1, extra=("--keep-alive", "300")
        ),
        "granian": bench.granian(
            "granian-bt4",
            "hello:app",
            workers=1,
            blocking_threads=4,
            extra=("--backpressure", backpressure),
        ),
    }
    return [specs[name] for name in names]


def report(results: Sequence[IdleResult]) -> str:
    header = ["server", "held", "errors", "closed early", "worker sockets", "open time"]
    header += ["RSS KiB/conn", "Pss KiB/conn", "USS KiB/conn"]
    rows = [
        [
            r.server,
            f"{r.held:,}/{r.connections:,}",
            f"{len(r.errors):,}",
            f"{r.closed_early:,}",
            f"{r.worker_sockets:,}",
            f"{r.open_seconds:.1f}s",
            *(
                bench._fmt(r.kib_per_connection(k), ".2f")
                for k in ("rss_kib", "pss_kib", "uss_kib")
            ),
        ]
        for r in results
    ]
    lines = [bench.table(header, rows)]
    for r in results:
        lines.append(
            f"  {r.server}: worker USS {r.before.uss_kib:,} -> {r.after.uss_kib:,} KiB, "
            f"RSS {r.before.rss_kib:,} -> {r.after.rss_kib:,} KiB"
            + (f"; errors: {', '.join(sorted(set(r.errors)))[:200]}" if r.errors else "")
        )
    return "\n".join(lines)


def berth_target(results: Sequence[IdleResult], target: float = TARGET_KIB) -> bool | None:
    """berth's USS per connection <= `target`, with every connection held open."""
    verdicts = []
    for r in results:
        if r.server.startswith("berth"):
            per = r.kib_per_connection("uss_kib")
            ok = per is not None and per <= target and r.held == r.connections
            ok = ok and r.closed_early == 0
            verdicts.append(ok)
            status = "PASS" if ok else "FAIL"
            print(
                f"  [{status}] {r.server} USS <= {target:g} KiB per connection: "
                f"{bench._fmt(per, '.2f')} KiB ({r.held:,} held, {r.closed_early} closed early)"
            )
    return all(verdicts) if verdicts else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Worker memory per idle keep-alive connection.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--server",
        action="append",
        choices=["berth", "berth-t1", "granian"],
        help="server to measure (repeatable; default: berth and granian if installed)",
    )
    parser.add_argument("--connections", type=int, default=10_000, help="idle connections")
    parser.add_argument(
        "--settle", type=float, default=1.0, help="seconds to wait before reading memory"
    )
    parser.add_argument(
        "--timeout", type=float, default=120.0, help="seconds allowed to open the connections"
    )
    parser.add_argument(
        "--pipelined",
        type=int,
        default=0,
        metavar="KIB",
        help="send KIB of pipelined requests on each connection and read nothing "
        f"(target {PIPELINED_TARGET_KIB:g} KiB per connection)",
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results as JSON")
    parser.add_argument("--check", action="store_true", help="exit 1 if berth misses the target")
    args = parser.parse_args(argv)
    if not 1 <= args.connections <= 100_000 or not 0 <= args.settle <= 60:
        parser.error("--connections must be 1..100000 and --settle 0..60")
    if not 1 <= args.timeout <= 3600:
        parser.error("--timeout must be 1..3600")
    if not 0 <= args.pipelined <= 65536:
        parser.error("--pipelined must be 0..65536 (KiB)")
    names = args.server or ["berth"] + (["granian"] if bench.check_package("granian").ok else [])
    try:
        limit = raise_fd_limit(args.connections + WARMUP_CONNECTIONS + FD_MARGIN)
    except bench.BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, bench._exit_on_signal)  # unwinds: server stopped
    what = f"pipelining {args.pipelined:,} KiB, reading nothing" if args.pipelined else "idle"
    print(f"{what} connections: {args.connections:,} per server, RLIMIT_NOFILE {limit:,}")
    results: list[IdleResult] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="berth-idle-") as tmp:
        for spec in server_specs(names, args.connections):
            print(f"  {spec.name}: {bench.shell_join(spec.command('$PORT', None))}", flush=True)
            try:
                results.append(
                    measure(
                        spec,
                        args.connections,
                        args.timeout,
                        args.settle,
                        Path(tmp),
                        args.pipelined * 1024,
                    )
                )
            except (bench.BenchError, TimeoutError, OSError) as exc:
                print(f"  {spec.name}: FAILED: {exc}", file=sys.stderr)
                failed = True
    print()
    print(report(results))
    print()
    passed = berth_target(results, PIPELINED_TARGET_KIB if args.pipelined else TARGET_KIB)
    if args.json:
        raw = [
            dict(
                asdict(r),
                kib_per_connection={
                    k: r.kib_per_connection(k) for k in ("rss_kib", "pss_kib", "uss_kib")
                },
            )
            for r in results
        ]
        args.json.write_text(json.dumps(raw, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    if failed:
        return 1
    return 1 if args.check and passed is False else 0


if __name__ == "__main__":
    sys.exit(main())

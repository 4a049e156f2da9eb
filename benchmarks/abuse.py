#!/usr/bin/env python3
"""What hostile or broken clients cost one worker: memory, CPU, threads, sockets, and when
the worker lets them go.

    python benchmarks/abuse.py --pattern head_trickle -n 500
    python benchmarks/abuse.py --kind asgi --pattern slow_reader -n 100 --piece 0 --rcvbuf 4096
    python benchmarks/abuse.py --sweep                       # the audit's table, ~5 minutes
    python benchmarks/abuse.py --sweep --server gunicorn     # Gunicorn gthread, for context

One pattern: start one worker on 127.0.0.1 (berth `-w 1 -k gthread --threads T` with
tests/apps/proto_app.py, or `-k asgi` with its twin proto_asgi.py; `--server gunicorn`: Gunicorn
gthread with proto_app), warm it up with 20 GETs, read the worker's USS (Private_Clean +
Private_Dirty of /proc/PID/smaps_rollup), CPU (utime + stime), threads and sockets; open N
connections and run the pattern for --duration seconds, while a sampler reads the worker every
0.25 s and a probe GETs /hello on a fresh connection every second (5 s timeout). It prints one
JSON line: the peak USS growth (and per connection), the CPU burnt, the threads, the most
connections the worker held and when it had closed half of them (its socket count), the
clients' TCP states at the end (1 established, 7 closed, 8 close-wait), and the probe's worst
latency. Server options go after `--` (the sweep uses `--header-timeout 5 --keep-alive 8`).

Linux only, 127.0.0.1 only, standard library (+ trustme for --tls). Every loop is bounded by
--duration; the server is stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
APPS = ROOT / "tests" / "apps"
HOST = "127.0.0.1"
OPTS: argparse.Namespace


# -- the worker --------------------------------------------------------------------------------

def worker_stats(pid: int) -> dict:
    """USS (KiB), CPU seconds, threads and open sockets of process `pid`."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    f = {m[1]: int(m[2]) for m in re.finditer(r"^(\w+):\s+(\d+) kB$", text, re.MULTILINE)}
    with open(f"/proc/{pid}/stat") as s:
        fields = s.read().rsplit(")", 1)[1].split()
    socks = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            socks += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
        except OSError:
            pass
    return {"uss": f["Private_Clean"] + f["Private_Dirty"],
            "cpu": (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
            "threads": int(fields[17]), "socks": socks}


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


class Server:
    def __init__(self, opts: argparse.Namespace, tls: tuple[str, str] | None):
        env = dict(os.environ, PYTHONPATH=f"{APPS}{os.pathsep}{ROOT}", BERTH_IN_CONTAINER="0")
        env.pop("WEB_CONCURRENCY", None)
        if opts.server == "berth":
            app = "proto_asgi:app" if opts.kind == "asgi" else "proto_app:app"
            cmd = [sys.executable, "-m", "berth", "-w", "1", "-k", opts.kind,
                   "--access-logfile", "none", "--log-level", "warning"]
            if opts.kind != "asgi":
                cmd += ["--threads", str(opts.threads)]
        else:
            app = "proto_app:app"
            cmd = [sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gthread",
                   "--threads", str(opts.threads), "--log-level", "warning"]
        cmd += ["-b", f"{HOST}:{opts.port}"]
        if tls:
            cmd += ["--certfile", tls[0], "--keyfile", tls[1]]
        cmd += list(opts.extra) + [app]
        self.err = tempfile.NamedTemporaryFile(prefix="abuse-", suffix=".err", delete=False)
        self.proc = subprocess.Popen(cmd, env=env, cwd=tempfile.gettempdir(),
                                     stdout=subprocess.DEVNULL, stderr=self.err,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.proc.poll() is None:
            kids = children(self.proc.pid)
            if kids:
                try:
                    if probe(opts.port, tls is not None, 2)[0] == 200:
                        self.worker = kids[0]
                        return
                except OSError:
                    pass
            time.sleep(0.1)
        self.stop()
        raise SystemExit(f"the server did not start: {Path(self.err.name).read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.err.close()
        os.unlink(self.err.name)


def client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def probe(port: int, tls: bool, timeout: float = 5.0) -> tuple[int, float]:
    """GET /hello on a fresh connection: (status, seconds)."""
    t0 = time.monotonic()
    sock = socket.create_connection((HOST, port), timeout=timeout)
    try:
        if tls:
            sock = client_context().wrap_socket(sock)
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    finally:
        sock.close()
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, time.monotonic() - t0


class Watch(threading.Thread):
    """Reads the worker every 0.25 s and probes it every second."""

    def __init__(self, srv: Server, port: int, tls: bool):
        super().__init__(daemon=True)
        self.srv, self.port, self.tls = srv, port, tls
        self.samples: list[tuple[float, dict]] = []
        self.probes: list[tuple[float, int, float]] = []
        self.halt = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        next_probe = 0.0
        while not self.halt.is_set():
            now = time.monotonic() - self.t0
            try:
                self.samples.append((now, worker_stats(self.srv.worker)))
            except OSError:
                return
            if now >= next_probe:
                next_probe = now + 1.0
                try:
                    status, took = probe(self.port, self.tls)
                except OSError:
                    status, took = 0, 5.0
                self.probes.append((now, status, took))
            self.halt.wait(0.25)


# -- client helpers ------------------------------------------------------------------------------

def opened(n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        sock = socket.socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if OPTS.rcvbuf:  # (before connect: the window it advertises)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, OPTS.rcvbuf)
        sock.settimeout(5)
        sock.connect((HOST, OPTS.port))
        sock.setblocking(False)
        socks.append(sock)
    return socks


def send_some(sock: socket.socket, data: bytes) -> int:
    """What the socket takes now; -1 once the server is gone."""
    try:
        return sock.send(data)
    except BlockingIOError:
        return 0
    except OSError:
        return -1


def drain(sock: socket.socket) -> bool:
    """Read what waits (at most 1 MiB); False once the server closed."""
    got = 0
    while got < 1 << 20:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        got += len(data)
    return True


def send_all_or_stall(socks, first: bytes, deadline: float) -> None:
    for sock in socks:
        sent = 0
        while sent < len(first) and time.monotonic() < deadline:
            n = send_some(sock, first[sent:])
            if n < 0:
                break
            sent += n
            if not n:
                time.sleep(0.001)


def trickle(socks, first: bytes, rest: bytes, every: float, duration: float) -> None:
    """Each socket sends `first`, then one byte of `rest` every `every` seconds, reading and
    dropping what the server answers."""
    t0 = time.monotonic()
    send_all_or_stall(socks, first, t0 + duration)
    alive = set(range(len(socks)))
    i = 0
    while time.monotonic() - t0 < duration and alive:
        for k in list(alive):
            if not drain(socks[k]) or (i < len(rest) and send_some(socks[k],
                                                                  rest[i:i + 1]) < 0):
                alive.discard(k)
        i += 1
        time.sleep(every)


def pump(socks, wire: bytes, duration: float) -> list[int]:
    """Each socket sends `wire` as fast as the server takes it, reading nothing."""
    sent = [0] * len(socks)
    t0 = time.monotonic()
    while time.monotonic() - t0 < duration:
        moved = 0
        for i, sock in enumerate(socks):
            if sent[i] < len(wire):
                n = send_some(sock, wire[sent[i]:sent[i] + (1 << 20)])
                if n > 0:
                    sent[i] += n
                    moved += n
        if not moved:
            time.sleep(0.01)
    return sent


def note(text: str) -> None:
    print("  " + text, file=sys.stderr)


# -- the patterns ----------------------------------------------------------------------------------

def head_trickle(n, duration):
    """A head, one byte a second: closed at --header-timeout."""
    socks = opened(n)
    trickle(socks, b"GET /hello HTTP/1.1\r\nHost: a\r\nX-Trickle: ", b"v" * 100_000, 1.0,
            duration)
    return socks


def big_head_stall(n, duration):
    """98 fields of 8 KiB (the limits: 100 fields, 8190 bytes a line), then nothing."""
    head = b"GET /hello HTTP/1.1\r\nHost: a\r\n" + b"".join(
        b"X-F%02d: %s\r\n" % (i, b"v" * 8168) for i in range(98))
    socks = opened(n)
    trickle(socks, head, b"", 1.0, duration)
    return socks


def partial_line(n, duration):
    socks = opened(n)
    trickle(socks, b"GET /hel", b"", 1.0, duration)
    return socks


def long_line(n, duration):
    """A request line just under --limit-request-line (4094), unfinished."""
    socks = opened(n)
    trickle(socks, b"GET /" + b"a" * 4060, b"", 1.0, duration)
    return socks


def grow_line(n, duration, prefix: bytes, what: str):
    socks = opened(n)
    for sock in socks:
        send_some(sock, prefix)
    piece = b"v" * OPTS.piece
    sent = 0
    alive = set(range(n))
    t0 = time.monotonic()
    while time.monotonic() - t0 < duration and alive and sent < OPTS.total:
        for k in list(alive):
            if send_some(socks[k], piece) < 0:
                alive.discard(k)
        sent += len(piece)
        time.sleep(OPTS.every)
    note(f"{what}: {sent} bytes in {OPTS.piece}-byte pieces sent on each, "
         f"{len(alive)} of {n} connections still taking them")
    return socks


def one_field_pieces(n, duration):
    """One header value grown in --piece-byte pieces every --every s, never ended."""
    return grow_line(n, duration, b"GET /hello HTTP/1.1\r\nHost: a\r\nX-Big: ", "header field")


def big_trailer(n, duration):
    """A chunked body whose trailer field grows in --piece-byte pieces, never ended."""
    return grow_line(n, duration, b"POST /sha256 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: "
                     b"chunked\r\n\r\n1\r\nz\r\n0\r\nX-Trailer: ", "trailer field")


def body_trickle(n, duration):
    """A Content-Length body (--content-length): --prefill bytes at once, then a byte every
    --every s (under --header-timeout: never a pause long enough to end it)."""
    cl = OPTS.content_length
    head = b"POST /echo?rs=65536 HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % cl
    socks = opened(n)
    trickle(socks, head + b"x" * OPTS.prefill, b"y" * (cl - OPTS.prefill), OPTS.every,
            duration)
    return socks


def expect_stall(n, duration):
    """Expect: 100-continue, then no body."""
    socks = opened(n)
    trickle(socks, b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n"
            b"Expect: 100-continue\r\n\r\n" % OPTS.content_length, b"", 1.0, duration)
    return socks


def chunked_tiny(n, duration):
    """A chunked body of --chunk-byte chunks (--total body bytes) to /sha256, which reads it,
    as fast as the worker takes it: the worker's CPU per MB."""
    unit = OPTS.chunk
    wire = (b"POST /sha256 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"%x\r\n" % unit + b"z" * unit + b"\r\n") * (OPTS.total // unit) + b"0\r\n\r\n")
    socks = opened(n)
    t0 = time.monotonic()
    sent = pump(socks, wire, duration)
    note(f"{sum(sent) / n / 1e6:.1f} of {len(wire) / 1e6:.1f} MB of wire sent on each "
         f"({unit}-byte chunks of a {OPTS.total / 1e6:.1f} MB body) in "
         f"{time.monotonic() - t0:.1f} s")
    return socks


def chunks_to_slow_app(n, duration):
    """A chunked body of --chunk-byte chunks to /sleep (an app that reads none of it yet):
    what waits for the app (run with --body-buffer-size 65536 after --)."""
    unit = OPTS.chunk
    wire = (b"POST /sleep?s=%d HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            % (duration + 2) + (b"%x\r\n" % unit + b"z" * unit + b"\r\n")
            * (OPTS.total // unit))
    socks = opened(n)
    sent = pump(socks, wire, min(duration, 4))
    note(f"{min(sent) / 1e6:.1f} MB of wire or more sent on each")
    return socks


def pipelined_uploads(n, duration):
    """30 POSTs of 1 MB pipelined to /sleep, reading nothing."""
    one = b"POST /sleep?s=2 HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n"
    socks = opened(n)
    sent = pump(socks, (one + b"b" * 1_000_000) * 30, min(duration, 4))
    note(f"{min(sent) / 1e6:.1f} MB or more sent on each")
    return socks


def chunk_ext(n, duration):
    """1-byte chunks, each with a --piece-byte extension."""
    ext = b";e=" + b"x" * OPTS.piece
    wire = (b"POST /sha256 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"1" + ext + b"\r\nz\r\n") * (OPTS.total // len(ext)) + b"0\r\n\r\n")
    socks = opened(n)
    pump(socks, wire, min(duration, 5))
    return socks


def longer_body(n, duration):
    """Content-Length 10, then a MiB more."""
    socks = opened(n)
    trickle(socks, b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n"
            + b"q" * (1 << 20), b"", 1.0, duration)
    return socks


def slow_reader(n, duration):
    """GET /big?n=--total (a stream; --list: one body), then read --piece bytes every --every
    s (0: nothing; with --rcvbuf 4096, a zero window)."""
    socks = opened(n)
    request = b"GET /big?n=%d%s HTTP/1.1\r\nHost: a\r\n\r\n" % (
        OPTS.total, b"&list=1" if OPTS.list else b"")
    for sock in socks:
        send_some(sock, request)
    alive = set(range(n))
    got = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < duration and alive:
        if OPTS.piece:
            for k in list(alive):
                try:
                    data = socks[k].recv(OPTS.piece)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    alive.discard(k)
                got += len(data)
        time.sleep(OPTS.every)
    note(f"read {got} bytes in all")
    return socks


def idle_conns(n, duration):
    """Connect and send nothing."""
    socks = opened(n)
    trickle(socks, b"", b"", 1.0, duration)
    return socks


def half_close(n, duration):
    """Part of a head, then shutdown(SHUT_WR)."""
    socks = opened(n)
    for sock in socks:
        send_some(sock, b"GET /hello HTTP/1.1\r\nHo")
        sock.shutdown(socket.SHUT_WR)
    trickle(socks, b"", b"", 1.0, duration)
    return socks


def tls_stall(n, duration):
    """(--tls) The first --piece bytes of a ClientHello, then a byte a second."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = client_context().wrap_bio(incoming, outgoing, server_hostname="a")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    socks = opened(n)
    trickle(socks, hello[:OPTS.piece], hello[OPTS.piece:-1], 1.0, duration)
    return socks


def tls_big_then_idle(n, duration):
    """(--tls) Each reads a --total-byte response (one body), then stays idle."""
    ctx = client_context()
    socks = []
    request = b"GET /big?n=%d&list=1 HTTP/1.1\r\nHost: a\r\n\r\n" % OPTS.total
    for _ in range(n):
        sock = ctx.wrap_socket(socket.create_connection((HOST, OPTS.port), timeout=10))
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        need = len(data.partition(b"\r\n\r\n")[0]) + 4 + OPTS.total
        while len(data) < need:
            data += sock.recv(1 << 20)
        socks.append(sock)
    time.sleep(min(duration, 2))
    return socks


PATTERNS = {f.__name__: f for f in (
    head_trickle, big_head_stall, partial_line, long_line, one_field_pieces, big_trailer,
    body_trickle, expect_stall, chunked_tiny, chunks_to_slow_app, pipelined_uploads, chunk_ext,
    longer_body, slow_reader, idle_conns, half_close, tls_stall, tls_big_then_idle)}
TLS_PATTERNS = {"tls_stall", "tls_big_then_idle"}

# The audit's table: (pattern, its options, the server options it adds). Every row runs with
# --header-timeout 5 --keep-alive 8 (berth; --keep-alive 8 for Gunicorn).
SWEEP = [
    ("head_trickle", "-n 500 --duration 9", ""),
    ("big_head_stall", "-n 100 --duration 8", ""),
    ("partial_line", "-n 500 --duration 8", ""),
    ("long_line", "-n 500 --duration 8", ""),
    ("one_field_pieces", "-n 50 --piece 100 --every 0.002 --total 800000 --duration 8", ""),
    ("big_trailer", "-n 50 --piece 100 --every 0.002 --total 800000 --duration 12", ""),
    ("body_trickle", "-n 100 --content-length 1000000 --prefill 900000 --every 4 "
                     "--duration 14", ""),
    ("body_trickle", "-n 8 --content-length 4000000 --prefill 1100000 --every 4 "
                     "--duration 14", ""),
    ("expect_stall", "-n 100 --content-length 1000 --duration 8", ""),
    ("expect_stall", "-n 8 --content-length 4000000 --duration 8", ""),
    ("chunked_tiny", "-n 1 --total 1000000 --duration 20", ""),
    ("chunked_tiny", "-n 1 --total 4000000 --duration 30", ""),
    ("chunked_tiny", "-n 1 --total 4000000 --chunk 65536 --duration 10", ""),
    ("chunks_to_slow_app", "-n 10 --chunk 2 --total 2000000 --duration 6",
     "--body-buffer-size 65536"),
    ("pipelined_uploads", "-n 10 --duration 6", ""),
    ("chunk_ext", "-n 1 --piece 4000 --total 4000000 --duration 8", ""),
    ("longer_body", "-n 100 --duration 6", ""),
    ("slow_reader", "-n 100 --piece 0 --total 50000000 --rcvbuf 4096 --duration 14", ""),
    ("slow_reader", "-n 20 --piece 0 --total 8000000 --list --rcvbuf 4096 --duration 14", ""),
    ("slow_reader", "-n 20 --piece 1 --every 1 --total 50000000 --rcvbuf 4096 --duration 14", ""),
    ("slow_reader", "-n 8 --piece 65536 --every 1 --total 100000000 --duration 14", ""),
    ("idle_conns", "-n 600 --duration 8", "--worker-connections 100"),
    ("half_close", "-n 200 --duration 6", ""),
    ("tls_stall", "--tls -n 300 --piece 10 --duration 9", ""),
    ("tls_big_then_idle", "--tls -n 10 --total 8000000 --duration 3", ""),
]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="berth", choices=["berth", "gunicorn"])
    p.add_argument("--kind", default="gthread", choices=["gthread", "asgi"])
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--pattern", choices=sorted(PATTERNS))
    p.add_argument("--sweep", action="store_true", help="run the audit's table (SWEEP)")
    p.add_argument("-n", type=int, default=100, help="connections")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--port", type=int, default=6100)
    p.add_argument("--tls", action="store_true", help="serve TLS (a trustme certificate)")
    p.add_argument("--piece", type=int, default=100)
    p.add_argument("--every", type=float, default=1.0)
    p.add_argument("--total", type=int, default=1 << 20)
    p.add_argument("--chunk", type=int, default=1)
    p.add_argument("--list", action="store_true")
    p.add_argument("--content-length", type=int, default=500_000)
    p.add_argument("--prefill", type=int, default=0)
    p.add_argument("--rcvbuf", type=int, default=0)
    p.add_argument("--json", default="", help="append the result line to this file")
    p.add_argument("extra", nargs="*", help="server options, after --")
    return p


def certificate() -> tuple[str, str]:
    import trustme

    d = Path(tempfile.mkdtemp(prefix="abuse-tls-"))
    issued = trustme.CA().issue_cert(HOST, "localhost")
    issued.private_key_pem.write_to_path(str(d / "key.pem"))
    issued.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    return str(d / "cert.pem"), str(d / "key.pem")


def run_one(opts: argparse.Namespace) -> dict:
    global OPTS
    OPTS = opts
    tls = certificate() if opts.tls else None
    srv = Server(opts, tls)
    try:
        for _ in range(20):
            probe(opts.port, opts.tls)
        time.sleep(0.5)
        base = worker_stats(srv.worker)
        watch = Watch(srv, opts.port, opts.tls)
        watch.start()
        t0 = time.monotonic()
        socks = PATTERNS[opts.pattern](opts.n, opts.duration)
        left = opts.duration - (time.monotonic() - t0)
        if left > 0:
            time.sleep(left)
        watch.halt.set()
        watch.join(10)
        end = worker_stats(srv.worker)
        states = []
        for sock in socks:
            try:
                states.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0])
            except OSError:
                states.append(7)
            sock.close()
    finally:
        srv.stop()
    samples = watch.samples
    peak = max(s["uss"] for _, s in samples)
    held = [(t, s["socks"] - base["socks"]) for t, s in samples]
    most = max(c for _, c in held)
    half_closed = next((t for t, c in held if most > 1 and c <= most // 2
                        and any(c2 == most for t2, c2 in held if t2 < t)), None)
    return {
        "server": opts.server, "kind": opts.kind,
        "threads": opts.threads if opts.kind != "asgi" else 1, "tls": opts.tls,
        "pattern": opts.pattern, "n": opts.n, "extra": " ".join(opts.extra),
        "uss_peak_growth_kib": peak - base["uss"],
        "uss_per_conn_kib": round((peak - base["uss"]) / opts.n, 1),
        "uss_end_growth_kib": end["uss"] - base["uss"],
        "cpu_s": round(end["cpu"] - base["cpu"], 2),
        "os_threads": [base["threads"], max(s["threads"] for _, s in samples)],
        "conns_most": most, "conns_end": end["socks"] - base["socks"],
        "half_closed_at_s": half_closed and round(half_closed, 1),
        "client_tcp_states": {str(k): states.count(k) for k in sorted(set(states))},
        "probe_worst_s": round(max((d for _, _, d in watch.probes), default=0), 2),
        "probes_failed": sum(1 for _, status, _ in watch.probes if status != 200),
        "probes": len(watch.probes),
    }


def main(argv: list[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    if not opts.sweep:
        if not opts.pattern:
            parser().error("--pattern or --sweep")
        result = run_one(opts)
        print(json.dumps(result))
        if opts.json:
            with open(opts.json, "a") as f:
                f.write(json.dumps(result) + "\n")
        return 0
    timeouts = ["--keep-alive", "8"] if opts.server == "gunicorn" else [
        "--header-timeout", "5", "--keep-alive", "8"]
    print(f"{'pattern':19} {'options':58} {'KiB/conn':>9} {'CPU s':>6} {'threads':>8} "
          f"{'held':>5} {'closed@':>7} {'probe s':>7}")
    for pattern, args, server_args in SWEEP:
        if opts.server == "gunicorn" and server_args:
            continue  # (berth's settings)
        row = [*args.split(), "--server", opts.server, "--kind", opts.kind, "--threads",
               str(opts.threads), "--port", str(opts.port), "--pattern", pattern]
        row_opts = parser().parse_args(row + ["--", *timeouts, *server_args.split()])
        r = run_one(row_opts)
        if opts.json:
            with open(opts.json, "a") as f:
                f.write(json.dumps(r) + "\n")
        print(f"{pattern:19} {(args + ' ' + server_args).strip()[:58]:58} "
              f"{r['uss_per_conn_kib']:9} {r['cpu_s']:6} {str(r['os_threads']):>8} "
              f"{r['conns_most']:5} {str(r['half_closed_at_s']):>7} {r['probe_worst_s']:7}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

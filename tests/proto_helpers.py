"""Helpers shared by the end-to-end protocol tests (test_http, test_wsgi, test_limits, ...).

Everything talks to 127.0.0.1 only, with socket timeouts and bounded loops.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import APPS, BufferedSocket, Server, connect, http_get

if str(APPS) not in sys.path:
    sys.path.insert(0, str(APPS))

from proto_app import HELLO, big_pattern

__all__ = [
    "HELLO",
    "exit_within",
    "in_background",
    "BufferedSocket",
    "big_pattern",
    "big_sha256",
    "connect",
    "get_request",
    "http_get",
    "marker_dir",
    "proto_args",
    "read_head",
    "sockets_of",
    "read_until_closed",
    "send_raw",
    "start_module_server",
    "status_of",
    "wait_for",
    "worker_uss",
]


def big_sha256(n: int) -> str:
    h = hashlib.sha256()
    for part in big_pattern(n):
        h.update(part)
    return h.hexdigest()


def proto_args(kind: str, threads: int = 4) -> list[str]:
    """The worker class and app of a conformance server, last on its command line: for
    "wsgi" gthread with `threads` app threads and proto_app; for "asgi" one event loop
    (--threads is not the ASGI worker's) and the twin proto_asgi."""
    if kind == "asgi":
        return ["-k", "asgi", "proto_asgi:app"]
    return ["-k", "gthread", "--threads", str(threads), "proto_app:app"]


def start_module_server(tmp_path_factory, args, env=None, name="srv", **kw) -> Server:
    """A Server for a module-scoped fixture; the caller stops it (use in a yield fixture)."""
    tmp = tmp_path_factory.mktemp(name)
    markers = tmp / "markers"
    markers.mkdir()
    full_env = {"PROTO_MARKER_DIR": str(markers)}
    full_env.update(env or {})
    srv = Server(list(args), tmp, env=full_env, **kw)
    srv.markers = markers
    return srv


def marker_dir(srv) -> Path:
    return srv.markers


def get_request(path: str, host: str = "127.0.0.1", version: str = "HTTP/1.1",
                headers: dict | None = None, method: str = "GET", body: bytes = b"") -> bytes:
    hdrs = {}
    if host is not None:
        hdrs["Host"] = host
    hdrs.update(headers or {})
    if body and "Content-Length" not in hdrs and "Transfer-Encoding" not in hdrs:
        hdrs["Content-Length"] = str(len(body))
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    return head.encode("latin-1") + b"\r\n" + body


def read_until_closed(sock: socket.socket, timeout: float = 10.0,
                      limit: int = 64 << 20) -> tuple[bytes, bool]:
    """Read until the peer closes or `timeout` passes: (data, closed_by_peer)."""
    deadline = time.monotonic() + timeout
    chunks = []
    total = 0
    buf = getattr(sock, "_berth_buf", b"")
    if buf:
        chunks.append(buf)
        sock._berth_buf = b""
    while total < limit:
        left = deadline - time.monotonic()
        if left <= 0:
            return b"".join(chunks), False
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return b"".join(chunks), False
        except (ConnectionResetError, BrokenPipeError):
            return b"".join(chunks), True
        if not data:
            return b"".join(chunks), True
        chunks.append(data)
        total += len(data)
    return b"".join(chunks), False


def send_raw(port: int, data: bytes, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Send `data` on a fresh connection, read until the server closes: (response, closed)."""
    with connect(port, timeout) as sock:
        sock.sendall(data)
        return read_until_closed(sock, timeout)


def read_head(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Read bytes up to and including the first blank line; the rest is kept in _berth_buf."""
    deadline = time.monotonic() + timeout
    buf = getattr(sock, "_berth_buf", b"")
    while b"\r\n\r\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete head after {timeout}s: {buf!r}")
        sock.settimeout(left)
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before a complete head: {buf!r}")
        buf += data
    head, _, rest = buf.partition(b"\r\n\r\n")
    sock._berth_buf = rest
    return head + b"\r\n\r\n"


def status_of(raw: bytes) -> int | None:
    """Status code of the first response in `raw`, or None if there is none."""
    if not raw.startswith(b"HTTP/"):
        return None
    first = raw.split(b"\r\n", 1)[0].split()
    return int(first[1]) if len(first) > 1 and first[1].isdigit() else None


def wait_for(pred, timeout: float = 5.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        val = pred()
        if val:
            return val
        if time.monotonic() > deadline:
            return val
        time.sleep(interval)


def served_by(port: int) -> int:
    """The PID of the worker that answers proto_app's /pid."""
    return json.loads(http_get(port, "/pid")[2])["pid"]


def wait_replaced(port: int, old: int, timeout: float = 15.0) -> bool:
    """Whether another worker than `old` answers, and `old` is gone, within `timeout` each
    (a worker retired and replaced)."""
    return bool(wait_for(lambda: served_by(port) != old, timeout=timeout)
                and wait_for(lambda: not os.path.exists(f"/proc/{old}"), timeout=timeout))


@contextlib.contextmanager
def many_sockets():
    socks: list[socket.socket] = []
    try:
        yield socks
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()


def pids_children(pid: int) -> list[int]:
    """PIDs whose parent is `pid` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # field 4 is ppid; the comm field (2) may contain spaces, so split after ')'
        rest = stat.rsplit(")", 1)[1].split()
        if int(rest[1]) == pid:
            out.append(int(entry))
    return out


def sockets_of(pid: int) -> int:
    """How many sockets process `pid` has open (/proc/PID/fd)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                count += 1
        except OSError:
            pass
    return count


def worker_uss(pid: int) -> int:
    """A process's unique memory (Private_Clean + Private_Dirty), in bytes."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        fields = dict(re.findall(r"^(\w+):\s+(\d+) kB$", f.read(), re.MULTILINE))
    return (int(fields["Private_Clean"]) + int(fields["Private_Dirty"])) << 10


def in_background(fn):
    """Run `fn` on a daemon thread: (thread, box) where box gets "result" or "error"."""
    box: dict = {}

    def run():
        try:
            box["result"] = fn()
        except Exception as exc:  # noqa: BLE001 - reported by the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def exit_within(srv, seconds: float) -> tuple[int | None, float]:
    """(exit code or None if still running after `seconds`, seconds waited)."""
    t0 = time.monotonic()
    try:
        code = srv.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - t0
    return code, time.monotonic() - t0


def assert_ready_503_then_served_through_the_delay(srv) -> None:
    """After SIGTERM with --shutdown-delay: readiness turns 503 within 1.5 s, while requests
    and liveness are still served; then berth exits 0."""
    srv.signal(signal.SIGTERM)
    deadline = time.monotonic() + 1.5
    while http_get(srv.port, "/-/ready")[0] != 503:
        assert time.monotonic() < deadline, "readiness still 200 after SIGTERM"
        time.sleep(0.05)
    assert http_get(srv.port, "/hello")[0] == 200  # still serving during the delay
    assert http_get(srv.port, "/-/live")[0] == 200
    assert srv.wait(timeout=15) == 0


def tls_hello(port: int, ctx, timeout: float = 10.0, host: bytes = b"h") -> bytes:
    """GET /hello over TLS with `ctx` on a fresh connection (`Connection: close`): every byte
    the server sends until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data

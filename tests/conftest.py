"""Shared fixtures: start the real berth server as a subprocess on 127.0.0.1 and talk to it.

Every server is started with an explicit `-b 127.0.0.1:PORT`, its output goes to files in the
test's tmp_path, and it is stopped by PID (SIGTERM, then SIGKILL after a bounded wait).
"""

from __future__ import annotations

import gc
import os
import signal as _signal
import socket
import subprocess
import sys
import time
import tracemalloc
import weakref
from pathlib import Path

import pytest
from loadgen import read_chunked

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "apps"


def _port_slice() -> range:
    """This test process's ports: below the kernel's ephemeral range, one slice per xdist worker.

    A port from `bind(0)` is an ephemeral one: between a test's stop and restart of a server on
    it, any client's connect() or another test's bind(0) may take it. Ports below the ephemeral
    range are never handed out by the kernel, and each worker process draws from its own slice.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return range(0)
    first, workers = 10000, 8
    if low - first < 2000:
        return range(0)
    size = (low - first) // workers
    name = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(name[2:]) % workers if name[2:].isdigit() else 0
    return range(first + index * size, first + (index + 1) * size)


_PORTS = _port_slice()
_next_port = [0]
# Ports browsers refuse to load (Chromium's and Firefox's restricted list: net::ERR_UNSAFE_PORT);
# the only one in the slices. tests/test_status_in_a_browser.py loads /status from a port here.
_BROWSER_UNSAFE = {10080}


def free_port() -> int:
    """A TCP and UDP port on 127.0.0.1 that nothing holds and no other test process hands out."""
    for _ in range(len(_PORTS)):
        port = _PORTS[_next_port[0] % len(_PORTS)]
        _next_port[0] += 1
        if port in _BROWSER_UNSAFE:
            continue
        try:
            with socket.socket() as t, socket.socket(type=socket.SOCK_DGRAM) as u:
                t.bind(("127.0.0.1", port))
                u.bind(("127.0.0.1", port))
        except OSError:
            continue
        return port
    with socket.socket() as s:  # no slice here (an unusual port range): the kernel's choice
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_STARTED: list = []  # weak references to every Server, in the order started (see the report hook)


class Server:
    """A running berth: `url`, `port`, `stdout()`, `stderr()`, `stop()`, `signal()`."""

    def __init__(self, args: list[str], tmp: Path, env: dict | None = None, port: int | None = None,
                 wait_ready: bool = True, bind: bool = True, pass_fds=(), cwd: Path | None = None,
                 new_session: bool = False):
        self.port = port or free_port()
        self.tmp = tmp
        self.out_path = tmp / f"stdout-{self.port}.log"
        self.err_path = tmp / f"stderr-{self.port}.log"
        full_env = dict(os.environ)
        full_env.update({"BERTH_IN_CONTAINER": "0", "PYTHONPATH": f"{APPS}{os.pathsep}{ROOT}"})
        full_env.pop("PORT", None)
        full_env.pop("WEB_CONCURRENCY", None)
        full_env.update(env or {})
        cmd = [sys.executable, "-m", "berth"]
        if bind:
            cmd += ["-b", f"127.0.0.1:{self.port}"]
        cmd += args
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=self._err, env=full_env,
                                     cwd=str(cwd or tmp), pass_fds=pass_fds,
                                     stdin=subprocess.DEVNULL,
                                     start_new_session=new_session)  # (its own group: killpg)
        self.pid = self.proc.pid
        self.url = f"http://127.0.0.1:{self.port}"
        _STARTED.append(weakref.ref(self))
        if wait_ready:
            try:
                self.wait_for_log("ready: ", timeout=20)
            except BaseException:  # (the fixture never gets it to stop: it would run on, orphaned)
                self.stop(timeout=5)
                raise

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 10.0, stream: str = "stderr") -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            content = self.stderr() if stream == "stderr" else self.stdout()
            if text in content:
                return content
            if self.proc.poll() is not None:
                content = self.stderr() if stream == "stderr" else self.stdout()
                if text in content:
                    return content
                raise AssertionError(
                    f"berth exited ({self.proc.returncode}) before logging {text!r}:\n"
                    f"{self.stderr()}")
            time.sleep(0.01)
        raise AssertionError(f"no {text!r} in {stream} after {timeout}s:\n{self.stderr()}")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, sig: int = _signal.SIGTERM, timeout: float = 15.0) -> int | None:
        try:
            if self.proc.poll() is None:
                os.kill(self.pid, sig)
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    os.kill(self.pid, _signal.SIGKILL)
                    self.proc.wait(timeout=5)
        finally:
            self._out.close()
            self._err.close()
        return self.proc.returncode


_FIRST_OF_TEST = pytest.StashKey[int]()
TAIL_LINES = 40
TAIL_BYTES = 64 << 10


def pytest_runtest_setup(item) -> None:
    item.stash[_FIRST_OF_TEST] = len(_STARTED)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report ends with the last lines of the stderr of each berth it used
    (started by the test or its fixtures, or handed to it by a wider fixture), and whether it
    was still running: a server that died under a module's tests says why."""
    report = (yield).get_result()
    if report.when != "call" or not report.failed:
        return
    for srv in _servers_of(item):
        code = srv.proc.poll()
        try:
            with open(srv.err_path, "rb") as err:
                err.seek(max(0, err.seek(0, os.SEEK_END) - TAIL_BYTES))
                lines = err.read().decode(errors="replace").splitlines()[-TAIL_LINES:]
        except OSError:
            continue
        state = "running" if code is None else f"exited {code}"
        report.sections.append((f"berth pid {srv.pid}, port {srv.port} ({state}): stderr",
                                "\n".join(lines)))


def _servers_of(item) -> list[Server]:
    found = [ref() for ref in _STARTED[item.stash.get(_FIRST_OF_TEST, len(_STARTED)):]]
    for value in getattr(item, "funcargs", {}).values():
        values = value.values() if isinstance(value, dict) else (
            value if isinstance(value, (list, tuple)) else (value,))
        found += [v for v in values if isinstance(v, Server)]
    return list({id(s): s for s in found if s is not None}.values())


@pytest.fixture(scope="module", params=["wsgi", "asgi"])
def worker_kind(request) -> str:
    """The HTTP conformance tests run once per worker kind: "wsgi" (-k gthread, proto_app)
    and "asgi" (-k asgi, its twin proto_asgi); `proto_helpers.proto_args(kind)` starts it.
    Module-scoped, so a module's servers start once per kind."""
    return request.param


def pytest_collection_modifyitems(items) -> None:
    """On the "asgi" run of a test: `@pytest.mark.wsgi_only(reason)` skips it,
    `@pytest.mark.asgi_xfail(reason)` expects it to fail (strict: a pass is an error)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is None or callspec.params.get("worker_kind") != "asgi":
            continue
        for name, add in (("wsgi_only", pytest.mark.skip),
                          ("asgi_xfail", lambda reason: pytest.mark.xfail(strict=True,
                                                                          reason=reason))):
            mark = item.get_closest_marker(name)
            if mark is not None:
                item.add_marker(add(reason=mark.args[0]))


@pytest.fixture
def berth(tmp_path):
    """Factory: `srv = berth(["-w", "1", "hello:app"])`; every server is stopped at teardown."""
    servers: list[Server] = []

    def start(args, **kw) -> Server:
        srv = Server(list(args), tmp_path, **kw)
        servers.append(srv)
        return srv

    yield start
    for srv in servers:  # a quick stop: what a test left running need not be drained
        srv.stop(_signal.SIGQUIT)


class BufferedSocket(socket.socket):
    """A client socket that keeps the bytes read past one response (`read_response`)."""

    _berth_buf = b""


def connect(port: int, timeout: float = 10.0) -> BufferedSocket:
    sock = BufferedSocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


def recv_until_closed(sock: socket.socket, limit: int = 64 * 1024 * 1024) -> bytes:
    chunks = []
    total = 0
    while total < limit:
        data = sock.recv(65536)
        if not data:
            break
        chunks.append(data)
        total += len(data)
    return b"".join(chunks)


def read_response(sock: socket.socket, head_only: bool = False) -> tuple[int, dict, bytes]:
    """Read one HTTP/1.x response from a blocking socket: (status, headers, body).

    Handles Content-Length, chunked and close-delimited bodies; leaves extra bytes of a
    following pipelined response in `sock._berth_buf`.
    """
    buf = getattr(sock, "_berth_buf", b"")
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before response head: {buf!r}")
        buf += data
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    body = b""
    if head_only or status in (204, 304) or 100 <= status < 200:
        pass
    elif "content-length" in headers:
        n = int(headers["content-length"])
        while len(buf) < n:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed inside body")
            buf += data
        body, buf = buf[:n], buf[n:]
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        out, buf = read_chunked(buf, lambda: sock.recv(65536))
        body = b"".join(out)
        headers["_chunks"] = str(len(out))
    else:
        body = buf + recv_until_closed(sock)
        buf = b""
    sock._berth_buf = buf
    return status, headers, body


def http_get(port: int, path: str = "/", headers: dict | None = None, timeout: float = 10.0):
    """One request on a fresh connection with `Connection: close`: (status, headers, body)."""
    hdrs = {"Host": "127.0.0.1", "Connection": "close"}
    hdrs.update(headers or {})
    raw = f"GET {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    with connect(port, timeout) as sock:
        sock.sendall(raw.encode("latin-1"))
        return read_response(sock)


def allocated_per_item(make, n: int = 200) -> float:
    """Bytes of Python heap that `make()` allocates and keeps, per call, averaged over n calls
    (tracemalloc counts allocations: deterministic, unlike RSS on a noisy machine)."""
    keep = []
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(n):
            keep.append(make())
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / n

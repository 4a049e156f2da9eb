"""A small, bounded HTTP/1.1 load generator for berth's supervision tests (stdlib only).

    gen = LoadGen(port, path="/", connections=4).start()
    ...                                   # kill a worker, send a signal, ...
    gen.stop()
    assert not gen.failures(), gen.summary()

Each connection is a thread that sends GET requests one after another on a persistent
connection (127.0.0.1 only), reconnecting when the server closes it, and records per request:
start and end time (time.monotonic()), status or error, whether it was retried, and the worker
pid that answered (the app's X-Pid header) or, for a failure on a reused connection, the pid
that answered the previous request on that connection.

Retry rule (RFC 9112 §9.3.1): a client may retry an idempotent request once when a *reused*
keep-alive connection closes (EOF, reset, broken pipe) before any byte of the response arrived:
the server may have closed the idle connection just as the request was sent. LoadGen does that,
once, on a fresh connection, and counts it (`retries()`). Everything else is a failure: a
timeout, a non-200 status, a close after part of the response, any error on a fresh connection
(connection refused included), a failed retry.

Everything is bounded: socket timeouts, a cap on the total number of requests and on the run
time, and `stop()` joins the threads with a timeout.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

__all__ = ["LoadGen", "Result", "read_chunked"]


def read_chunked(buf: bytes, recv) -> tuple[list[bytes], bytes]:
    """A chunked body (no trailers) from `buf` and then `recv()`: (its chunks, the bytes read
    past it). A connection closed inside it raises ConnectionError."""
    out = []
    while True:
        while b"\r\n" not in buf:
            data = recv()
            if not data:  # (a bare `buf += recv()` would spin for ever on a closed connection)
                raise ConnectionError("closed inside a chunk size")
            buf += data
        size_line, _, buf = buf.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        while len(buf) < size + 2:
            data = recv()
            if not data:
                raise ConnectionError("closed inside a chunk")
            buf += data
        if size == 0:
            return out, buf[2:]
        out.append(buf[:size])
        buf = buf[size + 2:]


@dataclass
class Result:
    start: float  # time.monotonic() before the first attempt
    end: float  # time.monotonic() when the response was complete or the last attempt failed
    status: int | None  # HTTP status, None when no complete response head arrived
    error: str | None  # None for a success (status 200)
    retried: bool  # the request was sent again on a fresh connection (see the module doc)
    fresh: bool  # the last attempt used a connection opened for it
    pid: int | None  # X-Pid of the response; for a failure, the connection's previous X-Pid
    conn: int  # index of the connection thread

    @property
    def ok(self) -> bool:
        return self.error is None


class _Retryable(Exception):
    """The connection closed before any byte of the response arrived."""


class _Conn:
    def __init__(self, port: int, timeout: float):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.uses = 0
        self.pid: int | None = None  # the worker that answered the last response

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _recv(self) -> bytes:
        return self.sock.recv(65536)

    def exchange(self, request: bytes) -> tuple[int, dict[str, str], bytes, bool]:
        """Send one request and read its response: (status, headers, body, must_close).

        Raises _Retryable if the connection closed before any byte of the response, any other
        exception otherwise."""
        got_any = False
        try:
            self.sock.sendall(request)
            buf = self.buf
            while b"\r\n\r\n" not in buf:
                data = self._recv()
                if not data:
                    if not got_any and not buf:
                        raise _Retryable("connection closed before the response (EOF)")
                    raise ConnectionError(f"closed inside the response head: {buf[:200]!r}")
                got_any = True
                buf += data
        except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as exc:
            if not got_any and not self.buf:
                raise _Retryable(f"connection closed before the response ({exc!r})") from exc
            raise
        head, _, buf = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        version, status = parts[0], int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        must_close = (version == "HTTP/1.0"
                      or "close" in headers.get("connection", "").lower())
        if status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "content-length" in headers:
            n = int(headers["content-length"])
            while len(buf) < n:
                data = self._recv()
                if not data:
                    raise ConnectionError("closed inside the response body")
                buf += data
            body, buf = buf[:n], buf[n:]
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            out, buf = read_chunked(buf, self._recv)
            body = b"".join(out)
        else:  # delimited by the close of the connection
            chunks = [buf]
            while True:
                data = self._recv()
                if not data:
                    break
                chunks.append(data)
            body, buf = b"".join(chunks), b""
            must_close = True
        self.buf = buf
        self.uses += 1
        return status, headers, body, must_close


class LoadGen:
    def __init__(self, port: int, path: str = "/", connections: int = 4, keepalive: bool = True,
                 timeout: float = 10.0, max_requests: int = 100_000, max_seconds: float = 60.0,
                 pause: float = 0.0):
        self.port = port
        self.path = path
        self.connections = connections
        self.keepalive = keepalive
        self.timeout = timeout
        self.max_requests = max_requests
        self.max_seconds = max_seconds
        self.pause = pause
        hdrs = "Host: 127.0.0.1\r\n" + ("" if keepalive else "Connection: close\r\n")
        self.request = f"GET {path} HTTP/1.1\r\n{hdrs}\r\n".encode("latin-1")
        self.results: list[Result] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sent = 0
        self.started = 0.0
        self.stopped = 0.0

    # -- running ----------------------------------------------------------------------------

    def start(self) -> LoadGen:
        self.started = time.monotonic()
        for i in range(self.connections):
            t = threading.Thread(target=self._run, args=(i,), name=f"loadgen-{i}", daemon=True)
            self._threads.append(t)
            t.start()
        return self

    def stop(self, timeout: float | None = None) -> LoadGen:
        """Stop sending and join the threads (each within the socket timeout + 2 s)."""
        self._stop.set()
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout + 2)
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.stopped = time.monotonic()
        return self

    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def __enter__(self) -> LoadGen:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _take_ticket(self) -> bool:
        with self._lock:
            if self._sent >= self.max_requests:
                return False
            self._sent += 1
            return True

    def _run(self, index: int) -> None:
        conn: _Conn | None = None
        end_by = self.started + self.max_seconds
        try:
            while not self._stop.is_set() and time.monotonic() < end_by:
                if not self._take_ticket():
                    break
                conn, ok = self._one(index, conn)
                if not ok:
                    self._stop.wait(0.01)  # after a failure: no hot loop on a refused port
                elif self.pause:
                    self._stop.wait(self.pause)
        finally:
            if conn is not None:
                conn.close()

    def _one(self, index: int, conn: _Conn | None) -> tuple[_Conn | None, bool]:
        """One request (and its retry, if allowed): (connection to reuse or None, ok)."""
        start = time.monotonic()
        retried = False
        prev_pid = conn.pid if conn is not None else None
        while True:
            fresh = conn is None
            try:
                if conn is None:
                    conn = _Conn(self.port, self.timeout)
                status, headers, _body, must_close = conn.exchange(self.request)
            except _Retryable as exc:
                conn.close()
                conn = None
                if not fresh and not retried:
                    retried = True
                    continue
                self._record(start, None, f"{exc} (fresh={fresh}, retried={retried})",
                             retried, fresh, prev_pid, index)
                return None, False
            except Exception as exc:  # noqa: BLE001 - every other error is a failure
                if conn is not None:
                    conn.close()
                self._record(start, None, repr(exc), retried, fresh,
                             prev_pid if not fresh or retried else None, index)
                return None, False
            pid = None
            try:
                pid = int(headers.get("x-pid", ""))
            except ValueError:
                pass
            conn.pid = pid
            self._record(start, status, None if status == 200 else f"status {status}",
                         retried, fresh, pid, index)
            ok = status == 200
            if must_close or not self.keepalive:
                conn.close()
                return None, ok
            return conn, ok

    def _record(self, start, status, error, retried, fresh, pid, index) -> None:
        res = Result(start, time.monotonic(), status, error, retried, fresh, pid, index)
        with self._lock:
            self.results.append(res)

    # -- results ----------------------------------------------------------------------------

    def snapshot(self) -> list[Result]:
        with self._lock:
            return list(self.results)

    @staticmethod
    def _within(r: Result, since: float | None, until: float | None) -> bool:
        return (since is None or r.start >= since) and (until is None or r.start < until)

    def failures(self, since: float | None = None, until: float | None = None) -> list[Result]:
        """Failed requests whose start time is in [since, until)."""
        return [r for r in self.snapshot() if not r.ok and self._within(r, since, until)]

    def successes(self, since: float | None = None, until: float | None = None) -> list[Result]:
        return [r for r in self.snapshot() if r.ok and self._within(r, since, until)]

    def total(self) -> int:
        with self._lock:
            return len(self.results)

    def retries(self) -> int:
        return sum(1 for r in self.snapshot() if r.retried)

    def pids(self, since: float | None = None) -> set[int]:
        """Worker pids that answered successfully (from `since`)."""
        return {r.pid for r in self.successes(since=since) if r.pid is not None}

    def wait_for_total(self, n: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.total() >= n:
                return True
            time.sleep(0.01)
        return self.total() >= n

    def summary(self, limit: int = 10) -> str:
        res = self.snapshot()
        fails = [r for r in res if not r.ok]
        lines = [f"{len(res)} requests: {len(res) - len(fails)} ok, {len(fails)} failed, "
                 f"{sum(1 for r in res if r.retried)} retried (RFC 9112 9.3.1)"]
        t0 = self.started
        for r in fails[:limit]:
            lines.append(f"  conn {r.conn} start +{r.start - t0:.3f}s end +{r.end - t0:.3f}s "
                         f"pid {r.pid} fresh={r.fresh} retried={r.retried}: {r.error}")
        if len(fails) > limit:
            lines.append(f"  ... and {len(fails) - limit} more")
        return "\n".join(lines)

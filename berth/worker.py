"""A worker process: one loop thread that owns every socket, and the app threads.

The loop thread accepts connections, reads and parses requests (`http.parser`), buffers whole
requests, and only then hands them to the app. With `--threads 1` it runs the app itself
(inline: no hand-off, the fastest path); with more threads it queues requests to a pool. A
client that trickles a request costs a few KiB of buffer, never a thread.

Writing: whoever runs the app sends directly while the socket accepts bytes. What the socket
does not take goes to the connection's write-behind queue, which the loop drains as the socket
becomes writable. An app thread that has more than HIGH_WATER bytes queued waits until the loop
has drained it below LOW_WATER, so a slow reader holds at most that much memory per connection.
On the loop thread (inline) there is no waiting: a response that outgrows the queue is paused
(the loop stops pulling from the app's iterator) and resumed when the client has read it.
Real files (`wsgi.file_wrapper`) go out with `os.sendfile`, their unsent rest queued as
(fd, offset, count): no bytes held at all.

Threads touch a connection under its lock: `active` (the request being answered), `pending`
(complete requests waiting their turn, for pipelining), the write-behind queue and its flags.
Only the loop thread registers, re-arms or closes a socket; app threads ask it to through
`post()`, which costs one eventfd write (skipped while a wake-up is already pending).
"""

from __future__ import annotations

import collections
import ctypes
import faulthandler
import io
import os
import resource
import select
import signal
import socket
import sys
import threading
import time
import traceback
from queue import SimpleQueue

from berth.hooks import RequestView, ResponseView, WorkerView, call_hook, get_hook
from berth.http.parser import HttpError, Request, RequestParser
from berth.http.response import (
    CONTINUE,
    HAS_DATE,
    HAS_SERVER,
    HOP_BY_HOP,
    HOP_BY_HOP_SEEN,
    LAST_CHUNK,
    BadResponseHeaders,
    DateCache,
    error_response,
    scan_headers,
    status_line,
)
from berth.logs import setup_error_log
from berth.scoreboard import BOOTING, BUSY, DRAINING, IDLE, RETIRING, Scoreboard, Slot
from berth.wsgi import FileWrapper, StreamInput, split_target

HIGH_WATER = 256 * 1024  # write-behind bytes per connection before the app thread waits
LOW_WATER = 64 * 1024
MAX_PIPELINE = 16  # complete requests queued on one connection before reading pauses
RECV_SIZE = 64 * 1024
ACCEPT_BATCH = 4
# A worker whose queue is full stops accepting so that idle workers take new connections, but
# never for longer than this: when every worker is saturated, a connection must not starve in
# the kernel queue while accepted ones are served again and again.
ACCEPT_PAUSE_MAX = 0.1
TICK = 0.5  # seconds between timer sweeps (Date header, deadlines, parent check)
SMALL_JOIN = 64 * 1024  # below this, head and body are joined into one buffer for send()

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLL_CLOSED = select.EPOLLHUP | select.EPOLLERR

PAUSED = object()  # respond(): the loop goes on with this response when the client reads
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
EXIT_APP_LOAD_ERROR = 4  # as Gunicorn: the app could not be loaded; the master stops

METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}


class ClientDisconnected(Exception):
    """The client went away; nothing more can be sent on this connection."""


class FileSegment:
    """Part of a real file still to be sent with os.sendfile (the fd is our own dup)."""

    __slots__ = ("fd", "offset", "remaining")

    def __init__(self, fd: int, offset: int, remaining: int):
        self.fd = fd
        self.offset = offset
        self.remaining = remaining


class Connection:
    __slots__ = (
        "response",
        "thread",
        "active",
        "closed",
        "closing",
        "cond",
        "dead",
        "environ",
        "eof",
        "events",
        "fd",
        "head_started",
        "last_active",
        "lingering",
        "lock",
        "out",
        "out_size",
        "parser",
        "paused_response",
        "pending",
        "reading",
        "sock",
        "want_write",
    )

    def __init__(self, sock: socket.socket, environ: dict, now: float):
        self.sock = sock
        self.fd = sock.fileno()
        self.environ = environ
        self.lock = threading.Lock()
        self.cond: threading.Condition | None = None
        self.pending: collections.deque = collections.deque()
        self.active: Request | HttpError | None = None
        self.out: collections.deque = collections.deque()
        self.out_size = 0
        self.want_write = False
        self.reading = True
        self.events = EPOLLIN
        self.closing = False  # close once the current response is out
        self.dead = False  # the peer is gone: stop writing
        self.eof = False  # the peer closed its sending side
        self.closed = False
        self.last_active = now
        self.head_started = now  # a new connection must send a head within --header-timeout
        self.lingering = 0.0
        self.paused_response: tuple | None = None  # (Response, iterable, iterator), inline
        self.response: Response | None = None  # on an app thread: for the deadline's 504
        self.thread = 0  # ident of the app thread answering, for the deadline's stack


class Response:
    """One response: `start_response`, the `write()` callable, framing and sending."""

    # Defaults live on the class (see Request): per request only five fields are set.
    status: str | None = None
    headers: list | None = None
    head_sent = False
    chunked = False
    remaining: int | None = None  # body bytes still allowed by Content-Length
    sent = 0
    started = 0.0  # monotonic time the app was called (when the access log needs it)
    environ: dict | None = None
    view = None  # what pre_request/post_request hooks receive as `req`

    def __init__(self, worker: Worker, conn: Connection, req: Request, inline: bool):
        self.worker = worker
        self.conn = conn
        self.req = req
        self.inline = inline
        self.keep_alive = req.keep_alive and worker.keep_alive
        self.no_body = req.method == b"HEAD"

    def start_response(self, status: str, headers: list, exc_info=None):
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response() called twice without exc_info")
        if type(status) is not str:
            raise TypeError(f"status must be str, not {type(status).__name__}")
        if type(headers) is not list:
            raise TypeError(f"headers must be a list, not {type(headers).__name__}")
        self.status = status
        self.headers = headers
        return self.write_callable

    def make_head(self, known_length: int | None) -> bytes:
        """The response head; decides the framing (length, chunked, or close-delimited).

        Apps send the same status and headers again and again: a validated head is cached
        (without Date/Server), keyed by everything that shaped it.
        """
        status = self.status
        if status is None:
            raise AssertionError("the app returned without calling start_response()")
        try:
            key = (self.req.version, self.keep_alive, self.no_body, known_length, status,
                   tuple(self.headers))
            cached = _head_cache.get(key)
        except TypeError:  # unhashable header items (lists): fine, just not cached
            key = cached = None
        if cached is None:
            cached = self._frame(known_length)
            if key is not None:
                if len(_head_cache) >= 1024:
                    _head_cache.clear()
                _head_cache[key] = cached
        prefix, self.remaining, self.chunked, self.no_body, self.keep_alive, own = cached
        self.head_sent = True
        if own:
            return prefix + self.worker.date.suffixes[own] + b"\r\n"
        return prefix + self.worker.date.suffix + b"\r\n"

    def _frame(self, known_length: int | None) -> tuple:
        status = self.status
        block, length, flags = scan_headers(self.headers)
        keep_alive = self.keep_alive
        if flags & HOP_BY_HOP_SEEN:
            block, keep_alive = _drop_hop_by_hop(self.headers, keep_alive)
        version = self.req.version
        code = status[:3]
        extra = ""
        remaining = None
        chunked = False
        no_body = self.no_body
        if code[0] == "1" or code == "204" or code == "304":
            no_body = True
            remaining = 0
        elif length is not None:
            if not (length.isascii() and length.isdigit()):
                raise BadResponseHeaders(f"invalid Content-Length {length!r}")
            remaining = int(length)
        elif known_length is not None:
            extra = f"Content-Length: {known_length}\r\n"
            remaining = known_length
        elif version == "1.1":
            extra = "Transfer-Encoding: chunked\r\n"
            chunked = True
        else:
            keep_alive = False  # HTTP/1.0 without a length: the close ends the body
        if keep_alive:
            if version == "1.0":
                extra += "Connection: keep-alive\r\n"
        elif version == "1.1":
            extra += "Connection: close\r\n"
        prefix = status_line(version, status) + (block + extra).encode("latin-1")
        return prefix, remaining, chunked, no_body, keep_alive, flags & (HAS_DATE | HAS_SERVER)

    def write_callable(self, data: bytes) -> None:
        """The WSGI `write()` callable. On the loop thread (inline) the app cannot be paused
        in the middle of its call, so above the write-behind bound the loop waits for the
        client here, as Gunicorn's sync worker would: memory stays bounded."""
        self.write(data)
        if self.inline and self.conn.out_size > HIGH_WATER:
            self.worker.wait_for_reader(self.conn)

    def write(self, data: bytes) -> None:
        """Send part of the body (the WSGI `write()` callable, and each item of the iterable)."""
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"response body must be bytes, not {type(data).__name__}")
            data = bytes(data)
        head = b"" if self.head_sent else self.make_head(None)
        if self.no_body or not data:
            if head:
                self.worker.send(self.conn, head, self.inline)
            return
        if self.remaining is not None:
            if len(data) > self.remaining:
                data = data[:self.remaining]
            self.remaining -= len(data)
        self.sent += len(data)
        if self.chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        if head:
            if len(data) < SMALL_JOIN:
                self.worker.send(self.conn, head + data, self.inline)
            else:
                self.worker.send(self.conn, head, self.inline)
                self.worker.send(self.conn, data, self.inline)
        else:
            self.worker.send(self.conn, data, self.inline)

    def end(self) -> bool:
        """Finish the body; return whether the connection may be kept alive."""
        if not self.head_sent:
            self.worker.send(self.conn, self.make_head(0), self.inline)
        elif self.chunked and not self.no_body:
            self.worker.send(self.conn, LAST_CHUNK, self.inline)
        if self.remaining and not self.no_body:
            return False  # less than the promised Content-Length: the client must not wait
        return self.keep_alive


_head_cache: dict[tuple, tuple] = {}


def _drop_hop_by_hop(headers: list, keep_alive: bool) -> tuple[str, bool]:
    """Apps must not send hop-by-hop headers (PEP 3333): honour `Connection: close`, drop the
    rest (berth frames the body itself)."""
    kept = []
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP:
            if lower == "connection" and "close" in value.lower():
                keep_alive = False
            continue
        kept.append((name, value))
    return scan_headers(kept)[0], keep_alive


class Worker:
    def __init__(self, cfg, listeners: list[socket.socket], app, log, access_log,
                 ready_fd: int | None, load_app=None, scoreboard: Scoreboard | None = None,
                 slot: int = 0, generation: int = 0, max_requests: int = 0,
                 view=None, server=None):
        self.cfg = cfg
        self.listeners = {s.fileno(): s for s in listeners}
        self.app = app
        self.load_app = load_app
        self.log = log
        self.access_log = access_log
        self.log_duration = access_log is not None and access_log.needs_duration
        self.ready_fd = ready_fd
        self.threads = cfg.threads
        self.inline = cfg.threads == 1
        self.keep_alive = cfg.keepalive > 0
        self.draining = False
        self.accepting = True
        self.paused_accepting = 0.0
        self.alive = True
        self.quick_exit = False
        self.conns: dict[int, Connection] = {}
        self.date = DateCache()
        self.inbox: collections.deque = collections.deque()
        self.wake_pending = False
        self.work: SimpleQueue = SimpleQueue()
        self.ppid = os.getppid()
        self.drain_deadline = 0.0
        self.scoreboard = scoreboard
        self.slot = Slot(generation=generation, state=BOOTING)
        self.slot_index = slot
        self.served = 0
        self.max_requests = max_requests or (1 << 62)
        self.timeout = cfg.timeout
        self.body_budget = cfg.body_buffer_size
        self.statm = -1
        self.view = view if view is not None else WorkerView(cfg, log, pid=os.getpid())
        self.server = server
        # probe paths answered by the loop itself: request target -> "ready" | "live"
        self.probes = {path.encode("latin-1"): kind
                       for kind, path in (("ready", cfg.ready_path), ("live", cfg.live_path))
                       if path} or None
        self.pre_request = get_hook(cfg, "pre_request")
        self.post_request = get_hook(cfg, "post_request")
        self.last_tick = self.max_tick_gap = 0.0
        self.now = time.monotonic()  # the loop's clock, read once per wake-up
        self.base_environ = {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": cfg.threads > 1,
            "wsgi.multiprocess": cfg.workers > 1,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
            "wsgi.input_terminated": True,
            "SCRIPT_NAME": os.environ.get("SCRIPT_NAME", ""),
            "SERVER_SOFTWARE": "berth",
        }
        self.script_name = self.base_environ["SCRIPT_NAME"]
        self.targets: dict[bytes, tuple[str, str, str]] = {}  # request target -> environ parts

    # -- process life -----------------------------------------------------------------------

    def run(self) -> None:
        """The worker's main: never returns (the process exits)."""
        code = 0
        try:
            self._setup_process()
            self.beat(BOOTING)  # booting (importing the app) does not count against --timeout
            if self.app is None:
                try:
                    self.app = self.load_app()
                except BaseException:  # noqa: BLE001 - any failure to load is fatal
                    sys.stderr.write(traceback.format_exc())
                    sys.stderr.flush()
                    self.log.error("worker %d: the app failed to load; stopping", os.getpid())
                    os._exit(EXIT_APP_LOAD_ERROR)
            self.view.app = self.app
            self.view.booted = True
            call_hook(self.cfg, "post_worker_init", self.view)
            self._setup_loop()
            self.slot.uss = private_memory()
            self.beat(IDLE)
            self.last_tick = time.monotonic()
            if self.ready_fd is not None:
                os.write(self.ready_fd, os.getpid().to_bytes(4, "little"))
            self.loop()
        except BaseException:  # noqa: BLE001
            self.log.error("worker %d crashed:\n%s", os.getpid(), traceback.format_exc())
            code = 1
        finally:
            self.log.debug("worker %d: longest gap between heartbeats %.3f s (every %.1f s "
                           "when idle)", os.getpid(), self.max_tick_gap, TICK)
            self.view.alive = False
            call_hook(self.cfg, "worker_exit", self.server, self.view)
            if self.access_log is not None:
                self.access_log.close()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(code)

    def _setup_process(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                    signal.SIGUSR1, signal.SIGCHLD, signal.SIGWINCH, signal.SIGTTIN,
                    signal.SIGTTOU):
            signal.signal(sig, signal.SIG_DFL)
        try:  # die with the master (Linux), checked by getppid() as well
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() != self.ppid:
            os._exit(0)
        self._sig_r, self._sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._sig_w, warn_on_full_buffer=False)
        self._signals: collections.deque = collections.deque()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGWINCH, signal.SIG_IGN)
        # A silent worker: the master sends SIGUSR2 (every thread's stack to stderr, written
        # by faulthandler from C, so it works while Python code is stuck), then SIGABRT (the
        # worker_abort path, if the main thread still runs Python), then SIGKILL.
        faulthandler.register(signal.SIGUSR2, file=sys.stderr, all_threads=True, chain=False)
        signal.signal(signal.SIGABRT, self._on_abort)
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file on overlay disk
        try:
            self.statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.statm = -1

    def _on_signal(self, signum, frame) -> None:
        self._signals.append(signum)

    def _on_abort(self, signum, frame) -> None:
        self.log.error("worker %d aborted: its loop was silent past --timeout", os.getpid())
        call_hook(self.cfg, "worker_abort", self.view)
        if self.access_log is not None:
            self.access_log.close(timeout=0.2)
        os._exit(1)

    def beat(self, state: int | None = None) -> None:
        """Write this worker's scoreboard slot: the heartbeat and what the master reads."""
        if self.scoreboard is None:
            return
        slot = self.slot
        if state is not None:
            slot.state = state
        slot.pid = os.getpid()
        slot.heartbeat = time.monotonic()
        slot.served = self.served
        if self.statm >= 0:
            try:
                slot.rss = int(os.pread(self.statm, 64, 0).split()[1]) * PAGE_SIZE
            except (OSError, IndexError, ValueError):
                pass
        self.scoreboard.write(self.slot_index, slot)

    def _setup_loop(self) -> None:
        self.ep = select.epoll()
        for fd, lsock in self.listeners.items():
            lsock.setblocking(False)
            self.ep.register(fd, EPOLLIN | select.EPOLLEXCLUSIVE)
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.ep.register(self.wake_fd, EPOLLIN)
        self.ep.register(self._sig_r, EPOLLIN)
        for i in range(self.threads):
            threading.Thread(target=self._app_thread, name=f"berth-app-{i}", daemon=True).start()

    # -- the loop ---------------------------------------------------------------------------

    def loop(self) -> None:
        poll = self.ep.poll
        conns = self.conns
        listeners = self.listeners
        wake_fd = self.wake_fd
        sig_fd = self._sig_r
        on_readable = self.on_readable
        monotonic = time.monotonic
        next_tick = monotonic() + TICK
        while self.alive:
            events = poll(TICK)
            self.now = now = monotonic()
            for fd, ev in events:
                conn = conns.get(fd)
                if conn is not None:
                    try:
                        if ev & EPOLLIN:
                            on_readable(conn, now)
                        elif ev & EPOLL_CLOSED:
                            self.on_hangup(conn)
                        if ev & EPOLLOUT and not conn.closed:
                            self.on_writable(conn)
                    except Exception:
                        self.log.exception("internal error on a connection; closing it")
                        self.mark_dead(conn)
                        if conn.active is None:
                            self.close(conn)
                elif fd in listeners:
                    self.accept(listeners[fd], now)
                elif fd == wake_fd:
                    self.on_wake()
                elif fd == sig_fd:
                    self.on_signals()
            if not self.accepting and (not self.work.qsize()
                                       or now - self.paused_accepting > ACCEPT_PAUSE_MAX):
                self.set_accepting(True)
            if now >= next_tick:
                next_tick = now + TICK
                self.tick(now)

    def accept(self, lsock: socket.socket, now: float) -> bool:
        """Accept a few connections; return whether more may be waiting."""
        # A few per wake-up: a burst of connections then spreads over the workers instead of
        # all landing in the one that woke first.
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return False
            except OSError as exc:  # EMFILE and friends: log, keep serving
                self.log.warning("accept failed: %s", exc)
                return False
            sock.setblocking(False)
            family = sock.family
            environ = dict(self.base_environ)
            if family == socket.AF_INET or family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                local = sock.getsockname()
                environ["SERVER_NAME"] = local[0]
                environ["SERVER_PORT"] = str(local[1])
                environ["REMOTE_ADDR"] = addr[0]
                environ["REMOTE_PORT"] = str(addr[1])
            else:
                environ["SERVER_NAME"] = "localhost"
                environ["SERVER_PORT"] = "0"
                environ["REMOTE_ADDR"] = "127.0.0.1"
                environ["REMOTE_PORT"] = "0"
            conn = Connection(sock, environ, now)
            conn.parser = self._make_parser(conn)
            self.conns[conn.fd] = conn
            self.ep.register(conn.fd, EPOLLIN)
        return True

    def _make_parser(self, conn: Connection) -> RequestParser:
        cfg = self.cfg

        def stream_factory(req: Request) -> StreamInput:
            return StreamInput(req.body, cfg.body_buffer_size, lambda: self.post(conn))

        return RequestParser.for_config(cfg, stream_factory)

    def on_readable(self, conn: Connection, now: float) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if conn.lingering:
            if not data:
                self.close(conn)
            return
        if not data:
            self.on_eof(conn)
            return
        conn.last_active = now
        parser = conn.parser
        try:
            parser.feed(data)
        except HttpError as err:
            self.reject(conn, err)
            return
        if parser.in_head:
            if not conn.head_started:
                conn.head_started = now
        else:
            conn.head_started = 0.0
            current = parser.current
            if current is not None:
                if current.expect_continue:
                    self.maybe_continue(conn)
                if current.streaming and current.body_stream.paused:
                    self.set_reading(conn, False)
        ready = parser.ready
        if ready:
            with conn.lock:
                if conn.closing or conn.dead:  # its last response ends the connection
                    ready.clear()
                    self.set_reading(conn, False)
                    return
                pending = conn.pending
                if conn.active is None and not pending and len(ready) == 1:
                    conn.active = req = ready.pop()  # the common case: one request, idle
                else:
                    pending.extend(ready)
                    ready.clear()
                    if conn.active is not None:
                        if self.pipeline_full(pending):
                            self.set_reading(conn, False)
                        return
                    conn.active = req = pending.popleft()
            self.start(conn, req)

    def pipeline_full(self, pending: collections.deque) -> bool:
        """Stop reading a connection whose waiting requests hold too much: at most
        MAX_PIPELINE requests and one --body-buffer-size of their bodies."""
        if len(pending) >= MAX_PIPELINE:
            return True
        return sum(len(r.body) for r in pending if type(r) is Request) > self.body_budget

    def start(self, conn: Connection, req: Request) -> None:
        """Answer `req` (already `conn.active`): inline, or on an app thread. A request whose
        body is still streaming in always goes to a thread: the loop must keep reading it."""
        if self.inline and (type(req) is HttpError or not req.streaming) or (
                self.probes is not None and type(req) is Request and req.url in self.probes):
            self.serve(conn, req, True)  # a probe never waits behind the app threads
        else:
            self.to_thread(conn, req)
            if self.accepting and self.work.qsize() >= self.threads:
                self.set_accepting(False)

    def to_thread(self, conn: Connection, req) -> None:
        """Queue `req` for an app thread; from now on the loop's tick keeps its deadline."""
        req.dispatched = self.now
        self.work.put((self.serve, conn, req, False))
        if self.accepting and self.work.qsize() >= self.threads:
            self.set_accepting(False)

    def set_accepting(self, accepting: bool) -> None:
        """Take new connections only while this worker has app threads to spare, so that the
        others take them (the kernel queue holds them meanwhile): connections spread by
        capacity, not by which worker woke first."""
        if accepting == self.accepting or self.draining:
            return
        self.accepting = accepting
        self.paused_accepting = self.now
        for fd in self.listeners:
            if accepting:
                self.ep.register(fd, EPOLLIN | select.EPOLLEXCLUSIVE)
            else:
                self.ep.unregister(fd)

    def maybe_continue(self, conn: Connection) -> None:
        """Send `100 Continue` for the request whose body is awaited, once it is next in line."""
        current = conn.parser.current
        if current is None or not current.expect_continue:
            return
        with conn.lock:
            if conn.active is not None and conn.active is not current or conn.pending:
                return  # an earlier response is still going out; asked again when it ends
            current.expect_continue = False
        try:
            self.send(conn, CONTINUE, True)
        except ClientDisconnected:
            pass

    def reject(self, conn: Connection, err: HttpError) -> None:
        """A request berth refuses: answer it once earlier responses are out, then close."""
        self.log.debug("bad request from %s: %s", conn.environ.get("REMOTE_ADDR"), err)
        self.set_reading(conn, False)
        current = conn.parser.current
        if current is not None and current.streaming:  # its reader must not wait for more
            current.body_stream.fail(ClientDisconnected(f"request refused: {err}"))
        with conn.lock:
            conn.pending.extend(conn.parser.ready)
            conn.parser.ready.clear()
            conn.pending.append(err)
            if conn.active is not None:
                return
            conn.active = req = conn.pending.popleft()
        self.start(conn, req)

    def on_eof(self, conn: Connection) -> None:
        conn.eof = True
        self.set_reading(conn, False)
        current = conn.parser.current
        if current is not None and current.streaming:
            current.body_stream.fail(ClientDisconnected("client closed before the body ended"))
        with conn.lock:
            idle = conn.active is None and not conn.pending
            if idle and conn.out:  # a half-close: the response still goes out, then close
                conn.closing = True
                return
        if idle:
            if conn.parser.in_head:
                self.log.debug("client closed with a partial request")
            self.close(conn)

    def on_hangup(self, conn: Connection) -> None:
        self.mark_dead(conn)
        if conn.paused_response is not None:
            self.resume_response(conn)  # fails at once: closes the iterable, logs, closes
            return
        with conn.lock:
            idle = conn.active is None
        if idle:
            self.close(conn)
        elif conn.events:
            conn.reading = False
            conn.want_write = False
            self.update_events(conn)

    def mark_dead(self, conn: Connection) -> None:
        with conn.lock:
            conn.dead = True
            if conn.cond is not None:
                conn.cond.notify_all()
        current = conn.parser.current
        if current is not None and current.streaming:
            current.body_stream.fail(ClientDisconnected("client went away"))

    # -- writing ----------------------------------------------------------------------------

    def send(self, conn: Connection, data: bytes, inline: bool) -> None:
        """Send now what the socket takes; queue the rest for the loop (bounded, see module)."""
        with conn.lock:
            if conn.dead:
                raise ClientDisconnected()
            if not conn.out:
                try:
                    n = conn.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError:
                    conn.dead = True
                    raise ClientDisconnected() from None
                if n == len(data):
                    return
                data = memoryview(data)[n:]
            conn.out.append(data)
            conn.out_size += len(data)
            self._want_write(conn, inline)
            if inline:
                return
            while conn.out_size > HIGH_WATER and not conn.dead:
                if conn.cond is None:
                    conn.cond = threading.Condition(conn.lock)
                conn.cond.wait()
            if conn.dead:
                raise ClientDisconnected()

    def sendfile(self, conn: Connection, fd: int, offset: int, count: int, inline: bool) -> None:
        with conn.lock:
            if conn.dead:
                raise ClientDisconnected()
            if not conn.out:
                sock_fd = conn.sock.fileno()
                while count > 0:
                    try:
                        n = os.sendfile(sock_fd, fd, offset, min(count, 1 << 30))
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        conn.dead = True
                        raise ClientDisconnected() from None
                    if n == 0:  # the file is shorter than it said
                        conn.dead = True
                        raise ClientDisconnected()
                    offset += n
                    count -= n
                if count == 0:
                    return
            conn.out.append(FileSegment(os.dup(fd), offset, count))
            self._want_write(conn, inline)

    def _want_write(self, conn: Connection, inline: bool) -> None:
        if not conn.want_write:
            conn.want_write = True
            if inline:
                self.update_events(conn)
            else:
                self.post(conn)

    def wait_for_reader(self, conn: Connection) -> None:
        """Inline only: block until the client has read the queue down to LOW_WATER (or is
        gone, or has read nothing for the stalled-reader deadline)."""
        poller = select.poll()
        poller.register(conn.fd, select.POLLOUT)
        stall = max(self.cfg.keepalive, self.cfg.header_timeout)
        while conn.out_size > LOW_WATER and not conn.dead:
            if not poller.poll(stall * 1000):
                self.mark_dead(conn)
                break
            self.on_writable(conn)
        if conn.dead:
            raise ClientDisconnected()

    def on_writable(self, conn: Connection) -> None:
        conn.last_active = time.monotonic()  # progress, for the stalled-reader deadline
        with conn.lock:
            out = conn.out
            sock = conn.sock
            try:
                while out:
                    item = out[0]
                    if type(item) is FileSegment:
                        n = os.sendfile(sock.fileno(), item.fd, item.offset,
                                        min(item.remaining, 1 << 20))
                        if n == 0:
                            raise ConnectionError("file ended early")
                        item.offset += n
                        item.remaining -= n
                        if not item.remaining:
                            os.close(item.fd)
                            out.popleft()
                        continue
                    n = sock.send(item)
                    conn.out_size -= n
                    if n == len(item):
                        out.popleft()
                    else:
                        out[0] = memoryview(item)[n:]
                        break
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                conn.dead = True
            if conn.cond is not None and (conn.out_size <= LOW_WATER or conn.dead):
                conn.cond.notify_all()
            if conn.paused_response is not None and (conn.out_size <= LOW_WATER or conn.dead):
                resume = True
            elif out and not conn.dead:
                return
            else:
                resume = False
                conn.want_write = False
                done = conn.active is None and (conn.closing or conn.dead)
        if resume:
            self.resume_response(conn)
        elif done:
            self.close(conn)
        else:
            self.update_events(conn)

    # -- answering ---------------------------------------------------------------------------

    def _app_thread(self) -> None:
        get = self.work.get
        while True:
            item = get()
            if item is None:
                return
            fn, a, b, c = item
            try:
                fn(a, b, c)
            except BaseException:  # noqa: BLE001 - keep the thread alive
                self.log.error("unexpected error in app thread:\n%s", traceback.format_exc())

    def serve(self, conn: Connection, req, inline: bool) -> None:
        """Answer `req` and, while they are already waiting, the requests after it."""
        if not inline:
            conn.thread = threading.get_ident()
        while True:
            self.served += 1  # (approximate across app threads; read by the loop's tick)
            if type(req) is HttpError:
                self.send_error(conn, req, inline)
                keep = False
            else:
                keep = self.respond(conn, req, inline)
                if keep is PAUSED:
                    return
            req = self.finish(conn, keep, inline)
            if req is None:
                return
            if inline and (not self.inline or type(req) is not HttpError and req.streaming):
                self.to_thread(conn, req)  # the app runs on a thread
                return

    def finish(self, conn: Connection, keep: bool, inline: bool):
        """A response is out: return the next waiting request (now active), or None."""
        with conn.lock:
            conn.active = None
            if keep and not conn.dead and not conn.closing:
                if conn.pending:
                    req = conn.pending.popleft()
                    conn.active = req
                    if not inline:
                        req.dispatched = self.now
                    if type(req) is Request and req.expect_continue:
                        req.expect_continue = False
                        conn.lock.release()
                        try:
                            self.send(conn, CONTINUE, inline)
                        except ClientDisconnected:
                            pass
                        finally:
                            conn.lock.acquire()
                    return req
                if conn.eof:
                    conn.closing = True
            else:
                conn.closing = True
            attend = conn.closing or not conn.reading or conn.parser.current is not None
        conn.last_active = self.now
        if not self.accepting:
            attend = True  # the loop re-checks whether to take new connections again
        if attend:
            if inline:
                self.attend(conn)
            else:
                self.post(conn)
        return None

    def respond(self, conn: Connection, req: Request, inline: bool):
        """Run the app for one request; return keep-alive (bool), or PAUSED when the loop
        thread goes on with the body once the client has read what is queued."""
        if self.probes is not None and req.url in self.probes:
            return self.answer_probe(conn, req, inline)
        resp = Response(self, conn, req, inline)
        try:
            environ = self.make_environ(conn, req)
        except Exception:  # noqa: BLE001 - a target the parser let through: 400, close
            self.log.debug("cannot make an environ for %r", req.url)
            self.send_error(conn, HttpError(400, "bad request target"), inline)
            return False
        resp.environ = environ
        if not inline:
            conn.response = resp
        if self.pre_request is not None or self.post_request is not None:
            resp.view = RequestView(environ)
            call_hook(self.cfg, "pre_request", self.view, resp.view)
        if self.log_duration:
            resp.started = time.monotonic()
        result = None
        try:
            result = self.app(environ, resp.start_response)
            if type(result) is list and not resp.head_sent:
                body = result[0] if len(result) == 1 else b"".join(result)
                head = resp.make_head(len(body))
                if resp.no_body or not body:
                    self.send(conn, head, inline)
                else:
                    if resp.remaining is not None and len(body) > resp.remaining:
                        body = body[:resp.remaining]
                    resp.remaining -= len(body)
                    resp.sent = len(body)
                    if len(body) < SMALL_JOIN:
                        self.send(conn, head + body, inline)
                    else:
                        self.send(conn, head, inline)
                        self.send(conn, body, inline)
                keep = resp.end()
                if self.post_request is None and not req.streaming:  # a list: nothing to close
                    access_log = self.access_log
                    if access_log is not None:  # done()'s logging, inlined: every request
                        access_log.lines.append(access_log.format(
                            environ, resp.status, resp.sent,
                            time.monotonic() - resp.started if resp.started else 0.0,
                            resp.headers))
                    return keep
            else:
                keep = self.send_iterable(resp, result)
                if keep is PAUSED:
                    return keep
        except ClientDisconnected:
            self.log.debug("client disconnected: %s", _target_line(req))
            keep = False
        except Exception:  # noqa: BLE001 - the app's error: 500, never a dead worker
            keep = self.app_error(conn, resp, inline)
        self.done(resp, result)
        return keep

    def answer_probe(self, conn: Connection, req: Request, inline: bool) -> bool:
        """Readiness and liveness, answered without the app: ready is 503 once the server is
        shutting down (SIGTERM, including --shutdown-delay) or this worker drains."""
        if self.probes[req.url] == "live":
            status, body = "200 OK", b"live\n"
        elif self.draining or (self.scoreboard is not None and self.scoreboard.shutting_down):
            status, body = "503 Service Unavailable", b"shutting down\n"
        else:
            status, body = "200 OK", b"ready\n"
        if req.streaming:
            req.body_stream.discard()
        resp = Response(self, conn, req, inline)
        resp.status = status
        resp.headers = [("Content-Type", "text/plain"), ("Cache-Control", "no-store")]
        head = resp.make_head(len(body))
        self.send(conn, head if resp.no_body else head + body, inline)
        return resp.end()

    def done(self, resp: Response, result) -> None:
        """The response is over (sent, failed or abandoned): close the iterable, log it."""
        self.close_result(result)
        req = resp.req
        if req.streaming and not req.complete:
            req.body_stream.discard()
        if self.post_request is not None:
            call_hook(self.cfg, "post_request", self.view, resp.view, resp.environ,
                      ResponseView(resp.status, resp.headers, resp.sent))
        access_log = self.access_log
        if access_log is not None:
            access_log.lines.append(access_log.format(
                resp.environ, resp.status or "500", resp.sent,
                time.monotonic() - resp.started if resp.started else 0.0, resp.headers or ()))

    def send_iterable(self, resp: Response, result):
        conn = resp.conn
        if type(result) is FileWrapper and not resp.head_sent and self.cfg.sendfile:
            span = result.sendfile_span()
            if span is not None:
                fd, offset, count = span
                head = resp.make_head(count)  # a known length: framed by Content-Length
                count = min(count, resp.remaining)
                self.send(conn, head, resp.inline)
                if not resp.no_body and count:
                    self.sendfile(conn, fd, offset, count, resp.inline)
                    resp.sent = count
                    resp.remaining -= count
                return resp.end()
        it = iter(result)
        if resp.inline:
            return self.pump(resp, result, it)
        write = resp.write
        for data in it:
            if data:
                write(data)
        return resp.end()

    def pump(self, resp: Response, result, it):
        """On the loop thread: take body parts from the app while the write-behind queue has
        room; when it is full, stop (PAUSED) and go on when the client has read it
        (`on_writable`). The loop never waits for a slow reader, and the app's iterator stays
        on the one thread it started on (thread-locals and contextvars stay right)."""
        conn = resp.conn
        write = resp.write
        for data in it:
            if data:
                write(data)
                if conn.out_size > HIGH_WATER:
                    conn.paused_response = (resp, result, it)
                    return PAUSED
        return resp.end()

    def resume_response(self, conn: Connection) -> None:
        """The client read what was queued (or is gone): go on with a paused response."""
        resp, result, it = conn.paused_response
        conn.paused_response = None
        try:
            keep = self.pump(resp, result, it)
            if keep is PAUSED:
                return
        except ClientDisconnected:
            keep = False
        except Exception:  # noqa: BLE001
            keep = self.app_error(conn, resp, True)
        self.done(resp, result)
        req = self.finish(conn, keep, True)
        if req is not None:
            self.start(conn, req)

    def close_result(self, result) -> None:
        if type(result) is list:
            return
        close = getattr(result, "close", None)
        if close is not None:
            try:
                close()
            except Exception:
                self.log.exception("error closing the app's response iterable")

    def app_error(self, conn: Connection, resp: Response, inline: bool) -> bool:
        self.log.exception("Error handling request %s", _target_line(resp.req))
        if not resp.head_sent:
            resp.status = "500 Internal Server Error"
            resp.headers = []
            try:
                head_only = resp.req.method == b"HEAD"
                self.send(conn, error_response(500, head_only=head_only, date=self.date), inline)
            except ClientDisconnected:
                pass
        return False

    def send_error(self, conn: Connection, err: HttpError, inline: bool) -> None:
        try:
            self.send(conn, error_response(err.status, date=self.date), inline)
        except ClientDisconnected:
            pass
        conn.lingering = time.monotonic() + 2.0  # read and drop what the client still sends

    def make_environ(self, conn: Connection, req: Request) -> dict:
        environ = conn.environ.copy()
        url = req.url
        target = self.targets.get(url)
        if target is None:
            path, query = split_target(url)
            script_name = self.script_name
            if script_name and path.startswith(script_name):
                path = path[len(script_name):]
            target = (url.decode("latin-1"), path, query)
            if len(self.targets) >= 512:
                self.targets.clear()
            self.targets[url] = target
        method = req.method
        environ["REQUEST_METHOD"] = METHODS.get(method) or method.decode("latin-1")
        environ["RAW_URI"], environ["PATH_INFO"], environ["QUERY_STRING"] = target
        environ["SERVER_PROTOCOL"] = req.server_protocol
        environ["wsgi.input"] = req.body_stream if req.streaming else io.BytesIO(req.body)
        environ.update(req.headers)
        return environ

    # -- the loop's bookkeeping ---------------------------------------------------------------

    def post(self, conn: Connection) -> None:
        """From an app thread: ask the loop to look at `conn` (see `attend`)."""
        self.inbox.append(conn)
        if not self.wake_pending:
            self.wake_pending = True
            os.eventfd_write(self.wake_fd, 1)

    def on_wake(self) -> None:
        try:
            os.eventfd_read(self.wake_fd)
        except BlockingIOError:
            pass
        self.wake_pending = False
        inbox = self.inbox
        while inbox:
            self.attend(inbox.popleft())

    def attend(self, conn: Connection) -> None:
        """Bring the loop's view of `conn` up to date after an app thread changed it."""
        if conn.closed:
            return
        with conn.lock:
            idle = conn.active is None
            flushed = not conn.out
            end = idle and (conn.dead or (conn.closing and flushed))
        if end:
            if conn.lingering and not conn.dead:
                self.linger(conn)
            else:
                self.close(conn)
            return
        if idle and conn.closing:
            self.update_events(conn)  # writes still queued: closed when they are out
            return
        reading = not conn.eof and not conn.dead and not self.pipeline_full(conn.pending)
        current = conn.parser.current
        if current is not None and current.streaming and current.body_stream.paused:
            reading = False
        conn.reading = reading and not conn.lingering
        self.update_events(conn)
        if idle and current is not None and current.expect_continue:
            self.maybe_continue(conn)

    def set_reading(self, conn: Connection, reading: bool) -> None:
        if conn.reading != reading:
            conn.reading = reading
            self.update_events(conn)

    def update_events(self, conn: Connection) -> None:
        if conn.closed:
            return
        events = (EPOLLIN if conn.reading else 0) | (EPOLLOUT if conn.want_write else 0)
        if events != conn.events:
            try:
                self.ep.modify(conn.fd, events)
            except FileNotFoundError:
                self.ep.register(conn.fd, events)
            conn.events = events

    def linger(self, conn: Connection) -> None:
        """After an error response: stop sending, read and drop for a moment, then close, so
        the client reads our response instead of a reset."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(conn)
            return
        conn.reading = True
        conn.want_write = False
        self.update_events(conn)

    def close(self, conn: Connection) -> None:
        if conn.closed:
            return
        conn.closed = True
        try:
            self.ep.unregister(conn.fd)
        except (FileNotFoundError, ValueError, OSError):
            pass
        self.conns.pop(conn.fd, None)
        with conn.lock:
            for item in conn.out:
                if type(item) is FileSegment:
                    os.close(item.fd)
            conn.out.clear()
            conn.dead = True
            if conn.cond is not None:
                conn.cond.notify_all()
        try:
            conn.sock.close()
        except OSError:
            pass

    def tick(self, now: float) -> None:
        gap = now - self.last_tick
        if gap > self.max_tick_gap:
            self.max_tick_gap = gap  # how late the loop got to its heartbeat (logged at exit)
        self.last_tick = now
        self.date.refresh()
        if self.access_log is not None:
            self.access_log.flush()
        if os.getppid() != self.ppid:
            self.log.info("worker %d: the master is gone; exiting", os.getpid())
            self.alive = False
            return
        cfg = self.cfg
        header_timeout = cfg.header_timeout
        keepalive = cfg.keepalive
        write_stall = max(keepalive, header_timeout)
        in_flight = 0
        oldest: Request | None = None
        for conn in list(self.conns.values()):
            active = conn.active
            if active is not None and type(active) is Request:
                in_flight += 1
                if active.dispatched:  # on an app thread: the loop keeps its deadline
                    if now - active.dispatched > self.timeout:
                        if not active.overran:
                            self.overrun(conn, active, now)
                        continue
                    if oldest is None or active.dispatched < oldest.dispatched:
                        oldest = active
            if conn.lingering:
                if now > conn.lingering:
                    self.close(conn)
                continue
            if conn.out and now - conn.last_active > write_stall:
                # a client that reads nothing of its response for that long
                self.log.debug("client stopped reading its response; closing")
                self.mark_dead(conn)
                if conn.paused_response is not None:
                    self.resume_response(conn)
                elif conn.active is None:
                    self.close(conn)
                continue
            if conn.active is not None or conn.pending:
                current = conn.parser.current
                if (current is not None and current.streaming
                        and now - conn.last_active > header_timeout):
                    self.log.debug("request body stalled; closing")
                    current.body_stream.fail(ClientDisconnected("request body timed out"))
                    self.mark_dead(conn)
                continue
            if conn.out:
                continue
            parser = conn.parser
            if conn.head_started:
                if now - conn.head_started > header_timeout:
                    if parser.in_head:
                        self.reject(conn, HttpError(408, "request head timed out"))
                    else:
                        self.close(conn)
            elif parser.current is not None:
                if now - conn.last_active > header_timeout:
                    self.reject(conn, HttpError(408, "request body timed out"))
            elif self.draining or now - conn.last_active > keepalive:
                self.close(conn)
        slot = self.slot
        slot.in_flight = in_flight
        slot.oldest_start = oldest.dispatched if oldest is not None else 0.0
        slot.oldest_line = _target_line(oldest) if oldest is not None else ""
        state = slot.state
        if state == IDLE or state == BUSY:
            state = BUSY if in_flight else IDLE
            if self.served >= self.max_requests:
                state = RETIRING  # the master starts a replacement, then stops this worker
        self.beat(state)
        if self.draining and (not self.conns or now > self.drain_deadline):
            if self.conns:
                self.log.warning("worker %d: graceful timeout; closing %d connections",
                                 os.getpid(), len(self.conns))
            self.alive = False

    def overrun(self, conn: Connection, req: Request, now: float) -> None:
        """A request ran past --timeout on an app thread. Threads cannot be stopped: log its
        stack, answer 504 if nothing was sent (else just close), and put this worker out of
        service: the master starts a replacement at once, this worker finishes the rest."""
        req.overran = True
        self.slot.over_deadline += 1
        frame = sys._current_frames().get(conn.thread)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(gone)\n"
        self.log.error("request over its deadline (%.1f s, --timeout %g): %s; the stack of "
                       "its thread:\n%s", now - req.dispatched, self.timeout,
                       _target_line(req), stack.rstrip())
        with conn.lock:
            resp = conn.response
            answer = (resp is None or not resp.head_sent) and not conn.out and not conn.dead
            conn.dead = True  # the app thread's writes fail from now on
        if answer:
            try:
                conn.sock.send(error_response(504, date=self.date))
            except OSError:
                pass
        self.close(conn)
        if not self.draining:
            self.start_drain(take_backlog=False)
            self.beat(DRAINING)

    def on_signals(self) -> None:
        try:
            while os.read(self._sig_r, 512):
                pass
        except BlockingIOError:
            pass
        while self._signals:
            sig = self._signals.popleft()
            if sig == signal.SIGTERM:
                self.start_drain()
            elif sig in (signal.SIGINT, signal.SIGQUIT):
                call_hook(self.cfg, "worker_int", self.view)
                self.alive = False
                self.quick_exit = True
            elif sig == signal.SIGUSR1:
                self.log = setup_error_log(self.cfg.errorlog, self.cfg.loglevel)
                if self.access_log is not None:
                    self.access_log.reopen()

    def start_drain(self, take_backlog: bool = True) -> None:
        """Stop accepting (after taking what already waits in the backlog), finish what is in
        flight, close idle keep-alive connections, then exit."""
        if self.draining:
            return
        self.draining = True
        self.keep_alive = False
        self.drain_deadline = time.monotonic() + self.cfg.graceful_timeout
        now = time.monotonic()
        for fd, lsock in list(self.listeners.items()):
            while take_backlog and self.accept(lsock, now):
                pass
            if self.accepting:
                self.ep.unregister(fd)
            lsock.close()
        self.listeners.clear()
        self.tick(now)


def private_memory() -> int:
    """Bytes of memory only this process uses (USS: private clean + dirty pages), read once
    when the worker is ready: with --preload the rest is shared with the master."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            total = 0
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
            return total
    except (OSError, ValueError, IndexError):
        return 0


def _target_line(req: Request) -> str:
    return f"{req.method.decode('latin-1')} {req.url.decode('latin-1')} HTTP/{req.version}"

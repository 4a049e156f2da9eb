"""The worker's event loop: one thread owns every socket.

It accepts connections, reads their bytes into the sans-IO parser (`berth/http/parser.py`),
and hands each complete request to the Responder (`berth/worker/app.py`): only a complete
request reaches the app, so a client that trickles its request costs a few KiB here, never a
thread. It drains write-behind queues when sockets turn writable, takes the app threads'
requests to look at a connection again (`post`, one eventfd write), and keeps the
per-connection deadlines (`sweep`): the request head, pauses in a body, idle keep-alive, a
reader that reads nothing, and the app's silence on an app thread.

Accepting is paused while the app threads have no room (so that idle workers take new
connections), for a short back-off when the process is out of file descriptors, and for good
once the worker retires (`--max-requests`) or drains.
"""

from __future__ import annotations

import collections
import math
import os
import select
import socket
import ssl
import time
from functools import partial

from berth.http.framing import CONTINUE
from berth.http.parser import (
    FEED_SLICE,
    NO_PARSER,
    HttpError,
    Request,
    RequestParser,
    unchain,
)
from berth.worker.admission import (
    ACCEPT_BATCH,
    DEFER,
    OUT_OF_RESOURCES,
    Admission,
    AdmissionState,
)
from berth.worker.app import Responder
from berth.worker.connection import WAIT_FOR_READER, ClientDisconnected, Connection
from berth.worker.hijack import TakeOver
from berth.worker.preface import ProxyPreface
from berth.worker.tls import Contexts, TlsConnection, TlsSocket
from berth.wsgi import StreamInput

MAX_PIPELINE = 16  # complete requests queued on one connection before reading pauses
RECV_SIZE = 64 * 1024
# A worker whose queue is full stops accepting so that idle workers take new connections, but
# never for longer than this: when every worker is saturated, a connection must not starve in
# the kernel queue while accepted ones are served again and again.
ACCEPT_PAUSE_MAX = 0.1
SILENT_AFTER = 1.0  # a new connection that has sent nothing this long may go too
TICK = 0.5  # seconds between the worker's ticks (heartbeat, deadlines, Date, parent check)
# A keep-alive connection silent this long lets go of its parser and last response (`park`,
# at the next tick): an idle connection holds under a KiB. The next request makes a parser
# again (about 3 us: paid only after half a second of silence, never by a busy connection).
PARK_AFTER = 0.5
# Draining, an idle keep-alive connection is closed once it has been idle this long: a load
# balancer reusing it meanwhile gets its answer with `Connection: close`, instead of a
# connection closed under its request (HAProxy then drops the client's connection unanswered).
DRAIN_IDLE = 1.0

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLL_CLOSED = select.EPOLLHUP | select.EPOLLERR


class Loop(Admission):
    def __init__(self, cfg, listeners: list[socket.socket], log, responder: Responder, *,
                 signal_fd: int, process):
        # At most 29 instance attributes (28 now, Admission's state in one: `admit`): CPython
        # 3.11 shares a class's instance-dict keys up to 30, and past them every attribute
        # read of the loop's, on every request, loses its specialization (at 32, 1.4% of
        # hello world's instructions, measured). Hence one `process` for its three calls,
        # `draining` holding when the drain began, and `admit`.
        self.cfg = cfg
        self.log = log
        self.admit = AdmissionState(log)
        self.responder = responder
        self.listeners = {s.fileno(): s for s in listeners}
        self.signal_fd = signal_fd
        # the worker process: on_signals() (the signal pipe is readable), overrun(conn, req,
        # now) (a request's app is silent too long), retiring() (--max-requests reached)
        self.process = process
        self.conns: dict[int, Connection] = {}
        self.inbox: collections.deque = collections.deque()
        self.holding: list[Connection] = []  # complete responses held back (Connection.put)
        self.reads: collections.deque = collections.deque()  # (conn, bytes) to parse: run
        self.held_since = 0.0  # when the first of them was held
        self.wake_pending = False
        self.alive = True
        self.accepting = True
        self.paused_accepting = 0.0
        self.retiring = 0.0  # --max-requests reached (when): no new connections
        # SIGTERM or an overrun: no new connections, then exit. 0.0, or when the drain began
        self.draining = 0.0
        self.threads = cfg.threads
        self.body_budget = cfg.body_buffer_size
        self.timeout = cfg.timeout or math.inf  # --timeout 0: no deadline (as Gunicorn)
        self.max_conns = cfg.worker_connections  # (capped by the open-files limit at start)
        self.now = 0.0  # the loop's clock, read once per wake-up
        self.next_tick = 0.0  # (kept here: the loop may move to another thread, baton.py)
        # --proxy-protocol: the header each new connection may start with (else None)
        self.preface = ProxyPreface.from_config(cfg, responder.environs, log)
        # every listener speaks TLS (its context made again when its files change)
        self.tls = Contexts(cfg, log, time.monotonic()) if cfg.certfile else None

    def setup(self) -> None:
        self.ep = select.epoll()
        for fd, lsock in self.listeners.items():
            lsock.setblocking(False)
            self.ep.register(fd, EPOLLIN | select.EPOLLEXCLUSIVE)
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.ep.register(self.wake_fd, EPOLLIN)
        self.ep.register(self.signal_fd, EPOLLIN)
        self.publish_conns()  # (its siblings count it from now on)

    def run(self, tick, monotonic) -> None:
        """Until `alive` turns false: wait for events, handle them, call `tick(now)` every
        TICK seconds."""
        poll = self.ep.poll
        conns = self.conns
        listeners = self.listeners
        wake_fd = self.wake_fd
        signal_fd = self.signal_fd
        on_readable = self.on_readable
        reads = self.reads
        reads_append = reads.append
        self.now = now = monotonic()
        if not self.next_tick:
            self.next_tick = now + TICK
        elif now >= self.next_tick:  # (a thread that loses the loop mid-turn skips its tick)
            self.next_tick = now + TICK
            tick(now)
            if self.responder.baton is not None:
                self.responder.baton.slot_written()
        # The first turn has no events: it answers the reads and sends the responses that
        # the thread which ran the loop before this one left (baton.py), before any socket
        # is read again.
        events = ()
        while True:
            for fd, ev in events:
                conn = conns.get(fd)
                if conn is not None:
                    try:
                        if ev == EPOLLIN:  # read now, parsed and answered after the reads
                            try:
                                data = conn.sock.recv(RECV_SIZE)
                            except (BlockingIOError, InterruptedError):
                                continue
                            except OSError as exc:
                                data = self.recv_failed(conn, exc)
                            if data and not conn.lingering:
                                reads_append((conn, data))
                            else:
                                self.read_nothing(conn, data)
                            continue
                        if ev & EPOLLIN:
                            on_readable(conn, now)
                        elif ev & EPOLL_CLOSED:
                            self.on_hangup(conn)
                        if ev & EPOLLOUT and not conn.closed and conn.on_writable():
                            self.responder.resume(conn)
                    except Exception:
                        self.broken(conn)
                elif fd in listeners:
                    self.accept(listeners[fd], now)
                elif fd == wake_fd:
                    self.on_wake()
                elif fd == signal_fd:
                    self.process.on_signals()
            # A wake-up's reads are parsed and answered once every readable socket has been
            # read: the kernel's receive path then runs once for all of them, not between two
            # app calls, where it evicts the app's code and data from the caches as a send
            # does (`flush`): Flask and Django served up to 7% and 18% more requests a second
            # so, and never fewer, in three runs (docs/performance.md). The queue is the
            # loop's: when an app thread takes the loop over during an inline app call, the
            # thread that lost it never comes back here (Deposed), and the new one answers
            # the rest in its first turn.
            while reads:
                conn, data = reads.popleft()
                if not conn.closed:
                    try:
                        on_readable(conn, now, data)
                    except Exception:
                        self.broken(conn)
            if not self.accepting and self.may_accept_again(now):
                self.set_accepting(True)
            if now >= self.next_tick:  # (after the events: a request that came with the
                self.next_tick = now + TICK  # drain's tick is answered, not closed idle)
                tick(now)
            if self.holding:
                self.flush()
            if not self.alive:
                break
            # while accepting is paused, wake up soon enough to take it up again
            events = poll(TICK if self.accepting or self.retiring else
                          DEFER if self.admit.defer_until else ACCEPT_PAUSE_MAX)
            self.now = now = monotonic()

    def flush(self) -> None:
        """Send the responses held back since the last flush (`Connection.put`); what a
        socket does not take waits for it to turn writable, as any write-behind does."""
        holding = self.holding
        self.holding = []
        resume = self.responder.resume
        now = time.monotonic()  # (they go out now: their keep-alive windows start)
        for conn in holding:
            conn.held = False
            if conn.closed:
                continue
            conn.last_active = now
            try:
                if conn.send_held():
                    resume(conn)
                if conn.out:
                    conn.after_flush()
            except Exception:
                self.broken(conn)

    def broken(self, conn: Connection) -> None:
        """In an except block: berth's own error on a connection; it is closed."""
        self.log.exception("internal error on a connection; closing it")
        conn.mark_dead()
        if conn.active is None:
            conn.close()

    # -- accepting -----------------------------------------------------------------------------

    def accept(self, lsock: socket.socket, now: float) -> bool:
        """Accept a few connections; return whether more may be waiting.

        The kernel wakes the first worker registered on the listener whenever it waits
        (EPOLLEXCLUSIVE), and on a busy CPU that one could take a whole burst before its app
        threads have any queue to pause it: one that defers to a sibling (berth.worker.
        admission) unregisters, and so the next connection wakes the sibling (first on the
        listener's queue now: a registration goes to its end)."""
        if self.responder.retired:  # an app thread reached --max-requests: its post() may be
            self.stop_accepting_for_good()  # behind this event, so accept nothing more now
            return False
        if self.admit.conn_words is not None and self.defer(now):
            return False
        more = self.accept_some(lsock, now)
        self.publish_conns()
        return more

    def accept_some(self, lsock: socket.socket, now: float) -> bool:
        """Up to ACCEPT_BATCH connections; return whether more may be waiting."""
        environs = self.responder.environs
        for i in range(ACCEPT_BATCH):
            if len(self.conns) >= self.max_conns:
                # room is made only for a connection known to wait (the first: the listener
                # was readable); the next wake-up comes back for the rest
                if i:
                    return True
                if not self.make_room(now):
                    self.set_accepting(False)  # none can go: siblings and the backlog wait
                    return False
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return False
            except OSError as exc:
                if exc.errno in OUT_OF_RESOURCES:
                    self.out_of_descriptors(exc, now)
                else:
                    self.log.warning("accept failed: %s", exc)
                return False
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                environ = environs.for_connection(sock.getsockname(), addr)
            else:
                environ = environs.for_connection(None, None)
            if self.tls is None:
                conn = Connection(sock, environ, now, self)
            else:
                conn = TlsConnection(TlsSocket(sock, self.tls.get(now),
                                               self.preface and self.preface.read),
                                     environ, now, self, environs)
            conn.parser = NO_PARSER  # made when bytes arrive (on_readable)
            if self.preface is not None:
                conn.preface = b""  # a PROXY header may come first
            self.conns[conn.fd] = conn
            self.ep.register(conn.fd, EPOLLIN)
        return True

    def _make_parser(self, conn: Connection) -> RequestParser:
        return RequestParser.for_config(self.cfg, partial(self._stream_input, conn))

    def _stream_input(self, conn: Connection, req: Request) -> StreamInput:
        return StreamInput(req.body, self.body_budget, lambda: self.post(conn))

    def sheddable(self):
        """Connections with no request in progress: idle keep-alive ones, and new ones that
        have sent nothing for SILENT_AFTER (see berth.worker.admission). Not those read in
        this wake-up (`reads`): their requests are not parsed yet, but they have come."""
        now = self.now
        unparsed = self.unparsed()
        return (c for c in self.conns.values()
                if (c.idle() or silent(c, now)) and c not in unparsed)

    def unparsed(self):
        """The connections whose bytes were read and are not parsed yet (`reads`): they look
        idle, and are not (only the rare paths that close idle connections ask)."""
        reads = self.reads
        return {conn for conn, _ in reads} if reads else ()

    def may_accept_again(self, now: float) -> bool:
        """Accepting is paused: take it up again once the back-off after running out of file
        descriptors is over and the app threads have room, or have had the pause's maximum.
        A deferral to a sibling ends after DEFER (Admission.end_deferral)."""
        deferred = self.admit.defer_until
        if deferred and not self.end_deferral(now):
            return False
        if len(self.conns) >= self.max_conns:
            return False  # (a tick makes room once a connection is idle: sweep)
        if deferred:
            return now >= self.admit.accept_resume
        return now >= self.admit.accept_resume and (
            not self.responder.queued() or now - self.paused_accepting > ACCEPT_PAUSE_MAX)

    def set_accepting(self, accepting: bool) -> None:
        """Take new connections only while this worker has app threads to spare, so that the
        others take them (the kernel queue holds them meanwhile): connections spread by
        capacity, not by which worker woke first."""
        if accepting == self.accepting or self.draining or self.retiring:
            return
        self.accepting = accepting
        self.paused_accepting = self.now
        for fd in self.listeners:
            if accepting:
                self.ep.register(fd, EPOLLIN | select.EPOLLEXCLUSIVE)
            else:
                self.ep.unregister(fd)
        self.publish_conns()

    def stop_accepting_for_good(self) -> None:
        """--max-requests reached: no new connection, and the idle ones are closed once idle
        for a second since (their clients go to the other workers), as a drain closes them: a
        client reusing one meanwhile gets its answer, with Connection: close, where a close
        at once lost the request it was sending (an empty reply); what is in progress is
        finished."""
        if self.retiring or self.draining:
            return
        self.set_accepting(False)
        self.withdraw()  # (set_accepting did not publish if it was deferring)
        self.retiring = time.monotonic()
        self.process.retiring()

    def stop_listening(self, take_backlog: bool) -> None:
        """Drain: take what already waits in the kernel's queue (unless retiring: its
        replacement takes them), then close the listeners and keep-alive."""
        self.draining = time.monotonic()
        self.withdraw()
        self.responder.keep_alive = False
        take_backlog = take_backlog and not self.retiring
        for fd, lsock in list(self.listeners.items()):
            while take_backlog and self.accept(lsock, self.now):
                pass
            if self.accepting:
                self.ep.unregister(fd)
            lsock.close()
        self.listeners.clear()

    # -- reading -------------------------------------------------------------------------------

    def read(self, conn: Connection) -> bytes | None:
        """recv() on a readable socket: the bytes, or None when there are none to parse
        (none yet, the client's end, or a lingering connection's). `run` has it inlined."""
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            data = self.recv_failed(conn, exc)
        if data and not conn.lingering:
            return data
        self.read_nothing(conn, data)
        return None

    def recv_failed(self, conn: Connection, exc: OSError) -> bytes:
        """recv() raised: the connection is at its end (b"")."""
        if isinstance(exc, ssl.SSLError):  # (a client certificate refused, a bad record:
            # said at debug, as the ASGI worker says it; Gunicorn warns)
            self.log.debug("TLS connection from %s not established: %r",
                           conn.environ.get("REMOTE_ADDR"), exc)
        return b""

    def read_nothing(self, conn: Connection, data: bytes) -> None:
        """A read with nothing to parse: a lingering connection's (dropped; its end closes
        it), or the client's end."""
        if conn.lingering:
            if not data:
                conn.close()
        else:
            self.on_eof(conn)

    def on_readable(self, conn: Connection, now: float, data: bytes | None = None) -> None:
        """The socket is readable; or (`data`) bytes read earlier are to be parsed now: a
        wake-up's reads (`run`), or those kept unparsed while the connection's queue was
        full (`Connection.unfed`)."""
        if data is None:
            data = self.read(conn)
            if data is None:
                return
        conn.last_active = now
        parser = conn.parser
        if parser is NO_PARSER:  # a new connection, or one parked between requests
            if conn.preface is not None:
                try:
                    data = self.preface.read(conn, data)
                except HttpError as err:
                    self.reject(conn, err)
                    return
                if data is None:
                    return
            parser = conn.parser = self._make_parser(conn)
        try:
            if len(data) > FEED_SLICE:  # it may hold more requests than the queue may
                rest = parser.feed_some(data, MAX_PIPELINE - len(conn.pending))
                if rest is not None:  # parsed once the queue has room (attend)
                    conn.unfed = rest
                    conn.set_reading(False)
            else:
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
                    conn.set_reading(False)
        ready = parser.ready
        if ready:
            lock = conn.lock
            lock.acquire()
            try:
                if conn.closing or conn.dead:  # its last response ends the connection
                    ready.clear()
                    conn.set_reading(False)
                    return
                pending = conn.pending
                if (conn.active is None and not pending and len(ready) == 1
                        and conn.paused_response is None):
                    conn.active = req = ready.pop()  # the common case: one request, idle
                else:
                    conn.line_up(ready)
                    pending = conn.pending
                    ready.clear()
                    # (paused: an app thread found its client reading nothing, and the loop
                    # has not seen that yet: the requests wait for resume)
                    if conn.active is not None or conn.paused_response is not None:
                        if self.pipeline_full(pending):
                            conn.set_reading(False)
                        return
                    conn.active = req = pending.popleft()
            finally:
                lock.release()
            self.responder.dispatch(conn, req)

    def pipeline_full(self, pending: collections.deque) -> bool:
        """Stop reading a connection whose waiting requests hold too much: at most
        MAX_PIPELINE requests and one --body-buffer-size of their bodies."""
        if len(pending) >= MAX_PIPELINE:
            return True
        return sum(len(r.body) for r in pending if type(r) is Request) > self.body_budget

    def to_thread(self, conn: Connection, req) -> None:
        """Queue `req` for an app thread; `sweep` keeps its deadline once a thread runs the
        app for it (waiting in the queue is not the app's silence: `progress` stays 0)."""
        req.dispatched = self.now
        req.progress = 0.0
        req.queued = True
        responder = self.responder
        responder.submit(conn, req)
        if self.accepting and responder.queued() >= self.threads:
            self.set_accepting(False)

    def maybe_continue(self, conn: Connection) -> None:
        """Send `100 Continue` for the request whose body is awaited, once it is next in line."""
        parser = conn.parser
        current = parser.current
        if current is None or not current.expect_continue:
            return
        ready = parser.ready  # (requests before it parsed in the same read, not lined up yet;
        # a streamed one is there itself)
        with conn.lock:
            if (conn.active is not None and conn.active is not current or conn.pending
                    or ready and ready[0] is not current):
                return  # an earlier response is still going out; asked again when it ends
            current.expect_continue = False
        try:
            conn.send(CONTINUE, True)
        except ClientDisconnected:
            pass

    def reject(self, conn: Connection, err: HttpError) -> None:
        """A request berth refuses: answer it once earlier responses are out, then close."""
        unchain(err)  # (kept to be answered: see there)
        self.admit.bad_request("request refused from %s: %s",
                               conn.environ.get("REMOTE_ADDR") or "a unix socket peer", err)
        conn.set_reading(False)
        current = conn.parser.current
        if current is not None and current.streaming:  # its reader must not wait for more
            current.body_stream.fail(ClientDisconnected(f"request refused: {err}"))
        with conn.lock:
            conn.line_up(conn.parser.ready)
            conn.parser.ready.clear()
            if conn.closing or conn.dead:
                # RFC 9112 9.6: the last response said `Connection: close` (or the client is
                # gone): nothing more is processed on this connection, not even an error.
                # (llhttp calls bytes after a `Connection: close` request an error.)
                end = conn.active is None and not conn.out
            else:
                conn.line_up((err,))
                if conn.active is not None:
                    return
                conn.active = req = conn.pending.popleft()
                end = None
        if end is None:
            self.responder.dispatch(conn, req)
        elif end:
            conn.close()

    def on_eof(self, conn: Connection) -> None:
        conn.eof = True
        if conn.preface:
            self.preface.truncated(conn)
        conn.set_reading(False)
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
            conn.close()

    def on_hangup(self, conn: Connection) -> None:
        conn.mark_dead()
        if conn.paused_response is not None:
            self.responder.resume(conn)  # fails at once: closes the iterable, logs, closes
            return
        with conn.lock:
            idle = conn.active is None
        if idle:
            conn.close()
        elif conn.events:
            conn.reading = False
            conn.want_write = False
            conn.update_events()

    # -- what app threads ask ------------------------------------------------------------------

    def post(self, conn: Connection | None) -> None:
        """From an app thread: ask the loop to look at `conn` (see `attend`); None asks it to
        stop accepting for good (`--max-requests` reached)."""
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
            conn = inbox.popleft()
            if conn is None:
                self.stop_accepting_for_good()
            elif type(conn) is TakeOver:  # an app takes the connection (gunicorn.socket)
                conn.run()
            else:
                self.attend(conn, True)

    def attend(self, conn: Connection, top: bool = False) -> None:
        """Bring the loop's view of `conn` up to date after an app thread changed it (or the
        loop thread, inline: `top` is false there, inside a dispatch)."""
        if conn.closed:
            return
        lock = conn.lock
        lock.acquire()
        try:
            idle = conn.active is None
            flushed = not conn.out
            end = idle and (conn.dead or (conn.closing and flushed))
        finally:
            lock.release()
        if end:
            if conn.lingering and not conn.dead:
                conn.linger()
            else:
                conn.close()
            return
        if idle and conn.closing:
            conn.update_events()  # writes still queued: closed when they are out
            return
        reading = (not conn.eof and not conn.dead and not self.pipeline_full(conn.pending)
                   and conn.paused_response is not WAIT_FOR_READER)
        current = conn.parser.current
        if current is not None and current.streaming and current.body_stream.paused:
            reading = False
        if reading and conn.unfed is not None and not conn.lingering:
            # bytes read before the queue filled: parsed before the socket is read again, at
            # the loop's top level (not deeper inside an inline dispatch)
            if not top:
                self.post(conn)
                return
            data = conn.unfed
            conn.unfed = None
            self.on_readable(conn, self.now, data)
            self.attend(conn)  # (reads again if it is all parsed now, else posts)
            return
        conn.reading = reading and not conn.lingering
        conn.update_events()
        if idle and current is not None and current.expect_continue:
            self.maybe_continue(conn)

    def forget(self, conn: Connection) -> None:
        """`Connection.close()` tells the loop: no more events, no more sweeps."""
        try:
            self.ep.unregister(conn.fd)
        except (FileNotFoundError, ValueError, OSError):
            pass
        self.conns.pop(conn.fd, None)
        if self.admit.conn_words is not None:  # (no scoreboard, no siblings: none to publish)
            self.publish_conns()

    # -- deadlines -----------------------------------------------------------------------------

    def sweep(self, now: float) -> tuple[int, Request | None]:
        """Every tick: each connection's deadlines. Returns the requests in flight and the
        oldest one on an app thread (for the scoreboard)."""
        cfg = self.cfg
        header_timeout = cfg.header_timeout
        min_rate = cfg.body_min_rate
        grace = cfg.body_grace
        keepalive = cfg.keepalive
        write_stall = max(keepalive, header_timeout)
        in_flight = 0
        oldest: Request | None = None
        # (a loop thread that took the loop over ticks before it parses the reads left
        # behind: their connections are not idle, whatever they look like)
        unparsed = self.unparsed()
        for conn in list(self.conns.values()):
            active = conn.active
            if active is not None and type(active) is Request:
                in_flight += 1
                if active.dispatched:  # on an app thread: the loop keeps its deadline
                    if (active.queued and self.draining
                            and now - active.dispatched > self.timeout):
                        self.responder.shed(conn, active, now)
                        continue
                    if now - silent_since(active, now) > self.timeout:
                        if not active.overran:
                            active.overran = True
                            self.process.overrun(conn, active, now)
                        continue
                    if oldest is None or active.dispatched < oldest.dispatched:
                        oldest = active
            if conn.lingering:
                if now > conn.lingering:
                    conn.close()
                continue
            if conn.out:
                if conn.reading_on():  # (it read some: progress)
                    conn.last_active = conn.unread_since = now
                elif not conn.unread_since:  # (bytes began to wait)
                    conn.unread_since = conn.last_active
                elif now - conn.unread_since > write_stall:
                    # a client that reads nothing of its response for that long (what it
                    # sends meanwhile, a request trickled behind it, is no progress on that)
                    self.log.debug("client stopped reading its response; closing")
                    conn.mark_dead()
                    if conn.paused_response is not None:
                        self.responder.resume(conn)
                    elif conn.active is None:
                        conn.close()
                    continue
            elif conn.unread_since:
                conn.unread_since = 0.0
            if conn.active is not None or conn.pending:
                current = conn.parser.current
                if current is not None and current.streaming:  # the app reads it as it comes
                    # the app has not read what came, or the server has not asked for the
                    # body yet (Expect: 100-continue, behind an earlier response): the pause
                    # is the server's, not the client's
                    if current.body_stream.paused or current.expect_continue:
                        conn.last_active = now
                        retime_body(current)
                    elif now - conn.last_active > header_timeout:
                        self.log.debug("request body stalled; closing")
                        current.body_stream.fail(ClientDisconnected("request body timed out"))
                        conn.mark_dead()
                    elif min_rate and body_too_slow(current, conn.parser.body_received, now,
                                                    grace, min_rate):
                        self.log.debug("request body slower than --body-min-rate; closing")
                        current.body_stream.fail(ClientDisconnected(
                            "request body slower than --body-min-rate"))
                        conn.mark_dead()
                continue
            if conn.out or conn in unparsed:
                continue
            parser = conn.parser
            if conn.head_started:
                if now - conn.head_started > header_timeout:
                    if parser.in_head:
                        self.reject(conn, HttpError(408, "request head timed out"))
                    else:
                        if conn.preface:  # a PROXY header begun, then nothing more
                            self.preface.truncated(conn, header_timeout)
                        conn.close()
            elif parser.current is not None:  # a body, before the app is called
                if now - conn.last_active > header_timeout:
                    self.reject(conn, HttpError(408, "request body timed out"))
                elif min_rate and body_too_slow(parser.current, parser.body_received, now,
                                                grace, min_rate):
                    self.reject(conn, HttpError(408, "request body slower than "
                                                     "--body-min-rate"))
            elif self.draining or self.retiring:  # idle a second since the drain or the
                # retirement began, at least: a client reusing one then gets its answer (with
                # Connection: close), not a close under its request
                if now - max(conn.last_active, self.draining or self.retiring) > min(
                        DRAIN_IDLE, keepalive):
                    conn.close()
            elif now - conn.last_active > keepalive:
                conn.close()
            elif parser is not NO_PARSER and now - conn.last_active > PARK_AFTER:
                conn.park(NO_PARSER)
        self.room_at_tick(now, bool(self.listeners))
        return in_flight, oldest


def body_too_slow(req: Request, received: int, now: float, grace: float,
                  min_rate: int) -> bool:
    """--body-min-rate: `req`'s body, timed since a tick saw it arrive (`body_since`), may take
    `grace` (--body-grace) plus a second for every `min_rate` bytes it has brought since.
    A body whose bytes the server stopped reading (its reader had not taken what came) is
    timed again from the tick that sees it read again (`retime_body`)."""
    since = req.body_since
    if not since:
        req.body_since = now
        req.body_base = received
        return False
    return now - since > grace + (received - req.body_base) / min_rate


def retime_body(req: Request) -> None:
    """The server is not reading `req`'s body (flow control): its rate is not the client's."""
    req.body_since = 0.0


def silent(conn: Connection, now: float) -> bool:
    """A new connection that has sent nothing for SILENT_AFTER (a preconnect, a slowloris)."""
    return (conn.parser is NO_PARSER and conn.active is None and not conn.out
            and not conn.lingering and not conn.preface and now - conn.last_active > SILENT_AFTER)


def silent_since(req: Request, now: float) -> float:
    """Since when the app answering `req` has been silent: its last body part (or its
    dispatch), not counting the time it waits for the client, a slow reader (`progress` is
    0 then) or a slow upload it reads."""
    since = req.progress
    if not since:
        return now
    if req.streaming:
        stream = req.body_stream
        if stream.waiting:
            return now
        if stream.woke > since:
            return stream.woke
    return since

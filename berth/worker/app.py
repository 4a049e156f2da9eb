"""Running the app for requests: the WSGI `Response`, probes, error answers, app threads.

The loop hands each complete request to `Responder.dispatch`: with `--threads 1` the app runs
right there on the loop thread (inline: no hand-off, the fastest path). With app threads it
does too while one of them stands by to take the loop over (`berth/worker/baton.py`: the
loop thread then runs app code as an app thread would, and may lose the loop meanwhile);
otherwise the request is queued for the app threads. A request whose body is still streaming
in always goes to a thread, since the loop must keep reading it.

`answer` runs the app for one request and goes on with the requests already waiting on the
same connection (pipelining), in order. `call_app` is the WSGI call itself: a list body is
framed and sent in one piece (the fast path); an iterable is sent part by part. On the loop
thread an iterable is *paused* when the connection's write-behind queue is full (`pump`), and
resumed when the client has read it down (`resume`): the loop never waits for a slow reader,
and the app's iterator stays on the one thread it started on.

Everything that ends a response goes through `conclude`: the iterable's `close()`, the
`post_request` hook, the access-log line. The loop is reached only through the callbacks the
worker gives (`LoopSide` below): this room imports nothing above it.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import traceback
from bisect import bisect_left
from queue import SimpleQueue
from typing import Protocol

from berth.forwarded import Forwarding
from berth.hooks import RequestView, ResponseView, call_hook, get_hook
from berth.http.framing import (
    CONTINUE,
    LAST_CHUNK,
    PROBE_HEADERS,
    DateCache,
    chunk,
    early_hints,
    error_response,
    frame,
    probe_answer,
)
from berth.http.framing import _head_cache as head_cache
from berth.http.parser import HttpError, Request
from berth.logs import ErrorStream
from berth.scoreboard import DURATION_BOUNDS, Slot
from berth.worker import counts as counters
from berth.worker.baton import TAKE_LOOP, Baton, Deposed
from berth.worker.connection import (
    HIGH_WATER,
    LINGER,
    LOW_WATER,
    WAIT_FOR_READER,
    ClientDisconnected,
    Connection,
)
from berth.worker.counts import (
    BYTES,
    DURATION_SUM,
    DURATIONS,
    METHOD_ROW,
    OTHER_ROW,
    QUEUED,
    QUEUED_SUM,
)
from berth.worker.hijack import AppSocket, taken
from berth.wsgi import Environs, FileWrapper, no_early_hints

PAUSED = object()  # call_app(): the loop goes on with this response when the client reads
# On the loop thread, complete responses are held back and sent together after the other
# requests of the wake-up (berth/worker/connection.py); before the app runs for a request,
# those held longer than this go out first.
HOLD_AT_MOST = 0.001
SMALL_JOIN = 64 * 1024  # below this, head and body are joined into one buffer for send()


class LoopSide(Protocol):
    """What the Responder asks of the loop (`berth/worker/loop.py`)."""

    now: float  # the loop's clock, read once per wake-up
    accepting: bool
    holding: list  # connections with responses held back (Connection.put)
    held_since: float  # when the first of them was held

    def flush(self) -> None: ...

    def to_thread(self, conn: Connection, req) -> None: ...
    def attend(self, conn: Connection) -> None: ...
    def post(self, conn: Connection | None) -> None: ...
    def stop_accepting_for_good(self) -> None: ...


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
    result = None  # an iterable body taken under the baton's lead (run_app), and
    first: tuple | None = None  # its iterator and first part (start_body)
    closed = False  # its close() was called (next_or_close)
    reader_waited = 0.0  # seconds the loop thread waited for the client to read (wait_for_reader)
    overrun = False  # berth answered 504 for it at --timeout, and counted and logged that
    overlong = False  # the app gave more than its Content-Length (logged once: cut())
    ended = False  # the last chunk went: a write() after it is dropped (end_body)

    def __init__(self, responder: Responder, conn: Connection, req: Request, inline: bool):
        self.responder = responder
        self.conn = conn
        self.req = req
        self.inline = inline
        self.keep_alive = req.keep_alive and responder.keep_alive
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
        # PEP 3333 asks for a str and a list of pairs of str; Gunicorn also takes a str
        # subclass (markupsafe's Markup, an enum of str) and any iterable of pairs (a tuple,
        # dict.items()), and so does berth: only what is not exactly that pays for it
        if type(status) is not str:
            if not isinstance(status, str):
                raise TypeError(f"status must be str, not {type(status).__name__}")
            status = str.__str__(status)
        if type(headers) is not list:
            headers = list(headers)
        self.status = status
        self.headers = headers
        return self.write_callable

    def early_hints(self, headers) -> None:
        """environ["wsgi.early_hints"], as in Gunicorn: a `103 Early Hints` (RFC 8297) with
        `headers` (`Link`s a browser, or the proxy in front, may preload while the app
        works), sent now, ahead of the response, or behind what the connection still has to
        send. Nothing is sent once the response's head is out, nor to an HTTP/1.0 client
        (no 1xx for it); a client gone is the response's to find."""
        if self.head_sent or self.overrun or self.req.version != "1.1":
            return
        data = early_hints(headers)  # (raises for a header berth would not send: a 500)
        conn = self.conn
        try:
            conn.send(data, self.inline)
            if self.inline and conn.out and conn.active is self.req:
                # On the loop thread, what waits before the 103 (a pipelined response held
                # for the loop's flush, or one its client is still reading) would go out once
                # the app returns, and the 103 with it: sent now, what the socket takes; and
                # past HIGH_WATER the loop waits for the reader, as in write()
                conn.on_writable()
                self.wait_for_reader()
        except ClientDisconnected:
            pass

    __call__ = early_hints  # environ["wsgi.early_hints"] is the Response: no object per request

    def cut(self, data: bytes) -> bytes:
        """What of `data` the response's Content-Length still allows (less than all of it).
        The first cut is logged: Gunicorn drops the rest in silence, but a wrong length is the
        app's bug, and its users see cut bodies."""
        self.warn_overlong()
        return data[:self.remaining]

    def warn_overlong(self) -> None:
        if not self.overlong:
            self.overlong = True
            self.responder.log.warning(
                "the app's response to %s is longer than its Content-Length: the bytes past "
                "it are not sent", request_line(self.req))

    def progress(self) -> None:
        """An empty body part is the app's progress too (write() does the same for the
        others): --timeout measures its silence."""
        if self.inline:
            self.responder.heartbeat_if_due()
        else:
            self.req.progress = time.monotonic()

    def make_head(self, known_length: int | None) -> bytes:
        """The response head; decides the framing (length, chunked, or close-delimited)."""
        status = self.status
        if status is None:
            raise AssertionError("the app returned without calling start_response()")
        headers = self.headers
        try:  # frame()'s cache, looked up here: heads repeat (see berth/http/framing.py)
            framing = head_cache.get((self.req.version, self.keep_alive, self.no_body,
                                      known_length, status, tuple(headers)))
        except TypeError:
            framing = None
        if framing is None:
            framing = frame(self.req.version, status, headers, self.keep_alive, self.no_body,
                            known_length)
        head, self.remaining, self.chunked, self.no_body, self.keep_alive, own = framing
        self.head_sent = True
        return head + self.responder.date.ends[own]

    def send_whole(self, data: bytes) -> None:
        """Send the whole response (its head, and all of its body if any): on the loop
        thread, a response that keeps its connection is held back for the loop's flush,
        unless a post_request hook (which may take its time) runs before the flush."""
        if self.inline and self.keep_alive and self.responder.post_request is None:
            self.conn.put(data)  # (with a post_request hook it goes out before the hook runs)
        else:
            self.conn.send(data, self.inline)

    def write_callable(self, data: bytes) -> None:
        """The WSGI `write()` callable. On the loop thread (inline) the app cannot be paused
        in the middle of its call, so above the write-behind bound the loop waits for the
        client here, as Gunicorn's sync worker would: memory stays bounded. Every other
        connection of the worker waits meanwhile (with --threads 1), so a client that reads
        that slowly is let go of once the waits of its response pass --timeout (Gunicorn's
        sync worker is killed then)."""
        self.write(data)
        self.wait_for_reader()

    def wait_for_reader(self) -> None:
        """write_callable()'s wait (and early_hints'): on the loop thread, above HIGH_WATER,
        until the client has read the queue down (see there)."""
        conn = self.conn
        if self.inline and conn.out_size > HIGH_WATER:
            responder = self.responder
            # (not an attribute of the Responder: past 30 of them an instance's dict is no
            # longer shared-key, and every attribute read on the request path gets slower)
            budget = (responder.cfg.timeout or math.inf) - self.reader_waited
            self.reader_waited += conn.wait_for_reader(responder.stall,
                                                       responder.heartbeat_if_due, budget)
            if conn.dead:
                responder.log.warning(
                    "a client read the response of %s too slowly: the loop thread waited "
                    "%.0f s for it (--timeout %g); its connection is closed",
                    request_line(self.req), self.reader_waited, responder.cfg.timeout)
                raise ClientDisconnected()

    def write(self, data: bytes) -> None:
        """Send part of the body (the WSGI `write()` callable, and each item of the iterable)."""
        if type(data) is not bytes:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"response body must be bytes, not {type(data).__name__}")
            data = bytes(data)
        # Each part is the app's progress: --timeout measures its silence, not the age of
        # the response (a stream may run for hours while it keeps producing).
        if self.inline:
            self.responder.heartbeat_if_due()
        else:
            self.req.progress = time.monotonic()
        head = b"" if self.head_sent else self.make_head(None)
        conn = self.conn
        if self.no_body or not data:
            if head:
                conn.send(head, self.inline)
            elif self.ended and data:
                self.responder.log.warning(
                    "the app wrote to the response of %s after its body ended (a write() "
                    "from the iterable's close()?): not sent", request_line(self.req))
            return
        if self.remaining is not None:
            if len(data) > self.remaining:
                data = self.cut(data)
            self.remaining -= len(data)
        self.sent += len(data)
        if self.chunked:
            data = chunk(data)
        if head:
            if len(data) < SMALL_JOIN:
                conn.send(head + data, self.inline)
            else:
                conn.send(head, self.inline)
                conn.send(data, self.inline)
        else:
            conn.send(data, self.inline)

    def end_body(self) -> bool:
        """Finish the body; return whether the connection may be kept alive."""
        if not self.head_sent:
            # nothing was sent: a length of 0, except on HEAD, where the GET's length is not
            # known (a streaming Flask route sends nothing to a HEAD): none is claimed
            self.conn.send(self.make_head(None if self.no_body else 0), self.inline)
        elif self.chunked and not self.no_body:
            self.conn.send(LAST_CHUNK, self.inline)
            # a write() after it (from the iterable's close()) would be read as the start of
            # the next response on the connection: it is dropped (Gunicorn sends it)
            self.no_body = self.ended = True
            return self.keep_alive
        if self.remaining and not self.no_body:
            # less than the promised Content-Length: the client must not wait for the rest
            self.responder.log.warning(
                "the app's response to %s is %d bytes shorter than its Content-Length: its "
                "connection is closed", request_line(self.req), self.remaining)
            return False
        return self.keep_alive


class Responder:
    """Runs the app for the requests the loop hands over, on the loop thread or the app
    threads, and sends the responses."""

    def __init__(self, cfg, app, log, access_log, view, *, max_requests: int,
                 heartbeat_if_due, ready, running=None):
        # At most 30 instance attributes (29 now): CPython 3.11 shares a class's instance-dict
        # keys up to 30, and past them every attribute read on the request path loses its
        # specialization (a 31st cost hello world 2.2% more instructions per request)
        self.cfg = cfg
        self.app = app
        self.log = log
        self.access_log = access_log
        self.view = view  # what hooks receive as `worker`
        self.heartbeat_if_due = heartbeat_if_due  # inline progress keeps the loop alive
        self.ready = ready  # () -> bool: what the readiness probe says
        # the scoreboard's app word of this worker (Scoreboard.app_word): the loop thread's
        # inline app call, which the master counts as a busy thread
        self.running = running if running is not None else [0.0]
        self.loop: LoopSide | None = None  # set by the worker once the loop exists
        self.threads = cfg.threads
        # Whether the loop thread answers a request itself: always with one thread; with app
        # threads while one of them stands by to take the loop over (berth/worker/baton.py)
        self.inline = cfg.threads == 1
        self.baton = Baton(self, self.running) if cfg.threads > 1 else None
        self.keep_alive = cfg.keepalive > 0  # turned off to drain or retire
        self.stall = max(cfg.keepalive, cfg.header_timeout)  # a reader that reads nothing
        # --no-sendfile, or TLS: files go through the iterable path
        self.sendfile = cfg.sendfile and not cfg.certfile
        self.date = DateCache()
        self.environs = Environs(multithread=cfg.threads > 1, multiprocess=cfg.workers > 1,
                                 forwarding=Forwarding.from_config(cfg),
                                 scheme="https" if cfg.certfile else "http",
                                 header_map=cfg.header_map,
                                 request_ids=cfg.log_format == "json",
                                 errors=ErrorStream(log))
        # probe paths answered without the app: request target -> "ready" | "live"
        self.probes = {path.encode("latin-1"): kind
                       for kind, path in (("ready", cfg.ready_path), ("live", cfg.live_path))
                       if path} or None
        self.pre_request = get_hook(cfg, "pre_request")
        self.post_request = get_hook(cfg, "post_request")
        self.work: SimpleQueue = SimpleQueue()
        # thread ident -> running a request on an app thread (a dict store is atomic: no
        # lock, no counter; the loop thread joins the app threads when it hands the loop over)
        self.busy: dict[int, bool] = {}
        self.count = iter(range(1, 1 << 62))  # requests answered: next() is atomic (GIL)
        self.served = 0
        self.max_requests = max_requests or (1 << 62)
        self.retired = False  # --max-requests reached (see retire)
        self.app_exit = False  # the app raised SystemExit (app_exited)
        # Per-thread counters (no lock, no lost update): responses by status class and body
        # bytes, summed by the worker's tick for the scoreboard (`totals`).
        self.local = threading.local()
        self.stats: list[list[int]] = []

    # -- threads -------------------------------------------------------------------------------

    def start(self) -> None:
        """On the loop thread, before it serves: its counters, and the app threads."""
        self._own_stats()
        if self.baton is not None:
            self.baton.leader = threading.get_ident()
        for i in range(self.threads):
            threading.Thread(target=self._app_thread, args=(i,), name=f"berth-app-{i}",
                             daemon=True).start()

    def _own_stats(self) -> None:
        counts = counters.new_counts()
        self.local.counts = counts
        self.stats.append(counts)

    def publish(self, slot: Slot) -> None:
        """The counters and the threads, as the scoreboard keeps them."""
        counters.publish(counters.totals(self.stats), slot)
        slot.queue_depth = self.work.qsize()
        slot.busy_threads = self.busy_threads()
        slot.served = self.served
        baton = self.baton
        if baton is not None:
            slot.switches_slow_call = baton.slow_calls
            slot.switches_app_waits = baton.app_waits

    def count_response(self, req, status: str, sent: int, seconds: float) -> None:
        """Count a response off the fast path (call_app inlines the same)."""
        counters.count(self.local.counts, req.method if type(req) is Request else b"",
                       status, sent, seconds)

    def busy_threads(self) -> int:
        return sum(self.busy.values())

    def _app_thread(self, index: int) -> None:
        self._own_stats()
        self.serve()

    def serve(self) -> None:
        """An app thread's life: answer the requests queued for the app threads, and stand
        by to take the loop over (berth/worker/baton.py). A loop thread that hands the loop
        over comes here too. Never returns: the process exits from the loop's thread."""
        get = self.work.get
        busy = self.busy
        me = threading.get_ident()
        busy[me] = False
        baton = self.baton
        while True:
            if baton is not None and (baton.watcher == me
                                      or not baton.watcher and baton.stand_by(me)):
                item = baton.wait(me, get)
                if item is None:
                    continue
            else:
                item = get()
            if type(item) is not tuple:  # the baton's: run the loop, or stand by
                if item is TAKE_LOOP:
                    baton.take(me)
                else:
                    baton.stand_by(me, summoned=True)
                continue
            conn, req = item
            busy[me] = True
            try:
                self.answer(conn, req, False)
            except BaseException:  # noqa: BLE001 - keep the thread alive
                self.log.error("unexpected error in app thread:\n%s", traceback.format_exc())
            busy[me] = False
            if baton is not None:
                baton.quiet = False  # a request came: stand by again

    def submit(self, conn: Connection, req) -> None:
        """Queue `req` for an app thread (the loop calls this: `loop.to_thread`)."""
        self.work.put((conn, req))

    def queued(self) -> int:
        return self.work.qsize()

    # -- one request after another -------------------------------------------------------------

    def dispatch(self, conn: Connection, req) -> None:
        """Answer `req` (already `conn.active`): inline, or on an app thread. A request whose
        body is still streaming in always goes to a thread: the loop must keep reading it."""
        if self.inline and (type(req) is HttpError or not req.streaming) and (
                self.baton is None or not self.work.qsize()) or (  # (baton.py: `wait`)
                self.probes is not None and type(req) is Request and req.url in self.probes):
            self.answer(conn, req, True)  # a probe never waits behind the app threads
        else:
            self.loop.to_thread(conn, req)

    def answer(self, conn: Connection, req, inline: bool) -> None:
        """Answer `req` and, while they are already waiting, the requests after it. On the
        loop thread, if an app thread takes the loop over meanwhile (berth/worker/baton.py),
        this thread goes on as an app thread, then raises Deposed."""
        if not inline:
            conn.thread = threading.get_ident()
        deposed = False
        while True:
            served = next(self.count)  # atomic under the GIL, unlike `+= 1` across threads
            self.served = served  # (may lag by a request in flight: read by the tick only)
            if served == self.max_requests:
                self.retire(inline)
            if not inline:
                conn.response = None  # (the last request's, until call_app makes this one's)
                req.progress = now = time.monotonic()  # the app's deadline starts now (sweep)
                if req.queued:  # taken up: not to be shed from now on (`shed`, under the lock)
                    lock = conn.lock
                    lock.acquire()
                    req.queued = False
                    lock.release()
                counts = self.local.counts
                counts[QUEUED] += 1
                counts[QUEUED_SUM] += now - req.dispatched  # (waiting for this thread)
            if conn.dead:  # the client left (or berth gave up) while it waited: no app call
                keep = False
            elif type(req) is HttpError:
                self.send_error(conn, req, inline)
                keep = False
            elif inline:  # the loop thread runs the app: the scoreboard sees it busy
                running = self.running
                started = time.monotonic()
                loop = self.loop
                if loop.holding and started - loop.held_since > HOLD_AT_MOST:
                    loop.flush()  # responses held back go out before an app of unknown length
                    started = time.monotonic()  # (a resumed response may have run meanwhile)
                running[0] = started
                try:
                    keep = self.call_app(conn, req, True, started)
                except Exception:
                    if not req.dispatched:
                        raise
                    # taken over: this thread must not go back to the loop's frames
                    self.log.error("unexpected error in app thread:\n%s",
                                   traceback.format_exc())
                    keep = False
                finally:
                    if not req.dispatched:  # (else the loop's new thread owns the word)
                        running[0] = 0.0
                if keep is PAUSED:
                    return
                if req.dispatched:  # an app thread took the loop over: this is one now
                    inline, deposed = False, True
            else:
                keep = self.call_app(conn, req, False, now)
                if keep is PAUSED:
                    return
            req = self.next_request(conn, keep, inline)
            if req is None:
                break
            if inline and (not self.inline or type(req) is not HttpError and req.streaming
                           or self.baton is not None and self.work.qsize()):
                self.loop.to_thread(conn, req)  # the app runs on a thread
                return
        if deposed:
            self.busy[threading.get_ident()] = False
            raise Deposed()

    def next_request(self, conn: Connection, keep: bool, inline: bool):
        """A response is out: return the next waiting request (now active), or None."""
        loop = self.loop
        lock = conn.lock
        wait = False
        lock.acquire()
        try:
            # The keep-alive window starts now, when the response is out (or held for the
            # loop's flush, which starts it again): not at the loop's wake-up (loop.now),
            # older by the app call or by the loop's wait. (Before `active` is cleared: the
            # sweep must not see the connection idle with the request's old time.)
            conn.last_active = now = time.monotonic()
            conn.active = None
            if not inline:
                conn.response = None  # (its environ and request: an idle connection holds none)
            if keep and not conn.dead and not conn.closing:
                # Its client has not read what was sent: the next request waits until it has
                # (resume() goes on), on no thread. An app thread pauses sooner, at LOW_WATER,
                # so that the next response does not block it in send() at HIGH_WATER: a few
                # clients that pipeline requests and read nothing held every app thread until
                # the write stall let them go, and the worker answered no one meanwhile.
                if conn.out_size > (HIGH_WATER if inline else LOW_WATER):
                    conn.paused_response = WAIT_FOR_READER
                    if inline:
                        conn.reading = False
                    wait = True
                elif conn.pending:
                    req = conn.pending.popleft()
                    conn.active = req
                    if not inline:
                        req.dispatched = now  # (not loop.now: up to a tick old here)
                    if type(req) is Request and req.expect_continue:
                        req.expect_continue = False
                        lock.release()
                        try:
                            conn.send(CONTINUE, inline)
                        except ClientDisconnected:
                            pass
                        finally:
                            lock.acquire()
                    return req
                elif conn.eof:
                    conn.closing = True
            else:
                conn.closing = True
            attend = conn.closing or not conn.reading or conn.parser.current is not None
        finally:
            lock.release()
        if wait:
            if inline:
                conn.update_events()
            else:
                loop.post(conn)  # (attend: it stops reading, and waits to write)
            return None
        if not loop.accepting:
            attend = True  # the loop re-checks whether to take new connections again
        if attend:
            if inline:
                loop.attend(conn)
            else:
                loop.post(conn)
        return None

    def shed(self, conn: Connection, req, now: float) -> None:
        """The loop's sweep, in a drain (out of service after an overrun, or stopping): `req`
        has waited for an app thread past --timeout, every one of them taken (hung, as like
        as not). It never reached the app, so it gets 503 now, which a client may retry,
        instead of a connection closed when the drain gives up."""
        with conn.lock:
            if not req.queued or conn.dead or conn.out:  # (taken up meanwhile, or mid-reply)
                return
            req.queued = False
            conn.dead = True  # (an app thread that takes it up later makes no app call)
        conn.send_last(error_response(503, date=self.date))
        took = now - req.dispatched
        self.count_response(req, "503", 0, took)
        access_log = self.access_log
        if access_log is not None:
            try:
                environ = self.environs.for_request(conn.environ, req)
            except Exception:  # noqa: BLE001 - (a target only an app call would have refused)
                environ = None
            if environ is not None:
                access_log.lines.append(access_log.format(
                    environ, "503 Service Unavailable", 0, took, ()))
        self.log.warning("%s waited %.1f s for an app thread in a worker that is draining "
                         "(--timeout %g): answered 503, the app never saw it",
                         request_line(req), now - req.dispatched, self.cfg.timeout)
        conn.close()

    def retire(self, inline: bool) -> None:
        """--max-requests reached (or the app raised SystemExit): from this response on,
        every response closes its connection, and no new connection is taken (the master
        starts the replacement and then stops this worker; the requests in progress are
        finished)."""
        self.keep_alive = False
        self.retired = True  # (the loop's accept() looks at it before its wake-up arrives)
        if inline:
            self.loop.stop_accepting_for_good()
        else:
            self.loop.post(None)  # the loop thread does it

    # -- one request -----------------------------------------------------------------------------

    def call_app(self, conn: Connection, req: Request, inline: bool, started: float):
        """Run the app for one request; return keep-alive (bool), or PAUSED when the loop
        thread goes on with the body once the client has read what is queued. `started`:
        the caller's clock, just read: where the response's duration starts."""
        if self.probes is not None and req.url in self.probes:
            return self.answer_probe(conn, req, inline)
        resp = Response(self, conn, req, inline)
        try:
            environ = self.environs.for_request(conn.environ, req)
        except Exception:  # noqa: BLE001 - a target the parser let through: 400, close
            self.log.debug("cannot make an environ for %r", req.url)
            self.send_error(conn, HttpError(400, "bad request target"), inline)
            return False
        resp.environ = environ
        environ["wsgi.early_hints"] = resp  # (its __call__: early_hints, see there)
        if "HTTP_UPGRADE" in environ:  # for a WebSocket library (berth/worker/hijack.py)
            app_socket = conn.app_socket
            if app_socket is None:
                app_socket = conn.app_socket = AppSocket(conn, self)
            environ["gunicorn.socket"] = app_socket
        if not inline:
            conn.response = resp
        if self.pre_request is not None or self.post_request is not None:
            resp.view = RequestView(environ, conn.sock.getpeername)  # (called if a hook asks)
            resp.started = started
            try:
                if inline and self.baton is not None:  # (a hook is app code: baton.py)
                    self.baton.lead(resp, self.request_hook, "pre_request", resp.view)
                    inline = resp.inline
                else:
                    self.request_hook("pre_request", resp.view)
            except Exception:  # noqa: BLE001 - as in Gunicorn: a 500, and no app call
                keep = self.app_error(conn, resp, resp.inline)
                self.conclude(resp, None)
                return keep
            started = time.monotonic()  # (the hook's time is not the response's)
        resp.started = started
        result = None
        try:
            if inline and self.baton is not None:
                result = self.baton.lead(resp, run_app, self.app, environ, resp)
                inline = resp.inline  # False: an app thread took the loop over meanwhile
            else:
                result = self.app(environ, resp.start_response)
            if type(result) is list and not resp.head_sent:
                # (join refuses a part that is not bytes-like before the head is made: 500)
                body = (result[0] if len(result) == 1 and type(result[0]) is bytes
                        else b"".join(result))
                # (an empty body on HEAD: the GET's length is not known, so none is claimed)
                head = resp.make_head(len(body) if body or not resp.no_body else None)
                if resp.no_body or not body:
                    resp.send_whole(head)
                else:
                    if resp.remaining is not None and len(body) > resp.remaining:
                        body = resp.cut(body)
                    resp.remaining -= len(body)
                    resp.sent = len(body)
                    if len(body) < SMALL_JOIN:
                        resp.send_whole(head + body)
                    else:
                        conn.send(head, inline)
                        conn.send(body, inline)
                keep = resp.end_body()
            elif inline and type(result) is not FileWrapper or resp.first is not None:
                keep = self.pump_first(resp, result)
            else:
                keep = self.send_body(resp, result)
            if keep is PAUSED:
                return keep
        except ClientDisconnected:
            self.log.debug("client disconnected: %s", request_line(req))
            keep = False
        except BaseException:  # noqa: BLE001 - the app's error: 500, never a dead worker
            # (SystemExit: app_exited; KeyboardInterrupt, CancelledError and the like are the
            # app's own too: berth's signals never raise in it, see process.WORKER_SIGNALS)
            keep = self.app_error(conn, resp, resp.inline)
        else:
            if self.post_request is None and not req.streaming:
                # conclude(), inlined for the common case: every request comes here
                if type(result) is not list and not resp.closed:
                    if resp.inline and self.baton is not None:  # (app code: baton.py)
                        self.baton.lead(resp, self.close_iterable, result)
                    else:
                        self.close_iterable(result)
                # count_response(), inlined
                took = time.monotonic() - resp.started
                counts = self.local.counts
                counts[METHOD_ROW.get(req.method, OTHER_ROW) + (ord(resp.status[0]) & 15)] += 1
                counts[BYTES] += resp.sent
                counts[DURATIONS + bisect_left(DURATION_BOUNDS, took)] += 1
                counts[DURATION_SUM] += took
                access_log = self.access_log
                if access_log is not None:
                    access_log.lines.append(access_log.format(
                        environ, resp.status, resp.sent, took, resp.headers))
                resp.environ = None  # (a cycle, see conclude; the response is out: no 504)
                return keep
        if result is None:  # (taking its first part raised: see run_app)
            result = resp.result
        if taken(conn):  # the app took the socket over
            self.conclude(resp, result, counted=False)  # (berth knows not what it answered)
            conn.app_socket.close_taken()
            return False
        self.conclude(resp, result)
        return keep

    def finish_app(self, resp: Response, result) -> None:
        """The app's part of ending a response: the iterable's close(), the post_request hook."""
        if not resp.closed:
            self.close_iterable(result)
        req = resp.req
        if req.streaming and not req.complete:
            req.body_stream.discard()
        if self.post_request is not None:
            self.request_hook("post_request", resp.view, resp.environ,
                              ResponseView(resp.status, resp.headers, resp.sent, resp.chunked))

    def request_hook(self, name: str, *args) -> None:
        """The pre_request or post_request hook; a SystemExit in it retires the worker, as
        the app's does (app_exited). An exception in pre_request is raised on: the request
        fails with it (500, the app not called), as in Gunicorn, whose workers call the hook
        inside the request's error handling (a check done there must not be skipped); one in
        post_request is logged (call_hook) and the response stands."""
        try:
            if name != "pre_request":
                call_hook(self.cfg, name, self.view, *args)
            elif self.pre_request is not None:  # (only post_request may be set)
                self.pre_request(self.view, *args)
                args[0].apply_header_changes()  # (as Gunicorn: req.headers make the environ)
        except SystemExit:
            self.log.exception("the %s hook raised SystemExit", name)
            self.app_exited()

    def answer_probe(self, conn: Connection, req: Request, inline: bool) -> bool:
        """Readiness and liveness, answered without the app: ready is 503 once the server is
        shutting down (SIGTERM, including --shutdown-delay) or this worker drains."""
        status, body = probe_answer(self.probes[req.url], self.ready())
        if req.streaming:
            req.body_stream.discard()
        resp = Response(self, conn, req, inline)
        resp.status = status
        resp.headers = list(PROBE_HEADERS)
        head = resp.make_head(len(body))
        conn.send(head if resp.no_body else head + body, inline)
        resp.remaining = 0  # (the whole body went: the connection is kept)
        self.count_response(req, status, 0, 0.0)
        return resp.end_body()

    def conclude(self, resp: Response, result, lead: bool = True, counted: bool = True) -> None:
        """The response is over (sent, failed or abandoned): close the iterable, call the
        post_request hook (app code: with app threads, the loop thread runs it under the
        baton's lead unless `lead` is False), count and log it (unless not `counted`: the app
        took the socket over, and berth does not know what it answered)."""
        if lead and resp.inline and self.baton is not None:
            self.baton.lead(resp, self.finish_app, resp, result)
        else:
            self.finish_app(resp, result)
        if not resp.overrun and counted:  # (else: the 504 is counted, see concluded_overrun)
            self.count_and_log(resp, resp.status or "500", resp.sent, resp.headers or ())
        # The environ holds `resp` (its wsgi.early_hints), and `resp` the environ: a cycle
        # that would wait for the garbage collector (and a frozen or disabled one never
        # comes). Broken on the environ's side: the loop may still log a 504 with it
        resp.environ["wsgi.early_hints"] = no_early_hints

    def concluded_overrun(self, resp: Response) -> None:
        """The loop answered 504 for `resp`'s request, past --timeout (and marked it
        `overrun`): that is its response, counted and logged now (the app may return later,
        or never), with none of the app's bytes."""
        self.count_and_log(resp, "504 Gateway Timeout", 0, ())

    def count_and_log(self, resp: Response, status: str, sent: int, headers) -> None:
        took = time.monotonic() - resp.started if resp.started else 0.0
        self.count_response(resp.req, status, sent, took)
        access_log = self.access_log
        if access_log is not None:
            access_log.lines.append(access_log.format(resp.environ, status, sent, took,
                                                      headers))

    def send_body(self, resp: Response, result):
        """Send an iterable body (not a list): a real file with sendfile, else part by part."""
        conn = resp.conn
        if type(result) is FileWrapper and not resp.head_sent and self.sendfile:
            span = result.sendfile_span()
            if span is not None:
                fd, offset, count = span
                head = resp.make_head(count)  # a known length: framed by Content-Length
                if count > resp.remaining:  # (the app's own Content-Length is shorter)
                    resp.warn_overlong()
                    count = resp.remaining
                conn.send(head, resp.inline)
                if not resp.no_body and count:
                    conn.sendfile(fd, offset, count, resp.inline)
                    resp.sent = count
                    resp.remaining -= count
                return resp.end_body()
        baton = self.baton
        if resp.inline and baton is not None:  # (an __iter__ may do the app's work)
            it = baton.lead(resp, iter, result)
        else:
            it = iter(result)
        if resp.inline and (baton is None or not baton.hand_over(resp)):
            return self.pump(resp, result, it)
        return self.send_rest(resp, it)

    def send_rest(self, resp: Response, it):
        """Send the body's parts as an app thread does: each send waits for a slow reader."""
        write = resp.write
        for data in it:
            if data:
                write(data)
            else:
                resp.progress()
        return resp.end_body()

    def pump_first(self, resp: Response, result):
        """pump(), with the first part sent by hand: a framework's response (Flask, Django)
        is an iterable of one part, which goes out with the head in one send, without
        write()'s layers. Measured: 4.7k fewer instructions per Flask request.

        With app threads, taking a part is app code that may wait (a generator): it runs
        under the baton's lead (berth/worker/baton.py), and a body of more than one part, a
        stream, is handed over: it goes on as on an app thread, and the loop goes to one."""
        baton = self.baton
        if baton is None:
            it = iter(result)
            for data in it:
                if data:
                    break
                resp.progress()
            else:
                return resp.end_body()
        else:  # (an __iter__ may do the app's work: Django's async streaming does)
            first = resp.first  # (taken in the app's lead: run_app)
            if first is None:
                first = baton.lead(resp, start_body, result, resp)
            it, data = first
            if data is None:
                return resp.end_body()
            if not resp.inline:  # an app thread took the loop over meanwhile
                resp.write(data)
                return self.send_rest(resp, it)
        if type(data) is bytes and not resp.head_sent:
            conn = resp.conn
            head = resp.make_head(None)
            if resp.no_body:
                conn.send(head, True)
            else:
                remaining = resp.remaining
                if remaining is not None:
                    if len(data) > remaining:
                        data = resp.cut(data)
                    resp.remaining = remaining - len(data)
                resp.sent = len(data)
                if resp.chunked:
                    data = chunk(data)
                if len(data) < SMALL_JOIN:
                    if remaining == len(data):  # the whole body (Content-Length): no stream
                        resp.send_whole(head + data)
                    else:
                        conn.send(head + data, True)
                else:
                    conn.send(head, True)
                    conn.send(data, True)
        else:
            resp.write(data)
        if baton is not None:
            data = baton.lead(resp, self.next_or_close, resp, it, result)
            if data is None:  # one part: the common case
                return resp.end_body()
            # a stream: handed over (or already taken), unless no app thread is surely idle,
            # and then the loop thread pumps it
            handed = not resp.inline or baton.hand_over(resp)
            resp.write(data)
            if handed:
                return self.send_rest(resp, it)
        if resp.conn.out_size > HIGH_WATER:
            resp.conn.paused_response = (resp, result, it)
            return PAUSED
        return self.pump(resp, result, it)

    def pump(self, resp: Response, result, it):
        """On the loop thread: take body parts from the app while the write-behind queue has
        room; when it is full, stop (PAUSED) and go on when the client has read it
        (`resume`). The loop never waits for a slow reader, and the app's iterator stays
        on the one thread it started on (thread-locals and contextvars stay right)."""
        conn = resp.conn
        write = resp.write
        for data in it:
            if data:
                write(data)
                if conn.out_size > HIGH_WATER:
                    conn.paused_response = (resp, result, it)
                    return PAUSED
            else:
                resp.progress()
        return resp.end_body()

    def resume(self, conn: Connection) -> None:
        """The client read what was queued (or is gone): go on with a paused response, or
        with the requests after the last one answered (WAIT_FOR_READER)."""
        resp, result, it = conn.paused_response
        conn.paused_response = None
        if resp is None:
            keep = not conn.dead
        else:
            keep = self.pump_paused(conn, resp, result, it)
            if keep is PAUSED:
                return
        req = self.next_request(conn, keep, True)
        if req is not None:
            if self.baton is None:
                self.dispatch(conn, req)
            else:  # (the loop's own frames are below: never answered inline, see baton.py)
                self.loop.to_thread(conn, req)

    def pump_paused(self, conn: Connection, resp: Response, result, it):
        """resume()'s part for a paused response: the rest of its body, then its end."""
        try:
            keep = self.pump(resp, result, it)
            if keep is PAUSED:
                return keep
        except ClientDisconnected:
            keep = False
        except BaseException:  # noqa: BLE001 - the app's (see call_app)
            keep = self.app_error(conn, resp, True)
        self.conclude(resp, result, lead=False)  # (never taken over here: see resume)
        return keep

    def next_or_close(self, resp: Response, it, result):
        """first_part(it), and at the body's end the iterable's close() in the same lead of
        the baton (one lead less per request, see run_app), unless a last chunk is still to
        be sent: Gunicorn sends it before close() too."""
        data = first_part(it, resp)
        if data is None and not resp.chunked:
            resp.closed = True
            self.close_iterable(result)
        return data

    def close_iterable(self, result) -> None:
        if type(result) is list:
            return
        close = getattr(result, "close", None)
        if close is not None:
            try:
                close()
            except BaseException:  # noqa: BLE001 - the app's (see call_app)
                self.log.exception("error closing the app's response iterable")
                if sys.exc_info()[0] is SystemExit:
                    self.app_exited()

    # -- errors ----------------------------------------------------------------------------------

    def app_error(self, conn: Connection, resp: Response, inline: bool) -> bool:
        """The app raised (or broke the protocol): log it, answer 500 if nothing was sent
        (else the connection just closes). Never a dead worker."""
        kind = sys.exc_info()[0]
        if kind is StopIteration and taken(conn):
            return False  # the app took the socket over, and ends so (Flask-Sock, as Gunicorn)
        self.log.exception("Error handling request %s", request_line(resp.req))
        if kind is SystemExit:
            self.app_exited()
        if not resp.head_sent:
            resp.status = "500 Internal Server Error"
            resp.headers = []
            try:
                head_only = resp.req.method == b"HEAD"
                conn.send(error_response(500, head_only=head_only, date=self.date), inline)
            except ClientDisconnected:
                pass
        return False

    def app_exited(self) -> None:
        """The app raised SystemExit (sys.exit() in a view): it wants this process gone.
        Gunicorn's worker dies on the spot, with every request in it (on an app thread, berth
        would have left the client waiting); berth retires it as --max-requests does: this
        response is a 500, the others in flight finish, the master starts a replacement."""
        self.log.error("the app raised SystemExit: this worker finishes its requests in "
                       "flight and is replaced")
        self.app_exit = True  # (the scoreboard tells the master why it retires)
        self.retire(False)  # (from any thread: the loop takes it from its inbox)

    def send_error(self, conn: Connection, err: HttpError, inline: bool) -> None:
        """A request berth refuses: its error response, then the connection lingers."""
        try:
            conn.send(error_response(err.status, date=self.date), inline)
        except ClientDisconnected:
            pass
        self.count_response(err, str(err.status), 0, 0.0)
        conn.lingering = time.monotonic() + LINGER  # read and drop what the client still sends


def run_app(app, environ, resp: Response):
    """The app call, on the loop thread with app threads (under the baton's lead): for an
    iterable body (a framework's response) it also takes the iterator and the first part, in
    the same lead: a lead costs about 4k instructions (callgrind), 1% of a Flask request."""
    result = app(environ, resp.start_response)
    if type(result) is not list and type(result) is not FileWrapper:
        resp.result = result  # (for conclude, should taking the first part raise)
        resp.first = start_body(result, resp)
    return result


def start_body(result, resp: Response) -> tuple:
    """The body's iterator and its first non-empty part (None if there is none)."""
    it = iter(result)
    return it, first_part(it, resp)


def first_part(it, resp: Response):
    """The next non-empty part of a body, or None at its end (an empty one is progress)."""
    for data in it:
        if data:
            return data
        resp.progress()
    return None


def request_line(req: Request) -> str:
    """`GET /path HTTP/1.1`, for log lines."""
    return f"{req.method.decode('latin-1')} {req.url.decode('latin-1')} HTTP/{req.version}"

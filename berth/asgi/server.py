"""The ASGI worker's event loop: what `berth.worker.process.Worker` asks of a loop.

`AsgiLoop` runs one asyncio loop (uvloop when `--asgi-loop` says so), serves the worker's
listeners with `HttpProtocol`, and gives the process room what the WSGI loop gives it: `run`
(with the worker's tick every TICK seconds), `alive`, `draining`, `conns`, `sweep` (each
connection's deadlines, the requests in flight), `stop_listening`, and the responder's
`date`, `served` and `publish` (the counters). So the heartbeat, the scoreboard, signals,
--max-requests, the drain and the graceful timeout are the WSGI worker's own code.

Accepting is berth's, as in the WSGI loop (not the event loop's server): a few connections per
wake-up, at --worker-connections the oldest connections with no request in progress close to
make room and, with none, accepting pauses until one ends (the others wait in the listen
queue, for this worker or its siblings); out of file descriptors (EMFILE) it sheds idle
connections and backs off instead of spinning; a drain first takes what waits in the queue;
with more than one worker, a burst is balanced across them (berth.worker.admission).

Deadlines, checked every tick, as the WSGI loop keeps them: a request head not complete within
--header-timeout of its first bytes gets 408, and a new connection that sends nothing that long
is closed; a body that pauses longer than --header-timeout gets 408 before the app is called,
and is failed after (the app's receive() gets http.disconnect); an idle keep-alive connection
closes after --keepalive (and at once when draining); a client that reads nothing of what waits
for it for --keepalive seconds (at least --header-timeout) is dropped, with what waits, as the
WSGI loop drops it (a closed connection counts until its transport has sent what it held).
"""

from __future__ import annotations

import asyncio
import socket
import time

from berth.asgi.protocol import AsgiParser, Cycle, HttpProtocol, request_scope
from berth.forwarded import Forwarding
from berth.hooks import RequestView, ResponseView, call_hook, get_hook
from berth.http.framing import DateCache
from berth.http.parser import HttpError, Request
from berth.scoreboard import Slot
from berth.trust import TrustList
from berth.worker import counts as counters
from berth.worker.admission import (
    ACCEPT_BACKOFF,
    ACCEPT_BATCH,
    DEFER,
    OUT_OF_RESOURCES,
    Admission,
    AdmissionState,
)
from berth.worker.loop import DRAIN_IDLE, SILENT_AFTER, TICK, body_too_slow, retime_body
from berth.wsgi import RequestIds


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """--asgi-loop: auto (uvloop when installed), asyncio or uvloop."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def peer_of(cycle: Cycle):
    """The connection's peer address as the transport took it at accept (for hooks' `req`)."""
    return cycle.proto.transport.get_extra_info("peername")


class AsgiLoop(Admission):
    """See the module docstring."""

    def __init__(self, cfg, listeners: list[socket.socket], log, app, access_log, *,
                 signal_fd: int, on_signals, max_requests: int, on_retire, ssl_context=None,
                 loop: asyncio.AbstractEventLoop, view=None, ready):
        self.admit = AdmissionState(log)
        self.cfg = cfg
        self.listeners = listeners
        self.log = log
        self.app = app
        self.access_log = access_log
        self.signal_fd = signal_fd
        self.on_signals = on_signals
        self.max_requests = max_requests or (1 << 62)
        self.on_retire = on_retire
        self.ssl_context = ssl_context  # berth.worker.tls.Contexts, or None: plain HTTP
        self.loop = loop
        self.conns: set[HttpProtocol] = set()
        self.active: set[Cycle] = set()
        self.websockets: set = set()  # open WebSocket sessions (berth.asgi.websocket)
        # what a WebSocket app that returns without accepting gets (Gunicorn's or Uvicorn's)
        self.websocket_unaccepted = cfg.decisions.websocket_unaccepted
        self.accepting = False
        self.connecting = 0  # accepted sockets whose protocol is not made yet (open_conns)
        self.handshakes: set[Handshake] = set()  # TLS handshakes in progress (sheddable)
        self.date = DateCache()
        self.forwarding = Forwarding.from_config(cfg)
        # (one worker's parsers, one configuration: Uvicorn's worker classes keep names with _)
        AsgiParser.keep_underscored = cfg.decisions.underscore_names == "uvicorn"
        self.proxy_mode = cfg.proxy_protocol
        self.proxy_trust = TrustList.parse(cfg.proxy_allow_ips, "proxy_allow_ips")
        self.max_conns = cfg.worker_connections
        self.body_budget = cfg.body_buffer_size  # (bodies waiting on a connection: pipeline_full)
        self.root_path = cfg.root_path.rstrip("/")
        self.scheme = "https" if ssl_context is not None else "http"
        self.state: dict | None = None  # the lifespan state (scope["state"] copies it)
        self.watch = None  # the LoopWatch (berth.asgi.watchdog)
        self.counts = counters.new_counts()
        # --log-format json: each request's id, in its scope as "berth.request_id" for the
        # app and its access line, as in the WSGI environ
        self.request_ids = RequestIds() if cfg.log_format == "json" else None
        self.served = 0
        self.draining = False
        self.drain_began = 0.0
        self.retired = False
        self.keep_alive = True
        self._alive = True
        self._stopped: asyncio.Future | None = None
        self.grace = cfg.asgi_disconnect_grace_period
        # probe paths answered without the app (HttpProtocol.answer_probe): target -> kind
        self.probes = {path.encode("latin-1"): kind
                       for kind, path in (("ready", cfg.ready_path), ("live", cfg.live_path))
                       if path} or None
        self.ready = ready  # what the readiness probe says (berth.worker.process Worker.ready)
        self.view = view  # what hooks get as `worker`
        self.pre_request = get_hook(cfg, "pre_request")
        self.post_request = get_hook(cfg, "post_request")
        # connections whose writes of this loop iteration wait (HttpProtocol.write): sent
        # together by flush_held, the first callback of the next iteration
        self.holding: list[HttpProtocol] = []

    # -- the worker's side --------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._alive

    @alive.setter
    def alive(self, value: bool) -> None:
        self._alive = value
        if not value:  # (SIGINT, SIGQUIT: no connection is taken while the worker stops)
            self.set_accepting(False)
            self.withdraw()
            if self._stopped is not None and not self._stopped.done():
                self._stopped.set_result(None)

    def setup(self) -> None:
        # (non-blocking from here: the drain's accept() takes the backlog until the queue is
        # empty, and a drain asked for during the lifespan startup begins once it completes)
        for lsock in self.listeners:
            lsock.setblocking(False)
        self.loop.add_reader(self.signal_fd, self.on_signals)

    def run(self, tick, monotonic) -> None:
        """Serve until `alive` turns false, calling `tick(now)` every TICK seconds."""
        self.loop.run_until_complete(self._serve(tick, monotonic))

    async def _serve(self, tick, monotonic) -> None:
        loop = self.loop
        self._stopped = loop.create_future()
        if not self._alive:
            return
        self.set_accepting(True)

        def beat() -> None:
            if self._alive:
                tick(monotonic())
                loop.call_later(TICK, beat)

        loop.call_later(TICK, beat)
        await self._stopped

    def _protocol(self) -> HttpProtocol:
        return HttpProtocol(self)

    # -- accepting ----------------------------------------------------------------------------

    def set_accepting(self, accepting: bool) -> None:
        if accepting == self.accepting or (accepting and (self.draining or self.retired)):
            return
        self.accepting = accepting
        for lsock in self.listeners:
            if accepting:
                self.loop.add_reader(lsock.fileno(), self._accept, lsock)
            else:
                self.loop.remove_reader(lsock.fileno())
        self.publish_conns()

    def _accept(self, lsock: socket.socket) -> None:
        now = time.monotonic()
        # (every worker's reader wakes: a deferring one's siblings still listen)
        if self.admit.conn_words is not None and self.defer(now):
            self.loop.call_later(DEFER, self.deferred)
            return
        self.accept_some(lsock, now)
        self.publish_conns()

    def accept_some(self, lsock: socket.socket, now: float) -> None:
        for i in range(ACCEPT_BATCH):
            # (room is made only for a connection known to wait, the first of a wake-up: the
            # next wake-up comes back for the rest; a TLS handshake in progress counts)
            if self.open_conns() >= self.max_conns:
                if i:
                    return
                if not self.make_room(now):
                    self.set_accepting(False)  # until one ends (forget) or a tick makes room
                    return
            try:
                sock, _ = lsock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in OUT_OF_RESOURCES:
                    self.out_of_descriptors(exc, now)
                else:
                    self.log.warning("accept failed: %s", exc)
                return
            self.take(sock)

    def open_conns(self) -> int:
        return len(self.conns) + self.connecting

    def take(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        handshake = None
        if self.ssl_context is None:
            transport_for = self.loop.connect_accepted_socket(self._protocol, sock)
        else:
            transport_for = self.loop.connect_accepted_socket(
                self._protocol, sock, ssl=self.ssl_context.get(time.monotonic()),
                ssl_handshake_timeout=self.cfg.header_timeout)
            handshake = Handshake()
            self.handshakes.add(handshake)
        self.connecting += 1
        task = self.loop.create_task(self._connected(transport_for, sock, handshake))
        if handshake is not None:
            handshake.task = task

    async def _connected(self, transport_for, sock: socket.socket, handshake) -> None:
        try:
            await transport_for
        except (OSError, asyncio.TimeoutError) as exc:  # (a failed or stalled TLS handshake)
            self.log.debug("connection not established: %r", exc)
            sock.close()
        except asyncio.CancelledError:  # (shed at --worker-connections: Handshake.close)
            sock.close()
        finally:
            self.connecting -= 1
            if handshake is not None:
                self.handshakes.discard(handshake)
            self.conns_changed()  # (at --worker-connections: a handshake failed, room made)

    def sheddable(self):
        """Connections with no request in progress: idle keep-alive ones, and, as the WSGI
        loop sheds them, new ones and TLS handshakes silent for SILENT_AFTER (a preconnect, a
        slowloris). A connection that has sent nothing yet may be about to: not idle before."""
        now = time.monotonic()
        idle = [p for p in self.conns
                if p.idle() and (not p.head_started or now - p.last_active > SILENT_AFTER)]
        if self.handshakes:
            idle += [h for h in self.handshakes if now - h.last_active > SILENT_AFTER]
        return idle

    def out_of_descriptors(self, exc: OSError, now: float) -> None:
        super().out_of_descriptors(exc, now)
        self.loop.call_later(ACCEPT_BACKOFF, self.may_accept_again)

    def may_accept_again(self) -> None:
        now = time.monotonic()
        if self.admit.defer_until and not self.end_deferral(now):
            return  # (`deferred` comes back at its end)
        if (not self.accepting and now >= self.admit.accept_resume
                and self.open_conns() < self.max_conns):
            self.set_accepting(True)

    def deferred(self) -> None:
        """DEFER after a deferral began (a timer may fire a little early)."""
        left = self.admit.defer_until - time.monotonic()
        if left > 0:
            self.loop.call_later(left, self.deferred)
        else:
            self.may_accept_again()

    def hold(self, proto: HttpProtocol) -> None:
        if not self.holding:
            self.loop.call_soon(self.flush_held)
        self.holding.append(proto)

    def flush_held(self) -> None:
        holding, self.holding = self.holding, []
        for proto in holding:
            try:
                proto.flush()
            except Exception:  # noqa: BLE001 - one broken transport must not strand the rest
                self.log.exception("internal error sending on a connection; closing it")
                proto.close()

    def forget(self, proto: HttpProtocol) -> None:
        """A connection is over."""
        self.conns.discard(proto)
        self.conns_changed()

    def conns_changed(self) -> None:
        """The open connections changed: accept again if that made room, else tell the
        siblings the count."""
        if not self.accepting and self.open_conns() < self.max_conns:
            self.may_accept_again()
        elif self.admit.conn_words is not None:  # (no scoreboard, no siblings: none to publish)
            self.publish_conns()

    def publish(self, slot: Slot) -> None:
        counters.publish(self.counts, slot)
        slot.websockets_open = len(self.websockets)
        watch = self.watch
        if watch is not None:
            slot.loop_blocked = watch.blocked
            slot.loop_busy = watch.busy_ratio()
        slot.served = self.served
        slot.busy_threads = 0  # (no app threads: an event loop's load is its busy share)
        slot.queue_depth = 0

    def sweep(self, now: float) -> tuple[int, Request | None]:
        cfg = self.cfg
        header_timeout = cfg.header_timeout
        min_rate = cfg.body_min_rate
        grace = cfg.body_grace
        keepalive = cfg.keepalive
        oldest = None
        for cycle in self.active:
            if oldest is None or cycle.when < oldest.when:
                oldest = cycle
        for session in list(self.websockets):
            session.sweep(now, cfg.ws_ping_interval, cfg.ws_ping_timeout)
        write_stall = max(keepalive, header_timeout)
        for proto in list(self.conns):
            if proto.ws is not None or proto.write_stalled(now, write_stall) or proto.closed:
                continue
            cycle = proto.cycle
            if cycle is not None or proto.pending:
                current = proto.parser.current
                if (current is not None and current.streaming and cycle is not None
                        and cycle.req is current and not current.complete):
                    # the app has not taken what came, or has not asked for the body yet
                    # (Expect: 100-continue goes out at its first receive()): the pause is
                    # the server's, not the client's
                    if "body" in proto.read_paused_for or current.expect_continue:
                        proto.last_active = now
                        retime_body(current)
                    elif now - proto.last_active > header_timeout:
                        self.log.debug("request body stalled; closing")
                        proto.close()
                    elif min_rate and body_too_slow(current, proto.parser.body_received, now,
                                                    grace, min_rate):
                        self.log.debug("request body slower than --body-min-rate; closing")
                        proto.close()
                continue
            parser = proto.parser
            if proto.head_started:  # a head is awaited, since its first bytes or the accept
                if now - proto.head_started > header_timeout:
                    if parser.in_head:
                        proto.reject(HttpError(408, "request head timed out"))
                    else:  # (nothing sent at all: nothing to answer)
                        if proto.preface:  # a PROXY header begun, then nothing more
                            proto.truncated_preface(header_timeout)
                        proto.close()
            elif parser.current is not None:  # a body: no pause longer than the timeout
                if now - proto.last_active > header_timeout:
                    proto.reject(HttpError(408, "request body timed out"))
                elif min_rate and body_too_slow(parser.current, parser.body_received, now,
                                                grace, min_rate):
                    proto.reject(HttpError(408, "request body slower than --body-min-rate"))
            elif self.draining:  # idle a second since the drain began, at least: a client
                # reusing one then gets its answer (with Connection: close), not a close
                # under its request (as berth.worker.loop)
                if now - max(proto.last_active, self.drain_began) > min(DRAIN_IDLE, keepalive):
                    proto.close()
            elif now - proto.last_active > keepalive:
                proto.close()
        if not self.accepting:
            self.room_at_tick(now, not (self.draining or self.retired))
            self.may_accept_again()
        return len(self.active), oldest.req if oldest is not None else None

    def stop_listening(self, take_backlog: bool) -> None:
        """Drain: take what already waits in the kernel's queue, stop listening; idle
        keep-alive connections are closed a second after (sweep); the connections with a
        request finish it."""
        take_backlog = take_backlog and not self.retired
        self.set_accepting(False)
        self.withdraw()
        self.draining = True
        self.drain_began = time.monotonic()
        self.keep_alive = False
        for lsock in self.listeners:
            while take_backlog:
                try:
                    sock, _ = lsock.accept()
                except OSError:  # (BlockingIOError: the queue is empty)
                    break
                self.take(sock)
            lsock.close()
        for session in list(self.websockets):
            session.going_away()

    # -- the protocols' side ------------------------------------------------------------------

    def scope_for(self, proto: HttpProtocol, req: Request) -> dict:
        scheme = self.scheme
        client = proto.client
        root_path = self.root_path
        if req.forwarded:  # a header a trusted proxy may set: the WSGI rules, on an environ
            environ = dict(req.headers)
            environ.update({"wsgi.url_scheme": scheme, "PATH_INFO": "", "SCRIPT_NAME": ""})
            self.forwarding.apply(environ, req, proto.trusted, self.cfg.header_map, False,
                                  client[0] if proto.proxied else None)
            scheme = environ["wsgi.url_scheme"]
            if "REMOTE_ADDR" in environ:
                client = (environ["REMOTE_ADDR"], int(environ["REMOTE_PORT"]))
        scope = request_scope(proto, req, root_path, scheme, self.state)
        if client is not proto.client:
            scope["client"] = client
        if self.request_ids is not None:
            scope["berth.request_id"] = self.request_ids.of(req.headers.get("HTTP_X_REQUEST_ID"))
        return scope

    def count(self, method: bytes, status: str, sent: int, seconds: float) -> None:
        counters.count(self.counts, method, status, sent, seconds)

    def started(self, cycle: Cycle) -> bool:
        """A request goes to the app: the pre_request hook, as Gunicorn's ASGI worker calls
        it (its `req` is made from the request as a WSGI environ would have it). False when
        the hook raised: logged, and the request fails with it (500, the app not called), as
        in Gunicorn."""
        if self.pre_request is not None:
            try:
                self.pre_request(self.view,
                                 RequestView(self.environ_for_log(cycle), peer_of(cycle)))
            except Exception:  # noqa: BLE001 - the request's failure, not the worker's
                self.log.exception("Error handling request %s: the pre_request hook raised",
                                   cycle.proto.describe(cycle.req))
                return False
        return True

    def finished(self, cycle: Cycle) -> None:
        """A response is over: count it, log it, the post_request hook, --max-requests."""
        req = cycle.req
        status = cycle.status or "500"
        took = time.monotonic() - cycle.when
        counters.count(self.counts, req.method, status, cycle.sent, took)
        access_log = self.access_log
        environ = None
        if access_log is not None:
            environ = self.environ_for_log(cycle)
            access_log.lines.append(access_log.format(
                environ, status, cycle.sent, took, cycle.access_headers or ()))
        if self.post_request is not None:
            environ = environ or self.environ_for_log(cycle)
            call_hook(self.cfg, "post_request", self.view, RequestView(environ, peer_of(cycle)),
                      environ, ResponseView(status, cycle.access_headers, cycle.sent,
                                            cycle.chunked))
        self.served += 1
        if self.served >= self.max_requests and not self.retired:
            self.retire()

    def environ_for_log(self, cycle: Cycle) -> dict:
        """What the access log's atoms read, as a WSGI environ has it."""
        req = cycle.req
        scope = cycle.scope
        environ = dict(req.headers)
        client = scope.get("client")
        raw_path, _, query = req.url.partition(b"?")
        environ.update({
            "REQUEST_METHOD": scope["method"], "RAW_URI": req.url.decode("latin-1"),
            "PATH_INFO": scope["path"], "QUERY_STRING": scope["query_string"].decode("latin-1"),
            "SERVER_PROTOCOL": req.server_protocol, "REMOTE_ADDR": client[0] if client else "",
            "REMOTE_PORT": str(client[1]) if client else "", "wsgi.url_scheme": scope["scheme"],
        })
        if "berth.request_id" in scope:  # (--log-format json)
            environ["berth.request_id"] = scope["berth.request_id"]
        return environ

    def disconnected(self, cycle: Cycle) -> None:
        """The client left while the app runs: it gets http.disconnect, and is cancelled
        after the grace period if it has not finished by then."""
        task = cycle.task
        if task is None or task.done():
            return
        if self.grace <= 0:
            task.cancel()
        else:
            self.loop.call_later(self.grace, lambda: task.done() or task.cancel())

    def websocket_done(self, session) -> None:
        """A WebSocket's app returned. Its connection counted as open until now, even once
        closed, as an HTTP request's does while its app runs: so a drain waits for the app's
        own end (its cleanup after websocket.disconnect) before the lifespan shutdown."""
        self.served += 1
        if session.gone:
            self.websockets.discard(session)
        if session.proto.closed:
            self.forget(session.proto)
        if self.served >= self.max_requests and not self.retired:
            self.retire()

    def retire(self) -> None:
        """--max-requests reached: no new connections; the master replaces this worker."""
        self.set_accepting(False)
        self.withdraw()
        self.retired = True
        self.keep_alive = False
        self.on_retire()

    # -- the end -----------------------------------------------------------------------------

    def shutdown(self, timeout: float) -> None:
        """After `run`: the apps still running get http.disconnect, then are cancelled; the
        connections close."""
        loop = self.loop

        async def finish() -> None:
            for cycle in list(self.active):
                cycle.disconnect()
            sessions = [p.ws for p in self.conns if p.ws is not None]  # (closed ones too)
            for session in sessions:
                session.lost()
            tasks = [c.task for c in [*self.active, *sessions]
                     if c.task is not None and not c.task.done()]
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks, timeout=0.5)
            for proto in list(self.conns):
                proto.close()

        loop.run_until_complete(finish())


class Handshake:
    """A TLS handshake in progress (asyncio's, before the protocol exists): what
    Admission.shed_idle needs of a connection, to shed a client stalled in it."""

    __slots__ = ("last_active", "task")

    def __init__(self):
        self.last_active = time.monotonic()  # (its start: a handshake sends no request)
        self.task: asyncio.Task | None = None

    def close(self) -> None:
        self.task.cancel()  # (connect_accepted_socket closes its transport, then _connected
        # closes the socket and counts the connection out)

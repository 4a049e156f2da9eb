"""One HTTP/1.1 connection of an ASGI worker: berth's parser in, the ASGI HTTP spec out.

`HttpProtocol` is an asyncio protocol. Its bytes go through berth's own sans-IO parser
(`AsgiParser`: `RequestParser` keeping the header list ASGI wants), so every HTTP rule and
limit of the WSGI worker holds here too: the same 400/408/413/414/431/501/505 answers, the
same smuggling defences, the same header_map. Requests on one connection are answered in
order, one `Cycle` (one app call, one task) at a time; pipelined ones wait parsed.

A `Cycle` is the app's view of one request (ASGI 3, HTTP spec 2.4):
  - `receive()` gives the body: at once when it was buffered whole (up to
    `--body-buffer-size`), else in the pieces it arrives in, reading paused while more than
    HIGH_WATER bytes wait for the app (back-pressure); then `http.disconnect` once the
    response is sent or the client is gone. `Expect: 100-continue` is answered when the app
    first asks for the body. What the app leaves unread of a streamed body is read and
    dropped, and the connection goes on to its next request.
  - `send()` takes `http.response.start`, `http.response.body` (a response whose first body
    message is its last gets a Content-Length; others are chunked on HTTP/1.1) and
    `http.response.pathsend` (the file goes out with sendfile, or read and written through
    TLS); it waits while the transport's buffer is above its high-water mark. After the
    client is gone, send() raises `ClientDisconnected` (an OSError, as the spec asks).
  - The head is framed by `berth.http.framing` (the WSGI worker's framing: its rules on
    HEAD, 1xx/204/304, hop-by-hop headers and Content-Length, its cache of heads).
  - An app that raises before it starts a response gets a 500; after, the connection is
    closed (the response cannot be completed). Either way the traceback is logged.
  - A client that goes away mid-request: the app's `receive()` returns `http.disconnect`,
    and the task is cancelled `--asgi-disconnect-grace-period` seconds later if it is still
    running (Gunicorn's setting).

Writing (`HttpProtocol.write`): what a connection writes during one event-loop iteration is
held and joined, and the server sends every connection's as the first callback of the next
iteration (`AsgiLoop.flush_held`), so sends follow one another instead of alternating with
the tasks' steps (the WSGI loop's reason: berth/worker/connection.py). From HOLD_LIMIT bytes
a connection writes at once, so the transport's flow control still bounds a stream; close()
and pathsend's sendfile send what is held first.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from http import HTTPStatus
from urllib.parse import unquote

from berth.http.framing import (
    CONTINUE,
    LAST_CHUNK,
    PROBE_HEADERS,
    BadResponseHeaders,
    chunk,
    early_hints,
    error_response,
    frame,
    probe_answer,
)
from berth.http.parser import (
    FEED_SLICE,
    HASH_BYTE,
    MAX_BODY_PARTS,
    PERCENT_BYTE,
    UNDERSCORE_BYTE,
    HttpError,
    Request,
    RequestParser,
    unchain,
)
from berth.worker.connection import unacknowledged
from berth.worker.tls import TLS_PIECE, pieces

HIGH_WATER = 256 * 1024  # body bytes waiting for the app before reading pauses
MAX_PIPELINE = 16  # parsed requests waiting on one connection before reading pauses
FILE_PIECE = 256 * 1024  # pathsend without sendfile: bytes read and written at a time
HOLD_LIMIT = 64 * 1024  # write(): bytes of one connection held until the iteration ends
ASGI = {"version": "3.0", "spec_version": "2.4"}


def wake(waiter: asyncio.Future | None) -> None:
    """Resolve a future someone may be awaiting (a receive(), a drain), once."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class ClientDisconnected(OSError):
    """send() after the client went away (the ASGI spec: an OSError subclass)."""


class AsgiParser(RequestParser):
    """berth's parser, also keeping each request's header fields as ASGI gives them: a list
    of (lower-case name, value) byte pairs in the order received, repeated names kept. A
    name the parser drops (with '_', under header_map drop or refuse) is dropped here too,
    unless `keep_underscored` (Uvicorn's worker classes: berth.config.uvicorn_worker_rules):
    then only the WSGI-style headers berth reads itself go without it."""

    keep_underscored = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.current.raw = []

    def _switches_protocol(self, req: Request, rest: bytes) -> bool:
        """A WebSocket handshake switches (berth.asgi.websocket); any other Upgrade request
        is served as plain HTTP/1.1. `upgrade_rest`: the bytes after its head (its first
        frames)."""
        if is_websocket_upgrade(req):
            self.upgrade_rest = bytes(rest)
            self.switched = True
            return True
        return False

    def on_header(self, name: bytes, value: bytes) -> None:
        in_head = self.in_head
        super().on_header(name, value)
        if in_head and (UNDERSCORE_BYTE not in name or self.keep_underscored
                        or self.header_map == "dangerous"):
            self.current.raw.append((name.lower(), value.rstrip()))

    def _target_host(self, req: Request, authority: str) -> None:
        host = (b"host", authority.encode("latin-1"))
        raw = req.raw
        for i, (name, _) in enumerate(raw):
            if name == b"host":
                raw[i] = host  # (in its place: one Host field only reaches this far)
                return
        raw.append(host)  # (HTTP/1.0 may send none)


def is_websocket_upgrade(req: Request) -> bool:
    """A GET asking to become a WebSocket (RFC 6455 §4.1): `websocket` among the protocols
    the Upgrade field lists (`Upgrade: websocket, h2c` too: RFC 9110 §7.8), in any case."""
    if req.method != b"GET":
        return False
    websocket = connection = False
    for name, value in req.raw:
        if name == b"upgrade":
            websocket = websocket or b"websocket" in (
                token.strip() for token in value.lower().split(b","))
        elif name == b"connection":
            connection = connection or b"upgrade" in value.lower()
    return websocket and connection


class BodyStream:
    """A body larger than the buffer: its pieces, as they arrive, for receive()."""

    __slots__ = ("chunks", "discarding", "done", "error", "proto", "size", "waiter")

    def __init__(self, proto: HttpProtocol, first: bytes):
        self.proto = proto
        self.chunks: deque[bytes] = deque([first] if first else ())
        self.size = len(first)
        self.done = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future | None = None
        self.discarding = False

    def feed(self, data: bytes | None) -> None:
        if data is None:
            self.done = True
        elif self.discarding:
            return
        else:
            chunks = self.chunks
            chunks.append(data)
            self.size += len(data)
            if len(chunks) >= MAX_BODY_PARTS:
                self._gather()
            if self.size > HIGH_WATER:
                self.proto.pause_reading()
        wake(self.waiter)

    def _gather(self) -> None:
        """Many small pieces (a chunked body of 2-byte chunks: a bytes object of 35 bytes and a
        deque slot each, 21 times the body's size) become one growing bytearray first in the
        deque, so what waits for the app costs about its size (HIGH_WATER), as the parser's
        buffered bodies do (RequestParser._gather): 5.9 MiB a connection had waited."""
        chunks = self.chunks
        first = chunks.popleft()
        rest = b"".join(chunks)
        chunks.clear()
        if type(first) is not bytearray:
            first = bytearray(first)
        first += rest
        chunks.append(first)

    def discard(self) -> None:
        """The app is done without reading it all: the rest is read and dropped as it
        arrives, so the connection gets to the next request (as the WSGI worker does)."""
        self.discarding = True
        self.chunks.clear()
        self.size = 0
        self.proto.resume_reading()

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        wake(self.waiter)

    async def next(self) -> tuple[bytes, bool]:
        """(body bytes, more to come)."""
        while not self.chunks and not self.done and self.error is None:
            self.waiter = self.proto.loop.create_future()
            await self.waiter
            self.waiter = None
        if self.error is not None and not self.chunks:
            # a new one each time (its class takes its args back: ClientDisconnected): the one
            # kept, raised, would hold the app's frames, which hold this stream, in a cycle
            raise type(self.error)(*self.error.args)
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.size = 0
        self.proto.resume_reading()
        return data, not self.done


_reasons: dict[int, str] = {}


def status_text(status: int) -> str:
    """`200` -> `200 OK` (what the framing takes), cached."""
    text = _reasons.get(status)
    if text is None:
        if type(status) is not int or not 100 <= status <= 999:
            raise BadResponseHeaders(f"invalid status {status!r}")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = ""
        text = f"{status} {phrase}".rstrip() if phrase else f"{status} "
        _reasons[status] = text
    return text


def split_path(url: bytes) -> tuple[bytes, bytes]:
    """A request target -> (raw path, query string)."""
    if url[:1] != b"/":
        if url == b"*":
            return b"*", b""
        import httptools

        parsed = httptools.parse_url(url)  # absolute-form
        return parsed.path or b"/", parsed.query or b""
    path, _, query = url.partition(b"?")
    if HASH_BYTE in query:
        query = query.partition(b"#")[0]
    elif HASH_BYTE in path:
        path, query = path.partition(b"#")[0], b""
    return path, query


class Cycle:
    """One request and its response (see the module docstring)."""

    __slots__ = ("access_headers", "body_sent", "chunked", "complete", "disconnected", "eof",
                 "framing", "keep_alive", "overlong", "proto", "remaining", "req", "scope",
                 "sent", "started", "status", "task", "waiter", "when")

    def __init__(self, proto: HttpProtocol, req: Request, scope: dict):
        self.proto = proto
        self.req = req
        self.scope = scope
        self.started = False  # http.response.start received
        self.status: str | None = None
        self.access_headers: list | None = None
        self.framing = None  # sent when the head is
        self.chunked = False
        self.remaining: int | None = None
        self.overlong = False  # the app gave more than its Content-Length (logged once: _cut)
        self.complete = False
        self.keep_alive = req.keep_alive
        self.body_sent = False  # receive() has given the whole body
        self.disconnected = False  # the connection is gone: send() raises
        self.eof = False  # the client closed its side: receive() says http.disconnect
        self.sent = 0
        self.waiter: asyncio.Future | None = None
        self.task: asyncio.Task | None = None
        self.when = time.monotonic()

    # -- receive -----------------------------------------------------------------------------

    async def receive(self) -> dict:
        if not self.body_sent and not self.disconnected and not self.eof:
            req = self.req
            if req.expect_continue:
                req.expect_continue = False
                if not self.started:
                    self.proto.write(CONTINUE)
            if not req.streaming:
                self.body_sent = True
                return {"type": "http.request", "body": req.body, "more_body": False}
            try:
                body, more = await req.body_stream.next()
            except ClientDisconnected:
                self.disconnected = True
                return {"type": "http.disconnect"}
            self.body_sent = not more
            return {"type": "http.request", "body": body, "more_body": more}
        while not self.disconnected and not self.complete and not self.eof:
            self.waiter = self.proto.loop.create_future()
            await self.waiter
        return {"type": "http.disconnect"}

    def peer_closed(self) -> None:
        """The client closed its side of the connection (EOF) while this request runs: the
        app hears http.disconnect (as from Uvicorn: a client that leaves sends a FIN, and only
        a write would show more); what it still sends goes out while the socket takes it."""
        self.eof = True
        wake(self.waiter)

    def disconnect(self) -> None:
        """The client is gone (or berth ends the connection)."""
        self.disconnected = True
        wake(self.waiter)
        stream = self.req.body_stream
        if stream is not None:
            stream.fail(ClientDisconnected("the client went away"))

    # -- send --------------------------------------------------------------------------------

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if self.disconnected:
            raise ClientDisconnected("the client went away")
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            self.status = status_text(message["status"])
            self.access_headers = [(name.decode("latin-1"), value.decode("latin-1"))
                                   for name, value in message.get("headers", ())]
            return
        if kind == "http.response.informational":
            self._informational(message)
            if self.proto.write_paused:  # (a client that reads nothing: as for a body)
                await self.proto.drain()
            return
        if not self.started:
            raise RuntimeError(f"{kind} before http.response.start")
        if self.complete:
            raise RuntimeError(f"{kind} after the response ended")
        proto = self.proto
        if kind == "http.response.body":
            body = message.get("body", b"")
            if type(body) is not bytes and not isinstance(body, (bytearray, memoryview)):
                # (checked before anything is framed: an error before the head is a 500)
                raise TypeError(f"http.response.body: body must be bytes, not "
                                f"{type(body).__name__}")
            more = message.get("more_body", False)
            if len(body) > 2 * TLS_PIECE and proto.server.ssl_context is not None:
                await self._paced(body, more)
            elif self.framing is None:
                self._frame(None if more else len(body), body)
            else:
                self._body(body)
            if not more:
                self._end()
            elif proto.write_paused:
                await proto.drain()
        elif kind == "http.response.pathsend":
            await self._pathsend(message["path"])
        else:
            raise RuntimeError(f"unknown message type {kind!r}")

    def _informational(self, message: dict) -> None:
        """Gunicorn's `http.response.informational`: an interim response, such as `103 Early
        Hints` (RFC 8297), sent at once, ahead of the response. Not to an HTTP/1.0 client (no
        1xx for it); an error once http.response.start is sent (Gunicorn would write it after
        the final head), and for 100 (berth's own, when the app reads a body) and 101 (a
        protocol switch: a WebSocket's accept)."""
        status = message.get("status")
        if type(status) is not int or not 102 <= status <= 199:
            raise RuntimeError(f"http.response.informational: status must be a 1xx other than "
                               f"100 and 101, not {status!r}")
        if self.started:
            raise RuntimeError("http.response.informational after http.response.start")
        if self.req.version == "1.1":
            self.proto.write(early_hints(message.get("headers", ()), status_text(status)))

    async def _paced(self, body: bytes, more: bool) -> None:
        """Under TLS, a large body a piece at a time, waiting while the transport is paused
        for a slow reader. asyncio's SSL transport (and uvloop's) encrypts all it is given
        into its SSL object's outgoing memory BIO, and while the socket is paused the
        ciphertext waits there; the BIO keeps that capacity for the rest of the connection
        (3.5 MiB of a 8 MB body, while the keep-alive connection idled after it)."""
        proto = self.proto
        parts = pieces(body)
        if self.framing is None:
            self._frame(None if more else len(body), next(parts))
        for piece in parts:
            if proto.write_paused:
                await proto.drain()
            self._body(piece)

    def _frame(self, known_length: int | None, body: bytes) -> None:
        """The head, and the first body part with it."""
        req = self.req
        proto = self.proto
        keep_alive = self.keep_alive and proto.server.keep_alive
        framing = frame(req.version, self.status, self.access_headers, keep_alive,
                        req.method == b"HEAD", known_length)
        self.framing = framing
        self.keep_alive = framing.keep_alive
        self.chunked = framing.chunked
        self.remaining = framing.remaining
        head = framing.head + proto.server.date.ends[framing.own]
        if framing.no_body or not body:
            proto.write(head)
            return
        if self.remaining is not None:
            if len(body) > self.remaining:
                body = self._cut(body)
            self.remaining -= len(body)
        self.sent += len(body)
        proto.write(head + (chunk(body) if self.chunked else body))

    def _body(self, body: bytes) -> None:
        if not body or self.framing.no_body:
            return
        if self.remaining is not None:
            if len(body) > self.remaining:
                body = self._cut(body)
            self.remaining -= len(body)
            if not body:
                return
        self.sent += len(body)
        self.proto.write(chunk(body) if self.chunked else body)

    def _end(self) -> None:
        no_body = self.framing.no_body  # (HEAD: a head framed as GET's, and nothing after it)
        if self.chunked and not no_body:
            self.proto.write(LAST_CHUNK)
        elif self.remaining and not no_body:  # shorter than its Content-Length: the client
            self.keep_alive = False  # cannot tell where it ends
            self.proto.server.log.warning(
                "the ASGI app's response to %s is %d bytes shorter than its Content-Length: "
                "its connection is closed", self.proto.describe(self.req), self.remaining)
        self.complete = True
        wake(self.waiter)

    def _cut(self, body: bytes) -> bytes:
        """What of `body` the Content-Length still allows (less than all of it); the first
        cut is logged (the app's bug: its users see cut bodies)."""
        self._warn_overlong()
        return body[:self.remaining]

    def _warn_overlong(self) -> None:
        if not self.overlong:
            self.overlong = True
            self.proto.server.log.warning(
                "the ASGI app's response to %s is longer than its Content-Length: the bytes "
                "past it are not sent", self.proto.describe(self.req))

    async def _pathsend(self, path: str) -> None:
        proto = self.proto
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if self.framing is not None:
                raise RuntimeError("http.response.pathsend after a body was sent")
            self._frame(size, b"")
            if self.framing.no_body:
                size = 0
            elif size > self.remaining:  # (the app's own Content-Length is shorter)
                self._warn_overlong()
            if size and self.remaining:
                if proto.write_paused:
                    await proto.drain()
                proto.flush()  # the head, before the file
                if isinstance(proto.loop, asyncio.BaseEventLoop):  # sendfile(2), or TLS writes
                    # (a file shorter than the app's Content-Length sends less: then _end
                    # closes the connection, which the client would wait on)
                    sent = await proto.loop.sendfile(proto.transport, f, 0, self.remaining)
                    self.sent += sent
                    self.remaining -= sent
                else:  # uvloop has no sendfile: read and write
                    while self.remaining:
                        data = f.read(min(self.remaining, FILE_PIECE))
                        if not data:
                            break
                        self._body(data)
                        if proto.write_paused:
                            await proto.drain()
        self._end()

    # -- the app -----------------------------------------------------------------------------

    async def run(self, app) -> None:
        proto = self.proto
        server = proto.server
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            if not self.disconnected:
                server.log.warning("request cancelled: %s", proto.describe(self.req))
            self.keep_alive = False
        except ClientDisconnected:
            self.keep_alive = False
        except BaseException as exc:  # noqa: BLE001 - the app's error: 500, never a dead worker
            if self.disconnected or self.eof:  # (Starlette: ClientDisconnect, after a send)
                server.log.debug("ASGI app ended by its client leaving: %s: %r",
                                 proto.describe(self.req), exc)
            else:
                server.log.error("error in ASGI app: %s", proto.describe(self.req),
                                 exc_info=exc)
            self._fail()
        else:
            if not self.complete:
                if self.disconnected or self.eof:  # (its client is gone: nothing to answer)
                    server.log.debug("ASGI app returned after its client left: %s",
                                     proto.describe(self.req))
                elif not self.started:
                    server.log.error("ASGI app returned without a response: %s",
                                     proto.describe(self.req))
                else:  # (a 500 when its head is still held, else the connection is cut)
                    server.log.error("ASGI app returned without completing its response: %s",
                                     proto.describe(self.req))
                self._fail()
        finally:
            proto.cycle_done(self)

    async def refuse(self) -> None:
        """The pre_request hook raised (logged): 500, without the app."""
        try:
            self._fail()
        finally:
            self.proto.cycle_done(self)

    def _fail(self) -> None:
        """The app failed: 500 if nothing was sent yet, else the connection ends."""
        self.keep_alive = False
        if self.framing is None and not self.disconnected:
            self.status = "500 Internal Server Error"
            self.access_headers = []
            self.proto.write(error_response(500, head_only=self.req.method == b"HEAD",
                                            date=self.proto.server.date))
        self.complete = True


class HttpProtocol(asyncio.Protocol):
    """One client connection (see the module docstring)."""

    def __init__(self, server):
        self.server = server
        self.loop = server.loop
        self.transport: asyncio.Transport | None = None
        self.parser: AsgiParser | None = None
        self.pending: deque[Request] = deque()
        self.cycle: Cycle | None = None
        self.closed = False
        self.preface: bytes | None = None  # --proxy-protocol: bytes of a header not complete
        self.ws = None  # a WebSocket Session, once this connection was upgraded
        self.eof = False  # the client closed its side
        self.reading = True
        self.read_paused_for: set[str] = set()
        self.write_paused = False
        self.held: list[bytes] | None = None  # writes of this loop iteration (write)
        self.held_size = 0
        self.drained: asyncio.Future | None = None
        self.last_active = time.monotonic()
        self.head_started = self.last_active  # a new connection owes a head (--header-timeout)
        self.client = None
        self.server_addr = None

    # bytes read but not parsed yet: the queue was full (data_received), b"" while their
    # parsing is scheduled (resume_reading)
    unfed: bytes | None = None
    # The write-stall deadline (the server's sweep: `write_stalled`): the transport's unsent
    # bytes at the last tick, and since when the client has read none of them (0.0: none wait)
    unsent = 0
    unsent_since = 0.0
    # --proxy-protocol: `client` is the one a PROXY header named (forwarding.apply's proxied)
    proxied = False

    # -- the transport's callbacks ------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        server = self.server
        server.conns.add(self)
        sock = transport.get_extra_info("socket")
        peer = transport.get_extra_info("peername")
        here = transport.get_extra_info("sockname")
        self.fd = sock.fileno() if sock is not None else -1
        if isinstance(peer, tuple):
            self.client = (peer[0], peer[1])
            self.server_addr = (here[0], here[1])
            if sock is not None:
                import socket

                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
        else:  # a unix socket: no client address (ASGI: None)
            self.server_addr = (here, None) if here else None
        self.trusted = server.forwarding.trusts(self.client[0] if self.client else None)
        self.parser = AsgiParser.for_config(server.cfg, self._stream)
        if server.proxy_mode != "off":  # (berth.worker.preface's rules)
            self.preface = b""  # a PROXY protocol header may come first

    def truncated_preface(self, header_timeout: float | None = None) -> None:
        """The client closed in the middle of a PROXY header, or sent nothing more of it
        within `header_timeout` (the caller closes the connection)."""
        from berth.http.proxyproto import truncated

        self.server.log.warning(truncated(self.client[0] if self.client else "a unix socket",
                                          len(self.preface), header_timeout))

    def _preface(self, data: bytes) -> bytes | None:
        """--proxy-protocol: the bytes before the header is settled (see
        berth.worker.preface, the WSGI loop's twin): the HTTP bytes, or None."""
        from berth.http.proxyproto import NEED_MORE, NOT_PROXY, ProxyProtocolError, parse

        server = self.server
        buf = self.preface + data
        allowed = self.client is None or server.proxy_trust.trusts(self.client)
        try:
            header = parse(buf, mode=server.proxy_mode)
        except ProxyProtocolError as err:
            self.preface = None
            if allowed:
                server.log.warning("bad PROXY protocol header from %s: %s; closing the "
                                   "connection", self.client[0] if self.client else "a unix "
                                   "socket", err.reason)
                self.close()
            else:
                self._forbid()
            return None
        if header is NOT_PROXY:
            self.preface = None
            return buf
        if header is NEED_MORE:
            self.preface = bytes(buf)
            return None
        self.preface = None
        if not allowed:
            self._forbid()
            return None
        if header.names_client:
            self.client = (str(header.src_addr), header.src_port)
            self.proxied = True
        return buf[header.consumed:] or None

    def _forbid(self) -> None:
        self.server.log.warning("PROXY protocol header from %s, which is not in "
                                "proxy_allow_ips: 403", self.client[0])
        self.write(error_response(403, date=self.server.date))
        self.close()

    def _stream(self, req: Request) -> BodyStream:
        return BodyStream(self, req.body)

    def data_received(self, data: bytes) -> None:
        if self.ws is not None:
            self.ws.feed(data)
            return
        now = time.monotonic()
        self.last_active = now
        if self.preface is not None:
            data = self._preface(data)
            if data is None:
                return
        parser = self.parser
        try:
            if len(data) > FEED_SLICE:  # it may hold more requests than the queue may
                rest = parser.feed_some(data, MAX_PIPELINE + 1 - len(self.pending))
                if rest is not None:  # parsed once the queue has room (resume_reading)
                    self.unfed = rest
                    self.pause_reading("pipeline")
            else:
                parser.feed(data)
        except HttpError as err:
            self.reject(err)
            return
        if not parser.in_head:
            self.head_started = 0.0  # (a body's deadline is its longest pause: last_active)
        elif not self.head_started:
            self.head_started = now
        ready = parser.ready
        if ready:
            self.pending.extend(ready)
            ready.clear()
            if self.cycle is None and not self.write_paused:
                self.next_request()
            if self.pending and self.pipeline_full():
                self.pause_reading("pipeline")
        current = parser.current
        if (current is not None and current.expect_continue and self.cycle is None
                and not self.pending and not current.streaming):
            current.expect_continue = False  # its body is awaited before the app is called
            self.write(CONTINUE)

    def eof_received(self) -> bool | None:
        self.eof = True
        if self.preface:
            self.truncated_preface()
            self.close()
            return True
        current = self.parser.current if self.parser is not None else None
        if current is not None and current.streaming:
            current.body_stream.fail(ClientDisconnected("client closed before the body ended"))
        cycle = self.cycle
        if cycle is not None and not cycle.complete:
            cycle.peer_closed()
            self.server.disconnected(cycle)
        elif cycle is None and not self.pending:
            self.close()
        # keep the write side: a half-close still gets what is sent. Not under TLS, which
        # has no half-close: asyncio's and uvloop's SSL transports close anyway, and log a
        # warning (outside berth's log format) for each connection whose protocol says True
        return self.server.ssl_context is None

    def connection_lost(self, exc) -> None:
        self.closed = True
        self.pending.clear()
        if self.ws is not None:
            self.ws.lost()
        cycle = self.cycle
        if cycle is not None and not cycle.complete:
            cycle.disconnect()
            self.server.disconnected(cycle)
        elif self.ws is None or not self.ws.running:  # (else websocket_done forgets it)
            self.server.forget(self)
        wake(self.drained)

    def pause_writing(self) -> None:
        """The transport holds more than its high-water mark: the client is not reading.
        Its next requests are not started until it has read that down, nor read between
        requests (one client pipelining requests it never reads costs the bound, not a
        response each)."""
        self.write_paused = True
        if self.cycle is None and self.ws is None:  # (a request in progress reads on: its
            # body, a WebSocket's pongs and close; the pipeline's bound holds the rest)
            self.pause_reading("writes")

    def resume_writing(self) -> None:
        self.write_paused = False
        self.unsent_since = time.monotonic()  # (the client read it down: progress)
        wake(self.drained)
        self.resume_reading("writes")
        if self.cycle is None and self.pending and self.ws is None:
            self.next_request()

    async def drain(self) -> None:
        if self.closed:
            raise ClientDisconnected("the client went away")
        self.drained = self.loop.create_future()
        await self.drained
        if self.closed:
            raise ClientDisconnected("the client went away")

    # -- reading and writing ----------------------------------------------------------------

    def pause_reading(self, why: str = "body") -> None:
        self.read_paused_for.add(why)
        if self.reading and not self.closed:
            self.reading = False
            self.transport.pause_reading()

    def resume_reading(self, why: str = "body") -> None:
        self.read_paused_for.discard(why)
        if not self.reading and not self.read_paused_for and not self.closed:
            unfed = self.unfed
            if unfed is not None:  # bytes read before the queue filled go first
                if unfed:  # (b"": their parsing is scheduled already)
                    self.unfed = b""
                    self.loop.call_soon(self._feed_unfed, unfed)
                return
            self.reading = True
            self.transport.resume_reading()

    def _feed_unfed(self, data: bytes) -> None:
        """Parse the bytes read before the connection's queue filled (data_received kept
        them), then read the socket again unless the queue is full once more."""
        self.unfed = None
        if self.closed:
            return
        self.data_received(data)
        self.resume_reading("unfed")  # (no such reason: reads if no other holds it)

    def write(self, data: bytes) -> None:
        """Writes wait for the end of the loop iteration (the server's flush_held), so the
        responses the iteration made go out one after another, not between the apps' steps;
        past HOLD_LIMIT bytes they go at once (the transport's flow control then applies)."""
        if self.closed:
            return
        if type(data) is not bytes:  # the app may refill its bytearray before the flush
            data = bytes(data)
        held = self.held
        if held is None:
            if len(data) >= HOLD_LIMIT:
                self.transport.write(data)
                return
            self.held = [data]
            self.held_size = len(data)
            self.server.hold(self)
            return
        held.append(data)
        self.held_size += len(data)
        if self.held_size >= HOLD_LIMIT:
            self.flush()

    def flush(self) -> None:
        held = self.held
        if held is not None:
            self.held = None
            if not self.closed:
                self.transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        if not self.closed:
            self.flush()
            self.closed = True
            self.transport.close()
            # A transport closes once it has sent what it holds: until then (connection_lost)
            # the connection still counts, and the sweep's write stall bounds its wait
            if (self.cycle is None and (self.ws is None or not self.ws.running)
                    and not self.transport.get_write_buffer_size()):
                self.server.forget(self)

    def write_stalled(self, now: float, stall: float) -> bool:
        """The sweep, each tick: whether the client has read nothing of the bytes waiting for
        it for `stall` seconds (`--keep-alive`, at least `--header-timeout`, as the WSGI
        worker has it); the connection is then dropped, with what waits. A client that reads
        nothing would otherwise hold its connection, the transport's buffer (a whole body sent
        in one message) and, streaming, its app's task for ever: asyncio's transport, closed,
        waits to send what it holds."""
        unsent = self.transport.get_write_buffer_size()
        if not unsent and not self.write_paused:  # (TLS: the socket's buffer is not counted,
            self.unsent = 0  # but its flow control pauses the protocol)
            self.unsent_since = 0.0
            return False
        unsent += unacknowledged(self.fd)  # (the kernel's part: see there)
        if not self.unsent_since or unsent < self.unsent:
            self.unsent_since = now  # bytes began to wait, or the client read some
        self.unsent = unsent
        if now - self.unsent_since <= stall:
            return False
        self.server.log.debug("client stopped reading its response; closing")
        self.held = None
        self.closed = True
        self.transport.abort()  # (connection_lost follows: the app hears http.disconnect)
        return True

    def reject(self, err: HttpError) -> None:
        """A request berth refuses: its answer, then close (the requests before it that
        were parsed are answered first)."""
        unchain(err)  # (kept to be answered: see there)
        # The parser raises after the requests it completed in the same read: they are
        # answered first (and a `Connection: close` among them ends the connection before the
        # error, RFC 9112 9.6: llhttp calls bytes after such a request an error).
        client = self.client
        self.server.admit.bad_request("request refused from %s: %s",
                                      client[0] if client else "a unix socket peer", err)
        ready = self.parser.ready
        self.pending.extend(ready)
        ready.clear()
        self.pending.append(err)
        if self.cycle is None:
            self.next_request()

    def pipeline_full(self) -> bool:
        """Whether the requests waiting their turn hold enough to stop reading: more than
        MAX_PIPELINE of them, or more than one --body-buffer-size of their bodies, as the WSGI
        loop has it (Loop.pipeline_full). Bounded by their count alone, 17 bodies of 1 MiB
        waited on a connection whose client pipelined uploads to a slow app."""
        pending = self.pending
        if len(pending) > MAX_PIPELINE:
            return True
        return sum(len(r.body) for r in pending if type(r) is Request) > self.server.body_budget

    def idle(self) -> bool:
        """No request in progress (idle keep-alive, or nothing sent yet): may be shed."""
        return (self.cycle is None and self.ws is None and not self.pending
                and not self.closed and (self.parser is None or self.parser.current is None)
                and self.unfed is None)

    def describe(self, req: Request) -> str:
        return (f"{req.method.decode('latin-1')} {req.url.decode('latin-1')} "
                f"HTTP/{req.version}")

    # -- one request after another -----------------------------------------------------------

    def next_request(self) -> None:
        server = self.server
        while self.pending and not self.closed:
            req = self.pending.popleft()
            if self.read_paused_for and (not self.pending or not self.pipeline_full()):
                self.resume_reading("pipeline")
            if type(req) is HttpError:
                server.count(b"", str(req.status), 0, 0.0)
                self.write(error_response(req.status, date=server.date))
                self.close()
                return
            if server.probes is not None and req.url in server.probes and not req.streaming:
                if not self.answer_probe(req):
                    return
                continue
            try:
                scope = server.scope_for(self, req)  # (a WebSocket's too: the proxy's headers)
            except HttpError as err:
                self.pending.clear()
                self.pending.append(err)
                continue
            if req.raw and not req.keep_alive and is_websocket_upgrade(req):
                from berth.asgi.websocket import Session

                self.pending.clear()
                self.ws = Session(self, req, self.parser.upgrade_rest, scope)
                self.parser.upgrade_rest = b""
                return
            self.cycle = cycle = Cycle(self, req, scope)
            req.dispatched = cycle.when
            server.active.add(cycle)
            cycle.task = self.loop.create_task(
                cycle.run(server.app) if server.started(cycle) else cycle.refuse())
            return

    def answer_probe(self, req: Request) -> bool:
        """--ready-path and --live-path, answered without the app (as the WSGI worker does):
        ready is 503 once the server is shutting down or this worker drains. False when the
        connection ends with it."""
        server = self.server
        status, body = probe_answer(server.probes[req.url], server.ready())
        keep_alive = req.keep_alive and server.keep_alive and not server.draining
        framing = frame(req.version, status, PROBE_HEADERS, keep_alive, req.method == b"HEAD",
                        len(body))
        head = framing.head + server.date.ends[framing.own]
        self.write(head if framing.no_body else head + body)
        server.count(req.method, status, 0, 0.0)
        self.last_active = time.monotonic()
        if not framing.keep_alive:
            self.close()
            return False
        return True

    def cycle_done(self, cycle: Cycle) -> None:
        server = self.server
        server.active.discard(cycle)
        self.cycle = None
        self.last_active = time.monotonic()
        if server.post_request is not None:
            self.flush()  # the response is out before the hook runs (it may take its time)
        server.finished(cycle)
        if self.closed:
            server.forget(self)
            return
        if not cycle.keep_alive or self.eof and not self.pending:
            self.close()
            return
        if cycle.req.streaming and not cycle.req.complete:
            # closing with the body unread would reset the connection: the client could lose
            # the response it has not read yet (RFC 9112 9.6); the parser knows where it ends
            cycle.req.body_stream.discard()
        if self.pending:
            if not self.write_paused:  # (else resume_writing goes on)
                self.next_request()
        elif server.draining:
            self.close()
        else:
            current = self.parser.current
            if current is not None and current.expect_continue and not current.streaming:
                current.expect_continue = False
                self.write(CONTINUE)


def request_scope(proto: HttpProtocol, req: Request, root_path: str, scheme: str,
                  state: dict | None) -> dict:
    """The ASGI scope of one request (forwarded headers applied by the caller)."""
    raw_path, query = split_path(req.url)
    # unquote()'s defaults, as Uvicorn: UTF-8, and an escape that is not UTF-8 becomes U+FFFD,
    # never a lone surrogate ("%ff" -> "\udcff"), which breaks any app that encodes the path
    # (Starlette: a 500 for any client who sends one); raw_path keeps the bytes
    path = unquote(raw_path) if PERCENT_BYTE in raw_path else raw_path.decode("utf-8", "replace")
    if root_path and path != root_path and not path.startswith(
            root_path if root_path[-1] == "/" else root_path + "/"):
        path = root_path + path  # (/json is not under /js: whole segments only)
        raw_path = root_path.encode() + raw_path  # (as Uvicorn: path and raw_path agree)
    scope = {
        "type": "http", "asgi": ASGI, "http_version": req.version,
        "server": proto.server_addr, "client": proto.client, "scheme": scheme,
        "method": req.method.decode("ascii"), "root_path": root_path, "path": path,
        "raw_path": raw_path, "query_string": query, "headers": req.raw,
        # the extensions berth serves, as the spec has servers say: apps look before they use
        # one (Starlette's FileResponse sends http.response.pathsend only when it is here)
        "extensions": {"http.response.pathsend": {}},
        # the lifespan's state, a copy each request; {} without one, as Uvicorn gives it (an
        # app or middleware that writes scope["state"][...] must find it)
        "state": state.copy() if state is not None else {},
    }
    return scope


"""WebSockets for ASGI apps (RFC 6455; the ASGI WebSocket spec 2.4).

A GET with `Upgrade: websocket` that berth's parser took (so the HTTP rules held for it) ends
its connection's HTTP life: its bytes go to a `Session`, which runs the app with a websocket
scope. wsproto (sans-IO, as berth's HTTP layer) does the opening handshake (berth adds what
RFC 6455 §4.2.1 asks and wsproto does not check: HTTP/1.1 or higher, a Sec-WebSocket-Key of 16
bytes in base64; else 400) and a denial's response; after the handshake the frames are
berth's own (`FrameReader`, `frame`): wsproto's general machinery cost about 30 µs a small
message, two thirds of a whole echo, and berth needs only the base protocol, since it offers
no extension. Here are the ASGI messages and
the server's duties:
  - `websocket.accept` (with a subprotocol and headers), or a denial: `websocket.close`
    before accepting is a 403, and `websocket.http.response.start`/`.body` (the
    denial-response extension) any response. No extension is negotiated (permessage-deflate
    costs CPU and memory per connection; a client that offers it goes on without it, as the
    RFC provides);
  - text and binary messages, fragmented ones assembled; a message larger than
    `--websocket-max-message-size` closes with 1009, text that is not UTF-8 with 1007, a frame
    that breaks the base framing (not masked, RSV bits, a long or fragmented control frame, a
    continuation out of place, an unknown opcode, an invalid close code) with 1002;
  - back-pressure both ways: reading pauses while more than HIGH_WATER bytes of messages wait
    for the app, and send() waits while the transport's buffer is above its high-water mark;
  - pings are answered; with `--ws-ping-interval` berth pings an idle peer and closes with
    1011 when no pong comes within `--ws-ping-timeout` (Uvicorn's names and defaults);
  - the close handshake (RFC 6455 §7): the app's close is sent (a code no close frame may
    carry is not: see _close) and the peer's awaited (at most CLOSE_TIMEOUT); the peer's close
    is answered; a peer that vanishes (no close frame) gives the app `websocket.disconnect`
    with 1006. The app hears `websocket.disconnect` once whichever side closed: after its own
    close, with the peer's answering code (1006 when none came before the connection ended),
    so an app that closes, then receives, ends;
  - deploys: when the worker starts draining, every open WebSocket gets a 1001 close ("going
    away") and its app `websocket.disconnect` with 1001 at once; the drain waits for the close
    handshakes and for the apps to return (a connection counts as open while its app runs),
    within --graceful-timeout; the apps still running then are cancelled, before the lifespan
    shutdown.
"""

from __future__ import annotations

import asyncio
import binascii
import time
from base64 import b64decode
from collections import deque

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, RejectConnection, RejectData
from wsproto.events import Request as WsRequest
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from berth.asgi.protocol import ClientDisconnected, wake

HIGH_WATER = 1 << 20  # message bytes waiting for the app before reading pauses
# What a message waiting for the app costs besides its payload (its dict, the deque's slot):
# counted against HIGH_WATER, so that a flood of 2-byte frames is bounded as large ones are
MESSAGE_COST = 256
CLOSE_TIMEOUT = 5.0  # seconds to wait for the peer's close frame after sending ours
GOING_AWAY = 1001
TOO_BIG = 1009
INTERNAL_ERROR = 1011
NO_STATUS = 1005
ABNORMAL = 1006
PROTOCOL_ERROR = 1002
NOT_UTF8 = 1007
CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked frame, FIN set (a server's frames are never masked: RFC 6455 §5.1)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


def unmask(data: bytes, mask: bytes) -> bytes:
    """A client frame's payload XOR its 4-byte mask, as one big-integer XOR."""
    n = len(data)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def valid_close_code(code: int) -> bool:
    """A code a peer may send (RFC 6455 §7.4; 1005, 1006 and 1015 are never sent)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def handshake_fault(req) -> str | None:
    """Why RFC 6455 §4.2.1 refuses an opening handshake (400) that wsproto would take (it
    reads the head berth rebuilds as HTTP/1.1, and takes any key), or None."""
    if req.version < "1.1":  # (HTTP/d.d, one digit each: llhttp checked the form)
        return f"a WebSocket handshake on HTTP/{req.version}"
    for name, value in req.raw:
        if name == b"sec-websocket-key":
            try:
                if len(b64decode(value, validate=True)) == 16:
                    continue
            except binascii.Error:
                pass
            return "a Sec-WebSocket-Key that is not 16 bytes in base64"
    return None


class FrameError(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(reason)
        self.code = code
        self.reason = reason


class FrameReader:
    """Client frames to (opcode, fin, payload), the base framing's rules checked; a frame
    whose message would pass `max_size` fails before its payload is buffered."""

    def __init__(self, max_size: int):
        self.max_size = max_size
        self.buf = b""
        self.message_size = 0  # of the fragmented message in progress
        self.in_message = False

    def feed(self, data: bytes) -> list[tuple[int, bool, bytes]]:
        buf = self.buf + data if self.buf else data
        end = len(buf)
        pos = 0
        out = []
        while end - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            at = pos + 2
            if n == 126:
                if end - at < 2:
                    break
                n = int.from_bytes(buf[at:at + 2], "big")
                at += 2
            elif n == 127:
                if end - at < 8:
                    break
                n = int.from_bytes(buf[at:at + 8], "big")
                at += 8
            opcode = b0 & 0x0F
            fin = bool(b0 & 0x80)
            if not b1 & 0x80:
                raise FrameError(PROTOCOL_ERROR, "a client frame is not masked")
            if b0 & 0x70:
                raise FrameError(PROTOCOL_ERROR, "RSV bits set without an extension")
            if opcode >= CLOSE:
                if opcode > PONG:
                    raise FrameError(PROTOCOL_ERROR, "unknown opcode")
                if n > 125 or not fin:
                    raise FrameError(PROTOCOL_ERROR, "a long or fragmented control frame")
            elif opcode > BINARY:
                raise FrameError(PROTOCOL_ERROR, "unknown opcode")
            else:
                if (opcode == CONTINUATION) != self.in_message:
                    raise FrameError(PROTOCOL_ERROR, "a continuation frame out of place")
                if self.message_size + n > self.max_size:
                    raise FrameError(TOO_BIG, "message too big")
            if end - at < 4 + n:
                break
            payload = unmask(buf[at + 4:at + 4 + n], buf[at:at + 4])
            pos = at + 4 + n
            if opcode < CLOSE:
                self.in_message = not fin
                self.message_size = 0 if fin else self.message_size + n
            out.append((opcode, fin, payload))
        self.buf = buf[pos:] if pos < end else b""
        return out


class Session:
    """One WebSocket connection and its app (see the module docstring)."""

    def __init__(self, proto, req, rest: bytes, scope: dict):
        """`scope`: the request's HTTP scope (`AsgiLoop.scope_for`: a trusted proxy's
        headers applied), made the WebSocket's here."""
        self.proto = proto
        self.server = server = proto.server
        self.req = req
        self.ws = WSConnection(ConnectionType.SERVER)
        self.accepted = False
        self.closed = False  # a close was sent or received: no more messages
        self.gone = False  # the transport is gone
        self.told = False  # websocket.disconnect is in the inbox
        self.inbox: deque[dict] = deque()
        self.inbox_costs: deque[int] = deque()  # what each message in the inbox counts
        self.inbox_bytes = 0
        self.waiter: asyncio.Future | None = None
        self.parts: list = []
        self.max_size = server.cfg.websocket_max_message_size or (1 << 62)
        self.task: asyncio.Task | None = None
        self.running = False  # the app runs: the connection counts as open (websocket_done)
        self.denial_started = False
        self.last_seen = time.monotonic()
        self.ping_sent = 0.0
        self.close_sent_at = 0.0
        self.connected_sent = False
        scope["type"] = "websocket"
        # (wss also when a proxy said so, read as Uvicorn reads X-Forwarded-Proto)
        scope["scheme"] = "wss" if scope["scheme"] in ("https", "wss") else "ws"
        del scope["method"]
        scope["subprotocols"] = []
        scope["extensions"] = {"websocket.http.response": {}}
        self.scope = scope
        # wsproto reads the head again, rebuilt from what berth's parser took; its Upgrade is
        # the protocol chosen (wsproto wants exactly `websocket`; a client may list others)
        head = b"GET " + req.url + b" HTTP/1.1\r\n" + b"".join(
            name + b": " + (b"websocket" if name == b"upgrade" else value) + b"\r\n"
            for name, value in req.raw) + b"\r\n"
        self.frames: FrameReader | None = None  # once accepted
        # what the client sent after its handshake before the accept (RFC 6455 §4.1 says it
        # must wait for the 101; some clients send their first frames at once): read as
        # frames once accepted, as wsproto keeps them for Uvicorn
        self.early = bytearray(rest)
        self.message_opcode = TEXT
        fault = handshake_fault(req)
        if fault is not None:
            server.log.debug("WebSocket handshake refused: %s", fault)
            self._refuse()
            return
        self._handshake(head)

    # -- bytes from the peer ------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        if self.frames is None:
            self.early += data
            if len(self.early) > HIGH_WATER:
                self.proto.pause_reading("ws")
            return
        if self.gone:
            return
        try:
            frames = self.frames.feed(data)
        except FrameError as err:
            self._fail_close(err.code, err.reason)
            return
        for opcode, fin, payload in frames:
            if opcode < CLOSE:
                self._data(opcode, fin, payload)
            elif opcode == PING:
                if not self.closed:
                    self._write(frame(PONG, payload))
            elif opcode == PONG:
                self.ping_sent = 0.0
            else:
                self._close_frame(payload)
                return
        if self.inbox_bytes > HIGH_WATER:
            self.proto.pause_reading("ws")

    def _handshake(self, data: bytes) -> None:
        try:
            self.ws.receive_data(data)
            events = list(self.ws.events())
        except RemoteProtocolError as err:
            hint = getattr(err, "event_hint", None)
            if hint is None:
                self._refuse()
            else:
                self._write(self.ws.send(hint))
                self.proto.close()
            return
        for event in events:
            if isinstance(event, WsRequest):
                self.scope["subprotocols"] = list(event.subprotocols)
                self._start()

    def _refuse(self) -> None:
        """A handshake that is not one: 400, and the connection closes."""
        self._write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\n\r\n")
        self.proto.close()

    def _data(self, opcode: int, fin: bool, payload: bytes) -> None:
        if self.closed:
            return
        if opcode != CONTINUATION:
            self.message_opcode = opcode
        if not fin:
            self.parts.append(payload)
            return
        if self.parts:
            self.parts.append(payload)
            payload = b"".join(self.parts)
            self.parts = []
        if self.message_opcode == TEXT:
            try:
                text = payload.decode("utf-8")
            except UnicodeDecodeError:
                self._fail_close(NOT_UTF8, "text that is not UTF-8")
                return
            self._deliver({"type": "websocket.receive", "text": text}, len(payload))
        else:
            self._deliver({"type": "websocket.receive", "bytes": payload}, len(payload))

    def _close_frame(self, payload: bytes) -> None:
        if not payload:
            code, reason = NO_STATUS, ""
        else:
            code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 0
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                self._fail_close(PROTOCOL_ERROR, "a close reason that is not UTF-8")
                return
            if not valid_close_code(code):
                self._fail_close(PROTOCOL_ERROR, "an invalid close code")
                return
        self._peer_closed(code, reason)

    def _peer_closed(self, code: int, reason: str) -> None:
        """The peer's close frame: answered with its code (RFC 6455 §5.5.1) unless ours was
        sent first (then it is the answer the app hears); then the server closes the TCP
        connection (§7.1.1)."""
        if not self.closed:
            self.closed = True
            self._write(frame(CLOSE, b"" if code == NO_STATUS else code.to_bytes(2, "big")))
        self._disconnected(code, reason)
        self.proto.close()

    def lost(self) -> None:
        """The transport is gone (no close frame, or after the handshake ended)."""
        self.gone = True
        self.closed = True
        self._disconnected(ABNORMAL, "")
        self.server.websockets.discard(self)

    def _disconnected(self, code: int, reason: str) -> None:
        """The connection is over for the app: its receive() says so, from now on (the
        first cause heard is the one it gets)."""
        if not self.told:
            self.told = True
            self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})

    def _deliver(self, message: dict, size: int = 0) -> None:
        cost = size + MESSAGE_COST if message["type"] == "websocket.receive" else 0
        self.inbox.append(message)
        self.inbox_costs.append(cost)
        self.inbox_bytes += cost
        wake(self.waiter)

    # -- the app ------------------------------------------------------------------------------

    def _start(self) -> None:
        server = self.server
        server.websockets.add(self)
        self.running = True
        self.task = self.proto.loop.create_task(self.run(server.app))

    async def run(self, app) -> None:
        server = self.server
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            pass
        except ClientDisconnected:
            pass
        except BaseException as exc:  # noqa: BLE001 - the app's error: a 500 or a 1011
            server.log.error("error in ASGI app (websocket %s)", self.scope["path"],
                             exc_info=exc)
            if not self.accepted:
                self._deny_with(500)
            else:
                self._fail_close(INTERNAL_ERROR, "")
        else:
            if not self.accepted and not self.denial_started and not self.gone:
                # the app returned without accepting: 403 as Gunicorn's ASGI worker, or
                # under Uvicorn's worker class names 500 and an error, as Uvicorn
                status = server.websocket_unaccepted
                if status == 500:
                    server.log.error("ASGI app returned without accepting the websocket %s",
                                     self.scope["path"])
                self._deny_with(status)
            elif self.accepted and not self.closed:
                self._close(1000, "")
        finally:
            self.running = False
            server.websocket_done(self)

    async def receive(self) -> dict:
        if not self.connected_sent:
            self.connected_sent = True
            return {"type": "websocket.connect"}
        while not self.inbox:  # (never for ever: lost() puts websocket.disconnect in it)
            self.waiter = self.proto.loop.create_future()
            await self.waiter
            self.waiter = None
        message = self.inbox.popleft()
        # (what _deliver counted: a text's bytes, not its characters, which len() gives: the
        # difference made a non-ASCII chat's count grow until reading paused for good)
        self.inbox_bytes -= self.inbox_costs.popleft()
        if self.inbox_bytes <= HIGH_WATER // 2:
            self.proto.resume_reading("ws")
        if message["type"] == "websocket.disconnect":
            self.inbox.append(message)  # (every later receive() says it again)
            self.inbox_costs.append(0)
        return message

    async def send(self, message: dict) -> None:
        kind = message["type"]
        if self.gone or (self.closed and kind != "websocket.close"):
            raise ClientDisconnected("the websocket is closed")
        if kind == "websocket.accept":
            if self.accepted or self.denial_started:
                raise RuntimeError("websocket.accept after the handshake")
            headers = [(bytes(n), bytes(v)) for n, v in message.get("headers") or ()]
            self._write(self.ws.send(AcceptConnection(
                subprotocol=message.get("subprotocol"), extra_headers=headers)))
            self.accepted = True
            self.frames = FrameReader(self.max_size)
            if self.early:
                early, self.early = bytes(self.early), bytearray()
                self.feed(early)
                if self.inbox_bytes <= HIGH_WATER // 2:
                    self.proto.resume_reading("ws")
        elif kind == "websocket.send":
            if not self.accepted:
                raise RuntimeError("websocket.send before websocket.accept")
            text = message.get("text")
            self._write(frame(TEXT, text.encode("utf-8")) if text is not None
                        else frame(BINARY, message.get("bytes") or b""))
            if self.proto.write_paused:
                await self.proto.drain()
        elif kind == "websocket.close":
            if not self.accepted:
                if not self.denial_started:
                    self._deny_with(403)
                return
            if not self.closed:
                self._close(message.get("code") or 1000, message.get("reason") or "")
        elif kind == "websocket.http.response.start":
            if self.accepted or self.denial_started:
                raise RuntimeError("a denial response after the handshake")
            self.denial_started = True
            headers = [(bytes(n), bytes(v)) for n, v in message.get("headers") or ()]
            self._write(self.ws.send(RejectConnection(status_code=message["status"],
                                                      headers=headers, has_body=True)))
        elif kind == "websocket.http.response.body":
            if not self.denial_started:
                raise RuntimeError("websocket.http.response.body before its start")
            more = message.get("more_body", False)
            self._write(self.ws.send(RejectData(data=message.get("body", b""),
                                                body_finished=not more)))
            if not more:
                self.closed = True
                self.proto.close()
        else:
            raise RuntimeError(f"unknown message type {kind!r}")

    # -- closing ------------------------------------------------------------------------------

    def _deny_with(self, status: int) -> None:
        self.denial_started = True
        self.closed = True
        try:
            self._write(self.ws.send(RejectConnection(status_code=status)))
        except LocalProtocolError:
            pass
        self.proto.close()

    def _close(self, code: int, reason: str) -> None:
        """Send our close frame; the peer's answer ends the connection (or CLOSE_TIMEOUT).
        An app's code that a close frame may not carry (RFC 6455 §7.4): 1005 ("no status
        code") is a frame without one, so without a reason either (§5.5.1), as wsproto sends
        it; the others (1006, 1015, reserved or out of range) are 1011 with the reason: a
        client fails a connection on an invalid code, and 1000 (wsproto's choice for 1006 and
        1015) would hide that the app's end was abnormal."""
        self.closed = True
        self.close_sent_at = time.monotonic()
        if code == NO_STATUS:
            self._write(frame(CLOSE, b""))
            return
        if not valid_close_code(code):
            code = INTERNAL_ERROR
        data = reason.encode("utf-8")
        while len(data) > 123:  # (a control frame's payload is at most 125 bytes)
            reason = reason[:-1]
            data = reason.encode("utf-8")
        self._write(frame(CLOSE, code.to_bytes(2, "big") + data))

    def _fail_close(self, code: int, reason: str, handshake: bool = False) -> None:
        """berth ends the connection (too big, not UTF-8, a protocol error, a missed pong, a
        deploy): the app hears websocket.disconnect with that code at once. With `handshake`
        (a deploy) the peer's close frame is awaited; otherwise this is _Fail the WebSocket
        Connection_ (RFC 6455 §7.1.7): the TCP connection closes after the frame."""
        if self.closed:
            return
        self._close(code, reason)
        self._disconnected(code, reason)
        if not handshake:
            self.gone = True  # (nothing more is read)
            self.proto.close()

    def going_away(self) -> None:
        """The worker drains (a deploy): 1001 to the peer and to the app."""
        if self.accepted:
            self._fail_close(GOING_AWAY, "server shutting down", handshake=True)

    def sweep(self, now: float, interval: float, timeout: float) -> None:
        """Every tick: an unanswered close, the idle ping and its pong."""
        if self.close_sent_at and now - self.close_sent_at > CLOSE_TIMEOUT:
            self.proto.close()
            return
        if not self.accepted or self.closed or not interval:
            return
        if self.ping_sent:
            if now - self.ping_sent > timeout:
                self._fail_close(INTERNAL_ERROR, "keepalive ping timeout")
        elif now - self.last_seen > interval:
            self.ping_sent = now
            self._write(frame(PING, b"berth"))

    def _write(self, data: bytes) -> None:
        if data:
            self.proto.write(data)


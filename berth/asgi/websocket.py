"""WebSockets for ASGI apps (RFC 6455; the ASGI WebSocket spec 2.4), on wsproto.

A GET with `Upgrade: websocket` that berth's parser took (so the HTTP rules held for it) ends
its connection's HTTP life: its bytes go to a `Session`, which runs the app with a websocket
scope. wsproto (sans-IO, as berth's HTTP layer) does the handshake and the framing; here are
the ASGI messages and the server's duties:
  - `websocket.accept` (with a subprotocol and headers; permessage-deflate when the client
    offers it), or a denial: `websocket.close` before accepting is a 403, and
    `websocket.http.response.start`/`.body` (the denial-response extension) any response;
  - text and binary messages, fragmented ones assembled; a message larger than
    `--websocket-max-message-size` closes with 1009;
  - back-pressure both ways: reading pauses while more than HIGH_WATER bytes of messages wait
    for the app, and send() waits while the transport's buffer is above its high-water mark;
  - pings are answered; with `--ws-ping-interval` berth pings an idle peer and closes with
    1011 when no pong comes within `--ws-ping-timeout` (Uvicorn's names and defaults);
  - the close handshake (RFC 6455 §7): the app's close is sent and the peer's awaited (at most
    CLOSE_TIMEOUT); the peer's close is answered; a peer that vanishes (no close frame) gives
    the app `websocket.disconnect` with 1006;
  - deploys: when the worker starts draining, every open WebSocket gets a 1001 close ("going
    away") and its app `websocket.disconnect` with 1001 at once; the drain waits for the close
    handshakes, within --graceful-timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    TextMessage,
)
from wsproto.events import (
    Request as WsRequest,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from berth.asgi.protocol import ClientDisconnected, request_scope, wake

HIGH_WATER = 1 << 20  # message bytes waiting for the app before reading pauses
CLOSE_TIMEOUT = 5.0  # seconds to wait for the peer's close frame after sending ours
GOING_AWAY = 1001
TOO_BIG = 1009
INTERNAL_ERROR = 1011
NO_STATUS = 1005
ABNORMAL = 1006


class Session:
    """One WebSocket connection and its app (see the module docstring)."""

    def __init__(self, proto, req, rest: bytes):
        self.proto = proto
        self.server = server = proto.server
        self.req = req
        self.ws = WSConnection(ConnectionType.SERVER)
        self.accepted = False
        self.closed = False  # a close was sent or received: no more messages
        self.gone = False  # the transport is gone
        self.close_code: int | None = None
        self.close_reason = ""
        self.inbox: deque[dict] = deque()
        self.inbox_bytes = 0
        self.waiter: asyncio.Future | None = None
        self.parts: list = []
        self.part_size = 0
        self.max_size = server.cfg.websocket_max_message_size or (1 << 62)
        self.task: asyncio.Task | None = None
        self.denial_started = False
        self.last_seen = time.monotonic()
        self.ping_sent = 0.0
        self.close_sent_at = 0.0
        self.connected_sent = False
        scope = request_scope(proto, req, server.root_path, "wss" if server.scheme == "https"
                              else "ws", server.state)
        scope["type"] = "websocket"
        del scope["method"]
        scope["subprotocols"] = []
        scope["extensions"] = {"websocket.http.response": {}}
        self.scope = scope
        head = b"GET " + req.url + b" HTTP/1.1\r\n" + b"".join(
            name + b": " + value + b"\r\n" for name, value in req.raw) + b"\r\n"
        self.offered_deflate = False
        self.feed(head + rest)

    # -- bytes from the peer ------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        try:
            self.ws.receive_data(data)
            events = list(self.ws.events())
        except RemoteProtocolError as err:
            self._protocol_error(err)
            return
        for event in events:
            if isinstance(event, (TextMessage, BytesMessage)):
                self._message(event)
            elif isinstance(event, Ping):
                self._write(self.ws.send(event.response()))
            elif isinstance(event, Pong):
                self.ping_sent = 0.0
            elif isinstance(event, CloseConnection):
                self._peer_closed(int(event.code), event.reason or "")
            elif isinstance(event, WsRequest):
                self.scope["subprotocols"] = list(event.subprotocols)
                self.offered_deflate = any(
                    getattr(e, "name", e) == PerMessageDeflate.name for e in event.extensions)
                self._start()
        if self.inbox_bytes > HIGH_WATER:
            self.proto.pause_reading("ws")

    def _protocol_error(self, err: RemoteProtocolError) -> None:
        if not self.accepted and not self.task:
            status = getattr(err, "event_hint", None)
            self._write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                        b"Connection: close\r\n\r\n" if status is None else
                        self.ws.send(status))
            self.proto.close()
            return
        self._fail_close(1002, "protocol error")

    def _message(self, event) -> None:
        if self.closed:
            return
        self.parts.append(event.data)
        self.part_size += len(event.data)
        if self.part_size > self.max_size:
            self.parts.clear()
            self._fail_close(TOO_BIG, "message too big")
            return
        if not event.message_finished:
            return
        parts, self.parts = self.parts, []
        size, self.part_size = self.part_size, 0
        if isinstance(event, TextMessage):
            message = {"type": "websocket.receive", "text": "".join(parts)}
        else:
            message = {"type": "websocket.receive", "bytes": b"".join(parts)}
        self._deliver(message, size)

    def _peer_closed(self, code: int, reason: str) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._write(self.ws.send(CloseConnection(code=code)))
            except LocalProtocolError:
                pass
            self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.proto.close()

    def lost(self) -> None:
        """The transport is gone (no close frame, or after the handshake ended)."""
        self.gone = True
        if not self.closed:
            self.closed = True
            self._deliver({"type": "websocket.disconnect", "code": ABNORMAL, "reason": ""})
        self.server.websockets.discard(self)

    def _deliver(self, message: dict, size: int = 0) -> None:
        self.inbox.append(message)
        self.inbox_bytes += size
        wake(self.waiter)

    # -- the app ------------------------------------------------------------------------------

    def _start(self) -> None:
        server = self.server
        server.websockets.add(self)
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
                self._deny_with(403)  # the app returned without accepting
            elif self.accepted and not self.closed:
                self._close(1000, "")
        finally:
            server.websocket_done(self)

    async def receive(self) -> dict:
        if not self.connected_sent:
            self.connected_sent = True
            return {"type": "websocket.connect"}
        while not self.inbox:
            if self.gone and self.closed:
                return {"type": "websocket.disconnect", "code": self.close_code or ABNORMAL,
                        "reason": self.close_reason}
            self.waiter = self.proto.loop.create_future()
            await self.waiter
            self.waiter = None
        message = self.inbox.popleft()
        if "bytes" in message:
            self.inbox_bytes -= len(message["bytes"])
        elif "text" in message:
            self.inbox_bytes -= len(message["text"])
        if self.inbox_bytes <= HIGH_WATER // 2:
            self.proto.resume_reading("ws")
        if message["type"] == "websocket.disconnect":
            self.close_code, self.close_reason = message["code"], message.get("reason", "")
            self.inbox.append(message)  # (every later receive() says it again)
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
                subprotocol=message.get("subprotocol"), extra_headers=headers,
                extensions=[PerMessageDeflate()] if self.offered_deflate else [])))
            self.accepted = True
        elif kind == "websocket.send":
            if not self.accepted:
                raise RuntimeError("websocket.send before websocket.accept")
            text, data = message.get("text"), message.get("bytes")
            self._write(self.ws.send(TextMessage(data=text) if text is not None
                                     else BytesMessage(data=data or b"")))
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
        """Send our close frame; the peer's answer ends the connection (or CLOSE_TIMEOUT)."""
        self.closed = True
        self.close_sent_at = time.monotonic()
        try:
            self._write(self.ws.send(CloseConnection(code=code, reason=reason)))
        except LocalProtocolError:
            self.proto.close()

    def _fail_close(self, code: int, reason: str) -> None:
        """berth ends the connection (too big, a protocol error, a missed pong, a deploy): the
        app hears websocket.disconnect with that code at once."""
        if self.closed:
            return
        self._close(code, reason)
        self._deliver({"type": "websocket.disconnect", "code": code, "reason": reason})

    def going_away(self) -> None:
        """The worker drains (a deploy): 1001 to the peer and to the app."""
        if self.accepted:
            self._fail_close(GOING_AWAY, "server shutting down")

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
            self._write(self.ws.send(Ping(payload=b"berth")))

    def _write(self, data: bytes) -> None:
        if data:
            self.proto.write(data)


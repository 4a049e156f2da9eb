"""WebSocket apps written as users of three frameworks write them, for
tests/test_websocket_frameworks.py:

    starlette_app  Starlette: WebSocketRoute("/echo") and WebSocketRoute("/slow"), both
                   WebSocketEndpoint classes (the echo sends text back as text, bytes as bytes;
                   /slow reads one message every SLOW_READ_S: a client faster than that meets
                   back-pressure)
    fastapi_app    FastAPI: @app.websocket("/ws") broadcasts every message it receives to every
                   connected client (a set of connections, removed on disconnect)
    channels_app   "Channels-style": a consumer in the shape of Django Channels'
                   AsyncWebsocketConsumer (connect/receive/disconnect, dispatched from the raw
                   ASGI messages by a small base class written here: channels is not installed)
                   routed as Channels' ProtocolTypeRouter routes it: "websocket" to the
                   consumer's as_asgi(), "http" to Django's ASGI handler (tests/apps/djapp.py's
                   project); /echo and /slow as for Starlette

WS_MARKERS: a folder where each app writes "disconnect-<id>" holding the close code it got when
a connection opened with `?id=<id>` ended (the tests wait for that file).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.endpoints import WebSocketEndpoint
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

MARKERS = Path(os.environ.get("WS_MARKERS", "/nonexistent"))
SLOW_READ_S = 0.1


def mark_disconnect(query_string: bytes, code: int) -> None:
    name = parse_qs(query_string.decode()).get("id", [None])[0]
    if name and MARKERS.is_dir():
        (MARKERS / f"disconnect-{name}").write_text(str(code))


# -- Starlette ---------------------------------------------------------------------------------

class StarletteEcho(WebSocketEndpoint):
    encoding = None  # text stays text, bytes stay bytes

    async def on_receive(self, websocket: WebSocket, data: str | bytes) -> None:
        if isinstance(data, str):
            await websocket.send_text(data)
        else:
            await websocket.send_bytes(data)

    async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
        mark_disconnect(websocket.scope["query_string"], close_code)


class StarletteSlow(StarletteEcho):
    async def on_receive(self, websocket: WebSocket, data: str | bytes) -> None:
        await asyncio.sleep(SLOW_READ_S)


starlette_app = Starlette(routes=[WebSocketRoute("/echo", StarletteEcho),
                                  WebSocketRoute("/slow", StarletteSlow)])


# -- FastAPI -----------------------------------------------------------------------------------

fastapi_app = FastAPI()
connected: set[WebSocket] = set()


async def broadcast(message: str | bytes) -> None:
    for ws in list(connected):
        try:
            if isinstance(message, str):
                await ws.send_text(message)
            else:
                await ws.send_bytes(message)
        except (WebSocketDisconnect, RuntimeError, OSError):
            connected.discard(ws)  # it went while we sent; its own loop records why


@fastapi_app.websocket("/ws")
async def fastapi_broadcast(websocket: WebSocket) -> None:
    await websocket.accept()
    connected.add(websocket)
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                code = message.get("code", 1000)
                break
            await broadcast(message["text"] if message.get("text") is not None
                            else message["bytes"])
    finally:
        connected.discard(websocket)
    mark_disconnect(websocket.scope["query_string"], code)


@fastapi_app.get("/clients")
async def fastapi_clients() -> dict:
    return {"connected": len(connected)}


# -- Channels-style ----------------------------------------------------------------------------


class StopConsumer(Exception):
    """Raised by a handler to end the consumer (Channels' channels.exceptions.StopConsumer)."""


class AsyncWebsocketConsumer:
    """The part of Channels' AsyncWebsocketConsumer that touches ASGI: each message's type
    names its handler ("websocket.receive" -> websocket_receive), which calls the methods a
    consumer overrides: connect(), receive(text_data, bytes_data), disconnect(code). No channel
    layer, no groups."""

    def __init__(self, scope: dict):
        self.scope = scope

    @classmethod
    def as_asgi(cls):
        async def app(scope, receive, send):
            await cls(scope)(receive, send)
        return app

    async def __call__(self, receive, send) -> None:
        self.base_send = send
        try:
            while True:
                message = await receive()
                handler = getattr(self, message["type"].replace(".", "_"), None)
                if handler is None:
                    raise ValueError(f"no handler for message type {message['type']}")
                await handler(message)
        except StopConsumer:
            pass

    async def websocket_connect(self, message: dict) -> None:
        await self.connect()

    async def websocket_receive(self, message: dict) -> None:
        if message.get("text") is not None:
            await self.receive(text_data=message["text"])
        else:
            await self.receive(bytes_data=message["bytes"])

    async def websocket_disconnect(self, message: dict) -> None:
        await self.disconnect(message["code"])
        raise StopConsumer()

    async def accept(self, subprotocol: str | None = None) -> None:
        await self.base_send({"type": "websocket.accept", "subprotocol": subprotocol})

    async def send(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if text_data is not None:
            await self.base_send({"type": "websocket.send", "text": text_data})
        else:
            await self.base_send({"type": "websocket.send", "bytes": bytes_data})

    async def close(self, code: int | None = None) -> None:
        await self.base_send({"type": "websocket.close", "code": code or 1000})

    async def connect(self) -> None:
        await self.accept()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None):
        pass

    async def disconnect(self, code: int) -> None:
        pass


class EchoConsumer(AsyncWebsocketConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=text_data, bytes_data=bytes_data)

    async def disconnect(self, code):
        mark_disconnect(self.scope["query_string"], code)


class SlowConsumer(EchoConsumer):
    async def receive(self, text_data=None, bytes_data=None):
        await asyncio.sleep(SLOW_READ_S)


def url_router(routes: dict):
    """Channels' URLRouter, reduced to exact paths."""
    async def app(scope, receive, send):
        consumer = routes.get(scope["path"])
        if consumer is None:
            await send({"type": "websocket.close"})  # before accepting: a 403
            return
        await consumer(scope, receive, send)
    return app


def protocol_type_router(apps: dict):
    """Channels' ProtocolTypeRouter: one app per scope type. Like Channels' own, it raises on
    a type it has no app for (lifespan here: berth then serves without lifespan, as for
    Django)."""
    async def app(scope, receive, send):
        if scope["type"] not in apps:
            raise ValueError(f"No application configured for scope type {scope['type']!r}")
        await apps[scope["type"]](scope, receive, send)
    return app


def django_asgi_app():
    """Django's ASGI handler for tests/apps/djapp.py's project (importing djapp configures
    the settings and URLs)."""
    import djapp  # noqa: F401
    from django.core.asgi import get_asgi_application

    return get_asgi_application()


channels_app = protocol_type_router({
    "http": django_asgi_app(),
    "websocket": url_router({"/echo": EchoConsumer.as_asgi(),
                             "/slow": SlowConsumer.as_asgi()}),
})

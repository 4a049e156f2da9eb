"""A raw ASGI WebSocket app for tests/test_websocket.py.

ASGI_MARKERS: a folder where the app writes "disconnect-<id>" holding the close code it got.
Paths: /echo (echoes text and bytes; the subprotocol: the client's first); /deny (closes before
accepting: a 403); /deny-body (a denial response: 401 with a body); /slow (reads one message
every 0.2 s: a client sending faster meets back-pressure); /hold?id= (accepts, waits for the
disconnect and records its code); /close?id=&code= (accepts, closes with that code, then waits
for the disconnect and records its code); /linger?id=&sleep= (accepts, waits for the
disconnect, then cleans up for `sleep` seconds: "cleaned-<id>" when done, "finally-<id>"
saying whether it was cancelled); /scope... (accepts, sends parts of its scope as JSON, waits for
the disconnect). The lifespan shutdown records in "lifespan-shutdown" how many /linger apps
still ran.
"""

import asyncio
import json
import os
from pathlib import Path
from urllib.parse import parse_qs

MARKERS = Path(os.environ.get("ASGI_MARKERS", "/nonexistent"))
lingering = 0  # /linger apps running


def mark(name: str, text: str) -> None:
    if MARKERS.is_dir():
        (MARKERS / name).write_text(text)


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        mark("lifespan-shutdown", str(lingering))
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"http\n"})
        return
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    assert (await receive())["type"] == "websocket.connect"
    path = scope["path"]
    if path == "/deny":
        await send({"type": "websocket.close"})
        return
    if path == "/return":  # returns without accepting (or closing)
        return
    if path == "/deny-body":
        await send({"type": "websocket.http.response.start", "status": 401,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "websocket.http.response.body", "body": b"who are you?\n"})
        return
    subprotocols = scope["subprotocols"]
    await send({"type": "websocket.accept",
                "subprotocol": subprotocols[0] if subprotocols else None,
                "headers": [(b"x-berth-test", b"1")]})
    if path == "/echo":
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                mark(f"disconnect-{query.get('id', 'echo')}", str(message["code"]))
                return
            await send({"type": "websocket.send", "text": message.get("text"),
                        "bytes": message.get("bytes")})
    elif path == "/slow":
        count = 0
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                mark(f"disconnect-{query.get('id', 'slow')}", str(message["code"]))
                return
            count += 1
            await asyncio.sleep(0.2)
    elif path == "/hold":
        message = await receive()
        mark(f"disconnect-{query.get('id', 'hold')}", str(message.get("code")))
    elif path.startswith("/scope"):
        await send({"type": "websocket.send", "text": json.dumps(
            {key: scope[key] for key in ("scheme", "client", "server", "path")}
            | {"raw_path": scope["raw_path"].decode("latin-1")})})
        while (await receive())["type"] != "websocket.disconnect":
            pass
    elif path == "/linger":
        await linger(receive, query["id"], float(query["sleep"]))
    elif path == "/close":
        await send({"type": "websocket.close", "code": int(query.get("code", 1000))})
        message = await receive()
        mark(f"disconnect-{query.get('id', 'close')}", str(message.get("code")))


async def linger(receive, name: str, seconds: float) -> None:
    global lingering
    lingering += 1
    outcome = "returned"
    try:
        while (await receive())["type"] != "websocket.disconnect":
            pass
        await asyncio.sleep(seconds)
        mark(f"cleaned-{name}", "done")
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        lingering -= 1
        mark(f"finally-{name}", outcome)

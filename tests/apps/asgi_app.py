"""A raw ASGI 3 app for tests/test_asgi.py: the worker's own behaviour (lifespan, the
watchdog, disconnects, the drain), apart from any framework.

Environment: ASGI_MARKERS, a folder where the app writes what it saw (lifespan events,
disconnects, cancellations); ASGI_LIFESPAN: "ok" (default), "fail" (lifespan.startup.failed),
"raise" (an exception on the lifespan scope), "slow-shutdown" (ASGI_SHUTDOWN_S seconds, 0.3 by
default), "slow-startup" (ASGI_STARTUP_S seconds, 0.5 by default, before it completes);
ASGI_IMPORT_SLEEP: seconds the import takes (the worker boots meanwhile).

Routes: /hello; /scope (the scope as JSON, headers decoded); /state (scope["state"]);
/echo (the body, read with receive() piece by piece; sizes of the pieces in a header);
/stream?n=&delay= (n parts, delay seconds apart, no length: chunked); /forever (parts every
0.1 s until the client goes; writes the marker "disconnect-<id>" when receive() says so);
/ignore-disconnect (streams nothing and never reads: sleeps; writes "cancelled-<id>" when
cancelled); /block?s= (time.sleep on the loop: the watchdog's case); /file?claim= (pathsend of
this file; claim: a content-length of the app's own); /raise (an exception before the
response); /raise-after (after the head); /start-only (http.response.start, then return); /mark
(calls getsid(), a system call a tracer sees, and answers the query string); /reuse?as=
(a body of 12 bytes sent from one 4-byte buffer refilled between the parts).
"""

import asyncio
import json
import os
import time
from pathlib import Path
from urllib.parse import parse_qs

MARKERS = Path(os.environ.get("ASGI_MARKERS", "/nonexistent"))
if os.environ.get("ASGI_IMPORT_SLEEP"):
    time.sleep(float(os.environ["ASGI_IMPORT_SLEEP"]))


def mark(name: str, text: str = "") -> None:
    if MARKERS.is_dir():
        (MARKERS / name).write_text(text)


async def lifespan(scope, receive, send):
    mode = os.environ.get("ASGI_LIFESPAN", "ok")
    if mode == "raise":
        raise RuntimeError("this app has no lifespan")
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if mode == "fail":
                await send({"type": "lifespan.startup.failed", "message": "no database"})
                return
            if mode == "slow-startup":
                await asyncio.sleep(float(os.environ.get("ASGI_STARTUP_S", "0.5")))
            scope["state"]["db"] = "connected"
            mark(f"startup-{os.getpid()}", json.dumps(scope["asgi"]))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if mode == "slow-shutdown":
                await asyncio.sleep(float(os.environ.get("ASGI_SHUTDOWN_S", "0.3")))
            mark(f"shutdown-{os.getpid()}")
            await send({"type": "lifespan.shutdown.complete"})
            return


async def start(send, status=200, headers=()):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), *headers]})


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await lifespan(scope, receive, send)
        return
    path = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]  # (the path includes root_path; routes are below it)
    query = {k: v[0] for k, v in parse_qs(scope["query_string"].decode()).items()}
    if path == "/hello":
        await start(send)
        await send({"type": "http.response.body", "body": b"Hello, world!\n"})
    elif path.startswith("/scope"):
        shown = {k: v for k, v in scope.items() if k not in ("headers", "state", "raw_path",
                                                               "query_string")}
        shown["headers"] = [[n.decode("latin-1"), v.decode("latin-1")]
                            for n, v in scope["headers"]]
        shown["raw_path"] = scope["raw_path"].decode("latin-1")
        shown["query_string"] = scope["query_string"].decode("latin-1")
        await start(send, headers=[(b"x-kind", b"json")])
        await send({"type": "http.response.body", "body": json.dumps(shown).encode()})
    elif path == "/state":
        await start(send)
        await send({"type": "http.response.body",
                    "body": json.dumps(scope.get("state")).encode()})
    elif path == "/echo":
        parts, sizes = [], []
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            parts.append(message["body"])
            sizes.append(len(message["body"]))
            if not message.get("more_body"):
                break
            if "slow" in query:
                await asyncio.sleep(0.01)
        await start(send, headers=[(b"x-pieces", str(len(sizes)).encode())])
        await send({"type": "http.response.body", "body": b"".join(parts)})
    elif path == "/stream":
        await start(send)
        for i in range(int(query.get("n", 3))):
            await send({"type": "http.response.body", "body": f"part {i}\n".encode(),
                        "more_body": True})
            await asyncio.sleep(float(query.get("delay", 0)))
        await send({"type": "http.response.body", "body": b""})
    elif path == "/forever":
        tag = query.get("id", "x")
        await start(send)

        async def watch():
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    mark(f"disconnect-{tag}")
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            while not watcher.done():
                await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
                await asyncio.sleep(0.1)
        except OSError:
            await watcher  # (send() raises once the client is gone; receive() says why)
    elif path == "/ignore-disconnect":
        tag = query.get("id", "x")
        await start(send)
        await send({"type": "http.response.body", "body": b"started\n", "more_body": True})
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            mark(f"cancelled-{tag}")
            raise
    elif path == "/mark":  # a system call strace sees (tests/test_batching.py), then the query
        os.getsid(0)
        await start(send)
        await send({"type": "http.response.body", "body": scope["query_string"]})
    elif path == "/reuse":  # one buffer refilled for each part (memoryview or bytearray)
        buf = bytearray(4)
        await start(send, headers=[(b"content-length", b"12")])
        for part in (b"AAAA", b"BBBB", b"CCCC"):
            buf[:] = part
            body = memoryview(buf) if query.get("as") == "memoryview" else buf
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/block":
        time.sleep(float(query.get("s", 1)))  # a blocking call in async code: the bug
        await start(send)
        await send({"type": "http.response.body", "body": b"blocked\n"})
    elif path == "/file":  # (claim=N: the app's own content-length, true or not)
        claim = query.get("claim")
        await start(send, headers=[(b"content-length", claim.encode())] if claim else ())
        await send({"type": "http.response.pathsend", "path": __file__})
    elif path == "/raise":
        raise ValueError("boom before the response")
    elif path == "/start-only":  # the head, then return: the response is never completed
        await start(send)
    elif path == "/raise-after":
        await start(send)
        await send({"type": "http.response.body", "body": b"half", "more_body": True})
        raise ValueError("boom after the head")
    else:
        await start(send, 404)
        await send({"type": "http.response.body", "body": b"not found\n"})

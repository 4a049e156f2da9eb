"""A Starlette app for berth's ASGI end-to-end tests: `berth -k asgi asgi_starlette:app`.

Routes (the same paths in asgi_fastapi and asgi_django, so the tests run the same cases):

    GET  /json?name=..       JSON: the framework, the name, the scope's http_version, the
                             event loop's package (asyncio or uvloop), the client's port
    POST /json               the JSON body echoed back with the sum and count of "numbers"
    GET  /stream?n=&size=&gate=   asgi_parts.pattern_stream: n chunks of `size` bytes
    GET  /sse?n=&delay=      text/event-stream: n events (id, event, data), `delay` s apart
    POST /upload             multipart field "file": its name, size and sha256; field "note"
    GET  /state              what the lifespan set at startup (request.state)
    GET  /forever?tag=       a StreamingResponse that never ends; marker <tag> says how its
                             generator learnt the client left
    GET  /raw-forever?tag=   asgi_parts.raw_forever: a raw ASGI endpoint that sees
                             http.disconnect from receive()
    GET  /raw-wait?tag=&seconds=   asgi_parts.raw_wait: one chunk, then it only waits on
                             receive() for http.disconnect

The lifespan writes marker "lifespan-startup" and "lifespan-shutdown" (the worker's pid).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from contextlib import asynccontextmanager

from asgi_parts import (
    STEP,
    loop_package,
    mark,
    pattern_chunk,
    pattern_stream,
    raw_forever,
    raw_wait,
    sse_events,
)
from starlette.applications import Starlette
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

FRAMEWORK = "starlette"


@asynccontextmanager
async def lifespan(app):
    mark("lifespan-startup", str(os.getpid()))
    yield {"greeting": f"hello from {FRAMEWORK}'s lifespan", "startup_pid": os.getpid()}
    mark("lifespan-shutdown", str(os.getpid()))


async def json_get(request):
    return JSONResponse({"framework": FRAMEWORK, "name": request.query_params.get("name"),
                         "http_version": request.scope["http_version"], "loop": loop_package(),
                         "client_port": request.scope["client"][1]})


async def json_post(request):
    data = await request.json()
    numbers = data.get("numbers", [])
    return JSONResponse({"framework": FRAMEWORK, "echo": data, "sum": sum(numbers),
                         "count": len(numbers)})


async def stream(request):
    q = request.query_params
    return StreamingResponse(pattern_stream(int(q.get("n", 5)), int(q.get("size", 32)),
                                            q.get("gate")),
                             media_type="application/octet-stream")


async def sse(request):
    q = request.query_params
    return StreamingResponse(sse_events(FRAMEWORK, int(q.get("n", 4)),
                                        float(q.get("delay", 0.05))),
                             media_type="text/event-stream", headers={"cache-control": "no-cache"})


async def upload(request):
    async with request.form() as form:
        file = form["file"]
        h = hashlib.sha256()
        size = 0
        while chunk := await file.read(64 * 1024):
            h.update(chunk)
            size += len(chunk)
        return JSONResponse({"framework": FRAMEWORK, "filename": file.filename, "size": size,
                             "sha256": h.hexdigest(), "note": form.get("note")})


async def state(request):
    return JSONResponse({"greeting": request.state.greeting,
                         "startup_pid": request.state.startup_pid, "pid": os.getpid()})


async def forever(request):
    """Starlette's documented way: the generator asks request.is_disconnected() (a receive()
    that does not wait) between chunks."""
    tag = request.query_params["tag"]

    async def chunks():
        i = 0
        try:
            while True:
                if await request.is_disconnected():
                    mark(tag, "http.disconnect")
                    return
                yield pattern_chunk(i, 64)
                i += 1
                await asyncio.sleep(STEP)
        except BaseException as exc:  # cancelled or closed: say which
            mark(tag, type(exc).__name__)
            raise

    return StreamingResponse(chunks(), media_type="application/octet-stream")


app = Starlette(
    routes=[
        Route("/json", json_get, methods=["GET"]),
        Route("/json", json_post, methods=["POST"]),
        Route("/stream", stream),
        Route("/sse", sse),
        Route("/upload", upload, methods=["POST"]),
        Route("/state", state),
        Route("/forever", forever),
        Route("/raw-forever", raw_forever),
        Route("/raw-wait", raw_wait),
    ],
    lifespan=lifespan,
)

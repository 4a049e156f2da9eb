"""A FastAPI app for berth's ASGI end-to-end tests: `berth -k asgi asgi_fastapi:app`.

The routes and markers of asgi_starlette (see its docstring), written the FastAPI way:
pydantic bodies, `UploadFile` (python-multipart parses the form), `EventSourceResponse` with
`ServerSentEvent` for /sse, and a lifespan whose state reaches `request.state`. The two endless
streams differ from Starlette's: /forever is a plain generator that never asks whether its
client is still there (what most FastAPI code does), /sse-forever is an endless
`EventSourceResponse`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from contextlib import asynccontextmanager

from asgi_parts import STEP, endless, loop_package, mark, pattern_stream, raw_forever
from fastapi import FastAPI, Form, Request, UploadFile
from fastapi.responses import StreamingResponse
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel

FRAMEWORK = "fastapi"


@asynccontextmanager
async def lifespan(app: FastAPI):
    mark("lifespan-startup", str(os.getpid()))
    yield {"greeting": f"hello from {FRAMEWORK}'s lifespan", "startup_pid": os.getpid()}
    mark("lifespan-shutdown", str(os.getpid()))


app = FastAPI(lifespan=lifespan)


class Numbers(BaseModel):
    numbers: list[int]
    label: str


@app.get("/json")
async def json_get(request: Request, name: str | None = None) -> dict:
    return {"framework": FRAMEWORK, "name": name,
            "http_version": request.scope["http_version"], "loop": loop_package(),
            "client_port": request.scope["client"][1]}


@app.post("/json")
async def json_post(data: Numbers) -> dict:
    return {"framework": FRAMEWORK, "echo": data.model_dump(), "sum": sum(data.numbers),
            "count": len(data.numbers)}


@app.get("/stream")
async def stream(n: int = 5, size: int = 32, gate: str | None = None) -> StreamingResponse:
    return StreamingResponse(pattern_stream(n, size, gate), media_type="application/octet-stream")


@app.get("/sse", response_class=EventSourceResponse)
async def sse(n: int = 4, delay: float = 0.05):
    for i in range(n):
        if i:
            await asyncio.sleep(delay)
        yield ServerSentEvent(id=str(i), event="tick", raw_data=f"{FRAMEWORK} {i}")


@app.post("/upload")
async def upload(file: UploadFile, note: str | None = Form(None)) -> dict:
    h = hashlib.sha256()
    size = 0
    while chunk := await file.read(64 * 1024):
        h.update(chunk)
        size += len(chunk)
    return {"framework": FRAMEWORK, "filename": file.filename, "size": size,
            "sha256": h.hexdigest(), "note": note}


@app.get("/state")
async def state(request: Request) -> dict:
    return {"greeting": request.state.greeting, "startup_pid": request.state.startup_pid,
            "pid": os.getpid()}


@app.get("/forever")
async def forever(tag: str) -> StreamingResponse:
    return StreamingResponse(endless(tag), media_type="application/octet-stream")


@app.get("/sse-forever", response_class=EventSourceResponse)
async def sse_forever(tag: str):
    i = 0
    try:
        while True:
            yield ServerSentEvent(id=str(i), event="tick", raw_data=f"{FRAMEWORK} {i}")
            i += 1
            await asyncio.sleep(STEP)
    except BaseException as exc:  # cancelled or closed: say which
        mark(tag, type(exc).__name__)
        raise


app.add_route("/raw-forever", raw_forever)

"""What the ASGI framework test apps (asgi_fastapi, asgi_starlette, asgi_django) share: the
bodies they stream, so each app only says how its framework responds with them.

  loop_package()          "asyncio" or "uvloop": the package of the running event loop
  mark(name, text)        appends a line to the marker file $PROTO_MARKER_DIR/<name>; the tests
                          read it (what an app saw after its client went away)
  pattern_chunk(i, size)  the i-th chunk of a streamed body: `size` bytes a test recomputes
  pattern_stream(n, size, gate)  n such chunks. With a gate it holds after the first chunk
                          until the test creates the file <gate> in the marker directory, so
                          the test knows the first chunk reached it while the app still ran
                          (a buffering server would hold it back: marker "<gate>.timeout"
                          after 5 s)
  sse_events(framework, n, delay)  n events in the text/event-stream format, delay s apart
  endless(tag)            a chunk every STEP seconds for ever; when it is cancelled
                          (CancelledError) or closed (GeneratorExit), marker <tag> says which
  raw_forever             a raw ASGI 3 endpoint that streams until its client goes away and
                          learns of that as the ASGI spec says: `await receive()` returns
                          {"type": "http.disconnect"} (marker <tag>)
  raw_wait                a raw ASGI 3 endpoint that sends its head and one chunk, then only
                          waits on receive() (a long poll, an idle event stream): marker <tag>
                          reads "http.disconnect", or "timeout" if it was not told in time
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from urllib.parse import parse_qs

STEP = 0.05  # seconds between the chunks of an endless stream
GATE_WAIT = 5.0  # seconds a gated stream waits for the test


def loop_package() -> str:
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


def mark(name: str, text: str) -> None:
    d = os.environ.get("PROTO_MARKER_DIR")
    if d:
        with open(os.path.join(d, name), "a") as f:
            f.write(f"{text}\n")


def pattern_chunk(i: int, size: int) -> bytes:
    head = f"chunk {i:04d}|".encode()
    return (head * (size // len(head) + 1))[:size]


async def pattern_stream(n: int, size: int, gate: str | None = None):
    for i in range(n):
        yield pattern_chunk(i, size)
        if i == 0 and gate:
            await _wait_for_gate(gate)


async def _wait_for_gate(gate: str) -> None:
    path = os.path.join(os.environ.get("PROTO_MARKER_DIR", "."), gate)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GATE_WAIT
    while not os.path.exists(path):
        if loop.time() > deadline:
            mark(f"{gate}.timeout", "the gate stayed shut")
            return
        await asyncio.sleep(0.01)


async def sse_events(framework: str, n: int, delay: float):
    for i in range(n):
        if i:
            await asyncio.sleep(delay)
        yield f"id: {i}\nevent: tick\ndata: {framework} {i}\n\n"


async def endless(tag: str):
    i = 0
    try:
        while True:
            yield pattern_chunk(i, 64)
            i += 1
            await asyncio.sleep(STEP)
    except BaseException as exc:
        mark(tag, type(exc).__name__)
        raise


class RawForever:
    """GET ?tag=T (see the module docstring). An object, not a function: Starlette's Route
    calls a function with a Request, and any other callable as an ASGI app.

    The body goes out from a second task while this one waits on receive(): the first
    receive() gives the (empty) request body, the next returns only when the client is gone.
    """

    async def __call__(self, scope, receive, send) -> None:
        tag = parse_qs(scope["query_string"].decode())["tag"][0]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})

        async def pump() -> None:
            i = 0
            while True:
                await send({"type": "http.response.body", "body": pattern_chunk(i, 64),
                            "more_body": True})
                i += 1
                await asyncio.sleep(STEP)

        pumping = asyncio.ensure_future(pump())
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    mark(tag, "http.disconnect")
                    return
        finally:
            pumping.cancel()
            # (a send() after the client left raises OSError, as the spec says: expected here)
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await pumping


raw_forever = RawForever()


class RawWait:
    """GET ?tag=T&seconds=S (see the module docstring): after the first chunk it writes
    nothing, so only the server's reading of the connection can tell it the client left."""

    async def __call__(self, scope, receive, send) -> None:
        query = parse_qs(scope["query_string"].decode())
        tag, seconds = query["tag"][0], float(query.get("seconds", ["4"])[0])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream")]})
        await send({"type": "http.response.body", "body": pattern_chunk(0, 64),
                    "more_body": True})

        async def until_disconnect() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        try:
            await asyncio.wait_for(until_disconnect(), seconds)
        except asyncio.TimeoutError:
            mark(tag, "timeout")
            with contextlib.suppress(OSError):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        mark(tag, "http.disconnect")


raw_wait = RawWait()

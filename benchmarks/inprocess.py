#!/usr/bin/env python3
"""CPU time of a WSGI or ASGI app per request, called in-process with no server: what any server
has to spend on the app itself, so that a server's CPU us/req minus this is the server's own share.

    python benchmarks/inprocess.py flaskapp:app
    python benchmarks/inprocess.py djangoapp:application --repeats 5 --seconds 0.5 --json
    python benchmarks/inprocess.py fastapiapp:app

The app is imported from benchmarks/ (the current directory and this file's directory are put
on sys.path) and called as a server would for wrk's request, `GET / HTTP/1.1` with only a
`Host: 127.0.0.1:<port>` header: a fresh environ (a copy of a template, with its own empty
`wsgi.input`), `start_response`, the body iterated to the end, then `close()`. An ASGI 3 app (a
coroutine function, or an object whose `__call__` is one: FastAPI, Starlette) gets a copy of a
scope template as berth's ASGI worker makes it, a `receive` that gives the empty body and then
`http.disconnect`, and a `send` that keeps the status and counts the body; the calls of a batch
are awaited one after another in one coroutine on one event loop (uvloop when installed, as the
servers use), so the loop's own work is counted only when the app suspends. The lifespan
protocol is not run. After a warm-up,
the calls are timed with `time.process_time` (CPU time, not wall time, so a busy neighbour on a
shared machine slows the run but barely changes the number) in `--repeats` batches of about
`--seconds` CPU seconds each; the median batch gives us/call. The garbage collector stays on,
as in a server. Copying the environ template is included: a few hundred nanoseconds, which a
server spends too. Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import io
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from wsgiref.util import FileWrapper

BENCH_DIR = Path(__file__).resolve().parent
WARMUP_CALLS = 500  # enough for lazy imports, caches and Django's URL resolver to settle
CALIBRATE_S = 0.05  # a batch at least this long sizes the measured batches
MAX_CALLS = 5_000_000  # per batch: bounds a batch of a no-op app
MAX_TOTAL_S = 120.0  # wall-clock bound on the whole measurement

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
AsgiApp = Callable[..., Awaitable[None]]  # (scope, receive, send)


def request_environ(port: int = 8000) -> dict[str, Any]:
    """The environ template of wrk's `GET / HTTP/1.1` with `Host: 127.0.0.1:<port>`, with the
    keys berth sets (PEP 3333's, plus RAW_URI as Gunicorn and berth give it)."""
    return {
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": FileWrapper,
        "wsgi.input_terminated": True,
        "SCRIPT_NAME": "",
        "SERVER_SOFTWARE": "inprocess",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": str(port),
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "40000",
        "REQUEST_METHOD": "GET",
        "RAW_URI": "/",
        "PATH_INFO": "/",
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": f"127.0.0.1:{port}",
    }


def request_scope(port: int = 8000) -> dict[str, Any]:
    """The ASGI scope template of the same request, with the keys berth -k asgi sets."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "server": ("127.0.0.1", port),
        "client": ("127.0.0.1", 40000),
        "scheme": "http",
        "method": "GET",
        "root_path": "",
        "path": "/",
        "raw_path": b"/",
        "query_string": b"",
        "headers": [(b"host", f"127.0.0.1:{port}".encode())],
    }


def is_asgi(app: Any) -> bool:
    """An ASGI 3 app: a coroutine function, or an instance of a class whose `__call__` is one
    (FastAPI, Starlette)."""
    return inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(
        inspect.getattr_static(type(app), "__call__", None)
    )


def load_app(spec: str) -> Any:
    """`module:name` (`name` may be dotted); `module` alone means `module:application`."""
    module_name, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in (attr or "application").split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec}: {type(obj).__name__} object is not callable")
    return obj


def call_once(app: WsgiApp, template: dict[str, Any]) -> tuple[str, int]:
    """One request as a server makes it; returns (status, body bytes)."""
    environ = template.copy()  # apps write into the environ: each request gets its own
    environ["wsgi.input"] = io.BytesIO(b"")
    status = ""

    def start_response(s: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        nonlocal status
        status = s

    result = app(environ, start_response)
    size = 0
    try:
        for chunk in result:
            size += len(chunk)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return status, size


def cpu_seconds(app: WsgiApp, template: dict[str, Any], calls: int) -> float:
    """CPU time (this process, all threads) of `calls` calls."""
    start = time.process_time()
    for _ in range(calls):
        call_once(app, template)
    return time.process_time() - start


async def call_once_asgi(app: AsgiApp, template: dict[str, Any]) -> tuple[str, int]:
    """One ASGI request as a server makes it; returns (status, body bytes)."""
    scope = template.copy()  # apps write into the scope: each request gets its own
    scope["headers"] = list(template["headers"])
    code = 0
    size = 0
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal code, size
        if message["type"] == "http.response.start":
            code = message["status"]
        elif message["type"] == "http.response.body":
            size += len(message.get("body", b""))

    await app(scope, receive, send)
    return status_text(code), size


def status_text(code: int) -> str:
    """200 -> "200 OK", as a WSGI status reads."""
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def cpu_seconds_asgi(
    loop: asyncio.AbstractEventLoop, app: AsgiApp, template: dict[str, Any], calls: int
) -> float:
    """CPU time (this process, all threads) of `calls` ASGI calls, awaited one after another."""

    async def batch() -> None:
        for _ in range(calls):
            await call_once_asgi(app, template)

    start = time.process_time()
    loop.run_until_complete(batch())
    return time.process_time() - start


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (what the servers of the ASGI scenarios use), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


@dataclass
class InprocessResult:
    app: str
    us_per_call: float  # median over repeats
    repeats_us: list[float]
    calls_per_repeat: int
    status: str
    body_bytes: int


def measure(
    spec: str, *, repeats: int = 5, seconds: float = 0.3, port: int = 8000
) -> InprocessResult:
    """Load `spec`, check one response, warm up, then time `repeats` batches of calls."""
    app = load_app(spec)
    if not is_asgi(app):
        environ = request_environ(port)
        return _measure(
            spec, lambda n: cpu_seconds(app, environ, n), call_once(app, environ), repeats, seconds
        )
    loop = new_event_loop()
    try:
        scope = request_scope(port)
        first = loop.run_until_complete(call_once_asgi(app, scope))
        return _measure(
            spec, lambda n: cpu_seconds_asgi(loop, app, scope, n), first, repeats, seconds
        )
    finally:
        loop.close()


def _measure(
    spec: str,
    timed: Callable[[int], float],
    first: tuple[str, int],
    repeats: int,
    seconds: float,
) -> InprocessResult:
    """`timed(n)`: the CPU seconds of n calls; `first`: the first call's (status, body bytes)."""
    deadline = time.monotonic() + MAX_TOTAL_S
    status, size = first
    if not status.startswith("200"):
        raise RuntimeError(f"{spec}: GET / answered {status!r}, not 200")
    timed(WARMUP_CALLS)
    # Size the batches: double until one takes CALIBRATE_S, then scale to `seconds`.
    calls = 100
    while (spent := timed(calls)) < CALIBRATE_S and calls < MAX_CALLS:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{spec}: calibration took longer than {MAX_TOTAL_S:.0f} s")
        calls *= 2
    calls = max(1, min(MAX_CALLS, round(calls * seconds / max(spent, 1e-9))))
    per_call: list[float] = []
    for _ in range(repeats):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{spec}: measurement took longer than {MAX_TOTAL_S:.0f} s")
        per_call.append(timed(calls) / calls * 1e6)
    return InprocessResult(
        app=spec,
        us_per_call=statistics.median(per_call),
        repeats_us=per_call,
        calls_per_repeat=calls,
        status=status,
        body_bytes=size,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="CPU time per request of a WSGI or ASGI app called in-process (no server).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("app", help="MODULE:NAME, imported from benchmarks/")
    parser.add_argument("--repeats", type=int, default=5, help="timed batches (median is kept)")
    parser.add_argument("--seconds", type=float, default=0.3, help="CPU seconds per batch")
    parser.add_argument("--port", type=int, default=8000, help="port in the Host header")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args(argv)
    if args.repeats < 1 or not 0 < args.seconds <= 10:
        parser.error("--repeats must be >= 1 and --seconds in (0, 10]")
    # The benchmark apps live next to this file; the current directory comes first, as for a
    # server started with --chdir.
    sys.path[:0] = [str(Path.cwd()), str(BENCH_DIR)]
    result = measure(args.app, repeats=args.repeats, seconds=args.seconds, port=args.port)
    if args.json:
        print(json.dumps(asdict(result)))
    else:
        spread = ", ".join(f"{v:.2f}" for v in result.repeats_us)
        print(
            f"{result.app}: {result.us_per_call:.2f} us/call in-process (median of "
            f"{len(result.repeats_us)} x {result.calls_per_repeat:,} calls: {spread}); "
            f"{result.status}, {result.body_bytes} body bytes"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

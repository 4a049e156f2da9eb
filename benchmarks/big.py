"""1 MiB response WSGI app for the benchmarks: one prebuilt bytes object with a Content-Length."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

SIZE = 1024 * 1024
BODY = b"x" * SIZE
HEADERS = [("Content-Type", "application/octet-stream"), ("Content-Length", str(SIZE))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", HEADERS)
    return [BODY]

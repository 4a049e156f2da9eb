"""Blocking WSGI app for the benchmarks: sleeps 50 ms per request (a stand-in for I/O wait).

With W workers x T threads the throughput ceiling is W * T / 0.05 requests per second.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

SLEEP_SECONDS = 0.05
BODY = b"slept 50 ms"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    time.sleep(SLEEP_SECONDS)
    start_response("200 OK", HEADERS)
    return [BODY]

"""WSGI app for the benchmarks that waits 1 ms per request (a quick database call): shorter
than berth's rescue look, so it shows whether such waits still overlap on the app threads.

With T threads the ceiling is T / 0.001 requests per second per worker, if the CPU keeps up.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

WAIT_SECONDS = 0.001
BODY = b"waited 1 ms"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    time.sleep(WAIT_SECONDS)
    start_response("200 OK", HEADERS)
    return [BODY]

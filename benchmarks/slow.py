"""Blocking WSGI apps for the benchmarks: each sleeps per request, a stand-in for I/O wait.

`app` sleeps 50 ms: with W workers x T threads the throughput ceiling is W * T / 0.05 requests
per second. `wait` sleeps 1 ms (a quick database call): it shows whether such short waits
still overlap on the app threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

SLEEP_SECONDS = 0.05
WAIT_SECONDS = 0.001


def sleeping(seconds: float) -> Callable[..., Iterable[bytes]]:
    """A WSGI app that sleeps `seconds`, then answers with a short body."""
    body = f"slept {seconds * 1000:g} ms".encode()
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        time.sleep(seconds)
        start_response("200 OK", headers)
        return [body]

    return app


app = sleeping(SLEEP_SECONDS)
wait = sleeping(WAIT_SECONDS)

"""WSGI test app for what idle connections cost (run the server with PYTHONTRACEMALLOC=1).

Routes:
  /heap      the worker's traced Python heap in bytes, after a garbage collection
  /port      REMOTE_PORT, as the environ says it
  /upload    reads wsgi.input to its end; answers its size
  anything else: "ok"
"""

from __future__ import annotations

import gc
import tracemalloc


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/heap":
        gc.collect()
        body = str(tracemalloc.get_traced_memory()[0]).encode()
    elif path == "/port":
        body = environ["REMOTE_PORT"].encode()
    elif path == "/upload":
        size = 0
        while data := environ["wsgi.input"].read(65536):
            size += len(data)
        body = str(size).encode()
    else:
        body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

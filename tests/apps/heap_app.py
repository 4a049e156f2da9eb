"""WSGI test app for what idle connections cost (run the server with PYTHONTRACEMALLOC=1).

Routes:
  /gc-off    collects garbage once, then turns the garbage collector off: what is not freed
             by reference counting from then on stays, and /heap counts it
  /heap      the worker's traced Python heap in bytes
  /port      REMOTE_PORT, as the environ says it
  /upload    reads wsgi.input to its end; answers its size
  anything else: "ok"
"""

from __future__ import annotations

import gc
import tracemalloc


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/gc-off":
        gc.collect()
        gc.disable()
        body = b"off"
    elif path == "/heap":
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

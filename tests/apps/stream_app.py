"""WSGI test app for streaming responses and their deadline (`--timeout` measures silence).

Routes (query parameters in brackets):
  /stream [n, every]          yields n parts ("part <i>\\n"), sleeping `every` seconds before
                              each; chunked (no Content-Length)
  /silent [parts, every, s]   yields `parts` parts, then sleeps s seconds (silent), then tries
                              to yield one more part
  /empty [n, every]           yields n empty parts (b""), sleeping `every` seconds before
                              each, then "end\n" (a keep-alive comment's worth of progress)
  /write [n, every]           the same as /stream through the legacy write() callable
  /slowread [mb]              mb MiB in 64 KiB parts as fast as the client takes them
  /upload                     reads wsgi.input to its end in 64 KiB reads; answers its size
  /writeread [mb]             mb MiB in 64 KiB parts through the write() callable
Every generator's close() and `finally` print "closed <route> <id>" to stderr, where the
test reads it (the id is the query parameter `id`, default "-").
"""

from __future__ import annotations

import sys
import time
from urllib.parse import parse_qs


def _q(environ) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _said(route: str, ident: str) -> None:
    sys.stderr.write(f"closed {route} {ident}\n")
    sys.stderr.flush()


def _parts(route, ident, n, every, silent_after=None, silence=0.0):
    try:
        for i in range(n):
            if every:
                time.sleep(every)
            yield b"part %d\n" % i
        if silent_after is not None:
            time.sleep(silence)
            yield b"after the silence\n"
    finally:
        _said(route, ident)


def _empty(n, every):
    for _ in range(n):
        time.sleep(every)
        yield b""
    yield b"end\n"


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    q = _q(environ)
    ident = q.get("id", "-")
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return _parts("stream", ident, int(q.get("n", "10")), float(q.get("every", "0.5")))
    if path == "/silent":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _parts("silent", ident, int(q.get("parts", "2")), float(q.get("every", "0.1")),
                      silent_after=True, silence=float(q.get("s", "5")))
    if path == "/empty":
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return _empty(int(q.get("n", "10")), float(q.get("every", "0.5")))
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        every = float(q.get("every", "0.5"))
        for i in range(int(q.get("n", "10"))):
            time.sleep(every)
            write(b"part %d\n" % i)
        return [b"end\n"]
    if path == "/slowread":
        size = int(q.get("mb", "8")) << 20
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(size))])
        block = b"x" * 65536
        return (block for _ in range(size // 65536))
    if path == "/writeread":
        size = int(q.get("mb", "8")) << 20
        write = start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                          ("Content-Length", str(size))])
        block = b"x" * 65536
        for _ in range(size // 65536):
            write(block)
        return []
    if path == "/upload":
        stream = environ["wsgi.input"]
        total = 0
        while True:
            data = stream.read(65536)
            if not data:
                break
            total += len(data)
        body = b"%d\n" % total
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    start_response("404 Not Found", [("Content-Length", "0")])
    return [b""]

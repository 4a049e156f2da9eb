"""ASGI 3 twin of proto_app.py: the routes the HTTP conformance tests use (test_http,
test_limits), answering byte for byte as the WSGI app does where the tests compare bodies
and headers, so both worker kinds are held to the same HTTP rules.

How each kind of WSGI answer is mirrored (the framing is then berth's, as with WSGI):
  - a list body (a known length) -> one `http.response.body` message, the last: berth sends
    a Content-Length, as the WSGI worker does for a list;
  - a generator without a Content-Length (/stream, /big?chunked=1) -> one message per part
    with more_body, then an empty last one: chunked on HTTP/1.1, close-delimited on 1.0;
  - wsgi.input read to the end -> receive() until more_body is false;
  - time.sleep -> asyncio.sleep.

Routes (query parameters in brackets), as in proto_app.py:
  /hello, /                   "Hello, world!\\n" with Content-Length
  /path                       path?query_string as text
  /echo [rs, wait], /record [tag]   the request body echoed (/record writes marker
                              "record-<tag>" on entry; wait=s: read after s seconds);
                              headers X-Content-Length, X-Method
  /sha256                     JSON {len, sha256, content_length} of the body
  /env                        JSON {"str": the request headers under their CGI names
                              (HTTP_X_FOO, CONTENT_TYPE, CONTENT_LENGTH; repeats joined with
                              ","), with REQUEST_METHOD, PATH_INFO, QUERY_STRING,
                              SERVER_PROTOCOL}: what test_http reads from the WSGI environ
  /stream [n, delay]          n parts "part-<i>\\n", no Content-Length
  /big [n, chunked, list]     n bytes of big_pattern(); Content-Length unless chunked=1;
                              list=1: the whole body in one message
  /early-hints [wait, status, late]  an http.response.informational (a Link), then "hinted"
                              (wait=path: once that file exists, 5 s at most; late=1: the
                              informational after http.response.start, an error;
                              many=n: n more of them first, with a 1 MiB x-pad header)
  /status [code, cl]          empty response with that status, header X-Status (and
                              content-length cl)
  /lying [give, claim, list]  content-length `claim` over a body of `give` bytes "x": in two
                              messages, or one (list=1)
  /set-cookies                two Set-Cookie headers
  /sleep [s]                  sleeps s seconds, then answers
  /raise-before               raises before http.response.start
  /str-body [how]             a str body (an app error, 500 as nothing was sent): in the last
                              body message (how=yield) or in one with more_body (how=write)
  /raise-after [cl]           starts a response (Content-Length 1000 if cl=1), sends two
                              parts, then raises
  /bad-header [kind]          header value containing CR/LF or a control character
                              (kind = crlf | lf | cr | nul | del | esc)
  /pid                        JSON {pid}: which worker answered
  anything else               404 "no route <path>"

X-Content-Length: WSGI's CONTENT_LENGTH, which berth sets to the dechunked length for a
chunked body. An ASGI app has only the headers, so the twin sends the Content-Length header,
or for a body without one the number of bytes it received: a chunked upload's length is then
the app's count, not berth's (the bytes themselves are compared by the tests all the same).

The lifespan scope is supported (startup and shutdown complete at once).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from urllib.parse import parse_qs

from proto_app import HELLO, _marker, big_pattern

TEXT = (b"content-type", b"text/plain")


def _qs(scope) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(scope["query_string"].decode("latin-1"),
                                         keep_blank_values=True).items()}


def _header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def _read_all(receive) -> bytes:
    parts = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("client went away while the app read the body")
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


async def _respond(send, body: bytes, status: int = 200, headers=()) -> None:
    """A body of known length: one last message (berth's Content-Length, as for a WSGI list)."""
    await send({"type": "http.response.start", "status": status,
                "headers": [TEXT, (b"content-length", str(len(body)).encode())]
                + list(headers)})
    await send({"type": "http.response.body", "body": body})


async def _json(send, obj) -> None:
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _stream(send, parts, headers) -> None:
    """Parts without a length: chunked on HTTP/1.1, close-delimited on 1.0 (a WSGI generator)."""
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    async for part in parts:
        await send({"type": "http.response.body", "body": part, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        return await _lifespan(receive, send)
    path = scope["path"]
    q = _qs(scope)
    method = scope["method"]

    if path in ("/hello", "/"):
        return await _respond(send, HELLO)

    if path == "/pid":
        return await _json(send, {"pid": os.getpid()})

    if path == "/path":
        return await _respond(send, f"{path}?{scope['query_string'].decode('latin-1')}".encode())

    if path in ("/echo", "/record"):
        if path == "/record":
            _marker(f"record-{q.get('tag', 'x')}")
        await asyncio.sleep(float(q.get("wait", 0)))  # (before reading the body)
        body = await _read_all(receive)
        length = _header(scope, b"content-length")
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", str(len(body)).encode()),
            (b"x-content-length", (length if length is not None else str(len(body))).encode()),
            (b"x-method", method.encode()),
        ]})
        return await send({"type": "http.response.body", "body": body})

    if path == "/sha256":
        h = hashlib.sha256()
        n = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            data = message.get("body", b"")
            h.update(data)
            n += len(data)
            if not message.get("more_body", False):
                break
        return await _json(send, {"len": n, "sha256": h.hexdigest(),
                                  "content_length": _header(scope, b"content-length")})

    if path.startswith("/env"):
        await _read_all(receive)
        cgi: dict[str, str] = {"REQUEST_METHOD": method, "PATH_INFO": path,
                               "QUERY_STRING": scope["query_string"].decode("latin-1"),
                               "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}"}
        for name, value in scope["headers"]:
            key = name.decode("latin-1").upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            text = value.decode("latin-1")
            cgi[key] = f"{cgi[key]},{text}" if key in cgi else text
        return await _json(send, {"str": cgi})

    if path == "/stream":
        n = int(q.get("n", "5"))
        delay = float(q.get("delay", "0"))

        async def parts():
            for i in range(n):
                if delay:
                    await asyncio.sleep(delay)
                yield f"part-{i}\n".encode()

        return await _stream(send, parts(), [TEXT])

    if path == "/big":
        n = int(q.get("n", str(1 << 20)))
        headers = [(b"content-type", b"application/octet-stream")]
        if q.get("chunked") != "1":
            headers.append((b"content-length", str(n).encode()))
        if q.get("list") == "1":  # one message with the whole body (a WSGI list)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            return await send({"type": "http.response.body",
                               "body": b"".join(big_pattern(n))})

        async def blocks():
            for block in big_pattern(n):
                yield block

        return await _stream(send, blocks(), headers)

    if path == "/status":
        code = int(q.get("code", "204"))
        headers = [(b"x-status", str(code).encode())]
        if "cl" in q:
            headers.append((b"content-length", q["cl"].encode()))
        await send({"type": "http.response.start", "status": code, "headers": headers})
        return await send({"type": "http.response.body", "body": b""})

    if path == "/lying":
        give = int(q.get("give", "10"))
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", q.get("claim", "5").encode())]})
        if q.get("list") == "1":
            return await send({"type": "http.response.body", "body": b"x" * give})
        await send({"type": "http.response.body", "body": b"x" * (give // 2),
                    "more_body": True})
        return await send({"type": "http.response.body", "body": b"x" * (give - give // 2)})

    if path == "/set-cookies":
        return await _respond(send, b"cookies", headers=[(b"set-cookie", b"a=1; Path=/"),
                                                         (b"set-cookie", b"b=2; Path=/")])

    if path == "/early-hints":  # [wait, status, late]: as proto_app's (late=1: after the start)
        hints = {"type": "http.response.informational", "status": int(q.get("status", "103")),
                 "headers": [(b"link", b"</style.css>; rel=preload; as=style")]}
        if q.get("late") == "1":
            await send({"type": "http.response.start", "status": 200, "headers": [TEXT]})
            await send(hints)
        pad = {**hints, "headers": [(b"x-pad", b"p" * (1 << 20))]}
        for _ in range(int(q.get("many", "0"))):
            await send(pad)
        await send(hints)
        wait = q.get("wait")
        until = time.monotonic() + 5
        while wait and not os.path.exists(wait) and time.monotonic() < until:
            await asyncio.sleep(0.01)
        return await _respond(send, b"hinted")

    if path == "/sleep":
        s = float(q.get("s", "1"))
        await asyncio.sleep(s)
        return await _respond(send, f"slept {s}".encode())

    if path == "/raise-before":
        raise RuntimeError("proto-boom-before-start-response")

    if path == "/str-body":
        await send({"type": "http.response.start", "status": 200, "headers": [TEXT]})
        more = q.get("how") == "write"
        await send({"type": "http.response.body", "body": "a str, not bytes", "more_body": more})
        return await send({"type": "http.response.body", "body": b""})

    if path == "/raise-after":
        headers = [TEXT] + ([(b"content-length", b"1000")] if q.get("cl") == "1" else [])
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for part in (b"partial-1\n", b"partial-2\n"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        raise RuntimeError("proto-boom-after-start-response")

    if path == "/bad-header":
        sep = {"crlf": b"\r\n", "lf": b"\n", "cr": b"\r", "nul": b"\x00", "del": b"\x7f",
               "esc": b"\x1b"}[q.get("kind", "crlf")]
        body = b"should-not-be-sent"
        return await _respond(send, body, headers=[(b"x-bad", b"ok" + sep + b"X-Injected: 1")])

    return await _respond(send, f"no route {path}".encode(), status=404)

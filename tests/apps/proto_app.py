"""WSGI test app for berth's end-to-end protocol tests: one app dispatching on PATH_INFO.

Routes (query parameters in brackets):
  /hello                      "Hello, world!\\n" with Content-Length (14 bytes)
  /path                       PATH_INFO?QUERY_STRING as text (for pipelining / ordering checks)
  /echo [rs, wait]            request body (read in pieces of rs bytes, default 64 KiB) echoed;
                              headers X-Content-Length, X-Method, X-Input-Terminated
                              (wait=s: sleeps s seconds before reading it)
  /record [tag, rs]           writes marker "record-<tag>" on entry, then echoes the body
  /sha256                     reads the body in 64 KiB pieces -> JSON {len, sha256, content_length}
  /env...                     JSON {"str": str environ values, "other": {key: repr(value)}}
  /input [op]                 exercises wsgi.input read(n)/readline(n)/readlines/iteration -> JSON
  /stream [n, delay, who]     generator of n parts "part-<i>\\n", no Content-Length (who=1:
                              "part-<i>@<thread name>\\n")
  /write                      write(b"one-"), write(b"two-"), then returns [b"three-", b"four"]
  /file [path, cl, claim, open]  wsgi.file_wrapper over the file at `path` (Content-Length if
                              cl=1; claim=N: Content-Length N, true or not; open=gzip|bz2:
                              opened with gzip.open or bz2.open)
  /file-like [n]              wsgi.file_wrapper over an in-memory file-like object (no fileno)
                              whose close() writes marker "close-filelike"
  /raise-before               raises before start_response
  /raise-base [kind, after]   raises KeyboardInterrupt (kind=kbint) or asyncio.CancelledError
                              (cancelled), before the response, or after one part (after=1)
  /exit                       sys.exit(3)
  /raise-after [cl]           starts a response, yields one part, then raises
  /str-body [how]             a str body (an app error, 500): yielded (how=yield, default),
                              written with the write() callable (how=write), or a list of
                              one str (how=list)
  /exc-info                   start_response 200, then replaces it with a 500 via exc_info
  /bad-header [kind]          header value containing CR/LF or a control character
                              (kind = crlf | lf | cr | nul | del | esc)
  /set-cookies                two Set-Cookie headers
  /sleep [s, who]             sleeps s seconds, then answers (who=1: and names its thread)
  /slow-iter [s]              a body whose __iter__ takes s seconds before its one part
  /uvloop [s]                 runs a uvloop event loop for s seconds (as an app calling async
                              code may), then answers
  /overlap [s]                sleeps s seconds; JSON {"most": the most app calls of /overlap
                              this process has run at once so far}
  /thread [spin]              the name of the thread answering (after spin ms of computing)
  /big [n, chunked, list]     n bytes of big_pattern(); Content-Length unless chunked=1;
                              list=1: as a list of one bytes object
  /status [code, cl]          empty response with that status (and Content-Length cl)
  /as-gunicorn-takes [kind]   a response whose start_response arguments Gunicorn takes and
                              PEP 3333 frowns on: str subclasses (kind=str-subclass: status,
                              names and values; str-enum: an enum.Enum mixed with str), the
                              headers as a tuple (tuple) or dict.items() (items), or a
                              Content-Length with spaces around it (spaced-length)
  /write-in-close [cl]        one part, then a close() that calls the write() callable
                              (after the body's end: never to be sent); cl=1: with a
                              Content-Length
  /lengths [values, list]     one Content-Length header per comma-separated value over a
                              body "0123456789": in two parts, or one (a list, list=1)
  /lying [give, claim, list]  Content-Length `claim` over a body of `give` bytes "x": in two
                              parts (a generator), or one (a list, list=1)
  /closeable [tag, mode]      iterable whose close() writes marker "close-<tag>"
                              (mode: normal | raise | raise-first | big | sized,
                              one part with a Content-Length | slow, one part and a 1 s close()
                              | sized-slow, both)
  /close-counter              JSON {tag: count} of close() calls seen by this process
  /pid                        JSON {pid, import_pid, cwd, multithread, gc_frozen}
  /print [text]               print(text) to stdout and text-on-stderr to stderr
  /wsgi-errors                writes lines to wsgi.errors with print, write, writelines, flush
  /osenv [key]                JSON {key: os.environ.get(key)}
  /early-hints [wait, late, bad]  calls wsgi.early_hints with two Links (str, then bytes),
                              then answers "hinted" (wait=path: once that file exists, 5 s at
                              most; late=1: the hints come after the first body part;
                              bad=1: a header value with CR LF; many=n: n more calls
                              of a 1 MiB X-Pad header first)

Markers go to the directory named by $PROTO_MARKER_DIR (if set).
`validated_app` is a small app wrapped in wsgiref.validate.validator.
"""

from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import sys
import threading
import time
from urllib.parse import parse_qs
from wsgiref.validate import validator

IMPORT_PID = os.getpid()
_lock = threading.Lock()
_close_counts: dict[str, int] = {}
_overlap = [0, 0]  # /overlap: calls running now, the most at once

HELLO = b"Hello, world!\n"
BLOCK = 65536


def big_block(i: int) -> bytes:
    """Block i of the /big body: position dependent so reordering or loss is detected."""
    unit = f"<{i:07d}>".encode()  # 9 bytes
    return (unit * (BLOCK // len(unit) + 1))[:BLOCK]


def big_pattern(n: int):
    """Yield the n-byte /big body in pieces of at most 64 KiB."""
    i = 0
    left = n
    while left > 0:
        b = big_block(i)[:left]
        yield b
        left -= len(b)
        i += 1


def _marker(name: str) -> None:
    d = os.environ.get("PROTO_MARKER_DIR")
    if d:
        with open(os.path.join(d, name), "a") as f:
            f.write(f"{os.getpid()}\n")


def _qs(environ) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", ""),
                                         keep_blank_values=True).items()}


def _read_all(environ, size: int = BLOCK) -> bytes:
    stream = environ["wsgi.input"]
    parts = []
    while True:
        data = stream.read(size)
        if not data:
            break
        parts.append(data)
    return b"".join(parts)


def _text(start_response, body: bytes | str, status: str = "200 OK", extra=()):
    if isinstance(body, str):
        body = body.encode()
    start_response(status, [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(body)))] + list(extra))
    return [body]


def _json(start_response, obj, status: str = "200 OK"):
    body = json.dumps(obj).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(body)))])
    return [body]


class MarkedBytesIO(io.BytesIO):
    """A file-like object without a real file descriptor that records its close()."""

    def close(self):
        if not self.closed:
            _marker("close-filelike")
        super().close()


class Closeable:
    """Iterable that records its close() call."""

    def __init__(self, tag: str, parts, raise_after: int | None = None, close_takes: float = 0):
        self.tag = tag
        self.parts = list(parts) if not callable(parts) else parts
        self.raise_after = raise_after
        self.close_takes = close_takes

    def __iter__(self):
        parts = self.parts() if callable(self.parts) else self.parts
        for i, p in enumerate(parts):
            if self.raise_after is not None and i >= self.raise_after:
                raise RuntimeError(f"closeable-{self.tag}-raised")
            yield p

    def close(self):
        time.sleep(self.close_takes)
        with _lock:
            _close_counts[self.tag] = _close_counts.get(self.tag, 0) + 1
        _marker(f"close-{self.tag}")


def _input_ops(environ) -> dict:
    op = _qs(environ).get("op", "read")
    inp = environ["wsgi.input"]
    out: list[bytes] = []
    if op == "read":
        out.append(inp.read(3))
        out.append(inp.read(4))
        while True:
            d = inp.read(1000)
            if not d:
                break
            out.append(d)
        out.append(inp.read(10))  # past the end: b""
    elif op == "readline":
        for _ in range(100):
            line = inp.readline()
            out.append(line)
            if not line:
                break
    elif op == "readline_n":
        out.append(inp.readline(3))
        out.append(inp.readline(100))
        for _ in range(100):
            line = inp.readline(4)
            out.append(line)
            if not line:
                break
    elif op == "readlines":
        out = list(inp.readlines())
    elif op == "iter":
        out = [line for line in inp]
    else:
        raise ValueError(op)
    return {"op": op, "parts": [p.decode("latin-1") for p in out],
            "types": sorted({type(p).__name__ for p in out})}


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    q = _qs(environ)
    method = environ["REQUEST_METHOD"]

    if path == "/hello" or path == "/":
        return _text(start_response, HELLO)

    if path == "/path":
        return _text(start_response, f"{path}?{environ.get('QUERY_STRING', '')}")

    if path in ("/echo", "/record"):
        if path == "/record":
            _marker(f"record-{q.get('tag', 'x')}")
        time.sleep(float(q.get("wait", 0)))
        body = _read_all(environ, int(q.get("rs", BLOCK)))
        start_response("200 OK", [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(len(body))),
            ("X-Content-Length", environ.get("CONTENT_LENGTH", "")),
            ("X-Method", method),
            ("X-Input-Terminated", str(environ.get("wsgi.input_terminated"))),
        ])
        return [body]

    if path == "/sha256":
        h = hashlib.sha256()
        n = 0
        stream = environ["wsgi.input"]
        while True:
            data = stream.read(BLOCK)
            if not data:
                break
            h.update(data)
            n += len(data)
        return _json(start_response, {"len": n, "sha256": h.hexdigest(),
                                      "content_length": environ.get("CONTENT_LENGTH")})

    if path.startswith("/env"):
        body_len = len(_read_all(environ))
        strs = {k: v for k, v in environ.items() if isinstance(v, str)}
        other = {k: repr(v) for k, v in environ.items() if not isinstance(v, str)}
        extra = {
            "wsgi.version": list(environ.get("wsgi.version", ())),
            "wsgi.multithread": environ.get("wsgi.multithread"),
            "wsgi.multiprocess": environ.get("wsgi.multiprocess"),
            "wsgi.run_once": environ.get("wsgi.run_once"),
            "wsgi.input_terminated": environ.get("wsgi.input_terminated"),
            "has_file_wrapper": callable(environ.get("wsgi.file_wrapper")),
            "errors_has_write": hasattr(environ.get("wsgi.errors"), "write"),
            "input_has_read": hasattr(environ.get("wsgi.input"), "read"),
            "body_len": body_len,
        }
        return _json(start_response, {"str": strs, "other": other, "extra": extra})

    if path == "/input":
        return _json(start_response, _input_ops(environ))

    if path == "/stream":
        n = int(q.get("n", "5"))
        delay = float(q.get("delay", "0"))

        who = q.get("who") == "1"

        def gen():
            for i in range(n):
                if delay:
                    time.sleep(delay)
                at = f"@{threading.current_thread().name}" if who else ""
                yield f"part-{i}{at}\n".encode()

        start_response("200 OK", [("Content-Type", "text/plain")])
        return gen()

    if path == "/write-big":  # n pieces of 64 KiB through the write() callable
        write = start_response("200 OK", [("Content-Type", "application/octet-stream")])
        for _ in range(int(q.get("n", "16"))):
            write(b"w" * 65536)
        return []

    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"one-")
        write(b"two-")
        return [b"three-", b"four"]

    if path == "/file":
        fpath = q["path"]
        if q.get("open") in ("gzip", "bz2"):  # a decompressing file: it has the fd, not its bytes
            f = __import__(q["open"]).open(fpath, "rb")
        else:
            f = open(fpath, "rb")  # noqa: SIM115 - closed by the server via the file_wrapper
        headers = [("Content-Type", "application/octet-stream")]
        if "claim" in q:  # a Content-Length of the app's own, true or not
            headers.append(("Content-Length", q["claim"]))
        elif q.get("cl", "1") == "1":
            headers.append(("Content-Length", str(os.path.getsize(fpath))))
        start_response("200 OK", headers)
        wrapper = environ.get("wsgi.file_wrapper")
        return wrapper(f, BLOCK) if wrapper else iter(lambda: f.read(BLOCK), b"")

    if path == "/file-like":
        n = int(q.get("n", "300000"))
        data = b"".join(big_pattern(n))
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(n))])
        return environ["wsgi.file_wrapper"](MarkedBytesIO(data), 8192)

    if path == "/raise-before":
        raise RuntimeError("proto-boom-before-start-response")

    if path == "/raise-base":  # an exception that is no Exception, before or in the body
        import asyncio

        kind = {"kbint": KeyboardInterrupt, "cancelled": asyncio.CancelledError}[q["kind"]]
        if q.get("after") != "1":
            raise kind("proto-base-before")
        start_response("200 OK", [("Content-Type", "text/plain")])

        def parts():
            yield b"first\n"
            raise kind("proto-base-after")

        return parts()

    if path == "/exit":
        sys.exit(3)

    if path == "/str-body":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        if q.get("how") == "write":
            write("a str, not bytes")
            return []
        if q.get("how") == "list":
            return ["a str, not bytes"]
        return iter(["a str, not bytes"])

    if path == "/raise-after":
        headers = [("Content-Type", "text/plain")]
        if q.get("cl") == "1":
            headers.append(("Content-Length", "1000"))

        def gen():
            yield b"partial-1\n"
            yield b"partial-2\n"
            raise RuntimeError("proto-boom-after-start-response")

        start_response("200 OK", headers)
        return gen()

    if path == "/exc-info":
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise ValueError("proto-handled-error")
        except ValueError:
            body = b"handled-error"
            start_response("500 Internal Server Error",
                           [("Content-Type", "text/plain"),
                            ("Content-Length", str(len(body)))], sys.exc_info())
            return [body]

    if path == "/bad-header":
        sep = {"crlf": "\r\n", "lf": "\n", "cr": "\r", "nul": "\x00", "del": "\x7f",
               "esc": "\x1b"}[q.get("kind", "crlf")]
        body = b"should-not-be-sent"
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("X-Bad", f"ok{sep}X-Injected: 1"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    if path == "/set-cookies":
        return _text(start_response, b"cookies", extra=[("Set-Cookie", "a=1; Path=/"),
                                                        ("Set-Cookie", "b=2; Path=/")])

    if path == "/thread":
        until = time.monotonic() + float(q.get("spin", "0")) / 1000
        while time.monotonic() < until:
            pass
        return _text(start_response, threading.current_thread().name)

    if path == "/sleep":
        s = float(q.get("s", "1"))
        time.sleep(s)
        if q.get("who") == "1":
            return _text(start_response, f"slept {s} on {threading.current_thread().name}")
        return _text(start_response, f"slept {s}")

    if path == "/slow-iter":
        class SlowIter:
            def __iter__(self):
                time.sleep(float(q.get("s", "1")))
                return iter([b"iterated\n"])

        start_response("200 OK", [("Content-Type", "text/plain")])
        return SlowIter()

    if path == "/uvloop":
        import asyncio

        import uvloop

        loop = uvloop.new_event_loop()  # (it takes the signal wakeup fd while it runs)
        try:
            loop.run_until_complete(asyncio.sleep(float(q.get("s", "1"))))
        finally:
            loop.close()
        return _text(start_response, "ran uvloop")

    if path == "/overlap":
        with _lock:
            _overlap[0] += 1
            _overlap[1] = max(_overlap)
        time.sleep(float(q.get("s", "0.5")))
        with _lock:
            _overlap[0] -= 1
        return _json(start_response, {"most": _overlap[1]})

    if path == "/big":
        n = int(q.get("n", str(1 << 20)))
        headers = [("Content-Type", "application/octet-stream")]
        if q.get("chunked") != "1":
            headers.append(("Content-Length", str(n)))
        start_response("200 OK", headers)
        if q.get("list") == "1":
            return [b"".join(big_pattern(n))]
        return big_pattern(n)

    if path == "/lying":
        give = int(q.get("give", "10"))
        start_response("200 OK", [("Content-Length", q.get("claim", "5"))])
        if q.get("list") == "1":
            return [b"x" * give]
        return iter([b"x" * (give // 2), b"x" * (give - give // 2)])

    if path == "/as-gunicorn-takes":
        import enum

        class Text(str):  # (as markupsafe.Markup, Django's SafeString)
            pass

        class MediaType(str, enum.Enum):
            TEXT = "text/plain"

        kind = q.get("kind", "str-subclass")
        body = b"taken"
        headers = [("Content-Type", "text/plain"), ("X-Kind", kind),
                   ("Content-Length", str(len(body)))]
        status = "200 OK"
        if kind == "str-subclass":
            status = Text("200 OK")
            headers = [(Text(n), Text(v)) for n, v in headers]
        elif kind == "str-enum":
            headers[0] = ("Content-Type", MediaType.TEXT)
        elif kind == "tuple":
            headers = tuple(headers)
        elif kind == "items":
            headers = dict(headers).items()
        elif kind == "spaced-length":
            headers[2] = ("Content-Length", f" {len(body)} ")
        start_response(status, headers)
        return [body]

    if path == "/write-in-close":
        headers = [("Content-Length", "4")] if q.get("cl") == "1" else []
        write = start_response("200 OK", headers)

        class WritesInClose:
            def __iter__(self):
                return iter([b"body"])

            def close(self):
                write(b"late")

        return WritesInClose()

    if path == "/lengths":
        start_response("200 OK", [("Content-Length", v) for v in q["values"].split(",")])
        if q.get("list") == "1":
            return [b"0123456789"]
        return iter([b"01234", b"56789"])

    if path == "/status":
        code = int(q.get("code", "204"))
        reasons = {204: "No Content", 304: "Not Modified", 200: "OK", 404: "Not Found",
                   201: "Created", 418: "I'm a teapot"}
        headers = [("X-Status", str(code))]
        if "cl" in q:  # (as Django sets one on every response, a 204's too)
            headers.append(("Content-Length", q["cl"]))
        start_response(f"{code} {reasons.get(code, 'Status')}", headers)
        return []

    if path == "/closeable":
        tag = q.get("tag", "x")
        mode = q.get("mode", "normal")
        if mode in ("sized", "sized-slow"):  # one part, framed by Content-Length (not chunked)
            start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "4")])
            return Closeable(tag, [b"c-1\n"], close_takes=1.0 if mode == "sized-slow" else 0)
        start_response("200 OK", [("Content-Type", "text/plain")])
        if mode == "raise":
            return Closeable(tag, [b"c-1\n", b"c-2\n", b"c-3\n"], raise_after=1)
        if mode == "raise-first":  # taking the first part raises
            return Closeable(tag, [b"c-1\n"], raise_after=0)
        if mode == "big":
            return Closeable(tag, lambda: big_pattern(32 << 20))
        if mode == "slow":  # one part, and a close() that takes a second
            return Closeable(tag, [b"c-1\n"], close_takes=1.0)
        return Closeable(tag, [b"c-1\n", b"c-2\n"])

    if path == "/close-counter":
        with _lock:
            return _json(start_response, dict(_close_counts))

    if path == "/pid":
        return _json(start_response, {"pid": os.getpid(), "import_pid": IMPORT_PID,
                                      "cwd": os.getcwd(),
                                      "multithread": environ.get("wsgi.multithread"),
                                      "gc_frozen": gc.get_freeze_count()})

    if path == "/wsgi-errors":  # each way PEP 3333 gives to write to wsgi.errors
        errors = environ["wsgi.errors"]
        print("errors-print", file=errors)
        errors.write("errors-")
        errors.write("write\n")
        errors.writelines(["errors-lines-1\n", "errors-lines-2\n"])
        errors.write("errors-flushed")
        errors.flush()
        return _json(start_response, {"written": True})

    if path == "/print":
        text = q.get("text", "printed")
        print(text, flush=True)
        print(text + "-on-stderr", file=sys.stderr, flush=True)
        return _json(start_response, {"printed": text})

    if path == "/early-hints":
        hints = [("Link", "</style.css>; rel=preload; as=style"),
                 (b"Link", b" </app.js>; rel=preload; as=script ")]
        if q.get("bad") == "1":
            hints.append(("X-Split", "a\r\nInjected: 1"))
        pad = [("X-Pad", "p" * (1 << 20))]
        for _ in range(int(q.get("many", "0"))):
            environ["wsgi.early_hints"](pad)
        if q.get("late") == "1":
            start_response("200 OK", [("Content-Type", "text/plain")])

            def late():
                yield b"hin"
                environ["wsgi.early_hints"](hints)
                yield b"ted"
            return late()
        environ["wsgi.early_hints"](hints)
        wait = q.get("wait")
        if wait:
            until = time.monotonic() + 5
            while not os.path.exists(wait) and time.monotonic() < until:
                time.sleep(0.01)
        return _text(start_response, "hinted")

    if path == "/osenv":
        key = q.get("key", "")
        return _json(start_response, {key: os.environ.get(key)})

    return _text(start_response, f"no route {path}", status="404 Not Found")


def _simple(environ, start_response):
    """A PEP 3333-clean app for the validator: reads the body by CONTENT_LENGTH and echoes."""
    inp = environ["wsgi.input"]
    n = int(environ.get("CONTENT_LENGTH") or 0)
    body = inp.read(n) if n else b""
    if environ.get("PATH_INFO") == "/lines":
        first = inp.readline()  # at EOF: must be b""
        body += first
    out = b"method=%s path=%s query=%s body=%s" % (
        environ["REQUEST_METHOD"].encode(), environ["PATH_INFO"].encode("latin-1"),
        environ.get("QUERY_STRING", "").encode("latin-1"), body)
    if environ.get("PATH_INFO") == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return iter([b"a", b"b", out])
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(out)))])
    return [out]


validated_app = validator(_simple)

"""Error log and access log.

Both write through `write_whole_lines`: pieces of whole lines, of at most PIPE_BUF bytes to a
pipe or socket, so a line is one `os.write` (a write of at most PIPE_BUF bytes to a pipe is
atomic, so lines from several workers never interleave; files are opened with O_APPEND). The
error log waits until every line is written; the access log takes what the descriptor accepts
now and keeps the rest.

The access log never writes on the request path: a request appends its formatted line to a
list, and the worker's loop writes the lines twice a second (and at exit) through a sink that
never blocks (see `LineSink`). If the log is read so slowly that the backlog fills, lines are
dropped and counted on the error log. stdout itself is left blocking, since the app's own
print() shares it.

The access-log format uses Gunicorn's atoms and is compiled once into a Python function, so a
line costs about a microsecond and a half instead of the several of a `logging` record. Every
value is escaped (Apache's style, beyond Gunicorn's `\"`), so a client cannot forge fields or
lines; checking that a line needs no escaping is a third of that cost.
"""

from __future__ import annotations

import array
import base64
import errno
import fcntl
import functools
import json
import logging
import math
import os
import re
import select
import socket
import stat
import termios
import threading
import time
from collections.abc import Callable

PIPE_BUF = select.PIPE_BUF  # a pipe write of at most this many bytes is atomic
KEEP_UP = 0.005  # seconds a flush of the access log may wait for a reader that keeps up
ERROR_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"


def open_log_fd(target: str, default_fd: int) -> int:
    if target in ("-", "", None):
        return default_fd
    return os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)


def write_whole_lines(write: Callable[[memoryview], int], data: bytes, start: int = 0,
                      piece: int = PIPE_BUF, fits: Callable[[int], bool] | None = None) -> int:
    """The one place log bytes are written. Write `data` from `start` with `write` (an
    `os.write` or a socket send: returns the bytes taken, raises BlockingIOError when it would
    block) in pieces of whole lines of at most `piece` bytes, until all is written, `write`
    would block, or it took only part of a piece. A line longer than `piece` (a huge header
    in the access log) is one write of its own, never cut into several: other workers' writes
    to the same pipe would land between its parts. The kernel copies a pipe write in one go
    when the pipe has room for all of it, so `fits(n)`, when given (a pipe's), says whether
    it has; when it has not, this stops as if the pipe were full. Return the offset it got
    to: the caller decides whether to wait and go on (the error log) or keep the rest for
    later (the access log)."""
    view = memoryview(data)
    end = len(data)
    while start < end:
        stop = end
        if stop - start > piece:
            cut = data.rfind(b"\n", start, start + piece)
            if cut >= start:
                stop = cut + 1
            else:  # one line longer than a piece: all of it at once
                cut = data.find(b"\n", start + piece)
                stop = cut + 1 if cut >= 0 else end
                if fits is not None and not fits(stop - start):
                    break
        try:
            n = write(view[start:stop])
        except BlockingIOError:
            break
        start += n
        if start < stop:  # a partial write (a socket, a file, a long line): stop here
            break
    return start


def write_lines(fd: int, data: bytes) -> None:
    """Write all of `data` (whole lines) to `fd`, waiting as long as it takes: the error log.
    A line of at most PIPE_BUF bytes is one `os.write`. `fd` is blocking, unless someone made
    the description we share non-blocking: then wait for room rather than lose the line."""
    write = functools.partial(os.write, fd)
    done = 0
    while done < len(data):
        got = write_whole_lines(write, data, done)
        if got == done:
            time.sleep(0.01)
        done = got


def rfc3339(now: float) -> str:
    """`2026-12-01T14:05:09.123Z` (UTC, milliseconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


class JsonFormatter(logging.Formatter):
    """--log-format json, for the error log: one JSON object per record, the traceback (if
    any) in one field. ASCII only: every control character and non-ASCII byte is escaped."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"timestamp": rfc3339(record.created), "level": record.levelname.lower(),
                "pid": record.process, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line)


class ErrorStream:
    """`wsgi.errors`: what the app writes goes to berth's error log as Gunicorn's goes to its
    own (PEP 3333: "the server's main error log"), through the logger, so --error-logfile,
    --log-format json, syslog and a logging configuration all apply. Text is held per thread
    until it ends a line, then is one record at ERROR level: print() writes its text and its
    end apart, and a logging handler (Flask's default writes here) a whole traceback, many
    lines, in one write: one record. flush() sends what is held as it is."""

    def __init__(self, log: logging.Logger):
        self.log = log
        self._held = threading.local()  # (app threads write at the same time)

    def write(self, text: str) -> None:
        if not isinstance(text, str):
            raise TypeError(f"wsgi.errors.write() takes str, not {type(text).__name__}")
        text = getattr(self._held, "text", "") + text
        if text.endswith("\n"):
            self._held.text = ""
            self.log.error("%s", text[:-1])
        else:
            self._held.text = text

    def writelines(self, seq) -> None:
        for text in seq:
            self.write(text)

    def flush(self) -> None:
        text = getattr(self._held, "text", "")
        if text:
            self._held.text = ""
            self.log.error("%s", text)


class Throttled:
    """Log lines of one kind at `level`, at most one each `every` seconds: the ones held back
    meanwhile are counted, and the next line that goes out says how many there were (a flood
    of bad requests must not become a flood of log lines, nor go unseen)."""

    def __init__(self, log: logging.Logger, level: int, every: float = 1.0):
        self.log = log
        self.level = level
        self.every = every
        self.last = -math.inf
        self.held = 0

    def __call__(self, msg: str, *args) -> None:
        now = time.monotonic()
        if now - self.last < self.every:
            self.held += 1
            return
        self.last = now
        if self.held:
            msg += " (and %d more like it since the last such line)"
            args += (self.held,)
            self.held = 0
        self.log.log(self.level, msg, *args)


class WholeLineHandler(logging.Handler):
    """A logging handler writing each record as one `os.write` to a file descriptor."""

    def __init__(self, fd: int, log_format: str = "text"):
        super().__init__()
        self.fd = fd
        self.setFormatter(JsonFormatter() if log_format == "json"
                          else logging.Formatter(ERROR_FORMAT, DATE_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write_lines(self.fd, (self.format(record) + "\n").encode("utf-8", "replace"))
        except Exception:  # noqa: BLE001 - a log that cannot be written must not kill berth
            self.handleError(record)


def setup_error_log(target: str, level: str, log_format: str = "text") -> logging.Logger:
    log = logging.getLogger("berth.error")
    for handler in list(log.handlers):
        log.removeHandler(handler)
        if isinstance(handler, WholeLineHandler) and handler.fd > 2:
            os.close(handler.fd)
    log.addHandler(WholeLineHandler(open_log_fd(target, 2), log_format))
    log.setLevel(level.upper())
    log.propagate = False
    return log


def retarget_error_log(target: str, log_format: str) -> None:
    """SIGHUP: berth's error-log handlers (on berth.error, or gunicorn.error under a logging
    configuration) write to the reloaded --error-logfile with the reloaded --log-format, as
    Gunicorn's reload sets its error log up again. Workers started from now on inherit them;
    the old ones keep theirs until they exit. OSError when the new target cannot be opened
    (nothing changed then)."""
    handlers = []
    for name in ("berth.error", "gunicorn.error"):
        handlers += [h for h in logging.getLogger(name).handlers
                     if isinstance(h, WholeLineHandler) and h not in handlers]
    fds = [open_log_fd(target, 2) for _ in handlers]
    for handler, fd in zip(handlers, fds):
        with handler.lock:
            old, handler.fd = handler.fd, fd
            handler.setFormatter(WholeLineHandler(fd, log_format).formatter)
        if old > 2:
            os.close(old)


def reopen_error_log(target: str) -> None:
    """SIGUSR1: the error log's file opened again (logrotate moved it), in place: the
    handler keeps its descriptor number, wherever it is (berth.error, or gunicorn.error
    under a logging configuration)."""
    if target in ("-", "", None):
        return
    for name in ("berth.error", "gunicorn.error"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, WholeLineHandler) and handler.fd > 2:
                fd = open_log_fd(target, 2)
                os.dup2(fd, handler.fd)
                os.close(fd)


# -- access log ---------------------------------------------------------------------------------

# An atom with its conversion as %-formatting reads it (`%(h)s`, `%(h)-15s`, `%(D)d`,
# `%(r)r`...); `%%` is matched too, so that the text `%%(h)s` stays the literal `%(h)s`.
_ATOM = re.compile(r"%%|%\(([^)]+)\)([#0 +\-]*[0-9]*(?:\.[0-9]+)?[diouxXeEfFgGcrsa])")
# The atoms Gunicorn gives as numbers (a `%(D)d` works there); the others are text.
_NUMBER_ATOMS = frozenset("BbTMD")


class _Clock:
    """`[27/Nov/2026:20:14:50 +0000]`, formatted once per second."""

    second = -1
    text = ""

    @classmethod
    def refresh(cls, now: float) -> str:
        # the text first, then the second it is for: another app thread that sees the new
        # second (between two bytecodes of this one) must find its text there, not the last
        # second's (or "" at the first line)
        text = time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(now))
        cls.text = text
        cls.second = int(now)
        return text


def _basic_user(environ: dict) -> str:
    auth = environ.get("HTTP_AUTHORIZATION", "")
    if auth[:6].lower() == "basic ":
        try:
            return base64.b64decode(auth[6:].strip()).decode("latin-1").split(":", 1)[0] or "-"
        except (ValueError, UnicodeDecodeError):
            return "-"
    return "-"


def _environ_value(environ: dict, name: str):
    """`{name}e`: the request's WSGI environ entry, its name matched without regard to case
    (as Gunicorn does: `{remote_addr}e` is REMOTE_ADDR)."""
    for key in (name, name.upper(), name.lower()):
        if key in environ:
            return environ[key]
    name = name.lower()
    for key, value in environ.items():
        if key.lower() == name:
            return value
    return "-"


def _response_header(headers: list, name: str) -> str:
    """A `{name}o` atom: the header's last value when the response repeats it (two
    Set-Cookie), as Gunicorn's atoms have it (a dict updated from the header list)."""
    found = "-"
    for key, value in headers:
        if key.lower() == name:
            found = value
    return found


# Escaping, as Apache does it (Gunicorn escapes only `"`): a value copied into a log line can
# never end its field or its line early, so a client cannot forge fields (`User-Agent: x" 200 1
# "y`) or whole lines. `"` → `\"`, `\` → `\\`, and every character outside printable ASCII →
# `\xHH`: its byte (request values are latin-1, one byte per character), or each byte of its
# UTF-8 form above U+00FF.
_ESCAPES = {c: f"\\x{c:02x}" for c in range(256) if not 0x20 <= c <= 0x7E}
_ESCAPES[ord('"')] = '\\"'
_ESCAPES[ord("\\")] = "\\\\"
# The bytes a clean value is made of: printable ASCII but `"` and `\`.
_PLAIN_BYTES = bytes(c for c in range(0x20, 0x7F) if c not in b'"\\')


def escape(text) -> str:
    """A value as it goes into an access-log line (see _ESCAPES); not a str: its str()."""
    if type(text) is not str:
        text = str(text)
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    text = text.translate(_ESCAPES)
    if not text.isascii():  # characters above U+00FF: not from a request
        text = "".join(ch if ch.isascii() else "".join(f"\\x{b:02x}" for b in ch.encode(
            "utf-8", "surrogatepass")) for ch in text)
    return text


def _header_expr(atom: str) -> str:
    """The expression of a `{header}i`, `{header}o` or `{var}e` atom ('-' for an unknown atom,
    as Gunicorn prints it)."""
    if atom.startswith("{") and atom.endswith("}i"):
        key = atom[1:-2].upper().replace("-", "_")
        key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + key
        return f"e.get({key!r}, '-')"
    if atom.startswith("{") and atom.endswith("}o"):
        return f"_response_header(headers, {atom[1:-2].lower()!r})"
    if atom.startswith("{") and atom.endswith("}e"):
        return f"_environ_value(e, {atom[1:-2]!r})"
    return "'-'"


def compile_access_format(fmt: str):
    """Compile a Gunicorn access-log format into `f(environ, status, sent, seconds, headers)`,
    which returns the line as bytes, newline included.

    Atoms: h l u t r m U q H s B b f a T M D L p {header}i {header}o {var}e. An unknown atom
    is printed as '-', as Gunicorn does. The line is one `%` formatting of a tuple of
    expressions (one string allocation, no helper calls for the common atoms): about a
    microsecond. Every value is escaped (`escape`), but only when it needs it: the fast path
    formats the values as they are and checks the whole line at once (its bytes, less the
    plain ones, must be exactly those of the format's own text: its quotes and the newline),
    which costs a few hundred nanoseconds; a line that fails is formatted again with every
    value escaped.
    """
    exprs = {
        "h": "e.get('REMOTE_ADDR', '-')",
        "l": "'-'",
        "u": "_basic_user(e) if 'HTTP_AUTHORIZATION' in e else '-'",
        "t": "_Clock.text if int(_time()) == _Clock.second else _Clock.refresh(_time())",
        "r": "e['REQUEST_METHOD'] + ' ' + e['RAW_URI'] + ' ' + e['SERVER_PROTOCOL']",
        "m": "e['REQUEST_METHOD']",
        "U": "e['PATH_INFO']",
        "q": "e['QUERY_STRING']",
        "H": "e['SERVER_PROTOCOL']",
        "s": "status[:3]",
        "B": "sent",
        "b": "sent",
        "f": "e.get('HTTP_REFERER', '-')",
        "a": "e.get('HTTP_USER_AGENT', '-')",
        "T": "int(seconds)",
        "M": "int(seconds * 1000)",
        "D": "int(seconds * 1000000)",
        "L": "'%.6f' % seconds",
        "p": "'<%d>' % _pid()",
    }
    numbers = {"T", "M", "D", "L", "p"}  # made by berth: nothing to escape

    def literal(text: str) -> str:  # `%%` in a format is a percent sign, as in Gunicorn
        return text.replace("%%", "\0").replace("%", "%%").replace("\0", "%%")

    # Atoms that are cheaper as a conversion of their own than as a ready-made string: the
    # request line as three %s (no concatenations), the status code as %.3s of the status
    # (no slice), the byte count as %d, `l` as the literal it always is.
    special = {
        "r": ("%s %s %s", ["e['REQUEST_METHOD']", "e['RAW_URI']", "e['SERVER_PROTOCOL']"]),
        "s": ("%.3s", ["status"]),
        "B": ("%d", ["sent"]),
        "b": ("%d", ["sent"]),
        "l": ("-", []),
    }
    template = []  # the fast path: values as they are
    escaped = []  # the slow path: every string value through escape()
    values = []
    escaped_values = []
    text = []  # the format's own text, as it appears in a line
    pos = 0
    for match in _ATOM.finditer(fmt):
        if match.group(1) is None:  # `%%`: stays in the format's own text
            continue
        part = literal(fmt[pos:match.start()])
        template.append(part)
        escaped.append(part)
        text.append(fmt[pos:match.start()].replace("%%", "%"))
        atom, conversion = match.group(1), match.group(2)
        pos = match.end()
        if conversion != "s":  # `%(D)d`, `%(h)-15s`, `%(r)r`: as Gunicorn formats them
            expr = exprs[atom] if atom in exprs else _header_expr(atom)
            sample = 0 if atom in _NUMBER_ATOMS else "-"
            try:
                if conversion.endswith("c"):  # one character: the sample ('-', 0) passes, a
                    raise TypeError  # request's value (an address, 3 MB sent) would raise
                ("%" + conversion) % (sample,)
            except (TypeError, ValueError):  # Gunicorn cannot format it either (`%(h)d`):
                template.append(literal(match.group(0)))  # the text stays as it is written
                escaped.append(literal(match.group(0)))
                text.append(match.group(0))
                continue
            template.append("%" + conversion)
            escaped.append("%s")
            values.append(expr)
            escaped_values.append(expr if atom in _NUMBER_ATOMS or atom in numbers
                                  else f"_esc({'%' + conversion!r} % ({expr},))")
            text.append("")
            continue
        if atom in special:
            conversion, exprs_of_atom = special[atom]
            template.append(conversion)
            values.extend(exprs_of_atom)
            if atom == "s":
                escaped.append("%s")
                escaped_values.append("_esc(status[:3])")
            else:
                escaped.append(conversion)
                escaped_values.extend(v if atom in ("B", "b") else f"_esc({v})"
                                      for v in exprs_of_atom)
            text.append("-" if atom == "l" else "")
            continue
        template.append("%s")
        escaped.append("%s")
        expr = exprs[atom] if atom in exprs else _header_expr(atom)
        values.append(expr)
        escaped_values.append(expr if atom in numbers else f"_esc({expr})")
    tail = literal(fmt[pos:]) + "\n"
    template.append(tail)
    escaped.append(tail)
    text.append(fmt[pos:].replace("%%", "%") + "\n")
    # What a line's bytes less the plain ones must be when no value needed escaping. A format
    # whose own text is not ASCII never takes the fast path (correct, only slower).
    own = "".join(text)
    expected = own.encode().translate(None, _PLAIN_BYTES) if own.isascii() else None
    args = "".join(f"({v}), " for v in values)
    escaped_args = "".join(f"({v}), " for v in escaped_values)
    source = (
        "def access_line(e, status, sent, seconds, headers, _plain=_PLAIN_BYTES,\n"
        "                _expected=_EXPECTED):\n"
        f"    line = {''.join(template)!r} % ({args})\n"
        "    if line.isascii():\n"
        "        data = line.encode()\n"
        "        if data.translate(None, _plain) == _expected:\n"
        "            return data\n"
        f"    return ({''.join(escaped)!r} % ({escaped_args})).encode('utf-8', 'replace')\n")
    namespace = {"_Clock": _Clock, "_basic_user": _basic_user, "_pid": os.getpid,
                 "_response_header": _response_header, "_environ_value": _environ_value,
                 "_time": time.time, "_esc": escape, "_PLAIN_BYTES": _PLAIN_BYTES,
                 "_EXPECTED": expected}
    exec(compile(source, "<access-log-format>", "exec"), namespace)  # noqa: S102
    access_line = namespace["access_line"]
    access_line.needs_duration = "seconds" in args
    return access_line


def compile_json_access():
    """--log-format json: `f(environ, status, sent, seconds, headers)` -> one JSON line
    (bytes, newline included), ASCII only (json.dumps escapes the rest)."""
    dumps = json.dumps
    pid = os.getpid()

    def access_line(e, status, sent, seconds, headers):
        now = time.time()
        method, path = e["REQUEST_METHOD"], e["PATH_INFO"]
        return (dumps({
            "timestamp": rfc3339(now), "level": "info", "pid": pid,
            "message": f"{method} {e['RAW_URI']} {e['SERVER_PROTOCOL']} {status[:3]}",
            "remote_addr": e.get("REMOTE_ADDR", ""), "method": method, "path": path,
            "query": e["QUERY_STRING"], "status": int(status[:3]), "bytes": sent,
            "duration_ms": round(seconds * 1000, 3), "user_agent": e.get("HTTP_USER_AGENT"),
            "referer": e.get("HTTP_REFERER"), "request_id": e.get("berth.request_id"),
        }) + "\n").encode()

    access_line.needs_duration = True
    return access_line


class LineSink:
    """Where access-log bytes go, written without ever blocking the caller.

    A pipe or terminal (stdout in a container) gets a file description of its own, opened
    through /proc/self/fd with O_NONBLOCK: the shared stdout stays blocking for the app's
    print(), ours returns EAGAIN instead of waiting. A socket is written with MSG_DONTWAIT;
    a regular file does not block. Each write to a pipe is at most PIPE_BUF bytes of whole
    lines, which the kernel keeps in one piece, so workers never interleave inside a line.
    """

    def __init__(self, target: str, default_fd: int):
        self.sock = None
        self.piece = 1 << 20
        self.capacity = 0  # a pipe's size (F_GETPIPE_SZ), when known: see `fits`
        if target not in ("-", ""):
            self.fd = open_log_fd(target, default_fd)
            return
        mode = os.fstat(default_fd).st_mode
        self.fd = os.dup(default_fd)  # (its own: --capture-output may move stdout elsewhere)
        if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
            os.close(self.fd)
            self.piece = PIPE_BUF
            if stat.S_ISFIFO(mode):
                try:
                    self.capacity = fcntl.fcntl(default_fd, fcntl.F_GETPIPE_SZ)
                except (OSError, AttributeError):
                    pass
            try:
                self.fd = os.open(f"/proc/self/fd/{default_fd}",
                                  os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_APPEND)
            except OSError:
                self.fd = os.dup(default_fd)  # no /proc: blocking writes, as Gunicorn does
        elif stat.S_ISSOCK(mode):
            self.piece = PIPE_BUF
            self.sock = socket.socket(fileno=self.fd)

    def write_some(self, data: bytes, start: int = 0) -> int:
        """Write whole lines of `data` from `start` until it would block; return the offset
        reached."""
        return write_whole_lines(self.write, data, start, self.piece,
                                 self.fits if self.capacity else None)

    def fits(self, size: int) -> bool:
        """A pipe: whether a write of `size` bytes (one line longer than PIPE_BUF) goes in
        whole now, so that no other worker's line lands inside it. A line longer than the
        pipe itself never would: it is written as it goes."""
        if size > self.capacity:
            return True
        queued = array.array("i", [0])
        try:
            fcntl.ioctl(self.fd, termios.FIONREAD, queued)
        except OSError:
            return True
        return self.capacity - queued[0] >= size

    def write(self, data: memoryview) -> int:
        if self.sock is not None:
            return self.sock.send(data, socket.MSG_DONTWAIT)
        return os.write(self.fd, data)

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock is not None else self.fd

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        elif self.fd > 2:
            os.close(self.fd)


class AccessLog:
    """Formats lines on the request path (cheap); the worker's loop writes them every tick.

    A request appends its line to a list. `flush()` (on the loop thread, twice a second, and
    at exit) swaps in an empty list, joins the lines and writes what the sink takes without
    blocking; the rest waits in a bounded backlog, and what does not fit is dropped and
    counted on the error log. With app threads, an append can race the swap and land in the
    old list after it was taken: `flush()` looks at that list once more on its next round.
    A full pipe is waited for briefly while its reader keeps up (`_keep_up`).
    """

    def __init__(self, target: str, fmt: str, error_log: logging.Logger,
                 max_backlog: int = 4 << 20, log_format: str = "text",
                 overflow: str = "drop"):
        self.target = target
        self.sink = LineSink(target, 1)
        self.json = log_format == "json"
        self.format = compile_json_access() if self.json else compile_access_format(fmt)
        self.needs_duration = self.format.needs_duration
        self.error_log = error_log
        self.max_backlog = max_backlog
        self.lines: list[bytes] = []
        self.backlog = b""
        self.dropped = 0  # since the last warning
        self.dropped_total = 0  # for the scoreboard (berth_log_lines_dropped_total)
        self.block = overflow == "block"  # --log-overflow block: wait for the reader instead
        self._taken: list[bytes] = []
        self._taken_len = 0
        self.stalled = False  # the reader took nothing while a flush waited (see _keep_up)

    def flush(self) -> None:
        taken = self.lines
        late = self._taken[self._taken_len:]
        self.lines = []
        n = len(taken)  # (what is appended from here on is written at the next round, once)
        self._taken, self._taken_len = taken, n
        taken = late + taken[:n]
        data = self.backlog
        if taken:
            new = b"".join(taken)
            if len(data) + len(new) > self.max_backlog and not self.block:
                self.dropped += len(taken)
                self.dropped_total += len(taken)
            else:
                data += new
        if data:
            try:
                written = self.sink.write_some(data)
                if written:
                    self.stalled = False
                if written < len(data) and not self.stalled:
                    written = self._keep_up(data, written)
            except OSError as exc:  # EPIPE: nobody reads stdout any more
                written = len(data)
                if exc.errno != 32:
                    self.error_log.warning("access log write failed: %s", exc)
            self.backlog = data[written:]
            if self.block and len(self.backlog) > self.max_backlog:
                self._write_all()  # the loop waits for the reader: serving waits with it
        if self.dropped:
            dropped, self.dropped = self.dropped, 0
            self.error_log.warning("access log: %d lines dropped (the log is not read fast "
                                   "enough)", dropped)

    def _keep_up(self, data: bytes, written: int) -> int:
        """The sink is full (a pipe holds 64 KiB): a reader that keeps up empties it in
        microseconds, so wait for it, up to KEEP_UP seconds a flush, rather than leave the
        rest for the next tick (half a second later: at most two pipefuls a second, so a
        busy worker dropped lines that a fast reader would have taken). A reader that does
        not take anything within the wait is stalled: the next flushes do not wait, until a
        write goes through again at once."""
        deadline = time.monotonic() + KEEP_UP
        fd = self.sink.fileno()
        while written < len(data):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if not select.select([], [fd], [], left)[1]:
                self.stalled = True
                break
            before, written = written, self.sink.write_some(data, written)
            if written == before:  # room, but not yet for a whole long line
                time.sleep(0.0005)
        return written

    def _write_all(self) -> None:
        data = self.backlog
        while data:
            try:
                data = data[self.sink.write_some(data):]
            except OSError as exc:
                if exc.errno != errno.EAGAIN:
                    break  # (a reader gone: nothing to wait for)
            if data:
                select.select([], [self.sink.fileno()], [], 1.0)
        self.backlog = b""

    def close(self, timeout: float = 2.0) -> None:
        """Write every line still queued (waiting up to `timeout` for a slow reader)."""
        deadline = time.monotonic() + timeout
        self.flush()
        while (self.backlog or self.lines) and time.monotonic() < deadline:
            time.sleep(0.01)
            self.flush()

    def reopen(self) -> None:
        if self.target not in ("-", ""):
            old = self.sink
            self.sink = LineSink(self.target, 1)
            old.close()


class Discard(list):
    """`lines` when no access log of berth's own writes: nothing is kept."""

    def append(self, item) -> None:
        pass


class AccessTee:
    """Something beside the worker's own access log (`inner`, or None when it is off), seen
    by the responder as an access log (`format`, `lines`, `flush`, `close`, `reopen`,
    `dropped_total`): subclasses set `format` and add to `flush` and `close`."""

    needs_duration = True

    def __init__(self, inner):
        self.inner = inner
        self.lines = inner.lines if inner is not None else Discard()

    def flush(self) -> None:
        if self.inner is not None:
            self.inner.flush()
            self.lines = self.inner.lines  # (flush swaps in a new list)

    def close(self, timeout: float = 2.0) -> None:
        if self.inner is not None:
            self.inner.close(timeout)

    def reopen(self) -> None:
        if self.inner is not None:
            self.inner.reopen()

    @property
    def dropped_total(self) -> int:
        return self.inner.dropped_total if self.inner is not None else 0

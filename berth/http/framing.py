"""Response framing, sans-IO: from the facts of a response to its head bytes and framing.

`frame(version, status, headers, keep_alive, no_body, known_length)` decides how the body is
delimited and returns a `Framing`: the head (without `Date`/`Server` and the final CRLF,
which `DateCache` appends), how many body bytes the Content-Length still allows, whether the
body is chunked, whether it has one at all, and whether the connection stays open. The rules:
  - HEAD, 204 and 304 carry no body (RFC 9110 6.4.1), and a 204 no Content-Length either
    (RFC 9110 8.6: an app's is dropped, as Gunicorn does; a 304's is the GET's, and kept);
  - a 1xx status is refused (`BadResponseHeaders`): it is interim (RFC 9110 15.2), and sent as
    the response the client would wait for the final one and take the next response for it
    (berth sends `100 Continue` itself);
  - the app's Content-Length frames the body (it must be digits, spaces around them aside,
    and two of them must agree: else `BadResponseHeaders`);
  - else a length berth knows (a list body, a file) is sent as Content-Length;
  - else chunked on HTTP/1.1, and on HTTP/1.0 the close of the connection ends the body
    (a HEAD response has none: its connection is kept);
  - hop-by-hop headers from the app are dropped (PEP 3333 forbids them; berth frames the
    body itself), but its `Connection: close` is honoured;
  - HTTP/1.0 keep-alive is said with `Connection: keep-alive`, an HTTP/1.1 close with
    `Connection: close`.

Header bytes are built once per response with as little Python work as possible: apps send the
same status and headers again and again, so a framed head is cached, keyed by everything that
shaped it; status lines and the `Date`/`Server` suffix are cached, header names the app used
before are known to be valid, and CR/LF anywhere in a name or value is found with two
`str.count` calls over the whole block instead of a test per header (another control
character with one regex search). All of it runs when a head is framed, not when it is
found in the cache: a head the cache knows costs no check. Nothing here touches a
socket: every rule is tested with byte strings (`tests/test_framing.py`).
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate
from typing import NamedTuple

from berth import SERVER_SOFTWARE
from berth.http.parser import REASONS

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# RFC 9110 5.5: a field value is VCHAR, obs-text, SP and HTAB; NUL is called out as dangerous
# (it ends a C string in the next proxy). CR and LF are counted apart: they end each line.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_known_names: dict[str, str] = {}  # header name as the app wrote it -> lower-cased


class BadResponseHeaders(Exception):
    """The app gave a status or header berth will not send (it would split or break HTTP)."""


SERVER_LINE = f"Server: {SERVER_SOFTWARE}\r\n".encode()


class DateCache:
    """`Server` and `Date` lines, formatted at most once per second. `suffixes[flags]` is
    what berth appends to a head, given the HAS_DATE / HAS_SERVER flags of the app's
    headers (an app that sets its own keeps it)."""

    __slots__ = ("ends", "second", "suffix", "suffixes", "value")

    def __init__(self):
        self.second = -1
        self.value = ""
        self.suffix = b""
        self.suffixes: list[bytes] = [b""] * 8
        self.ends: list[bytes] = [b""] * 8  # suffixes[flags] + the CRLF that ends the head
        self.refresh()

    def refresh(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        second = int(now)
        if second != self.second:
            self.second = second
            self.value = formatdate(second, usegmt=True)
            date_line = f"Date: {self.value}\r\n".encode()
            self.suffix = SERVER_LINE + date_line
            for flags in range(8):
                self.suffixes[flags] = ((b"" if flags & HAS_SERVER else SERVER_LINE)
                                        + (b"" if flags & HAS_DATE else date_line))
                self.ends[flags] = self.suffixes[flags] + b"\r\n"


_status_lines: dict[tuple[str, str], bytes] = {}


def status_line(version: str, status: str) -> bytes:
    """`HTTP/1.1 200 OK\\r\\n` for a WSGI status string, cached."""
    key = (version, status)
    line = _status_lines.get(key)
    if line is None:
        if "\r" in status or "\n" in status or len(status) < 3 or not status[:3].isdigit() \
                or (len(status) > 3 and status[3] != " ") or _CONTROL.search(status):
            raise BadResponseHeaders(f"invalid status {status!r}")
        if status[0] == "1":
            raise BadResponseHeaders(f"interim status {status[:3]} as the response (a 1xx is "
                                     "never final: RFC 9110 15.2)")
        if not "200" <= status[:3] <= "599":  # (RFC 9110 15: 100 to 599; 1xx is above)
            raise BadResponseHeaders(f"status {status[:3]} is not an HTTP status (RFC 9110 "
                                     "15: 100 to 599)")
        if len(status) == 3:  # RFC 9112 4: the SP after the code stays without a reason
            status += " "
        line = f"HTTP/{version} {status}\r\n".encode("latin-1")
        if len(_status_lines) < 512:
            _status_lines[key] = line
    return line


# Flags from scan_headers(): what the app set that changes what berth adds.
HOP_BY_HOP_SEEN, HAS_DATE, HAS_SERVER = 1, 2, 4
HOP_BY_HOP = frozenset(("connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailers", "transfer-encoding", "upgrade"))
_SPECIAL = dict.fromkeys(HOP_BY_HOP, HOP_BY_HOP_SEEN)
_SPECIAL.update({"content-length": 0, "date": HAS_DATE, "server": HAS_SERVER})


def scan_headers(headers: list) -> tuple[str, str | None, int]:
    """Validate the app's headers: (header block text, Content-Length value, flags).

    Raises `BadResponseHeaders` for a name that is not an HTTP token, a value that is not a
    str, CR or LF in any name or value, another control character but HTAB in a value, and
    two Content-Lengths that differ. A str subclass is taken as the str it is (as Gunicorn
    does: an enum of str, markupsafe's Markup).
    """
    lines = []
    length = None
    flags = 0
    known = _known_names
    for name, value in headers:
        lower = known.get(name)
        if lower is None:
            if type(name) is not str and isinstance(name, str):
                name = str.__str__(name)
            if type(name) is not str or not _TOKEN.match(name):
                raise BadResponseHeaders(f"invalid header name {name!r}")
            lower = name.lower()
            if len(known) < 1024:
                known[name] = lower
        if type(value) is not str:
            if not isinstance(value, str):
                raise BadResponseHeaders(f"header {name!r} value must be str, not "
                                         f"{type(value).__name__}")
            value = str.__str__(value)
        if lower in _SPECIAL:
            if lower == "content-length":
                # two values frame the body two ways: a client must refuse it (RFC 9112
                # 6.3), a proxy that takes the other one reads the rest of the body as the
                # next response (Gunicorn sends both)
                if length is not None and length.strip(" \t") != value.strip(" \t"):
                    raise BadResponseHeaders(f"two different Content-Lengths: {length!r} "
                                             f"and {value!r}")
                length = value
            flags |= _SPECIAL[lower]
        lines.append(f"{name}: {value}\r\n")
    block = "".join(lines)
    if block.count("\n") != len(lines) or block.count("\r") != len(lines):
        raise BadResponseHeaders("CR or LF in a response header")
    if _CONTROL.search(block) is not None:  # (names are tokens: it is in a value)
        raise BadResponseHeaders("a control character in a response header value")
    return block, length, flags


class Framing(NamedTuple):
    """How one response goes out (see the module docstring)."""

    head: bytes  # status line and header lines, without Date/Server and the final CRLF
    remaining: int | None  # body bytes the Content-Length allows; None: not delimited by it
    chunked: bool
    no_body: bool
    keep_alive: bool
    own: int  # HAS_DATE | HAS_SERVER: what the app set itself (DateCache.suffixes[own])


def frame(version: str, status: str, headers: list, keep_alive: bool, no_body: bool,
          known_length: int | None) -> Framing:
    """The framing of a response; cached (heads repeat), except for unhashable headers."""
    try:
        key = (version, keep_alive, no_body, known_length, status, tuple(headers))
        framing = _head_cache.get(key)
    except TypeError:  # unhashable header items (lists): fine, just not cached
        return _frame(version, status, headers, keep_alive, no_body, known_length)
    if framing is None:
        framing = _frame_by_shape(key, headers)
        if framing is None:
            framing = _frame(version, status, headers, keep_alive, no_body, known_length)
        if len(_head_cache) >= 1024:
            _head_cache.clear()
        _head_cache[key] = framing
    return framing


_head_cache: dict[tuple, Framing] = {}
# The same response with another Content-Length (a JSON API: every body its own length) is a
# miss above, and _frame() costs 5 to 8 times a hit. Keyed by the headers without the value,
# the head is kept in two parts, before and after the Content-Length value.
_shape_cache: dict[tuple, tuple] = {}


def _frame_by_shape(key: tuple, headers: list) -> Framing | None:
    known = _known_names
    i = 0
    for name, _value in headers:
        if known.get(name) == "content-length":
            break
        i += 1
    else:
        return None
    # (known_length is left out: the app's Content-Length wins over it)
    shape = key[:3] + (key[4], i, tuple(headers[:i]), tuple(headers[i + 1:]))
    entry = _shape_cache.get(shape)
    if entry is None:
        framing = _frame(key[0], key[4], headers, key[1], key[2], key[3])  # (validates them)
        value = headers[i][1]
        if framing.remaining != int(value) or key[4][:3] == "204" or any(
                known.get(n) == "content-length" for n, _ in headers[i + 1:]):
            return framing  # (a 204 or 304, or two Content-Lengths: no template)
        mark = b": " + value.encode("latin-1") + b"\r\n"
        # the value's place: after the status line and the i header lines before it
        at = len(status_line(key[0], key[4])) + sum(
            len(f"{n}: {v}\r\n".encode("latin-1")) for n, v in headers[:i]) + len(headers[i][0])
        head = framing.head
        if head[at:at + len(mark)] != mark:
            return framing  # (hop-by-hop headers dropped before it: no template)
        entry = (head[:at + 2], head[at + len(mark) - 2:], framing)
        if len(_shape_cache) >= 256:
            _shape_cache.clear()
        _shape_cache[shape] = entry
        return framing
    value = headers[i][1]
    if type(value) is not str or not (value.isascii() and value.isdigit()):
        value = length_digits(value)
    before, after, template = entry
    return _tuple_new(Framing, (before + value.encode() + after, int(value)) + template[2:])


_tuple_new = tuple.__new__  # a Framing without namedtuple's Python-level __new__


def _frame(version: str, status: str, headers: list, keep_alive: bool, no_body: bool,
           known_length: int | None) -> Framing:
    block, length, flags = scan_headers(headers)
    if length is not None and status[:3] == "204":  # (Django sets one on every response)
        headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
        block, length, flags = scan_headers(headers)
    if flags & HOP_BY_HOP_SEEN:
        block, keep_alive = _drop_hop_by_hop(headers, keep_alive)
    code = status[:3]
    extra = ""
    remaining = None
    chunked = False
    if code == "204" or code == "304":
        no_body = True
        remaining = 0
    elif length is not None:
        if not (length.isascii() and length.isdigit()):
            length = length_digits(length)
        remaining = int(length)
    elif known_length is not None:
        extra = f"Content-Length: {known_length}\r\n"
        remaining = known_length
    elif version == "1.1":
        extra = "Transfer-Encoding: chunked\r\n"
        chunked = True
    elif not no_body:
        keep_alive = False  # HTTP/1.0 without a length: the close ends the body (HEAD has none)
    if keep_alive:
        if version == "1.0":
            extra += "Connection: keep-alive\r\n"
    elif version == "1.1":
        extra += "Connection: close\r\n"
    head = status_line(version, status) + (block + extra).encode("latin-1")
    return Framing(head, remaining, chunked, no_body, keep_alive, flags & (HAS_DATE | HAS_SERVER))


def length_digits(value) -> str:
    """The digits of the app's Content-Length that is not plain digits: Gunicorn strips
    spaces and tabs around every value (RFC 9110 5.5: they are not part of it) and takes a
    str subclass; a sign, a `_`, or no digits at all is the app's error."""
    if isinstance(value, str):
        digits = str.__str__(value).strip(" \t")
        if digits.isascii() and digits.isdigit():
            return digits
    raise BadResponseHeaders(f"invalid Content-Length {value!r}")


def _drop_hop_by_hop(headers: list, keep_alive: bool) -> tuple[str, bool]:
    """Apps must not send hop-by-hop headers (PEP 3333): honour `Connection: close`, drop the
    rest (berth frames the body itself)."""
    kept = []
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP:
            if lower == "connection" and "close" in value.lower():
                keep_alive = False
            continue
        kept.append((name, value))
    return scan_headers(kept)[0], keep_alive


_NOT_IN_1XX = ("content-length", "transfer-encoding")


def early_hints(headers, status: str = "103 Early Hints") -> bytes:
    """A `103 Early Hints` (RFC 8297), or another interim response (`status`, a 1xx),
    carrying `headers`: pairs of str, or of bytes read as latin-1, as Gunicorn's
    `wsgi.early_hints` takes them (values stripped of blanks at their ends). What
    scan_headers() refuses in the app's own headers raises here too."""
    pairs = []
    for name, value in headers:
        if isinstance(name, (bytes, bytearray)):
            name = bytes(name).decode("latin-1")
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("latin-1")
        if isinstance(value, str):
            value = value.strip(" \t")
        if isinstance(name, str) and name.lower() in _NOT_IN_1XX:
            continue  # (RFC 9110 8.6 and 6.1: never in a 1xx; Gunicorn sends them)
        pairs.append((name, value))
    return (f"HTTP/1.1 {status}\r\n" + scan_headers(pairs)[0]).encode("latin-1") + b"\r\n"


def chunk(data: bytes) -> bytes:
    """One part of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


PROBE_HEADERS = [("Content-Type", "text/plain"), ("Cache-Control", "no-store")]


def probe_answer(kind: str, ready: bool) -> tuple[str, bytes]:
    """--live-path and --ready-path, answered without the app by both worker kinds: (status,
    body). Liveness is 200 while the worker runs; readiness 503 once berth shuts down
    (SIGTERM, including --shutdown-delay) or the worker drains."""
    if kind == "live":
        return "200 OK", b"live\n"
    if not ready:
        return "503 Service Unavailable", b"shutting down\n"
    return "200 OK", b"ready\n"


def error_response(status: int, head_only: bool = False, date: DateCache | None = None) -> bytes:
    """A complete `Connection: close` response for an error berth answers itself."""
    reason = REASONS.get(status, "Error")
    body = f"{status} {reason}\n".encode()
    suffix = date.suffix if date is not None else b""
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n").encode() + suffix + b"\r\n"
    return head if head_only else head + body


LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

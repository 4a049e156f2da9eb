"""PEP 3333: the environ (`Environs`), `wsgi.input` for streamed bodies, `wsgi.file_wrapper`.

The environ is built from three layers so that per-request work is small: a per-worker base dict
(constants), the connection's addresses, and the per-request keys. Header names map to environ
keys in the parser, through a cache, and request targets map to PATH_INFO and QUERY_STRING here,
through another: clients send the same few again and again.
"""

from __future__ import annotations

import io
import itertools
import os
import stat
import sys
import threading
import time
from urllib.parse import unquote_to_bytes

import httptools

from berth import SERVER_SOFTWARE
from berth.forwarded import Forwarding
from berth.http.parser import HASH_BYTE, PERCENT_BYTE, Request

# The common methods as str without a decode per request; any other token is decoded.
METHODS = {m.encode(): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")}
TARGET_CACHE = 512
MAX_REQUEST_ID = 200  # a longer X-Request-ID is not taken (berth makes one): logs stay bounded
ADDRESS_CACHE = 256  # (server address, client address) -> the base dict with them


def split_target(url: bytes) -> tuple[str, str]:
    """The request target → (PATH_INFO, QUERY_STRING): path percent-decoded, as latin-1."""
    if url[:1] != b"/":
        if url == b"*":
            return "*", ""
        # absolute-form (RFC 9112 §3.2.2), sent to proxies and accepted by servers
        parsed = httptools.parse_url(url)
        path = parsed.path or b"/"
        query = parsed.query or b""
    else:
        path, _, query = url.partition(b"?")
        if HASH_BYTE in query:
            query = query.partition(b"#")[0]
        elif HASH_BYTE in path:  # `/a#frag?x`: the `?` is inside the fragment
            path = path.partition(b"#")[0]
            query = b""
    if PERCENT_BYTE in path:
        path = unquote_to_bytes(path)
    return path.decode("latin-1"), query.decode("latin-1")


# The keys for_request() sets on every request, and wsgi.early_hints (set with its response):
# each connection layer has them already (`roomy`), so a request overwrites them instead of
# adding them. Their values there are never seen: every request sets its own.
PER_REQUEST_KEYS = ("REQUEST_METHOD", "RAW_URI", "PATH_INFO", "QUERY_STRING", "SERVER_PROTOCOL",
                    "wsgi.input", "wsgi.early_hints")


def no_early_hints(headers) -> None:
    """wsgi.early_hints outside a response (berth.worker.app.Response.early_hints)."""


def roomy(layer: dict) -> dict:
    """A connection layer of the environ made so that each request's copy() of it has room
    for the request's own keys: PER_REQUEST_KEYS set beforehand, and the dict grown once
    (a pad added until it resizes, then taken out). CPython's copy() of a dict keeps its table
    (unless a third of its entries are gone), so an environ no longer resizes on the way
    (about 90 ns, at the request's 22nd key: a request with its Host alone did not reach it,
    one with a browser's dozen headers did). A CPython detail: elsewhere this only wastes a
    few pads' work once per layer."""
    layer = dict(layer)
    for key in PER_REQUEST_KEYS:
        layer.setdefault(key, no_early_hints if key == "wsgi.early_hints" else "")
    size = sys.getsizeof(layer)
    pads = []
    while sys.getsizeof(layer) == size and len(pads) < 64:
        pads.append(("pad", len(pads)))
        layer[pads[-1]] = None
    for pad in pads:
        del layer[pad]
    return layer


class Addresses:
    """A connection's layer of the environ: `base`, the worker's constants with SERVER_NAME,
    SERVER_PORT and REMOTE_ADDR (one dict shared by every connection between the same two
    addresses), and `remote_port`. About 100 bytes a connection instead of a dict of its own
    (600): an idle keep-alive connection holds this much."""

    __slots__ = ("base", "forwarded", "remote_port", "unix")

    def __init__(self, base: dict, remote_port: str, forwarded: bool = False,
                 unix: bool = False):
        self.base = base
        self.remote_port = remote_port  # "" for a unix socket's peer (no REMOTE_PORT)
        self.forwarded = forwarded  # the peer is a trusted proxy (see berth/forwarded.py)
        self.unix = unix  # a unix socket: SERVER_NAME and SERVER_PORT from Host (for_request)

    def __getitem__(self, key: str):
        return self.remote_port if key == "REMOTE_PORT" else self.base[key]

    def get(self, key: str, default=None):
        return self.remote_port if key == "REMOTE_PORT" else self.base.get(key, default)


class Environs:
    """Makes the environ of each request: the worker's constants, then the connection's
    addresses (`for_connection`, once per connection), then the request's own keys
    (`for_request`). `SCRIPT_NAME` comes from the process environment, as with Gunicorn,
    and is taken off the front of PATH_INFO."""

    def __init__(self, multithread: bool, multiprocess: bool, script_name: str | None = None,
                 forwarding: Forwarding | None = None, scheme: str = "http",
                 header_map: str = "drop", request_ids: bool = False, errors=None):
        # (a trailing '/' is the next path's: /app/ mounts /app, whose PATH_INFO starts with /)
        self.script_name = (os.environ.get("SCRIPT_NAME", "") if script_name is None
                            else script_name).rstrip("/")
        self.base = {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scheme,  # https when berth terminates TLS
            "wsgi.errors": sys.stderr if errors is None else errors,  # (berth.logs.ErrorStream)
            "wsgi.multithread": multithread,
            "wsgi.multiprocess": multiprocess,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
            "wsgi.input_terminated": True,
            "SCRIPT_NAME": self.script_name,
            "SERVER_SOFTWARE": SERVER_SOFTWARE,  # as the Server header says
        }
        self.targets: dict[bytes, tuple[str, str, str]] = {}  # target -> RAW_URI, PATH, QUERY
        # Mounted at SCRIPT_NAME: the targets whose path is not under it (a probe of /healthz
        # sent to the pod itself) get SCRIPT_NAME "" and their whole path as PATH_INFO, so that
        # SCRIPT_NAME + PATH_INFO is still the path asked for (PEP 3333's URL reconstruction).
        # Gunicorn answers them 500. Only a mounted app pays for the check.
        self.outside: set[bytes] = set()
        if self.script_name:
            self.for_request = self._for_request_mounted
        self.bases: dict[tuple, dict] = {}  # (server host, port, client host) -> base dict
        self.forwarding = forwarding
        self.header_map = header_map  # (what a forwarder header from another peer becomes)
        # --log-format json: each request gets berth.request_id (see for_request)
        self.request_ids = RequestIds() if request_ids else None
        # a unix socket's peer has no address: REMOTE_ADDR is empty and REMOTE_PORT unset, as
        # in Gunicorn (not 127.0.0.1, which an app's "only from localhost" check would pass);
        # SERVER_NAME and SERVER_PORT come from each request's Host (unix_server_keys)
        self.unix = Addresses(self._base_with("localhost", 0, ""), "",
                              forwarding is not None and forwarding.trusts(None), unix=True)

    def for_connection(self, local: tuple | None, peer: tuple | None) -> Addresses:
        """The connection's addresses: `local` and `peer` as getsockname()/accept() give them
        for TCP; None for a unix socket (see `self.unix`)."""
        if local is None:
            return self.unix
        key = (local[0], local[1], peer[0])
        base = self.bases.get(key)
        if base is None:
            if len(self.bases) >= ADDRESS_CACHE:
                self.bases.clear()
            base = self.bases[key] = self._base_with(*key)
        forwarding = self.forwarding
        return Addresses(base, str(peer[1]), forwarding is not None and forwarding.trusts(peer))

    def with_keys(self, addresses: Addresses, extra: dict, cache: bool = True) -> Addresses:
        """The connection's layer with more keys: what a PROXY protocol header names (from
        berth/http/proxyproto.py, cached like the addresses), or a TLS client's certificate
        (`cache` False). Trust in forwarded headers stays with the socket's peer."""
        extra = dict(extra)
        remote_port = extra.pop("REMOTE_PORT", addresses.remote_port)
        base = addresses.base
        if not cache:
            return Addresses(roomy({**base, **extra}), remote_port, addresses.forwarded,
                             addresses.unix)
        key = (base["SERVER_NAME"], base["SERVER_PORT"], base["REMOTE_ADDR"],
               *sorted(extra.items()))
        layer = self.bases.get(key)
        if layer is None:
            if len(self.bases) >= ADDRESS_CACHE:
                self.bases.clear()
            layer = self.bases[key] = roomy({**base, **extra})
        return Addresses(layer, remote_port, addresses.forwarded, addresses.unix)

    def _base_with(self, server_name: str, server_port: int, remote_addr: str) -> dict:
        environ = dict(self.base)
        environ["SERVER_NAME"] = server_name
        environ["SERVER_PORT"] = str(server_port)
        environ["REMOTE_ADDR"] = remote_addr
        return roomy(environ)

    def for_request(self, addresses: Addresses, req: Request) -> dict:
        """The environ for one request (raises for a target that cannot be split: a 400)."""
        environ = addresses.base.copy()
        url = req.url
        target = self.targets.get(url)
        if target is None:
            if len(self.targets) >= TARGET_CACHE:
                self.targets.clear()
                self.outside.clear()
            path, query = split_target(url)
            script_name = self.script_name
            if script_name:  # (under it: the whole segments, /app/x or /app, not /apple)
                if path.startswith(script_name) and path[len(script_name):len(script_name) + 1] \
                        in ("", "/"):
                    path = path[len(script_name):]
                else:
                    self.outside.add(url)  # (emptied with `targets`: one is the other's key)
            target = (url.decode("latin-1"), path, query)
            self.targets[url] = target
        method = req.method
        environ["REQUEST_METHOD"] = METHODS.get(method) or method.decode("latin-1")
        environ["RAW_URI"], environ["PATH_INFO"], environ["QUERY_STRING"] = target
        environ["SERVER_PROTOCOL"] = req.server_protocol
        environ["wsgi.input"] = req.body_stream if req.streaming else io.BytesIO(req.body)
        environ.update(req.headers)
        port = addresses.remote_port
        if port:  # (a unix socket's peer has none, unless a PROXY header named one)
            environ["REMOTE_PORT"] = port
        if req.forwarded and self.forwarding is not None:  # (see berth/forwarded.py)
            if url in self.outside:  # (mounted, the path not under it: a proxy's SCRIPT_NAME
                environ["SCRIPT_NAME"] = ""  # header is judged against the path asked for)
            self.forwarding.apply(environ, req, addresses.forwarded, self.header_map)
        if addresses.unix:  # (after the forwarded scheme: https is port 443)
            unix_server_keys(environ)
        if self.request_ids is not None:
            environ["berth.request_id"] = self.request_ids.of(environ.get("HTTP_X_REQUEST_ID"))
        return environ


    def _for_request_mounted(self, addresses: Addresses, req: Request) -> dict:
        """for_request(), for an app mounted at SCRIPT_NAME (see `outside`)."""
        environ = Environs.for_request(self, addresses, req)
        if req.url in self.outside and environ["SCRIPT_NAME"] == self.script_name:
            environ["SCRIPT_NAME"] = ""  # (unless a trusted proxy's SCRIPT_NAME header set one)
        return environ


class RequestIds:
    """--log-format json: each request's id, in its environ (or ASGI scope) and its access
    line: the client's X-Request-ID, or, without one (or a longer one than MAX_REQUEST_ID),
    the worker's pid and a counter."""

    def __init__(self):
        self.prefix = f"{os.getpid():x}-"  # (made in the worker: its own pid)
        self.ids = itertools.count(1)

    def of(self, given: str | None) -> str:
        if given and len(given) <= MAX_REQUEST_ID:
            return given
        return f"{self.prefix}{next(self.ids):x}"


def unix_server_keys(environ: dict) -> None:
    """SERVER_NAME and SERVER_PORT of a request on a unix socket, which has neither: from its
    Host header, as Gunicorn does (port 80, or 443 for https, when Host names none; an IPv6
    literal keeps its brackets). Without a Host (HTTP/1.0) they stay localhost and 0."""
    host = environ.get("HTTP_HOST")
    if not host:
        return
    if host.startswith("["):
        name, _, port = host.partition("]")
        name += "]"
        port = port[1:] if port.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    environ["SERVER_NAME"] = name
    environ["SERVER_PORT"] = port or ("443" if environ["wsgi.url_scheme"] == "https" else "80")


class StreamInput:
    """`wsgi.input` for a body larger than the in-memory buffer: filled by the loop thread as
    bytes arrive, read by the app thread, which blocks until enough is there.

    The loop stops reading the socket while more than `high_water` bytes wait here
    (`paused`), and `resume` (called from the reading thread) asks it to read again.
    """

    def __init__(self, initial: bytes, high_water: int, resume):
        self._buf = bytearray(initial)
        self._done = False
        self._error: BaseException | None = None
        self._cond = threading.Condition(threading.Lock())
        self._high = high_water
        self._want = 0  # bytes a blocked reader waits for: reading goes on until it has them
        self._resume = resume
        self._discard = False
        self.paused = False
        self.waiting = False  # a reader is blocked for bytes: the client's time, not the app's
        self.woke = 0.0  # when a read last returned (the app's progress, for --timeout)

    # loop side
    def feed(self, data: bytes | None) -> None:
        with self._cond:
            if data is None:
                self._done = True
            elif self._discard:
                return
            else:
                self._buf += data
                if len(self._buf) > self._high and len(self._buf) >= self._want:
                    self.paused = True
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        """The body will not come (ClientDisconnected): each read that waits raises a new
        exception like `exc` (whose class takes its args back)."""
        with self._cond:
            self._error = exc
            self._cond.notify_all()

    def discard(self) -> None:
        """The app is done without reading everything: drop the rest as it arrives, so the
        connection gets to the next request."""
        with self._cond:
            self._discard = True
            self._buf.clear()
            if self.paused:
                self.paused = False
                self._resume()

    # app side
    def _take(self, n: int) -> bytes:
        data = bytes(self._buf[:n])
        del self._buf[:n]
        if self.paused and len(self._buf) <= self._high // 2:
            self.paused = False
            self._resume()
        return data

    def _wait(self, ready, want: int) -> None:
        self._want = want
        self.waiting = True
        try:
            while not ready() and not self._done:
                if self._error is not None:
                    # a new one each time: the one kept, raised, would hold its traceback (the
                    # app's frames, which hold this stream), a cycle left to the collector
                    raise type(self._error)(*self._error.args)
                if self.paused:
                    self.paused = False
                    self._resume()
                self._cond.wait()
        finally:
            self._want = 0
            self.waiting = False
            self.woke = time.monotonic()

    def read(self, size: int | None = -1) -> bytes:
        with self._cond:
            if size is None or size < 0:
                self._wait(lambda: False, 1 << 62)
                return self._take(len(self._buf))
            self._wait(lambda: len(self._buf) >= size, size)
            return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        with self._cond:
            limit = size if size is not None and size >= 0 else None

            def have_line() -> bool:
                return b"\n" in self._buf or (limit is not None and len(self._buf) >= limit)

            self._wait(have_line, limit or len(self._buf) + 1)
            end = self._buf.find(b"\n")
            n = len(self._buf) if end < 0 else end + 1
            if limit is not None:
                n = min(n, limit)
            return self._take(n)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def close(self) -> None:
        pass


class FileWrapper:
    """`wsgi.file_wrapper`: iterable fallback; the server sends real files with os.sendfile."""

    def __init__(self, filelike, blksize: int = 8192):
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration

    def sendfile_span(self) -> tuple[int, int, int] | None:
        """(fd, offset, count) when the wrapped object is a regular file whose bytes are the
        ones it reads, else None. An io object other than a plain file (a gzip, bz2 or lzma
        file, a text wrapper) has the file's descriptor but reads other bytes: sending the
        descriptor sent the compressed file. (Objects outside io, such as Django's File or a
        NamedTemporaryFile, hand fileno() on to the file they wrap.)"""
        filelike = self.filelike
        if isinstance(filelike, io.IOBase) and not isinstance(
                filelike, (io.FileIO, io.BufferedReader, io.BufferedRandom)):
            return None
        try:
            fd = self.filelike.fileno()
            st = os.fstat(fd)
        except (AttributeError, OSError, io.UnsupportedOperation, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        try:
            offset = self.filelike.tell()
        except (AttributeError, OSError, ValueError):
            offset = os.lseek(fd, 0, os.SEEK_CUR)
        return fd, offset, max(0, st.st_size - offset)

"""HTTP/1.x request parsing, sans-IO: bytes in, `Request` objects and `HttpError`s out.

`RequestParser.feed(data)` runs httptools (llhttp) over the bytes and appends each request whose
head is complete to `self.ready`. A request's body is buffered in memory up to
`body_buffer_size`; a request whose body is larger is released early with `request.streaming`
set, and the rest of its body goes to `request.body_sink` as it arrives. Nothing here touches a
socket, so every rule is tested with byte strings.

llhttp already rejects the request-smuggling classics (Content-Length with Transfer-Encoding,
duplicate or signed lengths, obs-fold, bare LF, whitespace before the colon, control bytes).
The rules it leaves to the server are enforced here, following RFC 9112:
  - a method llhttp does not know (it knows a fixed list; RFC 9110 §9.1 makes methods open-ended
    tokens) is served when Gunicorn's rules take it: an upper-case token of 3 to 20 characters
    without '#', any token with `permit_unconventional_http_method`, upper-cased with
    `casefold_http_method` (see RequestParser._extension_method); others get 400;
  - HTTP/1.1 without exactly one Host → 400 (§3.2), and a Host that is not `host[:port]`
    (RFC 9110 §7.2: a space, `/`, `@`, a port that is not digits) → 400 in any version;
  - a repeated Host or Content-Type → 400 (RFC 9110 §5.3: fields of one value, which two
    lines cannot be joined into; Gunicorn's singleton fields); other repeats are joined;
  - a request asking to upgrade (`Connection: upgrade` and `Upgrade`: h2c, websocket) is
    served as plain HTTP/1.1, body included, and the connection's framing kept (RFC 9110
    §7.8): llhttp stops at its head, taking it for bodiless, and a new llhttp parses what
    follows (_ignore_upgrade), unless the server switches protocols (the ASGI worker's
    WebSocket handshake: _switches_protocol);
  - a transfer coding other than plain `chunked` (e.g. `gzip, chunked`) → 501 (§6.1);
  - chunked on HTTP/1.0 → 400 (§6.1: a 1.0 message has no chunked framing);
  - a request line that is not `method SP target SP HTTP/d.d` → 400 (the client's error);
    a well-formed `HTTP/d.d` other than 1.0/1.1 → 505 (RFC 9110 §15.6.6), unless Gunicorn's
    `permit_unconventional_http_version` lets it through. llhttp checks the version's form and
    berth its value (llhttp's own list would answer 400 to HTTP/1.2);
  - the asterisk-form target `*` with a method other than OPTIONS → 400 (§3.2.4); CONNECT, in
    any target form → 501 (berth is no tunnel; RFC 9110 §9.3.6) and the connection closes;
  - trailing SP/HTAB is trimmed from header values (RFC 9110 §5.5; llhttp trims the leading);
  - trailer fields (after a chunked body) are discarded, never merged into the headers
    (RFC 9110 §6.5.1), and bounded as the head's fields are; reads of a chunked body that bring
    no chunk data (size lines, extensions, trailers) are bounded as a head is, and each of
    their lines as a field line;
  - a line still arriving (its LF not read yet) is refused once it is longer than a field
    line may be, not when it ends (_line_so_far): httptools copies a field at each read;
  - header names with `_` are dropped: `X_Forwarded_For` and `X-Forwarded-For` both become
    `HTTP_X_FORWARDED_FOR` in WSGI, so a client could spoof a proxy's header (as nginx and
    Gunicorn >= 22 do by default). Gunicorn's `header_map` chooses: `drop` (the default),
    `refuse` (400) or `dangerous` (map them anyway);
  - a chunk's size may be followed by SP/HTAB before its `;` extension (BWS, §7.1.1) or its
    CRLF; llhttp still refuses BWS inside an extension (`5; a=b`, `5;a ;b`);
  - the request line, the number of header fields and the size of one field are bounded, with
    Gunicorn's names and defaults (4094, 100, 8190 bytes).
"""

from __future__ import annotations

import re

import httptools

# Reason phrases berth uses for its own error responses.
REASONS = {
    400: "Bad Request", 403: "Forbidden", 408: "Request Timeout", 413: "Content Too Large",
    414: "URI Too Long", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable", 504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}


# Bytes looked for in every request, as ints: `35 in data` is a byte search, where `b"#" in
# data` first tries the bytes as an int and builds a TypeError (CPython 3.11: 290 against 40 ns).
HASH_BYTE, PERCENT_BYTE, UNDERSCORE_BYTE = ord("#"), ord("%"), ord("_")

# Header name (as received) -> (CGI/WSGI key, kind). The few names with a rule of their own get
# a kind; every other name costs one dict lookup per request once seen.
# (Host is plain: a second one is found where repeated fields are joined, a missing one by its
# key, so the one field every request has costs no rule of its own.)
PLAIN, TRANSFER_ENCODING, EXPECT, CONTENT_LENGTH, UNDERSCORE, FORWARDING, FORWARDER, SCHEME = \
    range(8)
_SPECIAL_KINDS = {b"transfer-encoding": TRANSFER_ENCODING, b"expect": EXPECT,
                  b"content-length": CONTENT_LENGTH}
_header_info: dict[bytes, tuple[str, int]] = {}
# RFC 9110 7.2: Host = uri-host [ ":" port ]; uri-host is an IP literal in brackets or a
# reg-name (unreserved, sub-delims, pct-encoded; an IPv4 address is one), empty included.
# Values found good are kept: a server sees the same few, so a connection's first Host costs a
# set lookup, not a match, and the next ones a comparison with the one before.
_HOST = re.compile(r"(?:\[[0-9A-Za-z:._~!$&'()*+,;=%-]+\]|[0-9A-Za-z._~!$&'()*+,;=%-]*)"
                   r"(?::[0-9]*)?\Z")
_good_hosts: set[str] = set()
_AUTHORITY_END = re.compile(rb"[/?#]")
# What a trusted proxy's headers may change (berth/forwarded.py): names (upper case) that mark
# their request, the names with '_' (forwarder_headers) kept aside from the headers until the
# peer is known to be trusted, and the scheme headers, whose lines are also kept one by one
# (Request.scheme_fields). Set by mark_forwarding(), from the configuration.
_forwarding: frozenset[str] = frozenset()
_scheme: frozenset[str] = frozenset()


def mark_forwarding(names, scheme_names=()) -> None:
    """Header names (any case) whose presence marks a request `forwarded`; with '_', they
    are also kept in `Request.forwarder` instead of the headers (see on_header). Each line of
    a field named in `scheme_names` (without '_') also goes to `Request.scheme_fields`: the
    scheme is judged line by line, as Gunicorn does, which the joined value cannot tell."""
    global _forwarding, _scheme
    scheme = frozenset(str(n).strip().upper() for n in scheme_names)
    names = frozenset(str(n).strip().upper() for n in names) | scheme
    if names != _forwarding or scheme != _scheme:
        _forwarding, _scheme = names, scheme
        _header_info.clear()


def header_info(name: bytes) -> tuple[str, int]:
    """`X-Request-Id` → ("HTTP_X_REQUEST_ID", PLAIN); `X_Foo` → ("HTTP_X_FOO", UNDERSCORE):
    the key `header_map = dangerous` gives it (cached)."""
    info = _header_info.get(name)
    if info is None:
        upper = name.decode("latin-1").upper()
        if upper in _forwarding:
            info = ("HTTP_" + upper.replace("-", "_"), FORWARDER if "_" in upper else
                    SCHEME if upper in _scheme else FORWARDING)
        elif UNDERSCORE_BYTE in name:  # mapped as Gunicorn does: always HTTP_, never CONTENT_TYPE
            info = ("HTTP_" + upper.replace("-", "_"), UNDERSCORE)
        else:
            upper = upper.replace("-", "_")
            key = upper if upper in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + upper
            info = (key, _SPECIAL_KINDS.get(name.lower(), PLAIN))
        if len(_header_info) < 4096:
            _header_info[name] = info
    return info


# RFC 9110 §5.6.2: the characters of a token (a method); Gunicorn's METHOD_BADCHAR_RE: the ones
# a conventional method does not have.
_TOKEN_CHARS = (b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                b"abcdefghijklmnopqrstuvwxyz")
_UNCONVENTIONAL_CHARS = b"abcdefghijklmnopqrstuvwxyz#"
# What llhttp is given in place of a method it does not know: llhttp frames a request the same
# whatever its method (CONNECT excepted, which berth answers 501 before this).
_STAND_IN = b"GET"
# What llhttp's feed_data() raises when it stops (HttpParserUpgrade is not an HttpParserError).
_STOPS = (httptools.HttpParserError, httptools.HttpParserUpgrade)

NO_VERSION = "no HTTP version in the request line"
MAX_BODY_PARTS = 64  # body parts kept apart before they are gathered (RequestParser._gather)
AFTER_CHUNKED = ("a method llhttp does not know, in a read where a chunked body begun in an "
                 "earlier read ended with a trailer or a last-chunk extension: where its "
                 "request line starts is not known")
MAX_SPLITS = 16  # pieces _resume() feeds one read in, at most
# feed_some() feeds a longer read this much at a time (a slice of the tiniest requests, 18
# bytes each, parses to about 230 of them: some 90 KiB of objects)
FEED_SLICE = 4096
# How an HTTP/1.1 request line ends. httptools' get_http_version() formats its answer with
# str.format (about 1.8k instructions, 2% of a hello-world request): on_headers_complete reads
# the version from the bytes instead when the request line is known to begin the read (_read).
HTTP11_LINE_END = b" HTTP/1.1\r\n"
CONNECT_NOT_IMPLEMENTED = "CONNECT is not implemented (berth is not a tunnel)"


class HttpError(Exception):
    """A request berth refuses: answered with `status` and the connection closed. It waits in
    a connection's queue as a Request does, and an app thread may take it up: it has the
    fields the server keeps of a queued request (see Request)."""

    dispatched = 0.0
    progress = 0.0
    queued = False

    def __init__(self, status: int, detail: str):
        super().__init__(f"{status} {detail}")
        self.status = status
        self.detail = detail


class Request:
    """One parsed request head, and its body once complete (or its stream, if streaming).

    `headers` maps CGI-style names (`HTTP_USER_AGENT`, `CONTENT_TYPE`) to latin-1 decoded
    values, repeated fields joined with ",", ready to go into a WSGI environ.
    """

    # Defaults live on the class: a request sets only what differs (cheaper than __init__
    # assigning every field, on the path every request takes).
    method = b""
    url = b""
    version = "1.1"  # how the response is framed: "1.1" or "1.0"
    server_protocol = "HTTP/1.1"  # the version as sent (SERVER_PROTOCOL)
    keep_alive = True
    body = b""
    complete = False
    chunked = False
    content_length: int | None = None
    expect_continue = False
    streaming = False
    body_stream = None  # made by the parser's stream_factory when the body streams
    dispatched = 0.0  # set by the server when it queues it for an app thread
    # --body-min-rate: since when its body is timed (a tick after its head, or after a pause
    # of the server's), and how many of its bytes had come by then (the servers' sweeps)
    body_since = 0.0
    body_base = 0
    progress = 0.0  # the app's last sign of life (0 while it waits for the client): --timeout
    overran = False
    queued = False  # waiting in the app threads' queue (Loop.to_thread), not taken up yet
    forwarded = False  # a header a trusted proxy may set is here (see mark_forwarding)
    forwarder: list[tuple[str, str]] | None = None  # forwarder_headers with '_', kept aside
    scheme_fields: list[tuple[str, bytes]] | None = None  # (key, value) of each scheme line

    def __init__(self):
        self.headers: dict[str, str] = {}


class CollectedBody:
    """The default body stream: collects the chunks (what unit tests look at)."""

    def __init__(self, request: Request):
        self.chunks = [request.body] if request.body else []
        self.done = False

    def feed(self, data: bytes | None) -> None:
        if data is None:
            self.done = True
        else:
            self.chunks.append(data)


class NoParser:
    """Stands in for the parser of a connection that is not reading a request (a new one,
    or one parked between requests): nothing is being parsed. A server makes a parser when
    bytes arrive (`NO_PARSER`); an httptools parser and its callbacks cost about 1.3 KB, which
    an idle keep-alive connection need not hold."""

    __slots__ = ()
    current = None
    in_head = False
    ready: list[Request] = []  # always empty: nothing feeds it

    def feed(self, data: bytes) -> None:
        raise RuntimeError("no parser: make one before feeding bytes")

    def close(self) -> None:
        pass


NO_PARSER = NoParser()


def _new_llhttp(protocol, cls=httptools.HttpRequestParser) -> httptools.HttpRequestParser:
    """An llhttp parser with berth's leniencies.

    lenient_version: llhttp still checks that the version is HTTP/d.d; which d.d berth serves is
    decided in on_headers_complete, so that HTTP/1.2 gets 505 and a mangled line 400.

    lenient_spaces_after_chunk_size: RFC 9112 §7.1.1 allows BWS (SP/HTAB) between a chunk's
    size and its ';' extension, which strict llhttp refuses. The flag lets SP/HTAB follow the
    size, before ';' or the CRLF: the size itself stays strict ("5 5", " 5", "5 x" are 400), so
    there is still one reading of every size line that gets through (a size, then whitespace
    before CRLF, is not in the grammar: no reader takes it for another size). Set per parser,
    it costs a request nothing.
    """
    parser = cls(protocol)
    parser.set_dangerous_leniencies(lenient_version=True, lenient_spaces_after_chunk_size=True)
    return parser


class _StandInMethod(httptools.HttpRequestParser):
    """llhttp for the rest of a connection once a request line went in with the stand-in for a
    method llhttp does not know (RequestParser._extension_method): get_method() answers the
    method as sent, once (on_headers_complete asks once a request), then llhttp's own. A Python
    subclass: each later request on that connection pays a Python call for it."""

    sent: bytes | None = None

    def get_method(self) -> bytes:
        sent = self.sent
        if sent is None:
            return httptools.HttpRequestParser.get_method(self)
        self.sent = None
        return sent


class _EndCounter:
    """The protocol of a scratch llhttp parser: it counts the requests that end."""

    __slots__ = ("ends",)

    def __init__(self):
        self.ends = 0

    def on_message_complete(self) -> None:
        self.ends += 1


def _requests_ending_in(data: bytes) -> int:
    """How many requests end in `data`, parsed from where a request starts."""
    counter = _EndCounter()
    try:
        _new_llhttp(counter).feed_data(data)
    except _STOPS:
        pass
    return counter.ends


# on_url counts the whole request line once the target is this close to the limit: longer
# than any method llhttp knows (VERSION-CONTROL, 15), and than most extension methods
METHOD_ROOM = 24


def unchain(err: BaseException | None) -> None:
    """`err` lets go of its traceback and of the exceptions it was raised while handling (its
    chain, each of them too): an HttpError kept to be answered held the parser's frames (and
    llhttp's callback error), which held the parser, which held the error: cycles left to the
    garbage collector, about 6 KB a refused request."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        following = err.__context__ or err.__cause__
        err.__traceback__ = err.__context__ = err.__cause__ = None
        err = following


class RequestParser:
    """Parses every request of one connection, in order.

    After `feed()`, `self.ready` holds requests whose head is complete and whose body is either
    complete (`request.complete`) or streaming. `self.in_head` is true while a request head is
    partly received (for the head deadline). Errors raise `HttpError`; the connection is then
    unusable.

    `stream_factory(request)` makes the object that receives a streamed body through
    `feed(bytes)` and, at its end, `feed(None)`.

    `header_map`, `permit_unconventional_http_version`, `permit_unconventional_http_method`
    and `casefold_http_method` are Gunicorn's settings of those names (see the module
    docstring). `RequestParser.for_config(cfg, stream_factory)` makes one from berth's
    configuration.
    """

    def __init__(self, limit_request_line: int = 4094, limit_request_fields: int = 100,
                 limit_request_field_size: int = 8190, body_buffer_size: int = 1024 * 1024,
                 stream_factory=CollectedBody, header_map: str = "drop",
                 permit_unconventional_http_version: bool = False,
                 permit_unconventional_http_method: bool = False,
                 casefold_http_method: bool = False):
        self.limit_line = limit_request_line or (1 << 62)
        self.limit_fields = limit_request_fields or 32768  # 0: Gunicorn's maximum
        # A header value without its CRLF grows inside llhttp with no callback: bound the whole
        # head by bytes, as the sum of the per-line limits allows.
        self.limit_head = (limit_request_line or 8190) + self.limit_fields * (
            (limit_request_field_size or 8190) + 4) + 4096
        # Gunicorn's limits count whole lines: a request line without its CRLF, a field line
        # with it. The callbacks see the target, and a field's name and value: a target that
        # a line with a long method (METHOD_ROOM) would take past the limit has its line
        # counted exactly (on_url); a field is counted as "name: value" with its CRLF.
        self.limit_target = self.limit_line - len(b"  HTTP/1.1") - METHOD_ROOM
        self.limit_field = (limit_request_field_size - len(b": \r\n")
                            if limit_request_field_size else 1 << 62)
        # The most bytes a field line may have before its LF arrives: as long as the limit,
        # with its CR (see _line_so_far).
        self.limit_unended = min(self.limit_field + 3, self.limit_head)
        self.body_limit = body_buffer_size
        self.stream_factory = stream_factory
        self.header_map = header_map
        self.permit_other_versions = permit_unconventional_http_version
        if permit_unconventional_http_method:  # (class defaults otherwise: see below)
            self.permit_other_methods = True
        if casefold_http_method:
            self.casefold_methods = True
        self.ready: list[Request] = []
        self.in_head = False
        # _parser is what feed() gives a read: llhttp (_llhttp), or this parser itself between
        # two reads of one request (its feed_data(): see _suspend). _new_llhttp's two lines,
        # inlined: a connection's parser is made whenever bytes arrive on an idle one.
        self._parser = self._llhttp = parser = httptools.HttpRequestParser(self)
        parser.set_dangerous_leniencies(lenient_version=True, lenient_spaces_after_chunk_size=True)
        self.current: Request | None = None  # the request whose head or body is arriving
        self._url = b""
        self._body: list[bytes] = []
        self._body_size = 0
        self._error: HttpError | None = None
        self._fields = 0
        self._head_bytes = 0
        self._te: bytes | None = None
        self._expect = False

    # The bytes of a request line whose method may not have ended (kept for _extension_method),
    # the request they belong to, and whether llhttp has already stopped at that method.
    _line: bytes | None = None
    _line_of: Request | None = None
    _method_unfinished = False
    _no_data_bytes = 0  # a chunked body's bytes in reads that brought no chunk data (_resume)
    _line_bytes = 0  # bytes of the line a read ended inside, so far (_line_so_far)
    _read: bytes | None = None  # the read feed() gives llhttp, while it parses it
    _host: str | None = None  # the last request's Host value, found good (_check_host)
    permit_other_methods = False  # permit_unconventional_http_method
    # A request switched protocols (_switches_protocol): the bytes after its head are the new
    # protocol's, not requests
    switched = False
    upgrade_rest = b""
    casefold_methods = False  # casefold_http_method

    _cfg = None  # the configuration for_config() last read, and what it read from it
    _options: tuple = ()
    _flags: tuple = ()

    @classmethod
    def for_config(cls, cfg, stream_factory=CollectedBody) -> RequestParser:
        """A parser with berth's settings. The values are read once per configuration, not per
        connection (a Config attribute costs about a microsecond)."""
        if cls._cfg is not cfg:
            cls._options = (cfg.limit_request_line, cfg.limit_request_fields,
                            cfg.limit_request_field_size, cfg.body_buffer_size)
            cls._flags = (cfg.header_map, cfg.permit_unconventional_http_version,
                          cfg.permit_unconventional_http_method, cfg.casefold_http_method)
            cls._cfg = cfg
        return cls(*cls._options, stream_factory, *cls._flags)

    @property
    def body_received(self) -> int:
        """The bytes of the current request's body come so far (chunked: its data)."""
        return self._body_size

    def close(self) -> None:
        """The connection is done with this parser (parked or closed). The httptools parser
        holds this one's callbacks, and the stream factory often the connection that holds
        this parser: without this, they wait for the garbage collector's next full collection
        instead of being freed at once. `current` and `ready` stay readable; nothing may be
        fed after it."""
        self._parser = self._llhttp = None
        self._line = self._line_of = None
        self.stream_factory = None

    # -- the one entry point ------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self._read = data  # (where a request begins, if llhttp has it: see on_headers_complete)
        try:
            self._parser.feed_data(data)  # self.feed_data() when the read continues a request
        except _STOPS as exc:
            self._read = None
            self._parse(self._after_error(exc, data))
            return
        self._read = None
        if self.current is not None and self._parser is not self:  # it ends inside a request
            self._parser = self  # _suspend(data), inlined for a body that comes in later reads
            if self.in_head:
                if not self._url:
                    self._line, self._line_of = data, self.current
                # (no request ended in this read: its last line is the head's, all of it)
                self._line_so_far(b"" if self.ready else data, 0)

    def feed_some(self, data: bytes, room: int) -> bytes | None:
        """feed() for a read longer than FEED_SLICE: it is fed a slice at a time, and feeding
        stops once `room` requests (or more) are ready. Returns the bytes not fed yet (None:
        all were), for the caller to feed once its queue has room again.

        A client may pipeline requests and read none of the responses: one 64 KiB read of
        tiny requests parses to some 1,600 of them, about 700 KiB of objects, and a
        connection's queue (MAX_PIPELINE) pauses its reading only after that read. Fed in
        slices, the read costs its bytes and a slice's requests at most. The body of the
        request arriving is fed in one piece (an upload's reads cost nothing more)."""
        size = len(data)
        start = 0
        while start < size:
            req = self.current
            end = start + FEED_SLICE
            if (req is not None and not self.in_head and not req.chunked
                    and req.content_length is not None):  # the body's rest in one piece
                end = max(end, start + req.content_length - self._body_size)
            end = min(end, size)
            self.feed(data[start:end] if start or end < size else data)
            start = end
            if start < size:
                if self.switched:  # what follows is the new protocol's
                    self.upgrade_rest += data[start:]
                    return None
                if len(self.ready) >= room:
                    return data[start:]
        return None

    # -- reads that end inside a request, and what llhttp refuses ------------------------------

    # httptools reports no byte offsets: where a request began in a read is known only when the
    # read began where a request begins. So a read that ends inside a request puts this parser
    # in llhttp's place (_suspend), and the next read is fed up to where that request can end
    # (feed_data, _resume); the requests after it then start at a known place again. That costs
    # the common read (whole requests) nothing: feed() tests `current` once, after llhttp, as it
    # tested `in_head` before; and a read that is only more of a body costs a few lines.

    def _suspend(self, piece: bytes | None) -> None:
        """A read ends inside a request: the next goes to feed_data() first. `piece`: the bytes
        fed since a request last began at a known place (None: no such place), kept while the
        request line's method may be unfinished (for _extension_method)."""
        self._parser = self
        if self.in_head and not self._url and piece is not None:
            self._line, self._line_of = piece, self.current

    def feed_data(self, data: bytes) -> None:
        """feed() for a read that continues a request begun in an earlier one, while this parser
        stands in for llhttp (_suspend). Most such reads are more of a body with a
        Content-Length, all of it this request's: they go to llhttp whole. Others: _resume()."""
        self._parser = parser = self._llhttp
        self._read = None  # (it does not begin where a request begins)
        req = self.current
        if (not self.in_head and not req.chunked and req.content_length is not None
                and len(data) <= req.content_length - self._body_size):
            try:
                parser.feed_data(data)
            except _STOPS as exc:
                self._parse(self._after_error(exc, data))
                return
            if self.current is not None:
                self._parser = self
            return
        self._parse(self._resume(data))

    def _resume(self, data: bytes) -> bytes | None:
        """feed_data() for a read that may hold more than the request it continues.

        The read is fed in pieces that end where that request can end: its head at its empty
        line (the first CRLF CRLF, or the end of one the read before began), a body at its
        Content-Length, a chunked body at a last chunk without extension or trailer
        ("0\r\n\r\n", as clients send it; a chunk's data may hold those bytes too, so at most
        MAX_SPLITS such places are tried in one read). What follows the request then starts
        where a request starts: returned, for _parse() (as _after_error's bytes are: so a read
        that brings many such requests is parsed in a loop, not a recursion). When the request
        ends elsewhere (a chunked body with trailers), where the next one begins is not known:
        a method llhttp does not know there gets 400 (AFTER_CHUNKED), any other is parsed as
        ever.
        """
        parser = self._llhttp
        req = self.current
        line = self._line if self._line_of is req else None
        self._line = self._line_of = None
        if self.in_head:
            self._head_bytes += len(data)
            if self._head_bytes > self.limit_head:
                raise HttpError(431, "request head too large")
            if line is not None:  # its request line had no whole method yet
                line += data
                if self._method_unfinished:  # llhttp stopped at it: see _extension_method
                    return self._extension_method(line)
        size = len(data)
        body_before = self._body_size
        start = pieces = 0
        known = True  # the pieces fed so far end inside `req`, or where a request ended
        while start < size:
            pieces += 1
            end = (self._end_of_current(req, data, start) if known and pieces <= MAX_SPLITS
                   else size)
            piece = data[start:end] if start or end < size else data
            try:
                parser.feed_data(piece)
            except httptools.HttpParserInvalidMethodError as exc:
                if line is None or self.current is not req:
                    raise HttpError(400, AFTER_CHUNKED) from None
                return self._after_error(exc, piece, line)
            except httptools.HttpParserUpgrade as exc:  # (what follows the piece is wanted)
                return self._after_error(exc, data[start:])
            except httptools.HttpParserError as exc:
                return self._after_error(exc, piece)
            start = end
            if self.current is None:  # a request ended at `end`: the rest starts one
                return data[start:] if start < size else None
            if self.current is not req:  # one ended inside the piece, and another began
                known = False
        if self.current is not req:  # (one began in this read: counted from its next read)
            self._line_bytes = 0
        elif self.in_head:
            self._line_so_far(data, self._line_bytes)
        elif req.chunked:
            # llhttp keeps a trailer field's bytes until its line ends (and reads a chunk's
            # extensions to their end): reads that bring no chunk data are bounded as a head,
            # and each of their lines as a field line.
            if self._body_size == body_before:
                self._no_data_bytes += size
                if self._no_data_bytes > self.limit_head:
                    raise HttpError(431, "chunk-size lines or trailer section too large")
                self._line_so_far(data, self._line_bytes)
            else:
                self._no_data_bytes = self._line_bytes = 0
        self._suspend(line if self.current is req else None)
        return None

    def _line_so_far(self, data: bytes, before: int) -> None:
        """A read ended inside a line of a head, or of a chunked body outside its data (a
        chunk-size line, a trailer field): `before` bytes of it came in earlier reads, and
        `data` ends with more. Refuse it (431) once it is longer than the limits let any line
        be. llhttp hands a field over in the pieces the reads bring, and httptools joins them
        (bytes `+=`, a copy of the whole so far at each read): a field that grew to the head's
        bound (808 KiB) in 100-byte reads cost 1.1 s of CPU before it was refused (a trailer
        field 0.1 to 0.25 s, and a trailer has no deadline on the whole); refused at the field's
        limit, 0.3 ms. Node.js bounds a chunk's extensions the same way (16 KiB,
        CVE-2024-22019)."""
        end = data.rfind(b"\n")
        n = before + len(data) if end < 0 else len(data) - end - 1
        if n > self.limit_unended:
            if not self.in_head:
                raise HttpError(431, "chunk-size line or trailer field too large")
            # (a line that may be the request line is on_url's: its target so far is _url)
            if n > len(self._url) + METHOD_ROOM + len(b"  HTTP/1.1\r"):
                raise HttpError(431, "header field too large")
        self._line_bytes = n

    def _end_of_current(self, req: Request, data: bytes, start: int) -> int:
        """The first place after `start` in `data` where the request arriving can end (the
        end of `data` when it cannot there)."""
        size = len(data)
        if self.in_head:
            end = b"\r\n\r\n"
        elif req.chunked:
            end = b"0\r\n\r\n"
        elif req.content_length is not None:
            return min(size, start + req.content_length - self._body_size)
        else:  # (a request without either ends with its head)
            return size
        n = len(end)
        for k in range(start + 1, n):  # the end may have begun in the read before
            if k <= size and data[:k] == end[n - k:]:
                return k
        i = data.find(end, max(0, start - n + 1))
        while 0 <= i and i + n <= start:
            i = data.find(end, i + 1)
        return size if i < 0 else i + n

    def _parse(self, data: bytes | None) -> None:
        """feed() for the bytes _after_error() gives a new llhttp parser, as often as one read
        needs (a loop: a read may hold hundreds of requests)."""
        while data is not None:
            try:
                self._parser.feed_data(data)
            except _STOPS as exc:
                data = self._after_error(exc, data)
                continue
            if self.current is not None:
                self._suspend(data)
                self._line_bytes = 0  # (counted from its next read: see _line_so_far)
            return

    def _after_error(self, exc: Exception, data: bytes,
                     line: bytes | None = None) -> bytes | None:
        """What llhttp's error `exc` means: raises the HttpError to answer, or returns the bytes
        a new llhttp parser is to parse next (_extension_method, _ignore_upgrade), or None:
        nothing to parse. `data` is what llhttp was fed; it starts where a request starts,
        unless `line` (bytes from such a place through the end of `data`) is given."""
        if isinstance(exc, httptools.HttpParserUpgrade):
            # llhttp stops after the head of a request with `Connection: upgrade` and an
            # `Upgrade` field, having ended it there (bodiless), and after a CONNECT: that is
            # never served (CONNECT in origin-form lands here, the other forms in
            # _check_target), and the requests before it are.
            ready = self.ready
            req = ready[-1]
            if req.method == b"CONNECT":
                ready.pop()
                raise HttpError(501, CONNECT_NOT_IMPLEMENTED) from None
            rest = data[exc.args[0]:]
            if self._switches_protocol(req, rest):  # what follows its head is not HTTP/1
                for req in ready:
                    req.keep_alive = False
                return None
            return self._ignore_upgrade(req, rest)
        if isinstance(exc, httptools.HttpParserCallbackError):
            err = self._error or exc.__context__
            if isinstance(err, HttpError):
                if err.detail is NO_VERSION and self._url and (
                        b" " + self._url + b" HTTP/0.9\r") in (line or data):
                    err = HttpError(505, "HTTP/0.9 not supported")
                raise err from None
            raise exc
        if isinstance(exc, httptools.HttpParserInvalidMethodError):
            if line is None:
                line = data
            return self._extension_method(line[self._last_request_end(line):])
        if isinstance(exc, httptools.HttpParserInvalidURLError):
            raise HttpError(400, "invalid request target") from None
        if self._error is not None:
            raise self._error from None
        raise HttpError(400, str(exc) or "malformed request") from None

    def _switches_protocol(self, req: Request, rest: bytes) -> bool:
        """Whether the connection stops speaking HTTP/1 after `req`, which asks to upgrade
        (`rest`: the bytes after its head, then the new protocol's). The WSGI worker never
        switches; the ASGI worker's parser does for a WebSocket handshake."""
        return False

    def _ignore_upgrade(self, req: Request, rest: bytes) -> bytes | None:
        """Serve an Upgrade request as if it had no Upgrade field (RFC 9110 §7.8: a server
        that does not switch must process the message as usual, body included): the bytes
        after its head (`rest`) are its body, then the next requests, for a new llhttp (the
        stopped one cannot go on). Returns what _resume() returns."""
        parser = self._parser = self._llhttp = _new_llhttp(self)
        if not req.chunked and not req.content_length:
            return rest  # the next request begins after the head
        # llhttp ended the request at its head: it goes back to arriving, and the new llhttp is
        # put inside a body framed as its own, by a head of that framing. The request that
        # head begins is then replaced by `req`: it must not stream meanwhile (and `req` was
        # not streamed: see on_headers_complete).
        self.ready.pop()
        req.complete = False
        if req.chunked:  # (on_message_complete gave it the length of an empty body)
            req.content_length = None
            del req.headers["CONTENT_LENGTH"]
            framing = b"Transfer-Encoding: chunked"
        else:
            framing = b"Content-Length: %d" % req.content_length
        limit, self.body_limit = self.body_limit, 1 << 62
        parser.feed_data(b"PUT / HTTP/1.1\r\nHost: h\r\n" + framing + b"\r\n\r\n")
        self.body_limit = limit
        self.current = req
        if not req.chunked and req.content_length > limit:
            self._stream(req)
        return self._resume(rest)

    def _last_request_end(self, data: bytes) -> int:
        """Where in `data` (which starts where a request starts) the last request that ends in
        it ends; 0 if none does. A scratch llhttp parser counts the requests that end in
        `data`, then in prefixes of it, halving the range: about log2(len) parses of at most
        len bytes, only for a method llhttp does not know after other requests in one read."""
        ends = _requests_ending_in(data)
        if not ends:
            return 0
        low, high = 0, len(data)  # the shortest prefix in which `ends` requests end
        while low < high:
            mid = (low + high) // 2
            if _requests_ending_in(data[:mid]) < ends:
                low = mid + 1
            else:
                high = mid
        return low

    def _extension_method(self, line: bytes) -> bytes | None:
        """A request line whose method llhttp does not know, from its first byte.

        Methods are open-ended tokens (RFC 9110 §9.1); llhttp knows a fixed list. berth takes
        the methods Gunicorn takes (_check_method), and gives llhttp, in a new parser, the line
        with a stand-in method llhttp knows; on_headers_complete gives the request the method
        as sent (_StandInMethod). Returns the bytes for that parser, or None when the method
        has not ended yet (the line is kept for the next read); raises HttpError for a method
        berth refuses.
        """
        line = line.lstrip(b"\r\n")  # llhttp skips empty lines before a request line
        space = line.find(b" ")
        method = line if space < 0 else line[:space]
        self._check_method(method, ended=space >= 0)
        if space < 0:  # llhttp stopped at the first byte it did not know; the token goes on
            self._line, self._line_of = line, self.current
            self._method_unfinished = True
            self._parser = self
            return None
        self._method_unfinished = False
        if self.casefold_methods:
            method = method.upper()
        if method == b"CONNECT":
            raise HttpError(501, CONNECT_NOT_IMPLEMENTED)
        parser = self._parser = self._llhttp = _new_llhttp(self, _StandInMethod)
        parser.sent = method
        return _STAND_IN + line[space:]

    def _check_method(self, method: bytes, ended: bool) -> None:
        """Gunicorn's rules for a method (gunicorn/http/message.py): a token (RFC 9110 §9.1),
        and, unless permit_unconventional_http_method, no lower case or '#' and 3 to 20
        characters. `ended`: the whole method has arrived (else: what arrived so far)."""
        if method.translate(None, _TOKEN_CHARS) or (ended and not method):
            raise HttpError(400, "invalid method")
        if self.permit_other_methods:
            if len(method) > self.limit_line:
                raise HttpError(414, "request line too long")
        elif (len(method) > 20 or (ended and len(method) < 3)
              or method.translate(None, _UNCONVENTIONAL_CHARS) != method):
            raise HttpError(400, f"unconventional method {method[:24].decode('latin-1')!r} "
                                 "(permit_unconventional_http_method allows it)")

    # -- httptools callbacks ------------------------------------------------------------------

    # Every request passes through these callbacks: each line costs, so state is reset only
    # where it was set and nothing is allocated that the common request does not need.

    def on_message_begin(self) -> None:
        self.current = Request()
        self._fields = 0
        self._head_bytes = 0
        self.in_head = True

    def on_url(self, url: bytes) -> None:
        if self._url:
            url = self._url + url
        self._url = url
        if len(url) > self.limit_target and (
                len(url) + len(self._parser.get_method()) + len(b"  HTTP/1.1") > self.limit_line):
            raise self._fail(414, "request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > self.limit_fields:
            if not self.in_head:  # past the head: a trailer field (see on_headers_complete)
                self._trailer(name, value)
                return
            raise self._fail(431, "too many header fields")
        if len(name) + len(value) > self.limit_field:
            raise self._fail(431, "header field too large")
        key, kind = _header_info.get(name) or header_info(name)
        # RFC 9110 5.5: the whitespace around a value is not part of it. llhttp drops the leading
        # whitespace, not the trailing. The only whitespace llhttp lets into a value is SP and
        # HTAB, so rstrip() without an argument (ASCII whitespace; obs-text such as 0xA0 stays)
        # trims exactly those, and returns the value itself when there is none: about 165
        # instructions a field, half of rstrip(b" \t")'s (no buffer for the argument).
        value = value.rstrip()
        if kind:
            if kind == TRANSFER_ENCODING:  # several lines are one list (RFC 9110 5.3)
                self._te = value if self._te is None else self._te + b", " + value
                return
            elif kind == EXPECT:
                self._expect = value.lower() == b"100-continue"
            elif kind == CONTENT_LENGTH:
                self.current.content_length = int(value)
            elif kind == FORWARDING:  # (and kept as a header)
                self.current.forwarded = True
            elif kind == SCHEME:  # each line kept too, to be judged alone (and kept as a header)
                req = self.current
                req.forwarded = True
                if req.scheme_fields is None:
                    req.scheme_fields = [(key, value)]
                else:
                    req.scheme_fields.append((key, value))
            elif kind == FORWARDER:  # a name with '_': aside, until the peer is known
                req = self.current
                req.forwarded = True
                if req.forwarder is None:
                    req.forwarder = []
                req.forwarder.append((name.decode("latin-1").upper(), value.decode("latin-1")))
                return
            elif self.header_map == "drop":  # UNDERSCORE
                return
            elif self.header_map == "refuse":
                raise self._fail(400, f"header name {name.decode('latin-1')!r} contains '_'")
        headers = self.current.headers
        if key in headers:
            # RFC 9110 5.3: a field of one value cannot be joined into a list; a repeat is
            # ambiguous (which one did a proxy judge the request by?): 400, as Gunicorn
            if key == "HTTP_HOST" or key == "CONTENT_TYPE":
                raise self._fail(400, f"more than one {name.decode('latin-1')} header")
            headers[key] += "," + value.decode("latin-1")
        else:
            headers[key] = value.decode("latin-1")

    def _check_host(self, host: str) -> None:
        """A Host other than the connection's last request's: 400 unless it is `host[:port]`
        (see _HOST)."""
        if host not in _good_hosts:
            if _HOST.match(host) is None:
                raise self._fail(400, f"invalid Host header {host[:100]!r}")
            if len(_good_hosts) >= 256:
                _good_hosts.clear()
            _good_hosts.add(host)
        self._host = host

    def on_headers_complete(self) -> None:
        req = self.current
        parser = self._parser
        req.method = method = parser.get_method()
        url = self._url
        # The first request of a read llhttp was given whole (feed: it begins a request, and
        # none ended before this one) has its request line at the read's start (or after
        # empty lines, where no version is found at the place reckoned): its version, read
        # there, proves itself. No SP, CR or LF is in a method or target, so those bytes can
        # be found only at the version's place.
        read = self._read
        if (read is not None and not self.ready
                and read.startswith(HTTP11_LINE_END, len(method) + 1 + len(url))):
            version = "1.1"
        else:
            version = parser.get_http_version()
        if version != "1.1":
            if version == "1.0":
                req.server_protocol = "HTTP/1.0"
            else:
                version = self._other_version(req, version)
        try:
            host = req.headers["HTTP_HOST"]
        except KeyError:
            if version == "1.1":
                raise self._fail(400, "missing Host header") from None
        else:  # (the connection's last Host: a str comparison, where hashing a new str costs)
            if host != self._host:
                self._check_host(host)
        if self._te is not None:
            te, self._te = self._te, None
            if te.strip().lower() != b"chunked":
                raise self._fail(501, f"transfer coding {te.decode('latin-1')!r} "
                                      "not implemented")
            if version == "1.0":
                raise self._fail(400, "chunked transfer coding in an HTTP/1.0 request")
            req.chunked = True
            self._no_data_bytes = self._line_bytes = 0  # see _resume
            # Fields after the last chunk are trailers: with the count at the limit, each
            # takes on_header's over-the-limit branch to _trailer(), so the head's fields pay
            # nothing for the rule.
            self._fields = self.limit_fields
        if self._expect:
            self._expect = False
            req.expect_continue = version == "1.1"
        if url[:1] != b"/":  # origin-form is the rule; the other forms have rules of their own
            self._check_target(req, url)
        req.url = url
        self._url = b""
        req.version = version
        req.keep_alive = parser.should_keep_alive()
        self.in_head = False
        # (An Upgrade request's body is read after llhttp stops at its head, and streamed
        # then: see _ignore_upgrade.)
        if (req.content_length is not None and req.content_length > self.body_limit
                and not req.chunked and not parser.should_upgrade()):
            self._stream(req)

    def on_body(self, body: bytes) -> None:
        req = self.current
        if req.streaming:
            req.body_stream.feed(body)
            self._body_size += len(body)
            return
        parts = self._body
        parts.append(body)
        self._body_size += len(body)
        if self._body_size > self.body_limit:
            self._stream(req)
        elif len(parts) >= MAX_BODY_PARTS:
            self._gather(parts)

    def on_message_complete(self) -> None:
        req = self.current
        if req.streaming:
            req.body_stream.feed(None)
            req.complete = True
            self.current = None
            self._body_size = 0
            return
        body = self._body
        if body:
            req.body = body[0] if len(body) == 1 and type(body[0]) is bytes else b"".join(body)
            body.clear()
            self._body_size = 0
        if req.chunked:
            req.content_length = len(req.body)
            req.headers["CONTENT_LENGTH"] = str(req.content_length)
        req.complete = True
        self.ready.append(req)
        self.current = None

    # -- helpers ------------------------------------------------------------------------------

    @staticmethod
    def _gather(parts: list) -> None:
        """Many small parts (a chunked body of 1-byte chunks: each part a bytes object of 34
        bytes and more, 27 times the body's own size) become one growing bytearray first in
        the list, so a buffered body costs about its size (--body-buffer-size)."""
        first = parts[0]
        if type(first) is bytearray:
            first += b"".join(parts[1:])
        else:
            parts[0] = bytearray(b"".join(parts))
        del parts[1:]

    def _stream(self, req: Request) -> None:
        """Release the request before its body is complete: the app reads it as it arrives."""
        req.streaming = True
        if req.chunked:  # no length to give the app: it reads to the end (input_terminated)
            req.headers["HTTP_TRANSFER_ENCODING"] = "chunked"
        req.body = b"".join(self._body)
        self._body.clear()
        req.body_stream = self.stream_factory(req)
        req.body = b""
        self.ready.append(req)

    def _trailer(self, name: bytes, value: bytes) -> None:
        """A trailer field: discarded, never merged into the headers (RFC 9110 §6.5.1: a
        recipient may merge one only where the field's definition allows it; berth knows of
        none the app needs, and a trailer names no rule a head field obeys, so a Host or
        Expect after the body can change nothing). The trailer section is bounded as the
        head is: as many fields, each as large."""
        if self._fields > 2 * self.limit_fields:
            raise self._fail(431, "too many trailer fields")
        if len(name) + len(value) > self.limit_field:
            raise self._fail(431, "trailer field too large")

    def _check_target(self, req: Request, url: bytes) -> None:
        """A request-target other than origin-form (RFC 9112 §3.2): absolute-form is served;
        asterisk-form only with OPTIONS (§3.2.4); CONNECT, whose target is authority-form, is
        not implemented (berth is no tunnel: RFC 9110 §9.3.6); authority-form is CONNECT's
        only (§3.2.3). llhttp refuses other targets before this.

        An absolute-form target's authority replaces the Host field (§3.2.2: a server MUST
        ignore the received Host and use the target's), so that the app, a router or a cache
        keyed on the host sees the one host the request names; the Host field was checked
        first all the same (§3.2 asks for it). An authority with userinfo (`user@host`:
        RFC 9110 §4.2.4, an error for http(s)) or no host gets 400."""
        method = req.method
        if method == b"CONNECT":
            raise self._fail(501, CONNECT_NOT_IMPLEMENTED)
        if url == b"*":
            if method != b"OPTIONS":
                raise self._fail(400, "asterisk-form target ('*') with a method other than "
                                      "OPTIONS")
            return
        scheme, sep, rest = url.partition(b"://")
        if not sep or scheme.lower() not in (b"http", b"https"):
            raise self._fail(400, "request-target is neither origin-form nor http(s) "
                                  "absolute-form")
        authority = _AUTHORITY_END.split(rest, 1)[0].decode("latin-1")
        if "@" in authority:
            raise self._fail(400, "userinfo in the request-target's authority")
        if authority[:1] in ("", ":") or _HOST.match(authority) is None:
            raise self._fail(400, f"invalid authority in the request-target "
                                  f"{authority[:100]!r}")
        req.headers["HTTP_HOST"] = authority
        self._target_host(req, authority)

    def _target_host(self, req: Request, authority: str) -> None:
        """The Host an absolute-form target gives (`_check_target`), for parsers that keep
        the fields as sent too."""

    def _other_version(self, req: Request, version: str) -> str:
        """A version other than 1.0/1.1 (llhttp checked its form, HTTP/d.d): the version the
        response is framed with, or an error."""
        if version == "0.9":
            # llhttp reads a request line without a version ("GET /", "POST /x0HTTP/1.1") as
            # HTTP/0.9: a malformed line, 400. feed() turns it into 505 when the bytes show an
            # explicit "HTTP/0.9" (whose client could not read an HTTP/1 response: never
            # served, with or without permit_unconventional_http_version).
            raise self._fail(400, NO_VERSION)
        if not self.permit_other_versions:
            raise self._fail(505, f"HTTP/{version} not supported")
        # As Gunicorn, the app sees the version as sent. The response is framed, and its
        # status line versioned, as HTTP/1.1 above 1.1 and as HTTP/1.0 below (RFC 9110 §6.2:
        # a server answers with the highest version it conforms to; Gunicorn echoes the
        # request's version, promising a protocol it does not speak).
        req.server_protocol = "HTTP/" + version
        return "1.1" if version > "1.1" else "1.0"

    def _fail(self, status: int, detail: str) -> HttpError:
        self._error = HttpError(status, detail)
        return self._error

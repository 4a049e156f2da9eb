"""What a trusted proxy's headers change in a request's environ: `wsgi.url_scheme` from
Gunicorn's `secure_scheme_headers`, the `forwarder_headers` (SCRIPT_NAME) a proxy may set, and,
with berth's `--forwarded-remote-addr`, REMOTE_ADDR from X-Forwarded-For / Forwarded.

Whether the peer is trusted is decided once per connection (`berth/trust.py`, against the
socket's peer, as Gunicorn does); from an untrusted peer none of these headers changes
anything. The parser marks the requests that carry one (`Request.forwarded`, see
`berth.http.parser.mark_forwarding`, which `Forwarding.from_config` calls): the others pay
nothing here.

The scheme, as Gunicorn decides it (`HeaderPolicy._apply_header_policy` in
gunicorn/http/message.py, the same for its ASGI worker): each line of a `secure_scheme_headers`
field is judged alone, its whole value (without the whitespace around it) compared with the
configured one, case-sensitively: equal means https, anything else http. The first line decides;
a later line that judges otherwise gets 400. So `X-Forwarded-Proto: https, http` on one line
is http (it is not `https`), as a proxy chain that appends gives it, and the lines
`X-Forwarded-Proto: https` and `X-Forwarded-Proto: http` get 400. The parser keeps each line
(`Request.scheme_fields`): joined, the two cannot be told apart.

Under Uvicorn's worker classes (`-k uvicorn.workers.UvicornWorker`: berth.config's
`uvicorn_worker_rules`), what the user left at its default follows Uvicorn's
ProxyHeadersMiddleware (uvicorn/middleware/proxy_headers.py, 0.55), which is what an app
behind Gunicorn with that worker had, Gunicorn's secure_scheme_headers never being read there:
  - the scheme comes from the last X-Forwarded-Proto line alone, stripped: `http`, `https`,
    `ws` or `wss` becomes the scope's scheme (a WebSocket's: `ws` or `wss`), anything else
    changes nothing, and no combination is a 400;
  - the client is the X-Forwarded-For entry Uvicorn takes (`berth.trust.client_as_uvicorn`),
    with its port or 0; Forwarded is not read.
The trust in the peer stays berth's (Gunicorn's): a unix-socket peer is trusted, where Uvicorn,
which sees no client address there, trusts one only under `*`.
"""

from __future__ import annotations

from berth.http.parser import HttpError, mark_forwarding
from berth.trust import TrustList, client_as_uvicorn, client_from_forwarded

XFF = "HTTP_X_FORWARDED_FOR"
FORWARDED = "HTTP_FORWARDED"
UVICORN_SCHEME_HEADER = "X-FORWARDED-PROTO"
UVICORN_SCHEMES = frozenset(("http", "https", "ws", "wss"))  # what Uvicorn takes from it
# the headers each way of reading the client reads
CLIENT_HEADERS = {None: (), "berth": ("X-FORWARDED-FOR", "FORWARDED"),
                  "uvicorn": ("X-FORWARDED-FOR",)}


def environ_key(header_name: str) -> str:
    """`X-FORWARDED-PROTO` -> `HTTP_X_FORWARDED_PROTO`, as the parser names the header."""
    return "HTTP_" + header_name.strip().upper().replace("-", "_")


class Forwarding:
    """The forwarded-header rules of one configuration (see the module docstring)."""

    def __init__(self, trust: TrustList, secure_scheme_headers: dict[str, str],
                 remote_addr: bool, forwarder_headers=(), scheme_rule: str = "gunicorn",
                 client_rule: str = "berth"):
        self.trust = trust
        # scheme_rule "uvicorn": the last X-Forwarded-Proto line, as Uvicorn reads it;
        # "gunicorn": secure_scheme_headers, the value meaning https as latin-1 bytes (what the
        # parser keeps of a line; None for a value no line can equal), by environ key (the
        # parser's key for a scheme line) and, for a name with '_' (a forwarder field), by
        # NAME. (Names in any case: Gunicorn wants them upper-case.)
        self.uvicorn_scheme = scheme_rule == "uvicorn"
        if self.uvicorn_scheme:
            secure_scheme_headers = {UVICORN_SCHEME_HEADER: ""}
        names = {name.strip().upper(): _latin1(value)
                 for name, value in secure_scheme_headers.items()}
        self.secure = {environ_key(name): value for name, value in names.items()
                       if "_" not in name}
        self.secure_named = {name: value for name, value in names.items() if "_" in name}
        # how the client is read: None (the peer stays), "berth" (client_from_forwarded) or
        # "uvicorn" (client_as_uvicorn)
        self.client = (client_rule if client_rule == "uvicorn" else "berth") if remote_addr \
            else None
        # the names the parser marks (mark_forwarding), a scheme header's lines kept apart
        self.scheme_names = tuple(names)
        self.marked = (*forwarder_headers, *CLIENT_HEADERS[self.client])

    @classmethod
    def from_config(cls, cfg) -> Forwarding:
        """The configuration's rules; the parser is told which headers mark a request."""
        decisions = cfg.decisions
        forwarding = cls(TrustList.parse(cfg.forwarded_allow_ips, "forwarded_allow_ips"),
                         cfg.secure_scheme_headers, cfg.forwarded_remote_addr,
                         cfg.forwarder_headers, decisions.scheme_rule, decisions.client_rule)
        mark_forwarding(forwarding.marked, forwarding.scheme_names)
        return forwarding

    def trusts(self, peer) -> bool:
        """For a connection: whether `peer` (accept()'s address, or None for a unix socket)
        is a trusted proxy."""
        return peer is None or self.trust.trusts(peer)

    def apply(self, environ: dict, req, trusted: bool, header_map: str,
              mount: bool = True, proxied: str | None = None) -> None:
        """A marked request (`req.forwarded`): from a trusted peer, its forwarder headers
        join the environ (a SCRIPT_NAME header sets SCRIPT_NAME, unless not `mount`: the ASGI
        worker reads no such header, as neither Gunicorn's ASGI worker nor Uvicorn does), the
        scheme headers set the scheme (400 when they disagree, as Gunicorn; or as Uvicorn
        reads X-Forwarded-Proto) and, if asked, the client's address is read (berth's way, or
        Uvicorn's). From another peer, the forwarder headers are what header_map says of any
        name with '_', and nothing else changes.

        `proxied` is the client a PROXY protocol header named (WSGI: read from the environ's
        PROXY_ADDR and REMOTE_ADDR when not given). That client, not the socket's peer, sent
        the request's bytes, X-Forwarded-For included: the PROXY protocol relays TCP and adds
        nothing to the request. So the client is read from the headers only when it, too, is
        in forwarded_allow_ips (an HTTP proxy in front of the TCP one); else any client
        behind a TCP proxy could name itself. The scheme stays judged by the socket's peer,
        as in Gunicorn."""
        if req.forwarder:
            self._forwarder(environ, req.forwarder, trusted, header_map, mount)
        if not trusted:
            return
        lines = req.scheme_fields
        if self.uvicorn_scheme:
            if lines:
                value = lines[-1][1].decode("latin-1").strip()
                if value in UVICORN_SCHEMES:
                    environ["wsgi.url_scheme"] = value
        elif req.forwarder is None and lines is not None and len(lines) == 1:  # most often
            key, value = lines[0]
            environ["wsgi.url_scheme"] = "https" if value == self.secure.get(key) else "http"
        elif lines or req.forwarder:
            scheme = self._scheme(lines or (), req.forwarder or ())
            if scheme is not None:
                environ["wsgi.url_scheme"] = scheme
        rule = self.client
        if rule is None:
            return
        if proxied is None and "PROXY_ADDR" in environ:  # (set only when a header named one)
            proxied = environ["REMOTE_ADDR"]
        if proxied is not None and not self.trust.trusts_ip(proxied):
            return
        client = None
        xff = environ.get(XFF)
        if rule == "uvicorn":
            if xff is not None:
                client = client_as_uvicorn(xff, self.trust)
        else:
            fwd = environ.get(FORWARDED)
            if xff is not None or fwd is not None:
                client = client_from_forwarded([xff] if xff else [], [fwd] if fwd else [],
                                               self.trust)
        if client is not None:
            host, port = client
            environ["REMOTE_ADDR"] = host
            environ["REMOTE_PORT"] = str(port or 0)

    def _scheme(self, lines, forwarder) -> str | None:
        """Gunicorn's decision over the scheme header lines (see the module docstring): the
        first decides, one that disagrees is a 400; None without any. `lines` are the parser's
        (key, value bytes); a scheme header named with '_' is among the `forwarder` fields,
        (NAME, value) text. (All must agree: the order does not change the answer.)"""
        secure, named = self.secure, self.secure_named
        judged = [value == secure.get(key) for key, value in lines]
        for name, value in forwarder:
            if name in named:
                judged.append(value.encode("latin-1") == named[name])
        if not judged:
            return None
        if judged.count(judged[0]) != len(judged):
            raise HttpError(400, "conflicting scheme headers")
        return "https" if judged[0] else "http"

    @staticmethod
    def _forwarder(environ: dict, fields: list, trusted: bool, header_map: str,
                   mount: bool) -> None:
        for name, value in fields:
            if not trusted:
                if header_map == "drop":
                    continue
                if header_map == "refuse":
                    raise HttpError(400, f"header name {name!r} contains '_'")
            key = "HTTP_" + name.replace("-", "_")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
            if name == "SCRIPT_NAME" and trusted and mount:  # as Gunicorn's wsgi.create
                path = environ["PATH_INFO"]
                script_name = environ["SCRIPT_NAME"]
                if script_name:  # (the environment's SCRIPT_NAME came off PATH_INFO already)
                    path = script_name + path
                if not path.startswith(value):
                    raise HttpError(400, f"the path {path!r} does not start with the "
                                         f"SCRIPT_NAME {value!r} the proxy sent")
                environ["SCRIPT_NAME"] = value
                environ["PATH_INFO"] = path[len(value):]


def _latin1(value) -> bytes | None:
    """A configured value as the bytes a header line would carry; None when no line can
    (not text, or not latin-1)."""
    try:
        return value.encode("latin-1")
    except (AttributeError, UnicodeEncodeError):
        return None

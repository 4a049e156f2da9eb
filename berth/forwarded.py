"""What a trusted proxy's headers change in a request's environ: `wsgi.url_scheme` from
Gunicorn's `secure_scheme_headers`, the `forwarder_headers` (SCRIPT_NAME) a proxy may set, and,
with berth's `--forwarded-remote-addr`, REMOTE_ADDR from X-Forwarded-For / Forwarded.

Whether the peer is trusted is decided once per connection (`berth/trust.py`, against the
socket's peer, as Gunicorn does); from an untrusted peer none of these headers changes
anything. The parser marks the requests that carry one (`Request.forwarded`, see
`berth.http.parser.mark_forwarding`): the others pay nothing here.
"""

from __future__ import annotations

from berth.http.parser import HttpError
from berth.trust import TrustList, client_from_forwarded

XFF = "HTTP_X_FORWARDED_FOR"
FORWARDED = "HTTP_FORWARDED"


def environ_key(header_name: str) -> str:
    """`X-FORWARDED-PROTO` -> `HTTP_X_FORWARDED_PROTO`, as the parser names the header."""
    return "HTTP_" + header_name.strip().upper().replace("-", "_")


class Forwarding:
    """The forwarded-header rules of one configuration (see the module docstring)."""

    def __init__(self, trust: TrustList, secure_scheme_headers: dict[str, str],
                 remote_addr: bool):
        self.trust = trust
        # (environ key, the value meaning https), in the configuration's order
        self.scheme = tuple((environ_key(name), value)
                            for name, value in secure_scheme_headers.items())
        self.remote_addr = remote_addr

    @classmethod
    def from_config(cls, cfg) -> Forwarding:
        return cls(TrustList.parse(cfg.forwarded_allow_ips, "forwarded_allow_ips"),
                   cfg.secure_scheme_headers, cfg.forwarded_remote_addr)

    def trusts(self, peer) -> bool:
        """For a connection: whether `peer` (accept()'s address, or None for a unix socket)
        is a trusted proxy."""
        return peer is None or self.trust.trusts(peer)

    def apply(self, environ: dict, req, trusted: bool, header_map: str) -> None:
        """A marked request (`req.forwarded`): from a trusted peer, its forwarder headers
        join the environ (a SCRIPT_NAME header sets SCRIPT_NAME), the scheme headers set the
        scheme (400 when they disagree, as Gunicorn) and, if asked, the client's address is
        read. From another peer, the forwarder headers are what header_map says of any name
        with '_', and nothing else changes."""
        if req.forwarder:
            self._forwarder(environ, req.forwarder, trusted, header_map)
        if not trusted:
            return
        scheme = None
        for key, secure in self.scheme:
            value = environ.get(key)
            if value is None:
                continue
            # repeated fields arrive joined with ","; Gunicorn judges each one
            for part in value.split(","):
                this = "https" if part.strip() == secure else "http"
                if scheme is None:
                    scheme = this
                elif this != scheme:
                    raise HttpError(400, "conflicting scheme headers")
        if scheme is not None:
            environ["wsgi.url_scheme"] = scheme
        if self.remote_addr:
            xff, fwd = environ.get(XFF), environ.get(FORWARDED)
            if xff is not None or fwd is not None:
                client = client_from_forwarded([xff] if xff else [], [fwd] if fwd else [],
                                               self.trust)
                if client is not None:
                    host, port = client
                    environ["REMOTE_ADDR"] = host
                    environ["REMOTE_PORT"] = str(port or 0)

    @staticmethod
    def _forwarder(environ: dict, fields: list, trusted: bool, header_map: str) -> None:
        for name, value in fields:
            if not trusted:
                if header_map == "drop":
                    continue
                if header_map == "refuse":
                    raise HttpError(400, f"header name {name!r} contains '_'")
            key = "HTTP_" + name.replace("-", "_")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
            if name == "SCRIPT_NAME" and trusted:  # as Gunicorn's wsgi.create
                path = environ["PATH_INFO"]
                script_name = environ["SCRIPT_NAME"]
                if script_name:  # (the environment's SCRIPT_NAME came off PATH_INFO already)
                    path = script_name + path
                if not path.startswith(value):
                    raise HttpError(400, f"the path {path!r} does not start with the "
                                         f"SCRIPT_NAME {value!r} the proxy sent")
                environ["SCRIPT_NAME"] = value
                environ["PATH_INFO"] = path[len(value):]

"""What a trusted proxy's headers change in a request's environ: `wsgi.url_scheme` from
Gunicorn's `secure_scheme_headers`, the `forwarder_headers` (SCRIPT_NAME) a proxy may set, and,
with berth's `--forwarded-remote-addr`, REMOTE_ADDR from X-Forwarded-For / Forwarded.

Whether the peer is trusted is decided once per connection (`berth/trust.py`, against the
socket's peer, as Gunicorn does); from an untrusted peer none of these headers changes
anything. For a trusted peer, the request pays one set intersection when it carries none of
them (`Forwarding.keys`).
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
        keys = {key for key, _ in self.scheme}
        if remote_addr:
            keys |= {XFF, FORWARDED}
        # the request keys that make a trusted peer's request worth a look
        self.keys = frozenset(keys)

    @classmethod
    def from_config(cls, cfg) -> Forwarding:
        return cls(TrustList.parse(cfg.forwarded_allow_ips, "forwarded_allow_ips"),
                   cfg.secure_scheme_headers, cfg.forwarded_remote_addr)

    def trusts(self, peer) -> frozenset | None:
        """For a connection: the keys to look for when `peer` (accept()'s address, or None
        for a unix socket) is trusted, else None."""
        if peer is None or self.trust.trusts(peer):
            return self.keys
        return None

    def apply(self, environ: dict) -> None:
        """A trusted peer's request that carries some of `keys`: set the scheme (400 when
        the headers disagree, as Gunicorn) and, if asked, the client's address."""
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

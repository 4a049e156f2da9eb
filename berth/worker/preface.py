"""The PROXY protocol header a load balancer writes before a connection's first request
(`--proxy-protocol`), read by the loop thread: the bytes are parsed by berth/http/proxyproto.py,
and here the connection's addresses change, or the connection is refused.

A connection whose first bytes cannot start a header is plain HTTP (a kubelet probe, a client
on the bare port), as in every one of Gunicorn's modes. A header is accepted only from a peer
in `--proxy-allow-from`: any other gets 403 and the connection closes (Gunicorn's answer). A
malformed header, or one cut short by the client's close, closes the connection and is logged;
the app never sees it. What the header names holds for every request of the connection.
"""

from __future__ import annotations

import socket

from berth.http.parser import HttpError
from berth.http.proxyproto import (
    NEED_MORE,
    NOT_PROXY,
    ProxyProtocolError,
    environ_additions,
    parse,
    truncated,
)
from berth.trust import TrustList


class ProxyPreface:
    def __init__(self, mode: str, trust: TrustList, environs, log):
        self.mode = mode
        self.trust = trust
        self.environs = environs  # berth.wsgi.Environs: for_proxied()
        self.log = log

    @classmethod
    def from_config(cls, cfg, environs, log) -> ProxyPreface | None:
        if cfg.proxy_protocol == "off":
            return None
        return cls(cfg.proxy_protocol, TrustList.parse(cfg.proxy_allow_ips, "proxy_allow_ips"),
                   environs, log)

    def read(self, conn, data: bytes) -> bytes | None:
        """Bytes received before the header is settled: the bytes that are HTTP (None: none
        yet, or the connection was closed). Raises HttpError(403) for a peer not allowed."""
        buf = conn.preface + data if conn.preface else data
        try:
            header = parse(buf, mode=self.mode)
        except ProxyProtocolError as err:
            conn.preface = None
            self._refuse_if_not_allowed(conn)
            self.log.warning("bad PROXY protocol header from %s: %s; closing the connection",
                             self._peer_text(conn), err.reason)
            conn.close()
            return None
        if header is NOT_PROXY:
            conn.preface = None
            return buf
        if header is NEED_MORE:  # (parse bounds it: 107 bytes for v1, 4 KiB for v2)
            conn.preface = bytes(buf)
            return None
        conn.preface = None
        self._refuse_if_not_allowed(conn)
        conn.environ = self.environs.with_keys(conn.environ, environ_additions(header))
        return buf[header.consumed:] or None

    def truncated(self, conn, header_timeout: float | None = None) -> None:
        """The client closed in the middle of a header, or sent nothing more of it within
        `header_timeout` (the caller closes the connection)."""
        self.log.warning(truncated(self._peer_text(conn), len(conn.preface), header_timeout))
        conn.preface = None

    def _refuse_if_not_allowed(self, conn) -> None:
        sock = conn.sock
        if sock.family == socket.AF_UNIX:
            return  # a unix-socket peer is always allowed, as in Gunicorn
        try:
            peer = sock.getpeername()
        except OSError:
            peer = ("", 0)
        if not self.trust.trusts(peer):
            self.log.warning("PROXY protocol header from %s, which is not in "
                             "proxy_allow_ips: 403", peer[0])
            raise HttpError(403, "PROXY header from a peer not in proxy_allow_ips")

    @staticmethod
    def _peer_text(conn) -> str:
        try:
            peer = conn.sock.getpeername()
        except OSError:
            return "a peer gone"
        return peer[0] if isinstance(peer, tuple) else "a unix socket"

"""`berth check [URL] [options]`: does the server answer? The command for a Dockerfile
`HEALTHCHECK` (slim images have no curl).

Exit 0 when URL answers 2xx within `--check-timeout` seconds (connecting included), 1 when it
does not, 2 when URL or the configuration is wrong. Exactly one line either way: `ok: URL 200
in 3 ms` on stdout, `failed: URL 503 in 2 ms` or `failed: URL: connection refused` on stderr,
`berth: error: ...` for exit 2.

Without URL, berth checks itself as configured: the options after `check`, the environment
(`BERTH_*`, `GUNICORN_CMD_ARGS`, `BERTH_CMD_ARGS`) and the config file are read as the server
reads them (`config.parse_config`), and the target is the readiness probe (`--ready-path`) on
the first `--bind`: 0.0.0.0 and :: become the loopback, `unix:PATH` is checked over the unix
socket, and with `--certfile` it speaks https.

A HEALTHCHECK runs this every few seconds, so it starts fast: it imports the configuration
and http.client, never the app, the master or the worker, nor logging.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from urllib.parse import urlsplit

from berth import __version__
from berth.config import Config, ConfigError, parse_config
from berth.sockets import BindError, parse_bind

USAGE = """\
usage: berth check [URL] [options]

Exit 0 when URL answers 2xx within --check-timeout seconds (default 5), 1 when it does not,
2 when URL or the configuration is wrong; one line either way.

Without URL: berth's readiness probe (--ready-path) on the first --bind, read from the same
options, environment and config file as `berth` itself (0.0.0.0 and :: are checked on the
loopback; with --certfile over https, the certificate not verified: it is berth's own).

URL: http://HOST[:PORT][/PATH], https://HOST[:PORT][/PATH] (the certificate is verified),
or http://unix:/PATH/TO.sock:/PATH (a unix socket, as nginx writes it).

  HEALTHCHECK CMD ["berth", "check"]"""

URL_FORMS = ("expected http://HOST[:PORT][/PATH], https://HOST[:PORT][/PATH] or "
             "http://unix:/PATH/TO.sock:/PATH")


@dataclasses.dataclass(frozen=True)
class Target:
    """Where to send the GET: a TCP host and port, or a unix socket (`unix`)."""

    url: str  # as the line shows it
    scheme: str  # "http" or "https"
    host: str  # the Host header ("localhost" for a unix socket)
    port: int
    path: str  # the request target: path and query
    unix: str = ""
    verify: bool = True  # https: verify the certificate (not when berth checks itself)


def _show_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_url(text: str, command: str = "check") -> Target:
    """A URL given on the command line → Target (ConfigError when it is not one)."""
    bad = ConfigError(f"{command}: bad URL {text!r}: {URL_FORMS}")
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https") or any(c.isspace() for c in text):
        raise bad
    if rest.startswith("unix:"):  # http://unix:/run/berth.sock:/-/ready (nginx's form)
        path_to, _, target = rest[5:].partition(":")
        if not path_to or (target and not target.startswith("/")):
            raise bad
        return Target(text, scheme, "localhost", 0, target or "/", unix=path_to)
    try:
        parts = urlsplit(text)
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number, a bad IPv6 literal
        raise bad from None
    if not host:
        raise bad
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(text, scheme, host, port or (443 if scheme == "https" else 80), target)


def _local(host: str, family: int) -> str:
    """The address to reach a listener bound to `host`: the loopback for 0.0.0.0 and ::."""
    try:
        unspecified = not any(socket.inet_pton(family, host))
    except OSError:
        return host
    if unspecified:
        return "::1" if family == socket.AF_INET6 else "127.0.0.1"
    return host


def target_for_bind(address: str, path: str, tls: bool, chdir: str | None = None) -> Target:
    """The URL of `path` on a listener bound to `address` (a --bind value), as seen from
    inside the container. A relative unix socket path is in `chdir` (--chdir), where the
    server binds it, as Gunicorn does."""
    try:
        family, where = parse_bind(address)
    except BindError as exc:
        raise ConfigError(str(exc)) from None
    if family == socket.AF_UNIX and chdir:
        where = os.path.join(chdir, where)
    scheme = "https" if tls else "http"
    # With --certfile berth checks its own certificate from the same machine: there is no
    # name to verify it against (0.0.0.0, a unix socket) and nothing to protect against on
    # the loopback, so the context does not verify (the handshake still has to succeed).
    if family == -1:
        raise ConfigError(f"check: the first --bind is {address} (a socket berth is handed, "
                          f"not one it binds): give berth check the URL to check")
    if family == socket.AF_UNIX:
        return Target(f"{scheme}://unix:{where}:{path}", scheme, "localhost", 0, path,
                      unix=where, verify=False)
    host, port = where
    host = _local(host, family)
    return Target(f"{scheme}://{_show_host(host)}:{port}{path}", scheme, host, port, path,
                  verify=False)


def default_target(cfg: Config) -> Target:
    """Without URL: the admin listener's /readyz (answered by the master, from shared
    memory), or else berth's readiness probe on the first --bind."""
    if cfg.admin_bind:  # (plain HTTP, with --certfile too)
        return target_for_bind(cfg.admin_bind, "/readyz", tls=False, chdir=cfg.chdir)
    if not cfg.ready_path:
        raise ConfigError("check: the readiness probe is off (--ready-path ''): give berth "
                          "check the URL to check")
    return target_for_bind(cfg.bind[0], cfg.ready_path, tls=bool(cfg.certfile),
                           chdir=cfg.chdir)


# -- the request -------------------------------------------------------------------------------

def why_no_answer(exc: BaseException, timeout: float) -> str:
    """Why there is no answer, in a few words."""
    import http.client

    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout:g} s"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "closed the connection without an answer"
    if isinstance(exc, http.client.HTTPException):
        return f"not an HTTP answer ({type(exc).__name__} {str(exc)[:80]})"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host: {exc.strerror}"
    if type(exc).__module__ == "ssl":
        return f"TLS: {getattr(exc, 'verify_message', '') or getattr(exc, 'reason', '') or exc}"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]


def get(target: Target, timeout: float, agent: str = "berth-check",
        body_limit: int = 1 << 20) -> tuple[int, bytes, int]:
    """GET the target within `timeout` seconds, connecting included: (status, body, ms).
    Raises OSError (TimeoutError past the deadline) or http.client.HTTPException; a body
    longer than `body_limit` bytes is cut there."""
    import http.client

    deadline = time.monotonic() + timeout

    def left() -> float:  # every step gets what remains of the timeout
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        return remaining

    class Connection(http.client.HTTPConnection):
        default_port = 443 if target.scheme == "https" else 80  # (the Host header omits it)

        def connect(self) -> None:
            if target.unix:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(left())
                    sock.connect(target.unix)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection((target.host, target.port), left())
            if target.scheme == "https":
                import ssl

                context = ssl.create_default_context()
                if not target.verify:  # berth's own certificate: see target_for_bind
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                try:
                    sock.settimeout(left())
                    sock = context.wrap_socket(
                        sock, server_hostname=None if target.unix else target.host)
                except BaseException:
                    sock.close()
                    raise
            self.sock = sock

    # http.client's timeout applies to each socket operation: before each step the socket
    # gets what is left, so a silent server fails at the deadline (a server that trickles its
    # answer byte by byte could stretch it; berth writes its probe's answer at once, and the
    # HEALTHCHECK's own --timeout bounds the rest).
    conn = Connection(target.host, None if target.unix else target.port)
    start = time.monotonic()
    answer = None
    try:
        conn.connect()
        sock = conn.sock  # (getresponse hands it to the answer: conn.sock becomes None)
        sock.settimeout(left())
        conn.request("GET", target.path, headers={
            "User-Agent": f"{agent}/{__version__}", "Connection": "close"})
        sock.settimeout(left())
        answer = conn.getresponse()
        body = b""
        if body_limit:
            sock.settimeout(left())
            body = answer.read(body_limit)
    finally:
        if answer is not None:
            answer.close()
        conn.close()
    return answer.status, body, round((time.monotonic() - start) * 1000)


def probe(target: Target, timeout: float) -> tuple[bool, str]:
    """GET the target: (answered 2xx in time, the one line that says so)."""
    import http.client

    try:
        status, _, ms = get(target, timeout, body_limit=0)
    except (OSError, http.client.HTTPException) as exc:
        return False, f"failed: {target.url}: {why_no_answer(exc, timeout)}"
    ok = 200 <= status < 300
    return ok, f"{'ok' if ok else 'failed'}: {target.url} {status} in {ms} ms"


# -- the command -------------------------------------------------------------------------------

def split_url(argv: list[str]) -> tuple[str | None, list[str]]:
    """`berth check [URL] [options]`: the URL (the first argument when it is not an option,
    or an http(s):// argument anywhere) and the options."""
    url, rest = None, []
    for i, arg in enumerate(argv):
        if url is None and ((i == 0 and not arg.startswith("-"))
                            or arg.lower().startswith(("http://", "https://"))):
            url = arg
        else:
            rest.append(arg)
    return url, rest


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(USAGE)
        return 0
    url, options = split_url(argv)
    try:
        cfg = parse_config(options, require_app=False)
        target = parse_url(url) if url is not None else default_target(cfg)
    except ConfigError as exc:
        print(f"berth: error: {exc}", file=sys.stderr)
        return 2
    ok, line = probe(target, cfg.check_timeout)
    print(line, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1

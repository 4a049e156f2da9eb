"""Listening sockets from bind addresses: HOST:PORT, [IPv6]:PORT, unix:PATH, fd://N (and the
other spellings of them Gunicorn reads: `tcp://HOST:PORT`, `unix://PATH`)."""

from __future__ import annotations

import os
import socket
import stat


class BindError(Exception):
    pass


EXPECTED = "expected HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N"


def split_bind(addr: str) -> tuple[int, object]:
    """A bind string as written → (family, address), no name resolved: `unix:PATH` →
    (AF_UNIX, PATH); `fd://N` → (-1, N); `HOST:PORT`, `[IPv6]:PORT`, `HOST` (port 8000) or
    `:PORT` (host 0.0.0.0) → (AF_INET, or AF_INET6 for an IPv6 host, (host, port)).

    The forms Gunicorn's `util.parse_address` reads, read as it reads them: `unix://PATH` is
    `unix:PATH`, and a `tcp://` prefix is dropped. (Gunicorn also lower-cases the host: that
    changes no name or address, only an IPv6 scope's interface name, so berth keeps it.)"""
    if addr.startswith("unix:"):
        path = addr[7:] if addr.startswith("unix://") else addr[5:]
        if not path:
            raise BindError(f"--bind {addr!r}: unix: needs a path")
        return socket.AF_UNIX, path
    if addr.startswith("fd://"):
        try:
            return -1, int(addr[5:])
        except ValueError:
            raise BindError(f"--bind {addr!r}: fd:// needs a file descriptor number") from None
    netloc = addr[6:] if addr.startswith("tcp://") else addr
    if netloc.startswith("["):
        host, sep, rest = netloc[1:].partition("]")
        if not sep:
            raise BindError(f"--bind {addr!r}: missing ']'")
        port = rest[1:] if rest.startswith(":") else "8000"
    else:
        host, sep, port = netloc.rpartition(":")
        if not sep:
            host, port = netloc, "8000"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BindError(f"--bind {addr!r}: {EXPECTED}")
    host = host or "0.0.0.0"
    return (socket.AF_INET6 if ":" in host else socket.AF_INET), (host, int(port))


def parse_bind(addr: str) -> tuple[int, object]:
    """A bind string → (family, address) to bind, checked here so that an address that cannot
    be bound is refused with the configuration (exit 2), not at start: an IPv4 host name is
    resolved (its address is returned), an IPv6 host must be one getaddrinfo takes. `fd://N` →
    (-1, N). Raises BindError."""
    family, where = split_bind(addr)
    if family == socket.AF_INET:
        host, port = where
        try:
            socket.inet_aton(host)
        except OSError:
            try:
                host = socket.gethostbyname(host)
            except OSError:
                raise BindError(f"--bind {addr!r}: cannot resolve {host!r}") from None
        return family, (host, port)
    if family == socket.AF_INET6:
        try:  # (a host with a ':' is no name: numeric, a scope as in `fe80::1%eth0` taken)
            socket.getaddrinfo(where[0], where[1], socket.AF_INET6, socket.SOCK_STREAM, 0,
                               socket.AI_NUMERICHOST)
        except (OSError, UnicodeError):
            raise BindError(f"--bind {addr!r}: {where[0]!r} is not an IPv6 address") from None
    return family, where


def create_listener(addr: str, backlog: int, reuse_port: bool = False,
                    umask: int | None = None, v6only: bool = False) -> socket.socket:
    """A listening socket for `addr`. As in Gunicorn: `reuse_port` sets SO_REUSEPORT on a TCP
    listener, `umask` is the process's umask only while a unix socket is bound (it sets
    the socket file's mode; the process keeps its own umask), and an IPv6 listener keeps the
    system's IPV6_V6ONLY default (Linux: off, so `[::]:8000` takes IPv4 clients too), unless
    `v6only` (an IPv4 address on the same port is bound beside it: v6only_binds())."""
    family, address = parse_bind(addr)
    if family == -1:
        sock = socket.socket(fileno=address)
        sock.listen(backlog)
        return sock
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_UNIX:
            try:
                if stat.S_ISSOCK(os.stat(address).st_mode):
                    os.unlink(address)
            except FileNotFoundError:
                pass
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and v6only:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if family == socket.AF_UNIX and umask is not None:
            old = os.umask(umask)  # the master binds before it starts any thread
            try:
                sock.bind(address)
            finally:
                os.umask(old)
        else:
            sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise BindError(f"cannot listen on {addr}: {exc.strerror or exc}") from None
    sock.set_inheritable(False)
    return sock


SD_LISTEN_FDS_START = 3  # the first descriptor systemd passes (sd_listen_fds)


def systemd_listen_fds(environ=os.environ) -> list[int]:
    """The listening sockets systemd passed (socket activation), as Gunicorn reads them
    (gunicorn/systemd.py): $LISTEN_FDS descriptors from 3 when $LISTEN_PID is this process;
    the variables are then removed, so that no child takes them for its own."""
    try:
        count = int(environ.get("LISTEN_FDS", 0))
        pid = int(environ.get("LISTEN_PID", 0))
    except ValueError:
        return []
    if pid != os.getpid() or count <= 0:
        return []
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        environ.pop(name, None)
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))


def sd_notify(state: str, environ=os.environ) -> None:
    """Tell systemd `state` (READY=1...) over $NOTIFY_SOCKET, as Gunicorn's arbiter does
    for a Type=notify unit; nothing without one, and a failure is ignored."""
    addr = environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr[0] == "@":  # an abstract socket
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall(state.encode())
    except OSError:
        pass


def v6only_binds(binds: list[str]) -> set[str]:
    """The IPv6 --bind addresses to listen on as IPv6 only: those whose port an IPv4 --bind
    uses too (`-b 0.0.0.0:8000 -b [::]:8000`, which a dual-stack `::` could not share).
    Alone, `[::]:8000` is dual-stack, as under Gunicorn, which never sets IPV6_V6ONLY."""
    parsed = []
    for addr in binds:
        try:
            parsed.append((addr, *parse_bind(addr)))
        except BindError:
            continue
    v4_ports = {where[1] for _, family, where in parsed if family == socket.AF_INET}
    return {addr for addr, family, where in parsed
            if family == socket.AF_INET6 and where[1] in v4_ports}


def describe(sock: socket.socket, scheme: str = "http") -> str:
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        return f"{scheme}://[{host}]:{port}"
    return f"{scheme}://{host}:{port}"

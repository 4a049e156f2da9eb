"""Listening sockets from bind addresses: HOST:PORT, [IPv6]:PORT, unix:PATH, fd://N."""

from __future__ import annotations

import os
import socket
import stat


class BindError(Exception):
    pass


def parse_bind(addr: str) -> tuple[int, object]:
    """A bind string → (family, address); `fd://N` → (-1, N)."""
    if addr.startswith("unix:"):
        path = addr[5:]
        if not path:
            raise BindError(f"--bind {addr!r}: unix: needs a path")
        return socket.AF_UNIX, path
    if addr.startswith("fd://"):
        try:
            return -1, int(addr[5:])
        except ValueError:
            raise BindError(f"--bind {addr!r}: fd:// needs a file descriptor number") from None
    if addr.startswith("["):
        host, sep, rest = addr[1:].partition("]")
        if not sep:
            raise BindError(f"--bind {addr!r}: missing ']'")
        port = rest[1:] if rest.startswith(":") else "8000"
        family = socket.AF_INET6
    else:
        host, sep, port = addr.rpartition(":")
        if not sep:
            host, port = addr, "8000"
        family = socket.AF_INET
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise BindError(f"--bind {addr!r}: expected HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N")
    host = host or "0.0.0.0"
    if family == socket.AF_INET and ":" in host:
        family = socket.AF_INET6
    if family == socket.AF_INET:
        try:
            socket.inet_aton(host)
        except OSError:
            try:
                host = socket.gethostbyname(host)
            except OSError:
                raise BindError(f"--bind {addr!r}: cannot resolve {host!r}") from None
    return family, (host, int(port))


def create_listener(addr: str, backlog: int, reuse_port: bool = False,
                    umask: int | None = None) -> socket.socket:
    """A listening socket for `addr`. As in Gunicorn: `reuse_port` sets SO_REUSEPORT on a TCP
    listener, and `umask` is the process's umask only while a unix socket is bound (it sets
    the socket file's mode; the process keeps its own umask)."""
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
            if family == socket.AF_INET6:
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


def describe(sock: socket.socket, scheme: str = "http") -> str:
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    if sock.family == socket.AF_INET6:
        return f"{scheme}://[{host}]:{port}"
    return f"{scheme}://{host}:{port}"

"""`gunicorn.socket`: the client's socket, for an app that takes the connection over.

Gunicorn puts the client's socket in every environ, and WebSocket libraries for WSGI apps use
it: Flask-Sock (through simple-websocket) sends the `101 Switching Protocols` and then speaks
WebSocket on it from the app's thread, then ends the app call with StopIteration, which
Gunicorn takes as "close the connection, answer nothing".

In berth the loop thread owns every socket: it reads ahead (pipelining) and sends for the app.
So the environ of a request with an `Upgrade` header holds an `AppSocket` (Gunicorn puts the
socket in every environ; one more key in every environ made its dict resize, 1.6% of hello
world's instructions), and the first use of it that can read or write takes the connection
from the loop (`take`): the loop forgets the connection without closing it (its bytes still
queued go out first), and from then on the socket is the app's, blocking, as Gunicorn's is.
Reading its address (getpeername and the like) takes nothing. When the app call returns (or
raises StopIteration), berth sends nothing and closes the socket, as Gunicorn does; the
request has no access log line, as in Gunicorn.

Each connection taken holds its app thread for as long as the app keeps it, as in Gunicorn's
gthread worker: it needs app threads (`--threads` 2 or more; with one, the loop thread itself
would serve it, and --timeout ends it). Over TLS the app gets a socket-like object that
encrypts and decrypts with the connection's own TLS session (`TlsAppSocket`).
"""

from __future__ import annotations

import errno
import socket
import ssl
import threading

# Read-only: these do not take the connection over (an app that logs its peer's address)
LOOK_ONLY = frozenset({"getpeername", "getsockname", "family", "type", "proto", "getsockopt",
                       "gettimeout", "timeout"})
# What the real socket under TLS cannot do for the app: read or write through the TLS session
PLAIN_ONLY = frozenset({"makefile", "recvfrom", "recvfrom_into", "recvmsg", "recvmsg_into",
                        "sendfile", "sendmsg", "sendto", "dup", "detach"})
APP_THREAD = "berth-app-"  # (the app threads' names: Responder.start)
TAKE_WAIT = 10.0  # seconds an app thread waits for the loop to let go of the connection


def not_over_tls(name: str) -> AttributeError:
    return AttributeError(f"berth: {name}() is not available on gunicorn.socket over TLS "
                          "(recv, recv_into, send and sendall are)")


def taken(conn) -> bool:
    """Whether the app took `conn`'s socket over (its AppSocket was used)."""
    app_socket = conn.app_socket
    return app_socket is not None and app_socket.sock is not None


def detach(conn) -> bytes:
    """Loop thread: `Connection.detach`, or OSError if the connection was closed meanwhile."""
    if conn.closed:
        raise OSError(errno.ENOTCONN, "berth: the client has gone")
    return conn.detach()


class TakeOver:
    """Posted to the loop by an app thread (`Loop.post`): let go of `conn` for the app."""

    __slots__ = ("conn", "done", "given_up", "lock", "rest")

    def __init__(self, conn):
        self.conn = conn
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.given_up = False  # the app thread stopped waiting (TAKE_WAIT): nothing to do
        self.rest: bytes | None = None  # None: the connection was closed meanwhile

    def run(self) -> None:
        """Loop thread."""
        with self.lock:
            if self.given_up:  # (berth goes on with the connection: its app call failed)
                return
            if not self.conn.closed:
                self.rest = self.conn.detach()
            self.done.set()

    def wait(self) -> None:
        """App thread: until the loop has run it; OSError past TAKE_WAIT, and then the loop
        will not let go of the connection later (it would be left open, never closed)."""
        if self.done.wait(TAKE_WAIT):
            return
        with self.lock:
            if not self.done.is_set():
                self.given_up = True
                raise OSError(errno.ETIMEDOUT, "berth: the loop did not let go of the "
                                               "connection")


class AppSocket:
    """environ["gunicorn.socket"] (see module): the connection's socket, taken from the loop at
    the first use that can read or write."""

    __slots__ = ("conn", "lock", "responder", "sock", "unread")

    def __init__(self, conn, responder):
        self.conn = conn
        self.responder = responder
        self.lock = threading.Lock()
        self.sock = None  # once taken: the socket (or TlsAppSocket) the app uses
        self.unread = b""  # bytes the loop had read past the request, not parsed yet

    def __getattr__(self, name: str):
        sock = self.sock
        if sock is None:
            # (a probe of the environ's values, hasattr(v, "read") or copy's __deepcopy__,
            # takes nothing: only what a socket has can take it)
            if name.startswith("_") or not hasattr(socket.socket, name):
                raise AttributeError(name)
            if name in LOOK_ONLY:
                return getattr(self.raw(), name)
            if name in PLAIN_ONLY and self.conn.sock is not self.raw():  # (TLS: takes nothing)
                raise not_over_tls(name)
            sock = self.take()
        return getattr(sock, name)

    def __repr__(self) -> str:
        return f"<berth AppSocket {'taken' if self.sock is not None else 'not taken'}>"

    def raw(self):
        sock = self.conn.sock
        return getattr(sock, "raw", sock)  # (a TlsSocket's real socket)

    def recv(self, size: int, *flags) -> bytes:
        if self.sock is None:
            self.take()
        if self.unread:
            data, self.unread = self.unread[:size], self.unread[size:]
            return data
        return self.sock.recv(size, *flags)

    def recv_into(self, buffer, nbytes: int = 0, *flags) -> int:
        """recv() into `buffer` (the bytes the loop had read first, and the TLS session's
        plaintext: the real socket's recv_into would skip both)."""
        view = memoryview(buffer).cast("B")
        data = self.recv(nbytes or len(view), *flags)
        view[:len(data)] = data
        return len(data)

    def close_taken(self) -> None:
        """The app call that took the socket has returned: berth closes it, as Gunicorn does
        (a thread of the app's still reading it gets its end)."""
        conn = self.conn
        conn.app_socket = None  # (no cycle left for the garbage collector)
        if conn.sock is not self.raw():  # TLS: as TlsConnection.close (detach left it)
            conn.sock.conn = None
        try:
            self.sock.close()
        except OSError:
            pass

    def take(self):
        """Take the connection from the loop (see module); returns the app's socket."""
        with self.lock:  # (two app threads at once: one takes it)
            if self.sock is not None:
                return self.sock
            conn = self.conn
            responder = self.responder
            rest = self._detach_here(conn, responder)
            if rest is None:  # an app thread: the loop thread lets go of it
                order = TakeOver(conn)
                responder.loop.post(order)
                order.wait()
                rest = order.rest
            if rest is None:
                raise OSError(errno.ENOTCONN, "berth: the client has gone")
            raw = self.raw()
            raw.setblocking(True)
            unfed = conn.unfed
            conn.unfed = None
            tls = conn.sock if conn.sock is not raw else None
            if rest:
                raw.sendall(rest)
            self.sock = TlsAppSocket(tls) if tls is not None else raw
            self.unread = unfed or b""  # (plaintext, over TLS too: the loop decrypted it)
            responder.log.debug("the app took the connection over (gunicorn.socket)")
            return self.sock

    @staticmethod
    def _detach_here(conn, responder) -> bytes | None:
        """On the thread that runs the loop (in the app call it makes itself): let go of the
        connection now, and return what was still to go out. None on an app thread."""
        baton = responder.baton
        if baton is None:  # --threads 1: the loop thread, or the app thread of streamed bodies
            if threading.current_thread().name.startswith(APP_THREAD):
                return None
            return detach(conn)
        with baton.lock:  # (no takeover while the loop's state changes)
            if baton.leader != threading.get_ident():
                return None
            return detach(conn)  # (in a lead, or a stream the loop thread kept: hand_over)


class TlsAppSocket:
    """The app's socket over TLS: plaintext in and out, through the connection's TLS session
    (its memory BIOs), on the blocking real socket. One lock orders the SSL object's use (a
    thread reading while another sends, as simple-websocket does); another keeps each send's
    records together on the wire."""

    def __init__(self, tls):
        self.raw = tls.raw
        self.obj = tls.obj
        self.incoming = tls.incoming
        self.outgoing = tls.outgoing
        self.lock = threading.Lock()
        self.send_lock = threading.Lock()

    def __getattr__(self, name: str):
        if name in PLAIN_ONLY:  # (on the real socket they would carry the TLS records)
            raise not_over_tls(name)
        return getattr(self.raw, name)  # fileno, close, shutdown, settimeout...

    def send(self, data, *flags) -> int:
        with self.send_lock:
            with self.lock:
                self.obj.write(data)
                out = self.outgoing.read()
            self.raw.sendall(out)
        return len(data)

    def sendall(self, data, *flags) -> None:
        self.send(data)

    def recv(self, size: int, *flags) -> bytes:
        while True:
            with self.lock:
                try:
                    data = self.obj.read(size)
                    reply = self.outgoing.read()  # (a post-handshake message: a key update)
                except ssl.SSLWantReadError:
                    data = None
                except ssl.SSLZeroReturnError:  # the client's close_notify
                    return b""
            if data is not None:
                if reply:
                    with self.send_lock:
                        self.raw.sendall(reply)
                return data
            received = self.raw.recv(max(size, 16384))
            if not received:
                return b""
            with self.lock:
                self.incoming.write(received)

"""TLS on the loop thread: `ssl.SSLObject` over memory BIOs, so that no socket operation ever
blocks and a client that stalls in its handshake holds no thread (it is closed at
--header-timeout, like any client that sends no request).

A TLS connection is a `TlsConnection` whose `sock` is a `TlsSocket`: the loop's `recv()` gets
plaintext from it (or BlockingIOError while a record is incomplete, or during the handshake);
`send()` and everything else reach the real socket, so the write-behind queue holds
ciphertext and drains as for plain HTTP. `TlsConnection.send` encrypts under the connection's
lock, which is re-entrant here: encrypting and queueing are one step, so records leave in the
order they were made, and the SSL object is only ever used by one thread at a time (OpenSSL
requires it; CPython releases the GIL inside SSL_read and SSL_write).

`make_context(cfg)` builds the context as Gunicorn does (`gunicorn/sock.py`), through the
`ssl_context(config, default_ssl_context_factory)` hook when the config file defines one.
`Contexts` makes it again when the certificate, key or CA files change on disk.
"""

from __future__ import annotations

import os
import ssl
import threading

from berth.http.parser import HttpError
from berth.worker.connection import ClientDisconnected, Connection

# Plaintext bytes encrypted at a time (`pieces`). An SSL object's outgoing memory BIO keeps
# the capacity of the most it ever held (OpenSSL grows its buffer, and reading it empty keeps
# the memory): written whole, a 8 MB response left a keep-alive connection holding 7.8 MiB
# while idle, for the rest of its life. In pieces it keeps about two pieces' worth.
TLS_PIECE = 64 * 1024


def pieces(data: bytes):
    """`data` in pieces of TLS_PIECE bytes, the last one up to twice that (a 64 KiB part of a
    stream, framed as a chunk, is a few bytes over: not a piece of its own)."""
    size = len(data)
    if size <= 2 * TLS_PIECE:
        yield data
        return
    view = memoryview(data)
    start = 0
    while start < size:
        stop = start + TLS_PIECE if size - start >= 2 * TLS_PIECE else size
        yield view[start:stop]
        start = stop


class EncryptedKey(ValueError):
    """The private key asks for a pass phrase, which berth does not prompt for."""


def _no_pass_phrase():
    # OpenSSL's default is to prompt on the terminal: a server in a container has none (and
    # Gunicorn's workers would each prompt). The ssl_context hook can give one.
    raise EncryptedKey("the private key is encrypted, and berth does not prompt for its pass "
                       "phrase: decrypt it (openssl pkey -in KEY -out PLAIN_KEY) or load it "
                       "with its pass phrase in an ssl_context hook")


def make_context(cfg) -> ssl.SSLContext:
    """The server's TLS context (raises OSError or ssl.SSLError for unreadable files,
    EncryptedKey for a key that needs a pass phrase)."""

    def default_ssl_context_factory() -> ssl.SSLContext:
        # CLIENT_AUTH: a server context; Python's defaults: TLS 1.2 at least, no compression
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=cfg.ca_certs)
        context.load_cert_chain(certfile=cfg.certfile, keyfile=cfg.keyfile,
                                password=_no_pass_phrase)
        context.verify_mode = ssl.VerifyMode(cfg.cert_reqs)
        if cfg.ciphers:
            context.set_ciphers(cfg.ciphers)
        context.set_alpn_protocols(["http/1.1"])
        return context

    hook = cfg.ssl_context
    context = hook(cfg, default_ssl_context_factory) if hook else default_ssl_context_factory()
    if not isinstance(context, ssl.SSLContext):
        raise TypeError(f"ssl_context returned {type(context).__name__}, not an ssl.SSLContext")
    return context


# Seconds between two looks at the TLS files' status (Contexts)
RELOAD_CHECK = 1.0


class Contexts:
    """A worker's TLS context, made again when certfile, keyfile or ca_certs change on disk.

    Gunicorn builds a context for every connection it accepts (`sock.ssl_wrap_socket`), so a
    certificate renewed in place (certbot, a Kubernetes Secret that cert-manager updates) is
    what the next client gets, without a restart. Making a context costs a millisecond or more
    (the key is parsed), too much for each connection: instead the files' status (inode,
    size, mtime: a Secret's mount swaps a symlink) is looked at on an accept at most once per
    RELOAD_CHECK, and the context made again, through the ssl_context hook if there is one,
    when it changed. Files that do not load (one half written, a key that does not match the
    new certificate yet) keep the old context, with one warning, and are tried again at the
    next look."""

    __slots__ = ("cfg", "context", "failed", "log", "next_look", "paths", "stamp")

    def __init__(self, cfg, log, now: float, context: ssl.SSLContext | None = None):
        self.cfg = cfg
        self.log = log
        self.paths = tuple(p for p in (cfg.certfile, cfg.keyfile, cfg.ca_certs) if p)
        self.stamp = self._stamp()  # (before the files are read: a change meanwhile is seen)
        self.context = context or make_context(cfg)
        self.failed = None  # the stamp that did not load (warned once)
        self.next_look = now + RELOAD_CHECK

    def _stamp(self) -> tuple:
        stamp = []
        for path in self.paths:
            try:
                st = os.stat(path)
            except OSError:
                stamp.append(None)
            else:
                stamp.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamp)

    def get(self, now: float) -> ssl.SSLContext:
        """The context for a connection accepted at `now` (monotonic seconds)."""
        if now < self.next_look:
            return self.context
        self.next_look = now + RELOAD_CHECK
        stamp = self._stamp()
        if stamp == self.stamp:
            return self.context
        try:
            context = make_context(self.cfg)
        except Exception as exc:  # (OSError, ssl.SSLError, the hook's own)
            if stamp != self.failed:
                self.failed = stamp
                self.log.warning("TLS files changed and do not load (%s); serving the "
                                 "previous certificate until they do", exc)
            return self.context
        self.stamp, self.failed, self.context = stamp, None, context
        self.log.info("TLS files changed: new connections get the new certificate")
        return context


class TlsSocket:
    """The socket a TLS connection shows the loop: `recv` decrypts, the rest is the real
    socket's (see the module docstring)."""

    __slots__ = ("before", "broken", "conn", "incoming", "obj", "outgoing", "raw", "send",
                 "shaken")

    def __init__(self, raw, context: ssl.SSLContext, before=None):
        self.raw = raw
        # --proxy-protocol: its header comes before the handshake, read by this
        # (berth.worker.preface.ProxyPreface.read: the bytes after it, or None)
        self.before = before
        self.send = raw.send  # ciphertext, from the write-behind queue or TlsConnection.send
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.shaken = False  # the handshake is done
        self.broken = False  # a TLS error ended it (its alert sent: no close_notify after)
        self.conn: TlsConnection | None = None

    def __getattr__(self, name: str):
        return getattr(self.raw, name)  # fileno, close, shutdown, getpeername, family...

    def recv(self, size: int) -> bytes:
        """Loop thread: the plaintext the client's bytes carry; b"" at the end (a
        close_notify, or a close without one); BlockingIOError when they carry none yet.
        A failed handshake or a broken record raises OSError (the loop closes)."""
        data = self.raw.recv(size)
        if not data:
            return b""
        conn = self.conn
        if conn.preface is not None:
            try:
                data = self.before(conn, data)
            except HttpError:  # a peer not allowed: no plaintext 403 to a TLS client
                conn.close()
                data = None
            if data is None:
                raise BlockingIOError
        plain = []
        closed = False
        with conn.lock:
            incoming = self.incoming
            incoming.write(data)
            obj = self.obj
            try:
                if not self.shaken:
                    obj.do_handshake()
                    self.shaken = True
                    conn.handshaken()
                # read while whole records may wait: a read that finds none raises, and
                # making that exception costs more than the decryption of a request
                while incoming.pending or obj.pending():
                    part = obj.read(size)
                    if not part:
                        break
                    plain.append(part)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:  # the client's close_notify
                closed = True
            except ssl.SSLError:
                self.broken = True
                raise
            finally:
                self.flush()  # handshake messages, session tickets, alerts
        if plain:
            return b"".join(plain)
        if closed:
            return b""
        raise BlockingIOError

    def flush(self) -> None:
        """Under the lock: what the SSL object wrote goes out (or into the queue)."""
        pending = self.outgoing.read()
        if pending:
            try:
                Connection.send(self.conn, pending, True)
            except ClientDisconnected:
                pass


class TlsConnection(Connection):
    __slots__ = ("environs",)

    def __init__(self, sock: TlsSocket, environ, now: float, loop, environs):
        super().__init__(sock, environ, now, loop)
        self.lock = threading.RLock()  # (see the module docstring)
        self.environs = environs  # berth.wsgi.Environs: with_keys()
        sock.conn = self

    def handshaken(self) -> None:
        """Under the lock, on the loop thread: a verified client certificate joins the
        connection's environ."""
        obj = self.sock.obj
        cert = obj.getpeercert()
        if cert:
            der = obj.getpeercert(binary_form=True)
            self.environ = self.environs.with_keys(
                self.environ, {"berth.peercert": cert,
                               "SSL_CLIENT_CERT": ssl.DER_cert_to_PEM_cert(der)}, cache=False)

    def send(self, data: bytes, inline: bool) -> None:
        with self.lock:
            if self.dead:
                raise ClientDisconnected()
            sock = self.sock
            if len(data) <= 2 * TLS_PIECE:
                sock.obj.write(data)  # into the memory BIO: all of it
                Connection.send(self, sock.outgoing.read(), inline)
                return
            for piece in pieces(data):  # (see TLS_PIECE; an app thread waits between them
                sock.obj.write(piece)  # for a slow reader, as for plain HTTP)
                Connection.send(self, sock.outgoing.read(), inline)

    def put(self, data: bytes) -> None:
        with self.lock:
            if self.dead:
                raise ClientDisconnected()
            sock = self.sock
            sock.obj.write(data)
            Connection.put(self, sock.outgoing.read())

    def send_last(self, data: bytes) -> None:
        with self.lock:  # (encrypted: written plain, the client read a protocol error)
            sock = self.sock
            try:
                sock.obj.write(data)
                sock.send(sock.outgoing.read())
            except OSError:  # (ssl.SSLError too: a handshake not done, a closed BIO)
                pass

    def close_notify(self) -> None:
        """Loop thread: the close_notify alert before the write side closes (RFC 8446 6.1),
        by which the client tells the end of the data from a cut: a body that ends with the
        connection (HTTP/1.0, or no Content-Length) has nothing else to tell it by. Only after
        a handshake, with everything queued sent and the client still there: a connection
        closed with bytes queued was cut and says so by ending without one; one that failed
        sent its alert already. The client's own close_notify is not waited for."""
        sock = self.sock
        with self.lock:
            if not sock.shaken or sock.broken or self.dead or self.out:
                return
            try:
                sock.obj.unwrap()
            except ssl.SSLError:  # (SSLWantReadError: ours is written, theirs not come)
                pass
            data = sock.outgoing.read()
        if data:
            try:
                sock.raw.send(data)  # (a few dozen bytes into an empty send buffer)
            except OSError:
                pass

    def linger(self) -> None:
        self.close_notify()
        super().linger()

    def close(self) -> None:
        if not self.closed:
            self.close_notify()
        super().close()
        self.sock.conn = None  # (its SSL object and buffers go now, not at a full collection)

    def sendfile(self, fd: int, offset: int, count: int, inline: bool) -> None:
        raise AssertionError("no sendfile under TLS: the file goes through the iterable path")

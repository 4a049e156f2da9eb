"""One client connection: its state, its write-behind queue and its sending.

Whoever runs the app sends directly while the socket accepts bytes (`send`, `sendfile`); what
the socket does not take goes to the write-behind queue, which the loop drains when the socket
is writable (`on_writable`). An app thread with more than HIGH_WATER bytes queued waits until
the loop has drained it below LOW_WATER, so a slow reader holds at most that much memory per
connection. On the loop thread (inline) nothing waits: the caller pauses its response instead
(see `berth/worker/app.py`). Real files go out with `os.sendfile`; their unsent rest is queued
as (fd, offset, count): no bytes held at all.

The loop thread, answering inline, holds each complete keep-alive response back (`put`) and
sends them all after the other requests of its wake-up (`Loop.flush`). Sending one response
between two app calls costs far more than its instructions: the kernel's network path (and,
for a client on the same machine, waking it) evicts the app's code and data from the caches
each time (measured on Flask and Django: the README's performance section). A held response
waits at most HOLD_AT_MOST plus one app call (`Responder.answer`); a stream is never held.

Threads touch a connection only under its lock: `active` (the request being answered),
`pending` (complete requests waiting their turn: pipelining), the queue and its flags. On the
paths every request takes, the lock is taken with `acquire()` and released in a `finally`, not
with `with`: callgrind counts 2,880 instructions for a `with` round of a Lock and 1,822 for
this one. Only the loop thread registers, re-arms or closes a socket; an app thread asks it to
through `loop.post(conn)`. The connection knows its loop only through four names (`LoopSide`): it
imports nothing of the worker's other rooms.

The states of a connection, and what moves it between them, are drawn in docs/design.md.
"""

from __future__ import annotations

import collections
import fcntl
import os
import select
import socket
import struct
import termios
import threading
import time
from typing import Protocol

HIGH_WATER = 256 * 1024  # write-behind bytes per connection before an app thread waits
LOW_WATER = 64 * 1024
# Connection.paused_response while no response is in progress: the loop thread answered as
# much as its client has left unread (more than HIGH_WATER queued), so the connection's next
# requests are neither read nor answered until the client has read the queue down (then
# Responder.resume goes on with them). One client pipelining requests it never reads costs
# at most that, not a response each.
WAIT_FOR_READER = (None, None, None)
EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
LINGER = 2.0  # seconds an error response's connection reads and drops before it closes
# An empty queue (`pending`, `out`) until something waits in it: an empty deque costs 760
# bytes, more than the rest of an idle connection, and most connections never queue anything.
NO_QUEUE: tuple = ()


class ClientDisconnected(Exception):
    """The client went away; nothing more can be sent on this connection."""


def unacknowledged(fd: int) -> int:
    """Bytes the kernel holds for the socket's peer that it has not acknowledged yet (sent or
    not: SIOCOUTQ). It falls as the client reads, byte for byte, where the socket turns
    writable only once half of its buffer is free: on the loopback, with a send buffer grown to
    some MiB, that took longer than a --keep-alive of 8 s for a client reading 64 KiB a second,
    which the write stall then took for one that reads nothing."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return 0


class LoopSide(Protocol):
    """What a connection asks of the loop that owns it."""

    ep: select.epoll

    holding: list[Connection]  # put() since the loop's last flush
    held_since: float  # when the first of them was put

    def post(self, conn: Connection) -> None:
        """From an app thread: ask the loop thread to look at `conn`."""

    def forget(self, conn: Connection) -> None:
        """The connection is closing: the loop drops it."""


class FileSegment:
    """Part of a real file still to be sent with os.sendfile (the fd is our own dup)."""

    __slots__ = ("fd", "offset", "remaining")

    def __init__(self, fd: int, offset: int, remaining: int):
        self.fd = fd
        self.offset = offset
        self.remaining = remaining


class Connection:
    __slots__ = (
        "app_socket",
        "response",
        "thread",
        "active",
        "closed",
        "closing",
        "cond",
        "dead",
        "environ",
        "eof",
        "events",
        "fd",
        "head_started",
        "held",
        "last_active",
        "lingering",
        "lock",
        "loop",
        "out",
        "out_size",
        "parser",
        "paused_response",
        "pending",
        "preface",
        "reading",
        "sock",
        "unfed",
        "unread",
        "unread_since",
        "want_write",
    )

    def __init__(self, sock: socket.socket, environ, now: float, loop: LoopSide):
        self.sock = sock
        self.fd = sock.fileno()
        self.environ = environ  # its layer of the environ: the addresses (berth.wsgi.Addresses)
        self.loop = loop
        self.lock = threading.Lock()
        self.cond: threading.Condition | None = None
        self.pending: collections.deque | tuple = NO_QUEUE  # a deque once one waits (line_up)
        self.active = None  # the Request (or HttpError) being answered
        self.out: collections.deque | tuple = NO_QUEUE  # a deque once bytes wait (_out_queue)
        self.out_size = 0
        self.want_write = False  # EPOLLOUT is armed (or the loop is asked to arm it)
        self.held = False  # put() queued bytes that the loop's next flush sends
        self.reading = True
        self.events = EPOLLIN
        self.closing = False  # close once the current response is out
        self.dead = False  # the peer is gone: stop writing
        self.eof = False  # the peer closed its sending side
        self.closed = False
        self.last_active = now
        self.head_started = now  # a new connection must send a head within --header-timeout
        self.lingering = 0.0  # after an error response: read and drop until then, then close
        self.paused_response: tuple | None = None  # (Response, iterable, iterator), inline
        self.response = None  # on an app thread: the Response, for the deadline's 504
        self.thread = 0  # ident of the app thread answering, for the deadline's stack
        self.parser = None  # the loop sets it: a RequestParser, or its stand-in (see park)
        self.preface: bytes | None = None  # a PROXY header's bytes so far (--proxy-protocol)
        self.unfed: bytes | None = None  # read, not parsed yet: the queue was full (Loop)
        self.unread = 0  # what its client had still to read at the last tick (reading_on)
        # since when its client has read nothing of it (0.0: nothing waits): the write stall's
        # clock, its own: bytes the client sends are no progress on what it does not read
        self.unread_since = 0.0
        self.app_socket = None  # environ["gunicorn.socket"], made at its first request

    def idle(self) -> bool:
        """A keep-alive connection between requests: nothing read, queued, sent or answered."""
        return (self.active is None and not self.pending and not self.out
                and not self.lingering and not self.head_started and self.parser.current is None
                and self.unfed is None)

    def park(self, no_parser) -> None:
        """The loop thread, for a connection idle between requests for a while: let go of
        what only a request needs (the parser, which becomes `no_parser` until bytes arrive;
        the last response; a condition and queues now empty)."""
        with self.lock:
            if self.active is not None or self.pending or self.out:
                return
            self.response = None  # on an app thread: the last Response, its environ, Request
            self.thread = 0
            self.cond = None  # no one waits on it between requests
            self.pending = self.out = NO_QUEUE
        parser, self.parser = self.parser, no_parser
        parser.close()  # freed now, not at the garbage collector's next full collection

    def line_up(self, requests) -> None:
        """Under the lock: queue complete `requests` behind the one being answered
        (pipelining); the queue is made when the first one waits."""
        if requests:
            if self.pending is NO_QUEUE:
                self.pending = collections.deque(requests)
            else:
                self.pending.extend(requests)

    def _out_queue(self) -> collections.deque:
        """Under the lock: the write-behind queue, made when the first bytes wait."""
        out = self.out
        if out is NO_QUEUE:
            out = self.out = collections.deque()
        return out

    # -- sending (any thread) ------------------------------------------------------------------

    def send(self, data: bytes, inline: bool) -> None:
        """Send now what the socket takes; queue the rest for the loop (bounded, see module)."""
        lock = self.lock
        lock.acquire()
        try:
            if self.dead:
                raise ClientDisconnected()
            if not self.out:
                try:
                    n = self.sock.send(data)
                except (BlockingIOError, InterruptedError):
                    n = 0
                except OSError:
                    self.dead = True
                    raise ClientDisconnected() from None
                if n == len(data):
                    return
                data = memoryview(data)[n:]
            self._out_queue().append(data)
            self.out_size += len(data)
            self._want_write(inline)
            if inline or self.out_size <= HIGH_WATER:
                return
            # A slow reader: the wait is the client's time, not the app's silence (--timeout)
            req = self.active
            if req is not None:
                req.progress = 0.0
            if self.cond is None:
                self.cond = threading.Condition(self.lock)
            while self.out_size > HIGH_WATER and not self.dead:
                self.cond.wait()
            if req is not None:
                req.progress = time.monotonic()
            if self.dead:
                raise ClientDisconnected()
        finally:
            lock.release()

    def put(self, data: bytes) -> None:
        """The loop thread, for a complete keep-alive response: queue it to go out when the
        loop flushes (`Loop.flush`, after the other requests of its wake-up): the sends of a
        batch then follow one another instead of alternating with the apps (see module).
        Whatever is sent after it on this connection queues behind it."""
        lock = self.lock
        lock.acquire()
        try:
            if self.dead:
                raise ClientDisconnected()
            out = self.out
            if out is NO_QUEUE:  # (_out_queue, inlined: every response held comes here)
                out = self.out = collections.deque()
            out.append(data)
            self.out_size += len(data)
            if not self.held:
                self.held = True
                loop = self.loop
                if not loop.holding:
                    loop.held_since = time.monotonic()
                loop.holding.append(self)
        finally:
            lock.release()

    def send_held(self) -> bool:
        """The loop thread's flush (`Loop.flush`), for a connection that held a response back:
        on_writable(), with the common case first, in a few lines: the queue is that one
        response, nothing waits on the connection, and the socket takes it whole. Anything
        else (or a send that fails) is on_writable()'s to sort out."""
        lock = self.lock
        lock.acquire()
        try:
            out = self.out
            if (len(out) == 1 and not self.want_write and self.cond is None
                    and self.paused_response is None and not self.closing and not self.dead):
                item = out[0]
                if type(item) is bytes:
                    try:
                        n = self.sock.send(item)
                    except OSError:  # (not taken, or gone: on_writable tries again)
                        n = 0
                    if n == len(item):
                        out.popleft()
                        self.out_size -= n
                        return False
                    if n:
                        out[0] = memoryview(item)[n:]
                        self.out_size -= n
        finally:
            lock.release()
        return self.on_writable()

    def after_flush(self) -> None:
        """The loop thread, after its flush has sent what this connection held (and resumed a
        paused response): bytes the socket did not take wait for it to turn writable. Called
        only with bytes queued (`Loop.flush`: an empty queue needs no lock, as bytes an app
        thread queues meanwhile arrange their own wake-up, see `send`)."""
        with self.lock:
            if self.out and not self.dead and not self.closed:
                self._want_write(True)

    def sendfile(self, fd: int, offset: int, count: int, inline: bool) -> None:
        """Send `count` bytes of the real file `fd` from `offset`; queue what the socket does
        not take as a FileSegment (a dup of the fd, no bytes)."""
        with self.lock:
            if self.dead:
                raise ClientDisconnected()
            if not self.out:
                sock_fd = self.fd
                while count > 0:
                    try:
                        n = os.sendfile(sock_fd, fd, offset, min(count, 1 << 30))
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:
                        self.dead = True
                        raise ClientDisconnected() from None
                    if n == 0:  # the file is shorter than it said
                        self.dead = True
                        raise ClientDisconnected()
                    offset += n
                    count -= n
                if count == 0:
                    return
            self._out_queue().append(FileSegment(os.dup(fd), offset, count))
            self.out_size += count  # (what the client has still to read, bytes or file)
            self._want_write(inline)

    def _want_write(self, inline: bool) -> None:
        if not self.want_write:
            self.want_write = True
            if inline:
                self.update_events()
            else:
                self.loop.post(self)

    def wait_for_reader(self, stall: float, heartbeat, budget: float) -> float:
        """Inline only: block until the client has read the queue down to LOW_WATER (or is
        gone, or has read nothing for `stall` seconds: then ClientDisconnected). Returns the
        seconds waited; past `budget` of them the client is let go of too (`dead`), and the
        caller says why. The loop is alive meanwhile: it calls `heartbeat()` every half
        second."""
        poller = select.poll()
        poller.register(self.fd, select.POLLOUT)
        started = waited_since = time.monotonic()
        now = started
        while self.out_size > LOW_WATER and not self.dead:
            heartbeat()
            if now - started > budget:
                self.mark_dead()
                break
            if poller.poll(500):
                before = self.out_size
                self.on_writable()
                now = time.monotonic()
                if self.out_size < before:  # (POLLOUT with no room taken is no progress)
                    waited_since = now
            else:
                now = time.monotonic()
                if self.reading_on():  # (read, yet not enough for the socket to turn writable)
                    waited_since = now
                elif now - waited_since > stall:
                    self.mark_dead()
                    raise ClientDisconnected()
        if self.dead and now - started <= budget:
            raise ClientDisconnected()
        return now - started

    # -- the loop thread -----------------------------------------------------------------------

    def on_writable(self) -> bool:
        """Drain the write-behind queue as far as the socket takes it. Returns True when a
        paused response should go on (its client read the queue down, or is gone); the loop
        then resumes it. Otherwise this re-arms or closes the connection itself."""
        self.last_active = time.monotonic()  # progress, for the stalled-reader deadline
        lock = self.lock
        lock.acquire()
        try:
            out = self.out
            sock = self.sock
            try:
                while out:
                    item = out[0]
                    if type(item) is FileSegment:
                        n = os.sendfile(self.fd, item.fd, item.offset,
                                        min(item.remaining, 1 << 20))
                        if n == 0:
                            raise ConnectionError("file ended early")
                        item.offset += n
                        item.remaining -= n
                        self.out_size -= n
                        if not item.remaining:
                            os.close(item.fd)
                            out.popleft()
                        continue
                    n = sock.send(item)
                    self.out_size -= n
                    if n == len(item):
                        out.popleft()
                    else:
                        out[0] = memoryview(item)[n:]
                        break
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.dead = True
            if self.cond is not None and (self.out_size <= LOW_WATER or self.dead):
                self.cond.notify_all()
            if self.paused_response is not None and (self.out_size <= LOW_WATER or self.dead):
                return True
            if out and not self.dead:
                return False
            self.want_write = False
            done = self.active is None and (self.closing or self.dead)
        finally:
            lock.release()
        if not done:
            if self.events & EPOLLOUT:  # (else nothing changed: a held response went at once)
                self.update_events()
        elif self.lingering and not self.dead:  # an error response is out: read, then close
            self.linger()
        else:
            self.close()
        return False

    def reading_on(self) -> bool:
        """The loop's tick, for a connection with bytes queued: whether its client has read
        some of what waits for it (the queue and the kernel's buffer) since the last tick."""
        unread = self.out_size + unacknowledged(self.fd)
        progress = unread < self.unread
        self.unread = unread
        return progress

    def mark_dead(self) -> None:
        """The client is gone (or berth gave up on it): writes fail from now on, and a
        reader of its streamed body is woken with the error."""
        with self.lock:
            self.dead = True
            if self.cond is not None:
                self.cond.notify_all()
        current = self.parser.current
        if current is not None and current.streaming:
            current.body_stream.fail(ClientDisconnected("client went away"))

    def set_reading(self, reading: bool) -> None:
        if self.reading != reading:
            self.reading = reading
            self.update_events()

    def update_events(self) -> None:
        """Re-arm epoll for what the connection waits for now (loop thread only)."""
        if self.closed:
            return
        events = (EPOLLIN if self.reading else 0) | (EPOLLOUT if self.want_write else 0)
        if events != self.events:
            ep = self.loop.ep
            try:
                ep.modify(self.fd, events)
            except FileNotFoundError:
                ep.register(self.fd, events)
            self.events = events

    def linger(self) -> None:
        """After an error response: stop sending, read and drop for a moment, then close, so
        the client reads our response instead of a reset."""
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        self.reading = True
        self.want_write = False
        self.update_events()

    def send_last(self, data: bytes) -> None:
        """An answer berth gives in the app's place just before it closes the connection (a
        503 or 504): what the socket takes at once, even once `dead`; the rest is lost."""
        try:
            self.sock.send(data)
        except OSError:
            pass

    def detach(self) -> bytes:
        """Loop thread: the app takes the socket over (gunicorn.socket, berth/worker/hijack.py).
        The loop lets go of the connection as close() does, but the socket stays open and
        berth sends nothing on it again. Returns the bytes that were still to go out (the
        responses before this one: the app's thread sends them first)."""
        rest: list[bytes] = []
        self._let_go(rest)
        return b"".join(rest)

    def close(self) -> None:
        if self.closed:
            return
        self.app_socket = None  # (it refers to this connection: freed now, not by the GC)
        self._let_go(None)
        try:
            self.sock.close()
        except OSError:
            pass

    def _let_go(self, rest: list | None) -> None:
        """close() and detach(): the loop forgets the connection (no more events or sweeps),
        the parser and the write-behind queue are let go (its bytes into `rest`, a file's
        read; or dropped, with `rest` None), and berth's sends on it fail from now on."""
        self.closed = True
        self.loop.forget(self)
        if self.parser is not None:  # freed with the connection, not by the garbage collector
            self.parser.close()
        with self.lock:
            for item in self.out:
                if type(item) is FileSegment:
                    if rest is not None:  # (a file response before it: sent whole)
                        rest.append(os.pread(item.fd, item.remaining, item.offset))
                    os.close(item.fd)
                elif rest is not None:
                    rest.append(bytes(item))
            self.out = NO_QUEUE
            self.out_size = 0
            self.response = None  # (it refers to this connection: freed now, not by the GC)
            self.dead = True
            if self.cond is not None:
                self.cond.notify_all()

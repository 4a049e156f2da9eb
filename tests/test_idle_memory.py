"""Idle connections are cheap: what a worker keeps for a connection that waits between
requests, counted with tracemalloc (allocations, not RSS: deterministic on a noisy machine)."""

from __future__ import annotations

import select
import socket
import time
import weakref

import pytest
from conftest import allocated_per_item, connect, read_response
from proto_helpers import wait_for

from berth.http.parser import NO_PARSER, RequestParser
from berth.worker.connection import Connection


class FakeLoop:
    def __init__(self):
        self.ep = select.epoll()
        self.posted = []

    def post(self, conn):
        self.posted.append(conn)

    def forget(self, conn):
        pass


def test_a_connection_makes_its_queues_only_when_something_waits():
    a, b = socket.socketpair()
    loop = FakeLoop()
    try:
        per_conn = allocated_per_item(lambda: Connection(a, {}, 0.0, loop))
        # the object, its lock: no empty deque (760 bytes each) for `pending` and `out`
        assert per_conn < 512, per_conn
        a.setblocking(False)
        loop.ep.register(a.fileno(), select.EPOLLIN)
        conn = Connection(a, {}, 0.0, loop)
        conn.line_up([])
        assert not conn.pending
        conn.line_up(["r1", "r2"])
        conn.line_up(["r3"])
        assert [conn.pending.popleft() for _ in range(3)] == ["r1", "r2", "r3"]
        data = bytes(range(256)) * 40000  # more than the socket buffers take at once
        conn.send(data, True)
        assert conn.out and conn.want_write
        received = bytearray()
        b.settimeout(5)
        for _ in range(10000):
            received += b.recv(1 << 20)
            conn.on_writable()
            if len(received) == len(data):
                break
        assert received == data and not conn.out and not conn.want_write
        conn.close()
        assert not conn.out
    finally:
        loop.ep.close()
        a.close()
        b.close()


def test_a_busy_connection_is_not_parked():
    a, b = socket.socketpair()
    loop = FakeLoop()
    try:
        conn = Connection(a, {}, 0.0, loop)
        conn.parser = parser = RequestParser()
        parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        placeholder = NO_PARSER
        conn.active = "a request"
        conn.park(placeholder)
        assert conn.parser is parser
        conn.active = None
        conn.line_up(["next"])
        conn.park(placeholder)
        assert conn.parser is parser and conn.pending
        conn.pending.popleft()
        conn.response = "the last response"
        conn.park(placeholder)
        assert conn.parser is placeholder and conn.response is None
        assert conn.pending == () and conn.out == ()
        # let go at once: the httptools parser and this one refer to each other
        gone = weakref.ref(parser)
        del parser
        assert gone() is None
    finally:
        loop.ep.close()
        a.close()
        b.close()


def get(sock, path: str) -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    status, _, body = read_response(sock)
    assert status == 200
    return body


@pytest.mark.parametrize("threads", [1, 4])
def test_idle_keep_alive_connections_hold_under_a_kib_each(berth, threads):
    """A connection that sent a request, got its response and waits costs the worker its
    Connection, socket, lock and addresses: its parser and its last response are let go, and
    freed then, not whenever the garbage collector next looks (it is off in this worker)."""
    srv = berth(["-w", "1", "--threads", str(threads), "--keep-alive", "60",
                 "--access-logfile", "none", "heap_app:app"],
                env={"PYTHONTRACEMALLOC": "1"})
    control = connect(srv.port)
    idle = []
    try:
        assert get(control, "/gc-off") == b"off"
        for _ in range(20):  # warm the caches (targets, header names) on other connections
            with connect(srv.port) as warm:
                get(warm, "/")
        before = int(get(control, "/heap"))
        n = 200
        for _ in range(n):
            sock = connect(srv.port)
            idle.append(sock)
            assert get(sock, "/") == b"ok"
        per_conn = []

        def parked():
            per_conn.append((int(get(control, "/heap")) - before) / n)
            return per_conn[-1] < 1024

        assert wait_for(parked, timeout=15, interval=0.5), per_conn
        # what was let go comes back when the next request arrives
        for sock in idle[:20]:
            assert get(sock, "/port") == str(sock.getsockname()[1]).encode()
        body = b"x" * (3 * 1024 * 1024)  # larger than --body-buffer-size: a streamed body
        idle[0].sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                        % len(body) + body)
        assert read_response(idle[0])[2] == str(len(body)).encode()
        idle[1].sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /port HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(idle[1])[2] == b"ok"
        assert read_response(idle[1])[2] == str(idle[1].getsockname()[1]).encode()
    finally:
        control.close()
        for sock in idle:
            sock.close()


def test_a_client_leaving_mid_upload_leaves_nothing_for_the_collector(berth):
    """A streamed upload whose client goes away: the app's read raises, and the request's
    objects (its environ, its wsgi.input and what that buffered) are freed by reference
    counting. The stream kept the exception it raised, whose traceback held the app's frames,
    which held the stream: one such cycle a request, each waiting for the collector (off in
    this worker)."""
    srv = berth(["-w", "1", "--threads", "4", "--access-logfile", "none", "heap_app:app"],
                env={"PYTHONTRACEMALLOC": "1"})
    control = connect(srv.port)
    try:
        assert get(control, "/gc-off") == b"off"
        head = b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (8 << 20)
        for _ in range(3):  # warm the caches on the way
            with connect(srv.port) as sock:
                sock.sendall(head + b"x" * (2 << 20))
        time.sleep(0.5)
        before = int(get(control, "/heap"))
        n = 10
        for _ in range(n):
            with connect(srv.port) as sock:
                sock.sendall(head + b"x" * (2 << 20))
        grew = []

        def freed():
            grew.append((int(get(control, "/heap")) - before) / n)
            return grew[-1] < 16 * 1024

        assert wait_for(freed, timeout=10, interval=0.5), grew
    finally:
        control.close()


def test_requests_refused_with_a_400_leave_nothing_for_the_collector(berth):
    """A request the parser refuses (here: no Host) gets its 400 and its connection closes:
    its parser and the error are freed by reference counting. The error, kept to be
    answered, held its traceback: the parser's frames, and llhttp's callback error, whose
    own chain led back to the parser."""
    srv = berth(["-w", "1", "--threads", "1", "--access-logfile", "none", "heap_app:app"],
                env={"PYTHONTRACEMALLOC": "1"})
    control = connect(srv.port)
    try:
        assert get(control, "/gc-off") == b"off"

        def refuse() -> None:
            with connect(srv.port) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n")
                assert read_response(sock)[0] == 400

        for _ in range(5):  # warm the caches on the way
            refuse()
        before = int(get(control, "/heap"))
        n = 50
        for _ in range(n):
            refuse()
        grew = []

        def freed():
            grew.append((int(get(control, "/heap")) - before) / n)
            return grew[-1] < 256

        assert wait_for(freed, timeout=5, interval=0.5), grew
    finally:
        control.close()

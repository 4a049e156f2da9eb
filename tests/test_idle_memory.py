"""Idle connections are cheap: what a worker keeps for a connection that waits between
requests, counted with tracemalloc (allocations, not RSS: deterministic on a noisy machine)."""

from __future__ import annotations

import select
import socket

from conftest import allocated_per_item

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

"""Unit tests for idle.py's client and /proc helpers, against a tiny in-test server on
127.0.0.1 (no berth, no granian).

Run with `python -m pytest benchmarks/test_idle.py`.
"""

from __future__ import annotations

import os
import resource
import socket
import threading
import time
from collections.abc import Iterator

import bench
import idle  # benchmarks/ is on sys.path: pytest prepends the test file's directory
import pytest

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"


@pytest.fixture
def keepalive_server() -> Iterator[tuple[int, list[socket.socket]]]:
    """Answers one request per connection, in two writes, then keeps the connection open."""
    listener = socket.socket()
    listener.bind((bench.HOST, 0))
    listener.listen(64)
    listener.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(5)
            data = b""
            try:
                while b"\r\n\r\n" not in data and len(data) < 4096:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(RESPONSE[:20])  # two writes: the client must reassemble
                conn.sendall(RESPONSE[20:])
            except OSError:
                conn.close()
                continue
            held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], held
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def test_open_idle_connections(keepalive_server: tuple[int, list[socket.socket]]) -> None:
    port, held = keepalive_server
    socks, errors = idle.open_idle_connections(port, 30, timeout=20, in_progress=8)
    try:
        assert errors == [] and len(socks) == 30
        assert idle.closed_or_written(socks) == 0
        held[0].close()  # the server side of one connection goes away: readable (EOF)
        for _ in range(50):
            if idle.closed_or_written(socks) == 1:
                break
            time.sleep(0.02)
        assert idle.closed_or_written(socks) == 1
    finally:
        for sock in socks:
            sock.close()


def test_open_pipelining_connections_sends_what_the_server_reads_and_reads_nothing() -> None:
    """Each connection sends up to `nbytes` of whole pipelined requests; a server that reads
    some of them and then stops reading leaves the rest unsent, and the call returns once
    nothing more goes out (not at the timeout)."""
    listener = socket.socket()
    listener.bind((bench.HOST, 0))
    listener.listen(8)
    read: list[bytes] = []

    def serve() -> None:  # reads 100 KiB from each connection, then nothing
        conns = []
        try:
            for _ in range(2):
                conn, _ = listener.accept()
                conns.append(conn)
                got = b""
                while len(got) < 100_000:
                    got += conn.recv(65536)
                read.append(got)
            time.sleep(5)
        finally:
            for conn in conns:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        started = time.monotonic()
        socks, errors = idle.open_pipelining_connections(
            listener.getsockname()[1], 2, 64 << 20, timeout=30)
        took = time.monotonic() - started
        try:
            assert errors == [] and len(socks) == 2
            assert took < 10  # stuck once the buffers were full, not sent to the end
            one = f"GET / HTTP/1.1\r\nHost: {bench.HOST}:{listener.getsockname()[1]}\r\n\r\n"
            for got in read:
                assert got.startswith(one.encode() * 100)
            # nothing was read from the server: the sockets have nothing to say yet
            assert idle.closed_or_written(socks) == 0
        finally:
            for sock in socks:
                sock.close()
    finally:
        listener.close()


def test_open_idle_connections_reports_refused() -> None:
    port = bench.free_port()  # nothing listens there
    socks, errors = idle.open_idle_connections(port, 3, timeout=10)
    assert socks == [] and len(errors) == 3 and all("connect" in e for e in errors)


def test_response_complete() -> None:
    assert idle.response_complete(RESPONSE) is True
    assert idle.response_complete(RESPONSE[:-1]) is None
    assert idle.response_complete(b"HTTP/1.1 200 OK\r\nContent-") is None
    assert idle.response_complete(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n") is False
    assert idle.response_complete(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nx") is False


def test_memory_and_sockets_of_self() -> None:
    mem = idle.Memory.of(os.getpid())
    assert mem.rss_kib > 0 and 0 < mem.uss_kib <= mem.rss_kib and mem.pss_kib > 0
    before = idle.socket_fds(os.getpid())
    with socket.socket():
        assert idle.socket_fds(os.getpid()) == before + 1


def test_raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert idle.raise_fd_limit(1) == soft  # never lowered
    if hard != resource.RLIM_INFINITY:
        with pytest.raises(bench.BenchError, match="hard limit"):
            idle.raise_fd_limit(hard + 1)


def test_kib_per_connection() -> None:
    r = idle.IdleResult(
        "berth-t4",
        [],
        1000,
        1000,
        [],
        0,
        1001,
        1.0,
        idle.Memory(100, 100, 50),
        idle.Memory(4100, 4000, 3050),
    )
    assert r.kib_per_connection("rss_kib") == pytest.approx(4.0)
    assert r.kib_per_connection("uss_kib") == pytest.approx(3.0)

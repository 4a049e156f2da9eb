"""`--timeout` measures the app's silence, never a response's age.

A streaming response (server-sent events, a generator download) may run for as long as the app
keeps producing; the deadline bounds the time to the first byte and between two parts. Time
that belongs to the client (a slow reader, a slow upload) is not the app's silence. Whatever
ends a response runs its iterable's close(). Runs `tests/apps/stream_app.py` on 127.0.0.1.
"""

from __future__ import annotations

import socket
import time

import pytest
from proto_helpers import connect, get_request, http_get, in_background, read_head, wait_for

pytestmark = pytest.mark.slow


def read_chunks(sock: socket.socket, limit: float) -> tuple[list[tuple[float, bytes]], bool, float]:
    """Read a chunked body: ([(arrival time, chunk data)], ended properly, time of the end)."""
    parts: list[tuple[float, bytes]] = []
    buf = getattr(sock, "_berth_buf", b"")
    deadline = time.monotonic() + limit
    while True:
        while b"\r\n" in buf:
            size_line, _, rest = buf.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if len(rest) < size + 2:
                break
            if size == 0:
                return parts, True, time.monotonic()
            parts.append((time.monotonic(), rest[:size]))
            buf = rest[size + 2:]
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"stream still open after {limit}s ({len(parts)} parts)")
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            return parts, False, time.monotonic()
        buf += data


@pytest.mark.parametrize("threads", ["1", "4"])
def test_stream_yielding_every_quarter_second_for_three_timeouts_arrives_whole(berth, threads):
    srv = berth(["-w", "1", "--threads", threads, "--timeout", "1", "stream_app:app"])
    with connect(srv.port, timeout=20) as sock:
        sock.sendall(get_request("/stream?n=13&every=0.25&id=a"))  # 3.25 s: over 3x --timeout
        assert b" 200 " in read_head(sock).split(b"\r\n")[0]
        parts, ended, _ = read_chunks(sock, limit=20)
    assert ended, f"the stream was cut after {len(parts)} parts:\n{srv.stderr()}"
    assert [p for _, p in parts] == [b"part %d\n" % i for i in range(13)]
    err = srv.stderr()
    assert "deadline" not in err and "silent" not in err, err
    assert "closed stream a" in err
    # the worker served on: the same process answers a next request
    assert http_get(srv.port, "/stream?n=1&every=0")[0] == 200


@pytest.mark.parametrize("threads", ["1", "4"])
def test_empty_parts_are_progress_too(berth, threads):
    # each body part the app yields counts as progress, an empty one too (it was not: 504
    # at --timeout with app threads, the worker killed with --threads 1)
    srv = berth(["-w", "1", "--threads", threads, "--timeout", "1", "stream_app:app"])
    status, _, body = http_get(srv.port, "/empty?n=12&every=0.25", timeout=20)  # 3 s
    assert (status, body) == (200, b"end\n"), srv.stderr()
    assert "deadline" not in srv.stderr() and "silent" not in srv.stderr(), srv.stderr()


@pytest.mark.parametrize("threads", ["1", "4"])
def test_write_callable_stream_is_progress_too(berth, threads):
    srv = berth(["-w", "1", "--threads", threads, "--timeout", "1", "stream_app:app"])
    status, _, body = http_get(srv.port, "/write?n=10&every=0.25", timeout=20)  # 2.5 s
    assert status == 200
    assert body == b"".join(b"part %d\n" % i for i in range(10)) + b"end\n"
    assert "deadline" not in srv.stderr() and "silent" not in srv.stderr(), srv.stderr()


def test_silent_stream_is_ended_after_timeout_and_its_close_runs(berth):
    srv = berth(["-w", "1", "--threads", "4", "--timeout", "2", "--graceful-timeout", "10",
                 "stream_app:app"])
    with connect(srv.port, timeout=20) as sock:
        sock.sendall(get_request("/silent?parts=2&every=0.1&s=5&id=b"))
        read_head(sock)
        parts, ended, t_end = read_chunks(sock, limit=15)
    assert [p for _, p in parts] == [b"part 0\n", b"part 1\n"]
    assert not ended, "a stream cut by berth must not look complete (no last chunk)"
    silent_for = t_end - parts[-1][0]
    assert 2.0 - 0.5 <= silent_for <= 2.0 + 2.0, f"ended {silent_for:.2f}s after its last part"
    assert "closed silent b" not in srv.stderr(), "close() cannot run while the app sleeps"
    # the app's blocked call returns ~5 s after its last part: then close() runs on its thread,
    # and the worker, out of service since the overrun, waits for it before it exits
    err = srv.wait_for_log("closed silent b", timeout=10)
    assert "request over its deadline" in err, err
    assert "retired: a request overran its deadline" in srv.wait_for_log("exited: retired",
                                                                          timeout=10)


def test_slow_reader_of_a_long_download_is_not_cut(berth):
    srv = berth(["-w", "1", "--threads", "4", "--timeout", "1", "stream_app:app"])
    with connect(srv.port, timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(get_request("/slowread?mb=8"))
        head = read_head(sock)
        assert b" 200 " in head.split(b"\r\n")[0]
        got = len(getattr(sock, "_berth_buf", b""))
        sock._berth_buf = b""
        t0 = time.monotonic()
        while got < 8 << 20 and time.monotonic() - t0 < 25:  # ~3 MiB/s: about 3 s
            data = sock.recv(65536)
            if not data:
                break
            got += len(data)
            time.sleep(0.02)
    assert got == 8 << 20, f"got {got} bytes:\n{srv.stderr()}"
    assert "deadline" not in srv.stderr(), srv.stderr()


def test_a_client_too_slow_for_write_on_the_loop_thread_is_let_go_of_at_timeout(berth):
    """With --threads 1 the write() callable waits on the loop thread for its client (it
    cannot be paused): a client that reads the response that slowly held every other
    connection of the worker for as long as it trickled (a whole 40 s test). Now its
    waits are bounded by --timeout, as Gunicorn's sync worker is killed then."""
    srv = berth(["-w", "1", "--threads", "1", "--timeout", "2", "stream_app:app"])
    with connect(srv.port, timeout=30) as slow:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        slow.sendall(get_request("/writeread?mb=64"))
        time.sleep(0.3)  # (the loop thread is in write() now)
        t0 = time.monotonic()
        other, box = in_background(lambda: http_get(srv.port, "/slowread?mb=0", timeout=20))
        while other.is_alive() and time.monotonic() - t0 < 15:
            if not slow.recv(16384):  # a trickle: 16 KiB every 20 ms (0.8 MiB/s)
                break
            time.sleep(0.02)
        other.join(5)
        waited = time.monotonic() - t0
    assert box.get("result", (None,))[0] == 200, box
    assert waited < 10, f"the other client waited {waited:.1f} s"
    err = srv.wait_for_log("too slowly", timeout=5)
    assert "(--timeout 2); its connection is closed" in err, err


def test_slow_upload_read_by_the_app_is_not_its_silence(berth):
    srv = berth(["-w", "1", "--threads", "4", "--timeout", "1", "--body-buffer-size", "64k",
                 "stream_app:app"])
    size = 1 << 20
    with connect(srv.port, timeout=30) as sock:
        sock.sendall(get_request("/upload", headers={"Content-Length": str(size)}))
        chunk = b"u" * (64 * 1024)
        for _ in range(size // len(chunk)):  # 16 parts over ~3 s: 3 timeouts
            sock.sendall(chunk)
            time.sleep(0.2)
        head = read_head(sock)
        assert b" 200 " in head.split(b"\r\n")[0], head + srv.stderr().encode()
    assert "deadline" not in srv.stderr(), srv.stderr()


def test_timeout_0_disables_the_deadline_and_serves(berth):
    srv = berth(["-w", "1", "--threads", "1", "--timeout", "0", "stream_app:app"])
    assert "timeout 0" in srv.stderr() or "no timeout" in srv.stderr(), srv.stderr()
    status, _, body = http_get(srv.port, "/silent?parts=1&every=0&s=1.5", timeout=10)
    assert status == 200 and body == b"part 0\nafter the silence\n"
    assert wait_for(lambda: "closed silent" in srv.stderr(), timeout=5)


def test_a_request_waiting_for_a_busy_app_thread_is_not_the_apps_silence(berth):
    """Two streams keep both app threads busy for 5 s; a third request waits in the queue for
    longer than --timeout. The app has not been called yet: its deadline has not started."""
    from proto_helpers import in_background

    srv = berth(["-w", "1", "--threads", "2", "--timeout", "2", "stream_app:app"])
    streams = [in_background(lambda i=i: http_get(srv.port, f"/stream?n=10&every=0.5&id=s{i}",
                                                   timeout=20)) for i in range(2)]
    time.sleep(0.5)  # both app threads are streaming now
    status, _, body = http_get(srv.port, "/stream?n=1&every=0&id=third", timeout=20)
    assert (status, body) == (200, b"part 0\n"), srv.stderr()
    for thread, box in streams:
        thread.join(20)
        assert box["result"][0] == 200 and box["result"][2].count(b"part") == 10, box
    assert "deadline" not in srv.stderr(), srv.stderr()

"""--body-min-rate and --body-grace, over both worker kinds: a request body that trickles in,
each pause shorter than --header-timeout, is bounded in time all the same (Apache's
mod_reqtimeout model: the grace, plus a second for every --body-min-rate bytes brought), before
the app is called (408) and while the app reads it (the read fails, the connection closes, the
app thread is free again). A body at the rate, or one the server stops reading because its
app has not read it yet, is served."""

from __future__ import annotations

import socket
import time

import pytest
from conftest import connect, read_response
from proto_helpers import HELLO, get_request, http_get, proto_args, start_module_server

# (a pause is never longer than 0.5 s: --header-timeout 2 ends none of them)
ARGS = ["-w", "1", "--header-timeout", "2", "--body-grace", "1", "--body-min-rate", "500",
        "--body-buffer-size", "4k"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory, worker_kind):
    server = start_module_server(tmp_path_factory, [*ARGS, *proto_args(worker_kind, 2)],
                                 name=f"bodyrate-{worker_kind}")
    yield server
    server.stop()


def trickle(sock: socket.socket, piece: bytes, every: float, times: int) -> float | None:
    """Send `piece` every `every` seconds, `times` times at most; the time the server took to
    close the connection (or answer it), or None if it did neither."""
    sock.settimeout(every)
    started = time.monotonic()
    for _ in range(times):
        try:
            sock.sendall(piece)
        except OSError:  # (reset: closed with bytes of ours unread)
            return time.monotonic() - started
        try:
            sock.recv(1, socket.MSG_PEEK)  # an answer, or the end
        except TimeoutError:
            continue
        except OSError:
            pass
        return time.monotonic() - started
    return None


def test_a_body_trickling_in_before_the_app_is_called_gets_408(srv):
    with connect(srv.port) as sock:
        sock.sendall(get_request("/echo", method="POST", headers={"Content-Length": "3000"}))
        took = trickle(sock, b"x" * 5, 0.25, times=32)
        assert took is not None, "a body at 20 bytes a second was never bounded"
        # the grace (1 s), a second for each 500 bytes (none), a tick or two to see it
        assert took < 4, took
        status, _, _ = read_response(sock)
    assert status == 408
    assert http_get(srv.port, "/hello")[2] == HELLO


def test_a_streamed_body_trickling_in_while_the_app_reads_it_is_cut(srv):
    """Past --body-buffer-size the app thread reads the body as it comes: the trickle ends
    there too, and the app thread is free for the next request."""
    with connect(srv.port) as sock:
        sock.sendall(get_request("/echo?rs=1024", method="POST",
                                 headers={"Content-Length": "100000"}) + b"y" * 8192)
        took = trickle(sock, b"x" * 5, 0.25, times=32)
        assert took is not None, "a streamed body at 20 bytes a second was never bounded"
        assert took < 5, took
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            pass
    assert not data.startswith(b"HTTP/1.1 200"), data[:200]
    for _ in range(3):  # (both app threads free: served at once)
        assert http_get(srv.port, "/hello", timeout=5)[2] == HELLO


def test_a_body_at_the_rate_is_served_however_long_it_takes(srv):
    body = bytes(range(256)) * 12  # 3,072 bytes over 3 s: 1,024 a second, the floor 500
    with connect(srv.port) as sock:
        sock.sendall(get_request("/echo", method="POST",
                                 headers={"Content-Length": str(len(body))}))
        for i in range(0, len(body), 256):
            time.sleep(0.25)
            sock.sendall(body[i:i + 256])
        status, _, got = read_response(sock)
    assert (status, got) == (200, body)


def test_time_the_app_had_not_read_the_body_is_not_the_clients(srv):
    """The app waits 3 s before it reads a body larger than the buffer: the server stops
    reading it meanwhile (flow control), and that time is not counted against the client,
    which sends the rest slowly but at the rate."""
    body = b"z" * 600_000  # (more than either worker kind takes before it stops reading)
    with connect(srv.port) as sock:
        sock.sendall(get_request("/echo?wait=3&rs=4096", method="POST",
                                 headers={"Content-Length": str(len(body))}))
        sock.settimeout(10)
        sent = 0
        while sent < len(body):  # as fast as the server takes it, which stops for 3 s
            sent += sock.send(body[sent:sent + 65536])
        status, _, got = read_response(sock)
    assert (status, got) == (200, body)


def test_zero_turns_the_bound_off(berth, worker_kind):
    srv = berth([*ARGS[:-4], "--body-min-rate", "0", *proto_args(worker_kind, 2)])
    with connect(srv.port) as sock:
        sock.sendall(get_request("/echo", method="POST", headers={"Content-Length": "100"}))
        assert trickle(sock, b"x" * 5, 0.25, times=12) is None  # 3 s: not bounded
        sock.sendall(b"x" * (100 - 5 * 12))
        status, _, got = read_response(sock)
    assert (status, got) == (200, b"x" * 100)


def test_a_body_the_server_has_not_asked_for_yet_is_not_timed(srv):
    """Expect: 100-continue, the client waiting for it: until the server sends it (-k asgi:
    at the app's first receive(), here after 3 s), the body not coming is the server's doing,
    neither a stall nor a slow body."""
    body = b"e" * 20_000  # (past the buffer: streamed)
    with connect(srv.port) as sock:
        sock.settimeout(10)
        sock.sendall(get_request("/echo?wait=3", method="POST",
                                 headers={"Content-Length": str(len(body)),
                                          "Expect": "100-continue"}))
        assert read_response(sock)[0] == 100
        sock.sendall(body)
        status, _, got = read_response(sock)
    assert (status, got) == (200, body)


def test_a_pipelined_body_waiting_for_its_100_continue_is_not_timed(srv):
    """The same behind an earlier response (the WSGI worker sends `100 Continue` once the
    request is next in line): the wait is not the client's, and the earlier response is
    not lost with its connection."""
    body = b"p" * 20_000
    with connect(srv.port) as sock:
        sock.settimeout(10)
        sock.sendall(get_request("/sleep?s=3")
                     + get_request("/echo", method="POST",
                                   headers={"Content-Length": str(len(body)),
                                            "Expect": "100-continue"}))
        assert read_response(sock)[0] == 200
        assert read_response(sock)[0] == 100  # (its interim response: after the 200)
        sock.sendall(body)
        status, _, got = read_response(sock)
    assert (status, got) == (200, body)


def test_a_client_that_reads_nothing_cannot_keep_its_connection_by_trickling(berth, worker_kind):
    """A client that reads none of a large response and trickles a pipelined request behind
    it: the bytes it sends are not progress on the response it does not read. It is dropped
    at the write stall (--keep-alive 2: 2 s of nothing read), as one that sends nothing is."""
    srv = berth(["-w", "1", "--keep-alive", "2", "--header-timeout", "1",
                 *proto_args(worker_kind, 2)])
    with connect(srv.port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(get_request("/big?n=50000000")
                     + get_request("/echo", method="POST", headers={"Content-Length": "1000"}))
        started = time.monotonic()
        dropped = None
        while time.monotonic() - started < 12:
            time.sleep(0.5)  # (a pause shorter than --header-timeout)
            try:
                sock.send(b"x")
            except OSError:
                dropped = time.monotonic() - started
                break
        assert dropped is not None, "a client reading nothing kept its connection by trickling"
    assert http_get(srv.port, "/hello")[2] == HELLO

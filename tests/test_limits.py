"""Request limits, malformed requests, header/body timeouts and slow clients, end to end.

The tests run against both worker kinds (the `worker_kind` fixture: -k gthread with
proto_app, -k asgi with its twin proto_asgi): the limits are berth's, not the worker's."""

from __future__ import annotations

import os
import resource
import socket
import time

import pytest
from conftest import read_response
from proto_helpers import (
    HELLO,
    connect,
    get_request,
    http_get,
    many_sockets,
    pids_children,
    proto_args,
    read_until_closed,
    send_raw,
    sockets_of,
    start_module_server,
    status_of,
    wait_for,
    worker_uss,
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory, worker_kind):
    server = start_module_server(tmp_path_factory, ["-w", "1", *proto_args(worker_kind)],
                                 name=f"limits-{worker_kind}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def small_limits(tmp_path_factory, worker_kind):
    server = start_module_server(
        tmp_path_factory,
        ["-w", "1", "--limit-request-line", "200", "--limit-request-fields", "5",
         "--limit-request-field_size", "100", *proto_args(worker_kind, 2)],
        name=f"smalllimits-{worker_kind}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def short_timeouts(tmp_path_factory, worker_kind):
    server = start_module_server(
        tmp_path_factory,
        ["-w", "1", "--header-timeout", "1", "--keep-alive", "2", *proto_args(worker_kind, 2)],
        name=f"timeouts-{worker_kind}")
    yield server
    server.stop()


def assert_rejected(port: int, raw: bytes, codes, timeout: float = 10.0) -> bytes:
    """The server answers `raw` with a status in `codes` and then closes the connection."""
    resp, closed = send_raw(port, raw, timeout=timeout)
    assert status_of(resp) in codes, resp[:300]
    assert closed, f"connection left open after {status_of(resp)}"
    return resp


# --- default limits -------------------------------------------------------------------------

def test_request_line_over_default_limit_gets_414_and_close(srv):
    assert_rejected(srv.port, get_request("/path?" + "a" * 5000), {414})


def test_request_line_under_default_limit_is_served(srv):
    status, _, body = http_get(srv.port, "/path?" + "a" * 3900)
    assert status == 200
    assert body == b"/path?" + b"a" * 3900


def test_too_many_header_fields_gets_431_and_close(srv):
    headers = {f"X-H-{i}": "v" for i in range(120)}
    assert_rejected(srv.port, get_request("/hello", headers=headers), {431, 400})


def test_fifty_header_fields_are_fine(srv):
    headers = {f"X-H-{i}": "v" for i in range(50)}
    status, _, body = http_get(srv.port, "/hello", headers=headers)
    assert (status, body) == (200, HELLO)


def test_too_large_header_field_gets_431_and_close(srv):
    assert_rejected(srv.port, get_request("/hello", headers={"X-Big": "b" * 9000}), {431, 400})


def test_large_header_field_under_limit_is_fine(srv):
    status, _, body = http_get(srv.port, "/hello", headers={"X-Big": "b" * 7000})
    assert (status, body) == (200, HELLO)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_the_limits_count_whole_lines_as_gunicorn_does(srv, method):
    """Gunicorn's --limit-request-line (4094) is the request line without its CRLF, and its
    --limit-request-field_size (8190) a field line with it: the same bytes meet the same
    answer (checked against Gunicorn 27). berth counted the target alone, and a field's
    name and value alone."""
    def line_of(total: int) -> bytes:
        target = "/path?" + "a" * (total - len(f"{method}  HTTP/1.1") - len("/path?"))
        return f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()

    assert status_of(send_raw(srv.port, line_of(4094))[0]) == 200
    assert_rejected(srv.port, line_of(4095), {414})

    def field_of(line: int) -> bytes:  # "X-A: v...v" + CRLF = `line` bytes
        value = b"v" * (line - len(b"X-A: \r\n"))
        return (f"{method} /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
                + b"X-A: " + value + b"\r\n\r\n")

    assert status_of(send_raw(srv.port, field_of(8190))[0]) == 200
    assert_rejected(srv.port, field_of(8191), {431})


# --- custom limits --------------------------------------------------------------------------

def test_custom_limit_request_line(small_limits):
    assert_rejected(small_limits.port, get_request("/path?" + "a" * 250), {414})
    status, _, body = http_get(small_limits.port, "/path?" + "a" * 100)
    assert (status, body) == (200, b"/path?" + b"a" * 100)


def test_custom_limit_request_fields(small_limits):
    headers = {f"X-H-{i}": "v" for i in range(8)}
    assert_rejected(small_limits.port, get_request("/hello", headers=headers), {431, 400})
    status, _, _ = http_get(small_limits.port, "/hello", headers={"X-A": "1"})
    assert status == 200


def test_custom_limit_request_field_size(small_limits):
    assert_rejected(small_limits.port, get_request("/hello", headers={"X-Big": "b" * 150}),
                    {431, 400})
    status, _, _ = http_get(small_limits.port, "/hello", headers={"X-Big": "b" * 40})
    assert status == 200


# --- malformed requests ---------------------------------------------------------------------

MALFORMED = {
    "garbage_line": b"GARBAGE\r\n\r\n",
    "method_only": b"GET\r\n\r\n",
    "bad_protocol_name": b"GET / FOO/1.1\r\nHost: a\r\n\r\n",
    "header_without_colon": b"GET / HTTP/1.1\r\nHost: a\r\nNoColonHere\r\n\r\n",
    "space_before_colon": b"GET / HTTP/1.1\r\nHost: a\r\nX-Foo : 1\r\n\r\n",
    "nul_in_header_value": b"GET / HTTP/1.1\r\nHost: a\r\nX-Foo: a\x00b\r\n\r\n",
    "content_length_not_a_number":
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n",
    "negative_content_length":
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    "conflicting_content_lengths":
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "bad_chunk_size":
        b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nabc\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_request_gets_400_and_close(srv, name):
    assert_rejected(srv.port, MALFORMED[name], {400})


def test_http11_without_host_gets_400(srv):
    assert_rejected(srv.port, get_request("/hello", host=None), {400})


def test_http10_without_host_is_served(srv):
    resp, _ = send_raw(srv.port, get_request("/hello", host=None, version="HTTP/1.0"))
    assert status_of(resp) == 200


def test_two_host_headers_get_400(srv):
    raw = b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    assert_rejected(srv.port, raw, {400})


def test_a_host_with_a_space_or_a_user_gets_400(srv):
    for host in (b"h evil", b"u@h"):
        assert_rejected(srv.port, b"GET /hello HTTP/1.1\r\nHost: " + host + b"\r\n\r\n", {400})


def test_transfer_encoding_gzip_chunked_gets_501(srv):
    raw = (b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
           b"3\r\nabc\r\n0\r\n\r\n")
    assert_rejected(srv.port, raw, {501})


def test_http10_with_chunked_gets_400(srv):
    raw = (b"POST /echo HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n0\r\n\r\n")
    assert_rejected(srv.port, raw, {400})


def test_http2_request_line_gets_505(srv):
    assert_rejected(srv.port, b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", {505})


def test_well_formed_version_berth_does_not_speak_gets_505(srv):
    assert_rejected(srv.port, b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", {505})


@pytest.mark.parametrize("line", [b"GET /", b"POST /upload0HTTP/1.1", b"GET / HTTP/1.1x"])
def test_malformed_request_line_gets_400_not_505(srv, line):
    resp = assert_rejected(srv.port, line + b"\r\nHost: a\r\nContent-Length: 0\r\n\r\n", {400})
    assert resp.startswith(b"HTTP/1.1 400 Bad Request\r\n"), resp[:100]


def test_content_length_with_chunked_is_not_smuggled(srv):
    # Both headers: either reject (400) or use chunked framing and close afterwards; the
    # bytes after the chunked body must never be run as a second request.
    raw = (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 30\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n0\r\n\r\n"
           b"GET /path?smuggled HTTP/1.1\r\nHost: a\r\n\r\n")
    resp, closed = send_raw(srv.port, raw)
    assert closed
    assert b"/path?smuggled" not in resp
    assert status_of(resp) in (400, 200)
    if status_of(resp) == 200:
        assert resp.endswith(b"abc")


def test_error_response_closes_even_with_pipelined_followup(srv):
    raw = b"GET / HTTP/2.0\r\nHost: a\r\n\r\n" + get_request("/path?after-error")
    resp, closed = send_raw(srv.port, raw)
    assert closed
    assert b"/path?after-error" not in resp


def test_server_healthy_after_malformed_requests(srv):
    status, _, body = http_get(srv.port, "/hello")
    assert (status, body) == (200, HELLO)


UNENDED_LINES = {
    "header": get_request("/hello").rstrip(b"\r\n") + b"\r\nX-Big: ",
    "trailer": get_request("/echo", method="POST", headers={"Transfer-Encoding": "chunked"})
    + b"1\r\nz\r\n0\r\nX-Trailer: ",
}


@pytest.mark.parametrize("where", sorted(UNENDED_LINES))
def test_a_field_sent_in_pieces_is_refused_at_the_field_limit_not_the_heads(srv, where):
    """20 clients each grow one header (or trailer) field in 200-byte pieces and never end it.
    httptools joins a field's pieces as they come (a copy of all of it at each read), and
    the field was measured only once its line ended: each grew to the head's bound (808 KiB)
    before its 431, a second of the worker's CPU each in 100-byte reads, and a trailer has
    no deadline on the whole. Now a line is refused once it passes --limit-request-field_size
    (8190): each client has its 431 before it has sent 64 KiB."""
    (worker,) = pids_children(srv.pid)
    piece = b"v" * 200
    socks = [connect(srv.port) for _ in range(20)]
    sent = [0] * len(socks)
    answers: dict[int, bytes] = {}
    cpu0 = _cpu_seconds(worker)
    try:
        for sock in socks:
            sock.sendall(UNENDED_LINES[where])
            sock.setblocking(False)
        for _ in range(64 * 1024 // len(piece)):
            for i, sock in enumerate(socks):
                if i not in answers:
                    try:
                        sent[i] += sock.send(piece)
                    except (BlockingIOError, ConnectionError):
                        pass
            time.sleep(0.002)
            for i, sock in enumerate(socks):
                if i not in answers:
                    try:
                        answers[i] = sock.recv(4096) or b"closed"
                    except BlockingIOError:
                        pass
                    except ConnectionError:
                        answers[i] = b"reset"
            if len(answers) == len(socks):
                break
        cpu = _cpu_seconds(worker) - cpu0
    finally:
        for sock in socks:
            sock.close()
    print(f"{where}: answered after {min(sent)}..{max(sent)} bytes; worker CPU {cpu:.2f} s")
    assert len(answers) == len(socks), f"{len(socks) - len(answers)} of {len(socks)} clients " \
        f"unanswered after 64 KiB of one field each"
    assert {status_of(a) for a in answers.values()} == {431}, answers
    assert cpu < 1.0, f"the worker spent {cpu:.2f} s of CPU on 20 refused fields"


# --- header and body timeouts ---------------------------------------------------------------

def _closed_within(sock: socket.socket, timeout: float) -> tuple[bytes, bool, float]:
    t0 = time.monotonic()
    data, closed = read_until_closed(sock, timeout=timeout)
    return data, closed, time.monotonic() - t0


def test_unfinished_head_closed_after_header_timeout(short_timeouts):
    with connect(short_timeouts.port) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: a\r\n")
        data, closed, elapsed = _closed_within(sock, 8)
    assert closed, "connection with an unfinished head still open after 8 s"
    assert elapsed >= 0.5
    assert data == b"" or status_of(data) == 408, data[:200]


def test_drip_fed_head_closed_after_header_timeout(short_timeouts):
    # The deadline covers the whole head: trickling bytes must not extend it.
    head = get_request("/hello", headers={f"X-Drip-{i}": "x" * 10 for i in range(40)})
    closed = False
    t0 = time.monotonic()
    with connect(short_timeouts.port, timeout=1) as sock:
        for i in range(len(head) - 4):
            if time.monotonic() - t0 > 8:
                break
            try:
                sock.sendall(head[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sock.settimeout(0.2)
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except ConnectionResetError:
                closed = True
                break
            if data == b"" or status_of(data) == 408:
                closed = True
                break
    elapsed = time.monotonic() - t0
    assert closed, "drip-fed head still accepted after 8 s with --header-timeout 1"
    assert elapsed < 8


def test_idle_new_connection_closed_after_header_timeout(short_timeouts):
    with connect(short_timeouts.port) as sock:
        data, closed, elapsed = _closed_within(sock, 8)
    assert closed
    assert data == b"" or status_of(data) == 408
    # closed by --header-timeout 1 (ticks of 0.5 s), not by --keep-alive 2: a new connection
    # owes its first head as any other
    assert elapsed < 1.9, f"a silent new connection was closed after {elapsed:.2f} s"


def test_request_split_across_writes_within_timeout_is_served(short_timeouts):
    req = get_request("/hello")
    with connect(short_timeouts.port) as sock:
        sock.sendall(req[:10])
        time.sleep(0.3)
        sock.sendall(req[10:])
        status, _, body = read_response(sock)
    assert (status, body) == (200, HELLO)


def test_body_sent_slowly_without_a_long_pause_is_served(short_timeouts):
    # --header-timeout bounds a body's longest pause, not its whole upload
    body = b"0123456789"
    with connect(short_timeouts.port) as sock:
        sock.sendall(get_request("/echo", method="POST",
                                 headers={"Content-Length": str(len(body))}))
        for i in range(len(body)):  # 2 s in all, a byte every 0.2 s
            time.sleep(0.2)
            sock.sendall(body[i:i + 1])
        status, _, got = read_response(sock)
    assert (status, got) == (200, body)


def test_chunked_body_without_final_chunk_never_reaches_app(short_timeouts):
    marker = short_timeouts.markers / "record-incomplete-chunked"
    head = get_request("/record?tag=incomplete-chunked", method="POST",
                       headers={"Transfer-Encoding": "chunked"})
    with connect(short_timeouts.port) as sock:
        sock.sendall(head + b"5\r\nhello\r\n")
        data, closed, _elapsed = _closed_within(sock, 20)
    assert closed, "incomplete chunked body: connection still open after 20 s"
    assert status_of(data) in (None, 400, 408), data[:200]
    assert not marker.exists(), "the app was called with an incomplete chunked body"


def test_short_content_length_body_never_reaches_app(short_timeouts):
    marker = short_timeouts.markers / "record-incomplete-cl"
    head = get_request("/record?tag=incomplete-cl", method="POST",
                       headers={"Content-Length": "100"})
    with connect(short_timeouts.port) as sock:
        sock.sendall(head + b"0123456789")
        data, closed, _elapsed = _closed_within(sock, 20)
    assert closed, "incomplete body: connection still open after 20 s"
    assert status_of(data) in (None, 400, 408), data[:200]
    assert not marker.exists(), "the app was called with an incomplete body"


def test_idle_keep_alive_connection_closed_after_keep_alive_timeout(short_timeouts):
    with connect(short_timeouts.port) as sock:
        sock.sendall(get_request("/hello"))
        assert read_response(sock)[0] == 200
        data, closed, elapsed = _closed_within(sock, 10)
    assert closed, "--keep-alive 2: idle connection still open after 10 s"
    assert data == b""
    assert elapsed >= 0.5


@pytest.mark.parametrize("threads", ["1", "4"])
def test_the_keep_alive_window_starts_when_a_slow_response_is_out(berth, threads):
    """--keep-alive 2 and a response that took 1.5 s: the connection stays open 2 s from the
    response's end, not from the request's arrival (the client's next request, 1.2 s after
    the response, is answered: closing under it would lose it)."""
    srv = berth(["-w", "1", "--threads", threads, "--keep-alive", "2",
                 "--access-logfile", "none", "proto_app:app"])
    with connect(srv.port) as sock:
        for _ in range(2):
            sock.sendall(get_request("/sleep?s=1.5"))
            assert read_response(sock)[0] == 200
            time.sleep(1.2)
            sock.sendall(get_request("/hello"))
            assert read_response(sock)[0] == 200


def test_the_keep_alive_window_of_a_held_response_starts_when_it_is_flushed(berth):
    """--threads 1: A's response is held for the loop's flush (Connection.put) while B's
    request, read in the same wake-up, runs 1.5 s in the app; A's keep-alive window starts
    when its response goes out, after B's call, not when it was held (a review found it
    closed 0.5 s after A had its response)."""
    srv = berth(["-w", "1", "--threads", "1", "--keep-alive", "2", "--access-logfile", "none",
                 "proto_app:app"])
    with connect(srv.port) as c, connect(srv.port) as a, connect(srv.port) as b:
        c.sendall(get_request("/sleep?s=0.3"))  # keeps the loop busy while A and B arrive
        time.sleep(0.1)
        a.sendall(get_request("/hello"))
        time.sleep(0.02)
        b.sendall(get_request("/sleep?s=1.5"))
        assert read_response(c)[0] == 200
        assert read_response(a)[0] == 200
        answered = time.monotonic()
        assert read_response(b)[0] == 200
        time.sleep(max(0.0, 1.2 - (time.monotonic() - answered)))
        a.sendall(get_request("/hello"))
        assert read_response(a)[0] == 200


def test_idle_keep_alive_connection_stays_open_by_default(srv):
    with connect(srv.port) as sock:
        sock.sendall(get_request("/hello"))
        assert read_response(sock)[0] == 200
        time.sleep(3)
        sock.sendall(get_request("/path?still-open"))
        status, _, body = read_response(sock)
    assert (status, body) == (200, b"/path?still-open")


def test_clients_that_read_nothing_of_their_responses_are_let_go_at_the_write_stall(
        berth, worker_kind):
    """--keep-alive 2: 10 clients with a small receive window ask for 8 MB, sent as one body
    (a list: one ASGI message) or as a stream, and read nothing. Each is dropped once it has
    read nothing for the stall (--keep-alive, at least --header-timeout), and the bytes that
    waited for it go with its transport. Under -k asgi they were held for ever (53 MiB for
    the 10): asyncio's transport, closed at the keep-alive, waits to send what it holds, and
    a stream awaited its drain."""
    srv = berth(["-w", "1", "--keep-alive", "2", "--header-timeout", "2",
                 "--access-logfile", "none", *proto_args(worker_kind)])
    (worker,) = pids_children(srv.pid)
    own = sockets_of(worker)
    assert http_get(srv.port, "/hello")[2] == HELLO
    wait_for(lambda: sockets_of(worker) <= own)  # (its socket closes as the client reads EOF)
    before = worker_uss(worker)
    with many_sockets() as socks:
        for i in range(10):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # (before connect)
            sock.settimeout(5)
            sock.connect(("127.0.0.1", srv.port))
            socks.append(sock)
            sock.sendall(get_request("/big?n=8000000" + ("&list=1" if i % 2 else "")))
        assert wait_for(lambda: sockets_of(worker) - own >= 10, timeout=5)
        held = worker_uss(worker) - before
        t0 = time.monotonic()
        gone = wait_for(lambda: sockets_of(worker) <= own, timeout=10, interval=0.1)
        took = time.monotonic() - t0
        left = sockets_of(worker) - own
        after = worker_uss(worker) - before
    print(f"{worker_kind}: held {held >> 20} MiB, dropped after {took:.1f} s, then "
          f"{after >> 20} MiB")
    assert gone, f"{left} of 10 clients that read nothing still connected after 10 s"
    assert http_get(srv.port, "/hello")[2] == HELLO


def test_a_client_reading_slowly_but_steadily_is_not_taken_for_one_that_reads_nothing(
        berth, worker_kind):
    """--keep-alive 2: a client reads a 100 MB stream at 128 KiB a second, for three times
    the stall. The socket turns writable only once half of its send buffer is free, and on
    the loopback that buffer grows to MiBs: the write stall, which counted only that as the
    client's progress, dropped it after 2 s as a client that reads nothing (and the client
    went on reading what the kernel held, none the wiser for a while). Now what the client
    has still to read (the queue, and the kernel's unacknowledged bytes) is what counts."""
    srv = berth(["-w", "1", "--keep-alive", "2", "--header-timeout", "2",
                 "--access-logfile", "none", *proto_args(worker_kind)])
    (worker,) = pids_children(srv.pid)
    own = sockets_of(worker)
    with socket.socket() as sock:  # (its receive buffer grows as the kernel likes)
        sock.settimeout(5)
        sock.connect(("127.0.0.1", srv.port))
        sock.sendall(get_request("/big?n=100000000"))
        got = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < 6.0:
            time.sleep(0.25)
            got += len(sock.recv(32 * 1024))
            connected = sockets_of(worker) - own
            assert connected == 1, (f"dropped after {time.monotonic() - t0:.1f} s of reading, "
                                    f"{got} bytes read")
    print(f"{worker_kind}: read {got} bytes in 6 s, still connected")


# --- slow clients ---------------------------------------------------------------------------

@pytest.fixture
def single_thread(berth, worker_kind):
    return berth(["-w", "1", *proto_args(worker_kind, 1)])


def _timed_get(port, path="/hello", timeout=10):
    t0 = time.monotonic()
    status, _, body = http_get(port, path, timeout=timeout)
    return status, body, time.monotonic() - t0


def test_fifty_half_sent_request_lines_do_not_block_a_normal_client(single_thread):
    with many_sockets() as socks:
        for _i in range(50):
            s = connect(single_thread.port, timeout=5)
            socks.append(s)
            s.sendall(b"GET /hel")
        time.sleep(0.3)
        status, body, elapsed = _timed_get(single_thread.port)
        assert (status, body) == (200, HELLO)
        assert elapsed < 2.0, f"normal client waited {elapsed:.2f}s behind 50 slow clients"


def test_idle_keep_alive_connections_do_not_block_a_new_client(single_thread):
    with many_sockets() as socks:
        for _i in range(20):
            s = connect(single_thread.port, timeout=5)
            socks.append(s)
            s.sendall(get_request("/hello"))
            assert read_response(s)[0] == 200
        status, body, elapsed = _timed_get(single_thread.port)
        assert (status, body) == (200, HELLO)
        assert elapsed < 2.0, f"new client waited {elapsed:.2f}s behind idle keep-alive conns"
        # and the idle ones are still usable
        socks[0].sendall(get_request("/path?idle-0"))
        assert read_response(socks[0])[2] == b"/path?idle-0"


def test_slow_uploaders_below_body_buffer_do_not_block_a_normal_client(single_thread):
    with many_sockets() as socks:
        for _i in range(20):
            s = connect(single_thread.port, timeout=5)
            socks.append(s)
            s.sendall(get_request("/echo", method="POST", headers={"Content-Length": "1000"})
                      + b"x" * 10)
        time.sleep(0.3)
        status, body, elapsed = _timed_get(single_thread.port)
        assert (status, body) == (200, HELLO)
        assert elapsed < 2.0, f"normal client waited {elapsed:.2f}s behind 20 slow uploads"


def send_on_each(port: int, socks: list, clients: int, wire: bytes, piece: int,
                 seconds: float = 3.0) -> list[int]:
    """Open `clients` connections (into `socks`), and for `seconds` have each send `wire`, a
    `piece` at a time, as far as the worker and the kernel take it; the bytes each sent."""
    for _ in range(clients):
        sock = connect(port)
        sock.setblocking(False)
        socks.append(sock)
    sent = [0] * len(socks)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for i, sock in enumerate(socks):
            try:
                sent[i] += sock.send(wire[sent[i]:sent[i] + piece])
            except BlockingIOError:
                pass
        time.sleep(0.01)
    return sent


def test_a_streamed_body_of_tiny_chunks_waiting_for_its_app_costs_about_its_size(
        berth, worker_kind):
    """10 clients send chunked bodies of 2-byte chunks, past --body-buffer-size (64 KiB), to
    an app that does not read them yet (/sleep): what waits for the app is bounded (the WSGI
    worker's wsgi.input, -k asgi's 256 KiB before reading pauses), and costs about its size.
    Under -k asgi each chunk waited as a bytes object of its own (35 bytes and a deque slot
    for 2 bytes of body): 5.9 MiB a connection."""
    srv = berth(["-w", "1", "--body-buffer-size", "65536", "--access-logfile", "none",
                 *proto_args(worker_kind)])
    (worker,) = pids_children(srv.pid)
    wire = get_request("/sleep?s=4", method="POST",
                       headers={"Transfer-Encoding": "chunked"}) + b"2\r\nzz\r\n" * 400_000
    before = worker_uss(worker)
    with many_sockets() as socks:
        sent = send_on_each(srv.port, socks, 10, wire, 65536)
        grew = worker_uss(worker) - before
    print(f"{worker_kind}: {grew >> 10} KiB for 10 bodies of 2-byte chunks, "
          f"{min(sent) >> 10} KiB or more of wire each")
    assert min(sent) > 3 * 320 * 1024, "the clients sent less than the bound to test it"
    assert grew < 24 << 20, f"{grew >> 20} MiB for 10 bodies waiting for their app"


def test_uploads_pipelined_to_a_slow_app_hold_one_body_buffer_a_connection(berth, worker_kind):
    """10 clients each pipeline 1 MB uploads to a slow app (/sleep) and read nothing: the
    requests waiting their turn on a connection hold at most one --body-buffer-size of
    bodies (and 16 requests), as the WSGI loop always had it. -k asgi bounded them by their
    count alone: 17 bodies, 18 MiB a connection."""
    srv = berth(["-w", "1", "--access-logfile", "none", *proto_args(worker_kind)])
    (worker,) = pids_children(srv.pid)
    body = b"b" * 1_000_000
    wire = get_request("/sleep?s=1", method="POST", body=body) * 30
    before = worker_uss(worker)
    with many_sockets() as socks:
        sent = send_on_each(srv.port, socks, 10, wire, 1 << 20)
        grew = worker_uss(worker) - before
    print(f"{worker_kind}: {grew >> 20} MiB for 10 connections, {min(sent) >> 20} MiB or more "
          f"sent on each")
    assert min(sent) > 3 << 20, "the clients sent too little to test the bound"
    assert grew < 80 << 20, f"{grew >> 20} MiB for 10 connections' waiting uploads"


# -- the file-descriptor limit ----------------------------------------------------------------

def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
def test_at_the_file_descriptor_limit_berth_degrades_instead_of_spinning(berth, worker_kind):
    """`ulimit -n 256`, one worker, 400 clients that each send one keep-alive request and
    stay idle: accept() fails with EMFILE. The worker sheds its oldest idle connections and
    backs off; a new client is answered within 2 s, the worker stays under half a CPU, and
    the error log does not flood."""
    from proto_helpers import pids_children

    srv = berth(["-w", "1", "--access-logfile", "none", *proto_args(worker_kind, 1)])
    (worker,) = pids_children(srv.pid)
    for pid in (srv.pid, worker):  # as `ulimit -n 256` would have set it before the start
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (256, 256))
    request = get_request("/")
    with many_sockets() as socks:
        for _ in range(400):
            s = socket.socket()
            s.settimeout(5)
            s.connect(("127.0.0.1", srv.port))  # the kernel queue takes what is not accepted
            s.sendall(request)
            socks.append(s)
        time.sleep(1.0)  # the worker is at its limit now
        t0 = time.monotonic()
        status, _, body = http_get(srv.port, "/", timeout=5)
        answered_in = time.monotonic() - t0
        assert (status, body) == (200, HELLO)
        assert answered_in < 2.0, f"a new client waited {answered_in:.2f} s"
        cpu0, w0 = _cpu_seconds(worker), time.monotonic()
        time.sleep(5)
        share = (_cpu_seconds(worker) - cpu0) / (time.monotonic() - w0)
        assert share < 0.5, f"the worker used {share:.0%} of a CPU at its fd limit"
    err = srv.stderr()
    print(f"answered in {answered_in:.2f} s, worker CPU {share:.0%}, {len(err.splitlines())} "
          "error-log lines")
    assert "Too many open files" in err, err[-2000:]
    assert len(err.splitlines()) < 200, f"{len(err.splitlines())} lines in the error log"

"""End-to-end HTTP/1.1 behaviour of berth through a real process and real sockets on 127.0.0.1.

Every test runs against both worker kinds (the `worker_kind` fixture: the WSGI app proto_app
on -k gthread, its ASGI twin proto_asgi on -k asgi): the HTTP rules are berth's, not the
worker's, and both must score the same."""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import re
import socket
import time
from datetime import datetime, timezone

import pytest
from conftest import read_response
from proto_helpers import (
    HELLO,
    BufferedSocket,
    big_sha256,
    connect,
    get_request,
    http_get,
    pids_children,
    proto_args,
    read_head,
    read_until_closed,
    send_raw,
    start_module_server,
    status_of,
    wait_for,
    worker_uss,
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory, worker_kind):
    server = start_module_server(tmp_path_factory, ["-w", "1", *proto_args(worker_kind)],
                                 name=f"http-{worker_kind}")
    yield server
    server.stop()


def test_hello_returns_200_with_body(srv):
    status, headers, body = http_get(srv.port, "/hello")
    assert status == 200
    assert body == HELLO
    assert headers["content-length"] == str(len(HELLO))
    assert headers["content-type"] == "text/plain"


def test_keep_alive_serves_100_requests_on_one_connection(srv):
    with connect(srv.port) as sock:
        for i in range(100):
            sock.sendall(get_request(f"/path?i={i}"))
            status, headers, body = read_response(sock)
            assert status == 200, i
            assert body == f"/path?i={i}".encode()
            assert headers.get("connection", "").lower() != "close", i


def test_pipelined_requests_answered_in_order(srv):
    reqs = (get_request("/path?first")
            + get_request("/echo", method="POST", body=b"second-body")
            + get_request("/path?third"))
    with connect(srv.port) as sock:
        sock.sendall(reqs)
        got = [read_response(sock) for _ in range(3)]
    assert [g[0] for g in got] == [200, 200, 200]
    assert got[0][2] == b"/path?first"
    assert got[1][2] == b"second-body"
    assert got[2][2] == b"/path?third"


def test_pipelined_connection_close_stops_after_that_response(srv):
    reqs = (get_request("/path?one") + get_request("/path?two", headers={"Connection": "close"})
            + get_request("/path?three"))
    with connect(srv.port) as sock:
        sock.sendall(reqs)
        s1, _, b1 = read_response(sock)
        s2, h2, b2 = read_response(sock)
        rest, closed = read_until_closed(sock, timeout=5)
    assert (s1, b1, s2, b2) == (200, b"/path?one", 200, b"/path?two")
    assert h2.get("connection", "").lower() == "close"
    assert closed
    assert rest == b"", "a request after `Connection: close` was answered"


@pytest.mark.parametrize("after", [False, True], ids=["pipelined", "sent-after-the-500"])
@pytest.mark.parametrize("path", ["/raise-before", "/str-body?how=yield", "/str-body?how=write",
                                  "/str-body?how=list"])
def test_nothing_is_answered_after_a_500_with_connection_close(srv, path, after):
    """RFC 9112 9.6: after a response with `Connection: close`, no further request on that
    connection is processed. With app threads the loop could read the next request (llhttp:
    data after `Connection: close`, a parse error) once the 500 was out, and answer 400."""
    first = get_request(path, headers={"Connection": "close"})
    second = get_request("/hello")
    extra = []
    for _ in range(50):
        with connect(srv.port, timeout=5) as sock:
            if after:
                sock.sendall(first)
                status, headers, _ = read_response(sock)
                try:
                    sock.sendall(second)
                except OSError:
                    pass
            else:
                sock.sendall(first + second)
                status, headers, _ = read_response(sock)
            assert status == 500 and headers.get("connection", "").lower() == "close"
            rest, _ = read_until_closed(sock, timeout=5)
            if rest:
                extra.append(rest[:60])
    assert not extra, f"{len(extra)} of 50 connections answered again: {extra[:3]}"


def test_unread_request_body_does_not_break_next_pipelined_request(srv):
    # /hello ignores its body; the server must skip it before parsing the next request.
    body = b"X" * 5000 + b"GET /path?smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
    reqs = get_request("/hello", method="POST", body=body) + get_request("/path?next")
    with connect(srv.port) as sock:
        sock.sendall(reqs)
        s1, _, b1 = read_response(sock)
        s2, _, b2 = read_response(sock)
    assert (s1, b1) == (200, HELLO)
    assert (s2, b2) == (200, b"/path?next")


H2C = {"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c",
       "HTTP2-Settings": "AAMAAABkAAQAAP__"}


@pytest.mark.parametrize("framing", ["content-length", "chunked", "body-in-a-later-read"])
def test_an_upgrade_the_server_does_not_take_keeps_the_body_and_the_connection(srv, framing):
    """`curl --http2 -d ...` asks for h2c. RFC 9110 7.8: a server that ignores Upgrade processes
    the request as plain HTTP/1.1, body included (llhttp stops at such a request's head as if
    it had none), and the pipelined request after it is parsed where that body ends."""
    if framing == "chunked":
        head = get_request("/echo", method="POST",
                           headers={**H2C, "Transfer-Encoding": "chunked"})
        body = b"5\r\nhello\r\n6\r\n=world\r\n0\r\n\r\n"
    else:
        head = get_request("/echo", method="POST", headers={**H2C, "Content-Length": "11"})
        body = b"hello=world"
    with connect(srv.port) as sock:
        if framing == "body-in-a-later-read":
            sock.sendall(head)
            time.sleep(0.05)
            head = b""
        sock.sendall(head + body + get_request("/path?next"))
        s1, h1, b1 = read_response(sock)
        s2, _, b2 = read_response(sock)
    assert (s1, b1, h1["x-content-length"]) == (200, b"hello=world", "11")
    assert h1.get("connection", "").lower() != "close"
    assert (s2, b2) == (200, b"/path?next")


@pytest.mark.wsgi_only("the ASGI worker switches to the WebSocket protocol (test_websocket.py)")
def test_a_websocket_handshake_to_a_wsgi_app_is_served_as_plain_http(srv):
    """The WSGI worker never switches protocols: the handshake is a plain GET (the app cannot
    answer 101), and the request after it on the connection is parsed and served."""
    handshake = get_request("/path?ws", headers={
        "Connection": "upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
    with connect(srv.port) as sock:
        sock.sendall(handshake + get_request("/path?next"))
        s1, h1, b1 = read_response(sock)
        s2, _, b2 = read_response(sock)
    assert (s1, b1, s2, b2) == (200, b"/path?ws", 200, b"/path?next")
    assert h1.get("connection", "").lower() != "close"


def test_chunked_request_body_is_dechunked_for_app(srv):
    chunks = [b"hello ", b"chunked ", b"world" * 100, b"!"]
    payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    req = get_request("/echo", method="POST",
                      headers={"Transfer-Encoding": "chunked", "Content-Type": "text/plain"},
                      body=payload)
    with connect(srv.port) as sock:
        sock.sendall(req)
        status, headers, body = read_response(sock)
        expected = b"".join(chunks)
        assert status == 200
        assert body == expected
        assert headers["x-content-length"] == str(len(expected))
        # the connection stays usable after a chunked body
        sock.sendall(get_request("/path?after-chunked"))
        assert read_response(sock)[2] == b"/path?after-chunked"


def test_chunked_request_with_extensions_and_trailers(srv):
    payload = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    req = get_request("/echo", method="POST", headers={"Transfer-Encoding": "chunked"},
                      body=payload)
    with connect(srv.port) as sock:
        sock.sendall(req + get_request("/path?next"))
        status, headers, body = read_response(sock)
        assert (status, body) == (200, b"hello world")
        assert headers["x-content-length"] == "11"
        assert read_response(sock)[2] == b"/path?next"


def test_chunked_body_sent_in_small_pieces(srv):
    chunks = [os.urandom(n) for n in (1, 100, 4096, 3)]
    payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    req = get_request("/echo", method="POST", headers={"Transfer-Encoding": "chunked"},
                      body=payload)
    with connect(srv.port) as sock:
        for i in range(0, len(req), 7):
            sock.sendall(req[i:i + 7])
        status, _, body = read_response(sock)
    assert status == 200
    assert body == b"".join(chunks)


def test_expect_100_continue_upload(srv):
    body = os.urandom(100_000)
    head = get_request("/echo", method="POST", headers={
        "Content-Length": str(len(body)), "Expect": "100-continue"})
    with connect(srv.port, timeout=5) as sock:
        sock.sendall(head)  # headers only
        interim = read_head(sock, timeout=5)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        sock.sendall(body)
        status, headers, got = read_response(sock)
    assert status == 200
    assert got == body
    assert headers["x-content-length"] == str(len(body))


def test_expect_100_continue_with_chunked_upload(srv):
    head = get_request("/echo", method="POST", headers={
        "Transfer-Encoding": "chunked", "Expect": "100-continue"})
    with connect(srv.port, timeout=5) as sock:
        sock.sendall(head)
        interim = read_head(sock, timeout=5)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        sock.sendall(b"4\r\nabcd\r\n0\r\n\r\n")
        status, _headers, got = read_response(sock)
    assert (status, got) == (200, b"abcd")


def test_head_has_same_headers_and_no_body(srv):
    _, get_headers, _ = http_get(srv.port, "/hello")
    with connect(srv.port) as sock:
        sock.sendall(get_request("/hello", method="HEAD"))
        head = read_head(sock)
        status = status_of(head)
        # no body bytes: the next response on this connection must follow immediately
        sock.sendall(get_request("/path?after-head"))
        s2, _, b2 = read_response(sock)
    assert status == 200
    lines = head.decode("latin-1").split("\r\n")
    headers = {ln.split(":", 1)[0].lower(): ln.split(":", 1)[1].strip()
               for ln in lines[1:] if ":" in ln}
    assert headers["content-length"] == get_headers["content-length"] == str(len(HELLO))
    assert headers["content-type"] == get_headers["content-type"]
    assert (s2, b2) == (200, b"/path?after-head")


def test_head_of_streaming_response_sends_no_body(srv):
    with connect(srv.port) as sock:
        sock.sendall(get_request("/stream?n=3", method="HEAD"))
        head = read_head(sock)
        assert status_of(head) == 200
        sock.sendall(get_request("/path?after-head-stream"))
        s2, _, b2 = read_response(sock)
    assert (s2, b2) == (200, b"/path?after-head-stream")


def _expected_stream(n):
    return b"".join(f"part-{i}\n".encode() for i in range(n))


def test_generator_response_is_chunked_on_http11(srv):
    with connect(srv.port) as sock:
        sock.sendall(get_request("/stream?n=5"))
        status, headers, body = read_response(sock)
        assert status == 200
        assert headers.get("transfer-encoding", "").lower() == "chunked"
        assert "content-length" not in headers
        assert body == _expected_stream(5)
        # the connection stays open after the last chunk
        sock.sendall(get_request("/path?after-stream"))
        assert read_response(sock)[2] == b"/path?after-stream"


def test_generator_response_is_close_delimited_on_http10(srv):
    with connect(srv.port) as sock:
        sock.sendall(get_request("/stream?n=5", version="HTTP/1.0"))
        raw, closed = read_until_closed(sock, timeout=10)
    assert closed, "server must close an HTTP/1.0 close-delimited response"
    head, _, body = raw.partition(b"\r\n\r\n")
    assert status_of(raw) == 200
    assert head.startswith(b"HTTP/1.")
    assert b"transfer-encoding" not in head.lower()
    assert body == _expected_stream(5)


def test_http10_keep_alive_is_honoured(srv):
    with connect(srv.port) as sock:
        for i in range(3):
            sock.sendall(get_request(f"/path?k={i}", version="HTTP/1.0",
                                     headers={"Connection": "keep-alive"}))
            status, headers, body = read_response(sock)
            assert (status, body) == (200, f"/path?k={i}".encode())
            assert headers.get("connection", "").lower() == "keep-alive"


def test_head_of_a_streaming_response_keeps_an_http10_keep_alive_connection(srv):
    """A body of unknown length is ended by the close on HTTP/1.0; a HEAD response has none,
    so its connection is kept (Gunicorn's gthread worker keeps it too)."""
    with connect(srv.port) as sock:
        sock.sendall(get_request("/stream?n=3", method="HEAD", version="HTTP/1.0",
                                 headers={"Connection": "keep-alive"}))
        status, headers, body = read_response(sock, head_only=True)
        assert (status, body, headers.get("connection", "").lower()) == (200, b"", "keep-alive")
        assert "content-length" not in headers and "transfer-encoding" not in headers
        sock.sendall(get_request("/path?after-head", version="HTTP/1.0"))
        assert read_response(sock)[::2] == (200, b"/path?after-head")


def test_http10_without_keep_alive_closes_connection(srv):
    raw, closed = send_raw(srv.port, get_request("/hello", version="HTTP/1.0", host=None))
    assert closed
    assert status_of(raw) == 200
    assert raw.endswith(HELLO)


def test_connection_close_request_closes_after_response(srv):
    with connect(srv.port) as sock:
        sock.sendall(get_request("/hello", headers={"Connection": "close"}))
        raw, closed = read_until_closed(sock, timeout=10)
    assert closed
    assert status_of(raw) == 200
    assert raw.endswith(HELLO)
    head = raw.partition(b"\r\n\r\n")[0].lower()
    assert b"\r\nconnection: close" in head


@pytest.mark.parametrize("code", [204, 304])
def test_204_and_304_have_no_body(srv, code):
    with connect(srv.port) as sock:
        sock.sendall(get_request(f"/status?code={code}"))
        head = read_head(sock)
        assert status_of(head) == code
        assert b"transfer-encoding" not in head.lower()
        sock.sendall(get_request("/path?after-empty"))
        # the very next bytes must be the next response, not a body or a 0-chunk
        head2 = read_head(sock)
        assert head2.startswith(b"HTTP/1.1 200"), head2


def test_a_204_drops_the_apps_content_length_and_a_304_keeps_it(srv):
    # RFC 9110 8.6: never a Content-Length on a 204 (Envoy answers 502 to one; Django sets
    # one on every response); a 304's is the GET's length, and the client reads no body
    with connect(srv.port) as sock:
        sock.sendall(get_request("/status?code=204&cl=7") + get_request("/status?code=304&cl=9")
                     + get_request("/path?after"))
        head = read_head(sock)
        assert status_of(head) == 204 and b"content-length" not in head.lower(), head
        head = read_head(sock)
        assert status_of(head) == 304 and b"\r\ncontent-length: 9\r\n" in head.lower(), head
        assert read_response(sock)[2] == b"/path?after"


def test_date_and_server_headers_present(srv):
    status, headers, _ = http_get(srv.port, "/hello")
    assert status == 200
    assert "date" in headers and "server" in headers
    assert headers["server"].lower().startswith("berth")
    date = email.utils.parsedate_to_datetime(headers["date"])
    assert headers["date"].endswith("GMT")
    assert abs((datetime.now(timezone.utc) - date).total_seconds()) < 60


def test_date_header_on_error_responses(srv):
    raw, _ = send_raw(srv.port, b"GARBAGE\r\n\r\n")
    assert status_of(raw) == 400
    assert b"\r\ndate:" in raw.lower()


def test_multiple_set_cookie_headers_preserved(srv):
    raw, _ = send_raw(srv.port, get_request("/set-cookies", headers={"Connection": "close"}))
    head = raw.partition(b"\r\n\r\n")[0].decode("latin-1")
    cookies = [ln.split(":", 1)[1].strip() for ln in head.split("\r\n")
               if ln.lower().startswith("set-cookie:")]
    assert cookies == ["a=1; Path=/", "b=2; Path=/"]


@pytest.mark.parametrize("parts", ["list=1", "list=0"])
def test_a_body_longer_than_the_apps_content_length_is_cut_and_logged_once(srv, parts):
    # Gunicorn cuts in silence (and Uvicorn raises): the cut is what the client gets either way,
    # and a log line tells the operator why downloads end early
    url = f"/lying?give=10&claim=4&{parts}"
    with connect(srv.port) as sock:
        sock.sendall(get_request(url) + get_request("/hello"))
        status, headers, body = read_response(sock)
        assert (status, headers["content-length"], body) == (200, "4", b"xxxx")
        assert read_response(sock)[2] == HELLO  # the next response is framed right
    line = f"response to GET {url} HTTP/1.1 is longer than its Content-Length"
    assert wait_for(lambda: line in srv.stderr(), timeout=5), srv.stderr()[-2000:]
    assert srv.stderr().count(line) == 1


@pytest.mark.wsgi_only("wsgi.file_wrapper: the ASGI pathsend is in test_asgi.py")
def test_a_file_longer_than_the_apps_content_length_is_cut_and_logged(srv, tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"0123456789" * 10)
    url = f"/file?path={path}&claim=25"
    with connect(srv.port) as sock:
        sock.sendall(get_request(url) + get_request("/hello"))
        assert read_response(sock)[2] == b"0123456789" * 2 + b"01234"
        assert read_response(sock)[2] == HELLO
    assert wait_for(lambda: f"{url} HTTP/1.1 is longer than its Content-Length"
                    in srv.stderr(), timeout=5), srv.stderr()[-2000:]


@pytest.mark.parametrize("parts", ["list=1", "list=0"])
def test_a_body_shorter_than_the_apps_content_length_closes_the_connection_and_is_logged(
        srv, parts):
    url = f"/lying?give=3&claim=8&{parts}"
    raw, closed = send_raw(srv.port, get_request(url))
    assert closed and status_of(raw) == 200
    assert raw.partition(b"\r\n\r\n")[2] == b"xxx"  # then the end: the client sees it cut
    line = f"response to GET {url} HTTP/1.1 is 5 bytes shorter than its Content-Length"
    assert wait_for(lambda: line in srv.stderr(), timeout=5), srv.stderr()[-2000:]


def test_absolute_form_request_target(srv):
    status, _, body = read_response_once(
        srv.port, get_request(f"http://127.0.0.1:{srv.port}/path?abs=1"))
    assert (status, body) == (200, b"/path?abs=1")


def test_an_absolute_form_targets_authority_is_the_host_the_app_sees(srv):
    """RFC 9112 3.2.2 (Gunicorn gives the app the Host field: two hosts for one request)."""
    status, _, body = read_response_once(
        srv.port, b"GET http://other.example:8080/env HTTP/1.1\r\nHost: h\r\n\r\n")
    assert status == 200
    assert json.loads(body)["str"]["HTTP_HOST"] == "other.example:8080"


def read_response_once(port, raw):
    with connect(port) as sock:
        sock.sendall(raw)
        return read_response(sock)


def test_large_response_read_slowly_arrives_intact(srv):
    n = 8 << 20
    with BufferedSocket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.settimeout(15)
        sock.connect(("127.0.0.1", srv.port))
        sock.sendall(get_request(f"/big?n={n}", headers={"Connection": "close"}))
        head = read_head(sock, timeout=15)
        assert status_of(head) == 200
        assert f"content-length: {n}".encode() in head.lower()
        data = sock._berth_buf
        h = hashlib.sha256(data)
        total = len(data)
        reads = 0
        started = time.monotonic()
        while total < n and time.monotonic() - started < 60:
            data = sock.recv(32768)
            if not data:
                break
            h.update(data)
            total += len(data)
            reads += 1
            if reads % 8 == 0 and time.monotonic() - started < 3:
                time.sleep(0.05)  # a slow reader for the first seconds: the server must wait
    assert total == n
    assert h.hexdigest() == big_sha256(n)


def test_large_chunked_response_arrives_intact(srv):
    n = (3 << 20) + 12345
    with connect(srv.port, timeout=20) as sock:
        sock.sendall(get_request(f"/big?n={n}&chunked=1"))
        status, headers, body = read_response(sock)
    assert status == 200
    assert headers.get("transfer-encoding", "").lower() == "chunked"
    assert len(body) == n
    assert hashlib.sha256(body).hexdigest() == big_sha256(n)


def _upload(port, body: bytes, chunked: bool = False, piece: int = 256 * 1024):
    if chunked:
        head = get_request("/sha256", method="POST", headers={"Transfer-Encoding": "chunked"})
    else:
        head = get_request("/sha256", method="POST", headers={"Content-Length": str(len(body))})
    with connect(port, timeout=30) as sock:
        sock.sendall(head)
        for i in range(0, len(body), piece):
            part = body[i:i + piece]
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        return read_response(sock)


def test_large_upload_above_body_buffer_arrives_intact(srv):
    body = os.urandom(5 << 20)
    status, _, resp = _upload(srv.port, body)
    assert status == 200
    info = json.loads(resp)
    assert info["len"] == len(body)
    assert info["sha256"] == hashlib.sha256(body).hexdigest()
    assert info["content_length"] == str(len(body))


def test_large_chunked_upload_arrives_intact(srv):
    body = os.urandom((5 << 20) + 7)
    status, _, resp = _upload(srv.port, body, chunked=True)
    assert status == 200
    info = json.loads(resp)
    assert info["len"] == len(body)
    assert info["sha256"] == hashlib.sha256(body).hexdigest()


def test_server_still_serves_after_large_transfers(srv):
    status, _, body = http_get(srv.port, "/hello")
    assert (status, body) == (200, HELLO)


def test_access_log_has_a_line_per_request(srv):
    http_get(srv.port, "/path?logged-once")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and "/path?logged-once" not in srv.stdout():
        time.sleep(0.05)
    assert re.search(r'"GET /path\?logged-once HTTP/1\.1" 200 ', srv.stdout())


def test_unread_body_larger_than_buffer_never_desyncs_the_connection(srv):
    # /hello ignores a 3 MiB body (above the default 1 MiB buffer). The server must either
    # skip it and answer the next request, or close the connection: the body bytes must
    # never be parsed as a request.
    body = (b"GET /path?smuggled HTTP/1.1\r\nHost: a\r\n\r\n" * 80000)[:3 << 20]
    with connect(srv.port, timeout=20) as sock:
        sock.sendall(get_request("/hello", method="POST", body=body)
                     + get_request("/path?next"))
        s1, _, b1 = read_response(sock)
        assert (s1, b1) == (200, HELLO)
        try:
            s2, _, b2 = read_response(sock)
        except ConnectionError:
            return  # closing the connection instead of draining the body is fine
    assert (s2, b2) == (200, b"/path?next")


@pytest.fixture(scope="module")
def small_buffer(tmp_path_factory, worker_kind):
    server = start_module_server(
        tmp_path_factory, ["-w", "1", "--body-buffer-size", "1024", *proto_args(worker_kind, 2)],
        name=f"smallbuf-{worker_kind}")
    yield server
    server.stop()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_upload_streams_with_small_body_buffer(small_buffer, chunked):
    # /sha256 reads with read(65536): larger than the 1024-byte buffer, which must not matter
    body = os.urandom((2 << 20) + 5)
    status, _, resp = _upload(small_buffer.port, body, chunked=chunked, piece=100_000)
    assert status == 200
    info = json.loads(resp)
    assert info["len"] == len(body)
    assert info["sha256"] == hashlib.sha256(body).hexdigest()


def test_body_above_buffer_reaches_app_before_upload_finishes(small_buffer):
    marker = small_buffer.markers / "record-early"
    body = os.urandom(100_000)
    with connect(small_buffer.port, timeout=10) as sock:
        sock.sendall(get_request("/record?tag=early&rs=512", method="POST",
                                 headers={"Content-Length": str(len(body))}))
        sock.sendall(body[:50_000])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not marker.exists():
            time.sleep(0.02)
        called_early = marker.exists()
        sock.sendall(body[50_000:])
        status, _, got = read_response(sock)
    assert (status, got) == (200, body)
    assert called_early, "with --body-buffer-size 1024 the app must get a 100 kB body streamed"


def test_body_within_buffer_is_complete_before_app_is_called(small_buffer):
    marker = small_buffer.markers / "record-buffered"
    body = b"b" * 1000
    with connect(small_buffer.port, timeout=10) as sock:
        sock.sendall(get_request("/record?tag=buffered", method="POST",
                                 headers={"Content-Length": str(len(body))}))
        sock.sendall(body[:500])
        time.sleep(0.5)
        called_early = marker.exists()
        sock.sendall(body[500:])
        status, _, got = read_response(sock)
    assert (status, got) == (200, body)
    assert not called_early, "app called before a body within --body-buffer-size was complete"


def test_expect_100_continue_with_body_above_buffer(small_buffer):
    body = os.urandom(300_000)
    head = get_request("/echo?rs=512", method="POST", headers={
        "Content-Length": str(len(body)), "Expect": "100-continue"})
    with connect(small_buffer.port, timeout=10) as sock:
        sock.sendall(head)
        interim = read_head(sock, timeout=5)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        sock.sendall(body)
        status, _, resp = read_response(sock)
    assert status == 200
    assert resp == body


@pytest.mark.parametrize("threads", [1, pytest.param(4, marks=pytest.mark.wsgi_only(
    "app threads: -k asgi runs one event loop, its run with 1 is the whole of it"))])
def test_client_that_half_closes_after_its_request_gets_the_whole_response(berth, worker_kind,
                                                                            threads):
    srv = berth(["-w", "1", "--access-logfile", "none", *proto_args(worker_kind, threads)])
    with connect(srv.port, timeout=20) as sock:
        sock.sendall(get_request("/big?n=8388608"))
        sock.shutdown(socket.SHUT_WR)
        status, _, body = read_response(sock)
    assert status == 200 and len(body) == 8388608


@pytest.mark.parametrize("threads", [1, pytest.param(4, marks=pytest.mark.wsgi_only(
    "app threads: -k asgi runs one event loop, its run with 1 is the whole of it"))])
def test_pipelined_requests_a_client_does_not_read_cost_the_queue_bound_not_a_response_each(
        berth, worker_kind, threads):
    """A client pipelining requests for whole (list) responses and reading none: the loop
    thread answered each as it was read, and queued the responses without bound (1.2 GB in
    2 s with 30 KB responses, from one connection). Now it stops at the write-behind bound
    until the client reads, and every response then arrives, in order."""
    srv = berth(["-w", "1", "--access-logfile", "none", *proto_args(worker_kind, threads)])
    worker = pids_children(srv.proc.pid)[0]
    n, size = 200, 100_000  # 20 MB of responses for 9 KB of requests

    def rss() -> int:
        with open(f"/proc/{worker}/status") as f:
            return next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) << 10

    before = rss()
    with connect(srv.port, timeout=20) as sock:
        sock.sendall(b"".join(get_request(f"/big?n={size + i}&list=1") for i in range(n)))
        wait_for(lambda: rss() - before > 8 << 20, timeout=1.0, interval=0.1)
        grew = rss() - before
        for i in range(n):
            status, headers, body = read_response(sock)
            assert (status, len(body)) == (200, size + i), i
    assert grew < 8 << 20, f"the worker grew by {grew >> 20} MiB"


@pytest.mark.parametrize("threads", [1, pytest.param(4, marks=pytest.mark.wsgi_only(
    "app threads: -k asgi runs one event loop, its run with 1 is the whole of it"))])
def test_a_flood_of_pipelined_requests_a_client_does_not_read_costs_a_slice_not_a_read(
        berth, worker_kind, threads):
    """Clients that pipeline requests and read nothing: once their responses fill the
    socket buffers, a connection holds what it read. One 64 KiB read of tiny requests had
    been parsed whole before reading paused at the queue's bound: some 1,400 requests, about
    a MiB a connection. Now a read is parsed a slice at a time and the rest kept as bytes until
    the queue has room: a connection holds its unsent responses (256 KiB) and little more."""
    srv = berth(["-w", "1", "--access-logfile", "none", *proto_args(worker_kind, threads)])
    worker = pids_children(srv.proc.pid)[0]
    one = b"GET /big?n=65536 HTTP/1.1\r\nHost: a\r\n\r\n"  # fills the buffers soon
    flood = one * (64 * 1024 // len(one))
    clients = 20
    socks = []
    before = worker_uss(worker)
    try:
        for _ in range(clients):
            sock = connect(srv.port)
            sock.setblocking(False)
            socks.append(sock)
        # each sends what the buffers take, until the responses it does not read stop the
        # worker (and the requests the worker does not read stop the client)
        deadline = time.monotonic() + 3.0
        quiet = 0  # rounds in a row in which no client could send
        while time.monotonic() < deadline and quiet < 4:
            sent = 0
            for sock in socks:
                try:
                    sent += sock.send(flood)
                except BlockingIOError:
                    pass
            quiet = 0 if sent else quiet + 1
            if not sent:
                time.sleep(0.1)
        wait_for(lambda: worker_uss(worker) - before > 16 << 20, timeout=1.0, interval=0.2)
        grew = worker_uss(worker) - before
        for sock in socks[:2]:  # each is still served, in order
            sock.setblocking(True)
            sock.settimeout(10)
            for _ in range(300):
                status, _, body = read_response(sock)
                assert (status, len(body)) == (200, 65536)
    finally:
        for sock in socks:
            sock.close()
    assert grew < 16 << 20, f"the worker grew by {grew / clients / 1024:.0f} KiB a connection"


def test_pipelined_requests_of_every_framing_fed_in_slices_are_answered_in_order(
        srv, worker_kind):
    """Reads longer than a slice (4 KiB) are parsed a slice at a time, and what follows the
    queue's bound waits as bytes: requests cut at a slice's end, bodies with a length or
    chunked, heads longer than a slice, all come out whole and in order."""
    import threading

    parts, expected = [], []
    for i in range(1500):
        kind = i % 5
        if kind == 0:
            parts.append(get_request(f"/path?i={i}"))
            expected.append(f"/path?i={i}".encode())
        elif kind == 1:
            body = f"<{i}>".encode() * (i % 97)
            parts.append(get_request("/echo", method="POST", body=body))
            expected.append(body)
        elif kind == 2:
            body = f"chunked {i}".encode()
            parts.append(get_request("/echo", method="POST",
                                     headers={"Transfer-Encoding": "chunked"},
                                     body=b"4\r\n" + body[:4] + b"\r\n%x\r\n" % (len(body) - 4)
                                     + body[4:] + b"\r\n0\r\n\r\n"))
            expected.append(body)
        elif kind == 3:  # a head longer than a slice
            parts.append(get_request(f"/path?long={i}", headers={"X-Pad": "p" * 6000}))
            expected.append(f"/path?long={i}".encode())
        else:
            parts.append(get_request("/hello"))
            expected.append(HELLO)
    raw = b"".join(parts)
    with connect(srv.port, timeout=20) as sock:
        sender = threading.Thread(target=sock.sendall, args=(raw,), daemon=True)
        sender.start()
        for i, want in enumerate(expected):
            status, _, body = read_response(sock)
            assert (status, body) == (200, want), i
        sender.join(10)
    assert not sender.is_alive()


def test_unread_streamed_body_is_dropped_with_the_access_log_off(berth, worker_kind):
    # the same as above on the path without an access log (it once skipped dropping the body)
    srv = berth(["-w", "1", "--access-logfile", "none", *proto_args(worker_kind, 1)])
    body = b"x" * (3 << 20)
    with connect(srv.port, timeout=20) as sock:
        sock.sendall(get_request("/hello", method="POST", body=body)
                     + get_request("/path?next"))
        assert read_response(sock)[::2] == (200, HELLO)
        assert read_response(sock)[::2] == (200, b"/path?next")


# --- parsing rules, checked with raw bytes against the running server ------------------------

def environ_for(port: int, raw: bytes) -> dict:
    """Send `raw` (a request for /env) and return the str values of the app's environ."""
    with connect(port) as sock:
        sock.sendall(raw)
        status, _, body = read_response(sock)
    assert status == 200, body
    return json.loads(body)["str"]


def test_header_value_reaches_the_app_without_trailing_whitespace(srv):
    env = environ_for(srv.port, b"GET /env HTTP/1.1\r\nHost: a\r\nX-Value:\tabc\t\r\n"
                                b"X-Other: d \r\n\r\n")
    assert (env["HTTP_X_VALUE"], env["HTTP_X_OTHER"]) == ("abc", "d")


@pytest.mark.parametrize("second", [b"text/plain", b"multipart/form-data; boundary=b"])
def test_a_repeated_content_type_is_400_and_closed(srv, second):
    """RFC 9110 5.3: Content-Type takes one value, so two lines cannot be joined into a
    list; the app saw `CONTENT_TYPE` "text/plain,multipart/..." while a proxy may have
    judged the body by either line. Gunicorn answers 400, as for a repeated Host."""
    raw = (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Type: "
           + second + b"\r\nContent-Length: 2\r\n\r\nab")
    resp, closed = send_raw(srv.port, raw)
    assert status_of(resp) == 400 and closed, resp


@pytest.mark.parametrize("method", ["GET", "POST", "HEAD"])
def test_asterisk_form_with_a_method_other_than_options_is_400_and_closed(srv, method):
    resp, closed = send_raw(srv.port, f"{method} * HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert status_of(resp) == 400 and closed


def test_options_asterisk_reaches_the_app(srv):
    status, _, body = read_response_once(srv.port, b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
    assert (status, body) == (404, b"no route *")  # the app's own answer for a path it lacks


@pytest.mark.parametrize("target", ["example.com:443", "1.2.3.4:443", "[::1]:443"])
def test_connect_is_501_and_the_connection_closed(srv, target):
    resp, closed = send_raw(srv.port, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"
                                      "GET /hello HTTP/1.1\r\nHost: a\r\n\r\n".encode())
    assert status_of(resp) == 501 and closed
    assert resp.count(b"HTTP/1.1 ") == 1, "nothing after a CONNECT may be answered"


def test_trailer_fields_never_reach_the_environ(srv):
    body = b"5\r\nhello\r\n0\r\nX-Trailer: t1\r\nHost: evil\r\n\r\n"
    raw = (b"POST /env HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body
           + b"GET /env HTTP/1.1\r\nHost: a\r\n\r\n")
    with connect(srv.port) as sock:
        sock.sendall(raw)
        first = [read_response(sock) for _ in range(2)]
    assert [status for status, _, _ in first] == [200, 200]
    envs = [json.loads(body)["str"] for _, _, body in first]
    assert [env["HTTP_HOST"] for env in envs] == ["a", "a"]
    assert not [k for env in envs for k in env if "TRAILER" in k]


def test_chunk_extension_after_whitespace_is_accepted(srv):
    payload = b"5 ;ext=1\r\nhello\r\n6\t;a=b\r\n world\r\n0\r\n\r\n"
    req = get_request("/echo", method="POST", headers={"Transfer-Encoding": "chunked"},
                      body=payload)
    status, headers, body = read_response_once(srv.port, req)
    assert (status, body, headers["x-content-length"]) == (200, b"hello world", "11")


@pytest.mark.parametrize("method", ["BREW", "VERSION-CONTROL", "MKREDIRECTREF", "PURGE"])
def test_an_extension_method_reaches_the_app_as_sent(srv, method):
    raw = get_request("/echo", method=method, body=b"coffee")
    status, headers, body = read_response_once(srv.port, raw + get_request("/path?after"))
    assert (status, headers["x-method"], body) == (200, method, b"coffee")


def test_extension_methods_pipelined_with_others_on_one_connection(srv):
    methods = ["GET", "BREW", "POST", "MKREDIRECTREF", "VERSION-CONTROL", "PUT"]
    with connect(srv.port) as sock:
        sock.sendall(b"".join(get_request("/echo", method=m, body=m.encode()) for m in methods))
        got = [read_response(sock) for _ in methods]
    assert [(s, h["x-method"], b) for s, h, b in got] == [(200, m, m.encode()) for m in methods]


def test_an_extension_method_split_across_tcp_segments(srv):
    raw = get_request("/echo", method="MKREDIRECTREF", body=b"split")
    with connect(srv.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for part in (raw[:2], raw[2:7], raw[7:]):  # "MK" is the start of llhttp's MKCOL
            sock.sendall(part)
            time.sleep(0.05)
        status, headers, body = read_response(sock)
    assert (status, headers["x-method"], body) == (200, "MKREDIRECTREF", b"split")


@pytest.mark.parametrize("method", ["get", "Brew", "BR", "M" * 21, "BR#EW"])
def test_an_unconventional_method_is_400_by_default(srv, method):
    resp, closed = send_raw(srv.port, get_request("/echo", method=method))
    assert status_of(resp) == 400 and closed


@pytest.fixture(scope="module")
def lenient(tmp_path_factory, worker_kind):
    server = start_module_server(
        tmp_path_factory, ["-w", "1", "--permit-unconventional-http-method",
                           *proto_args(worker_kind, 2)], name=f"methods-{worker_kind}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def folding(tmp_path_factory, worker_kind):
    server = start_module_server(
        tmp_path_factory, ["-w", "1", "--permit-unconventional-http-method",
                           "--casefold-http-method", *proto_args(worker_kind, 2)],
        name=f"casefold-{worker_kind}")
    yield server
    server.stop()


@pytest.mark.parametrize("method", ["get", "Brew", "BR", "M" * 40, "BR#EW"])
def test_permit_unconventional_http_method_passes_any_token(lenient, method):
    status, headers, _ = read_response_once(lenient.port, get_request("/echo", method=method))
    assert (status, headers["x-method"]) == (200, method)


@pytest.mark.parametrize(("method", "folded"), [("get", "GET"), ("brew", "BREW"),
                                                ("Head", "HEAD")])
def test_casefold_http_method_upper_cases_the_method(folding, method, folded):
    with connect(folding.port) as sock:
        sock.sendall(get_request("/echo", method=method) + get_request("/path?next"))
        status, headers, body = read_response(sock, head_only=folded == "HEAD")
        assert (status, headers["x-method"]) == (200, folded)
        assert read_response(sock)[2] == b"/path?next"  # a HEAD response had no body


# --- header names with `_`, and responses berth cannot send whole ---------------------------

def test_header_names_with_underscore_are_dropped(srv):
    env = environ_for(srv.port, get_request("/env", headers={"X_Foo": "underscore",
                                                             "X-Bar": "dash"}))
    assert env["HTTP_X_BAR"] == "dash"
    assert "HTTP_X_FOO" not in env


def test_underscore_header_cannot_shadow_dash_header(srv):
    env = environ_for(srv.port, get_request("/env", headers={"X-Foo": "dash",
                                                             "X_Foo": "underscore"}))
    assert env["HTTP_X_FOO"] == "dash"


def test_header_map_refuse_answers_400_end_to_end(berth, worker_kind):
    srv = berth(["-w", "1", "--header-map", "refuse", *proto_args(worker_kind)])
    resp, closed = send_raw(srv.port, get_request("/env", headers={"X_Foo": "under"}))
    assert status_of(resp) == 400 and closed
    assert http_get(srv.port, "/hello")[2] == HELLO


@pytest.mark.parametrize("cl", ["0", "1"], ids=["chunked", "content-length"])
def test_exception_after_response_started_truncates_and_closes(srv, cl):
    with connect(srv.port) as sock:
        sock.sendall(get_request(f"/raise-after?cl={cl}"))
        raw, closed = read_until_closed(sock, timeout=10)
    assert closed, "connection must be closed when the body generator raises"
    head, _, body = raw.partition(b"\r\n\r\n")
    assert status_of(head) == 200
    assert b"partial-1" in body
    if cl == "1":
        assert len(body) < 1000
    else:
        assert b"transfer-encoding: chunked" in head.lower()
        assert not body.endswith(b"0\r\n\r\n"), "a truncated body must not look complete"
    assert wait_for(lambda: "proto-boom-after-start-response" in srv.stderr())
    assert http_get(srv.port, "/hello")[2] == HELLO


@pytest.mark.parametrize("kind", ["crlf", "lf", "cr"])
def test_crlf_in_response_header_value_gives_500_never_split(srv, kind):
    raw, _ = send_raw(srv.port, get_request(f"/bad-header?kind={kind}",
                                            headers={"Connection": "close"}))
    assert status_of(raw) == 500, raw[:300]
    head = raw.partition(b"\r\n\r\n")[0]
    assert b"x-injected" not in head.lower()
    assert b"should-not-be-sent" not in raw
    assert b"\r\nX-Bad:" not in head


@pytest.mark.parametrize("kind", ["nul", "del", "esc"])
def test_a_control_character_in_a_response_header_value_gives_500(srv, kind):
    """RFC 9110 5.5: NUL, DEL and the C0 controls but HTAB are not field-value characters (a
    NUL ends a C string in the next proxy or client). Refused as CR and LF are: 500."""
    raw, _ = send_raw(srv.port, get_request(f"/bad-header?kind={kind}",
                                            headers={"Connection": "close"}))
    assert status_of(raw) == 500, raw[:300]
    assert b"should-not-be-sent" not in raw and b"X-Bad:" not in raw


@pytest.mark.parametrize("code", [100, 101, 103])
def test_an_interim_status_from_the_app_gives_500_and_no_desync(srv, code):
    """RFC 9110 15.2: a 1xx is interim, never the response. Sent as the answer, the client
    waits for the final one and takes the next request's response for it."""
    with connect(srv.port) as sock:
        sock.sendall(get_request(f"/status?code={code}") + get_request("/path?next"))
        raw, closed = read_until_closed(sock, timeout=5)
    assert status_of(raw) == 500, raw[:300]
    assert closed and raw.count(b"HTTP/1.1 ") == 1, raw[:600]
    assert wait_for(lambda: f"interim status {code}" in srv.stderr())


def test_refused_requests_are_warned_of_at_most_once_a_second_each_one_counted(
        berth, worker_kind):
    """As Gunicorn's "Invalid request from ip=..." warning, but a flood of bad requests makes
    one line a second, the next one saying how many were held back: none goes unseen."""
    srv = berth(["-w", "1", *proto_args(worker_kind)])
    for _ in range(20):
        raw, closed = send_raw(srv.port, b"GARBAGE\r\n\r\n")
        assert status_of(raw) == 400 and closed
    time.sleep(1.1)  # the next one is past the second: it goes out, with the count
    raw, _ = send_raw(srv.port, b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n")
    assert status_of(raw) == 400
    wanted = "request refused from 127.0.0.1: 400 invalid Host header 'a b'"
    assert wait_for(lambda: wanted in srv.stderr(), timeout=5), srv.stderr()
    lines = [line for line in srv.stderr().splitlines() if "request refused from" in line]
    assert all("[WARNING]" in line for line in lines), lines
    held = sum(int(m) for line in lines
               for m in re.findall(r"\(and (\d+) more like it", line))
    assert len(lines) < 21 and len(lines) + held == 21, lines

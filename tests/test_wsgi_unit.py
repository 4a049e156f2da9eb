"""`berth/wsgi.py` in-process: the environ's layers, `split_target`, and `StreamInput`."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import allocated_per_item

from berth import SERVER_SOFTWARE
from berth.http.parser import RequestParser
from berth.wsgi import (
    PER_REQUEST_KEYS,
    Environs,
    FileWrapper,
    StreamInput,
    no_early_hints,
    split_target,
)


def parse_one(raw: bytes):
    parser = RequestParser()
    parser.feed(raw)
    (req,) = parser.ready
    return req


def test_environ_has_every_pep3333_key_from_its_three_layers():
    envs = Environs(multithread=True, multiprocess=False, script_name="")
    conn = envs.for_connection(("127.0.0.1", 8000), ("127.0.0.2", 51234))
    req = parse_one(b"POST /a%20b/c?x=1&y=%20 HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain"
                    b"\r\nContent-Length: 3\r\nX-Request-Id: r1\r\n\r\nabc")
    env = envs.for_request(conn, req)
    assert env["REQUEST_METHOD"] == "POST"
    assert (env["PATH_INFO"], env["QUERY_STRING"], env["RAW_URI"]) == (
        "/a b/c", "x=1&y=%20", "/a%20b/c?x=1&y=%20")
    assert (env["SERVER_NAME"], env["SERVER_PORT"], env["REMOTE_ADDR"], env["REMOTE_PORT"]) == (
        "127.0.0.1", "8000", "127.0.0.2", "51234")
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert (env["CONTENT_TYPE"], env["CONTENT_LENGTH"], env["HTTP_X_REQUEST_ID"]) == (
        "text/plain", "3", "r1")
    assert env["wsgi.input"].read() == b"abc"
    assert env["wsgi.version"] == (1, 0) and env["wsgi.url_scheme"] == "http"
    assert env["wsgi.multithread"] is True and env["wsgi.multiprocess"] is False
    assert env["wsgi.file_wrapper"] is FileWrapper and env["SCRIPT_NAME"] == ""
    assert env["SERVER_SOFTWARE"] == SERVER_SOFTWARE
    # (the shared layer has the per-request keys beforehand, so that a request overwrites
    # them instead of adding them: with values no request gave)
    assert {key: conn.base[key] for key in PER_REQUEST_KEYS} == {
        **dict.fromkeys(PER_REQUEST_KEYS, ""), "wsgi.early_hints": no_early_hints}, \
        "a request's keys leaked into the shared layer"
    assert "REMOTE_PORT" not in conn.base


def test_connections_between_the_same_addresses_share_their_layer_but_for_the_port():
    envs = Environs(multithread=False, multiprocess=False, script_name="")
    conns = [envs.for_connection(("10.0.0.1", 8000), ("10.0.0.2", port))
             for port in range(40000, 40200)]
    assert all(c.base is conns[0].base for c in conns)
    other = envs.for_connection(("10.0.0.1", 8000), ("10.0.0.3", 40000))
    assert other.base is not conns[0].base and other["REMOTE_ADDR"] == "10.0.0.3"
    req = parse_one(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert [envs.for_request(c, req)["REMOTE_PORT"] for c in conns[:3]] == [
        "40000", "40001", "40002"]
    assert conns[5].get("REMOTE_PORT") == "40005" and conns[5].get("NOPE", 1) == 1
    # what a connection holds: its port, not a copy of the environ (about 600 bytes)
    ports = iter(range(50000, 60000))
    per_conn = allocated_per_item(
        lambda: envs.for_connection(("10.0.0.1", 8000), ("10.0.0.2", next(ports))))
    assert per_conn < 200, per_conn


@pytest.mark.parametrize(("host", "scheme", "name", "port"), [
    (b"Host: shop.example.com\r\n", "http", "shop.example.com", "80"),
    (b"Host: shop.example.com\r\n", "https", "shop.example.com", "443"),
    (b"Host: shop.example.com:8080\r\n", "http", "shop.example.com", "8080"),
    (b"Host: [::1]:8443\r\n", "http", "[::1]", "8443"),
    (b"Host: [::1]\r\n", "http", "[::1]", "80"),
    (b"", "http", "localhost", "0"),  # (HTTP/1.0 without Host)
])
def test_a_unix_socket_request_has_no_client_address_and_its_server_from_host(
        host, scheme, name, port):
    # as Gunicorn: REMOTE_ADDR empty, no REMOTE_PORT, SERVER_* from Host. berth said 127.0.0.1,
    # which an app's "only from localhost" check passed for every client of the proxy
    envs = Environs(False, False, "", scheme=scheme)
    env = envs.for_request(envs.for_connection(None, None),
                           parse_one(b"GET / HTTP/1.0\r\n" + host + b"\r\n"))
    assert env["REMOTE_ADDR"] == "" and "REMOTE_PORT" not in env
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == (name, port)


def test_script_name_is_taken_off_path_info():
    envs = Environs(False, False, script_name="/app")
    conn = envs.for_connection(None, None)
    env = envs.for_request(conn, parse_one(b"GET /app/users?id=1 HTTP/1.0\r\n\r\n"))
    assert (env["SCRIPT_NAME"], env["PATH_INFO"], env["QUERY_STRING"]) == ("/app", "/users",
                                                                           "id=1")
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"


@pytest.mark.parametrize(("target", "script_name", "path_info"), [
    (b"/app/users", "/app", "/users"),
    (b"/app", "/app", ""),
    (b"/healthz", "", "/healthz"),  # (a probe sent to the pod itself: not under the mount)
    (b"/apple/pie", "", "/apple/pie"),  # (Gunicorn: SCRIPT_NAME /app, PATH_INFO "le/pie")
    (b"//app/x", "", "//app/x"),
])
def test_a_path_outside_script_name_keeps_its_whole_path_and_an_empty_script_name(
        target, script_name, path_info):
    # PEP 3333: SCRIPT_NAME + PATH_INFO is the path asked for. /healthz used to become
    # SCRIPT_NAME /app and PATH_INFO /healthz (a URL the client never asked for); Gunicorn 500s
    for mount in ("/app", "/app/"):
        envs = Environs(False, False, script_name=mount)
        conn = envs.for_connection(None, None)
        for _ in range(2):  # (the second from the caches)
            env = envs.for_request(conn, parse_one(b"GET " + target + b" HTTP/1.0\r\n\r\n"))
            assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == (script_name, path_info), mount


def test_other_methods_are_passed_as_sent():
    envs = Environs(False, False, "")
    env = envs.for_request(envs.for_connection(None, None),
                           parse_one(b"PROPFIND /dav HTTP/1.1\r\nHost: h\r\n\r\n"))
    assert env["REQUEST_METHOD"] == "PROPFIND"


def test_a_repeated_request_line_gets_a_fresh_environ_with_its_own_headers_and_body():
    # the same line again on a keep-alive connection reuses what was made for the last one
    envs = Environs(True, False, "")
    a = envs.for_connection(("10.0.0.1", 80), ("10.0.0.2", 1111))
    b = envs.for_connection(("10.0.0.1", 80), ("10.0.0.2", 2222))
    first = envs.for_request(a, parse_one(b"GET /x?q=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n"))
    first["PATH_INFO"] = "/changed-by-the-app"
    first["wsgi.url_scheme"] = "https"
    again = envs.for_request(a, parse_one(b"GET /x?q=1 HTTP/1.1\r\nHost: h\r\nX-B: 2\r\n\r\n"))
    assert (again["PATH_INFO"], again["QUERY_STRING"]) == ("/x", "q=1")
    assert again["wsgi.url_scheme"] == "http"
    assert "HTTP_X_A" not in again and again["HTTP_X_B"] == "2"
    assert again["wsgi.input"] is not first["wsgi.input"]
    post = envs.for_request(a, parse_one(
        b"POST /x?q=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi"))
    assert post["REQUEST_METHOD"] == "POST" and post["wsgi.input"].read() == b"hi"
    old = envs.for_request(a, parse_one(b"GET /x?q=1 HTTP/1.0\r\n\r\n"))
    assert old["SERVER_PROTOCOL"] == "HTTP/1.0"
    other = envs.for_request(b, parse_one(b"GET /x?q=1 HTTP/1.0\r\n\r\n"))
    assert other["REMOTE_PORT"] == "2222"


@pytest.mark.parametrize("target,expected", [
    (b"/", ("/", "")),
    (b"/a?b=c#frag", ("/a", "b=c")),
    (b"/a#frag?x", ("/a", "")),
    (b"/%41%2Fb", ("/A/b", "")),
    (b"/caf%C3%A9", ("/caf\xc3\xa9", "")),  # PEP 3333: bytes as latin-1
    (b"*", ("*", "")),
    (b"http://example.com/p?q=1", ("/p", "q=1")),
    (b"http://example.com", ("/", "")),
])
def test_split_target(target, expected):
    assert split_target(target) == expected


def test_stream_input_blocks_until_the_loop_feeds_then_reads_to_the_end():
    resumed = []
    stream = StreamInput(b"he", high_water=1 << 20, resume=lambda: resumed.append(1))
    got = []
    reader = threading.Thread(target=lambda: got.append(stream.read()))
    reader.start()
    time.sleep(0.05)
    assert reader.is_alive() and stream.waiting, "read() must wait for the end of the body"
    stream.feed(b"llo")
    stream.feed(None)
    reader.join(5)
    assert got == [b"hello"] and not stream.waiting and stream.woke > 0


def test_stream_input_readline_read_n_and_iteration():
    stream = StreamInput(b"one\ntwo\nthr", high_water=1 << 20, resume=lambda: None)
    stream.feed(b"ee\n")
    stream.feed(None)
    assert stream.read(2) == b"on"
    assert stream.readline() == b"e\n"
    assert stream.readline(2) == b"tw"
    assert list(stream) == [b"o\n", b"three\n"]
    assert stream.read() == b""


def test_stream_input_pauses_the_loop_above_high_water_and_resumes_when_read():
    resumed = []
    stream = StreamInput(b"", high_water=8, resume=lambda: resumed.append(1))
    stream.feed(b"x" * 10)
    assert stream.paused, "the loop must stop reading the socket above high water"
    assert stream.read(7) == b"x" * 7
    assert not stream.paused and resumed == [1]


def test_stream_input_fails_a_blocked_reader_when_the_client_goes_away():
    stream = StreamInput(b"", high_water=1 << 20, resume=lambda: None)
    errors = []

    def read():
        try:
            stream.read(10)
        except ConnectionError as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.05)
    stream.fail(ConnectionError("client went away"))
    reader.join(5)
    assert len(errors) == 1


def test_stream_input_discard_drops_what_arrives_and_resumes_a_paused_loop():
    resumed = []
    stream = StreamInput(b"", high_water=4, resume=lambda: resumed.append(1))
    stream.feed(b"123456")
    assert stream.paused
    stream.discard()
    assert resumed == [1] and not stream.paused
    stream.feed(b"more")
    stream.feed(None)
    assert stream.read() == b""

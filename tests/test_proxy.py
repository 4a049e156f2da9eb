"""Behind a proxy, end to end: forwarded headers (Gunicorn's forwarded_allow_ips,
secure_scheme_headers, forwarder_headers, berth's --forwarded-remote-addr) and the PROXY
protocol (--proxy-protocol, --proxy-allow-from), over real sockets from real source addresses
(127.0.0.2 and 127.0.0.3 are loopback too: one is trusted, the other is not)."""

from __future__ import annotations

import json
import socket
import struct
import time

import pytest
from conftest import BufferedSocket, Server, read_response
from proto_helpers import read_until_closed, wait_for

TRUSTED, UNTRUSTED = "127.0.0.2", "127.0.0.3"
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def connect_from(source: str, port: int, timeout: float = 10.0) -> socket.socket:
    sock = BufferedSocket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def request(path: str = "/env", headers: list[tuple[str, str]] = (), close=False) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: example.com", *(f"{k}: {v}" for k, v in headers)]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def environ_of(sock: socket.socket, headers=(), prefix: bytes = b"") -> dict:
    sock.sendall(prefix + request(headers=headers))
    status, _, body = read_response(sock)
    assert status == 200, body
    return json.loads(body)["str"]


def env_from(source: str, port: int, headers=()) -> dict:
    with connect_from(source, port) as sock:
        return environ_of(sock, headers)


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    srv = Server(["-w", "1", "--threads", "2", "--forwarded-allow-ips", f"{TRUSTED},10.0.0.0/8",
                  "--forwarded-remote-addr", "--access-logformat", "%(h)s %(r)s",
                  "proto_app:app"], tmp_path_factory.mktemp("fwd"))
    yield srv
    srv.stop()


# --- forwarded headers --------------------------------------------------------------------------

def test_a_trusted_proxy_sets_the_scheme_and_an_untrusted_peer_does_not(proxied):
    headers = [("X-Forwarded-Proto", "https")]
    assert env_from(TRUSTED, proxied.port, headers)["wsgi.url_scheme"] == "https"
    assert env_from(UNTRUSTED, proxied.port, headers)["wsgi.url_scheme"] == "http"
    assert env_from(TRUSTED, proxied.port, [("X-Forwarded-Ssl", "on")])["wsgi.url_scheme"] == \
        "https"
    assert env_from(TRUSTED, proxied.port, [("X-Forwarded-Protocol", "ssl")])[
        "wsgi.url_scheme"] == "https"
    # a value other than the configured one means http, as in Gunicorn
    assert env_from(TRUSTED, proxied.port, [("X-Forwarded-Proto", "HTTPS")])[
        "wsgi.url_scheme"] == "http"
    assert env_from(TRUSTED, proxied.port)["wsgi.url_scheme"] == "http"


def test_scheme_headers_that_disagree_get_400_from_a_trusted_peer_only(proxied):
    conflicting = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Ssl", "off")]
    with connect_from(TRUSTED, proxied.port) as sock:
        sock.sendall(request(headers=conflicting))
        raw, closed = read_until_closed(sock, timeout=5)
    assert raw.startswith(b"HTTP/1.1 400 ") and closed
    repeated = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Proto", "http")]
    with connect_from(TRUSTED, proxied.port) as sock:
        sock.sendall(request(headers=repeated))
        raw, closed = read_until_closed(sock, timeout=5)
    assert raw.startswith(b"HTTP/1.1 400 ") and closed
    # the same twice agrees
    same = [("X-Forwarded-Proto", "https"), ("X-Forwarded-Proto", "https")]
    assert env_from(TRUSTED, proxied.port, same)["wsgi.url_scheme"] == "https"
    # from an untrusted peer they are just headers
    env = env_from(UNTRUSTED, proxied.port, conflicting)
    assert env["wsgi.url_scheme"] == "http" and env["HTTP_X_FORWARDED_SSL"] == "off"


def test_a_scheme_header_line_is_judged_whole_as_gunicorn_does(proxied):
    # Gunicorn compares each line's whole value with the configured one: a list on one line
    # (a proxy chain that appends) is not "https", so http, never a 400
    for value in ("https, http", "http, https", "https,https"):
        env = env_from(TRUSTED, proxied.port, [("X-Forwarded-Proto", value)])
        assert env["wsgi.url_scheme"] == "http", value
        assert env["HTTP_X_FORWARDED_PROTO"] == value
    # the other scheme headers too; and one line that agrees with another is no conflict
    assert env_from(TRUSTED, proxied.port, [("X-Forwarded-Ssl", "on, on")])[
        "wsgi.url_scheme"] == "http"
    assert env_from(TRUSTED, proxied.port, [("X-Forwarded-Proto", "https, http"),
                                            ("X-Forwarded-Ssl", "off")])[
        "wsgi.url_scheme"] == "http"
    # lines are still judged one by one: "https, http" (http) and "https" disagree
    with connect_from(TRUSTED, proxied.port) as sock:
        sock.sendall(request(headers=[("X-Forwarded-Proto", "https, http"),
                                      ("X-Forwarded-Proto", "https")]))
        raw, closed = read_until_closed(sock, timeout=5)
    assert raw.startswith(b"HTTP/1.1 400 ") and closed


def test_the_client_is_the_right_most_untrusted_forwarded_address(proxied):
    # 6.6.6.6 was written by the client itself; 10.1.2.3 is a trusted proxy (10.0.0.0/8)
    env = env_from(TRUSTED, proxied.port, [("X-Forwarded-For", "6.6.6.6, 203.0.113.7, 10.1.2.3")])
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.7", "0")
    # repeated fields count as one list, in order
    env = env_from(TRUSTED, proxied.port, [("X-Forwarded-For", "6.6.6.6"),
                                           ("X-Forwarded-For", "198.51.100.4")])
    assert env["REMOTE_ADDR"] == "198.51.100.4"
    env = env_from(TRUSTED, proxied.port, [("Forwarded", 'for="[2001:db8::1]:4711";proto=https')])
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("2001:db8::1", "4711")
    # every hop trusted: no client is named, the peer stays; the left-most is never taken
    env = env_from(TRUSTED, proxied.port, [("X-Forwarded-For", "10.9.9.9, 10.1.2.3")])
    assert env["REMOTE_ADDR"] == TRUSTED
    # a hop that cannot be judged stops the walk
    env = env_from(TRUSTED, proxied.port, [("X-Forwarded-For", "6.6.6.6, unknown")])
    assert env["REMOTE_ADDR"] == TRUSTED


def test_an_untrusted_peer_cannot_name_the_client(proxied):
    env = env_from(UNTRUSTED, proxied.port, [("X-Forwarded-For", "203.0.113.7"),
                                             ("Forwarded", "for=203.0.113.7")])
    assert env["REMOTE_ADDR"] == UNTRUSTED and env["REMOTE_PORT"] != "0"


def test_the_access_log_host_is_the_environs(proxied):
    env_from(TRUSTED, proxied.port, [("X-Forwarded-For", "203.0.113.99")])
    env_from(UNTRUSTED, proxied.port, [("X-Forwarded-For", "203.0.113.98")])
    wait_for(lambda: "203.0.113.99 GET /env" in proxied.stdout(), timeout=5)
    wait_for(lambda: f"{UNTRUSTED} GET /env" in proxied.stdout(), timeout=5)
    assert "203.0.113.98 GET" not in proxied.stdout()


def test_without_the_flag_remote_addr_stays_the_peer_and_star_reads_one_hop(berth):
    srv = berth(["-w", "1", "proto_app:app"])  # defaults: 127.0.0.1 trusted, flag off
    env = env_from("127.0.0.1", srv.port, [("X-Forwarded-For", "203.0.113.7"),
                                           ("X-Forwarded-Proto", "https")])
    assert (env["REMOTE_ADDR"], env["wsgi.url_scheme"]) == ("127.0.0.1", "https")
    assert env["HTTP_X_FORWARDED_FOR"] == "203.0.113.7"
    srv = berth(["-w", "1", "--forwarded-allow-ips", "*", "--forwarded-remote-addr",
                 "proto_app:app"])
    env = env_from(UNTRUSTED, srv.port, [("X-Forwarded-For", "6.6.6.6, 10.0.0.1, 203.0.113.7")])
    assert env["REMOTE_ADDR"] == "203.0.113.7"


def test_forwarded_allow_ips_comes_from_gunicorns_variable(berth):
    srv = berth(["-w", "1", "proto_app:app"], env={"FORWARDED_ALLOW_IPS": "127.0.0.9"})
    env = env_from("127.0.0.1", srv.port, [("X-Forwarded-Proto", "https")])
    assert env["wsgi.url_scheme"] == "http"


def test_forwarder_headers_from_a_trusted_proxy_set_script_name(proxied):
    def env_at(source, path, headers):
        with connect_from(source, proxied.port) as sock:
            sock.sendall(request(path, headers))
            status, _, body = read_response(sock)
        return status, (json.loads(body)["str"] if status == 200 else body)

    # a '_' name, as Gunicorn's forwarder_headers default (SCRIPT_NAME,PATH_INFO) allows
    status, env = env_at(TRUSTED, "/app/env/x", [("SCRIPT_NAME", "/app")])
    assert status == 200 and (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/env/x")
    assert env["HTTP_SCRIPT_NAME"] == "/app"
    # from another peer, a '_' name is dropped (header_map drop), as any other
    status, env = env_at(UNTRUSTED, "/env/x", [("SCRIPT_NAME", "/app")])
    assert status == 200 and env["SCRIPT_NAME"] == "" and "HTTP_SCRIPT_NAME" not in env
    # a path that does not start with it: the proxy is misconfigured, the request refused
    status, _ = env_at(TRUSTED, "/env", [("SCRIPT_NAME", "/app")])
    assert status == 400
    # a dash name is an ordinary header, never SCRIPT_NAME
    status, env = env_at(TRUSTED, "/env", [("Script-Name", "/app")])
    assert env["SCRIPT_NAME"] == "" and env["HTTP_SCRIPT_NAME"] == "/app"


def test_forwarder_headers_are_configurable(berth):
    srv = berth(["-w", "1", "--forwarder-headers", "REMOTE_USER", "proto_app:app"])
    env = env_from("127.0.0.1", srv.port, [("REMOTE_USER", "alice"), ("SCRIPT_NAME", "/x")])
    assert env["HTTP_REMOTE_USER"] == "alice"
    assert "HTTP_SCRIPT_NAME" not in env and env["SCRIPT_NAME"] == ""


def test_configured_proxy_header_names_match_in_any_case(berth, tmp_path):
    # Header names are case-insensitive (RFC 9110 5.1). Gunicorn compares the configured names
    # as written with upper-cased ones, so a name written 'X-Forwarded-Proto' never matched
    # there; berth takes it to mean that header (README, "Behind a proxy").
    (tmp_path / "proxy.conf.py").write_text(
        "secure_scheme_headers = {'X-Forwarded-Proto': 'https'}\n"
        "forwarder_headers = 'Remote_User'\n")
    srv = berth(["-w", "1", "-c", str(tmp_path / "proxy.conf.py"), "proto_app:app"])
    env = env_from("127.0.0.1", srv.port, [("X-Forwarded-Proto", "https"),
                                           ("REMOTE_USER", "alice")])
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTP_REMOTE_USER"] == "alice"


# --- the PROXY protocol -------------------------------------------------------------------------

def v2(command: int, family: int, addresses: bytes) -> bytes:
    return V2_SIG + bytes([0x20 | command, family]) + struct.pack("!H", len(addresses)) + \
        addresses


def v2_tcp4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return v2(1, 0x11, socket.inet_aton(src) + socket.inet_aton(dst) +
              struct.pack("!HH", sport, dport))


def v2_tcp6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return v2(1, 0x21, socket.inet_pton(socket.AF_INET6, src) +
              socket.inet_pton(socket.AF_INET6, dst) + struct.pack("!HH", sport, dport))


@pytest.fixture(scope="module")
def pp(tmp_path_factory):
    srv = Server(["-w", "1", "--proxy-protocol", "--proxy-allow-from", f"{TRUSTED},10.0.0.0/8",
                  "--log-level", "info", "proto_app:app"], tmp_path_factory.mktemp("pp"))
    yield srv
    srv.stop()


def proxy_keys(env: dict) -> tuple:
    return tuple(env.get(k) for k in ("REMOTE_ADDR", "REMOTE_PORT", "PROXY_PROTOCOL",
                                      "PROXY_ADDR", "PROXY_PORT"))


def test_a_v1_header_names_the_client_for_every_request_of_the_connection(pp):
    with connect_from(TRUSTED, pp.port) as sock:
        header = b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n"
        env = environ_of(sock, prefix=header)
        assert proxy_keys(env) == ("203.0.113.7", "51000", "TCP4", "192.0.2.1", "443")
        for _ in range(2):  # keep-alive: still the client the header named
            assert proxy_keys(environ_of(sock)) == proxy_keys(env)
    with connect_from(TRUSTED, pp.port) as sock:
        header = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 8443\r\n"
        assert proxy_keys(environ_of(sock, prefix=header)) == (
            "2001:db8::7", "51000", "TCP6", "2001:db8::1", "8443")


@pytest.mark.parametrize("header, expected", [
    (v2_tcp4("203.0.113.8", "192.0.2.1", 40000, 80),
     ("203.0.113.8", "40000", "TCP4", "192.0.2.1", "80")),
    (v2_tcp6("2001:db8::8", "2001:db8::1", 40001, 443),
     ("2001:db8::8", "40001", "TCP6", "2001:db8::1", "443")),
])
def test_a_v2_header_names_the_client(pp, header, expected):
    with connect_from(TRUSTED, pp.port) as sock:
        assert proxy_keys(environ_of(sock, prefix=header)) == expected


def test_a_v2_local_header_keeps_the_real_peer(pp):
    with connect_from(TRUSTED, pp.port) as sock:
        env = environ_of(sock, prefix=v2(0, 0x00, b""))
        assert env["REMOTE_ADDR"] == TRUSTED and env["PROXY_PROTOCOL"] == "LOCAL"
        assert "PROXY_ADDR" not in env


def test_a_header_in_pieces_is_put_together(pp):
    data = v2_tcp4("203.0.113.9", "192.0.2.1", 40002, 80) + request()
    with connect_from(TRUSTED, pp.port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, 30, 3):  # the 28-byte header and a little more, 3 bytes at a time
            sock.sendall(data[i:i + 3])
            time.sleep(0.01)
        sock.sendall(data[30:])
        status, _, body = read_response(sock)
    assert status == 200 and json.loads(body)["str"]["REMOTE_ADDR"] == "203.0.113.9"


def test_a_connection_without_a_header_is_plain_http(pp):
    env = env_from(UNTRUSTED, pp.port)  # a probe straight to the port, from anywhere
    assert env["REMOTE_ADDR"] == UNTRUSTED and "PROXY_PROTOCOL" not in env


def test_a_header_from_a_peer_not_allowed_gets_403_and_the_app_never_sees_it(pp):
    with connect_from(UNTRUSTED, pp.port) as sock:
        sock.sendall(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n" + request())
        raw, closed = read_until_closed(sock, timeout=5)
    assert raw.startswith(b"HTTP/1.1 403 ") and closed
    assert raw.count(b"HTTP/1.1") == 1
    wait_for(lambda: "not in proxy_allow_ips" in pp.stderr(), timeout=5)


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 203.0.113 192.0.2.1 51000 443\r\n",  # a bad address
    b"PROXY TCP4 203.0.113.7 192.0.2.1 99999 443\r\n",  # a bad port
    b"PROXY TCP4  203.0.113.7 192.0.2.1 1 2\r\n",  # two spaces
    b"PROXY " + b"X" * 120,  # too long for v1
    V2_SIG + b"\x21\x11\x00\x05" + b"\x00" * 5,  # TCP4 with a 5-byte address block
    V2_SIG + b"\x31\x11\x00\x0c" + b"\x00" * 12,  # version 3
])
def test_a_bad_header_closes_the_connection_unanswered_and_is_logged(pp, header):
    with connect_from(TRUSTED, pp.port) as sock:
        sock.sendall(header + request())
        raw, closed = read_until_closed(sock, timeout=5)
    assert (raw, closed) == (b"", True)
    wait_for(lambda: "bad PROXY protocol header" in pp.stderr(), timeout=5)


def test_a_truncated_header_is_logged(pp):
    with connect_from(TRUSTED, pp.port) as sock:
        sock.sendall(b"PROXY TCP4 203.0.113.7 19")
        sock.shutdown(socket.SHUT_WR)
        raw, closed = read_until_closed(sock, timeout=5)
    assert (raw, closed) == (b"", True)
    wait_for(lambda: "truncated PROXY protocol header" in pp.stderr(), timeout=5)


def test_in_v1_mode_a_v2_header_is_not_read_as_one(berth):
    srv = berth(["-w", "1", "--proxy-protocol", "v1", "--proxy-allow-from", "*",
                 "proto_app:app"])
    with connect_from(TRUSTED, srv.port) as sock:
        sock.sendall(v2_tcp4("203.0.113.8", "192.0.2.1", 40000, 80) + request())
        raw, closed = read_until_closed(sock, timeout=5)
    assert raw.startswith(b"HTTP/1.1 400 ") and closed
    with connect_from(TRUSTED, srv.port) as sock:
        env = environ_of(sock, prefix=b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n")
        assert env["REMOTE_ADDR"] == "203.0.113.7"


def test_behind_a_tcp_proxy_the_client_cannot_name_itself_with_x_forwarded_for(berth):
    # HAProxy in TCP mode (send-proxy) on a trusted address: it relays the client's bytes and
    # adds no X-Forwarded-For, so the one the request carries is the client's own. The
    # right-most entry was written by the client the PROXY header named: read only when that
    # client is itself a trusted proxy (an HTTP proxy in front of the TCP one).
    srv = berth(["-w", "1", "--proxy-protocol", "--proxy-allow-from", TRUSTED,
                 "--forwarded-allow-ips", f"{TRUSTED},10.0.0.0/8", "--forwarded-remote-addr",
                 "proto_app:app"])
    spoof = [("X-Forwarded-For", "1.2.3.4")]
    with connect_from(TRUSTED, srv.port) as sock:
        env = environ_of(sock, spoof, prefix=b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n")
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.7", "51000")
        assert environ_of(sock, spoof)["REMOTE_ADDR"] == "203.0.113.7"  # the next request too
    with connect_from(TRUSTED, srv.port) as sock:  # v2 likewise
        env = environ_of(sock, spoof, prefix=v2_tcp4("203.0.113.8", "192.0.2.1", 40000, 80))
        assert env["REMOTE_ADDR"] == "203.0.113.8"
    with connect_from(TRUSTED, srv.port) as sock:  # the named client is a trusted proxy
        env = environ_of(sock, spoof, prefix=b"PROXY TCP4 10.0.0.9 192.0.2.1 51000 443\r\n")
        assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("1.2.3.4", "0")
    with connect_from(TRUSTED, srv.port) as sock:  # LOCAL names none: the peer wrote it
        assert environ_of(sock, spoof, prefix=v2(0, 0x00, b""))["REMOTE_ADDR"] == "1.2.3.4"
    assert env_from(TRUSTED, srv.port, spoof)["REMOTE_ADDR"] == "1.2.3.4"  # no header


def test_a_stalled_header_times_out_under_the_header_timeout(berth):
    srv = berth(["-w", "1", "--proxy-protocol", "--header-timeout", "1", "proto_app:app"])
    with connect_from("127.0.0.1", srv.port) as sock:
        sock.sendall(b"PROXY TCP4 203.0.113.7 ")
        started = time.monotonic()
        raw, closed = read_until_closed(sock, timeout=10)
    assert closed and time.monotonic() - started < 8
    # logged, as a header the client closed in the middle of is (it used to close silently)
    srv.wait_for_log("truncated PROXY protocol header from 127.0.0.1 (23 bytes; nothing more "
                     "within --header-timeout, 1 s); closing the connection")

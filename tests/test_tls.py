"""TLS, end to end: certificates made here by trustme, real clients (requests, curl,
openssl s_client, Python's ssl), the handshake on the loop thread."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import time

import pytest
from conftest import Server, free_port, read_response
from proto_helpers import (
    get_request,
    pids_children,
    proto_args,
    tls_hello,
    wait_for,
    worker_uss,
)
from test_cli import run_berth as run_cli

trustme = pytest.importorskip("trustme")
requests = pytest.importorskip("requests")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        d / "server.pem")
    ca.cert_pem.write_to_path(d / "ca.pem")
    ca.issue_cert("client@example.com").private_key_and_cert_chain_pem.write_to_path(
        d / "client.pem")
    other = trustme.CA()  # a client certificate that the server's CA did not sign
    other.issue_cert("stranger@example.com").private_key_and_cert_chain_pem.write_to_path(
        d / "stranger.pem")
    return d


@pytest.fixture(scope="module")
def tls(tmp_path_factory, certs):
    srv = Server(["-w", "1", "--threads", "1", "--header-timeout", "2",
                  "--certfile", str(certs / "server.pem"), "proto_app:app"],
                 tmp_path_factory.mktemp("tls"))
    yield srv
    srv.stop()


def url(srv, path: str) -> str:
    return f"https://127.0.0.1:{srv.port}{path}"


def test_requests_over_tls_keep_alive_and_the_scheme_is_https(tls, certs):
    ca = str(certs / "ca.pem")  # (per request: a session's verify loses to $REQUESTS_CA_BUNDLE)
    with requests.Session() as s:
        for _ in range(3):
            r = s.get(url(tls, "/hello"), verify=ca, timeout=10)
            assert (r.status_code, r.content) == (200, b"Hello, world!\n")
        env = s.get(url(tls, "/env"), verify=ca, timeout=10).json()["str"]
    assert env["wsgi.url_scheme"] == "https"
    assert "berth.peercert" not in env and "SSL_CLIENT_CERT" not in env
    assert "https://127.0.0.1:" in tls.stderr()  # the ready line names the scheme


def test_bodies_both_ways_and_a_file_without_sendfile(tls, certs, tmp_path):
    ca = str(certs / "ca.pem")
    body = os.urandom(3 << 20)
    r = requests.post(url(tls, "/sha256"), data=body, verify=ca, timeout=30)
    assert r.json()["sha256"] == hashlib.sha256(body).hexdigest()
    r = requests.get(url(tls, "/big?n=5000000"), verify=ca, timeout=30)
    assert len(r.content) == 5_000_000
    f = tmp_path / "f.bin"
    f.write_bytes(os.urandom(1 << 20) * 3)
    r = requests.get(url(tls, f"/file?path={f}&cl=1"), verify=ca, timeout=30)
    assert r.content == f.read_bytes()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl(tls, certs):
    out = subprocess.run(["curl", "-sS", "--cacert", str(certs / "ca.pem"),
                          url(tls, "/hello"), url(tls, "/hello")],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout == b"Hello, world!\n" * 2


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_an_idle_keep_alive_connection_does_not_keep_the_largest_response_it_sent(
        berth, certs, kind):
    """8 clients each read a 8 MB response over TLS (one body: a list, one ASGI message),
    then stay idle. An SSL object's outgoing memory BIO keeps the capacity of the most it
    held at once: a body encrypted whole (WSGI), or while the socket was paused for the
    client (asyncio's and uvloop's SSL transports encrypt all they are given), left each
    idle connection 7.8 MiB. Now a body is encrypted a piece at a time (64 KiB), and under
    -k asgi paced by the transport's flow control. (The worker runs with a fixed mmap
    threshold: buffers it frees go back to the system, and USS counts what it holds.)"""
    srv = berth(["-w", "1", "--keep-alive", "60", "--access-logfile", "none",
                 "--certfile", str(certs / "server.pem"), *proto_args(kind)],
                env={"MALLOC_MMAP_THRESHOLD_": "131072"})
    (worker,) = pids_children(srv.pid)
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    request = get_request("/big?n=8000000&list=1")

    def client() -> ssl.SSLSocket:
        sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", srv.port), timeout=10),
                               server_hostname="127.0.0.1")
        sock.sendall(request)
        status, _, body = read_response(sock)
        assert (status, len(body)) == (200, 8000000)
        return sock

    client().close()  # (what the first request makes once)
    before = worker_uss(worker)
    socks = []
    try:
        for _ in range(8):
            socks.append(client())
        time.sleep(0.5)
        grew = worker_uss(worker) - before
    finally:
        for sock in socks:
            sock.close()
    print(f"{kind}: {grew >> 10} KiB for 8 idle TLS connections after 8 MB each")
    assert grew < 24 << 20, f"{grew >> 20} MiB held by 8 idle TLS keep-alive connections"


def test_a_stalled_handshake_holds_no_thread_and_times_out(tls, certs):
    # --threads 1: the app runs on the loop thread; five clients stop in the middle of
    # their handshake, and a normal client is served at once
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    stalled = []
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", tls.port), timeout=10)
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello, cut short
        stalled.append(s)
    try:
        t0 = time.monotonic()
        reply = tls_hello(tls.port, ctx, host=b"x")
        assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"Hello, world!\n")
        print(f"served in {time.monotonic() - t0:.3f} s beside 5 stalled handshakes")
        for s in stalled:  # closed at --header-timeout (2 s)
            s.settimeout(10)
            assert s.recv(100) == b""
    finally:
        for s in stalled:
            s.close()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_openssl_s_client_that_sends_nothing_is_closed_at_the_header_timeout(tls, certs):
    proc = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{tls.port}",
                             "-CAfile", str(certs / "ca.pem"), "-quiet"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=15)  # stdin stays open: it sends nothing
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("berth did not close a silent TLS client")
    assert b"verify return:1" in err or b"depth=0" in err, err


def test_plain_http_to_the_tls_port_is_closed(tls):
    with socket.create_connection(("127.0.0.1", tls.port), timeout=10) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        data = s.recv(65536)
    assert not data.startswith(b"HTTP/1.1 200")


def test_a_verified_client_certificate_reaches_the_app(berth, certs):
    srv = berth(["-w", "1", "--certfile", str(certs / "server.pem"), "--cert-reqs", "2",
                 "--ca-certs", str(certs / "ca.pem"), "proto_app:app"])
    ca = str(certs / "ca.pem")
    env = requests.get(url(srv, "/env"), verify=ca, cert=str(certs / "client.pem"),
                       timeout=10).json()
    assert env["str"]["SSL_CLIENT_CERT"].startswith("-----BEGIN CERTIFICATE-----")
    assert "client@example.com" in env["other"]["berth.peercert"]
    for cert in (None, str(certs / "stranger.pem")):  # required: none, or a stranger's, fails
        with pytest.raises(requests.exceptions.RequestException):
            requests.get(url(srv, "/hello"), verify=ca, cert=cert, timeout=10)
    assert requests.get(url(srv, "/hello"), verify=ca, cert=str(certs / "client.pem"),
                        timeout=10).status_code == 200


def test_a_refused_client_certificate_is_said_at_debug(berth, certs):
    """A handshake that fails (no client certificate where one is required) left no trace at
    any log level (the ASGI worker says it at debug, Gunicorn warns): an operator setting up
    mTLS could not see why clients were cut."""
    srv = berth(["-w", "1", "--log-level", "debug", "--certfile", str(certs / "server.pem"),
                 "--cert-reqs", "2", "--ca-certs", str(certs / "ca.pem"), "proto_app:app"])
    with pytest.raises(requests.exceptions.RequestException):
        requests.get(url(srv, "/hello"), verify=str(certs / "ca.pem"), timeout=10)
    assert wait_for(lambda: "TLS connection from 127.0.0.1 not established" in srv.stderr(), 5)
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in srv.stderr()


def test_the_ssl_context_hook_builds_the_context(berth, certs, tmp_path):
    (tmp_path / "tlsconf.py").write_text(
        "import ssl\n"
        "def ssl_context(config, default_ssl_context_factory):\n"
        "    context = default_ssl_context_factory()\n"
        "    context.minimum_version = ssl.TLSVersion.TLSv1_3\n"
        "    return context\n")
    srv = berth(["-w", "1", "-c", str(tmp_path / "tlsconf.py"), "--certfile",
                 str(certs / "server.pem"), "--ssl-version", "TLSv1", "proto_app:app"])
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        assert s.version() == "TLSv1.3"
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError), \
            socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1"):
        pass
    # --ssl-version is ignored, as in Gunicorn: said at start, never a lower minimum
    wait_for(lambda: "ssl_version (--ssl-version, from cli) is not needed" in srv.stderr(), 5)


def test_a_proxy_protocol_header_comes_before_the_handshake(berth, certs):
    srv = berth(["-w", "1", "--certfile", str(certs / "server.pem"), "--proxy-protocol",
                 "--proxy-allow-from", "127.0.0.1", "proto_app:app"])
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))

    def env_through(header: bytes) -> dict:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw:
            raw.sendall(header)
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"GET /env HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                reply = b""
                while chunk := s.recv(65536):
                    reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 "), reply[:200]
        return json.loads(reply.split(b"\r\n\r\n", 1)[1])["str"]

    env = env_through(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n")
    assert (env["REMOTE_ADDR"], env["PROXY_PROTOCOL"], env["wsgi.url_scheme"]) == (
        "203.0.113.7", "TCP4", "https")
    env = env_through(b"")  # no header: TLS straight away
    assert env["REMOTE_ADDR"] == "127.0.0.1" and "PROXY_PROTOCOL" not in env


def run_berth(args, cwd):
    return run_cli(["-b", f"127.0.0.1:{free_port()}", *args, "proto_app:app"], timeout=30,
                   cwd=cwd)


@pytest.mark.parametrize("args, words", [
    (["--certfile", "missing.pem"], "--certfile (certfile) 'missing.pem'"),
    (["--keyfile", "k.pem"], "--keyfile (keyfile) needs --certfile"),
    (["--cert-reqs", "3"], "0 (none), 1 (optional) or 2 (required)"),
    # the file that cannot be read is the one named (it was --certfile and --keyfile, with
    # OpenSSL's bare "[Errno 2] No such file or directory", for a missing --ca-certs too)
    (["--certfile", "CERTS/server.pem", "--ca-certs", "missing-ca.pem", "--cert-reqs", "2"],
     "--ca-certs (ca_certs) 'missing-ca.pem': cannot read it: No such file or directory"),
    (["--certfile", "CERTS/server.pem", "--keyfile", "missing-key.pem"],
     "--keyfile (keyfile) 'missing-key.pem': cannot read it: No such file or directory"),
    # 0 was taken: -k asgi then failed every TLS handshake, unlogged (asyncio refuses a
    # handshake timeout of 0), and -k gthread closed every head not whole at the next tick
    (["--check-config", "--certfile", "CERTS/server.pem", "--header-timeout", "0"],
     "--header-timeout (header_timeout): invalid value '0'"),
])
def test_bad_tls_settings_exit_2_with_one_line(tmp_path, certs, args, words):
    args = [a.replace("CERTS", str(certs)) for a in args]
    res = run_berth(args, str(tmp_path))
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert words in lines[0]


def test_a_key_that_does_not_match_exits_2(tmp_path, certs):
    other = trustme.CA().issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(tmp_path / "otherkey.pem")
    other.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    res = run_berth(["--certfile", str(certs / "server.pem"), "--keyfile",
                     str(tmp_path / "otherkey.pem")], str(tmp_path))
    assert res.returncode == 2 and "cannot make the TLS context" in res.stderr, res.stderr
    json.dumps(res.stderr)  # (printable)


def test_an_encrypted_key_exits_2_naming_it_and_the_ssl_context_hook_can_load_it(
        berth, tmp_path):
    """OpenSSL asks for an encrypted key's pass phrase on the terminal: berth printed
    `Enter PEM pass phrase:` and then an errno that named nothing (a container has no
    terminal; at one, each process would ask). Now one line names the key and the ways out;
    the ssl_context hook can load the key with its pass phrase."""
    from cryptography.hazmat.primitives import serialization

    issued = trustme.CA().issue_cert("127.0.0.1")
    key = serialization.load_pem_private_key(issued.private_key_pem.bytes(), None)
    (tmp_path / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    issued.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    tls_args = ["--certfile", str(tmp_path / "cert.pem"), "--keyfile", str(tmp_path / "key.pem")]
    res = run_berth(tls_args, str(tmp_path))
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert lines[0].startswith(f"berth: error: --keyfile (keyfile) '{tmp_path / 'key.pem'}': "
                               "the private key is encrypted"), lines[0]
    assert "pass phrase" in lines[0] and "ssl_context" in lines[0]
    (tmp_path / "tlsconf.py").write_text(
        "import ssl\n"
        "def ssl_context(config, default_ssl_context_factory):\n"
        "    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)\n"
        "    context.load_cert_chain(config.certfile, config.keyfile, password='secret')\n"
        "    return context\n")
    srv = berth(["-w", "1", "-c", str(tmp_path / "tlsconf.py"), *tls_args, "proto_app:app"])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
            ctx.wrap_socket(raw) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 200")


def test_a_request_over_its_deadline_gets_its_504_encrypted(berth, certs):
    """The 504 berth answers for a request whose app is silent past --timeout (and the 503
    for one shed in a drain) was written on the raw socket: over TLS the client read
    plaintext where a record belongs (curl: "wrong version number") instead of the answer."""
    srv = berth(["-w", "1", "--threads", "2", "--timeout", "1", "--certfile",
                 str(certs / "server.pem"), "proto_app:app"])
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=15) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        s.sendall(b"GET /sleep?s=4 HTTP/1.1\r\nHost: a\r\n\r\n")
        status, headers, body = read_response(s)
    assert (status, body) == (504, b"504 Gateway Timeout\n"), body
    assert headers["connection"] == "close"


@pytest.mark.parametrize("kind", ["gthread", "asgi"])
def test_a_certificate_renewed_in_place_is_served_to_new_connections(berth, tmp_path, kind):
    # Gunicorn builds its context for each connection: a certificate renewed in place (certbot,
    # a Secret that cert-manager updates) reaches the next client without a restart. berth
    # looks at the files at most once a second.
    ca = trustme.CA()
    live = tmp_path / "live.pem"

    def install(unit: str) -> None:  # (as certbot and a Secret's mount do: a new file, renamed)
        fresh = tmp_path / "fresh.pem"
        fresh.write_bytes(ca.issue_cert("127.0.0.1", organization_unit_name=unit)
                          .private_key_and_cert_chain_pem.bytes())
        os.replace(fresh, live)

    install("one")
    app = "proto_app:app" if kind == "gthread" else "asgi_app:app"
    srv = berth(["-w", "1", "-k", kind, "--certfile", str(live), app])
    ctx = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())

    def unit() -> str:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            return dict(rdn[0] for rdn in s.getpeercert()["subject"])["organizationalUnitName"]

    assert unit() == "one"
    install("two")
    assert wait_for(lambda: unit() == "two", 10)
    # files that do not load (half written) keep the certificate served, said once
    live.write_text("-----BEGIN CERTIFICATE-----\n")
    assert wait_for(lambda: unit() == "two" and "TLS files changed and do not load" in
                    srv.stderr(), 10)  # (a look is made on an accept)
    install("three")
    assert wait_for(lambda: unit() == "three", 10)
    assert srv.stderr().count("TLS files changed and do not load") == 1


def test_the_server_ends_its_side_with_a_close_notify(tls, certs, berth):
    # RFC 8446 6.1: a close_notify before the write side closes. Without one, a body that
    # ends with the connection (HTTP/1.0, no Content-Length) cannot be told from a cut one:
    # a client that checks (Python's ssl without suppress_ragged_eofs) got SSLEOFError.
    # (-k asgi sends one: asyncio's SSL transport does.)
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))

    def ending(request: bytes) -> tuple[bytes, str]:
        with socket.create_connection(("127.0.0.1", tls.port), timeout=10) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1",
                                suppress_ragged_eofs=False) as s:
            s.sendall(request)
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except ssl.SSLEOFError:
                return data, "cut"
            return data, "close_notify"

    data, end = ending(b"GET /stream?n=3 HTTP/1.0\r\nHost: h\r\n\r\n")  # framed by the end
    assert data.endswith(b"part-2\n") and end == "close_notify"
    data, end = ending(b"GET /hello HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert data.endswith(b"Hello, world!\n") and end == "close_notify"
    data, end = ending(b"GET /hello HTTP/1.1\r\nHost: h\r\n\r\nNOT A REQUEST\r\n\r\n")
    assert b" 400 " in data and end == "close_notify"  # (an error response, then lingering)
    # an idle keep-alive connection the server closes
    srv = berth(["-w", "1", "--keep-alive", "1", "--certfile", str(certs / "server.pem"),
                 "proto_app:app"])
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False) as s:
        s.sendall(b"GET /hello HTTP/1.1\r\nHost: h\r\n\r\n")
        status, _, _ = read_response(s)
        assert status == 200
        assert s.recv(100) == b""  # (SSLEOFError without a close_notify)

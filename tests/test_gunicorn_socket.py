"""environ["gunicorn.socket"]: an app (a WebSocket library: Flask-Sock through
simple-websocket) takes the connection over, as it does under Gunicorn's gthread worker
(berth/worker/hijack.py). Real WebSocket clients against the Flask app tests/apps/sock_app.py."""

from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import sys
import time

import pytest
from conftest import APPS, connect, free_port, read_response
from proto_helpers import http_get, wait_for

pytest.importorskip("flask_sock")
websockets_sync = pytest.importorskip("websockets.sync.client")
from websockets.exceptions import ConnectionClosed  # noqa: E402


def ws_url(srv, path: str, scheme: str = "ws") -> str:
    return f"{scheme}://127.0.0.1:{srv.port}{path}"


def read_head(sock) -> bytes:
    """What the server sent up to the end of its response head (and any bytes after it)."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    return head


def start(berth, *args):
    return berth(["-w", "1", "--access-logfile", "-", *args, "sock_app:app"])


@pytest.mark.parametrize("threads", ["4", "1"])
def test_flask_sock_echoes_over_the_socket_the_app_takes(berth, threads):
    srv = start(berth, "--threads", threads)
    with websockets_sync.connect(ws_url(srv, "/echo"), open_timeout=5, close_timeout=5) as ws:
        for message in ("one", "two" * 1000, "three"):
            ws.send(message)
            assert ws.recv(timeout=5) == message
        ws.send("bye")  # the handler returns: the server closes the WebSocket
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    err = srv.stderr()
    assert "Error handling request" not in err and "Traceback" not in err, err
    # nothing of berth's own reached the socket: no access log line for it, as in Gunicorn
    assert '"GET /echo' not in err, err
    assert http_get(srv.port, "/peer")[0] == 200  # the worker goes on


def test_the_worker_serves_other_requests_while_websockets_are_open(berth):
    """Each WebSocket holds an app thread for its life, as in Gunicorn's gthread worker; the
    loop goes on serving everyone else."""
    srv = start(berth, "--threads", "4")
    kept = connect(srv.port)
    opened = []
    with contextlib.ExitStack() as stack:
        for i in range(3):
            # (requests in a row first: the loop thread answers them itself, with an app thread
            # standing by, so the first handshake is taken from the loop thread's own app call;
            # the next ones from app threads, once that call has lost the loop to one)
            for _ in range(20):
                kept.sendall(b"GET /peer HTTP/1.1\r\nHost: h\r\n\r\n")  # (no Upgrade)
                assert read_response(kept)[0] == 200
            ws = stack.enter_context(websockets_sync.connect(
                ws_url(srv, "/echo"), open_timeout=5, close_timeout=5))
            ws.send(f"hi {i}")
            opened.append(ws)
        for _ in range(20):
            status, _, body = http_get(srv.port, "/peer", timeout=5)
            assert (status, body) == (200, b"none")
        for i, ws in enumerate(opened):  # all still open, each its own
            assert ws.recv(timeout=5) == f"hi {i}"
    kept.close()


def test_the_server_may_speak_first_and_close(berth):
    srv = start(berth, "--threads", "2")
    with websockets_sync.connect(ws_url(srv, "/greet?name=berth"), open_timeout=5,
                                 close_timeout=5) as ws:
        assert ws.recv(timeout=5) == "hello berth"
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000


def test_reading_the_address_takes_nothing_and_a_kept_connection_can_upgrade_later(berth):
    """gunicorn.socket is in the environ of a request that asks to upgrade (berth's one
    difference: Gunicorn puts it in every environ; see README)."""
    srv = start(berth, "--threads", "4")
    sock = connect(srv.port)
    try:
        sock.sendall(b"GET /peer HTTP/1.1\r\nHost: h\r\n\r\n")
        assert read_response(sock)[:3:2] == (200, b"none")
        for _ in range(3):  # an ordinary response each time: the socket stays berth's
            sock.sendall(b"GET /peer HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n")
            status, _, body = read_response(sock)
            assert (status, body) == (200, b"127.0.0.1")
        # then, on the same connection, a WebSocket handshake
        sock.sendall(b"GET /greet?name=again HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 "), head
        assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head  # (RFC 6455's example key's accept)
        frame = head.partition(b"\r\n\r\n")[2]
        deadline = time.monotonic() + 5
        while len(frame) < 13 and time.monotonic() < deadline:
            frame += sock.recv(4096)
        assert frame[:2] == b"\x81\x0b" and frame[2:13] == b"hello again"  # a text frame
    finally:
        sock.close()


def test_flask_sock_over_tls(berth, tmp_path):
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    certfile, cafile = tmp_path / "cert.pem", tmp_path / "ca.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(certfile))
    ca.cert_pem.write_to_path(str(cafile))
    srv = start(berth, "--threads", "4", "--certfile", str(certfile))
    ctx = ssl.create_default_context(cafile=str(cafile))
    with websockets_sync.connect(ws_url(srv, "/echo", "wss"), ssl=ctx, open_timeout=5,
                                 close_timeout=5) as ws:
        for message in ("one", "x" * 100_000, "three"):
            ws.send(message)
            assert ws.recv(timeout=5) == message
        ws.send("bye")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
    err = srv.stderr()
    assert "Traceback" not in err, err


def test_recv_into_over_tls_reads_plaintext(berth, tmp_path):
    """recv_into on the socket the app takes over TLS gets the client's plaintext (the real
    socket's would read the TLS records themselves)."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    certfile = tmp_path / "cert.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(certfile))
    srv = start(berth, "--threads", "4", "--certfile", str(certfile))
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"GET /into HTTP/1.1\r\nHost: h\r\nUpgrade: x-raw\r\n"
                     b"Connection: upgrade\r\n\r\n")
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 101 "), head
        sock.sendall(b"ping")
        assert sock.recv(4096) == b"PING"


def test_a_tls_connection_taken_is_freed_without_the_garbage_collector(berth, tmp_path):
    """As a TLS connection berth closes (TlsConnection.close), one the app took lets go of its
    TLS session when the app call returns, without waiting for a collection."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    certfile = tmp_path / "cert.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(certfile))
    srv = berth(["-w", "1", "--threads", "2", "--certfile", str(certfile),
                                "take_cycle_app:app"])
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)

    def get(path: bytes, upgrade: bytes = b"") -> bytes:
        raw = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
                         + upgrade + b"\r\n")
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
        return data.partition(b"\r\n\r\n")[2]

    for _ in range(20):
        assert get(b"/take", b"Upgrade: x-raw\r\n") == b"mine"
    # (a few are still referred to by the idle app threads' last work item)
    assert int(get(b"/count")) < 8, srv.stderr()


def what_a_client_sees(port: int) -> dict:
    """A Flask-Sock echo, a server that speaks first and closes, and the bytes of a response
    the app wrote itself: what the client sees of each."""
    seen = {}
    with websockets_sync.connect(f"ws://127.0.0.1:{port}/echo", open_timeout=5,
                                 close_timeout=5) as ws:
        seen["echo"] = []
        for message in ("one", "two" * 1000):
            ws.send(message)
            seen["echo"].append(ws.recv(timeout=5))
    with websockets_sync.connect(f"ws://127.0.0.1:{port}/greet?name=x", open_timeout=5,
                                 close_timeout=5) as ws:
        seen["greet"] = ws.recv(timeout=5)
        try:
            ws.recv(timeout=5)
        except ConnectionClosed as exc:
            seen["greet_close"] = exc.rcvd.code if exc.rcvd is not None else None
    sock = connect(port)
    sock.sendall(b"GET /raw HTTP/1.1\r\nHost: h\r\nUpgrade: x-raw\r\nConnection: upgrade\r\n\r\n")
    data = b""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (chunk := sock.recv(4096)):
        data += chunk
    sock.close()
    seen["raw"] = data
    return seen


def test_a_client_sees_what_it_sees_under_gunicorns_gthread_worker(berth):
    pytest.importorskip("gunicorn")
    port = free_port()
    gunicorn = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "4", "-w", "1",
         "-b", f"127.0.0.1:{port}", "sock_app:app"], cwd=str(APPS),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_for(lambda: can_connect(port), timeout=15), "gunicorn did not start"
        theirs = what_a_client_sees(port)
    finally:
        gunicorn.terminate()
        gunicorn.wait(timeout=15)
    srv = start(berth, "--threads", "4")
    ours = what_a_client_sees(srv.port)
    ours_raw, theirs_raw = ours.pop("raw"), theirs.pop("raw")
    assert ours == theirs  # the WebSockets: the same
    assert theirs["echo"] == ["one", "two" * 1000] and theirs["greet"] == "hello x"
    # An app that wrote its own response and then returned one: Gunicorn sends the returned
    # one after the app's bytes (the client reads a second response it never asked for);
    # berth sends nothing once the app has taken the socket (README).
    assert ours_raw == b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nmine"
    assert theirs_raw.startswith(ours_raw) and theirs_raw.endswith(b"not sent")


def can_connect(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def test_a_take_the_loop_never_got_to_leaves_the_connection_to_berth(berth):
    """An app thread waits TAKE_WAIT for the loop to let go of the connection, then its app call
    fails (500). The loop, once free, must not take the connection away from berth then: it
    was left open for good, never closed (its client waited forever, its fd leaked)."""
    srv = berth(["-w", "1", "--threads", "1", "--body-buffer-size", "1024", "take_app:app"])
    taker = connect(srv.port)
    try:
        taker.sendall(b"POST /take HTTP/1.1\r\nHost: h\r\nUpgrade: x-raw\r\n"
                      b"Connection: upgrade\r\nContent-Length: 100000\r\n\r\nab")
        time.sleep(0.1)
        assert http_get(srv.port, "/slow", timeout=10)[0] == 200
        data = b""
        taker.settimeout(5)
        while chunk := taker.recv(4096):  # (a timeout here: the connection never closed)
            data += chunk
        assert data.startswith(b"HTTP/1.1 500 "), data
    finally:
        taker.close()
    assert "the loop did not let go of the connection" in srv.stderr()

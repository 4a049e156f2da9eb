"""WebSockets under `-k asgi` (berth/asgi/websocket.py), with the `websockets` client and raw
sockets, against real berth processes on 127.0.0.1."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import socket
import struct
import threading
import time

import pytest
from conftest import Server, connect, read_response
from proto_helpers import exit_within, http_get, pids_children, wait_for
from test_admin import metric, scrape
from test_asgi import start_asgi

websockets_sync = pytest.importorskip("websockets.sync.client")
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402


def start(berth, tmp_path, *args, **kw):
    return start_asgi(berth, tmp_path, "ws_app:app", "-w", "1", *args, **kw)


def ws_connect(srv, path: str, **kw):
    return websockets_sync.connect(f"ws://127.0.0.1:{srv.port}{path}", open_timeout=5,
                                   close_timeout=5, **kw)


def worker_rss(pid: int) -> int:
    """A process's resident memory, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) << 10


def marker(srv, name: str, timeout: float = 5.0) -> str | None:
    path = srv.markers / name
    if wait_for(lambda: path.exists() and path.read_text(), timeout=timeout):
        return path.read_text()
    return None


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One server for the tests that neither stop nor reconfigure it (a trusted proxy's
    headers are applied: the default --forwarded-allow-ips, --forwarded-remote-addr)."""
    tmp = tmp_path_factory.mktemp("ws")
    markers = tmp / "markers"
    markers.mkdir()
    srv = Server(["-k", "asgi", "-w", "1", "--forwarded-remote-addr", "ws_app:app"], tmp,
                 env={"ASGI_MARKERS": str(markers)})
    srv.markers = markers
    yield srv
    srv.stop()


def raw_handshake(port: int, path: str = "/hold?id=raw", upgrade: str = "websocket",
                  connection: str = "Upgrade") -> socket.socket:
    """A WebSocket opened by hand: the tests then act as a client that misbehaves
    (`sock.head`: the 101)."""
    sock = connect(port)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: h\r\nUpgrade: {upgrade}\r\n"
                 f"Connection: {connection}\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        byte = sock.recv(1)
        assert byte, head
        head += byte
    assert head.startswith(b"HTTP/1.1 101 "), head
    sock.head = head
    return sock


def test_echo_of_text_bytes_fragments_and_large_messages_with_a_subprotocol(berth, tmp_path):
    srv = start(berth, tmp_path)
    with ws_connect(srv, "/echo", subprotocols=["chat", "other"], max_size=None) as ws:
        assert ws.subprotocol == "chat"
        assert ws.response.headers["x-berth-test"] == "1"
        ws.send("héllo")
        assert ws.recv() == "héllo"
        ws.send(b"\x00\xff")
        assert ws.recv() == b"\x00\xff"
        big = os.urandom(3 << 20)
        ws.send(big)
        assert ws.recv() == big
        ws.send(["frag", "mented ", "text"])  # one message in three frames
        assert ws.recv() == "fragmented text"
        ws.close(code=4001, reason="done")
    assert marker(srv, "disconnect-echo") == "4001"  # the app saw the client's code


def test_a_denied_handshake_is_a_403_or_the_apps_response(berth, tmp_path):
    srv = start(berth, tmp_path)
    with pytest.raises(InvalidStatus) as exc:
        ws_connect(srv, "/deny").close()
    assert exc.value.response.status_code == 403
    with pytest.raises(InvalidStatus) as exc:
        ws_connect(srv, "/deny-body").close()
    assert exc.value.response.status_code == 401
    assert exc.value.response.body == b"who are you?\n"
    assert http_get(srv.port, "/anything")[2] == b"http\n"  # plain HTTP on the same port


def test_an_app_that_returns_without_accepting_gets_403_or_uvicorns_500(berth, tmp_path):
    """Gunicorn's own ASGI worker denies such a handshake with 403; Uvicorn answers 500 and
    logs an error, so berth does so under Uvicorn's worker class names."""
    srv = start(berth, tmp_path)
    with pytest.raises(InvalidStatus) as exc:
        ws_connect(srv, "/return").close()
    assert exc.value.response.status_code == 403
    uvicorn = start_asgi(berth, tmp_path, "ws_app:app", "-w", "1", "-k",
                         "uvicorn.workers.UvicornWorker")
    with pytest.raises(InvalidStatus) as exc:
        ws_connect(uvicorn, "/return").close()
    assert exc.value.response.status_code == 500
    assert wait_for(lambda: "returned without accepting" in uvicorn.stderr(), timeout=5), \
        uvicorn.stderr()
    with pytest.raises(InvalidStatus) as exc:  # (a close before accepting: 403 for both)
        ws_connect(uvicorn, "/deny").close()
    assert exc.value.response.status_code == 403


def test_the_http_rules_hold_for_the_upgrade_request(berth, tmp_path):
    srv = start(berth, tmp_path)
    with connect(srv.port) as sock:  # HTTP/1.1 without Host: 400, as for any request
        sock.sendall(b"GET /echo HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        assert read_response(sock)[0] == 400


def test_a_trusted_proxys_headers_make_the_websocket_scope_as_the_http_one(shared):
    proxied = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
    with ws_connect(shared, "/scope", additional_headers=proxied) as ws:
        scope = json.loads(ws.recv())
    assert scope["scheme"] == "wss" and scope["client"] == ["203.0.113.9", 0]
    assert scope["server"] == ["127.0.0.1", shared.port]
    with ws_connect(shared, "/scope") as ws:
        scope = json.loads(ws.recv())
    assert scope["scheme"] == "ws" and scope["client"][0] == "127.0.0.1"


def test_under_uvicorns_worker_class_the_websocket_scheme_is_read_as_uvicorn_does(berth,
                                                                                  tmp_path):
    # Uvicorn: X-Forwarded-Proto http/https/ws/wss, "http" becoming "ws" (Traefik sends wss)
    srv = start(berth, tmp_path, "-k", "uvicorn.workers.UvicornWorker")
    for proto, scheme in (("wss", "wss"), ("https", "wss"), ("ws", "ws"), ("http", "ws")):
        with ws_connect(srv, "/scope", additional_headers={
                "X-Forwarded-Proto": proto, "X-Forwarded-For": "203.0.113.9"}) as ws:
            scope = json.loads(ws.recv())
        assert (scope["scheme"], scope["client"]) == (scheme, ["203.0.113.9", 0]), proto


def test_an_escape_that_is_not_utf8_is_a_replacement_character_in_the_path(shared):
    with ws_connect(shared, "/scope/%ff%C3%A9") as ws:
        scope = json.loads(ws.recv())
    assert scope["path"] == "/scope/\ufffdé" and scope["raw_path"] == "/scope/%ff%C3%A9"


@pytest.mark.parametrize(("version", "key"), [
    ("1.1", "abc"),  # not base64
    ("1.1", base64.b64encode(bytes(15)).decode()),  # base64, not 16 bytes
    ("1.0", base64.b64encode(bytes(16)).decode()),  # RFC 6455 asks for HTTP/1.1 or higher
])
def test_a_handshake_that_rfc_6455_refuses_is_a_400(shared, version, key):
    with connect(shared.port) as sock:
        sock.sendall(f"GET /echo HTTP/{version}\r\nHost: h\r\nUpgrade: websocket\r\n"
                     f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                     f"Sec-WebSocket-Version: 13\r\n\r\n".encode())
        assert read_response(sock)[0] == 400


@pytest.mark.parametrize("upgrade", ["websocket, h2c", "h2c, WebSocket"])
def test_an_upgrade_listing_websocket_among_others_is_a_websocket(shared, upgrade):
    with raw_handshake(shared.port, "/echo", upgrade, "keep-alive, Upgrade") as sock:
        assert b"upgrade: websocket\r\n" in sock.head.lower()


def test_a_message_over_the_limit_closes_with_1009(berth, tmp_path):
    srv = start(berth, tmp_path, "--websocket-max-message-size", "1000")
    with ws_connect(srv, "/echo?id=big") as ws:
        ws.send("x" * 900)
        assert ws.recv() == "x" * 900
        ws.send("x" * 2000)
        with pytest.raises(ConnectionClosed) as exc:
            ws.recv()
    assert exc.value.rcvd.code == 1009
    assert marker(srv, "disconnect-big") == "1009"


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One server frame, unmasked and short (the control frames): (opcode, payload)."""
    head = b""
    while len(head) < 2:
        data = sock.recv(2 - len(head))
        assert data, "the server closed before a frame"
        head += data
    n = head[1]
    assert n < 126
    payload = b""
    while len(payload) < n:
        data = sock.recv(n - len(payload))
        assert data, "the server closed inside a frame"
        payload += data
    return head[0] & 0x0F, payload


def test_after_its_own_close_the_app_hears_the_disconnect(shared):
    sock = raw_handshake(shared.port, "/close?id=answered&code=4000")
    assert read_frame(sock) == (8, (4000).to_bytes(2, "big"))
    sock.sendall(masked(8, (4002).to_bytes(2, "big")))  # the answer: the app hears its code
    assert sock.recv(100) == b""  # then the server ends the TCP connection
    sock.close()
    assert marker(shared, "disconnect-answered") == "4002"
    sock = raw_handshake(shared.port, "/close?id=unanswered&code=4000")
    assert read_frame(sock)[0] == 8
    sock.close()  # no answer, the connection ends (as at the close timeout): 1006
    assert marker(shared, "disconnect-unanswered") == "1006"


@pytest.mark.parametrize(("code", "payload"), [
    (1005, b""),  # "no status code": a close frame without one
    (1006, (1011).to_bytes(2, "big")),  # never sent on the wire (RFC 6455 §7.4.1): 1011
    (1015, (1011).to_bytes(2, "big")),
    (4999, (4999).to_bytes(2, "big")),  # a code that may be sent goes as it is
])
def test_an_apps_close_code_that_a_frame_may_not_carry_is_not_sent(shared, code, payload):
    sock = raw_handshake(shared.port, f"/close?id=c{code}&code={code}")
    assert read_frame(sock) == (8, payload)
    sock.close()


def test_a_client_that_vanishes_gives_the_app_1006(berth, tmp_path):
    srv = start(berth, tmp_path)
    sock = raw_handshake(srv.port, "/hold?id=gone")
    sock.close()  # no close frame
    assert marker(srv, "disconnect-gone") == "1006"


def test_an_idle_peer_is_pinged_and_closed_with_1011_without_a_pong(berth, tmp_path):
    srv = start(berth, tmp_path, "--ws-ping-interval", "0.5", "--ws-ping-timeout", "0.5")
    with ws_connect(srv, "/echo?id=alive") as ws:  # this client answers pings by itself
        time.sleep(2.5)
        ws.send("still here")
        assert ws.recv() == "still here"
    sock = raw_handshake(srv.port, "/hold?id=mute")  # this one never reads nor answers
    assert marker(srv, "disconnect-mute", timeout=6) == "1011"
    sock.close()


def test_a_client_faster_than_the_app_meets_back_pressure(berth, tmp_path):
    srv = start(berth, tmp_path)
    (pid,) = pids_children(srv.pid)

    before = worker_rss(pid)
    sent = [0]
    with ws_connect(srv, "/slow?id=fast", max_size=None) as ws:
        piece = b"x" * (256 << 10)

        def flood():
            try:
                for _ in range(400):  # 100 MiB, if nothing held it back
                    ws.send(piece)
                    sent[0] += len(piece)
            except ConnectionClosed:
                pass

        t = threading.Thread(target=flood, daemon=True)
        t.start()
        time.sleep(3)
        grown = worker_rss(pid) - before
        assert sent[0] < 40 << 20, sent[0]  # the client is held back: 0.2 s per message
        assert grown < 32 << 20, grown  # and the worker holds a bounded amount
        # (a close handshake would wait behind the backlog: the client resets instead)
        ws.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.socket.close()
    t.join(timeout=10)
    # the reset is read once the app has taken what was read before it (reading is paused
    # meanwhile): its kernel buffers held megabytes, at 0.2 s a 256 KiB message
    assert marker(srv, "disconnect-fast", timeout=20) == "1006"


def test_a_flood_of_tiny_frames_meets_back_pressure_too(berth, tmp_path):
    # the bound counted payload bytes only: 2-byte messages cost ~150 times that in dicts,
    # and ten clients took a worker to 1.2 GB (a black-box audit of resource exhaustion)
    srv = start(berth, tmp_path)
    (pid,) = pids_children(srv.pid)

    before = worker_rss(pid)
    with ws_connect(srv, "/slow?id=tiny", max_size=None) as ws:
        raw = ws.socket
        frame = b"\x82\x82" + b"\x00\x00\x00\x00" + b"xy"  # masked (zero key) 2-byte binary
        raw.setblocking(False)
        sent, deadline = 0, time.monotonic() + 3
        while time.monotonic() < deadline and sent < (16 << 20):  # 16 MiB of frames at most
            try:
                sent += raw.send(frame * 4096)
            except BlockingIOError:
                time.sleep(0.01)
        time.sleep(0.5)
        grown = worker_rss(pid) - before
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
    assert grown < 32 << 20, (grown, sent)  # (it grew by hundreds of MB)
    srv.stop(signal.SIGINT)  # (a drain would wait for the slow app's backlog)


def test_a_drain_closes_every_websocket_with_1001_then_exits(berth, tmp_path):
    srv = start(berth, tmp_path, "--shutdown-delay", "0.5", "--graceful-timeout", "4",
                admin=True)
    stack = contextlib.ExitStack()
    clients = [stack.enter_context(ws_connect(srv, f"/echo?id=d{i}")) for i in range(3)]
    for ws in clients:
        ws.send("hi")
        assert ws.recv() == "hi"
    m = wait_for(lambda: (lambda m: m if sum(v for (n, _), v in m.items()
                                             if n == "berth_websockets_open") == 3 else None)(
        scrape(srv)), timeout=3)
    (pid,) = pids_children(srv.pid)
    assert metric(m, "berth_websockets_open", pid=pid) == 3
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    for ws in clients:
        with pytest.raises(ConnectionClosed) as exc:
            ws.recv(timeout=3)
        assert exc.value.rcvd.code == 1001
    stack.close()
    code, _ = exit_within(srv, 6)
    assert code == 0 and time.monotonic() - t0 < 4 + 0.5
    assert [marker(srv, f"disconnect-d{i}") for i in range(3)] == ["1001"] * 3


def test_a_drain_waits_for_websocket_apps_and_cancels_the_late_before_the_lifespan_ends(
        berth, tmp_path):
    srv = start(berth, tmp_path, "--graceful-timeout", "1.5")
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(ws_connect(srv, f"/linger?id={name}&sleep={sleep}"))
                   for name, sleep in (("quick", 0.6), ("stuck", 60))]
        srv.signal(signal.SIGTERM)
        for ws in clients:
            with pytest.raises(ConnectionClosed) as exc:
                ws.recv(timeout=3)
            assert exc.value.rcvd.code == 1001
    code, _ = exit_within(srv, 4)
    assert code == 0
    # the cleanup after websocket.disconnect was waited for, within --graceful-timeout; the
    # one still running then was cancelled (its finally ran), before the lifespan shutdown
    assert marker(srv, "cleaned-quick", timeout=0) == "done"
    assert marker(srv, "finally-quick", timeout=0) == "returned"
    assert marker(srv, "finally-stuck", timeout=0) == "cancelled"
    assert marker(srv, "lifespan-shutdown", timeout=0) == "0"


# -- the frames (berth.asgi.websocket's own layer after the handshake) ----------------------

def masked(opcode: int, payload: bytes, fin: bool = True, mask: bytes = b"\x01\x02\x03\x04",
           rsv: int = 0) -> bytes:
    n = len(payload)
    head = bytes(((0x80 if fin else 0) | rsv | opcode,))
    head += bytes((0x80 | n,)) if n < 126 else (bytes((0x80 | 126,)) + n.to_bytes(2, "big")
                                                  if n < 65536 else
                                                  bytes((0x80 | 127,)) + n.to_bytes(8, "big"))
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def test_frame_reader_reads_what_clients_send_in_any_pieces():
    from berth.asgi.websocket import BINARY, CLOSE, CONTINUATION, PING, TEXT, FrameReader

    data = (masked(TEXT, b"hello") + masked(BINARY, bytes(300)) + masked(PING, b"p")
            + masked(TEXT, b"frag", fin=False) + masked(CONTINUATION, b"ment")
            + masked(BINARY, os.urandom(70000)) + masked(CLOSE, (1000).to_bytes(2, "big")))
    whole = FrameReader(1 << 20).feed(data)
    reader = FrameReader(1 << 20)
    pieces = []
    for i in range(0, len(data), 7):  # 7 bytes at a time: every header cut somewhere
        pieces += reader.feed(data[i:i + 7])
    assert pieces == whole
    assert [(op, fin) for op, fin, _ in whole] == [(TEXT, True), (BINARY, True), (PING, True),
                                                   (TEXT, False), (CONTINUATION, True),
                                                   (BINARY, True), (CLOSE, True)]
    assert whole[0][2] == b"hello" and whole[1][2] == bytes(300) and len(whole[5][2]) == 70000


@pytest.mark.parametrize(("data", "code"), [
    (masked(1, b"x")[:1] + bytes((1,)) + b"x", 1002),  # not masked
    (masked(1, b"x", rsv=0x40), 1002),  # RSV1 without an extension
    (masked(9, b"x" * 126), 1002),  # a control frame over 125 bytes
    (masked(9, b"x", fin=False), 1002),  # a fragmented control frame
    (masked(0, b"x"), 1002),  # a continuation with no message begun
    (masked(1, b"a", fin=False) + masked(1, b"b"), 1002),  # a new message inside one
    (masked(3, b"x"), 1002),  # a reserved opcode
    (masked(2, b"x" * 101), 1009),  # over max_size (100)
    (masked(2, b"x" * 60, fin=False) + masked(0, b"x" * 60), 1009),  # so is the whole message
])
def test_frame_reader_refuses_what_breaks_the_base_framing(data, code):
    from berth.asgi.websocket import FrameError, FrameReader

    with pytest.raises(FrameError) as exc:
        FrameReader(100).feed(data)
    assert exc.value.code == code


def test_server_frames_are_unmasked_with_the_right_length_form():
    from berth.asgi.websocket import frame, unmask, valid_close_code

    assert frame(1, b"hi") == b"\x81\x02hi"
    assert frame(2, bytes(200))[:4] == b"\x82\x7e\x00\xc8"
    assert frame(2, bytes(70000))[:10] == b"\x82\x7f" + (70000).to_bytes(8, "big")
    assert unmask(unmask(b"payload!", b"abcd"), b"abcd") == b"payload!"
    assert [c for c in (999, 1000, 1004, 1005, 1006, 1011, 1015, 2999, 3000, 4999, 5000)
            if valid_close_code(c)] == [1000, 1011, 3000, 4999]


@pytest.mark.parametrize(("frame_bytes", "code"), [
    (masked(1, b"\xff\xfe"), 1007),  # text that is not UTF-8
    (masked(1, b"x")[:1] + bytes((1,)) + b"x", 1002),  # an unmasked frame
    (masked(8, (1005).to_bytes(2, "big")), 1002),  # a close code never sent on the wire
])
def test_a_bad_frame_fails_the_connection_with_its_code(berth, tmp_path, frame_bytes, code):
    srv = start(berth, tmp_path)
    sock = raw_handshake(srv.port, "/echo?id=bad")
    sock.sendall(frame_bytes)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    assert data[:1] == b"\x88" and int.from_bytes(data[2:4], "big") == code
    assert marker(srv, "disconnect-bad") == str(code)
    sock.close()


def test_pings_are_answered_and_the_close_code_echoed(berth, tmp_path):
    srv = start(berth, tmp_path)
    sock = raw_handshake(srv.port, "/echo?id=pp")
    sock.sendall(masked(9, b"are you there"))
    assert sock.recv(100) == b"\x8a\x0dare you there"  # the pong carries the ping's data
    sock.sendall(masked(8, (4002).to_bytes(2, "big") + b"bye"))
    assert sock.recv(100) == b"\x88\x02" + (4002).to_bytes(2, "big")
    assert sock.recv(100) == b""  # then the server closes the TCP connection
    assert marker(srv, "disconnect-pp") == "4002"
    sock.close()


def test_frames_sent_with_the_handshake_reach_the_app_after_its_accept(shared):
    """A client that does not wait for the 101 (RFC 6455 §4.1 says it should; some do not)
    sends its first frames in the handshake's packet, or before the app has accepted: they
    are the first messages the app reads, as under Uvicorn (wsproto keeps them too)."""
    sock = connect(shared.port)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(f"GET /echo?id=early HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                 f"Sec-WebSocket-Version: 13\r\n\r\n".encode()
                 + masked(1, b"first") + masked(2, b"\x00second"))
    data = b""
    want = b"\x81\x05first\x82\x07\x00second"
    deadline = time.monotonic() + 5
    while not data.endswith(want) and time.monotonic() < deadline:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.1 101 "), data
    assert data.split(b"\r\n\r\n", 1)[1] == want
    sock.sendall(masked(8, (1000).to_bytes(2, "big")))
    assert marker(shared, "disconnect-early") == "1000"
    sock.close()

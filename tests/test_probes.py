"""Readiness and liveness probes are answered by the loop thread, not queued behind the app."""

import threading
import time

from conftest import connect, http_get, read_response
from proto_helpers import assert_ready_503_then_served_through_the_delay, get_request


def test_probes_answer_while_every_app_thread_is_busy(berth):
    srv = berth(["-w", "1", "--threads", "2", "--access-logfile", "none", "proto_app:app"])
    slow = [threading.Thread(target=http_get, args=(srv.port, "/sleep?s=3"), daemon=True)
            for _ in range(2)]
    for t in slow:
        t.start()
    time.sleep(0.5)  # both app threads are now asleep in the app
    started = time.monotonic()
    status, _, body = http_get(srv.port, "/-/ready", timeout=2)
    assert (status, body) == (200, b"ready\n")
    assert http_get(srv.port, "/-/live", timeout=2)[:3:2] == (200, b"live\n")
    assert time.monotonic() - started < 2, "a probe waited behind the app threads"
    for t in slow:
        t.join(timeout=10)


def test_ready_says_503_during_the_shutdown_delay_while_requests_are_served(berth):
    srv = berth(["-w", "1", "--threads", "2", "--shutdown-delay", "2",
                 "--access-logfile", "none", "proto_app:app"])
    assert http_get(srv.port, "/-/ready")[0] == 200
    assert_ready_503_then_served_through_the_delay(srv)


def test_probe_paths_can_be_moved_or_disabled(berth):
    srv = berth(["-w", "1", "--ready-path", "/healthz", "--live-path", "",
                 "--access-logfile", "none", "proto_app:app"])
    assert http_get(srv.port, "/healthz")[2] == b"ready\n"
    status, _, body = http_get(srv.port, "/-/live")
    assert body != b"live\n"  # the app answered it


def test_a_probe_keeps_its_connection_and_the_request_pipelined_after_it_is_answered(berth):
    srv = berth(["-w", "1", "--threads", "1", "--access-logfile", "none", "proto_app:app"])
    with connect(srv.port) as sock:
        sock.sendall(get_request("/-/ready") + get_request("/-/live") + get_request("/hello"))
        first, second, third = (read_response(sock) for _ in range(3))
        assert (first[0], first[2]) == (200, b"ready\n")
        assert "close" not in first[1].get("connection", "")
        assert (second[0], second[2]) == (200, b"live\n")
        assert (third[0], third[2]) == (200, b"Hello, world!\n")
        sock.sendall(get_request("/-/ready"))  # and the connection is still open
        assert read_response(sock)[0] == 200

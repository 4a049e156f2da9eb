"""Readiness and liveness probes are answered by the loop thread, not queued behind the app."""

import signal
import threading
import time

from conftest import http_get


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
    srv.signal(signal.SIGTERM)
    deadline = time.monotonic() + 1.5
    while http_get(srv.port, "/-/ready")[0] != 503:
        assert time.monotonic() < deadline, "readiness still 200 after SIGTERM"
        time.sleep(0.05)
    assert http_get(srv.port, "/hello")[0] == 200  # still serving during the delay
    assert srv.wait(timeout=15) == 0


def test_probe_paths_can_be_moved_or_disabled(berth):
    srv = berth(["-w", "1", "--ready-path", "/healthz", "--live-path", "",
                 "--access-logfile", "none", "proto_app:app"])
    assert http_get(srv.port, "/healthz")[2] == b"ready\n"
    status, _, body = http_get(srv.port, "/-/live")
    assert body != b"live\n"  # the app answered it

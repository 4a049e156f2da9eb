"""`--threads N > 1` from outside: a request that waits or computes never holds up the others
or the probes, requests that wait overlap, a slow reader does not stop the loop, and SIGTERM
is graceful while app threads are busy."""

from __future__ import annotations

import signal
import threading
import time

import pytest
from conftest import connect, http_get, read_response
from proto_helpers import get_request, pids_children, read_head, read_until_closed, wait_for

APP = ["--access-logfile", "none", "proto_app:app"]


def thread_of(port: int, sock=None, path: str = "/thread") -> str:
    if sock is None:
        status, _, body = http_get(port, path)
    else:
        sock.sendall(get_request(path))
        status, _, body = read_response(sock)
    assert status == 200
    return body.decode()


def in_threads(fn, n: int) -> list:
    """Run fn(i) in n threads at once; return their results (or exceptions)."""
    results: list = [None] * n

    def run(i):
        try:
            results[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def test_a_request_that_waits_does_not_hold_up_the_others(berth):
    srv = berth(["-w", "1", "--threads", "4", *APP])
    with connect(srv.port) as slow:
        slow.sendall(get_request("/sleep?s=3"))
        time.sleep(0.3)  # the loop's thread took it, and waits in the app
        started = time.monotonic()
        names = [thread_of(srv.port) for _ in range(5)]
        assert http_get(srv.port, "/-/ready", timeout=2)[0] == 200
        took = time.monotonic() - started
        assert read_response(slow)[0] == 200
    assert took < 2.5, f"requests waited {took:.1f}s behind a sleeping one"
    assert all(names)


def test_a_bad_request_pipelined_behind_one_an_app_thread_answers_gets_its_400(berth):
    # An app thread took the refusal up from the connection's queue, then read a field only a
    # Request had: the 400 never went out, and the connection stayed open for ever.
    srv = berth(["-w", "1", "--threads", "4", *APP])
    for _ in range(3):  # an app call seen to wait: the requests after it go to app threads
        assert http_get(srv.port, "/sleep?s=0.05")[0] == 200
    with connect(srv.port) as sock:
        sock.sendall(get_request("/sleep?s=0.05") + b"GET /2 HTTP/1.1\r\nHost: h\r\n"
                     b"Bad Header: x\r\n\r\n" + get_request("/hello"))
        assert read_response(sock)[0] == 200
        assert read_response(sock)[0] == 400
        sock.settimeout(5)
        assert sock.recv(100) == b""  # closed after it; /hello is never answered
    assert "unexpected error" not in srv.stderr(), srv.stderr()


@pytest.mark.parametrize("threads", ["1", "4"])
def test_an_app_raising_a_base_exception_gets_500_or_a_close_and_the_worker_serves_on(
        berth, threads):
    # KeyboardInterrupt or asyncio.CancelledError from the app (BaseException, not Exception):
    # on an app thread the request was never answered nor closed, held until --timeout (for
    # ever with 0); on the loop thread the worker died
    srv = berth(["-w", "1", "--threads", threads, "--timeout", "0", *APP])
    for _ in range(3):  # (with app threads: the requests after a wait go to them)
        assert http_get(srv.port, "/sleep?s=0.05")[0] == 200
    (pid,) = pids_children(srv.pid)
    for kind in ("kbint", "cancelled"):
        assert http_get(srv.port, f"/raise-base?kind={kind}", timeout=5)[0] == 500
        with connect(srv.port, 5) as sock:
            sock.sendall(get_request(f"/raise-base?kind={kind}&after=1"))
            data, closed = read_until_closed(sock, timeout=5)
            assert closed and data.startswith(b"HTTP/1.1 200"), data  # (no wait for --timeout)
            assert b"first" in data and not data.endswith(b"0\r\n\r\n"), data
    assert http_get(srv.port, "/hello")[0] == 200
    assert pids_children(srv.pid) == [pid]  # the same worker
    assert "unexpected error" not in srv.stderr(), srv.stderr()


def test_a_request_that_computes_does_not_hold_up_the_others(berth):
    srv = berth(["-w", "1", "--threads", "4", *APP])
    with connect(srv.port) as busy:
        busy.sendall(get_request("/thread?spin=3000"))
        time.sleep(0.3)
        started = time.monotonic()
        assert http_get(srv.port, "/hello", timeout=2.5)[0] == 200
        took = time.monotonic() - started
        assert read_response(busy)[0] == 200
    assert took < 2.5, f"a request waited {took:.1f}s behind a computing one"


def test_requests_that_wait_overlap_on_the_app_threads(berth):
    """(Shorter waits overlap too: a matter of speed, for benchmarks/bench.py's `wait`.)"""
    srv = berth(["-w", "1", "--threads", "4", *APP])

    def client(i):
        with connect(srv.port) as sock:
            for _ in range(2):
                sock.sendall(get_request("/sleep?s=0.5"))
                assert read_response(sock)[0] == 200
        return True

    started = time.monotonic()
    results = in_threads(client, 4)
    took = time.monotonic() - started
    assert results == [True] * 4, results
    assert took < 3.0, f"{took:.2f}s for 4 s of waits: not overlapped (serial)"


def test_the_loop_goes_on_while_its_thread_waits_for_a_slow_reader(berth):
    srv = berth(["-w", "1", "--threads", "2", *APP])
    with connect(srv.port) as stuck:
        stuck.sendall(get_request("/big?n=50000000"))
        read_head(stuck)  # ... and read no more: the answering thread waits for this reader
        time.sleep(0.5)
        for _ in range(5):
            assert http_get(srv.port, "/hello", timeout=3)[0] == 200


def test_sigterm_is_graceful_when_another_thread_runs_the_loop(berth):
    srv = berth(["-w", "1", "--threads", "4", *APP])
    # a long request in the app while another is answered and SIGTERM arrives
    with connect(srv.port) as slow:
        slow.sendall(get_request("/sleep?s=2"))
        time.sleep(0.5)
        other = thread_of(srv.port)
        srv.signal(signal.SIGTERM)
        status, _, body = read_response(slow)
    assert (status, body) == (200, b"slept 2.0")
    assert other.startswith("berth-app-"), other
    assert wait_for(lambda: srv.proc.poll() is not None, timeout=15)
    assert srv.proc.returncode == 0, srv.stderr()
    assert "crashed" not in srv.stderr() and "internal error" not in srv.stderr()

"""The admin listener (--admin-bind): /livez, /readyz, /metrics and /status, served by the master.

The first part checks the pure parts (the rules and the rendering) with views made by hand;
the rest runs real servers on 127.0.0.1 (`tests/apps/proto_app.py`) and talks to both ports.
Every wait is bounded; every admin answer must come within ANSWER_BOUND seconds.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from html.parser import HTMLParser

import pytest
from conftest import connect, free_port, read_response
from prometheus_client.parser import text_string_to_metric_families
from proto_helpers import exit_within, get_request, http_get, in_background, pids_children, wait_for

from berth.admin import (
    RESTART_REASONS,
    Seen,
    Totals,
    View,
    liveness,
    readiness,
    redact,
    render_metrics,
    render_status,
    render_status_html,
    restart_reason,
)
from berth.children import WorkerInfo
from berth.master import OVERRAN
from berth.scoreboard import (
    BOOTING,
    BUSY,
    DRAINING,
    IDLE,
    METHODS,
    N_BUCKETS,
    N_REQUESTS,
    STATUS_CLASSES,
    Slot,
)

ANSWER_BOUND = 2.0  # seconds: an admin answer, whatever the workers are doing

# -- the rules, with views made by hand --------------------------------------------------------


def view(*workers: Seen, serving: bool = True, threads: int = 2, retired: Totals | None = None,
         listeners=(("http://127.0.0.1:8000", 0),)) -> View:
    return View(now=100.0, workers=list(workers), serving=serving,
                phase="serving" if serving else "in the shutdown delay", allowance=30.0,
                threads=threads, listeners=list(listeners), retired=retired or Totals(),
                config={"workers": len(workers), "threads": threads})


def worker(pid: int, state: int = IDLE, silent: bool = False, **fields) -> Seen:
    return Seen(pid, 1, 5.0, Slot(pid=pid, state=state, heartbeat=99.5, **fields), silent)


def test_livez_fails_only_when_every_worker_is_silent():
    assert liveness(view(worker(1), worker(2, silent=True)))[0]
    assert liveness(view(worker(1, BUSY, busy_threads=2, in_flight=2)))[0]  # busy is alive
    assert liveness(view(worker(1, silent=True), worker(2, BOOTING)))[0]  # (its replacement)
    assert liveness(view())[0]  # no worker yet: the master is starting them
    ok, reason = liveness(view(worker(1, BUSY, silent=True), worker(2, silent=True)))
    assert not ok and reason.startswith("every worker (2) has been silent longer than its "
                                        "allowance (30 s)")


def test_readyz_needs_a_worker_taking_requests_and_no_shutdown():
    assert readiness(view(worker(1, BUSY, busy_threads=2)))[0]  # busy is still ready
    assert not readiness(view(worker(1), serving=False))[0]
    ok, reason = readiness(view(worker(1, BOOTING), worker(2, DRAINING),
                                worker(3, BUSY, silent=True)))
    assert not ok and reason == ("no worker can take requests (1 booting, 1 draining, "
                                 "1 silent)")


def families(text: str) -> dict:
    """{(sample name, sorted labels): value}, parsed by prometheus_client."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def requests_of(counts: dict) -> list[int]:
    """A slot's `requests` from {(method, status class): n}."""
    out = [0] * N_REQUESTS
    for (method, status_class), n in counts.items():
        out[METHODS.index(method) * len(STATUS_CLASSES) + STATUS_CLASSES.index(status_class)] = n
    return out


def test_metrics_add_the_retired_counts_and_count_threads_per_serving_worker():
    retired = Totals(requests=requests_of({("GET", "2xx"): 10, ("POST", "4xx"): 2}),
                     durations=[8, 4] + [0] * (N_BUCKETS - 2), duration_sum=0.01,
                     queued=3, queued_seconds=0.5, bytes_sent=1000, over_deadline=1)
    retired.restarts["max_requests"] = 2
    text = render_metrics(view(
        worker(11, BUSY, busy_threads=2, in_flight=2, bytes_sent=50, rss=1 << 20,
               requests=requests_of({("GET", "2xx"): 5}), queue_depth=4, queued=2,
               queued_seconds=0.25, durations=[0] * (N_BUCKETS - 1) + [5], duration_sum=200.0),
        worker(12, IDLE, requests=requests_of({("OTHER", "4xx"): 1}), durations=[1] + [0] * 15),
        worker(13, DRAINING, busy_threads=1, in_flight=1),  # busy, but takes no more work
        retired=retired, listeners=[("http://127.0.0.1:8000", 7), ("unix:/x", None)]))
    for name in ("berth_requests_total", "berth_app_threads", "berth_listen_queue",
                 "berth_request_duration_seconds", "berth_request_queue_seconds"):
        assert f"# HELP {name} " in text and f"# TYPE {name} " in text
    m = families(text)

    def requests(method, status_class):
        return m[("berth_requests_total", (("method", method), ("status_class", status_class)))]

    assert requests("GET", "2xx") == 15 and requests("POST", "4xx") == 2
    assert requests("OTHER", "4xx") == 1 and requests("PUT", "5xx") == 0
    assert sum(v for (name, _), v in m.items() if name == "berth_requests_total") == 18

    def bucket(le):
        return m[("berth_request_duration_seconds_bucket", (("le", le),))]

    assert bucket("0.0005") == 9 and bucket("0.001") == 13 and bucket("30.0") == 13
    assert bucket("+Inf") == 18 == m[("berth_request_duration_seconds_count", ())]
    assert m[("berth_request_duration_seconds_sum", ())] == 200.01
    assert m[("berth_request_queue_seconds_count", ())] == 5
    assert m[("berth_request_queue_seconds_sum", ())] == 0.75
    assert m[("berth_request_queue_depth", ())] == 4
    assert m[("berth_response_bytes_total", ())] == 1050
    assert m[("berth_requests_over_deadline_total", ())] == 1
    assert m[("berth_requests_in_flight", ())] == 3
    assert m[("berth_app_threads", (("state", "busy"),))] == 3
    assert m[("berth_app_threads", (("state", "idle"),))] == 2  # 0 in 11, 2 in 12
    assert m[("berth_workers", (("state", "busy"),))] == 1
    assert m[("berth_workers", (("state", "out of service"),))] == 0
    assert m[("berth_worker_restarts_total", (("reason", "max_requests"),))] == 2
    assert m[("berth_worker_rss_bytes", (("pid", "11"),))] == 1 << 20
    assert m[("berth_worker_heartbeat_age_seconds", (("pid", "12"),))] == 0.5
    assert m[("berth_listen_queue", (("listener", "http://127.0.0.1:8000"),))] == 7
    assert not any(name == "berth_listen_queue" and labels == (("listener", "unix:/x"),)
                   for name, labels in m)


def test_a_duration_equal_to_a_bucket_bound_is_in_that_bucket():
    # Prometheus' le is "less than or equal": prometheus_client's Histogram.observe(0.5)
    # counts it in le="0.5"; bisect_right put it in the next bucket up
    from berth.scoreboard import DURATION_BOUNDS
    from berth.worker.counts import count, new_counts, publish

    counts = new_counts()
    for seconds in (0.0, 0.0005, 0.5, 30.0, 31.0):
        count(counts, b"GET", "200", 0, seconds)
    slot = Slot(pid=1, state=IDLE, heartbeat=99.5)
    publish(counts, slot)
    m = families(render_metrics(view(Seen(1, 1, 5.0, slot, False))))

    def bucket(le):
        return m[("berth_request_duration_seconds_bucket", (("le", le),))]

    assert bucket("0.0005") == 2 and bucket("0.001") == 2
    assert bucket("0.25") == 2 and bucket("0.5") == 3
    assert bucket(repr(DURATION_BOUNDS[-1])) == 4 and bucket("+Inf") == 5


def test_redact_keeps_only_the_path():
    assert redact("GET /search?q=secret HTTP/1.1") == "GET /search HTTP/1.1"
    assert redact("GET /a#frag HTTP/1.1") == "GET /a HTTP/1.1"
    assert redact("GET http://u:pw@host/p?x=1 HTTP/1.1") == "GET /p HTTP/1.1"
    assert redact("POST /cut-at-96-bytes?tok") == "POST /cut-at-96-bytes"
    assert redact("GET / HTTP/1.0") == "GET / HTTP/1.0"


def test_status_document_redacts_and_has_no_environment():
    doc = render_status(view(worker(7, BUSY, in_flight=1, oldest_start=98.0,
                                    oldest_line="GET /x?token=abc HTTP/1.1")))
    assert doc["workers"][0]["oldest_request"] == {"line": "GET /x HTTP/1.1", "age_s": 2.0}
    assert "abc" not in json.dumps(doc) and "raw_env" not in json.dumps(doc)


def test_restart_reasons_come_from_what_the_master_recorded():
    def info(**kw):
        return WorkerInfo(1, 0, 1, 0.0, **kw)

    killed = "killed by signal SIGKILL"
    assert restart_reason(info(killed="killed by berth: its loop was silent"), killed) == "silent"
    assert restart_reason(info(stopping=OVERRAN), "exited with code 0") == "deadline"
    assert restart_reason(info(stopping="recycled after 5 requests (--max-requests)"),
                          "exited with code 0") == "max_requests"
    assert restart_reason(info(stopping="recycled: RSS 300 MiB over --max-worker-memory "
                                        "256 MiB"), "exited with code 0") == "max_memory"
    assert restart_reason(info(stopping="reloaded (SIGHUP)"), "exited with code 0") == "reload"
    assert restart_reason(info(stopping="fewer workers asked (SIGTTOU)"), "x") is None
    assert restart_reason(info(), killed) == "signal"
    assert restart_reason(info(), "killed by the kernel's OOM killer (the cgroup's oom_kill "
                                  "count rose)") == "oom_killed"
    assert restart_reason(info(), "exited with code 1") == "exited"
    assert set(Totals().restarts) == set(RESTART_REASONS)


# -- real servers --------------------------------------------------------------------------------


def start(berth, *args: str, **kw):
    """A server of proto_app with an admin listener: srv.admin is its port."""
    admin = free_port()
    srv = berth(["--admin-bind", f"127.0.0.1:{admin}", "--access-logfile", "none", *args,
                 "proto_app:app"], **kw)
    srv.admin = admin
    return srv


def admin_get(srv, path: str, method: str = "GET", accept: str = "") -> tuple[int, dict, bytes]:
    """One admin request, read until the master closes; it must answer within ANSWER_BOUND."""
    started = time.monotonic()
    extra = f"Accept: {accept}\r\n" if accept else ""
    with socket.create_connection(("127.0.0.1", srv.admin), timeout=ANSWER_BOUND) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: admin\r\n{extra}\r\n".encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    took = time.monotonic() - started
    assert took < ANSWER_BOUND, f"{path} took {took:.2f} s"
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def scrape(srv) -> dict:
    status, headers, body = admin_get(srv, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    return families(body.decode())


def metric(m: dict, name: str, **labels) -> float:
    return m[(name, tuple(sorted((k, str(v)) for k, v in labels.items())))]


def requests_total(m: dict) -> float:
    return sum(v for (name, _), v in m.items() if name == "berth_requests_total")


def status_of(srv) -> dict:
    status, headers, body = admin_get(srv, "/status")
    assert status == 200 and headers["content-type"] == "application/json"
    return json.loads(body)


def settle(srv, pred, timeout: float = 5.0):
    """Scrape until pred(metrics) holds (workers publish twice a second); the last scrape."""
    last = {}

    def check():
        nonlocal last
        last = scrape(srv)
        return pred(last)

    wait_for(check, timeout=timeout, interval=0.1)
    return last


@pytest.mark.parametrize("workers,threads", [(2, 1), (1, 4)])
def test_every_endpoint_answers_while_every_app_thread_is_busy(berth, workers, threads):
    srv = start(berth, "-w", str(workers), "--threads", str(threads), "--timeout", "30")
    total = workers * threads
    sleepers = []
    for i in range(1, total + 1):
        # one at a time: with --threads 1 a worker busy in the app no longer accepts, so the
        # next request goes to a worker that is still free
        sleepers.append(in_background(lambda: http_get(srv.port, "/sleep?s=6", timeout=25)))
        m = settle(srv, lambda m, i=i: metric(m, "berth_app_threads", state="busy") >= i)
        assert metric(m, "berth_app_threads", state="busy") == i
    waiting = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(3)]
    try:
        for path in ("/livez", "/readyz", "/metrics", "/status"):
            assert admin_get(srv, path)[0] == 200, path
        assert admin_get(srv, "/readyz")[2] == f"{workers} workers serving ({workers} busy)\n" \
            .encode()
        m = settle(srv, lambda m: metric(m, "berth_requests_in_flight") == total)
        assert metric(m, "berth_app_threads", state="busy") == total
        assert metric(m, "berth_app_threads", state="idle") == 0
        assert metric(m, "berth_requests_in_flight") == total
        assert metric(m, "berth_workers", state="busy") == workers
        if threads == 1:  # no loop is free to accept: the 3 connections wait in the kernel
            m = settle(srv, lambda m: metric(m, "berth_listen_queue",
                                             listener=f"http://127.0.0.1:{srv.port}") == 3)
            assert metric(m, "berth_listen_queue", listener=f"http://127.0.0.1:{srv.port}") == 3
        doc = status_of(srv)
        assert [w["state"] for w in doc["workers"]] == ["busy"] * workers
        for w in doc["workers"]:
            assert w["in_flight"] == threads and w["oldest_request"]["age_s"] > 0
            if threads == 1:  # the loop runs the app: its line is not recorded
                assert w["oldest_request"]["line"] is None
    finally:
        for sock in waiting:
            sock.close()
    for t, box in sleepers:
        t.join(timeout=20)
        assert box["result"][0] == 200


def test_readyz_says_503_through_the_shutdown_delay(berth):
    srv = start(berth, "-w", "1", "--threads", "2", "--shutdown-delay", "5")
    assert admin_get(srv, "/readyz")[0] == 200
    srv.signal(signal.SIGTERM)
    sent = time.monotonic()
    answer = wait_for(lambda: (lambda a: a if a[0] == 503 else None)(admin_get(srv, "/readyz")),
                      timeout=1.5, interval=0.05)
    assert answer, "/readyz still 200 after SIGTERM"
    assert answer[2] == b"shutting down (in the shutdown delay)\n"
    assert admin_get(srv, "/livez")[0] == 200  # not dead: still serving
    assert http_get(srv.port, "/hello")[0] == 200
    assert time.monotonic() - sent < 5, "the delay was over before the checks"
    assert status_of(srv)["phase"] == "in the shutdown delay"
    code, _ = exit_within(srv, 15)
    assert code == 0


def send(port: int, raw: bytes) -> int:
    with connect(port) as sock:
        sock.sendall(raw)
        return read_response(sock, head_only=raw.startswith(b"HEAD"))[0]


def test_request_counters_match_a_known_mix_exactly(berth):
    srv = start(berth, "-w", "2", "--threads", "2")
    for _ in range(7):
        assert http_get(srv.port, "/hello")[0] == 200
    for _ in range(3):
        assert http_get(srv.port, "/status?code=404")[0] == 404
    mix = {("HEAD", "/hello", 200): 2, ("POST", "/status?code=302", 302): 3,
           ("PUT", "/status?code=500", 500): 1, ("DELETE", "/hello", 200): 1,
           ("PATCH", "/status?code=201", 201): 1, ("OPTIONS", "/hello", 200): 1,
           ("PURGE", "/hello", 200): 2}
    for (method, path, code), n in mix.items():
        for _ in range(n):
            raw = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            body = "Content-Length: 0\r\n" if method in ("POST", "PUT", "PATCH") else ""
            assert send(srv.port, (raw + body + "\r\n").encode()) == code
    assert send(srv.port, b"GET /hello HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n") == 400
    app_requests = 10 + sum(mix.values())
    total = app_requests + 1
    m = settle(srv, lambda m: requests_total(m) >= total)
    time.sleep(1.1)  # two more heartbeats: nothing more may come
    m = scrape(srv)
    seen = {(labels[0][1], labels[1][1]): v for (name, labels), v in m.items()
            if name == "berth_requests_total" and v}
    assert seen == {("GET", "2xx"): 7, ("GET", "4xx"): 3, ("HEAD", "2xx"): 2,
                    ("POST", "3xx"): 3, ("PUT", "5xx"): 1, ("DELETE", "2xx"): 1,
                    ("PATCH", "2xx"): 1, ("OPTIONS", "2xx"): 1, ("OTHER", "2xx"): 2,
                    ("OTHER", "4xx"): 1}  # PURGE, and the request the parser refused
    hello = len(b"Hello, world!\n")
    assert metric(m, "berth_response_bytes_total") == (7 + 1 + 1 + 2) * hello
    assert metric(m, "berth_requests_in_flight") == 0
    assert metric(m, "berth_requests_over_deadline_total") == 0
    assert sum(w["requests_served"] for w in status_of(srv)["workers"]) == total
    # every response is in the duration histogram; each bucket holds those below it
    buckets = sorted((float(labels[0][1]), v) for (name, labels), v in m.items()
                     if name == "berth_request_duration_seconds_bucket")
    assert buckets[-1] == (float("inf"), total)
    assert metric(m, "berth_request_duration_seconds_count") == total
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))
    assert buckets[0][1] >= 1  # (the refused request took no app time)
    assert 0 < metric(m, "berth_request_duration_seconds_sum") < 10
    # only requests handed to an app thread wait in its queue: with an app thread standing by,
    # the loop thread answers them itself (berth/worker/baton.py); none is counted twice
    assert 0 <= metric(m, "berth_request_queue_seconds_count") <= total
    assert 0 <= metric(m, "berth_request_queue_seconds_sum") < 10
    assert metric(m, "berth_request_queue_depth") == 0


def test_the_duration_histogram_sees_a_slow_request_and_the_queue_a_wait(berth):
    srv = start(berth, "-w", "1", "--threads", "1", "--timeout", "30")
    assert http_get(srv.port, "/sleep?s=0.3")[0] == 200
    m = settle(srv, lambda m: requests_total(m) >= 1)

    def bucket(le):
        return metric(m, "berth_request_duration_seconds_bucket", le=le)

    assert bucket("0.25") == 0 and bucket("0.5") == 1
    assert 0.3 <= metric(m, "berth_request_duration_seconds_sum") < 0.5
    # --threads 1 runs the app on the loop thread: nothing waits in a queue
    assert metric(m, "berth_request_queue_seconds_count") == 0


def test_a_pipelined_request_after_a_slow_one_on_an_app_thread_did_not_queue(berth):
    # the request after a 1.2 s one on the same connection is taken up by the app thread
    # that answered it, at once: its queue time is ~0, not the age of the loop's last wake-up
    # (up to a tick, 0.5 s, which it used to be counted with)
    srv = start(berth, "-w", "1", "--threads", "4", "--timeout", "30")
    with connect(srv.port, 10) as sock:
        sock.sendall(get_request("/sleep?s=1.2") + get_request("/hello"))
        assert read_response(sock)[0] == 200
        assert read_response(sock)[0] == 200
    m = settle(srv, lambda m: requests_total(m) >= 2)
    count = metric(m, "berth_request_queue_seconds_count")
    assert count >= 1  # (the /hello at least went through an app thread's queue)
    assert metric(m, "berth_request_queue_seconds_sum") < 0.05, m


def test_counters_never_go_back_when_workers_are_recycled_or_killed(berth):
    srv = start(berth, "-w", "1", "--threads", "2", "--max-requests", "4")
    seen = [0.0]
    for i in range(10):
        assert http_get(srv.port, "/hello")[0] == 200
        now = requests_total(scrape(srv))
        assert now >= seen[-1], f"went back from {seen[-1]} to {now} after request {i + 1}"
        seen.append(now)
    # the recycled workers published their last counts as they exited: exactly 10
    m = settle(srv, lambda m: requests_total(m) == 10, timeout=8)
    assert requests_total(m) == 10
    assert metric(m, "berth_worker_restarts_total", reason="max_requests") >= 2
    # a worker killed outright keeps what it had published
    assert wait_for(lambda: len(status_of(srv)["workers"]) == 1, timeout=10)
    (pid,) = {w["pid"] for w in status_of(srv)["workers"]}
    assert http_get(srv.port, "/hello")[0] == 200
    before = requests_total(settle(srv, lambda m: requests_total(m) == 11))
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: pid not in {w["pid"] for w in status_of(srv)["workers"]},
                    timeout=5)
    m = scrape(srv)
    assert requests_total(m) >= before == 11
    assert metric(m, "berth_worker_restarts_total", reason="signal") == 1


def test_the_admin_listener_does_not_wait_while_silent_workers_are_killed(berth):
    # the master used to sleep 0.2 s per silent worker (between its stack dump and SIGABRT)
    # in its loop: four hung workers held every admin answer for about 0.8 s
    srv = start(berth, "-w", "4", "--threads", "1", "--timeout", "2")
    # one hung request in each worker: a worker may accept several of a burst before its loop
    # hangs in the first, so requests are added until all four are busy (the admin answers
    # are timed meanwhile too)
    hung, slowest, started = [], 0.0, time.monotonic()
    while len(hung) < 16 and time.monotonic() - started < 3:
        t0 = time.monotonic()
        busy = sum(w["in_flight"] > 0 for w in status_of(srv)["workers"])
        slowest = max(slowest, time.monotonic() - t0)
        if busy == 4:
            break
        hung.append(in_background(lambda: http_get(srv.port, "/sleep?s=30", timeout=40)))
        time.sleep(0.1)
    while time.monotonic() - started < 6 and srv.stderr().count("loop silent") < 4:
        t0 = time.monotonic()
        admin_get(srv, "/livez")
        slowest = max(slowest, time.monotonic() - t0)
        time.sleep(0.02)
    assert srv.stderr().count("loop silent") >= 4, srv.stderr()
    assert slowest < 0.5, f"an admin answer waited {slowest:.2f} s"
    for thread, _ in hung:
        thread.join(timeout=1)


def test_a_worker_killed_by_a_real_time_signal_is_logged_and_keeps_its_counts(berth):
    # Python has no name for SIGRTMIN+1: naming it raised in the master, which then lost the
    # worker's counts (berth_requests_total went from 10 to 0) and never logged the exit
    srv = start(berth, "-w", "1", "--threads", "1")
    for _ in range(10):
        assert http_get(srv.port, "/hello")[0] == 200
    settle(srv, lambda m: requests_total(m) == 10)
    (pid,) = pids_children(srv.pid)
    os.kill(pid, signal.SIGRTMIN + 1)
    srv.wait_for_log(f"worker {pid} exited unexpectedly: killed by signal SIGRTMIN+1")
    assert wait_for(lambda: len(status_of(srv)["workers"]) == 1
                    and pid not in {w["pid"] for w in status_of(srv)["workers"]}, timeout=10)
    m = scrape(srv)
    assert requests_total(m) == 10
    assert metric(m, "berth_worker_restarts_total", reason="signal") == 1
    assert "Traceback" not in srv.stderr()


def test_status_lists_the_live_worker_pids_and_redacts_the_query(berth):
    srv = start(berth, "-w", "2", "--threads", "2")
    doc = status_of(srv)
    assert {w["pid"] for w in doc["workers"]} == set(pids_children(srv.pid))
    assert doc["listeners"] == [{"address": f"http://127.0.0.1:{srv.port}", "listen_queue": 0}]
    assert doc["config"]["workers"] == 2 and doc["config"]["threads"] == 2
    t, box = in_background(lambda: http_get(srv.port, "/sleep?s=3&token=hunter2", timeout=10))

    def oldest():  # (a request the loop thread runs itself shows no line: see the README)
        doc = status_of(srv)
        lines = [w["oldest_request"]["line"] for w in doc["workers"]
                 if w["oldest_request"] and w["oldest_request"]["line"]]
        return (lines, doc) if lines else None

    found = wait_for(oldest, timeout=2.5, interval=0.1)
    assert found, "the sleeping request never showed in /status"
    lines, doc = found
    assert lines == ["GET /sleep HTTP/1.1"]
    assert "hunter2" not in json.dumps(doc)
    t.join(timeout=10)


def test_a_worker_hung_past_timeout_is_replaced_and_livez_follows_the_rule(berth):
    """`-w 1 --threads 1 --timeout 2`, a request that sleeps 30 s on the loop thread. What the
    rule says, and what is checked: until 2 s of silence the worker is busy and alive (200,
    heartbeat growing); past 2 s it is dead by the rule, but the master kills it and starts its
    replacement at the same check, and a booting worker is alive. So /livez may say 503 only
    between the worker passing its allowance and the master's next check (half a second at
    most), and never before 2 s of silence; then it says 200 again with a new worker."""
    srv = start(berth, "-w", "1", "--threads", "1", "--timeout", "2")
    (old,) = {w["pid"] for w in status_of(srv)["workers"]}
    hung, _ = in_background(lambda: http_get(srv.port, "/sleep?s=30", timeout=40))
    started = time.monotonic()
    answers = []  # (seconds since the request, /livez status, body, /status workers)
    while time.monotonic() - started < 10:
        status, _, body = admin_get(srv, "/livez")
        workers = status_of(srv)["workers"]
        answers.append((time.monotonic() - started, status, body, workers))
        if any(w["pid"] != old and w["state"] == "idle" for w in workers):
            break
        time.sleep(0.15)
    busy_alive = [a for a in answers if a[1] == 200 and any(
        w["pid"] == old and w["state"] == "busy" and w["heartbeat_age_s"] > 1 for w in a[3])]
    assert busy_alive, "never saw the busy worker counted alive"
    for since, status, body, _ in answers:
        if status == 503:
            assert since > 2 - 0.2, f"dead before its allowance ({since:.2f} s)"
            assert body.startswith(b"every worker (1) has been silent longer than its "
                                   b"allowance (2 s)")
        else:
            assert status == 200 and b"alive" in body
    assert answers[-1][1] == 200 and any(w["pid"] != old for w in answers[-1][3]), \
        "no replacement serving within 10 s"
    assert "loop silent" in srv.stderr()
    m = settle(srv, lambda m: metric(m, "berth_worker_restarts_total", reason="silent") == 1)
    assert metric(m, "berth_worker_restarts_total", reason="silent") == 1
    hung.join(timeout=5)


def test_only_get_and_head_on_the_known_paths(berth):
    srv = start(berth, "-w", "1")
    status, headers, body = admin_get(srv, "/metrics?x=1", method="POST")
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert admin_get(srv, "/", method="GET")[0] == 404
    assert admin_get(srv, "/-/ready")[0] == 404  # (the workers' probe path, not the master's)
    status, headers, body = admin_get(srv, "/status", method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 100
    assert headers["connection"] == "close" and headers["cache-control"] == "no-store"


def test_a_slow_or_oversized_client_is_cut_off_and_others_still_answered(berth):
    srv = start(berth, "-w", "1")
    slow = socket.create_connection(("127.0.0.1", srv.admin), timeout=5)
    slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\n")  # never finishes its head
    assert admin_get(srv, "/livez")[0] == 200  # (meanwhile)
    big = socket.create_connection(("127.0.0.1", srv.admin), timeout=5)
    big.sendall(b"GET /status HTTP/1.1\r\nHost: a\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n")
    assert big.recv(100).startswith(b"HTTP/1.1 431 ")
    big.close()
    started = time.monotonic()
    data = b""
    while chunk := slow.recv(4096):
        data += chunk
    assert data.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 3  # the 2 s deadline, seen by a tick within 0.5 s
    slow.close()


def test_an_endpoint_that_raises_answers_500_and_the_master_serves_on(berth, tmp_path):
    # a defect in rendering (put there by a config file, which runs in the master) used to
    # reach the master's loop and stop the server
    conf = tmp_path / "faulty.py"
    conf.write_text("import berth.admin\n\n\n"
                    "def render_metrics(view):\n"
                    "    raise ValueError('injected fault in render_metrics')\n\n\n"
                    "berth.admin.render_metrics = render_metrics\n")
    srv = start(berth, "-c", str(conf), "-w", "1")
    for _ in range(3):
        status, _, body = admin_get(srv, "/metrics")
        assert (status, body) == (500, b"internal error: see the server's log\n")
    assert admin_get(srv, "/livez")[0] == 200
    assert status_of(srv)["workers"]
    assert http_get(srv.port, "/hello")[0] == 200
    err = srv.stderr()
    assert err.count("internal error answering /metrics on the admin listener") == 3, err
    assert "ValueError: injected fault in render_metrics" in err, err
    assert srv.proc.poll() is None


def test_workers_do_not_hold_the_admin_socket(berth):
    srv = start(berth, "-w", "2")
    inode = None
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            parts = line.split()
            if int(parts[1].split(":")[1], 16) == srv.admin and parts[3] == "0A":
                inode = parts[9]
    assert inode, "no listening socket on the admin port"

    def sockets(pid):
        out = set()
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                out.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
            except OSError:
                pass
        return out

    assert f"socket:[{inode}]" in sockets(srv.pid)
    for pid in pids_children(srv.pid):
        assert f"socket:[{inode}]" not in sockets(pid)


def test_admin_on_a_unix_socket_is_removed_at_exit(berth, tmp_path):
    path = tmp_path / "admin.sock"
    srv = berth(["--admin-bind", f"unix:{path}", "-w", "1", "--access-logfile", "none",
                 "proto_app:app"])
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(ANSWER_BOUND)
        sock.connect(str(path))
        sock.sendall(b"GET /livez HTTP/1.1\r\nHost: a\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
    assert srv.stop() == 0
    assert not path.exists()


def test_an_admin_address_in_use_is_one_line_and_exit_1(berth):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = berth(["--admin-bind", f"127.0.0.1:{port}", "-w", "1", "proto_app:app"],
                    wait_ready=False)
        code, _ = exit_within(srv, 10)
    assert code == 1
    errors = [ln for ln in srv.stderr().splitlines() if "[ERROR]" in ln]
    assert len(errors) == 1 and errors[0].endswith(
        f"--admin-bind: cannot listen on 127.0.0.1:{port}: Address already in use")


class _Table(HTMLParser):
    """The cells of the page's workers table, and its refresh."""

    def __init__(self):
        super().__init__()
        self.rows: list[list[str]] = []
        self.refresh = None
        self._in_table = self._in_td = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "meta" and attrs.get("http-equiv") == "refresh":
            self.refresh = attrs.get("content")
        elif tag == "table" and attrs.get("id") == "workers":
            self._in_table = True
        elif tag == "tr" and self._in_table:
            self.rows.append([])
        elif tag == "td" and self._in_table:
            self._in_td = True
            self.rows[-1].append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_table = False
        elif tag == "td":
            self._in_td = False

    def handle_data(self, data):
        if self._in_td:
            self.rows[-1][-1] += data


def table_of(html: str) -> _Table:
    parser = _Table()
    parser.feed(html)
    return parser


def test_the_status_page_is_the_same_table_escaped_and_refreshing():
    doc = render_status(view(worker(7, BUSY, in_flight=1, oldest_start=98.0,
                                    oldest_line="GET /<script>?token=abc HTTP/1.1")))
    html = render_status_html(doc)
    page = table_of(html)
    assert page.refresh == "1" and "<script>" not in html and "abc" not in html
    rows = [r for r in page.rows if r]
    assert len(rows) == 1 and rows[0][0] == "7" and rows[0][2] == "busy"
    assert rows[0][7] == "GET /<script> HTTP/1.1"  # (escaped in the page, text in the cell)


def test_a_browser_gets_the_status_page_listing_the_workers_and_a_stuck_request(berth):
    srv = start(berth, "-w", "2", "--threads", "1")
    status, headers, body = admin_get(srv, "/status", accept="text/html,application/xhtml+xml")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert {int(r[0]) for r in table_of(body.decode()).rows if r} == set(pids_children(srv.pid))
    t, _ = in_background(lambda: http_get(srv.port, "/sleep?s=3", timeout=10))

    def stuck():
        rows = table_of(admin_get(srv, "/status", accept="text/html")[2].decode()).rows
        return [r for r in rows if r and r[2] == "busy" and r[8]]

    assert wait_for(stuck, timeout=2.5, interval=0.1), "the stuck request never showed"
    # a client that does not ask for HTML still gets JSON
    assert admin_get(srv, "/status")[1]["content-type"] == "application/json"
    t.join(timeout=10)


def test_a_changed_admin_bind_on_sighup_is_said_and_the_listener_stays(berth, tmp_path):
    # as for --bind: the master keeps its listener until the next start, and says so (a
    # changed admin_bind was dropped without a word)
    admin, other = free_port(), free_port()
    conf = tmp_path / "berth.conf.py"
    conf.write_text(f"workers = 1\nadmin_bind = '127.0.0.1:{admin}'\n")
    srv = berth(["-c", str(conf), "proto_app:app"])
    srv.admin = admin
    conf.write_text(f"workers = 1\nadmin_bind = '127.0.0.1:{other}'\n")
    srv.signal(signal.SIGHUP)
    srv.wait_for_log("generation 2 ready", timeout=15)
    assert (f"SIGHUP: --admin-bind 127.0.0.1:{other} takes effect at the next start; the "
            f"admin listener stays 127.0.0.1:{admin}") in srv.stderr()
    assert status_of(srv)["config"]["admin_bind"] == f"http://127.0.0.1:{admin}"
    assert admin_get(srv, "/readyz")[0] == 200

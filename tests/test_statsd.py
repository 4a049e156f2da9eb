"""StatsD with Gunicorn's metric names, read from a UDP socket on 127.0.0.1."""

from __future__ import annotations

import signal
import socket
import time
from collections import Counter

import pytest
from proto_helpers import http_get

from berth.converters import statsd_address
from berth.statsd import parse_address


def collect(sock: socket.socket, until, timeout: float = 10.0) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(lines):
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        lines += data.decode().split("\n")
    return lines


def test_gunicorns_metrics_arrive_over_udp_with_prefix_and_tags(berth):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        srv = berth(["-w", "1", "--statsd-host", f"127.0.0.1:{port}", "--statsd-prefix",
                     "web", "--dogstatsd-tags", "env:test", "--enable-backlog-metric",
                     "proto_app:app"])
        for path in ("/hello", "/hello", "/hello", "/nope", "/nope", "/raise-before"):
            http_get(srv.port, path)

        def done(lines):
            counts = Counter()
            for line in lines:
                name, _, rest = line.partition(":")
                if name == "web.gunicorn.requests":
                    counts["requests"] += int(rest.split("|")[0])
            return counts["requests"] >= 6 and any("gunicorn.log.exception" in x for x in lines)

        lines = collect(udp, done)
    assert lines and all(line.endswith("|#env:test") for line in lines), lines[:5]
    counters: Counter = Counter()
    durations = []
    gauges = {}
    histograms = {}
    for line in lines:
        name, _, rest = line.partition(":")
        value, kind = rest.split("|")[:2]
        if kind == "c":
            counters[name] += int(value)
        elif kind == "ms":
            durations.append(float(value))
        elif kind == "g":
            gauges[name] = float(value)
        elif kind == "h":
            histograms[name] = float(value)
    assert counters["web.gunicorn.requests"] == 6
    assert counters["web.gunicorn.request.status.200"] == 3
    assert counters["web.gunicorn.request.status.404"] == 2
    assert counters["web.gunicorn.request.status.500"] == 1
    assert counters["web.gunicorn.log.exception"] >= 1
    assert len([n for n in lines if n.startswith("web.gunicorn.request.duration:")]) == 6
    assert all(d >= 0 for d in durations)
    assert gauges.get("web.gunicorn.workers") == 1
    # Gunicorn's arbiter sends the backlog as a histogram ("mtype": "histogram"): a dashboard
    # built on DogStatsD's gunicorn.backlog.avg/.max, or a statsd_exporter mapping, wants |h
    assert "web.gunicorn.backlog" not in gauges
    assert histograms.get("web.gunicorn.backlog") == 0


@pytest.mark.parametrize(("value", "address"), [
    ("localhost:9125", ("localhost", 9125)),
    ("localhost", ("localhost", 8125)),
    (":8125", ("localhost", 8125)),
    ("[::1]", ("::1", 8125)),
    ("[::1]:9125", ("::1", 9125)),
    ("tcp://127.0.0.1:9125", ("127.0.0.1", 9125)),
    ("unix:/run/statsd.sock", "/run/statsd.sock"),
])
def test_statsd_addresses_gunicorn_takes_are_taken(value, address):
    # (Gunicorn 27's validate_statsd_address takes each of these)
    assert statsd_address(value) == value
    assert parse_address(value)[1] == address


@pytest.mark.parametrize("value", ["host:abc", "localhost:99999", "localhost:0", "unix:"])
def test_a_bad_statsd_address_is_refused_when_the_setting_is_read(value):
    with pytest.raises(ValueError, match="HOST:PORT with a port of 1 to 65535"):
        statsd_address(value)


def test_a_request_recorded_into_the_list_just_taken_is_sent_at_the_next_flush():
    # record() is `self.requests.append(...)` on an app thread: one that read self.requests
    # just before the loop's flush swapped in a new list appends to the old one after it
    # was taken; that request must still be sent, once
    from berth.statsd import Statsd

    statsd = Statsd("127.0.0.1:9")
    try:
        statsd.record("200 OK", 0.001)
        old = statsd.requests  # (what the app thread read before the swap)
        assert "gunicorn.requests:1|c|@1.0" in statsd.lines()
        old.append(("404 Not Found", 0.002))  # (its append, after the swap)
        statsd.record("200 OK", 0.003)
        later = statsd.lines()
        assert "gunicorn.requests:2|c|@1.0" in later
        assert "gunicorn.request.status.404:1|c|@1.0" in later
        assert not any(line.startswith("gunicorn.requests") for line in statsd.lines())
        statsd.counts["gunicorn.log.error"] += 1
        old = statsd.counts
        assert "gunicorn.log.error:1|c|@1.0" in statsd.lines()
        old["gunicorn.log.error"] += 1  # (a LogCounter on another thread, after the swap)
        assert "gunicorn.log.error:1|c|@1.0" in statsd.lines()
        assert not any("gunicorn.log" in line for line in statsd.lines())
    finally:
        statsd.close()


def test_a_reload_that_drops_statsd_host_keeps_the_workers_sending_where_they_did(berth, tmp_path):
    # the workers made their StatsD client from the reloaded configuration, the master kept
    # its own: without statsd_host every new worker died (None.record) and the reload
    # failed, silently; with another host, requests and gauges went to two places
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        conf = tmp_path / "berth.conf.py"
        conf.write_text(f"workers = 1\nstatsd_host = '127.0.0.1:{port}'\n")
        srv = berth(["-c", str(conf), "proto_app:app"])
        conf.write_text("workers = 1\n")
        srv.signal(signal.SIGHUP)
        srv.wait_for_log("generation 2 ready", timeout=15)
        assert "SIGHUP: the StatsD settings (--statsd-host" in srv.stderr()
        assert "reload failed" not in srv.stderr()
        for _ in range(3):
            assert http_get(srv.port, "/hello")[0] == 200

        def sent(lines):
            return sum(int(line.split(":")[1].split("|")[0]) for line in lines
                       if line.startswith("gunicorn.requests:"))

        lines = collect(udp, lambda lines: sent(lines) >= 3)
    assert sent(lines) == 3

"""--worker-connections, end to end: each worker holds at most that many connections, making
room by closing its oldest connections with no request in progress; and the open-files limit
raised at start, with the bound capped to fit."""

from __future__ import annotations

import collections
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import APPS, ROOT, BufferedSocket, connect, free_port, read_response
from proto_helpers import (
    HELLO,
    get_request,
    http_get,
    many_sockets,
    pids_children,
    proto_args,
    sockets_of,
    wait_for,
)


def private_kib(pid: int) -> int:
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def test_more_clients_than_every_workers_bound_a_new_client_is_served_memory_flat(berth):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    bound = 25
    srv = berth(["-w", "2", "--threads", "2", "--worker-connections", str(bound),
                 "--access-logfile", "none", "proto_app:app"])
    workers = pids_children(srv.pid)
    assert len(workers) == 2
    # each worker's own sockets (listener, pipes are not sockets; the eventfd is not either)
    own = {pid: sockets_of(pid) for pid in workers}
    assert http_get(srv.port, "/hello")[2] == HELLO  # (warm: the app's first request)
    before = {pid: private_kib(pid) for pid in workers}
    clients = 400  # 8 times both bounds: half answered and idle (keep-alive), half silent
    with many_sockets() as socks:
        for i in range(clients):
            s = BufferedSocket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(("127.0.0.1", srv.port))
            if i % 2 == 0:
                s.sendall(get_request("/hello"))
                status, _, body = read_response_or_closed(s)
                assert status in (200, None)
            socks.append(s)
        wait_for(lambda: all(sockets_of(pid) - own[pid] <= bound for pid in workers),
                 timeout=10)
        # a normal client is served, by one worker or the other
        for _ in range(5):
            assert http_get(srv.port, "/hello", timeout=10)[2] == HELLO
        held = {pid: sockets_of(pid) - own[pid] for pid in workers}
        after = {pid: private_kib(pid) for pid in workers}
    print(f"connections held per worker: {held}; private KiB before {before}, after {after}")
    assert all(n <= bound for n in held.values()), held
    for pid in workers:  # 200 idle connections would hold ~1 MiB in one worker unbounded
        assert after[pid] - before[pid] < 512, (before, after)
    assert "at worker_connections (25): closed" in srv.stderr()


@pytest.mark.parametrize("kind,started", [("wsgi", "-w 2"), ("asgi", "-w 2"),
                                           ("wsgi", "-w 1, then SIGTTIN"),
                                           ("asgi", "-w 1, then SIGTTIN")])
def test_a_burst_of_keep_alive_connections_spreads_over_the_workers(berth, kind, started):
    # wrk opens its connections before it sends anything, and a load balancer its pool: with
    # both workers' loops on one CPU, the first to wake used to take most or all of a burst
    # (keep-alive then pins them there; berth.worker.admission). A worker forked while it was
    # the only one balances too, once SIGTTIN gives it a sibling.
    one_first = started != "-w 2"
    srv = berth(["-w", "1" if one_first else "2", "--access-logfile", "none",
                 "--log-level", "debug", *proto_args(kind)])
    if one_first:
        (first,) = pids_children(srv.pid)
        srv.signal(signal.SIGTTIN)
        assert wait_for(lambda: len(re.findall(r"worker \d+ ready", srv.stderr())) >= 2,
                        timeout=20), srv.stderr()
    workers = pids_children(srv.pid)
    assert len(workers) == 2
    assert not one_first or first in workers
    cpu = min(os.sched_getaffinity(0))
    for pid in workers:  # (the main thread: the loop's, which accepts)
        os.sched_setaffinity(pid, {cpu})
    fewest = []
    for _ in range(5):
        socks = [connect(srv.port) for _ in range(32)]
        try:
            time.sleep(0.3)
            for sock in socks:
                sock.sendall(get_request("/pid"))
            served = collections.Counter(
                json.loads(read_response(sock)[2])["pid"] for sock in socks)
        finally:
            for sock in socks:
                sock.close()
        fewest.append(min(served[pid] for pid in workers))
        time.sleep(0.5)  # (the workers see the closes)
    assert sorted(fewest)[2] >= 10, fewest  # the median burst: 10 of 32 or more on each


def read_response_or_closed(sock):
    try:
        return read_response(sock)
    except (ConnectionError, OSError):
        return None, {}, b""


def test_the_open_files_limit_is_raised_and_the_bound_capped_to_fit(tmp_path):
    port = free_port()
    env = dict(os.environ, BERTH_IN_CONTAINER="0", PYTHONPATH=f"{APPS}{os.pathsep}{ROOT}")

    def limits():  # as a container that starts at 256 soft, 1000 hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 1000))

    err = tmp_path / "err.log"
    with open(err, "wb") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "berth", "-b", f"127.0.0.1:{port}", "-w", "1",
             "--worker-connections", "5000", "proto_app:app"],
            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err_file,
            stdin=subprocess.DEVNULL, preexec_fn=limits)
    try:
        wait_for(lambda: "ready: " in err.read_text(), timeout=20)
        (worker,) = pids_children(proc.pid)
        assert resource.prlimit(worker, resource.RLIMIT_NOFILE) == (1000, 1000)
        assert http_get(port, "/hello")[2] == HELLO
    finally:
        proc.terminate()  # our own child, by pid
        proc.wait(timeout=15)
    text = err.read_text()
    assert "open files limit raised from 256 to 1000 (the hard limit)" in text, text
    assert "at most 936 connections per worker: worker_connections 5000 capped by the open " \
           "files limit 1000" in text, text


def test_when_every_connection_is_busy_the_worker_stops_accepting_and_resumes(berth):
    srv = berth(["-w", "1", "--threads", "4", "--worker-connections", "3",
                 "--access-logfile", "none", "proto_app:app"])
    with many_sockets() as socks:
        for _ in range(3):  # three requests in progress: nothing can be closed
            s = BufferedSocket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(10)
            s.connect(("127.0.0.1", srv.port))
            s.sendall(get_request("/sleep?s=1.5"))
            socks.append(s)
        time.sleep(0.3)
        t0 = time.monotonic()
        status, _, body = http_get(srv.port, "/hello", timeout=10)  # waits in the backlog
        waited = time.monotonic() - t0
        assert (status, body) == (200, HELLO)
        for s in socks:
            assert read_response(s)[0] == 200  # nobody was cut off
    print(f"the fourth client waited {waited:.2f} s")
    assert waited > 0.5  # it was not accepted while the three were busy


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_at_the_bound_a_new_connection_gets_a_second_to_send_its_request(berth, kind):
    """At --worker-connections, a connection that has sent nothing *yet* is not idle: its
    client may be about to send the request. It goes to make room only once silent for a
    second (a preconnect, a slowloris); before that, the newcomer waits in the listen queue."""
    srv = berth(["-w", "1", "--worker-connections", "2", "--access-logfile", "none",
                 *proto_args(kind)])
    assert http_get(srv.port, "/hello")[0] == 200  # (the worker is up)
    fresh = [connect(srv.port) for _ in range(2)]  # at the bound, both silent
    try:
        time.sleep(0.2)  # (accepted by the worker)
        newcomer = connect(srv.port)  # waits in the listen queue, or makes room
        newcomer.sendall(get_request("/hello"))
        time.sleep(0.3)  # (the worker has seen it)
        for sock in fresh:  # their requests, sent well inside the second: both served
            sock.sendall(get_request("/hello"))
        for sock in fresh:
            assert read_response(sock)[:3:2] == (200, HELLO), srv.stderr()
        # (both are idle keep-alive connections now: the oldest goes to make room)
        assert read_response(newcomer)[:3:2] == (200, HELLO), srv.stderr()
        newcomer.close()
    finally:
        for sock in fresh:
            sock.close()


def test_at_the_bound_a_request_read_in_the_same_wake_up_is_not_shed(berth):
    """The loop reads every readable socket of a wake-up before it parses them (Loop.reads):
    a keep-alive connection whose request was read, not parsed yet, looks idle. A new
    connection in the same wake-up, at --worker-connections, must not shed it: its request
    came (and left the kernel), so it is answered, not closed unanswered."""
    srv = berth(["-w", "1", "--threads", "1", "--worker-connections", "4",
                 "--access-logfile", "none", "proto_app:app"])
    assert http_get(srv.port, "/hello")[0] == 200  # (the worker is up)
    for _ in range(2):
        slow, *idle = [connect(srv.port) for _ in range(4)]  # at the bound
        newcomer = None
        try:
            for sock in idle:
                sock.sendall(get_request("/hello"))
                assert read_response(sock)[0] == 200
            time.sleep(0.2)
            slow.sendall(get_request("/sleep?s=0.5"))  # (one thread: the loop sleeps inline)
            time.sleep(0.1)
            for i, sock in enumerate(idle):  # read in the loop's next wake-up...
                sock.sendall(get_request(f"/path?i={i}"))
            time.sleep(0.05)
            newcomer = connect(srv.port)  # ...as is this one, which makes room
            assert read_response(slow)[0] == 200
            for i, sock in enumerate(idle):
                status, _, body = read_response(sock)
                assert (status, body) == (200, f"/path?i={i}".encode()), srv.stderr()
        finally:
            for sock in (slow, *idle, newcomer):
                if sock is not None:
                    sock.close()
        time.sleep(0.3)

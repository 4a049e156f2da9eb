"""The loop thread sends the responses of one wake-up together, after the apps have run
(`Connection.put`, `Loop.flush`; under `-k asgi`, the writes of one event-loop iteration,
`HttpProtocol.write`): each client still gets its own responses, in order, and the sends
follow one another instead of alternating with the reads and the app calls."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest
from conftest import BufferedSocket, connect, read_response
from proto_helpers import HELLO, big_pattern, get_request, pids_children, wait_for

STRACE = shutil.which("strace")
CLIENTS = 8


def requests_in_one_wake_up(port: int, paths: list[list[str | bytes]],
                            sleep: str = "/sleep?s=0.4") -> list[BufferedSocket]:
    """One connection per item of `paths`, its requests (a path, or raw bytes) sent in one
    segment (pipelined) while the worker's only thread sleeps in the app for another
    connection: when it wakes, every request is waiting, and one epoll wake-up returns them
    all. The first response of each connection is then held until the others' apps ran."""
    socks = [connect(port) for _ in paths]
    sleeper = connect(port)
    try:
        for s in socks:  # each connection's first request: its parser exists, warm
            s.sendall(get_request("/hello"))
            assert read_response(s)[0] == 200
        sleeper.sendall(get_request(sleep))
        time.sleep(0.15)  # the worker is in the app now
        for s, ps in zip(socks, paths, strict=True):
            s.sendall(b"".join(p if type(p) is bytes else get_request(p) for p in ps))
        assert read_response(sleeper)[0] == 200
    finally:
        sleeper.close()
    return socks


def test_the_responses_of_one_wake_up_each_reach_their_own_client_in_order(berth):
    srv = berth(["-w", "1", "--threads", "1", "--access-logfile", "none", "proto_app:app"])
    for round_ in range(3):
        paths = [[f"/path?c={c}-r={round_}"] for c in range(CLIENTS)]
        paths[1] = [f"/path?c=1-{round_}-{i}" for i in range(3)]  # pipelined: held in order
        paths[2] = ["/big?n=200000"]  # too big to hold back: sent at once, in its turn
        paths[3] = [f"/path?c=3-{round_}", "/hello"]
        socks = requests_in_one_wake_up(srv.port, paths)
        try:
            for s, ps in zip(socks, paths, strict=True):
                for p in ps:
                    status, _, body = read_response(s)
                    assert status == 200
                    if p.startswith("/path"):
                        assert body == p.encode()
                    elif p.startswith("/big"):
                        assert len(body) == 200000
                    else:
                        assert body == HELLO
        finally:
            for s in socks:
                s.close()


def test_a_closing_response_behind_a_held_one_goes_out_after_it_then_the_connection_closes(
        berth):
    srv = berth(["-w", "1", "--threads", "1", "--access-logfile", "none", "proto_app:app"])
    closing = get_request("/path?x=3", headers={"Connection": "close"})
    socks = requests_in_one_wake_up(srv.port, [["/path?x=1", closing], ["/path?x=2"]])
    try:
        status, headers, body = read_response(socks[0])
        assert (status, body) == (200, b"/path?x=1")
        status, headers, body = read_response(socks[0])
        assert (status, body, headers.get("connection")) == (200, b"/path?x=3", "close")
        assert socks[0].recv(1) == b""  # closed after it
        assert read_response(socks[1])[2] == b"/path?x=2"
    finally:
        for s in socks:
            s.close()


@pytest.mark.parametrize("threads", ["1", "4"])
def test_a_held_response_the_socket_takes_in_part_arrives_whole_when_the_client_reads(
        berth, threads):
    """A flush whose send of a held response (Connection.send_held) is taken in part: the
    rest waits for the socket to turn writable, and nothing is sent twice or lost. The
    client reads nothing while it asks for response after response, one per wake-up, until
    the server's socket buffer (autotuned: about 2 MB here) takes only part of one."""
    srv = berth(["-w", "1", "--threads", threads, "--access-logfile", "none",
                 "proto_app:app"])
    n, count = 60000, 100  # under the 64 KiB a response may be held at; 6 MB in all
    want = b"".join(big_pattern(n))
    s = BufferedSocket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # (before connect: the window)
    s.settimeout(10)
    s.connect(("127.0.0.1", srv.port))
    try:
        for _ in range(count):
            s.sendall(get_request(f"/big?n={n}"))
            time.sleep(0.005)  # (each its own wake-up: a queue of one at its flush)
        for i in range(count):
            status, _, body = read_response(s)
            assert (status, len(body)) == (200, n), i
            assert body == want, i
        s.sendall(get_request("/path?x=1"))  # the connection goes on
        assert read_response(s)[::2] == (200, b"/path?x=1")
    finally:
        s.close()


def test_an_error_behind_a_held_response_lingers_so_the_client_reads_both_not_a_reset(berth):
    srv = berth(["-w", "1", "--threads", "1", "--access-logfile", "none", "proto_app:app"])
    socks = requests_in_one_wake_up(srv.port, [["/path?x=1", b"NOT HTTP AT ALL\r\n\r\n"]])
    s = socks[0]
    try:
        assert read_response(s)[:3:2] == (200, b"/path?x=1")
        status, headers, _ = read_response(s)
        assert (status, headers.get("connection")) == (400, "close")
        # the client goes on sending, as a client that has not read the 400 yet does: the
        # server reads and drops it for a while (RFC 9112 9.6), so no reset destroys what
        # the client has not read yet; it sees the end of the stream
        s.sendall(get_request("/path?x=4") * 20)
        time.sleep(0.2)
        s.sendall(get_request("/path?x=5"))
        assert s.recv(1) == b""
    finally:
        s.close()


def test_a_stream_behind_a_held_response_goes_on_for_a_slow_reader(berth):
    """The held response, then a 20 MB stream on the same connection whose client reads
    nothing for a while: the stream pauses at the write-behind bound and resumes as the
    client reads (before, it waited for a write-stall deadline and was cut)."""
    srv = berth(["-w", "1", "--threads", "1", "--access-logfile", "none", "--keep-alive", "2",
                 "--header-timeout", "2", "proto_app:app"])
    n = 20_000_000
    socks = requests_in_one_wake_up(srv.port, [["/path?x=1", f"/big?n={n}"]])
    s = socks[0]
    s.settimeout(20)
    try:
        time.sleep(0.5)  # the client is busy: the socket fills, the stream pauses
        assert read_response(s)[:3:2] == (200, b"/path?x=1")
        status, _, body = read_response(s)
        assert (status, len(body)) == (200, n)
    finally:
        s.close()


def traced_wake_up(srv, tmp_path, calls: str, paths: list[str], warm: str,
                   sleep: str, sleep_answer: bytes) -> str:
    """strace the worker's `calls` (only they stop it: seccomp) while one wake-up brings a
    request on each of len(paths) connections (`requests_in_one_wake_up`; `warm` is sent
    until the tracer shows it is attached); return the trace after the answer to `sleep`
    (whose body holds `sleep_answer`)."""
    (worker,) = pids_children(srv.pid)
    trace = tmp_path / "strace.out"
    first = calls.split(",")[-1] + "("  # a call the warm-up request makes
    with open(tmp_path / "strace.err", "wb") as err:
        cmd = [STRACE, "-f", "-qq", "--seccomp-bpf", "-s", "512", "-e", f"trace={calls}",
               "-o", str(trace), "-p", str(worker)]
        tracer = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        def traced() -> bool:
            s = connect(srv.port)
            try:
                s.sendall(get_request(warm))
                read_response(s)
            finally:
                s.close()
            return trace.exists() and first in trace.read_text(errors="replace")

        wait_for(traced, timeout=20, interval=0.3)
        mark = len(trace.read_text(errors="replace"))
        socks = requests_in_one_wake_up(srv.port, [[p] for p in paths], sleep=sleep)
        for p, s in zip(paths, socks, strict=True):
            assert read_response(s)[2] in (p.encode(), p.split("?", 1)[1].encode())
            s.close()
    finally:
        os.kill(tracer.pid, signal.SIGINT)
        tracer.wait(timeout=20)
    text = trace.read_text(errors="replace")[mark:]
    return text[text.index(sleep_answer.decode()):].split("\n", 1)[1]


def pattern_of(text: str, letters: dict[str, str]) -> str:
    """The traced calls in order, one letter each."""
    calls = re.findall(r"^\d+\s+(\w+)\(", text, re.M)
    return "".join(letters[c] for c in calls if c in letters)


@pytest.mark.skipif(STRACE is None, reason="strace is not installed (apt-get install strace)")
def test_the_sends_of_a_wake_up_follow_its_app_calls_not_alternate_with_them(berth, tmp_path):
    srv = berth(["-w", "1", "--threads", "1", "--access-logfile", "none", "proto_app:app"])
    text = traced_wake_up(srv, tmp_path, "recvfrom,sendto",
                          [f"/path?c={c}" for c in range(CLIENTS)], "/hello",
                          "/sleep?s=0.4", b"slept 0.4")
    pattern = pattern_of(text, {"recvfrom": "r", "sendto": "s"})
    assert pattern.count("r") >= CLIENTS and pattern.count("s") >= CLIENTS, pattern
    # Batched: the 8 reads, then the 8 sends. Under strace each call is slower, and a
    # response held for more than a millisecond goes out before the next app call, so a
    # slow machine may split the batch; alternating (rsrsrs...) is what it was before.
    runs = len(re.findall("s+", pattern))
    assert runs <= CLIENTS // 2, f"sends alternate with reads: {pattern}"


@pytest.mark.skipif(STRACE is None, reason="strace is not installed (apt-get install strace)")
def test_asgi_the_writes_of_an_iteration_follow_its_app_steps_not_alternate_with_them(
        berth, tmp_path):
    """-k asgi (the asyncio loop, whose sockets use recvfrom and sendto): the 8 requests of one
    wake-up run their apps (each makes a getsid() call the trace shows), then their
    responses are sent one after another; each send used to follow its own app step."""
    srv = berth(["-w", "1", "-k", "asgi", "--asgi-loop", "asyncio", "--access-logfile", "none",
                 "asgi_app:app"])
    text = traced_wake_up(srv, tmp_path, "recvfrom,sendto,getsid",
                          [f"/mark?c={c}" for c in range(CLIENTS)], "/mark?warm",
                          "/block?s=0.4", b"blocked")
    pattern = pattern_of(text, {"getsid": "g", "sendto": "s"})
    assert pattern.count("g") == CLIENTS and pattern.count("s") >= CLIENTS, pattern
    # batched: gggggggg ssssssss; before: gsgsgsgs...
    assert len(re.findall("s+", pattern)) <= CLIENTS // 4, f"sends alternate with apps: {pattern}"


@pytest.mark.parametrize("kind", ["memoryview", "bytearray"])
@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_asgi_a_buffer_the_app_refills_after_each_part_is_sent_as_it_was(berth, kind, version):
    srv = berth(["-w", "1", "-k", "asgi", "--access-logfile", "none", "asgi_app:app"])
    s = connect(srv.port)
    try:
        s.sendall(get_request(f"/reuse?as={kind}", version=version))
        assert read_response(s)[2] == b"AAAABBBBCCCC"
    finally:
        s.close()


@pytest.mark.parametrize("kind", ["wsgi", "asgi"])
def test_a_response_is_out_before_a_slow_post_request_hook_ends(berth, tmp_path, kind):
    """A held response would wait for the post_request hook (called once the response is
    over): with such a hook, responses are sent before it runs. The hook sleeps 1.5 s, then
    leaves a file: the client has the response while the file is not there yet."""
    done = tmp_path / "hook-done"
    conf = tmp_path / "hooks.py"
    conf.write_text("import time\n\n\ndef post_request(worker, req, environ, resp):\n"
                    f"    time.sleep(1.5)\n    open({str(done)!r}, 'w').close()\n")
    app = ["-k", "asgi", "asgi_app:app"] if kind == "asgi" else ["--threads", "1",
                                                                 "proto_app:app"]
    srv = berth(["-w", "1", "--access-logfile", "none", "-c", str(conf), *app])
    s = connect(srv.port)
    try:
        s.sendall(get_request("/hello"))
        assert read_response(s)[0] == 200
        assert not done.exists(), "the response waited for the post_request hook"
        assert wait_for(done.exists, timeout=10)  # (the hook did run)
    finally:
        s.close()

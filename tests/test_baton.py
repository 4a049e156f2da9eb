"""With app threads the loop thread answers requests itself while one app thread stands by to
take the loop over (berth/worker/baton.py), seen from outside: fast requests run on the loop
thread, one that waits loses the loop to another thread at once, a stream goes on on its own
thread, --threads is still the most app calls at once, the process stops cleanly wherever the
loop is, and an idle worker does not wake up a hundred times a second. One test, the last,
drives the Baton itself in-process, with real threads and its real lock: a race of two threads
that no request from outside can time."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from conftest import connect, http_get, read_response
from proto_helpers import get_request, in_background, wait_for
from test_admin import metric, settle, start, status_of

APP = ["--access-logfile", "none", "proto_app:app"]


def switches(srv, answered: int) -> tuple[float, float]:
    """berth_app_thread_switches_total (slow_call, app_waits), once the worker has published
    at least `answered` responses."""
    m = settle(srv, lambda m: sum(v for (name, _), v in m.items()
                                  if name == "berth_requests_total") >= answered)
    return (metric(m, "berth_app_thread_switches_total", reason="slow_call"),
            metric(m, "berth_app_thread_switches_total", reason="app_waits"))


def names_on_one_connection(port: int, n: int) -> list[str]:
    """The thread that answered each of n /thread requests on one keep-alive connection."""
    names = []
    with connect(port) as sock:
        for _ in range(n):
            sock.sendall(get_request("/thread"))
            status, _, body = read_response(sock)
            assert status == 200
            names.append(body.decode())
    return names


def test_fast_requests_run_on_the_loop_thread_with_four_app_threads(berth):
    srv = start(berth, "-w", "1", "--threads", "4")
    names = names_on_one_connection(srv.port, 30)
    # (the first may go to an app thread: one stands by once it has answered a request)
    assert names[-20:] == ["MainThread"] * 20, names
    assert switches(srv, 30) == (0, 0)  # (a switch would send the next second's elsewhere)


def test_a_request_that_waits_loses_the_loop_and_the_others_go_on(berth):
    srv = start(berth, "-w", "1", "--threads", "4")
    names_on_one_connection(srv.port, 3)  # an app thread stands by
    with connect(srv.port) as slow:
        slow.sendall(get_request("/sleep?s=2&who=1"))
        time.sleep(0.3)
        started = time.monotonic()
        others = [http_get(srv.port, "/thread", timeout=5)[2].decode() for _ in range(5)]
        ready = http_get(srv.port, "/-/ready", timeout=5)[0]
        took = time.monotonic() - started
        status, _, body = read_response(slow)
    assert (status, body) == (200, b"slept 2.0 on MainThread")  # it began on the loop thread
    assert ready == 200
    assert all(name.startswith("berth-app-") for name in others), others
    assert took < 1.5, f"requests waited {took:.1f}s behind the sleeping one"
    assert switches(srv, 9) == (1, 0)  # the one takeover, counted (berth_app_thread_switches)


def test_no_more_than_threads_app_calls_run_at_once(berth):
    srv = berth(["-w", "1", "--threads", "2", *APP])
    names_on_one_connection(srv.port, 3)  # the loop thread answers inline from now on
    results: list = [None] * 6

    def call(i):
        results[i] = http_get(srv.port, "/overlap?s=0.4", timeout=20)

    clients = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(timeout=30)
    assert all(r is not None and r[0] == 200 for r in results), results
    most = max(json.loads(r[2])["most"] for r in results)
    assert most == 2, f"{most} app calls at once with --threads 2"


def test_short_waits_go_to_the_app_threads_and_overlap(berth):
    # 2 ms waits never lose the loop to a takeover; measured calls show the app waits
    srv = start(berth, "-w", "1", "--threads", "4")
    names_on_one_connection(srv.port, 3)
    most = [0] * 8

    def client(i):
        with connect(srv.port) as sock:
            for _ in range(40):
                sock.sendall(get_request("/overlap?s=0.002"))
                status, _, body = read_response(sock)
                assert status == 200
                most[i] = max(most[i], json.loads(body)["most"])

    clients = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in clients:
        t.start()
    for t in clients:
        t.join(timeout=60)
    assert max(most) >= 3, f"at most {max(most)} waits overlapped with --threads 4"
    assert switches(srv, 323)[1] >= 1  # the app waits: counted


def test_a_stream_stays_on_its_thread_while_the_loop_moves(berth):
    srv = berth(["-w", "1", "--threads", "4", *APP])
    names_on_one_connection(srv.port, 3)
    with connect(srv.port) as streaming:
        # parts at once: the second part hands the loop over to an app thread
        streaming.sendall(get_request("/stream?n=200&who=1"))
        status, _, body = read_response(streaming)
        assert status == 200
        parts = body.decode().split()
        assert len(parts) == 200
        assert {p.split("@")[1] for p in parts} == {"MainThread"}, set(parts)
        # parts that wait: the first wait loses the loop; the rest still come from MainThread
        streaming.sendall(get_request("/stream?n=4&delay=0.4&who=1"))
        time.sleep(0.2)
        started = time.monotonic()
        other = http_get(srv.port, "/thread", timeout=5)
        took = time.monotonic() - started
        status, _, body = read_response(streaming)
    parts = body.decode().split()
    assert status == 200 and len(parts) == 4
    assert len({p.split("@")[1] for p in parts}) == 1, parts  # one thread for the stream
    assert other[0] == 200 and other[2] != parts[0].split("@")[1].encode()
    assert took < 1.0, f"a request waited {took:.1f}s behind a stream"


def test_the_ticks_go_on_while_streams_move_the_loop(berth):
    # every stream hands the loop to another thread: the tick (heartbeat, deadlines, the Date
    # header) must still come twice a second
    srv = berth(["-w", "1", "--threads", "4", *APP])
    names_on_one_connection(srv.port, 3)
    dates = set()
    with connect(srv.port) as sock:
        started = time.monotonic()
        for _ in range(200):
            if time.monotonic() - started > 3.2:
                break
            sock.sendall(get_request("/stream?n=2"))
            status, headers, _ = read_response(sock)
            assert status == 200
            dates.add(headers["date"])
            time.sleep(0.05)
    assert len(dates) >= 3, f"the Date header changed {len(dates) - 1} times in 3 s"


def test_responses_held_when_the_loop_is_taken_over_go_out_at_once(berth):
    srv = berth(["-w", "1", "--threads", "4", *APP])
    names_on_one_connection(srv.port, 3)
    tries = []
    # held back for the loop's flush, /hello goes out when the next thread takes the loop (not
    # after that thread's first wait for events: 0.5 s). The defect takes 0.5 s every time; a
    # loaded machine can delay one try past the bound, so the best of the tries is judged.
    for n in range(4):
        with connect(srv.port) as busy, connect(srv.port) as fast, connect(srv.port) as slow:
            busy.sendall(get_request("/thread?spin=8"))  # the loop thread computes meanwhile:
            time.sleep(0.002)
            started = time.monotonic()  # these two arrive together, in one wake-up of the loop
            fast.sendall(get_request("/hello"))
            slow.sendall(get_request("/sleep?s=1.5&who=1"))
            assert read_response(fast)[0] == 200
            took = time.monotonic() - started
            status, _, loop_thread = read_response(busy)  # (the loop thread computed it)
            assert status == 200 and (n > 0 or loop_thread == b"MainThread")
            slept = read_response(slow)[2]
        # The case under test: the thread that had the loop held /hello and ran /sleep, and
        # lost the loop in it. On a loaded machine, the 8 ms of /thread can outlast the
        # takeover bound (10 ms) themselves: the loop moves on then, requests go to the app
        # threads for a while, and /sleep runs on another thread; that try tests nothing
        if slept != b"slept 1.5 on " + loop_thread:
            continue
        tries.append(took)
        if took < 0.35:
            break
    assert tries, "/thread?spin=8 lost the loop in every try: the case never came about"
    assert min(tries) < 0.35, f"/hello took {', '.join(f'{t:.2f}s' for t in tries)}"


def test_the_reads_of_a_wake_up_left_behind_by_a_takeover_are_answered_in_order(berth):
    """The loop reads every readable socket of a wake-up before it parses and answers them
    (Loop.run): when an app thread takes the loop over from an inline call, the reads
    not answered yet are the new loop thread's, pipelined requests in their order."""
    srv = berth(["-w", "1", "--threads", "4", *APP])
    names_on_one_connection(srv.port, 3)
    for _ in range(3):
        with connect(srv.port) as busy, connect(srv.port) as slow, \
                connect(srv.port) as a, connect(srv.port) as b:
            busy.sendall(get_request("/thread?spin=8"))  # the loop thread computes meanwhile:
            time.sleep(0.002)  # the next ones arrive together, in one wake-up of the loop
            slow.sendall(get_request("/sleep?s=1.5"))  # (first: taken over from)
            for name, sock in (("a", a), ("b", b)):
                sock.sendall(get_request(f"/path?{name}1") + get_request(f"/path?{name}2"))
            for name, sock in (("a", a), ("b", b)):
                for i in (1, 2):
                    assert read_response(sock)[2] == f"/path?{name}{i}".encode()
            slow.setblocking(False)
            try:  # answered by another thread while the slow one still sleeps
                early = slow.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                early = None
            assert early is None, "the others were answered only after the slow one"
            slow.setblocking(True)
            assert read_response(slow)[0] == 200
            assert read_response(busy)[0] == 200


def probe_behind(port: int, path: str, body: bytes) -> float:
    """How long a readiness probe waits while the loop thread answers `path` (whose response
    must be `body`), 0.2 s into it."""
    with connect(port) as sock:
        sock.sendall(get_request(path))
        time.sleep(0.2)
        started = time.monotonic()
        assert http_get(port, "/-/ready", timeout=5)[0] == 200
        took = time.monotonic() - started
        assert read_response(sock)[2] == body
    return took


def test_a_slow_close_on_the_loop_thread_loses_the_loop_too(berth):
    srv = berth(["-w", "1", "--threads", "4", *APP])
    names_on_one_connection(srv.port, 3)
    took = probe_behind(srv.port, "/closeable?mode=slow", b"c-1\n")  # (sent before close())
    assert took < 0.5, f"a probe waited {took:.2f}s behind the app's close()"


def test_a_held_response_does_not_wait_for_a_slow_close(berth):
    # (held for the loop's flush, it goes out when the watcher takes the loop over)
    srv = berth(["-w", "1", "--threads", "4", *APP])
    names_on_one_connection(srv.port, 3)
    with connect(srv.port) as sock:
        started = time.monotonic()
        sock.sendall(get_request("/closeable?tag=held&mode=sized-slow"))
        status, headers, body = read_response(sock)
        took = time.monotonic() - started
    assert (status, body, headers.get("content-length")) == (200, b"c-1\n", "4")
    assert took < 0.5, f"the response waited {took:.2f}s for the app's close()"


def test_a_slow_iter_on_the_loop_thread_loses_the_loop_too(berth):
    srv = berth(["-w", "1", "--threads", "4", *APP])
    names_on_one_connection(srv.port, 3)
    took = probe_behind(srv.port, "/slow-iter?s=1.5", b"iterated\n")
    assert took < 0.5, f"a probe waited {took:.2f}s behind the body's __iter__"


def test_sigterm_is_seen_while_the_app_runs_its_own_event_loop_on_the_main_thread(berth):
    # uvloop points the signal wakeup fd at itself while it runs: the worker's own pipe gets
    # nothing, and the main thread (taken over, still in the app) must record the signal
    srv = berth(["-w", "1", "--threads", "4", *APP])
    names_on_one_connection(srv.port, 3)
    with connect(srv.port) as sock:
        sock.sendall(get_request("/uvloop?s=2"))
        time.sleep(0.5)
        started = time.monotonic()
        srv.signal(signal.SIGTERM)
        assert read_response(sock)[2] == b"ran uvloop"
        assert srv.wait(timeout=15) == 0, srv.stderr()
        took = time.monotonic() - started
    assert took < 5, f"stopped {took:.1f}s after SIGTERM (the graceful timeout is 8 s)"


def test_a_request_queued_in_the_same_wake_up_does_not_exceed_the_threads(berth):
    # a request whose body streams in goes to an app thread; one answered inline right after
    # it must not leave the loop thread without a watcher, nor run a third app call
    srv = berth(["-w", "1", "--threads", "2", *APP])

    def upload(s: float) -> bytes:
        return (f"POST /overlap?s={s} HTTP/1.1\r\nHost: x\r\n"
                "Content-Length: 2000000\r\n\r\n").encode()

    with connect(srv.port) as sock, connect(srv.port) as first:
        for _ in range(3):
            sock.sendall(get_request("/hello"))
            read_response(sock)
        first.sendall(upload(4))  # on an app thread for 4 s
        time.sleep(0.1)
        for _ in range(3):  # the other one stands by again
            sock.sendall(get_request("/thread"))
            read_response(sock)
        with connect(srv.port) as a, connect(srv.port) as b:
            sock.sendall(get_request("/thread?spin=8"))  # the loop thread computes meanwhile
            time.sleep(0.002)
            a.sendall(upload(1))  # queued for the app thread standing by
            b.sendall(get_request("/overlap?s=2"))  # answered by the loop thread
            assert read_response(sock)[0] == 200
            time.sleep(0.3)
            started = time.monotonic()
            assert http_get(srv.port, "/-/ready", timeout=5)[0] == 200
            took = time.monotonic() - started
            b_status, _, b_body = read_response(b)
            a.sendall(b"a" * 2000000)
            a_status, _, a_body = read_response(a)
        first.sendall(b"f" * 2000000)
        f_status, _, f_body = read_response(first)
    assert (a_status, b_status, f_status) == (200, 200, 200)
    most = max(json.loads(body)["most"] for body in (a_body, b_body, f_body))
    assert most <= 2, f"{most} app calls at once with --threads 2"
    assert took < 0.5, f"a probe waited {took:.2f}s"


def test_clients_that_pipeline_and_read_nothing_hold_no_app_thread(berth):
    """Requests on the app threads (here: after a takeover) from clients that pipeline and read
    none of their responses: each thread answers until its client has a bound's worth unread,
    then pauses the connection and takes other work. It went on with the next request and
    blocked in send(): four such clients held both threads until the write stall let them go
    (75 s), and the worker answered no one meanwhile."""
    srv = berth(["-w", "1", "--threads", "2", *APP])
    names_on_one_connection(srv.port, 3)  # an app thread stands by
    flood = get_request("/big?n=65536") * 200
    socks = []
    try:
        for _ in range(4):
            sock = connect(srv.port)
            sock.sendall(get_request("/sleep?s=0.05"))  # longer than a takeover's 10 ms
            sock.setblocking(False)
            socks.append(sock)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # (bounded: the buffers fill within it)
            for sock in socks:
                try:
                    sock.send(flood)
                except BlockingIOError:
                    pass
            time.sleep(0.05)
        assert http_get(srv.port, "/hello", timeout=10)[0] == 200
        # and the flooders are answered in order, whole, as they read
        for sock in socks[:2]:
            sock.setblocking(True)
            sock.settimeout(10)
            assert read_response(sock)[::2] == (200, b"slept 0.05")
            for _ in range(50):
                status, _, body = read_response(sock)
                assert (status, len(body)) == (200, 65536)
    finally:
        for sock in socks:
            sock.close()
    assert "Traceback" not in srv.stderr(), srv.stderr()


def test_sigterm_exits_cleanly_once_the_loop_has_moved_to_an_app_thread(berth):
    srv = berth(["-w", "1", "--threads", "2", *APP])
    names_on_one_connection(srv.port, 3)
    with connect(srv.port) as slow:
        slow.sendall(get_request("/sleep?s=1&who=1"))
        time.sleep(0.3)
        # answered meanwhile: another thread runs the loop
        assert http_get(srv.port, "/hello", timeout=0.6)[0] == 200
        assert read_response(slow)[2] == b"slept 1.0 on MainThread"
    # the main thread is one of the app threads now; the process ends from the loop's
    with connect(srv.port) as busy:
        busy.sendall(get_request("/sleep?s=1"))
        time.sleep(0.3)
        srv.signal(signal.SIGTERM)
        assert read_response(busy)[::2] == (200, b"slept 1.0")
    assert wait_for(lambda: srv.proc.poll() is not None, timeout=15)
    assert srv.proc.returncode == 0, srv.stderr()
    assert "crashed" not in srv.stderr() and "internal error" not in srv.stderr()
    assert "Traceback" not in srv.stderr(), srv.stderr()


def test_sigterm_is_seen_whichever_thread_runs_the_loop(berth):
    # Python runs signal handlers on the main thread only; once a stream has handed the loop
    # to an app thread, the main thread waits for work: the loop must still see SIGTERM
    for _ in range(3):
        srv = berth(["-w", "1", "--threads", "4", *APP])
        with connect(srv.port) as sock:
            sock.sendall(get_request("/stream?n=200"))
            assert read_response(sock)[0] == 200
        started = time.monotonic()
        srv.signal(signal.SIGTERM)
        assert srv.wait(timeout=15) == 0, srv.stderr()
        took = time.monotonic() - started
        assert took < 4, f"stopped after {took:.1f}s (the graceful timeout is 8 s)"


def test_an_idle_worker_with_app_threads_stops_waking_up(berth):
    srv = berth(["-w", "1", "--threads", "4", *APP])
    pid = json.loads(http_get(srv.port, "/pid")[2])["pid"]
    names_on_one_connection(srv.port, 3)  # an app thread stands by, waking every 10 ms

    def wake_ups() -> int:
        total = 0
        for status in Path(f"/proc/{pid}/task").glob("*/status"):
            for line in status.read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        return total

    time.sleep(1.5)  # it parks after a second without a request
    before = wake_ups()
    time.sleep(2.0)
    woke = wake_ups() - before
    # the loop's ticks wake it twice a second; a watcher standing by would wake 200 times
    assert woke < 40, f"{woke} wake-ups in 2 s of idleness"
    # and the next requests are answered, on the loop thread again after the first (once the
    # app thread that answered it stands by)
    assert "MainThread" in names_on_one_connection(srv.port, 10)[1:]


def test_a_watcher_that_saw_one_call_never_takes_over_the_next_call_of_the_same_response():
    """The real Baton and a real watcher thread, in-process: the watcher sees the loop thread's
    first app call of a response past TAKEOVER, then waits for the baton's lock (held by another
    app thread) while that call ends and the response's next call (its body's first part)
    begins. It must not take the young call over (it did once, when the calls of one response
    shared one entry): the takeover comes only once the call it deposes is TAKEOVER old."""
    from queue import SimpleQueue

    from berth.worker import baton as baton_mod

    class Req:
        dispatched = 0.0
        progress = 0.0

    class Conn:
        response = None
        thread = 0

    class Resp:  # what Baton reads of a Response
        def __init__(self):
            self.req, self.conn, self.started, self.inline = Req(), Conn(), 0.0, True

    class Responder:  # what Baton reads of the Responder
        inline = True
        served = 0
        loop = SimpleNamespace(next_tick=0.0)

        def __init__(self):
            self.busy, self.work = {}, SimpleQueue()

    baton = baton_mod.Baton(Responder(), [0.0])
    baton.sample = 1 << 30  # no measured calls (getrusage) in this test
    took = []  # (the call running when the watcher took the loop, its age then)
    running = {"call": 0, "since": 0.0}
    baton.take_loop = lambda: took.append(
        (running["call"], time.monotonic() - running["since"]))
    standing = threading.Event()

    def watcher():
        me = threading.get_ident()
        baton.stand_by(me)
        standing.set()
        baton.wait(me, SimpleQueue().get)  # returns once it is no longer the watcher

    watching = threading.Thread(target=watcher, daemon=True)
    watching.start()
    assert standing.wait(5)

    def hold_the_lock():  # another app thread, inside the baton's lock for 30 ms
        with baton.lock:
            time.sleep(0.030)

    holder = threading.Thread(target=hold_the_lock)
    resp = Resp()

    def call(n, seconds, then=None):
        def run():
            running["call"], running["since"] = n, resp.req.progress  # (the lead's start)
            if then is not None:
                then()
            time.sleep(seconds)
        return run

    baton.lead(resp, call(1, 0.025, holder.start))  # the app: 25 ms, the lock busy for 30
    if not resp.req.dispatched:
        baton.lead(resp, call(2, 0.060))  # its body's first part: 60 ms, same response
    holder.join(5)
    baton.watcher = 0  # (lets the watcher go if it took nothing)
    watching.join(5)
    assert took and all(age >= baton_mod.TAKEOVER for _, age in took), took


def test_a_request_taken_over_from_the_loop_thread_shows_busy_in_status_throughout(berth):
    # the takeover cleared the loop thread's app word, and the slot, written before the call,
    # said idle until the new loop thread's tick: /status showed the worker idle, with the
    # request gone, for up to half a second (a browser test caught it under load)
    srv = start(berth, "-w", "1", "--threads", "2")
    names_on_one_connection(srv.port, 3)
    t, box = in_background(lambda: http_get(srv.port, "/sleep?s=1.5", timeout=10))
    seen = []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        worker = status_of(srv)["workers"][0]
        seen.append((worker["state"], bool(worker["oldest_request"]) or worker["in_flight"]))
        time.sleep(0.01)
    t.join(10)
    assert box["result"][0] == 200
    first_busy = next(i for i, (state, _) in enumerate(seen) if state == "busy")
    assert all(state == "busy" for state, _ in seen[first_busy:]), seen

"""Signal handling of berth's master process, end to end."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest
from conftest import read_response
from proto_helpers import (
    HELLO,
    connect,
    exit_within,
    get_request,
    http_get,
    in_background,
    pids_children,
    read_until_closed,
    wait_for,
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize(("kind", "app", "sleep"), [
    ("gthread", "super_app:app", "SUPER_APP_IMPORT_SLEEP"),
    ("asgi", "asgi_app:app", "ASGI_IMPORT_SLEEP"),
])
def test_sigterm_while_a_worker_boots_stops_it_once_booted(berth, kind, app, sleep):
    # (the worker cannot interrupt the app's import; it must not wait for
    # --graceful-timeout and the master's kill after it either)
    srv = berth(["-w", "1", "-k", kind, "--graceful-timeout", "20", app],
                env={sleep: "1.5"}, wait_ready=False)
    assert wait_for(lambda: pids_children(srv.pid), timeout=10)
    time.sleep(0.5)  # importing the app
    assert "ready: " not in srv.stderr()
    srv.signal(signal.SIGTERM)
    code, took = exit_within(srv, 15)
    assert code == 0, srv.stderr()
    assert took < 10, took
    assert "did not stop in time" not in srv.stderr()


def test_sigterm_lets_in_flight_request_finish_then_exits_0(berth):
    srv = berth(["-w", "1", "--threads", "1", "proto_app:app"])
    t, box = in_background(lambda: http_get(srv.port, "/sleep?s=1", timeout=15))
    time.sleep(0.3)  # the request is now inside the app
    srv.signal(signal.SIGTERM)
    t.join(15)
    assert "error" not in box, f"client failed: {box.get('error')!r}"
    status, _, body = box["result"]
    assert status == 200
    assert body == b"slept 1.0"
    code, elapsed = exit_within(srv, 15)
    assert code == 0, f"exit code {code} after {elapsed:.1f}s\n{srv.stderr()}"


def test_sigterm_when_idle_exits_0_quickly(berth):
    srv = berth(["-w", "2", "proto_app:app"])
    assert http_get(srv.port, "/hello")[2] == HELLO
    srv.signal(signal.SIGTERM)
    code, elapsed = exit_within(srv, 10)
    assert code == 0
    assert elapsed < 5, f"idle shutdown took {elapsed:.1f}s"


def test_sigterm_does_not_wait_for_idle_keep_alive_connections(berth):
    srv = berth(["-w", "1", "--threads", "2", "--graceful-timeout", "20", "proto_app:app"])
    with connect(srv.port, timeout=20) as sock:
        sock.sendall(get_request("/hello"))
        assert read_response(sock)[0] == 200
        srv.signal(signal.SIGTERM)
        code, elapsed = exit_within(srv, 15)
        assert code == 0
        assert elapsed < 5, f"shutdown waited {elapsed:.1f}s for an idle keep-alive connection"
        _, closed = read_until_closed(sock, timeout=2)
        assert closed


def test_sigterm_stops_all_workers(berth):
    srv = berth(["-w", "2", "proto_app:app"])
    workers = wait_for(lambda: len(pids_children(srv.pid)) >= 2 and pids_children(srv.pid),
                       timeout=10)
    assert workers
    srv.signal(signal.SIGTERM)
    code, _ = exit_within(srv, 15)
    assert code == 0
    assert wait_for(lambda: not any(_alive(p) for p in workers), timeout=5), \
        f"workers {workers} still alive after the master exited"


def test_sigint_stops_quickly_when_idle(berth):
    srv = berth(["-w", "1", "proto_app:app"])
    srv.signal(signal.SIGINT)
    code, elapsed = exit_within(srv, 10)
    assert code is not None, "berth still running 10 s after SIGINT"
    assert elapsed < 3, f"SIGINT took {elapsed:.1f}s"


def test_sigint_does_not_wait_for_long_request(berth):
    srv = berth(["-w", "1", "--threads", "1", "proto_app:app"])
    in_background(lambda: http_get(srv.port, "/sleep?s=20", timeout=25))
    time.sleep(0.3)
    srv.signal(signal.SIGINT)
    code, elapsed = exit_within(srv, 10)
    assert code is not None, "berth still running 10 s after SIGINT during a 20 s request"
    assert elapsed < 5, f"SIGINT took {elapsed:.1f}s"


def test_graceful_timeout_bounds_shutdown(berth):
    srv = berth(["-w", "1", "--threads", "1", "--graceful-timeout", "1", "proto_app:app"])
    in_background(lambda: http_get(srv.port, "/sleep?s=20", timeout=25))
    time.sleep(0.3)
    srv.signal(signal.SIGTERM)
    code, elapsed = exit_within(srv, 12)
    assert code is not None, "berth still running 12 s after SIGTERM with --graceful-timeout 1"
    assert elapsed < 6, f"shutdown took {elapsed:.1f}s with --graceful-timeout 1"


def test_killed_worker_is_replaced(berth):
    srv = berth(["-w", "1", "proto_app:app"])
    first = json.loads(http_get(srv.port, "/pid")[2])["pid"]
    assert first != srv.pid
    os.kill(first, signal.SIGKILL)  # a worker of the berth this test started, by PID

    def new_pid():
        try:
            status, _, body = http_get(srv.port, "/pid", timeout=2)
        except OSError:
            return None
        pid = json.loads(body)["pid"] if status == 200 else None
        return pid if pid and pid != first else None

    second = wait_for(new_pid, timeout=15, interval=0.2)
    assert second, "no replacement worker answered within 15 s"
    assert srv.proc.poll() is None
    srv.signal(signal.SIGTERM)
    code, _ = exit_within(srv, 15)
    assert code == 0


@pytest.mark.slow
def test_sigterm_as_the_first_request_is_answered_stops_cleanly(berth):
    """The race of a SIGTERM with the master's 'ready' line (it used to print listeners that
    stop() had closed already: a traceback and exit 1). 15 starts, each stopped as soon as
    the first request is answered."""
    bad = []
    for trial in range(15):
        srv = berth(["-w", "2", "--threads", "1", "proto_app:app"], wait_ready=False)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                if http_get(srv.port, "/", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.005)
        srv.signal(signal.SIGTERM)
        code, _ = exit_within(srv, 15)
        err = srv.stderr()
        last = err.strip().splitlines()[-1] if err.strip() else ""
        if code != 0 or "Traceback" in err or not re.search(r"berth master \d+: stopped$", last):
            bad.append((trial, code, err[-1500:]))
        srv.stop()
    assert not bad, f"{len(bad)} of 15 starts did not stop cleanly; the first:\n{bad[0]}"


def test_signals_during_the_shutdown_delay_are_handled_or_logged_as_ignored_then_exit_0(berth):
    srv = berth(["-w", "1", "--shutdown-delay", "2", "proto_app:app"])
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    srv.wait_for_log("SIGTERM: serving for 2 s more (shutdown delay)", timeout=5)
    expected = {
        signal.SIGHUP: "SIGHUP ignored: berth is shutting down (in the shutdown delay), and a "
                       "reload would start workers only to stop them",
        signal.SIGUSR1: "SIGUSR1: reopening log files",
        signal.SIGTTIN: "SIGTTIN ignored: berth is shutting down (in the shutdown delay), and "
                        "the number of workers no longer changes",
    }
    for sig, line in expected.items():
        srv.signal(sig)
        srv.wait_for_log(line, timeout=1.5)
    assert time.monotonic() - t0 < 2, "the delay was over before the signals were logged"
    assert http_get(srv.port, "/hello", timeout=5)[2] == HELLO  # still serving
    code, _ = exit_within(srv, 15)
    elapsed = time.monotonic() - t0
    err = srv.stderr()
    assert code == 0, f"exit code {code}\n{err}"
    assert elapsed >= 2 - 0.05, f"exited {elapsed:.2f} s after SIGTERM, before the delay"
    assert "SIGHUP: reloading" not in err and "SIGTTIN: 2 workers" not in err, err
    assert len(re.findall(r"berth master \d+: stopped", err)) == 1, err


def test_while_draining_sighup_is_logged_as_ignored_and_sigint_still_stops_at_once(berth):
    srv = berth(["-w", "1", "--threads", "1", "--graceful-timeout", "20", "proto_app:app"])
    in_background(lambda: http_get(srv.port, "/sleep?s=20", timeout=25))
    time.sleep(0.3)  # the request is inside the app: the drain waits for it
    t0 = time.monotonic()
    srv.signal(signal.SIGTERM)
    srv.wait_for_log("SIGTERM: serving for 0 s more", timeout=5)
    srv.signal(signal.SIGHUP)
    srv.wait_for_log("SIGHUP ignored: berth is shutting down (draining), and a reload would "
                     "start workers only to stop them", timeout=3)
    assert srv.proc.poll() is None, "berth did not wait for the request in flight"
    srv.signal(signal.SIGINT)
    code, _ = exit_within(srv, 10)
    assert code is not None, "berth still running 10 s after SIGINT during the drain"
    assert time.monotonic() - t0 < 6, srv.stderr()
    assert "SIGINT: stopping now" in srv.stderr()


@pytest.mark.parametrize("threads", [1, 4])
def test_a_keep_alive_connection_used_just_before_sigterm_gets_its_next_answer(berth, threads):
    # A load balancer reuses its idle connections: the drain must not close one under the
    # request that arrives a moment later; it answers it with Connection: close instead
    srv = berth(["-w", "1", "--threads", str(threads), "--access-logfile", "none",
                 "proto_app:app"])
    with connect(srv.port) as sock:
        sock.sendall(get_request("/hello"))
        assert read_response(sock)[::2] == (200, HELLO)
        srv.signal(signal.SIGTERM)
        time.sleep(0.3)  # the worker drains by now
        sock.sendall(get_request("/hello"))
        status, headers, body = read_response(sock)
    assert (status, body) == (200, HELLO)
    assert headers.get("connection") == "close"
    assert srv.wait(timeout=15) == 0


def test_the_readme_signals_section_names_every_signal_the_master_takes():
    # SIGUSR2 was missing: a USR2, WINCH, QUIT upgrade runbook did nothing, silently
    from conftest import ROOT

    from berth.children import MASTER_SIGNALS

    readme = (ROOT / "README.md").read_text()
    section = readme.split("**Signals.**", 1)[1].split("\n\n", 1)[0]
    for sig in (*MASTER_SIGNALS, signal.SIGWINCH):
        if sig != signal.SIGCHLD:
            assert signal.Signals(sig).name in section, signal.Signals(sig).name


def test_sigusr2_is_logged_and_ignored_as_the_readme_says(berth):
    srv = berth(["-w", "1", "proto_app:app"])
    workers = set(pids_children(srv.pid))
    srv.signal(signal.SIGUSR2)
    srv.wait_for_log("SIGUSR2 is not used by berth (no binary upgrade); ignored")
    time.sleep(0.3)  # (a re-exec would show as a new child by now)
    assert http_get(srv.port, "/hello")[2] == HELLO
    assert set(pids_children(srv.pid)) == workers and srv.proc.poll() is None


def test_sighup_with_a_changed_bind_warns_that_it_waits_for_the_next_start(berth, tmp_path):
    # Gunicorn's reload listens on a changed --bind; berth keeps its listeners until a
    # restart, and said nothing: the operator who edited the bind saw no sign of it.
    from conftest import free_port

    port, new_port = free_port(), free_port()
    conf = tmp_path / "bind.conf.py"
    conf.write_text(f"workers = 1\nbind = ['127.0.0.1:{port}']\n")
    srv = berth(["-c", str(conf), "super_app:app"], bind=False, port=port)
    conf.write_text(f"workers = 1\nbind = ['127.0.0.1:{new_port}']\n")
    srv.signal(signal.SIGHUP)
    err = srv.wait_for_log("SIGHUP: reloading", timeout=10)
    assert (f"SIGHUP: --bind 127.0.0.1:{new_port} takes effect at the next start; still "
            f"listening on 127.0.0.1:{srv.port}") in err, err
    assert http_get(srv.port, "/")[0] == 200
    # the bind it listens on says nothing
    conf.write_text(f"workers = 1\nbind = ['127.0.0.1:{port}']\n")
    srv.signal(signal.SIGHUP)
    wait_for(lambda: srv.stderr().count("SIGHUP: reloading") == 2, timeout=10)
    assert srv.stderr().count("takes effect at the next start") == 1

"""Principle 1: nothing on the hot path touches the filesystem.

berth runs under `strace -f` (master and workers, every file-related syscall plus utimensat,
fchmod and fsync: what Gunicorn's heartbeat file costs). After start-up and a warm-up, the
master and the workers serve ~200 keep-alive requests and heartbeat for a few ticks (the
scoreboard is written and read twice a second), and strace must see no such syscall.

strace's `-ttt` time stamps (wall clock, per line) delimit the steady-state window; this does
not depend on when strace flushes its output file. A positive control (one request whose app
calls stat(), after the window) proves the trace covers the workers and is read right.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import APPS, ROOT, free_port
from loadgen import LoadGen
from proto_helpers import http_get, pids_children, wait_for

STRACE = shutil.which("strace")
TRACED = "%file,utimensat,fchmod,fsync"


def _lines_between(path, t_from: float, t_to: float) -> list[str]:
    """strace lines ('PID SECONDS.USEC call(...)') whose time stamp is in [t_from, t_to)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(None, 2)
        if len(parts) < 3:
            continue
        try:
            ts = float(parts[1])
        except ValueError:
            continue
        if t_from <= ts < t_to:
            out.append(line)
    return out


@pytest.mark.slow
@pytest.mark.skipif(STRACE is None, reason="strace is not installed (apt-get install strace)")
def test_master_and_workers_make_no_file_syscalls_while_serving_and_heartbeating(tmp_path):
    port = free_port()
    trace = tmp_path / "strace.out"
    env = dict(os.environ)
    env.update({"BERTH_IN_CONTAINER": "0", "PYTHONPATH": f"{APPS}{os.pathsep}{ROOT}"})
    env.pop("PORT", None)
    env.pop("WEB_CONCURRENCY", None)
    cmd = [STRACE, "-f", "-qq", "-ttt", "-e", f"trace={TRACED}", "-o", str(trace),
           sys.executable, "-m", "berth", "-b", f"127.0.0.1:{port}", "-w", "2", "--threads", "2",
           "--timeout", "300", "--access-logfile", "none", "super_app:app"]
    err_path = tmp_path / "stderr.log"
    with open(tmp_path / "stdout.log", "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=str(tmp_path),
                                stdin=subprocess.DEVNULL)
    master = None
    try:
        ok = wait_for(lambda: "ready: " in err_path.read_text(errors="replace")
                      or proc.poll() is not None, timeout=60, interval=0.1)
        stderr = err_path.read_text(errors="replace")
        if proc.poll() is not None and "ready: " not in stderr:
            if "PTRACE" in stderr.upper() or "Operation not permitted" in stderr:
                pytest.skip(f"strace cannot trace here: {stderr[:300]}")
            pytest.fail(f"berth under strace exited {proc.returncode}:\n{stderr}")
        assert ok, f"berth under strace not ready after 60 s:\n{stderr}"
        children = pids_children(proc.pid)
        assert len(children) == 1, f"strace's children: {children}"
        master = children[0]

        # warm-up: every worker has served and every lazy import is done
        for _ in range(20):
            assert http_get(port, "/", timeout=30)[0] == 200
        warm = LoadGen(port, connections=4, max_requests=80, timeout=30, max_seconds=30)
        warm.start()
        warm.wait_for_total(80, timeout=30)
        warm.stop()
        assert not warm.failures(), warm.summary()
        time.sleep(1.0)

        t_mark = time.time()
        gen = LoadGen(port, connections=4, max_requests=200, timeout=30, max_seconds=30)
        gen.start()
        gen.wait_for_total(200, timeout=30)
        gen.stop()
        time.sleep(2.0)  # four heartbeat ticks of the master and of each worker
        t_end = time.time()
        assert gen.total() == 200 and not gen.failures(), gen.summary()
        # positive control: a request whose app does one stat() shows up in the trace
        assert http_get(port, "/stat", timeout=30)[0] == 200
        t_probe = time.time()
    finally:
        if master is not None and proc.poll() is None:
            os.kill(master, signal.SIGTERM)  # strace exits once its tracees have
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            if master is not None:
                try:
                    os.kill(master, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.kill()  # our own strace process
            proc.wait(timeout=10)
    warm_lines = _lines_between(trace, t_mark - 1.5, t_mark)
    steady = _lines_between(trace, t_mark, t_end)
    probe = _lines_between(trace, t_end, t_probe)
    assert any("stat" in line and "tests/apps" in line for line in probe), (
        "the positive control (an app stat() after the window) is not in the trace: this "
        "test would not see a file syscall either\n" + "\n".join(probe[:20]))
    assert not steady, (
        f"{len(steady)} file syscalls in steady state (200 requests + 2 s of heartbeats):\n"
        + "\n".join(steady[:40])
        + (f"\n(and in the second before: {len(warm_lines)})" if warm_lines else ""))

"""berth as PID 1 (principle 6): it reaps the orphans the app leaves behind, leaves alone the
children the app waits for, and stops cleanly on SIGTERM.

berth runs in a new PID namespace (`unshare --pid --fork --mount-proc`), where its master is
PID 1, as in a container without an init. Processes are found from the host's /proc: the
master is the child of the `unshare` process, and a process belongs to the namespace when its
/proc/PID/ns/pid link is the master's.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import APPS, ROOT, free_port
from proto_helpers import http_get, pids_children, wait_for

UNSHARE = shutil.which("unshare")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return rest[0], int(rest[1])


def _ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def namespace_processes(master: int) -> dict[int, tuple[str, int]]:
    """Host pid -> (state, ppid) of every process in the master's PID namespace."""
    ns = _ns(master)
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if _ns(pid) != ns:
            continue
        st = _stat(pid)
        if st is not None:
            out[pid] = st
    return out


class Pid1Berth:
    def __init__(self, tmp_path, args):
        self.port = free_port()
        self.err_path = tmp_path / "stderr.log"
        self.out_path = tmp_path / "stdout.log"
        env = dict(os.environ)
        env.update({"BERTH_IN_CONTAINER": "0", "PYTHONPATH": f"{APPS}{os.pathsep}{ROOT}"})
        env.pop("PORT", None)
        env.pop("WEB_CONCURRENCY", None)
        cmd = [UNSHARE, "--pid", "--fork", "--mount-proc", sys.executable, "-m", "berth",
               "-b", f"127.0.0.1:{self.port}", *args]
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env,
                                         cwd=str(tmp_path), stdin=subprocess.DEVNULL)
        self.master: int | None = None

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def start(self) -> None:
        wait_for(lambda: "ready: " in self.stderr() or self.proc.poll() is not None,
                 timeout=30, interval=0.05)
        err = self.stderr()
        if "ready: " not in err:
            if self.proc.poll() is not None and "unshare" in err:
                pytest.skip(f"unshare --pid cannot run here: {err.strip()[:300]}")
            pytest.fail(f"berth in a PID namespace never became ready "
                        f"(unshare exit {self.proc.poll()}):\n{err}")
        children = pids_children(self.proc.pid)
        assert len(children) == 1, f"unshare's children: {children}"
        self.master = children[0]

    def stop(self) -> None:
        """SIGTERM to the master (unshare does not forward signals), SIGKILL if it hangs."""
        if self.proc.poll() is None and self.master is not None and _stat(self.master):
            os.kill(self.master, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            if self.master is not None and _stat(self.master):
                os.kill(self.master, signal.SIGKILL)  # kills the whole namespace
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def pid1(tmp_path):
    if UNSHARE is None:
        pytest.skip("unshare (util-linux) is not installed")
    servers: list[Pid1Berth] = []

    def start(args) -> Pid1Berth:
        srv = Pid1Berth(tmp_path, args)
        servers.append(srv)
        srv.start()
        return srv

    yield start
    for srv in servers:
        srv.stop()


def test_as_pid1_berth_reaps_orphans_keeps_waited_children_and_exits_0(pid1):
    srv = pid1(["-w", "1", "--threads", "2", "super_app:app"])
    err = srv.stderr()
    assert "berth master 1 (PID 1): " in err, err

    # the app's own children: subprocess.run gets its real exit status, every time
    for _ in range(5):
        status, _, body = http_get(srv.port, "/subprocess", timeout=10)
        assert status == 200
        assert json.loads(body) == {"returncode": 0}

    # orphans: each grandchild is re-parented to PID 1 (the master), then exits
    for _ in range(3):
        status, _, body = http_get(srv.port, "/double-fork", timeout=10)
        assert status == 200, body
        info = json.loads(body)
        assert info["child_status"] == 0, info
        assert info["grandchild"] is not None, f"the grandchild did not report: {info}"
        assert info["grandchild_ppid"] == 1, f"grandchild not re-parented to PID 1: {info}"

    def zombies():
        return {pid: st for pid, st in namespace_processes(srv.master).items() if st[0] == "Z"}

    time.sleep(1.0)  # the grandchildren sleep 0.5 s, then exit
    left = wait_for(lambda: not zombies(), timeout=4, interval=0.1)
    assert left, f"zombies left in berth's PID namespace (pid: (state, ppid)): {zombies()}"
    procs = namespace_processes(srv.master)
    assert len(procs) == 2, f"processes in the namespace (master + 1 worker): {procs}"

    os.kill(srv.master, signal.SIGTERM)  # unshare does not forward signals
    code = srv.proc.wait(timeout=15)
    assert code == 0, f"unshare exited {code}\n{srv.stderr()}"
    assert _stat(srv.master) is None
    assert "berth master 1: stopped" in srv.stderr(), srv.stderr()

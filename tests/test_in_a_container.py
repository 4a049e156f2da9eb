"""berth in a container, for real: PID 1 in new PID and mount namespaces (`unshare --pid
--fork --mount-proc`), inside cgroup v1 cpu and memory groups with a quota of half a CPU and a
256 MiB limit. It sizes itself from both limits, serves, reaps an orphaned grandchild, has a
worker OOM-killed by the kernel (and says so, by name) and keeps serving, then drains on
SIGTERM and exits 0 within the stop window.

Skipped, with the reason, where the machine cannot make cgroup v1 groups or PID namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import APPS, ROOT, free_port
from proto_helpers import http_get, pids_children, wait_for

CGROUP = Path("/sys/fs/cgroup")
UNSHARE = shutil.which("unshare")
LIMIT = 256 << 20


@pytest.fixture
def groups():
    """A cpu and a memory cgroup (v1) of our own: half a CPU, 256 MiB, no swap."""
    if UNSHARE is None:
        pytest.skip("unshare (util-linux) is not installed")
    if not (CGROUP / "cpu" / "cpu.cfs_quota_us").exists() or \
            not (CGROUP / "memory" / "memory.limit_in_bytes").exists():
        pytest.skip("no cgroup v1 cpu and memory hierarchies at /sys/fs/cgroup here")
    name = f"berth-test-{uuid.uuid4().hex[:8]}"
    cpu, mem = CGROUP / "cpu" / name, CGROUP / "memory" / name
    try:
        cpu.mkdir()
        mem.mkdir()
    except OSError as exc:
        for d in (cpu, mem):
            if d.exists():
                d.rmdir()
        pytest.skip(f"cannot create cgroups: {exc}")
    (cpu / "cpu.cfs_period_us").write_text("100000")
    (cpu / "cpu.cfs_quota_us").write_text("50000")
    (mem / "memory.limit_in_bytes").write_text(str(LIMIT))
    memsw = mem / "memory.memsw.limit_in_bytes"
    if memsw.exists():
        memsw.write_text(str(LIMIT))  # no swap to escape to: the OOM killer acts
    yield cpu, mem
    for d in (cpu, mem):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                d.rmdir()
                break
            except OSError:  # (its last processes are still exiting)
                time.sleep(0.1)


def test_berth_in_a_container_sizes_serves_reaps_survives_an_oom_kill_and_stops(groups, tmp_path):
    cpu, mem = groups
    err_path = tmp_path / "stderr.log"
    env = dict(os.environ, BERTH_IN_CONTAINER="1", PYTHONPATH=f"{APPS}{os.pathsep}{ROOT}")
    env.pop("WEB_CONCURRENCY", None)
    env.pop("KUBERNETES_SERVICE_HOST", None)
    # the shell joins both groups, then becomes unshare, whose child becomes berth (PID 1)
    script = (f'echo $$ > {cpu}/cgroup.procs && echo $$ > {mem}/cgroup.procs && exec "$@"')
    for _ in range(3):  # (a free port can be taken by a test running beside this one)
        port = free_port()
        cmd = ["sh", "-c", script, "sh", UNSHARE, "--pid", "--fork", "--mount-proc",
               sys.executable, "-m", "berth", "-b", f"127.0.0.1:{port}", "super_app:app"]
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                    cwd=str(tmp_path), stdin=subprocess.DEVNULL)
        ready = wait_for(lambda p=proc: "ready: " in err_path.read_text() or p.poll() is not None,
                         timeout=30, interval=0.1)
        if "Address already in use" not in err_path.read_text():
            break
        proc.wait(timeout=10)  # (berth exits when it cannot listen)
    master = None
    try:
        text = err_path.read_text()
        if "ready: " not in text:
            if proc.poll() is not None and "unshare" in text:
                pytest.skip(f"unshare --pid cannot run here: {text.strip()[:300]}")
            pytest.fail(f"berth never became ready ({ready}):\n{text}")
        (master,) = pids_children(proc.pid)

        # sized by the container: half a CPU and 256 MiB, and so 2 workers
        assert "cpu quota 0.5 from cgroup v1 cpu.cfs_quota_us" in text, text
        assert "memory 256 MiB" in text, text
        assert "berth master 1 (PID 1): 2 workers" in text, text
        workers = pids_children(master)
        assert len(workers) == 2
        assert http_get(port, "/")[0] == 200

        # an orphaned grandchild is re-parented to PID 1 and reaped
        info = json.loads(http_get(port, "/double-fork", timeout=10)[2])
        assert info["grandchild_ppid"] == 1, info

        # an app that allocates past the limit: the kernel kills its worker; berth says so
        # by name, replaces it, and serves on
        try:
            http_get(port, "/hog?mb=400", timeout=20)
        except (ConnectionError, OSError):
            pass  # (the worker died under the request)
        wait_for(lambda: "OOM killer" in err_path.read_text(), timeout=15)
        wait_for(lambda: len(pids_children(master)) == 2, timeout=20)
        for _ in range(4):
            assert http_get(port, "/", timeout=10)[0] == 200
        text = err_path.read_text()
        assert "killed by the kernel's OOM killer (the cgroup's oom_kill count rose)" in text
        assert int((mem / "memory.oom_control").read_text().split("oom_kill ")[1].split()[0]) >= 1

        # SIGTERM: drained and stopped inside Docker's 10 s stop window, exit 0
        t0 = time.monotonic()
        os.kill(master, signal.SIGTERM)  # (unshare does not forward signals)
        code = proc.wait(timeout=15)
        took = time.monotonic() - t0
        assert code == 0, err_path.read_text()
        assert took < 10, f"stopped in {took:.1f} s"
        master = None
    finally:
        if master is not None and proc.poll() is None:
            os.kill(master, signal.SIGKILL)  # our own namespace's init: it takes the rest
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)

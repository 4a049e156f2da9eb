"""berth/children.py in-process: how a child's end is told, and reaping orphans."""

from __future__ import annotations

import dataclasses
import logging
import signal
import subprocess
import time

from berth import container
from berth.children import ORPHAN_GRACE, ExitReader, OrphanReaper


def test_an_exit_is_told_by_its_code_or_signal_and_oom_only_when_the_cgroup_counted_one(
        tmp_path):
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\n")
    info = dataclasses.replace(container.detect(), memory_cgroup_dir=str(tmp_path),
                               memory_cgroup_version=2)
    exits = ExitReader(info)
    assert exits.how(3 << 8, killed_by_berth=False) == "exited with code 3"
    assert exits.how(signal.SIGTERM, killed_by_berth=False) == "killed by signal SIGTERM"
    assert exits.how(signal.SIGKILL, killed_by_berth=False) == "killed by signal SIGKILL"
    events.write_text("low 0\nhigh 0\nmax 5\noom 2\noom_kill 2\n")
    assert exits.how(signal.SIGKILL, killed_by_berth=True) == "killed by signal SIGKILL"
    events.write_text("low 0\nhigh 0\nmax 6\noom 3\noom_kill 3\n")
    assert exits.how(signal.SIGKILL, killed_by_berth=False) == \
        "killed by the kernel's OOM killer (the cgroup's oom_kill count rose)"
    assert exits.how(signal.SIGKILL, killed_by_berth=False) == "killed by signal SIGKILL"


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return False


def test_an_orphan_is_reaped_after_its_grace_and_a_known_child_never(caplog):
    caplog.set_level(logging.DEBUG)
    reaper = OrphanReaper(logging.getLogger("berth.test.children"))
    assert not reaper.adopts  # (this test is not PID 1: see the next test)
    reaper.adopts = True  # as PID 1, whose orphans these stand for
    known = subprocess.Popen(["true"])
    orphan = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 5
        while not (_is_zombie(known.pid) and _is_zombie(orphan.pid)):
            assert time.monotonic() < deadline, "the children did not exit"
            time.sleep(0.01)
        reaper.reap({known.pid})
        assert _is_zombie(orphan.pid)  # its own waiter may still come
        time.sleep(ORPHAN_GRACE + 0.1)
        reaper.reap({known.pid})
        assert not _is_zombie(orphan.pid)
        assert f"reaped orphan process {orphan.pid} (exit status 0)" in caplog.text
        assert _is_zombie(known.pid)
    finally:
        assert known.wait(5) == 0
        orphan.wait(5)  # (already reaped: Popen tells 0)


def test_outside_pid_1_an_unknown_child_is_never_reaped():
    # not PID 1 (nor a subreaper), the master is given no orphans: an unknown child is a
    # hook's, whose wait() must get its exit status however late it comes
    reaper = OrphanReaper(logging.getLogger("berth.test.children"))
    child = subprocess.Popen(["sh", "-c", "exit 7"])
    try:
        deadline = time.monotonic() + 5
        while not _is_zombie(child.pid):
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        time.sleep(ORPHAN_GRACE + 0.1)
        reaper.reap(set())
        assert _is_zombie(child.pid)
    finally:
        assert child.wait(5) == 7

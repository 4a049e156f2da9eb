"""The master's child processes: the record it keeps of each worker, how a child ended, and the
orphans it inherits as PID 1.

What to do about a worker (start, replace, stop one) is the master's; this module only knows
processes: it signals them, reads their exit status into the words of a log line and reaps the
zombies nobody else waits for.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Container
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from berth import container

if TYPE_CHECKING:
    from berth.hooks import WorkerView

# what the master handles (Master._on_signal): blocked across a worker's fork until the
# worker has its own handlers (Master.spawn, Worker._setup_process)
MASTER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD, signal.SIGHUP,
                  signal.SIGUSR1, signal.SIGUSR2, signal.SIGTTIN, signal.SIGTTOU)
EARLY_SIGNALS: list[int] = []  # in a new worker: what came before its handlers (early_signals)
KILL_GRACE_QUICK = 2.0  # SIGINT/SIGQUIT: seconds before the master kills the workers left
ORPHAN_GRACE = 0.5  # an unknown zombie child this old is an orphan nobody waits for: reap it


@dataclass
class WorkerInfo:
    pid: int
    slot: int
    generation: int
    started: float
    ready: bool = False
    stopping: str = ""  # why berth asked it to stop (SIGTERM), if it did
    killed: str = ""  # why berth killed it, if it did
    sigabrt_at: float = 0.0  # silent worker: when SIGABRT follows the stack dump
    abort_at: float = 0.0  # and when SIGKILL follows the SIGABRT
    replaced: bool = False  # a replacement was started for it
    replacement_for: int = 0  # the pid this worker replaces (recycling)
    rss_over: int = 0
    flags: set = field(default_factory=set)
    view: WorkerView | None = None  # what hooks receive as `worker`
    stacks_fd: int = -1  # its stacks file (`stacks_file`), or -1: its stacks go to stderr


def stacks_file() -> int:
    """An anonymous memory file for a worker's threads' stacks (faulthandler writes them there
    from C on SIGUSR2, so it works while the worker's Python code is stuck; the master logs
    them, `take_stacks`), or -1 where there is no memfd_create (then they go to stderr).
    Nothing touches a filesystem; the master holds one fd per worker (at most 256: 128 workers
    and their replacements), and each worker only its own (`Master.spawn` closes the others)."""
    try:
        return os.memfd_create("berth-stacks", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        return -1


def take_stacks(info: WorkerInfo) -> str:
    """What the exited worker's faulthandler wrote to its stacks file ('' if nothing); the file
    is closed. (The worker's writes moved the offset they share with the master: pread.)"""
    if info.stacks_fd < 0:
        return ""
    try:
        size = os.fstat(info.stacks_fd).st_size
        return os.pread(info.stacks_fd, size, 0).decode("utf-8", "replace") if size else ""
    finally:
        os.close(info.stacks_fd)
        info.stacks_fd = -1


def send_signal(pid: int, sig: int) -> None:
    """Signal a child that may have exited already."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def signal_name(sig: int) -> str:
    """SIGTERM, SIGRTMIN+1, or the number of a signal Python has no name for."""
    try:
        return signal.Signals(sig).name
    except ValueError:
        if signal.SIGRTMIN < sig <= signal.SIGRTMAX:
            return f"SIGRTMIN+{sig - signal.SIGRTMIN}"
        return str(sig)


class ExitReader:
    """How a child ended, as a log line says it. A SIGKILL berth did not send is called an OOM
    kill only when the cgroup's own `oom_kill` counter rose since the last look, never guessed
    from the signal alone."""

    def __init__(self, info: container.ContainerInfo):
        self.info = info
        self.oom_kills = container.oom_kill_count(info)

    def how(self, status: int, killed_by_berth: bool) -> str:
        if not os.WIFSIGNALED(status):
            return f"exited with code {os.waitstatus_to_exitcode(status)}"
        sig = os.WTERMSIG(status)
        how = f"killed by signal {signal_name(sig)}"
        if sig == signal.SIGKILL and not killed_by_berth:
            oom = container.oom_kill_count(self.info)
            if oom is not None and self.oom_kills is not None and oom > self.oom_kills:
                how = "killed by the kernel's OOM killer (the cgroup's oom_kill count rose)"
            self.oom_kills = oom
        return how


class OrphanReaper:
    """As PID 1, processes the app left behind become our children. Reap them, but only once
    they have been zombies for a moment: a child that a hook or the app itself waits for is
    reaped by its own waiter first, who gets its exit status."""

    def __init__(self, log):
        self.log = log
        self.seen: dict[int, float] = {}  # unknown zombie pid -> first seen
        # Only PID 1 (or a child subreaper) is given orphans. Otherwise an unknown child is a
        # hook's own (subprocess.Popen in when_ready, waited for in on_exit): never ours to
        # reap, however long it waits (its waiter would get no exit status).
        self.adopts = os.getpid() == 1 or _is_subreaper()

    def reap(self, known: Container[int]) -> None:
        """Reap the zombies that are not in `known` (the master's workers) and have waited
        ORPHAN_GRACE (as PID 1 only: `adopts`)."""
        if not self.adopts:
            return
        try:
            first = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if first is None:
            self.seen.clear()
            return
        # waitid shows one zombie at a time; /proc shows them all (read only when one exists)
        now = time.monotonic()
        for pid in _zombie_children() or [first.si_pid]:
            if pid in known:
                continue
            seen = self.seen.setdefault(pid, now)
            if now - seen < ORPHAN_GRACE:
                continue
            try:
                _, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                status = 0
            self.seen.pop(pid, None)
            self.log.debug("reaped orphan process %d (exit status %d)", pid,
                           os.waitstatus_to_exitcode(status))


def early_signals() -> None:
    """In a new worker, first thing after the fork: the master's signals, blocked across it
    (Master.spawn), are recorded in EARLY_SIGNALS until the worker's own handlers replay them
    (Worker._setup_process), and unblocked now: what the worker starts meanwhile (a post_fork
    hook's subprocess) must not inherit them blocked."""
    for sig in MASTER_SIGNALS:
        signal.signal(sig, _record_early)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS)


def _record_early(signum, frame) -> None:
    EARLY_SIGNALS.append(signum)


def _is_subreaper() -> bool:
    """Whether this process is a child subreaper (prctl PR_GET_CHILD_SUBREAPER): orphans
    below it are reparented to it, as to PID 1."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        flag = ctypes.c_int(0)
        if libc.prctl(37, ctypes.byref(flag), 0, 0, 0) != 0:  # PR_GET_CHILD_SUBREAPER
            return False
        return flag.value != 0
    except (OSError, AttributeError):
        return False


def _zombie_children() -> list[int]:
    """Our children that are zombies, from /proc (empty when /proc cannot tell)."""
    pids = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as f:
                pids.extend(int(p) for p in f.read().split())
    except OSError:
        return []
    zombies = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] == "Z":
                    zombies.append(pid)
        except (OSError, IndexError):
            continue
    return zombies

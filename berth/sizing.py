"""How many workers and threads: sized by the container, not by the host.

The classic Gunicorn recipe, `workers = cpu_count() * 2 + 1`, counts the *host's* CPUs: a pod
limited to half a CPU on a 64-core node starts 129 workers and is throttled or OOM-killed. One
worker, the other common choice, cannot answer a health probe while it is busy. So berth's
default (`--workers auto --threads auto`) is:

- usable CPUs: the CPU quota capped by the CPUs we may run on (affinity/cpuset), or those CPUs
  when there is no quota (`container.detect().usable_cpus`);
- workers: the usable CPUs rounded to the nearest whole number, at least 2 (one busy worker
  must never leave the container unable to answer);
- threads: 4 per worker (app threads wait on I/O far more often than they compute);
- memory: all workers plus one replacement (recycling starts the new worker before the old
  one stops) must fit under 80% of the memory limit. That one rule gives the default
  `--max-worker-memory` (`worker_memory_share`: each worker's share; `recycle_bound` once a
  worker has booted) and, once the first worker has booted and its size is known, caps the
  worker count (`cap_for_memory`, called by the master).

Everything here is pure: the inputs are a `ContainerInfo` (or anything with the same fields)
and numbers, the outputs a decision and the one line that explains it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from berth.cgroups import format_bytes, format_cpu_list

MIN_WORKERS = 2  # one busy worker must never leave the container unable to answer a probe
THREADS_PER_WORKER = 4
MEMORY_HEADROOM = 0.8  # all workers + one replacement must fit under this share of the limit
MAX_WORKERS = 128  # the cap on --workers (documented); berth.scoreboard sizes its slots by it


@dataclass(frozen=True)
class Sizing:
    """The decision: `reason` is the one start-up line, `warnings` one line each."""

    workers: int
    threads: int
    reason: str
    warnings: tuple[str, ...] = ()
    auto_workers: int = MIN_WORKERS  # what auto sizing would choose, for warnings and doctor


def _cpus(q: float) -> str:
    return f"{round(q, 3):g}"


def auto_worker_count(usable_cpus: float | None) -> int:
    """Usable CPUs rounded to the nearest whole number (halves round up), at least 2."""
    if usable_cpus is None or usable_cpus <= 0:
        return MIN_WORKERS
    return min(MAX_WORKERS, max(MIN_WORKERS, math.floor(usable_cpus + 0.5)))


def describe_inputs(info: Any) -> str:
    """`cpu quota 0.5 from cgroup v2 cpu.max; memory 512 MiB; 64 host CPUs ignored`."""
    parts = []
    cpuset = getattr(info, "cpuset", None)
    kind = "affinity" if getattr(info, "cpuset_source", "") == "sched_getaffinity" else "cpuset"
    usable = info.usable_cpus
    if info.cpu_limit is not None:
        cpu = f"cpu quota {_cpus(info.cpu_limit)} from {info.cpu_source}"
        if usable is not None and usable < info.cpu_limit:
            where = f"{kind} {format_cpu_list(cpuset)}" if cpuset else "the CPUs"
            cpu += f", capped by the {int(usable)} CPUs of the {where}"
        parts.append(cpu)
    elif cpuset:
        parts.append(f"no cpu quota; {len(cpuset)} CPUs in the {kind} "
                     f"{format_cpu_list(cpuset)}")
    elif usable is not None:
        parts.append(f"no cpu quota; {_cpus(usable)} CPUs")
    else:
        parts.append("no cpu quota and no CPU count")
    if info.memory_limit is not None:
        parts.append(f"memory {format_bytes(info.memory_limit)}")
    else:
        parts.append("no memory limit")
    host = info.host_cpus
    if host and usable is not None and host > usable:
        parts.append(f"{host} host CPUs ignored")
    return "; ".join(parts)


def plan(info: Any, workers: int | str = "auto", threads: int | str = "auto",
         workers_from: str = "", threads_from: str = "", worker_class: str = "") -> Sizing:
    """Resolve `auto` workers/threads from the container facts in `info`.

    `workers_from`/`threads_from` name where a configured value came from (`cli`,
    `file gunicorn.conf.py`, `env WEB_CONCURRENCY`...), for the explanation. With
    `worker_class == "sync"` and threads left on auto, threads is 1: Gunicorn's sync worker
    runs one request at a time, and a user who asks for it expects that.
    """
    auto_w = auto_worker_count(info.usable_cpus)
    n_workers = auto_w if workers == "auto" else int(workers)
    warnings = []
    if n_workers > MAX_WORKERS:
        warnings.append(f"workers={n_workers} is more than berth's maximum of {MAX_WORKERS}: "
                        f"starting {MAX_WORKERS} (auto sizing would start {auto_w})")
        n_workers = MAX_WORKERS
    if threads == "auto":
        n_threads = 1 if worker_class in ("sync", "asgi") else THREADS_PER_WORKER
    else:
        n_threads = int(threads)

    if workers == "auto":
        rounded = None if info.usable_cpus is None else math.floor(info.usable_cpus + 0.5)
        w_how = "auto" if rounded is not None and rounded >= MIN_WORKERS else \
            f"auto, at least {MIN_WORKERS}"
    else:
        w_how = f"from {workers_from or 'the configuration'}"
    if threads == "auto":
        t_how = f"1 for -k {worker_class}" if worker_class in ("sync", "asgi") else "auto"
    else:
        t_how = f"from {threads_from or 'the configuration'}"
    if w_how.startswith("auto") and t_how == "auto":
        how = w_how + (" workers" if "," in w_how else "")  # "auto, at least 2 workers"
    else:
        how = f"workers {w_how}, threads {t_how}"
    reason = f"workers={n_workers} threads={n_threads} ({how}: {describe_inputs(info)})"

    usable = info.usable_cpus
    if workers != "auto" and usable is not None and n_workers > 2 * usable + 1:
        warnings.append(
            f"workers={workers} is more than 2 x {_cpus(usable)} usable CPUs + 1 (a "
            f"host-sized cpu_count()*2+1?); auto sizing would start {auto_w} (x {n_threads} "
            f"threads): drop the workers setting or pass --workers auto")
    return Sizing(n_workers, n_threads, reason, tuple(warnings), auto_w)


def cap_for_memory(limit: int | None, worker_rss: int, workers: int,
                   master_rss: int = 0) -> tuple[int, str | None]:
    """After the first worker booted: how many workers the memory limit can hold.

    `worker_rss` is one worker's own memory (its unique pages: with `--preload` the app's pages
    are shared with the master and counted in `master_rss`). All workers plus one replacement
    (recycling starts the new worker before the old one stops) must fit under 80% of `limit`.
    Returns (count, warning line or None); the count never goes below 1 nor above `workers`.
    """
    if not limit or worker_rss <= 0 or workers <= 1:
        return workers, None
    budget = limit * MEMORY_HEADROOM - max(0, master_rss)
    fit = int(budget // worker_rss) - 1  # minus the replacement
    if fit >= workers:
        return workers, None
    capped = max(1, fit)
    line = (f"workers={capped} (lowered from {workers} by the memory limit): a worker uses "
            f"{format_bytes(worker_rss)}")
    if master_rss:
        line += f" and the master {format_bytes(master_rss)}"
    line += (f"; {workers} workers + 1 replacement would need "
             f"{format_bytes(workers_need(worker_rss, workers, master_rss))}, over "
             f"{MEMORY_HEADROOM:.0%} of the {format_bytes(limit)} limit")
    if fit < 1:
        line += ("; even 1 worker and its replacement do not fit: raise the memory limit or "
                 "make the app smaller (--preload shares its pages)")
    return capped, line


def worker_memory_share(limit: int | None, workers: int) -> int:
    """The default --max-worker-memory: one worker's share of the memory rule (0: no limit
    known, so no recycling by memory)."""
    if not limit:
        return 0
    return int(limit * MEMORY_HEADROOM / (workers + 1))


def recycle_bound(limit: int, workers: int, worker_uss: int, worker_rss: int,
                  master_uss: int = 0) -> int:
    """The automatic --max-worker-memory once a worker has booted: its share of the memory
    rule (`workers` + 1 replacement, and the master) in unique pages, plus what its RSS holds
    that is not its own (shared libraries; the app's pages with --preload), since the bound
    is compared with RSS. 0 (no recycling by memory) when a fresh worker is at its bound
    already: its replacement would be recycled in turn, for ever."""
    share = (limit * MEMORY_HEADROOM - max(0, master_uss)) / (workers + 1)
    bound = int(share + max(0, worker_rss - worker_uss))
    return bound if bound > worker_rss else 0


def memory_rule(limit: int, workers: int) -> str:
    """Why --max-worker-memory is `worker_memory_share(limit, workers)`, in a few words."""
    return (f"auto: {MEMORY_HEADROOM:.0%} of the {format_bytes(limit)} memory limit shared by "
            f"{workers} workers + 1 replacement")


def workers_need(worker_rss: int, workers: int, master_rss: int = 0) -> int:
    """Bytes that `workers` workers plus one replacement (and the master) use."""
    return (workers + 1) * worker_rss + max(0, master_rss)


# Descriptors a worker keeps for itself besides its clients' sockets: the listeners, epoll,
# its pipes and eventfd, the log streams, and the app's own (files, database connections).
RESERVED_FILES = 64


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one (containers often start at 1024 soft):
    (before, after). Workers inherit it."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, hard
    return soft, soft


def connection_bound(worker_connections: int, open_files: int) -> tuple[int, str]:
    """Each worker's connection bound: --worker-connections, capped so that its clients'
    sockets and RESERVED_FILES fit under the open-files limit; and the line that says so."""
    room = max(1, open_files - RESERVED_FILES)
    if worker_connections <= room:
        return worker_connections, (f"at most {worker_connections} connections per worker "
                                    f"(worker_connections; open files limit {open_files})")
    return room, (f"at most {room} connections per worker: worker_connections "
                  f"{worker_connections} capped by the open files limit {open_files} "
                  f"(less {RESERVED_FILES} for the worker's own files)")

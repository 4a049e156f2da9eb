"""What berth can tell about the container it runs in, so it can size itself.

A pre-fork server that trusts `os.cpu_count()` inside a container starts one worker per *host*
CPU: 64 workers in a pod limited to half a CPU and 512 MiB is the classic way to get OOM-killed
or throttled. The numbers that matter live in the cgroup filesystem (read by `cgroups.py`);
this module puts them together with the other facts (a container at all? Kubernetes? PID 1?
/tmp on tmpfs?) once at start-up and reports each number together with *where it came from*,
because an operator asking "why did berth start 1 worker?" needs the file, not just the value.

Everything here is a pure function of a filesystem `root` (every path read is prefixed with it),
so tests point it at a fixture tree. Nothing raises on missing or unreadable files: absent
information is `None` plus a reason string.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from berth.cgroups import (
    Mount,
    format_bytes,
    format_cpu_list,
    format_cpus,
    host_path,
    locate_controller,
    parse_cpu_list,
    parse_int,
    parse_mountinfo,
    parse_mounts,
    parse_proc_cgroup,
    read_cgroup_cpuset,
    read_cpu_limit,
    read_file,
    read_memory_limit,
    read_under,
)

# Path segments of /proc/self/cgroup that container runtimes create. Segments ending in
# ".service" are skipped: `/system.slice/docker.service` is the daemon, not a container.
CONTAINER_CGROUP_WORDS = ("docker", "kubepods", "containerd", "libpod", "lxc")

# --- the other facts --------------------------------------------------------------------------

def _container_cgroup(proc_cgroup: Mapping[str, str]) -> str | None:
    for path in sorted(set(proc_cgroup.values())):
        for segment in path.split("/"):
            if segment.endswith(".service"):
                continue
            for word in CONTAINER_CGROUP_WORDS:
                if word in segment:
                    return f"/proc/self/cgroup path {path} names a container ({word})"
    return None


def in_container(environ: Mapping[str, str] = os.environ, root: str = "/") -> tuple[bool, str]:
    """(inside a container?, why). `BERTH_IN_CONTAINER=0|1` overrides the detection.

    Used to pick the default bind address: 127.0.0.1 on a laptop, 0.0.0.0 in a container where
    the port is only reachable through the container's own interface.
    """
    override = environ.get("BERTH_IN_CONTAINER")
    if override is not None and override.strip() != "":
        inside = override.strip().lower() not in ("0", "false", "no", "off")
        return inside, f"BERTH_IN_CONTAINER={override}"
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return True, "KUBERNETES_SERVICE_HOST is set"
    for marker in ("/.dockerenv", "/run/.containerenv"):
        if os.path.exists(host_path(root, marker)):
            return True, f"{marker} exists"
    text = read_under(root, "/proc/self/cgroup")
    reason = _container_cgroup(parse_proc_cgroup(text)) if text else None
    if reason:
        return True, reason
    return False, "no container marker found"


def default_bind(environ: Mapping[str, str] = os.environ) -> tuple[str, str]:
    """(address, reason) when no --bind is given, as Gunicorn does with $PORT."""
    port = environ.get("PORT")
    if port:
        return f"0.0.0.0:{port}", "$PORT is set"
    inside, why = in_container(environ)
    if inside:
        return "0.0.0.0:8000", f"inside a container ({why}): listening on all interfaces"
    return "127.0.0.1:8000", f"not in a container ({why})"


def _tmp_filesystem(mounts: list[Mount]) -> tuple[bool | None, str]:
    """Is /tmp in memory? Worker heartbeat files written to a disk-backed overlay /tmp can stall
    workers, which is why Gunicorn users pass --worker-tmp-dir /dev/shm."""
    best: Mount | None = None
    for m in mounts:  # the deepest mount point containing /tmp; later lines hide earlier ones
        point = m.mount_point.rstrip("/") or "/"
        if point in ("/tmp", "/") and (
                best is None or len(point) >= len(best.mount_point.rstrip("/") or "/")):
            best = m
    if best is None:
        return None, "no mount found for /tmp"
    if (best.mount_point.rstrip("/") or "/") == "/tmp":
        return best.fstype == "tmpfs", f"/tmp is a {best.fstype} mount"
    return best.fstype == "tmpfs", f"/tmp is on {best.mount_point} ({best.fstype})"


def _read_mounts(root: str) -> tuple[list[Mount], str]:
    text = read_under(root, "/proc/self/mountinfo")
    if text is not None:
        return parse_mountinfo(text), "/proc/self/mountinfo"
    text = read_under(root, "/proc/self/mounts")
    if text is not None:
        return parse_mounts(text), "/proc/self/mounts"
    return [], ""


V1_CONTROLLERS = frozenset(("cpu", "cpuacct", "cpuset", "memory", "blkio", "io", "devices",
                            "freezer", "pids", "net_cls", "net_prio", "perf_event", "hugetlb",
                            "rdma", "misc"))


def _cgroup_layout(mounts: list[Mount]) -> str:
    """A `name=systemd` v1 hierarchy alone has no controllers and does not make a host v1."""
    v1 = any(m.fstype == "cgroup" and V1_CONTROLLERS.intersection(m.super_options)
             for m in mounts)
    v2 = any(m.fstype == "cgroup2" for m in mounts)
    return {(True, True): "hybrid", (True, False): "v1", (False, True): "v2"}.get((v1, v2), "none")


# --- the result -------------------------------------------------------------------------------

@dataclass(frozen=True)
class ContainerInfo:
    """Everything berth knows about its surroundings; every value comes with its source.

    `*_source` explains a value, or, when the value is None, why it is unknown.
    """

    root: str
    cgroup_layout: str  # "v1", "v2", "hybrid" (v1 controllers + a unified mount) or "none"
    cpu_limit: float | None  # CPUs' worth of time per period (0.5 = half a CPU)
    cpu_source: str
    cpuset: frozenset[int] | None  # the CPUs we may run on
    cpuset_source: str
    memory_limit: int | None  # bytes
    memory_source: str
    memory_cgroup_dir: str | None  # on-disk directory of our memory cgroup, for oom_kill_count
    memory_cgroup_version: int | None
    host_cpus: int | None
    host_cpus_source: str
    usable_cpus: float | None  # quota capped by the CPUs we may run on
    usable_cpus_source: str
    is_pid1: bool  # PID 1 must reap orphans and gets no default signal dispositions
    in_container: bool
    in_container_reason: str
    in_kubernetes: bool
    tmp_is_tmpfs: bool | None
    tmp_source: str
    notes: tuple[str, ...] = field(default=())  # oddities met while resolving cgroup paths

    def describe(self) -> str:
        """One line for the start-up log."""
        if self.cpu_limit is not None:
            cpu = f"cpu quota {format_cpus(self.cpu_limit)} ({self.cpu_source})"
        else:
            cpu = f"no cpu quota ({self.cpu_source})"
        if self.cpuset:
            kind = "affinity" if self.cpuset_source == "sched_getaffinity" else "cpuset"
            cpus = f"{kind} {format_cpu_list(self.cpuset)} ({len(self.cpuset)} CPUs)"
        else:
            cpus = f"cpuset unknown ({self.cpuset_source})"
        if self.memory_limit is not None:
            memory = f"memory {format_bytes(self.memory_limit)} ({self.memory_source})"
        else:
            memory = f"no memory limit ({self.memory_source})"
        host = f"{self.host_cpus} host CPUs" if self.host_cpus else "host CPUs unknown"
        return f"{cpu}; {cpus}; {memory}; {host}"

    def as_dict(self) -> dict:
        """JSON-friendly fields (the cpuset as a sorted list)."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["cpuset"] = sorted(self.cpuset) if self.cpuset is not None else None
        out["notes"] = list(self.notes)
        return out


def detect(root: str = "/", environ: Mapping[str, str] = os.environ,
           pid: int | None = None) -> ContainerInfo:
    """Describe the container (or host) whose filesystem is at `root`.

    With the real root and no `pid`, live facts come from the running process
    (`os.sched_getaffinity`, `os.cpu_count`, `os.getpid`); otherwise they come from files under
    `root` (the cgroup cpuset, /sys/devices/system/cpu/online) and `pid`.
    """
    real = os.path.abspath(root) == "/"
    mounts, _ = _read_mounts(root)
    cgroup_text = read_under(root, "/proc/self/cgroup")
    proc_cgroup = parse_proc_cgroup(cgroup_text) if cgroup_text else {}
    notes: list[str] = []

    limits = {}
    for controller, read_limit in (("cpu", read_cpu_limit), ("memory", read_memory_limit)):
        where, why = locate_controller(root, controller, mounts, proc_cgroup)
        if where is None:
            limits[controller] = (where, None, why)
        else:
            limits[controller] = (where, *read_limit(root, where))
            if where.note:
                notes.append(f"{controller}: {where.note}")
    cpu_dir, cpu_limit, cpu_source = limits["cpu"]
    mem_dir, memory_limit, memory_source = limits["memory"]

    cpuset: frozenset[int] | None = None
    cpuset_source = ""
    if real and pid is None and hasattr(os, "sched_getaffinity"):
        try:
            cpuset, cpuset_source = frozenset(os.sched_getaffinity(0)), "sched_getaffinity"
        except OSError as exc:
            cpuset_source = f"sched_getaffinity failed: {exc}"
    if cpuset is None:
        set_dir, why = locate_controller(root, "cpuset", mounts, proc_cgroup)
        if set_dir is None:
            cpuset_source = why
        else:
            cpuset, cpuset_source = read_cgroup_cpuset(root, set_dir)

    if real:
        host_cpus, host_source = os.cpu_count(), "os.cpu_count()"
    else:
        online = read_under(root, "/sys/devices/system/cpu/online")
        parsed = parse_cpu_list(online) if online else None
        host_cpus = len(parsed) if parsed else None
        host_source = "/sys/devices/system/cpu/online" if host_cpus else \
            "/sys/devices/system/cpu/online not readable"

    count = len(cpuset) if cpuset else None
    count_source = ("the CPU affinity" if cpuset_source == "sched_getaffinity"
                    else "the cpuset") if count else "the host CPUs"
    if count is None:
        count = host_cpus
    if cpu_limit is not None:
        if count is not None and count < cpu_limit:
            usable: float | None = float(count)
            usable_source = f"cpu quota {format_cpus(cpu_limit)} capped by {count_source}"
        else:
            usable, usable_source = cpu_limit, f"cpu quota ({cpu_source})"
    elif count is not None:
        usable, usable_source = float(count), f"no cpu quota: all of {count_source}"
    else:
        usable, usable_source = None, "no cpu quota and no CPU count"

    if pid is None and real:
        pid = os.getpid()
    inside, inside_why = in_container(environ, root)
    tmp_is_tmpfs, tmp_source = _tmp_filesystem(mounts) if mounts else (
        None, "neither /proc/self/mountinfo nor /proc/self/mounts is readable")

    return ContainerInfo(
        root=root, cgroup_layout=_cgroup_layout(mounts),
        cpu_limit=cpu_limit, cpu_source=cpu_source,
        cpuset=cpuset, cpuset_source=cpuset_source,
        memory_limit=memory_limit, memory_source=memory_source,
        memory_cgroup_dir=host_path(root, mem_dir.path) if mem_dir else None,
        memory_cgroup_version=mem_dir.version if mem_dir else None,
        host_cpus=host_cpus, host_cpus_source=host_source,
        usable_cpus=usable, usable_cpus_source=usable_source,
        is_pid1=pid == 1,
        in_container=inside, in_container_reason=inside_why,
        in_kubernetes=bool(environ.get("KUBERNETES_SERVICE_HOST")),
        tmp_is_tmpfs=tmp_is_tmpfs, tmp_source=tmp_source,
        notes=tuple(notes),
    )


def oom_kill_count(target: ContainerInfo | str | os.PathLike) -> int | None:
    """How many processes the kernel has OOM-killed in our memory cgroup so far, or None.

    `target` is a ContainerInfo or the on-disk directory of a memory cgroup. A supervisor can
    compare this before and after a worker dies of SIGKILL to tell "OOM-killed" from "killed".
    v2 keeps the count in `memory.events`, v1 in `memory.oom_control`; kernels before 4.13
    only report `under_oom` there, which gives None.
    """
    if isinstance(target, ContainerInfo):
        if target.memory_cgroup_dir is None:
            return None
        directory = target.memory_cgroup_dir
        names = ("memory.events",) if target.memory_cgroup_version == 2 else \
            ("memory.oom_control",)
    else:
        directory = os.fspath(target)
        names = ("memory.events", "memory.oom_control")
    for name in names:
        text = read_file(os.path.join(directory, name))
        if text is None:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return parse_int(value)
        return None
    return None

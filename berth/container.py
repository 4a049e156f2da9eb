"""What berth can tell about the container it runs in, so it can size itself.

A pre-fork server that trusts `os.cpu_count()` inside a container starts one worker per *host*
CPU: 64 workers in a pod limited to half a CPU and 512 MiB is the classic way to get OOM-killed
or throttled. The numbers that matter live in the cgroup filesystem, and they are scattered:
cgroup v1 or v2 (or both, "hybrid"), controllers mounted together or apart, the limit set on a
parent cgroup rather than ours, and a mount whose root is the container's own cgroup. This module
reads all of that once at start-up and reports each number together with *where it came from*,
because an operator asking "why did berth start 1 worker?" needs the file, not just the value.

Everything here is a pure function of a filesystem `root` (every path read is prefixed with it),
so tests point it at a fixture tree. Nothing raises on missing or unreadable files: absent
information is `None` plus a reason string.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

# cgroup v1 reports "no memory limit" as LONG_MAX rounded down to a page (9223372036854771712);
# anything this large cannot be a real limit.
UNLIMITED_BYTES = 2**62

# Path segments of /proc/self/cgroup that container runtimes create. Segments ending in
# ".service" are skipped: `/system.slice/docker.service` is the daemon, not a container.
CONTAINER_CGROUP_WORDS = ("docker", "kubepods", "containerd", "libpod", "lxc")

CGROUP_ROOT = "/sys/fs/cgroup"

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


# --- small readers and parsers ---------------------------------------------------------------

def _host_path(root: str, path: str) -> str:
    """The on-disk path of `path` (as seen by the process) under the filesystem `root`."""
    return os.path.join(root, path.lstrip("/"))


def _read_file(path: str) -> str | None:
    """Contents of the file at `path`, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except (OSError, ValueError):
        return None


def _read(root: str, path: str) -> str | None:
    """Contents of `path` (as the process sees it) under `root`, or None."""
    return _read_file(_host_path(root, path))


def _unescape(s: str) -> str:
    """Undo the kernel's octal escaping of spaces, tabs, newlines and backslashes in mount paths."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), s)


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo (or /proc/self/mounts, where `root` is always "/")."""

    root: str  # the directory of the mounted filesystem that appears at mount_point
    mount_point: str
    fstype: str
    source: str
    super_options: tuple[str, ...]  # for cgroup v1 these name the controllers: rw,cpu,cpuacct


def parse_mountinfo(text: str) -> list[Mount]:
    """Parse /proc/self/mountinfo; malformed lines are skipped.

    Format: `id parent major:minor root mount_point options [optional...] - fstype source super`.
    The optional fields (`shared:4`, `master:1`...) vary in number, so the fstype is found after
    the lone `-` separator rather than at a fixed column.
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 3:
            continue
        mounts.append(Mount(root=_unescape(fields[3]), mount_point=_unescape(fields[4]),
                            fstype=fields[sep + 1], source=_unescape(fields[sep + 2]),
                            super_options=tuple(fields[sep + 3].split(","))
                            if len(fields) > sep + 3 else ()))
    return mounts


def parse_mounts(text: str) -> list[Mount]:
    """Parse /proc/self/mounts (fstab format), the fallback when mountinfo is unreadable.

    It does not say which directory of the filesystem is mounted, so `root` is assumed "/".
    """
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mounts.append(Mount(root="/", mount_point=_unescape(fields[1]), fstype=fields[2],
                            source=_unescape(fields[0]), super_options=tuple(fields[3].split(","))))
    return mounts


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Map controller name to cgroup path from /proc/self/cgroup.

    v1 lines look like `4:cpu,cpuacct:/docker/abc` (one entry per controller, named hierarchies
    keep their `name=` prefix); the single v2 line `0::/path` is stored under the key "".
    """
    result: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            result[""] = path
        for name in controllers.split(","):
            if name:
                result[name] = path
    return result


def parse_cpu_list(text: str) -> frozenset[int] | None:
    """Parse the kernel's CPU list syntax (`0-3,8,10-11`); None when it is not one."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, dash, hi = part.partition("-")
        try:
            first = int(lo)
            last = int(hi) if dash else first
        except ValueError:
            return None
        if first < 0 or last < first:
            return None
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def format_cpu_list(cpus: frozenset[int] | set[int]) -> str:
    """The inverse of parse_cpu_list: `{0, 1, 2, 3, 8}` -> `0-3,8`."""
    ranges: list[str] = []
    ordered = sorted(cpus)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        ranges.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(ranges)


def format_bytes(n: int) -> str:
    """`536870912` -> `512 MiB`, `1610612736` -> `1.5 GiB` (binary units, as limits are set)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f}".rstrip("0").rstrip(".") + f" {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _format_cpus(q: float) -> str:
    return f"{round(q, 3):g}"


def _parse_int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


# --- finding our cgroup directory for one controller -----------------------------------------

@dataclass(frozen=True)
class CgroupDir:
    """Where one controller's files for this process live, as paths seen by the process."""

    controller: str
    version: int  # 1 or 2
    mount_point: str  # e.g. /sys/fs/cgroup/cpu,cpuacct
    mount_root: str  # the hierarchy directory shown at mount_point, e.g. /docker/abc
    path: str  # this process's cgroup directory, mount_point or below it
    note: str = ""  # set when the path had to be guessed

    def ancestors(self) -> list[str]:
        """`path`, its parent, ... up to the mount point: limits set above us still apply."""
        dirs = [self.path]
        current = self.path
        while current != self.mount_point and current.startswith(self.mount_point + "/"):
            current = posixpath.dirname(current)
            dirs.append(current)
        return dirs

    def hierarchy_path(self, directory: str) -> str:
        """The cgroup name of `directory` (what /proc/self/cgroup would show), for messages."""
        rest = directory[len(self.mount_point):]
        return posixpath.normpath(posixpath.join(self.mount_root, rest.lstrip("/")) or "/")


def _relative_cgroup(cgroup_path: str, mount_root: str) -> str | None:
    """`cgroup_path` relative to the mount's root, or None when it lies outside the mount.

    Without a cgroup namespace, Docker (v1) mounts `/docker/<id>` at /sys/fs/cgroup/cpu and
    /proc/self/cgroup says `/docker/<id>` too: we are at the mount point itself. With one, both say
    `/`. Paths containing `..` come from a namespace we are not in.
    """
    if ".." in cgroup_path.split("/"):
        return None
    if mount_root == "/":
        return cgroup_path
    root = mount_root.rstrip("/")
    if cgroup_path == root:
        return "/"
    if cgroup_path.startswith(root + "/"):
        return cgroup_path[len(root):]
    return None


def _pick_mount(candidates: list[Mount], cgroup_path: str) -> Mount:
    """Choose among several mounts of one hierarchy (bind mounts, over-mounts).

    Prefer one whose root contains our cgroup (the deepest such root), then one under
    /sys/fs/cgroup, then the last listed, since a later mount hides an earlier one.
    """
    def score(item: tuple[int, Mount]) -> tuple[int, int, int, int]:
        index, m = item
        contains = _relative_cgroup(cgroup_path, m.root) is not None
        standard = m.mount_point == CGROUP_ROOT or m.mount_point.startswith(CGROUP_ROOT + "/")
        return (contains, len(m.root) if contains else 0, standard, index)
    return max(enumerate(candidates), key=score)[1]


def _cgroup_dir(root: str, controller: str, version: int, mount: Mount,
                cgroup_path: str) -> CgroupDir:
    relative = _relative_cgroup(cgroup_path, mount.root)
    note = ""
    if relative is None:
        note = (f"cgroup {cgroup_path} is outside the mount root {mount.root}; "
                f"using the mount point {mount.mount_point}")
        path = mount.mount_point
    else:
        path = posixpath.normpath(posixpath.join(mount.mount_point, relative.lstrip("/")))
        if not os.path.isdir(_host_path(root, path)):
            note = f"{path} does not exist; using the mount point {mount.mount_point}"
            path = mount.mount_point
    return CgroupDir(controller=controller, version=version, mount_point=mount.mount_point,
                     mount_root=mount.root, path=path, note=note)


def locate_controller(root: str, controller: str, mounts: list[Mount],
                      proc_cgroup: Mapping[str, str]) -> tuple[CgroupDir | None, str]:
    """(the cgroup directory holding `controller`'s files for us, or None; why).

    On a hybrid host the unified (v2) hierarchy is mounted next to the v1 ones but usually
    holds no controllers (or only a few: it can list `hugetlb` alone), so v2 is used for a
    controller only if the v2 root's `cgroup.controllers` names it. A controller is attached to
    one hierarchy at a time, so at most one of the two can be live.
    """
    v2_mounts = [m for m in mounts if m.fstype == "cgroup2"]
    v1_mounts = [m for m in mounts if m.fstype == "cgroup" and controller in m.super_options]
    v2_path = proc_cgroup.get("")
    v1_path = proc_cgroup.get(controller)

    if v2_mounts and v2_path is not None:
        mount = _pick_mount(v2_mounts, v2_path)
        listed = _read(root, posixpath.join(mount.mount_point, "cgroup.controllers"))
        if (listed is not None and controller in listed.split()) or (
                listed is None and not v1_mounts):
            return _cgroup_dir(root, controller, 2, mount, v2_path), "cgroup v2"
    if v1_mounts and v1_path is not None:
        mount = _pick_mount(v1_mounts, v1_path)
        return _cgroup_dir(root, controller, 1, mount, v1_path), "cgroup v1"
    if v1_mounts:
        return None, f"cgroup v1 {controller} is mounted but /proc/self/cgroup has no {controller}"
    if v2_mounts and v2_path is not None:
        return None, f"cgroup v2 does not have the {controller} controller"
    if not v2_mounts and not v1_mounts and not proc_cgroup:
        return None, "no cgroup information"
    return None, f"no {controller} cgroup mounted"


# --- reading limits ---------------------------------------------------------------------------

def _tightest(where: CgroupDir, filename: str, parse) -> tuple[float | int | None, str, str]:
    """Walk from our cgroup to the mount root and keep the smallest limit found.

    Returns (limit or None, directory it was set on, reason when None). A limit on a parent
    cgroup caps every child, and container runtimes often set it on the pod or the container's
    own cgroup while the process sits one level lower.
    """
    best: float | int | None = None
    best_dir = ""
    seen_file = False
    for directory in where.ancestors():
        value, present = parse(posixpath.join(directory, filename))
        seen_file = seen_file or present
        if value is not None and (best is None or value < best):
            best, best_dir = value, directory
    if best is not None:
        return best, best_dir, ""
    if seen_file:
        return None, "", "no limit"
    return None, "", f"{filename} not found (controller not enabled for this cgroup)"


def _source(where: CgroupDir, filename: str, directory: str) -> str:
    source = f"cgroup v{where.version} {filename}"
    if directory != where.path:
        source += f" of ancestor {where.hierarchy_path(directory)}"
    return source


def _cpu_limit(root: str, where: CgroupDir) -> tuple[float | None, str]:
    if where.version == 2:
        def parse_v2(path: str) -> tuple[float | None, bool]:
            text = _read(root, path)
            if text is None:
                return None, False
            fields = text.split()
            if not fields or fields[0] == "max":
                return None, True
            try:
                quota = int(fields[0])
                period = int(fields[1]) if len(fields) > 1 else 100000
            except ValueError:
                return None, True
            return (quota / period if quota > 0 and period > 0 else None), True

        limit, directory, why = _tightest(where, "cpu.max", parse_v2)
        if limit is None:
            return None, f"cgroup v2 {why}" if why != "no limit" else \
                "cgroup v2 cpu.max is max"
        return float(limit), _source(where, "cpu.max", directory)

    def parse_v1(path: str) -> tuple[float | None, bool]:
        quota = _parse_int(_read(root, path))
        if quota is None:
            return None, False
        period = _parse_int(_read(root, posixpath.join(posixpath.dirname(path),
                                                       "cpu.cfs_period_us")))
        if quota <= 0 or not period or period <= 0:
            return None, True
        return quota / period, True

    limit, directory, why = _tightest(where, "cpu.cfs_quota_us", parse_v1)
    if limit is None:
        return None, f"cgroup v1 {why}" if why != "no limit" else \
            "cgroup v1 cpu.cfs_quota_us is -1"
    return float(limit), _source(where, "cpu.cfs_quota_us", directory)


def _memory_limit(root: str, where: CgroupDir) -> tuple[int | None, str]:
    filename = "memory.max" if where.version == 2 else "memory.limit_in_bytes"

    def parse(path: str) -> tuple[int | None, bool]:
        text = _read(root, path)
        if text is None:
            return None, False
        value = _parse_int(text)  # "max" (v2) parses as None: no limit
        if value is None or value <= 0 or value >= UNLIMITED_BYTES:
            return None, True
        return value, True

    limit, directory, why = _tightest(where, filename, parse)
    if limit is None:
        if why != "no limit":
            return None, f"cgroup v{where.version} {why}"
        shown = "max" if where.version == 2 else "unlimited"
        return None, f"cgroup v{where.version} {filename} is {shown}"
    return int(limit), _source(where, filename, directory)


def _cgroup_cpuset(root: str, where: CgroupDir) -> tuple[frozenset[int] | None, str]:
    """The nearest cpuset: the effective set already folds in every ancestor's restriction."""
    names = (("cpuset.cpus.effective",) if where.version == 2
             else ("cpuset.effective_cpus", "cpuset.cpus"))
    for directory in where.ancestors():
        for name in names:
            text = _read(root, posixpath.join(directory, name))
            if text is None:
                continue
            cpus = parse_cpu_list(text)
            if cpus:  # v1 leaves cpuset.cpus empty in a cgroup nobody configured
                return cpus, _source(where, name, directory)
    return None, f"cgroup v{where.version} {' / '.join(names)} not found"


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
        if os.path.exists(_host_path(root, marker)):
            return True, f"{marker} exists"
    text = _read(root, "/proc/self/cgroup")
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
    text = _read(root, "/proc/self/mountinfo")
    if text is not None:
        return parse_mountinfo(text), "/proc/self/mountinfo"
    text = _read(root, "/proc/self/mounts")
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
            cpu = f"cpu quota {_format_cpus(self.cpu_limit)} ({self.cpu_source})"
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
    cgroup_text = _read(root, "/proc/self/cgroup")
    proc_cgroup = parse_proc_cgroup(cgroup_text) if cgroup_text else {}
    notes: list[str] = []

    def limit(controller: str, read) -> tuple[CgroupDir | None, float | int | None, str]:
        """A controller's cgroup directory, its limit and where that was read (or why there is
        none)."""
        where, why = locate_controller(root, controller, mounts, proc_cgroup)
        if where is None:
            return None, None, why
        if where.note:
            notes.append(f"{controller}: {where.note}")
        return (where, *read(root, where))

    _, cpu_limit, cpu_source = limit("cpu", _cpu_limit)
    mem_dir, memory_limit, memory_source = limit("memory", _memory_limit)

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
            cpuset, cpuset_source = _cgroup_cpuset(root, set_dir)

    if real:
        host_cpus, host_source = os.cpu_count(), "os.cpu_count()"
    else:
        online = _read(root, "/sys/devices/system/cpu/online")
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
            usable_source = f"cpu quota {_format_cpus(cpu_limit)} capped by {count_source}"
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
        memory_cgroup_dir=_host_path(root, mem_dir.path) if mem_dir else None,
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
        text = _read_file(os.path.join(directory, name))
        if text is None:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return _parse_int(value)
        return None
    return None

"""The cgroup filesystem, read: where our cgroup is for a controller, and its limits.

The numbers that matter for sizing live in the cgroup filesystem, and they are scattered:
cgroup v1 or v2 (or both, "hybrid"), controllers mounted together or apart, the limit set on a
parent cgroup rather than ours, and a mount whose root is the container's own cgroup. This
module finds our cgroup directory for a controller (`locate_controller`) and reads the
tightest CPU, memory and cpuset limits on the way up, each with the file it came from
(`berth/container.py` puts them together with the other facts).

Everything here is a pure function of a filesystem `root` (every path read is prefixed with it),
so tests point it at a fixture tree. Nothing raises on missing or unreadable files: absent
information is `None` plus a reason string.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass

# cgroup v1 reports "no memory limit" as LONG_MAX rounded down to a page (9223372036854771712);
# anything this large cannot be a real limit.
UNLIMITED_BYTES = 2**62

CGROUP_ROOT = "/sys/fs/cgroup"

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


# --- small readers and parsers ---------------------------------------------------------------

def host_path(root: str, path: str) -> str:
    """The on-disk path of `path` (as seen by the process) under the filesystem `root`."""
    return os.path.join(root, path.lstrip("/"))


def read_file(path: str) -> str | None:
    """Contents of the file at `path`, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except (OSError, ValueError):
        return None


def read_under(root: str, path: str) -> str | None:
    """Contents of `path` (as the process sees it) under `root`, or None."""
    return read_file(host_path(root, path))


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


def format_cpus(q: float) -> str:
    return f"{round(q, 3):g}"


def parse_int(text: str | None) -> int | None:
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
        if not os.path.isdir(host_path(root, path)):
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
        listed = read_under(root, posixpath.join(mount.mount_point, "cgroup.controllers"))
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


def read_cpu_limit(root: str, where: CgroupDir) -> tuple[float | None, str]:
    if where.version == 2:
        def parse_v2(path: str) -> tuple[float | None, bool]:
            text = read_under(root, path)
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
        quota = parse_int(read_under(root, path))
        if quota is None:
            return None, False
        period = parse_int(read_under(root, posixpath.join(posixpath.dirname(path),
                                                       "cpu.cfs_period_us")))
        if quota <= 0 or not period or period <= 0:
            return None, True
        return quota / period, True

    limit, directory, why = _tightest(where, "cpu.cfs_quota_us", parse_v1)
    if limit is None:
        return None, f"cgroup v1 {why}" if why != "no limit" else \
            "cgroup v1 cpu.cfs_quota_us is -1"
    return float(limit), _source(where, "cpu.cfs_quota_us", directory)


def read_memory_limit(root: str, where: CgroupDir) -> tuple[int | None, str]:
    filename = "memory.max" if where.version == 2 else "memory.limit_in_bytes"

    def parse(path: str) -> tuple[int | None, bool]:
        text = read_under(root, path)
        if text is None:
            return None, False
        value = parse_int(text)  # "max" (v2) parses as None: no limit
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


def read_cgroup_cpuset(root: str, where: CgroupDir) -> tuple[frozenset[int] | None, str]:
    """The nearest cpuset: the effective set already folds in every ancestor's restriction."""
    names = (("cpuset.cpus.effective",) if where.version == 2
             else ("cpuset.effective_cpus", "cpuset.cpus"))
    for directory in where.ancestors():
        for name in names:
            text = read_under(root, posixpath.join(directory, name))
            if text is None:
                continue
            cpus = parse_cpu_list(text)
            if cpus:  # v1 leaves cpuset.cpus empty in a cgroup nobody configured
                return cpus, _source(where, name, directory)
    return None, f"cgroup v{where.version} {' / '.join(names)} not found"

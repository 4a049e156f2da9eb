"""berth.container: cgroup limits, cpusets and container markers, read from a filesystem root.

Most tests point `detect()` at a fixture tree under tests/fixtures/cgroup/ whose files hold what
real kernels write (mountinfo lines, cpu.max, memory.limit_in_bytes, ...). The end-to-end tests
at the bottom create real cgroup v1 groups on this machine, put a child process in them and
check what the child's `detect()` reports.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from berth import cgroups, container
from berth.cgroups import (
    format_bytes,
    format_cpu_list,
    parse_cpu_list,
    parse_mountinfo,
    parse_proc_cgroup,
)
from berth.container import ContainerInfo, default_bind, detect, in_container, oom_kill_count

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cgroup"
MiB = 1024 * 1024
DOCKER_ID = "3f9c1b2e7a4d5c6b8e9f0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f"
K8S_POD = "/kubepods.slice/kubepods-burstable.slice/" \
          "kubepods-burstable-pod5e0f3b7c_1a2b_4c3d_9e8f_0123456789ab.slice"


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def copy_fixture(name: str, tmp_path: Path) -> Path:
    """A writable copy of a fixture tree, for variants of one layout."""
    dest = tmp_path / name
    shutil.copytree(FIXTURES / name, dest)
    return dest


# --- parsers ----------------------------------------------------------------------------------

def test_parse_mountinfo_reads_fields_around_the_separator():
    text = (
        "35 24 0:30 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - "
        "cgroup cgroup rw,cpu,cpuacct\n"
        "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 "
        "rw,nsdelegate,memory_recursiveprot\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
        "77 27 8:1 /srv/my\\040data /mnt/my\\040data rw,relatime shared:1 master:2 - ext4 "
        "/dev/sda1 rw\n"
        "garbage line\n"
    )
    mounts = parse_mountinfo(text)
    assert [m.mount_point for m in mounts] == [
        "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/mnt/my data"]
    cpu, v2, unified, data = mounts
    assert (cpu.fstype, cpu.root, cpu.super_options) == ("cgroup", "/", ("rw", "cpu", "cpuacct"))
    assert v2.fstype == unified.fstype == "cgroup2"
    assert (data.root, data.fstype, data.source) == ("/srv/my data", "ext4", "/dev/sda1")


def test_parse_proc_cgroup_maps_each_controller_and_the_unified_line():
    text = "12:pids:/docker/x\n3:cpu,cpuacct:/docker/x\n1:name=systemd:/docker/x\n0::/a/b\n"
    assert parse_proc_cgroup(text) == {"pids": "/docker/x", "cpu": "/docker/x",
                                       "cpuacct": "/docker/x", "name=systemd": "/docker/x",
                                       "": "/a/b"}


@pytest.mark.parametrize("text, cpus", [
    ("0-3,8,10-11\n", {0, 1, 2, 3, 8, 10, 11}),
    ("0-1\n", {0, 1}),
    ("5", {5}),
    ("\n", set()),
    ("0-2, 4", {0, 1, 2, 4}),
])
def test_parse_cpu_list(text, cpus):
    assert parse_cpu_list(text) == frozenset(cpus)


@pytest.mark.parametrize("text", ["a-b", "3-1", "1,x", "-1"])
def test_parse_cpu_list_rejects_garbage_with_none(text):
    assert parse_cpu_list(text) is None


def test_format_cpu_list_is_the_inverse_of_parsing():
    assert format_cpu_list(frozenset({0, 1, 2, 3, 8, 10, 11})) == "0-3,8,10-11"
    assert format_cpu_list(parse_cpu_list("0-63")) == "0-63"
    assert format_cpu_list(frozenset()) == ""


def test_format_bytes_uses_binary_units():
    assert format_bytes(536870912) == "512 MiB"
    assert format_bytes(1610612736) == "1.5 GiB"
    assert format_bytes(268435456) == "256 MiB"
    assert format_bytes(512) == "512 B"


# --- cgroup v1 --------------------------------------------------------------------------------

def test_v1_docker_cpu_and_cpuacct_together_with_the_container_as_mount_root():
    """Docker without a cgroup namespace: mount root and /proc/self/cgroup both say
    /docker/<id>, so our cgroup is the mount point itself."""
    info = detect(fixture("v1-docker"), environ={})
    assert info.cgroup_layout == "v1"  # a 0:: line in /proc/self/cgroup but no cgroup2 mount
    assert info.cpu_limit == 1.5
    assert info.cpu_source == "cgroup v1 cpu.cfs_quota_us"
    assert info.memory_limit == 512 * MiB
    assert info.memory_source == "cgroup v1 memory.limit_in_bytes"
    assert info.memory_cgroup_version == 1
    assert info.memory_cgroup_dir == os.path.join(fixture("v1-docker"), "sys/fs/cgroup/memory")
    assert info.cpuset == frozenset({2, 3})
    assert info.cpuset_source == "cgroup v1 cpuset.effective_cpus"
    assert info.usable_cpus == 1.5
    assert info.host_cpus == 8
    assert info.notes == ()
    assert info.in_container and info.in_container_reason == "/.dockerenv exists"
    assert not info.in_kubernetes
    assert info.tmp_is_tmpfs is False and info.tmp_source == "/tmp is on / (overlay)"
    assert oom_kill_count(info) == 3


def test_v1_docker_mount_root_with_a_namespaced_proc_cgroup_uses_the_mount_point(tmp_path):
    """Mount root /docker/<id> but /proc/self/cgroup says `/` (a cgroup namespace created
    after the mounts): the path cannot be made relative, the mount point is our cgroup."""
    root = copy_fixture("v1-docker", tmp_path)
    text = (root / "proc/self/cgroup").read_text().replace(f"/docker/{DOCKER_ID}", "/")
    (root / "proc/self/cgroup").write_text(text)
    info = detect(str(root), environ={})
    assert info.cpu_limit == 1.5 and info.cpu_source == "cgroup v1 cpu.cfs_quota_us"
    assert info.memory_limit == 512 * MiB
    assert any("outside the mount root" in note for note in info.notes), info.notes


def test_v1_cpu_and_cpuacct_apart_takes_the_tighter_parent_quota():
    info = detect(fixture("v1-apart"), environ={})
    assert info.cgroup_layout == "v1"
    assert info.cpu_limit == 2.0
    assert info.cpu_source == "cgroup v1 cpu.cfs_quota_us of ancestor /batch"


def test_v1_page_rounded_long_max_memory_is_no_limit():
    info = detect(fixture("v1-apart"), environ={})
    assert info.memory_limit is None
    assert info.memory_source == "cgroup v1 memory.limit_in_bytes is unlimited"


def test_v1_cpuset_falls_back_to_cpuset_cpus_and_parses_lists():
    info = detect(fixture("v1-apart"), environ={})
    assert info.cpuset == frozenset({0, 1, 2, 3, 8, 10, 11})
    assert info.cpuset_source == "cgroup v1 cpuset.cpus"
    assert info.host_cpus == 16
    assert info.usable_cpus == 2.0  # the quota, below the 7 CPUs of the cpuset


def test_v1_old_kernel_without_an_oom_kill_line_gives_none():
    info = detect(fixture("v1-apart"), environ={})
    assert info.memory_cgroup_dir.endswith("sys/fs/cgroup/memory/batch/job7")
    assert oom_kill_count(info) is None


def test_v1_host_without_markers_is_not_a_container_and_has_tmpfs_tmp():
    info = detect(fixture("v1-apart"), environ={})
    assert not info.in_container
    assert info.in_container_reason == "no container marker found"
    assert info.tmp_is_tmpfs is True and info.tmp_source == "/tmp is a tmpfs mount"


# --- cgroup v2 --------------------------------------------------------------------------------

def test_v2_container_at_its_namespace_root():
    info = detect(fixture("v2-container"), environ={})
    assert info.cgroup_layout == "v2"
    assert info.cpu_limit == 0.5 and info.cpu_source == "cgroup v2 cpu.max"
    assert info.memory_limit == 512 * MiB and info.memory_source == "cgroup v2 memory.max"
    assert info.cpuset == frozenset({0, 1})
    assert info.cpuset_source == "cgroup v2 cpuset.cpus.effective"
    assert info.host_cpus == 64
    assert info.usable_cpus == 0.5
    assert info.memory_cgroup_version == 2
    assert oom_kill_count(info) == 2
    assert info.in_container and info.in_container_reason == "/run/.containerenv exists"
    assert info.tmp_is_tmpfs is True
    assert info.describe() == ("cpu quota 0.5 (cgroup v2 cpu.max); cpuset 0-1 (2 CPUs); "
                               "memory 512 MiB (cgroup v2 memory.max); 64 host CPUs")


def test_v2_nested_cgroup_takes_the_tighter_limits_of_the_pod():
    info = detect(fixture("v2-nested"), environ={"KUBERNETES_SERVICE_HOST": "10.96.0.1"})
    assert info.cpu_limit == 1.0  # the container scope says 2, its pod slice 1
    assert info.cpu_source == f"cgroup v2 cpu.max of ancestor {K8S_POD}"
    assert info.memory_limit == 256 * MiB  # the scope says max, the pod 256 MiB
    assert info.memory_source == f"cgroup v2 memory.max of ancestor {K8S_POD}"
    assert info.memory_cgroup_dir.endswith(".scope")
    assert oom_kill_count(info) == 1
    # cpuset is not delegated below the root here: the nearest effective set is the root's
    assert info.cpuset == frozenset(range(8))
    assert info.cpuset_source == "cgroup v2 cpuset.cpus.effective of ancestor /"
    assert info.usable_cpus == 1.0
    assert info.in_kubernetes
    assert info.in_container_reason == "KUBERNETES_SERVICE_HOST is set"


def test_v2_nested_cgroup_path_marks_a_container_without_env():
    info = detect(fixture("v2-nested"), environ={})
    assert info.in_container and not info.in_kubernetes
    assert "kubepods" in info.in_container_reason


def test_v2_max_means_no_limit(tmp_path):
    root = copy_fixture("v2-container", tmp_path)
    (root / "sys/fs/cgroup/cpu.max").write_text("max 100000\n")
    (root / "sys/fs/cgroup/memory.max").write_text("max\n")
    info = detect(str(root), environ={})
    assert info.cpu_limit is None and info.cpu_source == "cgroup v2 cpu.max is max"
    assert info.memory_limit is None and info.memory_source == "cgroup v2 memory.max is max"
    assert info.usable_cpus == 2.0  # no quota: all CPUs of the cpuset
    assert info.describe().startswith("no cpu quota (cgroup v2 cpu.max is max); cpuset 0-1")


def test_quota_above_the_cpuset_is_capped_by_it(tmp_path):
    root = copy_fixture("v2-container", tmp_path)
    (root / "sys/fs/cgroup/cpu.max").write_text("400000 100000\n")
    info = detect(str(root), environ={})
    assert info.cpu_limit == 4.0
    assert info.usable_cpus == 2.0
    assert info.usable_cpus_source == "cpu quota 4 capped by the cpuset"


# --- hybrid -----------------------------------------------------------------------------------

@pytest.mark.parametrize("controllers", ["\n", "hugetlb\n"])
def test_hybrid_v1_controllers_win_over_the_unified_mount(tmp_path, controllers):
    """systemd hybrid: `0::/` and a cgroup2 mount exist, but the controllers are on v1. An empty
    cgroup.controllers is the textbook case; this build machine's lists `hugetlb` alone."""
    root = copy_fixture("hybrid", tmp_path)
    (root / "sys/fs/cgroup/unified/cgroup.controllers").write_text(controllers)
    info = detect(str(root), environ={})
    assert info.cgroup_layout == "hybrid"
    assert info.cpu_limit == 0.5 and info.cpu_source == "cgroup v1 cpu.cfs_quota_us"
    assert info.memory_limit == 1024 * MiB
    assert info.memory_source == "cgroup v1 memory.limit_in_bytes"
    assert info.memory_cgroup_version == 1 and oom_kill_count(info) == 0
    assert info.cpuset == frozenset({0, 1})
    assert info.cpuset_source == "cgroup v1 cpuset.effective_cpus"


def test_hybrid_fixture_as_committed():
    info = detect(fixture("hybrid"), environ={}, pid=1)
    assert info.cpu_source == "cgroup v1 cpu.cfs_quota_us" and info.is_pid1


# --- markers, overrides, pid 1, /tmp, missing files -------------------------------------------

def test_pid_is_a_parameter_for_fixtures():
    assert detect(fixture("v2-container"), environ={}, pid=1).is_pid1
    assert not detect(fixture("v2-container"), environ={}, pid=42).is_pid1
    assert not detect(fixture("v2-container"), environ={}).is_pid1


def test_container_override_beats_every_marker():
    assert in_container({"BERTH_IN_CONTAINER": "0"}, root=fixture("v1-docker")) == \
        (False, "BERTH_IN_CONTAINER=0")
    assert in_container({"BERTH_IN_CONTAINER": "1"}, root=fixture("v1-apart")) == \
        (True, "BERTH_IN_CONTAINER=1")
    info = detect(fixture("v1-docker"),
                  environ={"BERTH_IN_CONTAINER": "no", "KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    assert not info.in_container and info.in_kubernetes
    # an empty override is no override
    assert in_container({"BERTH_IN_CONTAINER": " "}, root=fixture("v1-docker"))[0]


def test_kubernetes_env_marks_a_container():
    assert in_container({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}, root=fixture("v1-apart")) == \
        (True, "KUBERNETES_SERVICE_HOST is set")


@pytest.mark.parametrize("cgroup, inside", [
    (f"12:pids:/docker/{DOCKER_ID}\n0::/\n", True),
    (f"0::/system.slice/docker-{DOCKER_ID}.scope\n", True),
    ("0::/kubepods/besteffort/pod1/abc\n", True),
    ("0::/system.slice/cri-containerd-abc.scope\n", True),
    ("0::/machine.slice/libpod-abc.scope/container\n", True),
    ("0::/lxc.payload.web\n", True),
    # the daemons themselves and plain hosts are not containers
    ("0::/system.slice/docker.service\n", False),
    ("0::/system.slice/containerd.service\n", False),
    ("0::/user.slice/user-1000.slice/session-2.scope\n", False),
    ("0::/\n", False),
])
def test_cgroup_path_marks_a_container(tmp_path, cgroup, inside):
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/cgroup").write_text(cgroup)
    result, why = in_container({}, root=str(tmp_path))
    assert result is inside, why


def test_default_bind_keeps_its_behaviour():
    assert default_bind({"PORT": "5000"}) == ("0.0.0.0:5000", "$PORT is set")
    assert default_bind({"BERTH_IN_CONTAINER": "0"}) == \
        ("127.0.0.1:8000", "not in a container (BERTH_IN_CONTAINER=0)")
    assert default_bind({"BERTH_IN_CONTAINER": "1"})[0] == "0.0.0.0:8000"


def test_tmp_from_proc_self_mounts_when_mountinfo_is_missing(tmp_path):
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mounts").write_text(
        "overlay / overlay rw,relatime,lowerdir=/l,upperdir=/u,workdir=/w 0 0\n"
        "tmpfs /tmp tmpfs rw,nosuid,nodev,relatime 0 0\n")
    info = detect(str(tmp_path), environ={})
    assert info.tmp_is_tmpfs is True
    (tmp_path / "proc/self/mounts").write_text(
        "overlay / overlay rw,relatime,lowerdir=/l,upperdir=/u,workdir=/w 0 0\n")
    assert detect(str(tmp_path), environ={}).tmp_is_tmpfs is False


def test_an_empty_root_gives_nones_with_reasons(tmp_path):
    info = detect(str(tmp_path), environ={})
    assert isinstance(info, ContainerInfo)
    assert info.cgroup_layout == "none"
    for value, reason in [(info.cpu_limit, info.cpu_source), (info.cpuset, info.cpuset_source),
                          (info.memory_limit, info.memory_source),
                          (info.host_cpus, info.host_cpus_source),
                          (info.usable_cpus, info.usable_cpus_source),
                          (info.tmp_is_tmpfs, info.tmp_source)]:
        assert value is None and reason
    assert info.memory_cgroup_dir is None and oom_kill_count(info) is None
    assert not info.in_container and not info.is_pid1
    assert info.describe().startswith("no cpu quota (no cgroup information)")


def test_garbage_and_missing_files_never_raise(tmp_path):
    root = copy_fixture("v2-container", tmp_path)
    (root / "sys/fs/cgroup/cpu.max").write_text("lots of cpu\n")
    (root / "sys/fs/cgroup/memory.max").write_bytes(b"\xff\xfe\n")
    (root / "sys/fs/cgroup/cpuset.cpus.effective").write_text("zero-one\n")
    (root / "sys/fs/cgroup/memory.events").unlink()
    (root / "sys/devices/system/cpu/online").unlink()
    info = detect(str(root), environ={})
    assert info.cpu_limit is None and info.memory_limit is None and info.cpuset is None
    assert info.host_cpus is None and info.usable_cpus is None
    assert oom_kill_count(info) is None
    info.describe()


def test_oom_kill_count_takes_a_directory():
    assert oom_kill_count(FIXTURES / "v1-docker/sys/fs/cgroup/memory") == 3
    assert oom_kill_count(str(FIXTURES / "v2-container/sys/fs/cgroup")) == 2
    assert oom_kill_count(FIXTURES / "does-not-exist") is None


def test_detect_on_this_machine_uses_live_process_facts():
    info = detect(environ={})
    assert info.cpuset == frozenset(os.sched_getaffinity(0))
    assert info.cpuset_source == "sched_getaffinity"
    assert info.host_cpus == os.cpu_count()
    assert info.is_pid1 is (os.getpid() == 1)
    assert info.usable_cpus is not None and 0 < info.usable_cpus <= len(info.cpuset)
    json.dumps(info.as_dict())
    assert "host CPUs" in info.describe()


# --- end to end: real cgroup v1 groups on this machine ----------------------------------------

CHILD = """
import json, os, sys
for procs in sys.argv[1:]:
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
from berth.container import detect, oom_kill_count
info = detect(environ={})
out = info.as_dict()
out["describe"] = info.describe()
out["oom_kill_count"] = oom_kill_count(info)
print(json.dumps(out))
"""


def _own_v1_dir(controller: str) -> tuple[str, str] | None:
    """(mount point, our cgroup directory) of a v1 controller, computed without berth."""
    mounts = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    ours = parse_proc_cgroup(Path("/proc/self/cgroup").read_text()).get(controller)
    for m in mounts:
        if m.fstype == "cgroup" and controller in m.super_options and ours is not None:
            rel = ours[len(m.root.rstrip("/")):] if ours.startswith(m.root) else "/"
            return m.mount_point, os.path.join(m.mount_point, rel.lstrip("/")).rstrip("/")
    return None


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@pytest.fixture
def v1_cgroups():
    """Factory: make(controller, {file: value}, nested=False) -> new cgroup directory.

    The group goes under our own cgroup when possible (on this machine the memory one is
    /process_api/<id>, set up by whatever runs us) so the test stays inside it, else under the
    mount root. Everything made is removed afterwards, deepest first, once the child is gone.
    """
    if not sys.platform.startswith("linux"):
        pytest.skip("cgroups are Linux only")
    if os.geteuid() != 0:
        pytest.skip("creating cgroups needs root")
    made: list[str] = []
    name = f"berth-test-{secrets.token_hex(4)}"

    def make(controller: str, settings: dict[str, str], parent: str | None = None) -> str:
        found = _own_v1_dir(controller)
        if found is None:
            pytest.skip(f"the cgroup v1 {controller} controller is not mounted")
        mount_point, own = found
        candidates = [parent] if parent else list(dict.fromkeys([own, mount_point]))
        errors = []
        for base in candidates:
            path = os.path.join(base, name if parent is None else "inner")
            try:
                os.mkdir(path)
            except OSError as exc:
                errors.append(f"mkdir {path}: {exc}")
                continue
            made.append(path)
            try:
                for filename, value in settings.items():
                    _write(os.path.join(path, filename), value)
                return path
            except OSError as exc:
                errors.append(f"{path}: {exc}")
        pytest.skip(f"cannot create a cgroup v1 {controller} group: {'; '.join(errors)}")

    yield make

    leftovers = []
    for path in reversed(made):
        for _ in range(50):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)  # the exited child can take a moment to leave the group
        else:
            leftovers.append(path)
    assert not leftovers, f"could not remove cgroups {leftovers}"


def _run_child(procs: list[str], code: str = CHILD) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code, *procs], capture_output=True, text=True,
                          env=env, timeout=20)


def test_end_to_end_detect_in_a_real_v1_cgroup(v1_cgroups):
    cpu = v1_cgroups("cpu", {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000"})
    mem = v1_cgroups("memory", {"memory.limit_in_bytes": str(256 * MiB)})
    result = _run_child([os.path.join(cpu, "cgroup.procs"), os.path.join(mem, "cgroup.procs")])
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["cpu_limit"] == 0.5
    assert info["cpu_source"] == "cgroup v1 cpu.cfs_quota_us"
    assert info["memory_limit"] == 256 * MiB
    assert info["memory_source"] == "cgroup v1 memory.limit_in_bytes"
    assert info["memory_cgroup_dir"] == mem
    assert info["memory_cgroup_version"] == 1
    assert info["oom_kill_count"] == 0
    assert info["usable_cpus"] == 0.5
    assert "cpu quota 0.5 (cgroup v1 cpu.cfs_quota_us)" in info["describe"]
    assert "memory 256 MiB (cgroup v1 memory.limit_in_bytes)" in info["describe"]


def test_end_to_end_limits_on_a_real_parent_cgroup_apply(v1_cgroups):
    cpu = v1_cgroups("cpu", {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000"})
    cpu_inner = v1_cgroups("cpu", {}, parent=cpu)  # quota -1: inherits the parent's
    mem = v1_cgroups("memory", {"memory.limit_in_bytes": str(256 * MiB)})
    mem_inner = v1_cgroups("memory", {"memory.limit_in_bytes": str(128 * MiB)}, parent=mem)
    result = _run_child([os.path.join(cpu_inner, "cgroup.procs"),
                         os.path.join(mem_inner, "cgroup.procs")])
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["cpu_limit"] == 0.5
    assert info["cpu_source"].startswith("cgroup v1 cpu.cfs_quota_us of ancestor /berth-test-")
    assert info["memory_limit"] == 128 * MiB
    assert info["memory_source"] == "cgroup v1 memory.limit_in_bytes"


def test_end_to_end_oom_kill_count_sees_a_real_oom_kill(v1_cgroups):
    mem = v1_cgroups("memory", {"memory.limit_in_bytes": str(64 * MiB)})
    if oom_kill_count(mem) is None:
        pytest.skip("this kernel's memory.oom_control has no oom_kill counter (before 4.13)")
    hog = ("import os, sys\n"
           "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
           "data = b'x' * (256 << 20)\n")  # touches every page: over the 64 MiB limit
    result = _run_child([os.path.join(mem, "cgroup.procs")], code=hog)
    assert result.returncode == -9, result.stderr
    assert oom_kill_count(mem) == 1


def test_module_has_no_print_or_subprocess():
    """Read once at start: plain file reads only, nothing spawned, nothing printed."""
    for module in (container, cgroups):
        source = Path(module.__file__).read_text()
        assert "subprocess" not in source and "print(" not in source


@contextlib.contextmanager
def berth_in_cgroups(groups: list[str], args: str, cwd: Path):
    """berth started inside real cgroups (its shell joins them, then execs it), ready:
    yields (port, stderr path); SIGTERM by PID at the end."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = cwd / "stderr.log"
    join = "".join(f"echo $$ > {os.path.join(group, 'cgroup.procs')} && " for group in groups)
    join += (f"exec {sys.executable} -m berth -b 127.0.0.1:{port} --access-logfile none "
             + args)
    env = dict(os.environ, PYTHONPATH=str(ROOT), BERTH_IN_CONTAINER="0")
    for key in ("WEB_CONCURRENCY", "PORT", "KUBERNETES_SERVICE_HOST"):
        env.pop(key, None)
    with open(err, "wb") as err_file:
        proc = subprocess.Popen(["sh", "-c", join], stdout=subprocess.DEVNULL, stderr=err_file,
                                env=env, cwd=str(cwd))
        try:
            deadline = time.monotonic() + 20
            while "ready: " not in err.read_text() and time.monotonic() < deadline:
                assert proc.poll() is None, err.read_text()
                time.sleep(0.05)
            assert "ready: " in err.read_text(), err.read_text()
            yield port, err
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def get_200(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return c.recv(100).startswith(b"HTTP/1.1 200")


def test_a_worker_near_its_memory_share_is_not_recycled_for_ever(v1_cgroups, tmp_path):
    """120 MiB limit, an app holding 35 MiB: 2 workers + 1 do not fit under 80%, so the count
    goes down to 1; the automatic --max-worker-memory is then worked out for that 1 worker
    and from the worker's RSS. It used to stay at 2 workers' share (36 MiB, against an RSS
    of 56): the worker was recycled every 1.5 s, for ever."""
    mem = v1_cgroups("memory", {"memory.limit_in_bytes": str(120 * MiB)})
    (tmp_path / "blob_app.py").write_text(
        "BLOB = bytearray(b'\\x01') * (35 << 20)\n\n\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Length', '3')])\n"
        "    return [b'ok\\n']\n")
    with berth_in_cgroups([mem], "blob_app:app", tmp_path) as (port, err):
        time.sleep(4)  # (8 ticks: a worker over its bound is recycled after 3)
        log = err.read_text()
        assert "workers=1 (lowered from 2 by the memory limit)" in log, log
        assert "exited: fewer workers asked (memory limit)" in log, log
        assert re.search(r"max worker memory \d+ MiB \(auto: a worker's share for 1 "
                         r"workers \+ 1 replacement, plus the [\d.]+ MiB of its RSS it "
                         r"shares\)", log), log
        assert "recycled: RSS" not in log and "OOM" not in log, log
        assert get_200(port)


def test_berth_itself_sizes_from_the_real_v1_cgroup_it_runs_in(v1_cgroups, tmp_path):
    """The whole path: berth started inside a real cgroup (cpu quota 0.5, memory 256 MiB)
    detects it, logs its sizing decision with those inputs, and serves."""
    cpu = v1_cgroups("cpu", {"cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": "50000"})
    mem = v1_cgroups("memory", {"memory.limit_in_bytes": str(256 * MiB)})
    with berth_in_cgroups([cpu, mem], f"--chdir {ROOT / 'examples'} hello:app",
                          tmp_path) as (port, err):
        log = err.read_text()
        sizing = next(line for line in log.splitlines() if "workers=" in line)
        assert "workers=2 threads=4" in sizing  # 0.5 CPU rounds to 1: at least 2
        assert "cpu quota 0.5" in sizing and "256 MiB" in sizing, sizing
        assert "max worker memory" in log and "256 MiB memory limit" in log, log
        assert get_200(port)

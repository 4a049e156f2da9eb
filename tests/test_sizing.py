"""berth.sizing: auto workers/threads from the container's limits, and the memory cap."""

from __future__ import annotations

import pytest

from berth.container import ContainerInfo
from berth.sizing import (
    MAX_WORKERS,
    MIN_WORKERS,
    THREADS_PER_WORKER,
    auto_worker_count,
    cap_for_memory,
    describe_inputs,
    plan,
    recycle_bound,
)

MiB = 1024 * 1024


def info(cpu_limit=None, cpus=None, memory=None, host=64, affinity=True,
         cpu_source="cgroup v2 cpu.max") -> ContainerInfo:
    """A ContainerInfo as detect() builds it: usable = quota capped by the CPU count."""
    cpuset = frozenset(range(cpus)) if cpus else None
    count = cpus or host
    if cpu_limit is not None:
        usable = min(cpu_limit, count) if count else cpu_limit
        usable_source = "cpu quota"
    else:
        usable, usable_source = (float(count) if count else None), "no cpu quota"
    return ContainerInfo(
        root="/", cgroup_layout="v2", cpu_limit=cpu_limit,
        cpu_source=cpu_source if cpu_limit is not None else "cgroup v2 cpu.max is max",
        cpuset=cpuset, cpuset_source="sched_getaffinity" if affinity else "cgroup v2 cpuset",
        memory_limit=memory, memory_source="cgroup v2 memory.max",
        memory_cgroup_dir=None, memory_cgroup_version=2,
        host_cpus=host, host_cpus_source="os.cpu_count()",
        usable_cpus=usable, usable_cpus_source=usable_source,
        is_pid1=False, in_container=True, in_container_reason="test",
        in_kubernetes=False, tmp_is_tmpfs=None, tmp_source="test")


@pytest.mark.parametrize(("usable", "workers"), [
    (None, 2), (0.25, 2), (0.5, 2), (1.0, 2), (1.49, 2), (2.0, 2), (2.5, 3), (3.4, 3),
    (3.5, 4), (8.0, 8), (64.0, 64), (1000.0, 128),
])
def test_auto_workers_round_usable_cpus_to_nearest_with_a_floor_of_two(usable, workers):
    assert auto_worker_count(usable) == workers


def test_half_a_cpu_on_a_big_host_starts_two_workers_not_129_and_says_why():
    d = plan(info(cpu_limit=0.5, cpus=64, memory=512 * MiB, host=64))
    assert (d.workers, d.threads) == (2, THREADS_PER_WORKER)
    assert d.reason == ("workers=2 threads=4 (auto, at least 2 workers: cpu quota 0.5 from "
                        "cgroup v2 cpu.max; memory 512 MiB; 64 host CPUs ignored)")
    assert d.warnings == ()


def test_quota_capped_by_the_cpus_we_may_run_on():
    d = plan(info(cpu_limit=6.0, cpus=4, host=16))
    assert d.workers == 4
    assert "cpu quota 6" in d.reason and "capped by the 4 CPUs of the affinity 0-3" in d.reason
    assert "16 host CPUs ignored" in d.reason


def test_no_quota_uses_the_affinity_cpus():
    d = plan(info(cpus=3, host=8))
    assert d.workers == 3
    assert "no cpu quota; 3 CPUs in the affinity 0-2" in d.reason
    assert "no memory limit" in d.reason


def test_no_quota_no_cpuset_uses_host_cpus_without_calling_them_ignored():
    d = plan(info(cpus=None, host=6))
    assert d.workers == 6
    assert "host CPUs ignored" not in d.reason


def test_unknown_cpu_count_still_starts_two_workers():
    d = plan(info(cpus=None, host=None))
    assert d.workers == MIN_WORKERS


def test_configured_values_win_and_their_source_is_named():
    d = plan(info(cpu_limit=2.0, cpus=8), workers=3, threads=2, workers_from="cli",
             threads_from="file gunicorn.conf.py")
    assert (d.workers, d.threads) == (3, 2)
    assert d.reason.startswith("workers=3 threads=2 (workers from cli, threads from file "
                               "gunicorn.conf.py: cpu quota 2")


def test_sync_worker_class_means_one_thread_unless_threads_are_given():
    assert plan(info(cpus=2), worker_class="sync").threads == 1
    assert "threads 1 for -k sync" in plan(info(cpus=2), worker_class="sync").reason
    assert plan(info(cpus=2), threads=4, worker_class="sync").threads == 4
    assert plan(info(cpus=2), worker_class="gthread").threads == THREADS_PER_WORKER


def test_host_sized_worker_count_warns_and_names_the_auto_value():
    # a copied gunicorn.conf.py: cpu_count() * 2 + 1 on a 32-CPU host, in a 1-CPU container
    d = plan(info(cpu_limit=1.0, cpus=32, host=32), workers=65, workers_from="file g.py")
    assert d.workers == 65  # configured values are obeyed...
    assert len(d.warnings) == 1  # ...but berth says so
    assert "workers=65" in d.warnings[0] and "auto sizing would start 2" in d.warnings[0]


def test_more_workers_than_berths_maximum_are_lowered_to_it_with_a_warning():
    from berth.scoreboard import MAX_WORKERS as SCOREBOARD_MAX

    assert MAX_WORKERS == SCOREBOARD_MAX
    d = plan(info(cpu_limit=0.5, cpus=64, host=64), workers=129, workers_from="file g.py")
    assert d.workers == MAX_WORKERS
    assert any("more than berth's maximum of 128: starting 128" in w for w in d.warnings)
    assert any("workers=129 is more than 2 x 0.5 usable CPUs" in w for w in d.warnings)


def test_two_x_cpus_plus_one_is_not_warned_about():
    d = plan(info(cpu_limit=2.0, cpus=8), workers=5, workers_from="cli")
    assert d.warnings == ()
    assert plan(info(cpu_limit=2.0, cpus=8), workers=6, workers_from="cli").warnings


def test_describe_inputs_for_a_cpuset_without_affinity():
    text = describe_inputs(info(cpu_limit=None, cpus=2, affinity=False, host=4))
    assert text == "no cpu quota; 2 CPUs in the cpuset 0-1; no memory limit; 4 host CPUs ignored"


# --- the memory cap ------------------------------------------------------------------------

def test_memory_cap_keeps_the_count_when_everything_fits():
    # 4 workers + 1 replacement x 60 MiB = 300 MiB <= 80% of 512 MiB (409.6)
    assert cap_for_memory(512 * MiB, 60 * MiB, 4) == (4, None)


def test_memory_cap_lowers_the_count_so_workers_plus_one_fit_under_80_percent():
    count, line = cap_for_memory(512 * MiB, 100 * MiB, 8)
    assert count == 3  # (3 + 1) x 100 = 400 <= 409.6; (4 + 1) x 100 = 500 is not
    assert line.startswith("workers=3 (lowered from 8 by the memory limit)")
    assert "100 MiB" in line and "512 MiB" in line


def test_memory_cap_counts_the_master():
    count, line = cap_for_memory(1024 * MiB, 100 * MiB, 8, master_rss=300 * MiB)
    assert count == 4  # 819.2 - 300 = 519.2 -> 5 fit, minus the replacement
    assert "the master 300 MiB" in line


def test_memory_cap_goes_down_to_one_with_a_warning_when_even_that_does_not_fit():
    count, line = cap_for_memory(256 * MiB, 200 * MiB, 2)
    assert count == 1
    assert "even 1 worker and its replacement do not fit" in line


def test_the_automatic_recycle_bound_is_the_share_plus_what_rss_shares():
    # 2 workers + 1 in 80% of 300 MiB: 80 MiB each of unique pages; RSS 30 MiB over the
    # unique 50 (libraries): the RSS bound is 110 MiB
    assert recycle_bound(300 * MiB, 2, 50 * MiB, 80 * MiB) == 110 * MiB
    # with --preload the master's unique pages come off first: (240 - 60) / 3 + 40
    assert recycle_bound(300 * MiB, 2, 20 * MiB, 60 * MiB, master_uss=60 * MiB) == 100 * MiB
    # a fresh worker already at its bound: no recycling (it would never end)
    assert recycle_bound(120 * MiB, 2, 34 * MiB, 40 * MiB) == 0


def test_memory_cap_without_a_limit_or_a_measurement_changes_nothing():
    assert cap_for_memory(None, 100 * MiB, 4) == (4, None)
    assert cap_for_memory(512 * MiB, 0, 4) == (4, None)
    assert cap_for_memory(512 * MiB, 1000 * MiB, 1) == (1, None)

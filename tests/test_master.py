"""berth/master.py in-process: what the master decides when workers die before they are ready,
from its records of them. No process is started, and no signal is sent (`send_signal` is
replaced: the pids here are made up)."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import pytest

from berth import master as master_module
from berth.children import WorkerInfo
from berth.master import BOOT_FAILURES_MAX, Master
from berth.worker.process import EXIT_APP_LOAD_ERROR

LOAD_ERROR = EXIT_APP_LOAD_ERROR << 8  # a wait status: exited with code 4
EXIT_3 = 3 << 8


@pytest.fixture
def sent(monkeypatch) -> list:
    """The signals the master sends (none reaches a process), and no process title is set
    (it would be pytest's)."""
    calls: list = []
    monkeypatch.setattr(master_module, "send_signal", lambda pid, sig: calls.append((pid, sig)))
    monkeypatch.setattr(master_module.proctitle, "set_title", lambda role, cfg: False)
    return calls


def make_master(reload: bool = False) -> Master:
    m = Master(SimpleNamespace(statsd_host=None, workers=2),
               logging.getLogger("berth.test.master"), None)
    if reload:
        m.code = SimpleNamespace()  # (only whether --reload is on is read here)
    return m


def worker(m: Master, pid: int, generation: int, ready: bool) -> WorkerInfo:
    info = m.workers[pid] = WorkerInfo(pid, slot=pid % 100, generation=generation,
                                       started=0.0, ready=ready,
                                       view=SimpleNamespace(cfg=m.cfg))  # (its WorkerView)
    return info


def sighup(m: Master, workers: int = 2, **hooks) -> SimpleNamespace:
    """What `reload` does to these records: a new configuration, a new generation."""
    m.cfg = SimpleNamespace(statsd_host=None, proc_name="after the reload", workers=workers,
                            **hooks)
    m.generation += 1
    return m.cfg


def died(m: Master, info: WorkerInfo, status: int) -> None:
    m.workers.pop(info.pid)
    m.start_failed(info, m.exits.how(status, killed_by_berth=False),
                   os.WEXITSTATUS(status) == EXIT_APP_LOAD_ERROR)


def test_under_reload_new_code_that_fails_holds_workers_back(sent, caplog):
    caplog.set_level(logging.INFO)
    m = make_master(reload=True)
    worker(m, 40, generation=1, ready=True)
    m.generation = 2
    died(m, worker(m, 41, generation=2, ready=False), EXIT_3)
    assert m.paused and not m.exit_code
    assert ("worker 41 exited with code 3 before it was ready; the 1 workers of generation 1 "
            "keep serving; waiting for the next change") in caplog.text
    died(m, worker(m, 42, generation=2, ready=False), LOAD_ERROR)
    assert "worker 42 could not load the app (traceback above)" in caplog.text
    assert m.paused and not m.exit_code and not sent


def test_at_first_start_an_app_that_does_not_load_stops_berth_with_exit_4(sent, caplog):
    m = make_master()
    died(m, worker(m, 41, generation=1, ready=False), LOAD_ERROR)
    assert m.exit_code == EXIT_APP_LOAD_ERROR and m.phase == master_module.QUITTING
    assert "worker 41 could not load the app (traceback above); stopping" in caplog.text


def test_at_first_start_workers_dying_at_boot_stop_berth_at_the_fifth(sent, caplog):
    m = make_master()
    for pid in range(41, 41 + BOOT_FAILURES_MAX - 1):
        died(m, worker(m, pid, generation=1, ready=False), EXIT_3)
        assert not m.exit_code  # one may die of something passing: it is started again
    died(m, worker(m, 50, generation=1, ready=False), EXIT_3)
    assert m.exit_code == 1
    assert (f"{BOOT_FAILURES_MAX} workers died before becoming ready within 60 s; stopping"
            in caplog.text)


def test_a_reload_whose_app_does_not_load_is_held_back_while_the_old_workers_serve(sent, caplog):
    m = make_master()
    before = m.cfg
    worker(m, 40, generation=1, ready=True)
    worker(m, 41, generation=1, ready=True)
    sighup(m)
    died(m, worker(m, 42, generation=2, ready=False), LOAD_ERROR)
    assert not m.exit_code and m.phase == master_module.SERVING and not sent
    assert m.paused == ("SIGHUP: reload failed: worker 42 could not load the app (traceback "
                        "above); the 2 workers of generation 1 keep serving with the old code "
                        "and configuration; no new worker is started until the next SIGHUP")
    assert m.paused in caplog.text
    assert m.cfg is before  # the old workers are supervised by their own configuration
    died(m, worker(m, 43, generation=2, ready=False), LOAD_ERROR)  # its sibling: one line
    assert caplog.text.count("SIGHUP: reload failed") == 1 and not m.exit_code


def test_a_held_back_reload_that_changed_the_count_calls_nworkers_changed_back(sent):
    # the count kept is the old configuration's again: "called just after num_workers has
    # been changed" (Gunicorn's description of the hook)
    calls = []

    def nworkers_changed(server, new, old):
        calls.append((new, old))

    m = make_master()
    m.cfg.nworkers_changed = nworkers_changed  # (the old configuration's hook is called)
    worker(m, 40, generation=1, ready=True)
    sighup(m, workers=3, nworkers_changed=nworkers_changed)
    died(m, worker(m, 41, generation=2, ready=False), LOAD_ERROR)
    assert m.paused and m.cfg.workers == 2 and calls == [(2, 3)]


def test_a_reload_whose_workers_die_at_boot_is_held_back_at_the_fifth(sent, caplog):
    m = make_master()
    worker(m, 40, generation=1, ready=True)
    sighup(m)
    for pid in range(41, 41 + BOOT_FAILURES_MAX - 1):
        died(m, worker(m, pid, generation=2, ready=False), EXIT_3)
        assert not m.paused  # one may die of something passing: it is started again
    died(m, worker(m, 50, generation=2, ready=False), EXIT_3)
    assert m.paused.startswith(f"SIGHUP: reload failed: {BOOT_FAILURES_MAX} workers died "
                               "before becoming ready within 60 s; the 1 workers of "
                               "generation 1 keep serving")
    assert not m.exit_code and not m.boot_failures  # (the next try counts its own)


def test_a_superseded_generation_that_fails_is_only_logged(sent, caplog):
    m = make_master()
    first = worker(m, 40, generation=1, ready=False)  # SIGHUP while the first one boots
    sighup(m)
    died(m, first, LOAD_ERROR)
    assert not m.exit_code and not m.paused
    assert ("worker 40 of generation 1 could not load the app (traceback above) (generation 2 "
            "is starting)") in caplog.text
    died(m, worker(m, 41, generation=2, ready=False), LOAD_ERROR)  # nothing older serves
    assert m.exit_code == EXIT_APP_LOAD_ERROR

"""Process titles: `berth: master [NAME]` and `berth: worker [NAME]` (setproctitle), NAME being
--name, else default_proc_name, else the app; nothing changes without setproctitle.

Titles are read from /proc/PID/cmdline, which is what ps shows."""

from __future__ import annotations

import importlib.util
import os

import pytest
from conftest import APPS, ROOT
from proto_helpers import pids_children, wait_for

from berth.config import parse_config
from berth.proctitle import process_name

needs_setproctitle = pytest.mark.skipif(importlib.util.find_spec("setproctitle") is None,
                                        reason="setproctitle is not installed")


def title(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().split(b"\0")[0].decode(errors="replace")


def workers_of(srv, count: int) -> list[int]:
    pids = wait_for(lambda: len(pids_children(srv.pid)) >= count and pids_children(srv.pid),
                    timeout=10)
    assert pids and len(pids) == count, pids
    return pids


@needs_setproctitle
def test_ps_shows_the_name_of_the_master_and_of_each_worker(berth):
    srv = berth(["-w", "2", "-n", "myweb", "proto_app:app"])
    assert title(srv.pid) == "berth: master [myweb]"
    for pid in workers_of(srv, 2):
        assert wait_for(lambda pid=pid: title(pid) == "berth: worker [myweb]"), title(pid)
    assert "setproctitle" not in srv.stderr()


@needs_setproctitle
def test_without_a_name_the_titles_show_the_app(berth):
    srv = berth(["-w", "1", "proto_app:app"])
    assert title(srv.pid) == "berth: master [proto_app:app]"
    [worker] = workers_of(srv, 1)
    assert wait_for(lambda: title(worker) == "berth: worker [proto_app:app]"), title(worker)


@pytest.mark.parametrize(("name", "hints"), [(["-n", "myweb"], 1), ([], 0)],
                         ids=["named", "unnamed"])
def test_without_setproctitle_titles_are_unchanged_and_a_given_name_is_explained_once(
        berth, tmp_path, name, hints):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "setproctitle.py").write_text("raise ImportError('not installed (test)')\n")
    srv = berth(["-w", "1", *name, "proto_app:app"],
                env={"PYTHONPATH": os.pathsep.join(map(str, (blocked, APPS, ROOT)))})
    [worker] = workers_of(srv, 1)
    for pid in (srv.pid, worker):
        assert not title(pid).startswith("berth:"), title(pid)
    lines = [ln for ln in srv.stderr().splitlines() if "pip install berth[proctitle]" in ln]
    assert len(lines) == hints, srv.stderr()
    if hints:
        assert "[INFO] proc_name 'myweb' is not shown: process titles need setproctitle" \
            in lines[0]


@pytest.mark.parametrize(("argv", "env", "expected"), [
    (["app:app"], {}, "app:app"),
    (["-n", "web", "app:app"], {}, "web"),
    (["app:app"], {"BERTH_DEFAULT_PROC_NAME": "site"}, "site"),
    (["-n", "web", "app:app"], {"BERTH_DEFAULT_PROC_NAME": "site"}, "web"),
    (["app:create_app('prod')"], {"GUNICORN_CMD_ARGS": "--name api"}, "api"),
])
def test_the_name_is_proc_name_else_default_proc_name_else_the_app(argv, env, expected):
    cfg = parse_config(argv, environ={"BERTH_IN_CONTAINER": "0", **env}, cwd="/nonexistent")
    assert process_name(cfg) == expected

"""`--reload` end to end: a real berth serving an app module written in tmp_path, edited while
it runs. An edit is served within 3 s; an edit that does not import leaves the old workers
serving (and berth alive); the next good edit is served.

Edits are written as editors save (a temporary renamed over the file), with a different size
and an mtime moved forward, so that neither a coarse mtime nor a stale `__pycache__` entry can
hide them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import APPS, ROOT, http_get

from berth import reloader
from berth.config import ConfigError, parse_config

EDIT_DEADLINE = 3.0  # the promise: an edit is served within 3 s

APP = '''\
import os

BODY = {body!r}


def app(environ, start_response):
    data = f"{{BODY}} {{os.getpid()}}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(data)))])
    return [data]
'''

ENGINES = ["poll", pytest.param("inotify", marks=pytest.mark.skipif(
    bool(reloader.inotify_unavailable()), reason="inotify is not available here"))]


class Source:
    """A file the test edits: every save moves its mtime 2 s further forward, starting in the
    past (a file modified after its worker started counts as changed when first reported)."""

    def __init__(self, path: Path):
        self.path = path
        self.mtime = time.time() - 100

    def save(self, text: str) -> None:
        tmp = self.path.with_name(self.path.name + ".swp")
        tmp.write_text(text)
        self.mtime += 2
        os.utime(tmp, (self.mtime, self.mtime))
        os.replace(tmp, self.path)

    def touch(self) -> None:
        self.mtime += 2
        os.utime(self.path, (self.mtime, self.mtime))


def app_source(tmp_path: Path, body: str, name: str = "reload_app.py") -> Source:
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    source = Source(src / name)
    source.save(APP.format(body=body))
    return source


def body_of(port: int) -> str:
    status, _, body = http_get(port, "/", timeout=5)
    assert status == 200, (status, body)
    return body.decode()


def wait_for_body(srv, prefix: str, timeout: float = EDIT_DEADLINE) -> str:
    """Poll until the response starts with `prefix` (bounded in time; ~20 requests a second)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        last = body_of(srv.port)
        if last.startswith(prefix):
            return last
        time.sleep(0.05)
    raise AssertionError(f"still {last!r}, not {prefix!r}, after {timeout} s:\n{srv.stderr()}")


def start(berth, tmp_path: Path, *args: str, **kw):
    return berth(["-w", "1", "--reload", "--chdir", str(tmp_path / "src"), *args,
                  "reload_app:app"], **kw)


@pytest.mark.parametrize("engine", ENGINES)
def test_edit_is_served_a_broken_edit_keeps_the_old_workers_and_a_fix_is_served(
        berth, tmp_path, engine):
    source = app_source(tmp_path, "one")
    srv = start(berth, tmp_path, "--reload-engine", engine)
    assert f"--reload is on ({engine})" in srv.stderr()
    first = body_of(srv.port)
    assert first.startswith("one ")

    source.save(APP.format(body="two-two"))
    second = wait_for_body(srv, "two-two ")
    srv.wait_for_log(f"worker {first.split()[1]} exited: reloaded (reload_app.py changed)")
    assert "reload: reload_app.py changed; starting 1 workers of generation 2" in srv.stderr()

    source.save("BODY = (\n")  # no longer imports
    srv.wait_for_log("could not load the app (traceback above); the 1 workers of generation 2 "
                     "keep serving; waiting for the next change", timeout=10)
    err = srv.stderr()
    assert "SyntaxError" in err and "reload_app.py" in err
    for _ in range(10):  # the old worker keeps serving, berth is alive and respawns nothing
        assert body_of(srv.port) == second
        time.sleep(0.05)
    assert srv.proc.poll() is None
    err = srv.stderr()
    assert err.count("the app failed to load") == 1, err  # one attempt: no respawn loop
    assert err.count("could not load the app") == 1, err

    source.save(APP.format(body="three-three-three"))
    wait_for_body(srv, "three-three-three ")
    srv.wait_for_log(f"worker {second.split()[1]} exited: reloaded (reload_app.py changed)")
    assert srv.stop() == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_touching_a_file_matched_by_a_reload_extra_file_glob_replaces_the_workers(
        berth, tmp_path, engine):
    app_source(tmp_path, "same")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "other.yaml").write_text("not matched\n")
    greeting = Source(conf / "greeting.txt")
    greeting.save("hello\n")
    srv = start(berth, tmp_path, "--reload-engine", engine,
                "--reload-extra-file", "conf/*.txt")  # relative to where berth starts
    before = body_of(srv.port)
    Source(conf / "other.yaml").touch()  # not matched: nothing happens
    greeting.touch()
    deadline = time.monotonic() + EDIT_DEADLINE
    while body_of(srv.port) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    after = body_of(srv.port)
    assert after != before and after.startswith("same "), srv.stderr()
    err = srv.stderr()
    assert f"reload: {conf / 'greeting.txt'} changed" in err, err
    assert "other.yaml" not in err


def test_a_module_imported_on_the_first_request_is_watched_too(berth, tmp_path):
    """Django imports its URLconf and views on the first request, not at start."""
    src = tmp_path / "src"
    src.mkdir()
    views = Source(src / "reload_views.py")
    views.save("TEXT = 'lazy-one'\n")
    Source(src / "reload_app.py").save(
        "def app(environ, start_response):\n"
        "    import reload_views\n"
        "    data = reload_views.TEXT.encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(data)))])\n"
        "    return [data]\n")
    srv = start(berth, tmp_path)
    assert body_of(srv.port) == "lazy-one"
    time.sleep(reloader.INTERVAL + 0.3)  # the worker reports new modules once a second
    views.save("TEXT = 'lazy-two-two'\n")
    wait_for_body(srv, "lazy-two-two")


def test_an_app_that_does_not_import_at_start_waits_for_a_fix(berth, tmp_path):
    source = app_source(tmp_path, "unused")
    source.save("def app(environ, start_response:\n")
    srv = start(berth, tmp_path, "-w", "2", wait_ready=False)
    srv.wait_for_log("no worker is serving; waiting for the next change", timeout=20)
    time.sleep(0.3)
    assert srv.proc.poll() is None, srv.stderr()
    assert "SyntaxError" in srv.stderr()
    source.save(APP.format(body="fixed"))
    srv.wait_for_log("ready: 2 workers serving", timeout=10)
    assert body_of(srv.port).startswith("fixed ")
    assert srv.stop() == 0


def test_sighup_while_waiting_for_a_fix_tries_again(berth, tmp_path):
    """What the app needs may not be a watched file (here a flag file): SIGHUP retries."""
    source = app_source(tmp_path, "after-hup")
    flag = tmp_path / "src" / "ready.flag"
    source.save("import os\n"
                f"assert os.path.exists({str(flag)!r}), 'no ready.flag yet'\n"
                + APP.format(body="after-hup"))
    srv = start(berth, tmp_path, wait_ready=False)
    srv.wait_for_log("no worker is serving; waiting for the next change", timeout=20)
    assert "no ready.flag yet" in srv.stderr()
    flag.write_text("")
    srv.signal(signal.SIGHUP)
    srv.wait_for_log("ready: 1 workers serving", timeout=10)
    assert body_of(srv.port).startswith("after-hup ")
    assert "reload: " not in srv.stderr()


# --- refused configurations --------------------------------------------------------------------

def run_berth(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, BERTH_IN_CONTAINER="0", PYTHONPATH=f"{APPS}{os.pathsep}{ROOT}")
    return subprocess.run([sys.executable, "-m", "berth", "-b", "127.0.0.1:0", *args],
                          capture_output=True, text=True, timeout=20, env=env, cwd=cwd,
                          stdin=subprocess.DEVNULL, check=False)


def one_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, (res.returncode, res.stderr)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    return lines[0]


def test_reload_with_preload_exits_2_with_one_line(tmp_path):
    line = one_line(run_berth(["--reload", "--preload", "proto_app:app"], tmp_path))
    assert "--reload" in line and "--preload" in line


def test_a_bad_reload_engine_exits_2_naming_it_and_the_accepted_values(tmp_path):
    line = one_line(run_berth(["--reload", "--reload-engine", "bogus", "proto_app:app"],
                              tmp_path))
    assert "--reload-engine" in line and "auto, poll, inotify" in line


def test_a_missing_reload_extra_file_exits_2_naming_it(tmp_path):
    line = one_line(run_berth(["--reload", "--reload-extra-file", "nope.yaml",
                               "proto_app:app"], tmp_path))
    assert "--reload-extra-file" in line and "nope.yaml" in line


def test_inotify_where_the_kernel_has_none_is_refused(monkeypatch):
    monkeypatch.setattr(reloader, "inotify_unavailable", lambda: "inotify_init1: no")
    with pytest.raises(ConfigError) as info:
        parse_config(["--reload-engine", "inotify", "app:app"], environ={}, cwd="/")
    assert "--reload-engine" in str(info.value) and "poll" in str(info.value)
    cfg = parse_config(["--reload-engine", "auto", "app:app"], environ={}, cwd="/")
    assert cfg.reload_engine == "auto"


def test_extra_files_are_relative_to_the_launch_directory_and_empty_globs_warn(tmp_path):
    (tmp_path / "a.yaml").write_text("")
    cfg = parse_config(["--reload", "--chdir", "/", "--reload-extra-file", "a.yaml",
                        "--reload-extra-file", "templates/**/*.html", "app:app"],
                       environ={}, cwd=str(tmp_path))
    assert cfg.reload_extra_files == [str(tmp_path / "a.yaml"),
                                      str(tmp_path / "templates/**/*.html")]
    assert any(level == "warning" and "templates/**/*.html" in line and "matches no file" in line
               for level, line in cfg.notices)

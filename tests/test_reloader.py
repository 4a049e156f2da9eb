"""berth/reloader.py in-process: what counts as a change, for each engine, the report pipe
between the workers and the master, and the master's side (when to reload, when to wait)."""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import select
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from berth import reloader
from berth.reloader import CodeReloader, InotifyWatcher, ModuleReporter, Reports, Watcher

needs_inotify = pytest.mark.skipif(bool(reloader.inotify_unavailable()),
                                   reason="inotify is not available here")


def write(path: Path, text: str, mtime_step: float = 0.0) -> Path:
    """Write `text` (atomically when the file exists: a temporary renamed over it, as editors
    save); `mtime_step` moves the mtime forward so a coarse clock cannot hide the change."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    if mtime_step:
        t = time.time() + mtime_step
        os.utime(tmp, (t, t))
    os.replace(tmp, path)
    return path


def events(watcher: InotifyWatcher, timeout: float = 2.0) -> list[str]:
    """Changed paths from the next inotify events (empty if none arrive within `timeout`)."""
    deadline = time.monotonic() + timeout
    changed: list[str] = []
    while time.monotonic() < deadline and not changed:
        ready, _, _ = select.select([watcher.fileno()], [], [], deadline - time.monotonic())
        if not ready:
            break
        changed = watcher.read_events()
    return changed


# --- poll -------------------------------------------------------------------------------------

def test_poll_sees_an_edit_an_atomic_save_with_the_same_mtime_and_a_deletion(tmp_path):
    a = write(tmp_path / "a.py", "A = 1\n")
    b = write(tmp_path / "b.py", "B = 1\n")
    w = Watcher()
    assert w.add([str(a), str(b)]) == []
    assert w.tick() == []
    write(a, "A = 22\n", mtime_step=2)
    assert w.tick() == [str(a)]
    assert w.tick() == []
    before = os.stat(b).st_mtime_ns
    write(b, "B = 2\n")  # same size; the same mtime too: only the inode tells
    os.utime(b, ns=(before, before))
    assert w.tick() == [str(b)]
    a.unlink()
    assert w.tick() == [str(a)]


def test_a_file_changed_after_its_worker_started_counts_as_changed_once(tmp_path):
    old = write(tmp_path / "old.py", "X = 1\n")
    os.utime(old, (time.time() - 100, time.time() - 100))
    fresh = write(tmp_path / "fresh.py", "Y = 1\n")
    w = Watcher()
    since = time.time_ns() - 10 * 10**9  # the worker was forked 10 s ago
    assert w.add([str(old), str(fresh)], since) == [str(fresh)]
    assert w.add([str(fresh)], since) == []  # already watched


def test_extra_globs_watch_files_created_later_and_reload_on_their_first_edit(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    write(conf / "a.txt", "a")
    literal = write(tmp_path / "settings.toml", "x = 1")
    w = Watcher([str(conf / "*.txt"), str(literal)])
    assert set(w.seen) == {str(conf / "a.txt"), str(literal)}
    new = write(conf / "new.txt", "n")
    assert w.tick() == []  # its creation is not a change, as in Gunicorn
    assert str(new) in w.seen
    write(new, "changed", mtime_step=2)
    assert w.tick() == [str(new)]
    os.utime(literal, (time.time() + 5, time.time() + 5))  # a touch is a change
    assert w.tick() == [str(literal)]


# --- inotify ----------------------------------------------------------------------------------

@needs_inotify
def test_inotify_reports_watched_files_only_not_an_editors_swap_files(tmp_path):
    a = write(tmp_path / "a.py", "A = 1\n")
    w = InotifyWatcher()
    try:
        w.add([str(a)])
        (tmp_path / ".a.py.swp").write_text("swap")
        (tmp_path / "4913").write_text("")  # vim's probe file
        assert events(w, timeout=0.5) == []
        write(a, "A = 2\n")  # atomic save: a new inode renamed over the old one
        assert events(w) == [str(a)]
        with open(a, "a") as f:  # in place
            f.write("B = 3\n")
        assert events(w) == [str(a)]
        os.utime(a, (time.time() + 5, time.time() + 5))  # touch
        assert events(w) == [str(a)]
    finally:
        w.close()


@needs_inotify
def test_inotify_follows_a_symlinked_file_into_its_target_directory(tmp_path):
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    target = write(real_dir / "settings.py", "S = 1\n")
    link = tmp_path / "settings.py"
    link.symlink_to(target)
    w = InotifyWatcher()
    try:
        w.add([str(link)])
        with open(target, "a") as f:
            f.write("S = 2\n")
        assert events(w) == [str(link)]
    finally:
        w.close()


@needs_inotify
def test_inotify_polls_the_directories_it_cannot_watch_and_warns_once(tmp_path):
    a = write(tmp_path / "a.py", "A = 1\n")
    b = write(tmp_path / "sub.py", "B = 1\n")
    warnings: list[str] = []
    w = InotifyWatcher(warn=warnings.append)
    try:
        class OutOfWatches:
            @staticmethod
            def inotify_add_watch(fd, path, mask):
                ctypes.set_errno(errno.ENOSPC)
                return -1

        w.libc = OutOfWatches()
        w.add([str(a), str(b)])
        assert len(warnings) == 1 and "max_user_watches" in warnings[0]
        assert w.tick() == []
        write(a, "A = 2\n", mtime_step=2)
        assert w.tick() == [str(a)]
    finally:
        w.close()


def test_make_watcher_picks_the_engine():
    assert reloader.make_watcher("poll").engine == "poll"
    expected = "poll" if reloader.inotify_unavailable() else "inotify"
    w = reloader.make_watcher("auto")
    try:
        assert w.engine == expected
    finally:
        w.close()


# --- the worker's report ------------------------------------------------------------------------

def test_reports_of_workers_writing_at_once_decode_without_mixing():
    r, w = os.pipe()
    try:
        paths = [f"/srv/app/module_{i:04d}_{'x' * 60}.py" for i in range(300)]
        assert reloader.send(w, paths)  # several writes of at most PIPE_BUF bytes
        assert reloader.send(w, ["/srv/other.py", "/srv/with\nnewline.py"])
        data = os.read(r, 1 << 20)
    finally:
        os.close(r)
        os.close(w)
    reports = Reports()
    got: dict[int, list[str]] = {}
    for i in range(0, len(data), 1000):  # arbitrary read boundaries
        for pid, ps in reports.feed(data[i:i + 1000]).items():
            got.setdefault(pid, []).extend(ps)
    assert got == {os.getpid(): [*paths, "/srv/other.py"]}


def test_a_failed_import_reports_the_file_with_the_syntax_error(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write(tmp_path / "reload_broken_top.py", "import reload_broken_inner\n")
    inner = write(tmp_path / "reload_broken_inner.py", "X = (\n")
    with pytest.raises(SyntaxError) as info:
        import reload_broken_top  # noqa: F401
    files = reloader.failure_files(info.value)
    assert str(inner) in files
    assert str(tmp_path / "reload_broken_top.py") in files


def test_the_module_reporter_sends_modules_imported_later(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    late = write(tmp_path / "reload_late_module.py", textwrap.dedent("X = 1\n"))
    r, w = os.pipe()
    try:
        reporter = ModuleReporter(w)
        # every module this process imported goes first: more than a pipe holds when other
        # test files ran here before, so it is read while it is written (as the master does)
        got: list[bytes] = []
        written = threading.Event()

        def read_all() -> None:
            while True:
                if select.select([r], [], [], 0.05)[0]:
                    got.append(os.read(r, 1 << 16))
                elif written.is_set():
                    return

        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        assert reporter.send_new()
        written.set()
        reader.join(timeout=10)
        first = b"".join(got)
        assert os.fsencode(reloader.__file__) in first
        assert reporter.send_new()  # nothing new: nothing written
        import reload_late_module  # noqa: F401
        assert reporter.send_new()
        os.set_blocking(r, False)
        second = os.read(r, 1 << 20)
    finally:
        os.close(r)
        os.close(w)
        sys.modules.pop("reload_late_module", None)
    assert Reports().feed(second) == {os.getpid(): [str(late)]}


# --- the master's side --------------------------------------------------------------------------

def poll_reloader(tmp_path: Path, *files: Path) -> CodeReloader:
    cfg = SimpleNamespace(reload=True, reload_engine="poll",
                          reload_extra_files=[str(f) for f in files])
    return CodeReloader(cfg, logging.getLogger("berth.test.reloader"))


def test_the_master_acts_once_a_burst_of_changes_settles_and_is_told_what_changed(
        tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    a, b = write(tmp_path / "a.py", "A = 1\n"), write(tmp_path / "b.py", "B = 1\n")
    code = poll_reloader(tmp_path, a, b)
    try:
        assert "--reload is on (poll)" in caplog.text
        code.tick(time.monotonic())
        assert not code.due  # nothing changed yet
        write(a, "A = 2\n", mtime_step=2)
        write(b, "B = 2\n", mtime_step=2)
        t0 = time.monotonic()
        code.tick(t0 + reloader.INTERVAL)
        assert t0 < code.due <= time.monotonic() + reloader.SETTLE
        assert code.take_changes() == "a.py, b.py"
        assert not code.due and not code.changes
    finally:
        code.close()

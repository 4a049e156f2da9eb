"""`--reload`: which files the app was built from, and which of them changed.

Strategy. The master watches; the workers are what a change replaces. But the master never
imports the app (`--reload` refuses `--preload`), so only a worker knows which source files the
app is made of. So each worker tells the master: once it has imported the app (or failed to),
it writes the files of its `sys.modules` (plus, on failure, the files in the traceback and the
file of a SyntaxError, which are not in `sys.modules`) to a pipe; a small thread then looks at
`sys.modules` once a second and sends the files of modules imported later (Django imports its
URLconf and views on the first request). This is the file list Gunicorn's own reloader watches,
in the worker. The master unions what every worker reports with `--reload-extra-file` entries
(globs re-expanded once a second, so a matching file created later is watched from then on: as
in Gunicorn, its first edit reloads, not its creation).

Why not watch the directory trees of `--chdir`/`--pythonpath` for `*.py`? A tree holds files
the app never imports (tests, scripts, a `.venv` of thousands of files) and misses files it
does import from elsewhere (an editable install, a sibling package). `sys.modules` is exactly
the code that runs.

A file's signature is (mtime in ns, size, inode): an atomic save (write a temporary, rename it
over the file) changes the inode even when it keeps the mtime. Two engines compare signatures:

- `poll`: stat every watched file once a second, from the master's tick;
- `inotify` (Linux, through ctypes: no third-party package): a watch on each directory holding
  a watched file (and on a symlink's target directory); any event in a directory re-stats the
  watched files of that directory only. Watching directories, not files, is what sees atomic
  saves; re-stating instead of trusting event names ignores an editor's swap and backup files
  and still sees a symlink swapped beside the file (Kubernetes ConfigMap volumes). The inotify
  fd sits in the master's selector with the signal pipe. A directory that cannot be watched
  (out of watches: `fs.inotify.max_user_watches`) has its files polled instead.

`auto` is inotify where the kernel offers it, else poll. inotify does not see edits made on the
other side of some bind mounts (Docker Desktop file sharing from Windows, network filesystems):
there, `--reload-engine poll` does.

In the master, `CodeReloader` ties these together: it reads the reports, feeds the watcher,
waits for a burst of changes to settle (0.2 s, at most 1 s) and says when the master should
start a new generation. The master starts and stops the workers (and holds new ones back while
new code fails to start: `Master.start_failed`) and never looks at a file; this never touches
a worker.

Nothing here runs when `--reload` is off, and nothing here is on a worker's request path: the
worker's side is one write at boot and a thread waking once a second.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import re
import select
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable

ENGINES = ("auto", "poll", "inotify")
INTERVAL = 1.0  # seconds between two polls (Gunicorn's interval), and between two reports
GLOB_MAGIC = re.compile(r"[*?[]")  # as Gunicorn: an entry with one of these is a pattern
PIPE_BUF = select.PIPE_BUF  # a pipe write this size is atomic: reports never interleave

Signature = tuple[int, int, int]


def is_glob(entry: str) -> bool:
    return GLOB_MAGIC.search(entry) is not None


# --- the worker's side: which files the app is made of ------------------------------------------

def module_files() -> list[str]:
    """The source files of the imported modules (a `.pyc` maps to its `.py`, as in Gunicorn)."""
    out = []
    for module in tuple(sys.modules.copy().values()):
        try:
            path = getattr(module, "__file__", None)
        except Exception:  # noqa: BLE001 - a lazy module may raise on any attribute
            continue
        if isinstance(path, str) and path:
            if path.endswith((".pyc", ".pyo")):
                path = path[:-1]
            out.append(os.path.abspath(path))
    return out


def failure_files(exc: BaseException) -> list[str]:
    """The files an import failure points at: the traceback's frames (the module that raised
    at import time), a SyntaxError's file (never in `sys.modules`), through chained causes."""
    out: list[str] = []
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen and len(seen) < 10:
        seen.add(id(exc))
        if isinstance(exc, SyntaxError) and exc.filename:
            out.append(exc.filename)
        out.extend(frame.filename for frame in traceback.extract_tb(exc.__traceback__))
        exc = exc.__cause__ or exc.__context__
    return [os.path.abspath(p) for p in out if p and not p.startswith("<")]


def send(fd: int, paths: Iterable[str]) -> bool:
    """Write `paths` to the report pipe: writes of whole lines of at most PIPE_BUF bytes, each
    starting with this process's pid, so that workers writing at once never interleave.
    False when the master is gone."""
    head = b"%d\n" % os.getpid()
    chunk = head
    try:
        for path in paths:
            line = os.fsencode(path) + b"\n"
            if b"\n" in line[:-1] or len(head) + len(line) > PIPE_BUF:
                continue
            if len(chunk) + len(line) > PIPE_BUF:
                os.write(fd, chunk)
                chunk = head
            chunk += line
        if len(chunk) > len(head):
            os.write(fd, chunk)
    except OSError:
        return False
    return True


class ModuleReporter:
    """In a worker: sends the files of modules imported since the last report, once a second,
    from a daemon thread (off the loop and the app threads)."""

    def __init__(self, fd: int):
        self.fd = fd
        self.sent: set[str] = set()
        self.count = 0

    def send_new(self) -> bool:
        if len(sys.modules) == self.count:
            return True
        self.count = len(sys.modules)
        new = [p for p in dict.fromkeys(module_files()) if p not in self.sent]
        self.sent.update(new)
        return send(self.fd, new)

    def run(self) -> None:
        while self.send_new():
            time.sleep(INTERVAL)

    def start(self) -> None:
        threading.Thread(target=self.run, name="berth-reload-report", daemon=True).start()


def reporting(load_app: Callable, fd: int) -> Callable:
    """Wrap a worker's `load_app`: report the app's files to the master on `fd`, whether the
    import worked (then keep reporting new modules) or not (then re-raise: the worker logs the
    traceback and exits as usual)."""

    def load():
        try:
            app = load_app()
        except BaseException as exc:
            send(fd, dict.fromkeys(module_files() + failure_files(exc)))
            raise
        reporter = ModuleReporter(fd)
        reporter.send_new()
        reporter.start()
        return app

    return load


class Reports:
    """In the master: decodes the report pipe (a pid line, then one absolute path a line)."""

    def __init__(self):
        self.buf = b""
        self.pid = 0

    def feed(self, data: bytes) -> dict[int, list[str]]:
        *lines, self.buf = (self.buf + data).split(b"\n")
        out: dict[int, list[str]] = {}
        for line in lines:
            if line.startswith(b"/"):
                out.setdefault(self.pid, []).append(os.fsdecode(line))
            elif line.isdigit():
                self.pid = int(line)
        return out


# --- the master's side: what changed -----------------------------------------------------------

def signature(path: str) -> Signature | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class Watcher:
    """Watched files and their last signatures; the poll engine. `add` and `tick` (and, for
    inotify, `read_events`) return the paths that changed."""

    engine = "poll"

    def __init__(self, extra_files: Iterable[str] = ()):
        self.seen: dict[str, Signature | None] = {}
        self.patterns = []
        literal = []
        for entry in extra_files:
            (self.patterns if is_glob(entry) else literal).append(os.path.abspath(entry))
        self.add(literal)
        self.add(self.expand())

    def fileno(self) -> int | None:
        return None

    def expand(self) -> list[str]:
        """The files the --reload-extra-file patterns match now."""
        out = []
        for pattern in self.patterns:
            out.extend(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        return out

    def add(self, paths: Iterable[str], since_ns: int | None = None) -> list[str]:
        """Watch `paths` from now on. A new file modified after `since_ns` (when the worker
        that imported it started) may have been read before or after the edit: it counts as
        changed, since a needless restart is cheaper than serving stale code."""
        changed = []
        for path in paths:
            if path in self.seen:
                continue
            sig = self.seen[path] = signature(path)
            self.watching(path)
            if since_ns is not None and sig is not None and sig[0] > since_ns:
                changed.append(path)
        return changed

    def watching(self, path: str) -> None:
        """A new path (the inotify engine watches its directory)."""

    def check(self, paths: Iterable[str]) -> list[str]:
        """Stat `paths` again: those whose signature changed (appeared, vanished, rewritten)."""
        changed = []
        for path in paths:
            sig = signature(path)
            if sig != self.seen.get(path):
                self.seen[path] = sig
                changed.append(path)
        return changed

    def tick(self) -> list[str]:
        """Once a second: newly matching extra files are watched; every file is stat'ed."""
        if self.patterns:
            self.add(self.expand())
        return self.check(list(self.seen))

    def read_events(self) -> list[str]:
        return []

    def close(self) -> None:
        pass


# inotify(7)
IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x1000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
DIR_EVENTS = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
              | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF)
EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name


def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.inotify_init1.argtypes = [ctypes.c_int]
    libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    return libc


def inotify_unavailable() -> str:
    """'' when inotify works here, else why not."""
    if not sys.platform.startswith("linux"):
        return f"inotify is Linux only (this is {sys.platform})"
    try:
        libc = _libc()
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    except (OSError, AttributeError) as exc:
        return f"libc has no inotify ({exc})"
    if fd < 0:
        return f"inotify_init1: {os.strerror(ctypes.get_errno())}"
    os.close(fd)
    return ""


class InotifyWatcher(Watcher):
    """inotify on the directories of the watched files; events trigger a re-stat there."""

    engine = "inotify"

    def __init__(self, extra_files: Iterable[str] = (), warn: Callable[[str], None] = print):
        self.libc = _libc()
        self.fd = self.libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.warn = warn
        self.by_dir: dict[str, set[str]] = {}  # directory -> watched files seen from there
        self.wds: dict[int, set[str]] = {}  # watch descriptor -> directories (one inode)
        self.unwatched: set[str] = set()  # directories without a watch: polled
        self.warned_limit = False
        super().__init__(extra_files)

    def fileno(self) -> int:
        return self.fd

    def watching(self, path: str) -> None:
        dirs = [os.path.dirname(path)]
        if os.path.islink(path):  # an edit of the target happens in the target's directory
            dirs.append(os.path.dirname(os.path.realpath(path)))
        for directory in dirs:
            files = self.by_dir.get(directory)
            if files is None:
                files = self.by_dir[directory] = set()
                self._watch(directory)
            files.add(path)

    def _watch(self, directory: str) -> bool:
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(directory), DIR_EVENTS | IN_ONLYDIR)
        if wd < 0:
            err = ctypes.get_errno()
            self.unwatched.add(directory)
            if err == errno.ENOSPC and not self.warned_limit:
                self.warned_limit = True
                self.warn(f"--reload: out of inotify watches (fs.inotify.max_user_watches) at "
                          f"{directory}; the files of unwatched directories are polled once a "
                          f"second")
            return False
        self.unwatched.discard(directory)
        self.wds.setdefault(wd, set()).add(directory)
        return True

    def read_events(self) -> list[str]:
        dirs: set[str] = set()
        overflow = False
        while True:
            try:
                data = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                break
            if not data:
                break
            offset = 0
            while offset + EVENT.size <= len(data):
                wd, mask, _, length = EVENT.unpack_from(data, offset)
                offset += EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    overflow = True
                    continue
                touched = self.wds.get(wd, ())
                dirs.update(touched)
                if mask & IN_IGNORED:  # the directory went away (or was unmounted)
                    self.unwatched.update(self.wds.pop(wd, ()))
        if overflow:
            return self.check(list(self.seen))
        return self.check({p for d in dirs for p in self.by_dir.get(d, ())})

    def tick(self) -> list[str]:
        """Once a second: newly matching extra files are watched; directories without a watch
        (not there yet, or out of watches) get one if they can, else their files are polled."""
        if self.patterns:
            self.add(self.expand())
        unwatched = list(self.unwatched)
        for directory in unwatched:  # (what changed before a new watch is seen here too)
            self._watch(directory)
        return self.check({p for d in unwatched for p in self.by_dir.get(d, ())})

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def make_watcher(engine: str, extra_files: Iterable[str] = (),
                 warn: Callable[[str], None] = print) -> Watcher:
    """The watcher for `--reload-engine`: inotify for auto and inotify (poll, with a warning,
    when the kernel refuses an inotify instance now), else poll."""
    if engine in ("auto", "inotify"):
        try:
            return InotifyWatcher(extra_files, warn)
        except (OSError, AttributeError) as exc:
            warn(f"--reload: inotify is not available ({exc}); polling once a second instead")
    return Watcher(extra_files)


# --- the master's side: when to start new workers ----------------------------------------------

SETTLE = 0.2  # act once files were quiet this long (an editor's save is a burst)
SETTLE_MAX = 1.0  # ... but no later than this after the first change


class CodeReloader:
    """`--reload` in the master. Its one job: say when the app's code changed, so that the
    master starts a new generation of workers.

    It owns the report pipe (the workers write the files they imported), the watcher and the
    changes not acted upon yet. The master registers `fds()` in its selector and calls
    `readable()` for them, `tick()` twice a second, `take_changes()` once `due` has come and
    `for_worker()` in a forked worker.
    """

    def __init__(self, cfg, log):
        self.log = log
        self.reports_r, self.reports_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.reports_r, False)  # (the workers' end stays blocking)
        self.reports = Reports()
        self.watcher = make_watcher(cfg.reload_engine, cfg.reload_extra_files or (),
                                    lambda line: log.warning("%s", line))
        self.settings = self.settings_of(cfg)
        self.changes: set[str] = set()  # changed files not acted upon yet
        self.first = 0.0  # when the first of them changed
        self.due = 0.0  # when to act upon them (0: nothing changed)
        self.next_poll = 0.0
        extra = f" and {len(cfg.reload_extra_files)} --reload-extra-file entries" \
            if cfg.reload_extra_files else ""
        log.warning("--reload is on (%s): workers are replaced when the app's source files%s "
                    "change; for development only", self.watcher.engine, extra)

    @staticmethod
    def settings_of(cfg) -> tuple:
        """The settings read once, at start (SIGHUP does not change what is watched)."""
        return (cfg.reload, cfg.reload_engine, cfg.reload_extra_files)

    def fds(self) -> list[int]:
        """What the master's selector waits on for --reload."""
        fd = self.watcher.fileno()
        return [self.reports_r] if fd is None else [self.reports_r, fd]

    def readable(self, fd: int, workers: dict) -> None:
        """One of `fds()` is readable. `workers`: the master's (pid -> info with `started`)."""
        if fd == self.reports_r:
            self.read_reports(workers)
        else:
            self.changed(self.watcher.read_events())

    def read_reports(self, workers: dict) -> None:
        """The files workers imported: watched from now on."""
        while True:
            try:
                data = os.read(self.reports_r, 65536)
            except BlockingIOError:
                return
            if not data:  # (the master holds a write end: never, but never spin either)
                return
            for pid, paths in self.reports.feed(data).items():
                info = workers.get(pid)
                since = None
                if info is not None:  # when it was forked, on the files' (wall) clock
                    since = time.time_ns() - int((time.monotonic() - info.started) * 1e9)
                self.changed(self.watcher.add(paths, since))

    def tick(self, now: float) -> None:
        """Twice a second, from the master's tick: the poll engine stats once a second."""
        if now >= self.next_poll:
            self.next_poll = now + INTERVAL
            self.changed(self.watcher.tick())

    def changed(self, paths: list[str]) -> None:
        """Changed files: act once they have been quiet for a moment (one save, one reload)."""
        if not paths:
            return
        now = time.monotonic()
        if not self.changes:
            self.first = now
        self.changes.update(paths)
        self.due = min(now + SETTLE, self.first + SETTLE_MAX)

    def take_changes(self) -> str:
        """The time has come: what changed, as a log line names it (the master starts a new
        generation, as SIGHUP does, without reading the configuration again)."""
        changed = sorted(self.changes)
        self.changes.clear()
        self.due = 0.0
        names = [_shown(p) for p in changed[:3]]
        if len(changed) > 3:
            names.append(f"{len(changed) - 3} more")
        return ", ".join(names)

    def for_worker(self, load_app: Callable) -> Callable:
        """In a forked worker: close the master's ends; the worker reports the app's files."""
        os.close(self.reports_r)
        if self.watcher.fileno() is not None:
            os.close(self.watcher.fileno())
        return reporting(load_app, self.reports_w)

    def close(self) -> None:
        self.watcher.close()
        for fd in (self.reports_r, self.reports_w):
            os.close(fd)


def _shown(path: str) -> str:
    """A changed file as a log line names it: relative to the current directory when inside."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel

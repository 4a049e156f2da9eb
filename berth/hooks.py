"""Gunicorn's server hooks, and the objects they receive.

A Gunicorn config file may define functions such as `post_fork(server, worker)` or
`pre_request(worker, req)`. berth loads them (`validate_hook`, each hook setting's converter,
checks them against `settings.HOOK_ARGS`), and the master and workers call them through
`call_hook(cfg, name, *args)` at the same moments Gunicorn does. A hook that raises is logged
with its traceback and berth carries on (Gunicorn lets an exception in `on_starting`,
`when_ready`, `pre_fork`, `child_exit`, `on_reload` or `nworkers_changed` kill the master;
berth keeps serving: a broken logging hook should not take the site down). Three fail what
they guard, as in Gunicorn: `pre_request` fails its request (500, the app not called), and
`post_fork` or `post_worker_init` their worker, which exits before it serves (so a worker
whose database pool or tracer could not be set up never serves without it; berth's rule for
workers dying before they are ready then applies: 5 in a row stop berth, or, after a SIGHUP,
the old workers serve on).

The hook arguments are small views with the attributes Gunicorn's documented examples use:
`server.log`, `server.cfg`, `server.pid`, `worker.pid`, `worker.log`, `worker.age`,
`req.method`, `req.path`, `req.query`, `req.headers` (a list of (NAME, value) tuples with
upper-case names), `resp.status`, `resp.status_code`, `resp.headers`, and the others of
Gunicorn's that have a true value in berth, in Gunicorn's shapes (`req.remote_addr` is the
peer's (host, port)). They are built only when a hook is set: `get_hook(cfg, name)` is None
otherwise, so the request path pays one dict lookup, done once per worker.

Gunicorn's attributes that have no true value in berth are left out, so that reading one fails
loudly instead of giving a number that means something else: `worker.tmp` (Gunicorn's
heartbeat file: berth's workers beat in a shared-memory scoreboard), `worker.timeout` (in
Gunicorn half of --timeout, the interval its workers notify at: berth's beat every 0.5 s
whatever the timeout; the setting is `worker.cfg.timeout`) and `worker.nr` (Gunicorn counts a
request after pre_request and before the app; berth's WSGI worker counts it before pre_request
and its ASGI worker once the response is over, so a hook would read a count off by one).
"""

from __future__ import annotations

import inspect
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from berth import SERVER_SOFTWARE
from berth.proctitle import process_name
from berth.settings import HOOK_ARGS
from berth.sockets import split_bind

# Hooks berth accepts in a config file but never calls (logged at start when set).
NEVER_CALLED = {"pre_exec": "berth has no SIGUSR2 binary upgrade, so nothing is re-executed"}


class HookError(ValueError):
    """A hook setting that is not a callable of the right arity (message says what is)."""


def _can_take(func: Callable, count: int) -> bool:
    try:
        inspect.signature(func).bind(*([None] * count))
    except TypeError:
        return False
    except ValueError:  # no signature (some builtins): trust it
        return True
    return True


def _import(path: str) -> Any:
    import importlib

    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise HookError(f"{path!r} is not an import path (module.function)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HookError(f"cannot import {path!r}: {exc}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise HookError(f"module {module_name!r} has no {attr!r}") from None


def validate_hook(name: str, value: Any) -> Callable:
    """A hook from a config file: a callable (or `module.function` string) that can be called
    with Gunicorn's arguments. `post_request` may take 2, 3 or 4 of them, as in Gunicorn."""
    if isinstance(value, str):
        value = _import(value)
    if not callable(value):
        raise HookError(f"a function taking {_arity_text(name)}, not {type(value).__name__}")
    if name == "post_request":
        return _post_request(value)
    if not _can_take(value, len(HOOK_ARGS[name])):
        raise HookError(f"a function taking {_arity_text(name)}")
    return value


def _post_request(func: Callable) -> Callable:
    if _can_take(func, 4):
        return func
    if _can_take(func, 3):
        return lambda worker, req, environ, resp: func(worker, req, environ)
    if _can_take(func, 2):
        return lambda worker, req, environ, resp: func(worker, req)
    raise HookError(f"a function taking {_arity_text('post_request')}")


def _arity_text(name: str) -> str:
    args = HOOK_ARGS[name]
    return f"{len(args)} argument{'s' if len(args) > 1 else ''} ({', '.join(args)})"


def get_hook(cfg: Any, name: str) -> Callable | None:
    """The hook `name` when the configuration sets one, else None (cheap: one dict lookup)."""
    values = getattr(cfg, "values", None)
    if values is None:
        return getattr(cfg, name, None)
    return values.get(name)


def _log_of(args: tuple, log: Any = None):
    """The logger for a hook's exception: `log`, else the `log` attribute of the hook's first
    argument (a ServerView or WorkerView), else berth's error log."""
    if log is None:
        log = getattr(args[0], "log", None) if args else None
    if log is None:
        import logging

        log = logging.getLogger("berth.error")
    return log


def call_hook(cfg: Any, name: str, *args: Any, log: Any = None) -> Any:
    """Call the hook `name` with `args` if it is set; log (and survive) an exception in it
    (the logger: `_log_of`). Returns the hook's result, or None.
    """
    hook = get_hook(cfg, name)
    if hook is None:
        return None
    try:
        return hook(*args)
    except Exception:  # noqa: BLE001 - a hook's bug is logged, never fatal to berth
        _log_of(args, log).exception("the %s hook raised an exception (berth carries on)",
                                     name)
        return None


def call_boot_hook(cfg: Any, name: str, *args: Any) -> None:
    """A worker's post_fork or post_worker_init, in the worker: an exception is logged and
    the worker exits (1) before it serves, as Gunicorn's worker does not boot: it must not
    serve without what the hook sets up (berth's rule for workers dying before they are
    ready does the rest)."""
    hook = get_hook(cfg, name)
    if hook is None:
        return
    try:
        hook(*args)
    except Exception:  # noqa: BLE001 - the worker's end, logged
        _log_of(args).exception("the %s hook raised an exception: the worker exits (it does "
                                "not start without it, as in Gunicorn)", name)
        from berth import logconfig

        logconfig.drain()
        os._exit(1)


# --- what hooks receive ---------------------------------------------------------------------

class ServerView:
    """The `server` argument (Gunicorn's Arbiter): built by the master around itself.

    Reads through to the master, so `server.log` is the current error log (SIGUSR1 replaces
    it) and `server.cfg` the current configuration (SIGHUP replaces it).
    """

    def __init__(self, master: Any):
        self._master = master
        self.pid = os.getpid()

    @property
    def log(self) -> Any:
        return self._master.log

    @property
    def cfg(self) -> Any:
        return self._master.cfg

    @property
    def app(self) -> Any:  # Gunicorn: the application object; berth: the loaded app or None
        return getattr(self._master, "app", None)

    @property
    def num_workers(self) -> int:
        return self._master.cfg.workers

    @property
    def address(self) -> list:
        """Gunicorn's `cfg.address`: each --bind parsed, (host, port) for TCP, the path of a
        unix socket, the number of an fd://N."""
        return [gunicorn_address(addr) for addr in self._master.cfg.bind]

    @property
    def proc_name(self) -> str:  # the NAME in `berth: master [NAME]` (Gunicorn's cfg.proc_name)
        return process_name(self._master.cfg)

    @property
    def LISTENERS(self) -> list:  # noqa: N802 - Gunicorn's name
        return list(getattr(self._master, "listeners", []))

    @property
    def WORKERS(self) -> dict:  # noqa: N802 - Gunicorn's name: pid -> worker
        workers = getattr(self._master, "workers", {})
        return {pid: getattr(info, "view", None) or WorkerView(
            self._master.cfg, self._master.log, pid=pid, age=getattr(info, "age", 0))
            for pid, info in workers.items()}

    def __repr__(self) -> str:
        return f"<berth master {self.pid}>"


class WorkerView:
    """The `worker` argument (Gunicorn's Worker).

    `pid` is the worker's pid (None in `pre_fork`, before it exists, where Gunicorn shows
    "[booting]"), `ppid` the master's, `age` the worker's sequence number (1 for the first
    worker the master started, counting every spawn, as Gunicorn's `worker.age`), `booted`
    whether it has loaded the app, `alive` False once it has been asked to stop,
    `max_requests` the requests after which it retires (--max-requests plus its jitter, or
    sys.maxsize without, as in Gunicorn), `sockets` the listening sockets it serves.
    """

    def __init__(self, cfg: Any, log: Any, pid: int | None = None, age: int = 0,
                 ppid: int | None = None, app: Any = None, max_requests: int = 0,
                 sockets: list | None = None):
        self.cfg = cfg
        self.log = log
        self.pid = pid
        self.ppid = os.getpid() if ppid is None else ppid
        self.age = age
        self.app = app
        self.booted = False
        self.alive = True
        self.started = time.time()
        self.max_requests = max_requests or sys.maxsize
        self.sockets = list(sockets or ())

    @property
    def wsgi(self) -> Any:  # Gunicorn's worker.wsgi: the WSGI callable
        return self.app

    @wsgi.setter
    def wsgi(self, app: Any) -> None:
        """post_worker_init may wrap the app (`worker.wsgi = Middleware(worker.wsgi)`), as
        Gunicorn's worker serves its `wsgi` once the hook returns."""
        self.app = app

    def __repr__(self) -> str:
        return f"<berth worker {self.pid if self.pid is not None else '[booting]'}>"


def _environ_key(name: str) -> str:
    """A request header's environ key, as Gunicorn's wsgi.create() names it."""
    if name in ("CONTENT-TYPE", "CONTENT-LENGTH"):
        return name.replace("-", "_")
    return "HTTP_" + name.replace("-", "_")


class RequestView:
    """The `req` argument of pre_request/post_request (Gunicorn's http.message.Request).

    Built from the request's WSGI environ; `headers` is computed on first use. `version` is a
    tuple such as (1, 1); `headers` a list of (NAME, value) with upper-case names. `peer` is
    the connection's peer address, or a function that returns it (socket.getpeername: nothing
    is asked of the socket unless a hook reads `remote_addr` or `peer_addr`).
    """

    __slots__ = ("environ", "_headers", "_peer", "_before")

    def __init__(self, environ: dict, peer: Any = None):
        self.environ = environ
        self._headers: list[tuple[str, str]] | None = None
        self._peer = peer
        self._before: list[tuple[str, str]] = []  # `headers` as made, before a hook changed it

    @property
    def method(self) -> str:
        return self.environ.get("REQUEST_METHOD", "")

    @property
    def path(self) -> str:
        raw = self.environ.get("RAW_URI")
        if raw:
            path = raw.split("?", 1)[0].split("#", 1)[0]
            if "://" in path:  # absolute-form request target
                path = "/" + path.split("://", 1)[1].partition("/")[2]
            return path
        return self.environ.get("SCRIPT_NAME", "") + self.environ.get("PATH_INFO", "")

    @property
    def query(self) -> str:
        return self.environ.get("QUERY_STRING", "")

    @property
    def fragment(self) -> str:
        raw = self.environ.get("RAW_URI", "")
        return raw.split("#", 1)[1] if "#" in raw else ""

    @property
    def uri(self) -> str:
        raw = self.environ.get("RAW_URI")
        if raw:
            return raw
        query = self.query
        return self.path + ("?" + query if query else "")

    @property
    def version(self) -> tuple[int, int]:
        proto = self.environ.get("SERVER_PROTOCOL", "HTTP/1.1")
        try:
            major, minor = proto.split("/", 1)[1].split(".", 1)
            return int(major), int(minor)
        except (IndexError, ValueError):
            return 1, 1

    @property
    def scheme(self) -> str:
        return self.environ.get("wsgi.url_scheme", "http")

    @property
    def peer_addr(self) -> Any:
        """Gunicorn's `req.peer_addr`, the address accept() gave for the connection: (host,
        port) over IPv4, (host, port, flowinfo, scope_id) over IPv6, '' over a unix socket.
        The connection's peer, behind a PROXY header or forwarded headers too (REMOTE_ADDR
        says whom they name)."""
        peer = self._peer
        if peer is None or callable(peer):
            try:
                peer = peer() if peer is not None else None
            except OSError:  # (the client is gone)
                peer = None
            if peer is None:  # what the environ says
                host, port = self.environ.get("REMOTE_ADDR"), self.environ.get("REMOTE_PORT")
                peer = (host, int(port)) if port and str(port).isdigit() else host or ""
            self._peer = peer
        return peer

    remote_addr = peer_addr  # (Gunicorn's Request sets both to the same address)

    @property
    def body(self) -> Any:
        return self.environ.get("wsgi.input")

    @property
    def headers(self) -> list[tuple[str, str]]:
        if self._headers is None:
            headers = []
            for key, value in self.environ.items():
                if key.startswith("HTTP_"):
                    headers.append((key[5:].replace("_", "-"), value))
                elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value != "":
                    headers.append((key.replace("_", "-"), value))
            self._headers = headers
            self._before = list(headers)
        return self._headers

    @headers.setter
    def headers(self, value: list[tuple[str, str]]) -> None:
        """A hook may replace the list, as Gunicorn's Request allows (apply_header_changes)."""
        if self._headers is None:
            self.headers  # noqa: B018 - made first: what the new list replaces
        self._headers = list(value)

    def apply_header_changes(self) -> None:
        """What a pre_request hook did to `req.headers` (appended, replaced or removed
        fields) goes into the environ the app gets, as in Gunicorn, which makes the environ
        from req.headers after the hook: `req.headers.append(("X-REQUEST-START", ...))`
        gives the app HTTP_X_REQUEST_START. Names map as Gunicorn maps them ('HTTP_' + the
        name with '-' as '_'; CONTENT-TYPE and CONTENT-LENGTH to CONTENT_*), repeated fields
        joined with ','. Nothing is done when the hook left the list as it was."""
        headers = self._headers
        if headers is None or headers == self._before:
            return
        environ = self.environ
        for name, _ in self._before:
            environ.pop(_environ_key(name), None)
        for name, value in headers:
            key = _environ_key(name)
            if key in environ and key.startswith("HTTP_"):
                environ[key] = f"{environ[key]},{value}"
            else:
                environ[key] = value
        self._before = list(headers)

    def __repr__(self) -> str:
        return f"<request {self.method} {self.uri}>"


class ResponseView:
    """The `resp` argument of post_request (Gunicorn's http.wsgi.Response).

    `status` is the status line the app gave ("200 OK"), `status_code` its number, `headers`
    the app's (name, value) list, `sent` the body bytes sent, `chunked` whether the body went
    with chunked transfer coding, `version` what the Server header said (Gunicorn's
    Response.version is its Server header's value).
    """

    __slots__ = ("status", "headers", "sent", "chunked")
    version = SERVER_SOFTWARE

    def __init__(self, status: str | None, headers: list | None, sent: int = 0,
                 chunked: bool = False):
        self.status = status
        self.headers = list(headers or ())
        self.sent = sent
        self.chunked = chunked

    @property
    def status_code(self) -> int | None:
        try:
            return int(str(self.status).split(None, 1)[0])
        except (ValueError, IndexError):
            return None

    @property
    def response_length(self) -> int | None:
        for name, value in self.headers:
            if name.lower() == "content-length":
                try:
                    return int(value)
                except ValueError:
                    return None
        return None

    def __repr__(self) -> str:
        return f"<response {self.status}>"


def gunicorn_address(addr: str) -> Any:
    """A --bind value as Gunicorn's `util.parse_address` gives it: (host, port) with the host
    lower-cased, a unix socket's path, or the number of an fd://N."""
    family, where = split_bind(addr)
    if family in (socket.AF_INET, socket.AF_INET6):
        return where[0].lower(), where[1]
    return where

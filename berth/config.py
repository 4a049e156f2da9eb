"""Every setting, declared once.

A `Setting` names the attribute, its command-line flags, its type (a converter that raises
`ValueError` with a message naming what is accepted), its default and its help. The command line
(`cli.py`), `--help` and the settings reference all come from `SETTINGS`; adding a setting is one
entry here.

Names and defaults follow Gunicorn where Gunicorn has the setting, so that a Dockerfile changes
one word. Where berth's default differs on purpose (access log to stdout, a 75 s keep-alive, an
8 s graceful timeout) the help says why.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


class ConfigError(Exception):
    """A setting has a value berth cannot use: the message names it and what is accepted."""


def positive_int(value: Any) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError("a whole number >= 1") from None
    if n < 1:
        raise ValueError("a whole number >= 1")
    return n


def worker_count(value: Any) -> int:
    from berth.scoreboard import MAX_WORKERS

    n = positive_int(value)
    if n > MAX_WORKERS:
        raise ValueError(f"a whole number from 1 to {MAX_WORKERS}")
    return n


def non_negative_int(value: Any) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError("a whole number >= 0") from None
    if n < 0:
        raise ValueError("a whole number >= 0")
    return n


def non_negative_float(value: Any) -> float:
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise ValueError("a number of seconds >= 0") from None
    if not n >= 0 or n == float("inf"):
        raise ValueError("a number of seconds >= 0")
    return n


def positive_float(value: Any) -> float:
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise ValueError("a number of seconds > 0") from None
    if not n > 0 or n == float("inf"):
        raise ValueError("a number of seconds > 0")
    return n


def size_bytes(value: Any) -> int:
    """`1048576`, `512k`, `1m`, `2MiB` → bytes."""
    text = str(value).strip().lower().removesuffix("ib").removesuffix("b")
    scale = 1
    if text and text[-1] in "kmg":
        scale = {"k": 1024, "m": 1024**2, "g": 1024**3}[text[-1]]
        text = text[:-1]
    try:
        n = int(float(text) * scale)
    except ValueError:
        raise ValueError("a size in bytes, e.g. 1048576, 512k or 1m") from None
    if n < 0:
        raise ValueError("a size in bytes >= 0, e.g. 1048576, 512k or 1m")
    return n


def log_level(value: Any) -> str:
    text = str(value).strip().lower()
    if text == "warn":
        text = "warning"
    if text not in ("debug", "info", "warning", "error", "critical"):
        raise ValueError("one of debug, info, warning, error, critical")
    return text


def text(value: Any) -> str:
    return str(value)


def env_pair(value: Any) -> str:
    if "=" not in str(value):
        raise ValueError("KEY=VALUE")
    return str(value)


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    flags: tuple[str, ...]
    convert: Callable[[Any], Any]
    default: Any
    help: str
    metavar: str | None = None
    action: str | None = None  # "append" for repeatable flags, "store_true" for switches


SETTINGS: tuple[Setting, ...] = (
    Setting("bind", ("-b", "--bind"), text, None,
            "Address to listen on, repeatable: HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N. "
            "Default: 0.0.0.0:$PORT when $PORT is set, else 0.0.0.0:8000 inside a container "
            "and 127.0.0.1:8000 outside one.", "ADDRESS", "append"),
    Setting("workers", ("-w", "--workers"), worker_count, 2,
            "Number of worker processes.", "INT"),
    Setting("threads", ("--threads",), positive_int, 1,
            "App threads per worker. With 1, the app runs on the worker's loop thread.", "INT"),
    Setting("backlog", ("--backlog",), positive_int, 2048,
            "Maximum number of pending connections in the kernel queue.", "INT"),
    Setting("keepalive", ("--keep-alive",), non_negative_float, 75.0,
            "Seconds an idle keep-alive connection is kept open (0 disables keep-alive). "
            "Longer than common load-balancer idle timeouts (60 s), and cheap: an idle "
            "connection costs no thread.", "SECONDS"),
    Setting("timeout", ("-t", "--timeout"), positive_float, 30.0,
            "Seconds a worker's loop may go silent, and one request may run, before berth "
            "acts: a silent worker is killed (after dumping its threads' stacks), a request "
            "over its deadline has its stack logged, gets a 504 if nothing was sent, and its "
            "worker is replaced. Booting (importing the app) does not count.", "SECONDS"),
    Setting("graceful_timeout", ("--graceful-timeout",), non_negative_float, None,
            "Seconds in-flight requests get to finish after SIGTERM. Default 8 (inside "
            "Docker's 10 s stop window; Gunicorn's 30 s is not), 20 in Kubernetes (inside its "
            "30 s terminationGracePeriodSeconds, after the shutdown delay).", "SECONDS"),
    Setting("shutdown_delay", ("--shutdown-delay",), non_negative_float, None,
            "Seconds after SIGTERM during which requests are still served (load balancers "
            "take a few seconds to stop sending) before berth stops accepting. Default 0, "
            "5 in Kubernetes.", "SECONDS"),
    Setting("max_requests", ("--max-requests",), non_negative_int, 0,
            "Replace a worker after it has served this many requests (0 = never). Its "
            "replacement is ready before it stops: no request is lost.", "INT"),
    Setting("max_requests_jitter", ("--max-requests-jitter",), non_negative_int, 0,
            "Add a random 0..N to --max-requests per worker, so workers are not all "
            "replaced at once.", "INT"),
    Setting("max_worker_memory", ("--max-worker-memory",), size_bytes, None,
            "Replace a worker whose RSS stays above this size for 3 samples in a row "
            "(0 = never). Default: off, unless a container memory limit is known; then a "
            "share such that all workers plus one replacement fit under it.", "BYTES"),
    Setting("worker_tmp_dir", ("--worker-tmp-dir",), text, None,
            "Accepted for Gunicorn compatibility; berth has no heartbeat file (workers "
            "report through shared memory), so it is not used.", "DIR"),
    Setting("header_timeout", ("--header-timeout",), non_negative_float, 10.0,
            "Seconds a client has to send a whole request head, and the longest pause while "
            "it sends a body, before the connection is closed (408).", "SECONDS"),
    Setting("body_buffer_size", ("--body-buffer-size",), size_bytes, 1024 * 1024,
            "Request bodies up to this size are read whole into memory before the app sees "
            "the request; larger ones are streamed to the app as they arrive.", "BYTES"),
    Setting("limit_request_line", ("--limit-request-line",), non_negative_int, 4094,
            "Maximum size of the request line in bytes (0 = unlimited).", "INT"),
    Setting("limit_request_fields", ("--limit-request-fields",), non_negative_int, 100,
            "Maximum number of header fields in a request.", "INT"),
    Setting("limit_request_field_size", ("--limit-request-field_size",
                                         "--limit-request-field-size"), non_negative_int, 8190,
            "Maximum size of one request header field in bytes (0 = unlimited).", "INT"),
    Setting("chdir", ("--chdir",), text, None,
            "Change to this directory before loading the app.", "DIR"),
    Setting("pythonpath", ("--pythonpath",), text, None,
            "Comma-separated directories to add to the Python path.", "PATHS"),
    Setting("preload_app", ("--preload",), bool, False,
            "Load the app in the master before forking workers (memory shared copy-on-write, "
            "kept shared with gc.freeze()).", None, "store_true"),
    Setting("raw_env", ("-e", "--env"), env_pair, None,
            "Set an environment variable for the app, repeatable: KEY=VALUE.", "KEY=VALUE",
            "append"),
    Setting("accesslog", ("--access-logfile",), text, "-",
            "Access log: '-' for stdout (the default: containers collect stdout), a file "
            "path, or 'none' to disable.", "FILE"),
    Setting("errorlog", ("--error-logfile", "--log-file"), text, "-",
            "Error log: '-' for stderr (the default) or a file path.", "FILE"),
    Setting("access_log_format", ("--access-logformat",), text,
            '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"',
            "Access log format, with Gunicorn's atoms.", "STRING"),
    Setting("loglevel", ("--log-level",), log_level, "info",
            "Error log level: debug, info, warning, error, critical.", "LEVEL"),
)

BY_NAME = {s.name: s for s in SETTINGS}


@dataclasses.dataclass
class Config:
    """The effective configuration: one attribute per `Setting`, plus the app spec."""

    app_uri: str = ""
    values: dict = dataclasses.field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            values = self.__dict__["values"]
        except KeyError:
            raise AttributeError(name) from None
        if name in values:
            return values[name]
        if name in BY_NAME:
            return BY_NAME[name].default
        raise AttributeError(name)

    def set(self, name: str, value: Any) -> None:
        setting = BY_NAME[name]
        try:
            if setting.action == "append":
                value = [setting.convert(v) for v in value]
            elif setting.action != "store_true":
                value = setting.convert(value)
        except ValueError as exc:
            flag = setting.flags[-1] if setting.flags[-1].startswith("--") else setting.flags[0]
            raise ConfigError(f"{flag} ({name}): invalid value {value!r}; expected {exc}") from None
        self.values[name] = value

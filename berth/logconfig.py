"""Gunicorn's logging settings: `logconfig_dict`, `--log-config-json`, `--log-config`
(fileConfig) and `--log-syslog`, applied as Gunicorn applies them, with the users' handlers
kept off the request path.

What Gunicorn does, and so berth: its loggers are `gunicorn.error` and `gunicorn.access`
(`propagate` off). The error logger has the error log's handler (and syslog's), the access
logger the access log's (and syslog's, unless `--disable-redirect-access-to-syslog`); then a
logging configuration, if any, is applied over Gunicorn's defaults (`CONFIG_DEFAULTS`, merged
at the top level): a logger it names gets its handlers, level and `propagate`. An access
record has the access-log format as `msg` and the atoms as `args` (a dict that says "-" for an
unknown atom), so users' formatters and filters work unchanged.

What berth adds:
  - berth's error lines go to `berth.error` when the configuration names it, else to
    `gunicorn.error` (berth's own error-log handler is that logger's first handler, as
    Gunicorn's is, so a configuration that leaves it alone leaves the error log as it was).
  - Access records are made only when the configuration names `gunicorn.access` or
    `berth.access`, or syslog takes access lines. Otherwise berth's own access log (its fast
    path, `berth.logs.AccessLog`) writes the lines, and Gunicorn's defaults' console handler on
    `gunicorn.access` is not used (with it, Gunicorn writes each line to stdout twice when the
    configuration has no `loggers`: once with its own prefix, once through the root logger).
  - Every handler the configuration or syslog installs runs on one thread per process, behind
    one bounded queue (`LogQueue`, through `logging.handlers.QueueHandler`): a file on a slow
    disk, a TCP syslog or a socket handler never holds the loop or an app thread. When the
    queue is full, `--log-overflow drop` drops the record and counts it (in
    `berth_log_lines_dropped_total`); `block` waits for room. The thread is started again in
    each worker after fork, and the queue is drained at every exit berth controls.
"""

from __future__ import annotations

import configparser
import copy
import json
import logging
import logging.config
import logging.handlers
import os
import queue
import threading
import time
from typing import Any

from berth.config import ConfigError
from berth.converters import SYSLOG_FACILITIES, parse_syslog_address
from berth.logs import AccessTee, _basic_user
from berth.proctitle import process_name

# Gunicorn's defaults (gunicorn/glogging.py), under every logging configuration
CONFIG_DEFAULTS: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "root": {"level": "INFO", "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["error_console"], "propagate": True,
                           "qualname": "gunicorn.error"},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": True,
                            "qualname": "gunicorn.access"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "generic",
                    "stream": "ext://sys.stdout"},
        "error_console": {"class": "logging.StreamHandler", "formatter": "generic",
                          "stream": "ext://sys.stderr"},
    },
    "formatters": {
        "generic": {"format": "%(asctime)s [%(process)d] [%(levelname)s] %(message)s",
                    "datefmt": "[%Y-%m-%d %H:%M:%S %z]", "class": "logging.Formatter"},
    },
}

SYSLOG_FORMAT = "[%(process)d] %(message)s"  # after Gunicorn's "gunicorn.PREFIX.NAME: "

ERROR_LOGGERS = ("berth.error", "gunicorn.error")  # berth's first, if configured
ACCESS_LOGGERS = ("berth.access", "gunicorn.access")
QUEUE_SIZE = 10_000  # records waiting for the handlers' thread, per process


# -- the queue between the loggers and the users' handlers ------------------------------------

class LogQueue:
    """One bounded queue and one thread per process, running the handlers behind it."""

    def __init__(self, size: int = QUEUE_SIZE, block: bool = False):
        self.size = size
        self.block = block
        self.dropped = 0  # records dropped because the queue was full (drop policy)
        self.handlers: list[logging.Handler] = []  # every handler behind the queue
        self._start()

    def _start(self) -> None:
        self.queue: queue.Queue = queue.Queue(self.size)
        self.thread = threading.Thread(target=self._run, name="berth-log", daemon=True)
        self.thread.start()

    def after_fork(self) -> None:
        """In a new worker: the parent's thread is not here, and its queue's lock may have
        been held at fork: a new queue and a new thread (what the parent had queued is
        written by the parent)."""
        self.dropped = 0
        self._start()

    def put(self, targets: tuple, record: logging.LogRecord) -> None:
        if self.block:
            self.queue.put((targets, record))
            return
        try:
            self.queue.put_nowait((targets, record))
        except queue.Full:
            self.dropped += 1

    def _run(self) -> None:
        get = self.queue.get
        while True:
            item = get()
            try:
                if item is None:
                    return
                targets, record = item
                for handler in targets:
                    if record.levelno >= handler.level:
                        handler.handle(record)
            except Exception:  # noqa: BLE001 - a handler's failure must not end the thread
                pass
            finally:
                self.queue.task_done()

    def drain(self, timeout: float = 2.0) -> None:
        """Wait (at most `timeout`) until every queued record was handled."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def reopen_files(self) -> None:
        """SIGUSR1: reopen the file handlers' files (Gunicorn's reopen_files)."""
        for handler in self.handlers:
            if isinstance(handler, logging.FileHandler):
                with handler.lock:
                    if handler.stream:
                        handler.close()
                        handler.stream = handler._open()


class QueuedHandler(logging.handlers.QueueHandler):
    """Stands in a logger for that logger's own handlers, which the queue's thread runs. The
    record goes as it is: an access record keeps its format as `msg` and its atoms as
    `args`, as Gunicorn's do, for the users' formatters."""

    def __init__(self, log_queue: LogQueue, targets: list[logging.Handler]):
        super().__init__(None)
        self.log_queue = log_queue
        self.targets = tuple(targets)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        self.log_queue.put(self.targets, record)


# -- applying the settings ------------------------------------------------------------------

class Setup:
    """What `apply()` decided: the logger berth's error lines go to, the logger access
    records go to (None: berth's own access log only), whether berth's own access log still
    writes, and the queue."""

    def __init__(self, error_log: logging.Logger, access_log: logging.Logger | None,
                 own_access_log: bool, log_queue: LogQueue):
        self.error_log = error_log
        self.access_log = access_log
        self.own_access_log = own_access_log
        self.queue = log_queue


_current: Setup | None = None


SETTINGS = ("logconfig_dict", "logconfig_json", "logconfig", "syslog", "syslog_addr",
            "syslog_prefix", "syslog_facility", "disable_redirect_access_to_syslog")


def settings_of(cfg) -> tuple:
    return tuple(repr(getattr(cfg, name)) for name in SETTINGS)


def wanted(cfg) -> bool:
    return bool(cfg.logconfig_dict or cfg.logconfig_json or cfg.logconfig or cfg.syslog)


def _syslog_handler(cfg, name: str) -> logging.Handler:
    prefix = (cfg.syslog_prefix or process_name(cfg)).replace(":", ".")
    socktype, address = parse_syslog_address(cfg.syslog_addr)
    try:
        handler = logging.handlers.SysLogHandler(
            address=address, facility=SYSLOG_FACILITIES[cfg.syslog_facility], socktype=socktype)
    except OSError as exc:
        raise ConfigError(f"--log-syslog-to {cfg.syslog_addr}: {exc.strerror or exc}") from None
    handler.setFormatter(logging.Formatter(f"gunicorn.{prefix}.{name}: {SYSLOG_FORMAT}"))
    return handler


def _named_in_file(path: str) -> set[str]:
    """The loggers a fileConfig file configures (their qualnames)."""
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    keys = [k.strip() for k in parser.get("loggers", "keys", fallback="").split(",") if k.strip()]
    return {"root" if k == "root" else parser.get(f"logger_{k}", "qualname", fallback=k)
            for k in keys}


def _user_configuration(cfg) -> set[str] | None:
    """Apply the user's logging configuration, if any; return the logger names it gives."""
    if cfg.logconfig_dict:
        setting, given = "logconfig_dict", cfg.logconfig_dict
        if not isinstance(given, dict):
            raise ConfigError("logconfig_dict: a dict for logging.config.dictConfig is expected")
    elif cfg.logconfig_json:
        setting = "--log-config-json"
        try:
            with open(cfg.logconfig_json, encoding="utf-8") as f:
                given = json.load(f)
        except OSError as exc:
            raise ConfigError(f"{setting} {cfg.logconfig_json}: {exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError(f"{setting} {cfg.logconfig_json}: not JSON ({exc})") from None
        if not isinstance(given, dict):
            raise ConfigError(f"{setting} {cfg.logconfig_json}: a JSON object is expected")
    elif cfg.logconfig:
        path = cfg.logconfig
        if not os.path.exists(path):
            raise ConfigError(f"--log-config {path}: no such file")
        defaults = {"__file__": path, "here": os.path.dirname(path)}
        try:
            logging.config.fileConfig(path, defaults=defaults, disable_existing_loggers=False)
        except Exception as exc:  # noqa: BLE001 - configparser, import and value errors
            raise ConfigError(f"--log-config {path}: {type(exc).__name__}: {exc}") from None
        return _named_in_file(path)
    else:
        return set()
    config = copy.deepcopy(CONFIG_DEFAULTS)
    config.update(given)  # (Gunicorn's merge: top-level keys replace the defaults')
    try:
        logging.config.dictConfig(config)
    except Exception as exc:  # noqa: BLE001 - ValueError, ImportError, TypeError...
        why = str(exc)
        if exc.__cause__ is not None:
            why += f": {exc.__cause__}"
        if "'console'" in why or "'error_console'" in why:
            why += (" (the configuration is merged over Gunicorn's defaults at the top level, "
                    "as Gunicorn merges it: 'handlers' of its own replace the defaults' "
                    "console handlers, which the defaults' 'root' and 'loggers' name: give "
                    "'root' and 'loggers' too)")
        raise ConfigError(f"{setting}: {why}") from None
    return set(config.get("loggers") or ())


def apply(cfg, own_error_handlers: list[logging.Handler]) -> Setup | None:
    """In the master, at start, after berth's error log is set up (its handlers are
    `own_error_handlers`): apply the logging settings. Raises ConfigError (one line)."""
    global _current
    if not wanted(cfg):
        return None
    g_error, g_access = logging.getLogger("gunicorn.error"), logging.getLogger("gunicorn.access")
    for log in (g_error, g_access):
        log.propagate = False
        for handler in list(log.handlers):
            log.removeHandler(handler)
    g_error.setLevel(cfg.loglevel.upper())
    g_access.setLevel(logging.INFO)
    for handler in own_error_handlers:
        g_error.addHandler(handler)
    syslog_access = cfg.syslog and not cfg.disable_redirect_access_to_syslog
    if cfg.syslog:
        g_error.addHandler(_syslog_handler(cfg, "error"))
        if syslog_access:
            g_access.addHandler(_syslog_handler(cfg, "access"))
    syslog_handlers = list(g_access.handlers)
    named = _user_configuration(cfg)

    error_log = logging.getLogger(next((n for n in ERROR_LOGGERS if n in named),
                                       "gunicorn.error"))
    access_name = next((n for n in ACCESS_LOGGERS if n in named), None)
    if access_name is None and syslog_access:
        access_name = "gunicorn.access"  # syslog only: beside berth's own access log
        g_access.handlers[:] = syslog_handlers  # (not the defaults' console: see above)
        g_access.propagate = False
    access_log = logging.getLogger(access_name) if access_name else None
    own_access_log = access_name not in named  # (syslog only: both)

    log_queue = LogQueue(block=cfg.log_overflow == "block")
    own = set(map(id, own_error_handlers))
    for log in [logging.getLogger(), *(logging.getLogger(name) for name in
                                       list(logging.root.manager.loggerDict))]:
        if isinstance(log, logging.PlaceHolder):
            continue
        theirs = [h for h in log.handlers if id(h) not in own]
        if not theirs:
            continue
        log_queue.handlers.extend(h for h in theirs if h not in log_queue.handlers)
        kept = [h for h in log.handlers if id(h) in own]
        log.handlers[:] = [*kept, QueuedHandler(log_queue, theirs)]
    if error_log.name != "berth.error":  # (hooks and anything else logging to berth.error)
        berth_error = logging.getLogger("berth.error")
        berth_error.handlers[:] = [_Forward(error_log)]
        berth_error.setLevel(logging.NOTSET)
        berth_error.propagate = False
    _current = Setup(error_log, access_log, own_access_log, log_queue)
    return _current


class _Forward(logging.Handler):
    """berth.error's one handler when berth logs to gunicorn.error."""

    def __init__(self, to: logging.Logger):
        super().__init__()
        self.to = to

    def emit(self, record: logging.LogRecord) -> None:
        if self.to.isEnabledFor(record.levelno):
            self.to.handle(record)


def current() -> Setup | None:
    return _current


def keep_std_streams() -> None:
    """In a worker, before --capture-output takes descriptors 1 and 2 for the app's prints
    with the error log on stderr (Gunicorn captures only into an error log file, and does
    nothing then): the configuration's handlers that write to stdout or stderr (a
    `StreamHandler` on `ext://sys.stdout`, the access log of many Gunicorn configurations)
    get a descriptor of their own on the same stream, so that their lines stay where they
    went in Gunicorn instead of becoming prints captured into the error log."""
    if _current is None:
        return
    for handler in _current.queue.handlers:
        if not isinstance(handler, logging.StreamHandler) or \
                isinstance(handler, logging.FileHandler):
            continue
        stream = handler.stream
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            continue
        if fd not in (1, 2):
            continue
        own = os.dup(fd)  # (not inheritable: the app's subprocesses do not get it)
        handler.setStream(open(own, "w", encoding=getattr(stream, "encoding", None) or "utf-8",
                               errors=getattr(stream, "errors", None) or "backslashreplace"))


def after_fork() -> None:
    if _current is not None:
        _current.queue.after_fork()


def drain(timeout: float = 2.0) -> None:
    if _current is not None:
        _current.queue.drain(timeout)


def dropped() -> int:
    return _current.queue.dropped if _current is not None else 0


def reopen_files() -> None:
    if _current is not None:
        _current.queue.reopen_files()


# -- access records ----------------------------------------------------------------------------

class SafeAtoms(dict):
    """Gunicorn's atoms wrapper: `"` escaped in string values, "-" for an unknown atom, and
    `{name}i`, `{name}o`, `{name}e` found whatever their case."""

    def __init__(self, atoms: dict):
        super().__init__()
        for key, value in atoms.items():
            self[key] = value.replace('"', '\\"') if isinstance(value, str) else value

    def __getitem__(self, key: str):
        if key.startswith("{"):
            key = key.lower()
        return super().__getitem__(key) if key in self else "-"


def atoms(environ: dict, status: str, sent: int, seconds: float, headers) -> dict:
    """Gunicorn's access-log atoms (Logger.atoms) of one response."""
    micros = int(seconds * 1_000_000)
    method = environ.get("REQUEST_METHOD")
    found = {
        "h": environ.get("REMOTE_ADDR", "-"),
        "l": "-",
        "u": _basic_user(environ) if "HTTP_AUTHORIZATION" in environ else "-",
        "t": time.strftime("[%d/%b/%Y:%H:%M:%S %z]"),
        "r": f"{method} {environ.get('RAW_URI', '')} {environ.get('SERVER_PROTOCOL')}",
        "s": status.split(None, 1)[0],
        "m": method,
        "U": environ.get("PATH_INFO"),
        "q": environ.get("QUERY_STRING"),
        "H": environ.get("SERVER_PROTOCOL"),
        "b": str(sent),
        "B": sent,
        "f": environ.get("HTTP_REFERER", "-"),
        "a": environ.get("HTTP_USER_AGENT", "-"),
        "T": micros // 1_000_000,
        "D": micros,
        "M": micros // 1000,
        "L": f"{micros // 1_000_000}.{micros % 1_000_000:06d}",
        "p": f"<{os.getpid()}>",
    }
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            found["{" + key[5:].lower().replace("_", "-") + "}i"] = value
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            found["{" + key.lower().replace("_", "-") + "}i"] = value
    for key, value in headers or ():
        found["{" + key.lower() + "}o"] = value
    for key, value in environ.items():
        found["{" + key.lower() + "}e"] = value
    return found


class AccessRecords(AccessTee):
    """The worker's access log when a logging configuration (or syslog) takes access lines:
    each response becomes a record of the access logger (`msg` the format, `args` the atoms,
    as Gunicorn's), handed to the queue; berth's own access log, when it still writes
    (`own`), formats its line beside it."""

    def __init__(self, logger: logging.Logger, fmt: str, own=None):
        super().__init__(own)
        self.logger = logger
        self.fmt = fmt

    def format(self, environ, status, sent, seconds, headers):
        logger = self.logger
        if logger.isEnabledFor(logging.INFO):
            logger.handle(logger.makeRecord(
                logger.name, logging.INFO, __file__, 0, self.fmt,
                (SafeAtoms(atoms(environ, status, sent, seconds, headers)),), None))
        if self.inner is not None:
            return self.inner.format(environ, status, sent, seconds, headers)
        return None

    def close(self, timeout: float = 2.0) -> None:
        super().close(timeout)
        drain(timeout)


def access_log_for(cfg, own):
    """The worker's access log: berth's own (`own`, or None when it is off), with access
    records beside it or instead of it when the logging settings ask for them."""
    setup = _current
    if setup is None or setup.access_log is None:
        return own
    return AccessRecords(setup.access_log, cfg.access_log_format,
                         own if setup.own_access_log else None)

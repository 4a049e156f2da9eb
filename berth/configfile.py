"""Gunicorn-style configuration files: a Python file (or module) of settings and hooks.

```python
# gunicorn.conf.py
import multiprocessing
bind = "0.0.0.0:8000"            # or a list
workers = multiprocessing.cpu_count() * 2 + 1
accesslog = "-"

def post_fork(server, worker):
    server.log.info("worker %s spawned", worker.pid)
```

`-c FILE` runs the file, `-c python:my.module` imports the module; without `-c`,
`./berth.conf.py` or else `./gunicorn.conf.py` is loaded when present. The module's
top-level names that are settings (`config.SETTINGS`, Gunicorn's names) become values; the
rest (imports, helper variables, helper functions, constants such as `TIMEOUT = 5`) is
ignored, as Gunicorn does, except a lower-case name that is one typo away from a setting the
file does not set (`wokers = 4`), or that setting's flag spelled as a name (`preload = True`
for preload_app, `access_logfile` for accesslog), which is an error: silently running with
the default there is worse than stopping.

Every problem (missing file, syntax error, exception while running it, bad value) is one
`ConfigError` line naming the file.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import traceback
import types
from typing import Any

from berth.converters import ConfigError
from berth.settings import BY_NAME, HOOK_NAMES

AUTO_FILES = ("berth.conf.py", "gunicorn.conf.py")  # in order of preference
MODULE_NAME = "__config__"  # as Gunicorn: what the file sees as __name__


def find_auto_config(cwd: str | None = None) -> tuple[str | None, str]:
    """(berth.conf.py or gunicorn.conf.py when present in `cwd`, a note when both exist).

    The name is relative to `cwd` (the current directory by default)."""
    base = cwd or os.getcwd()
    found = [name for name in AUTO_FILES if os.path.isfile(os.path.join(base, name))]
    if not found:
        return None, ""
    note = ""
    if len(found) == 2:
        note = ("both ./berth.conf.py and ./gunicorn.conf.py exist: loading berth.conf.py, "
                "gunicorn.conf.py is ignored")
    return found[0], note


def _error_line(location: str, exc: BaseException) -> str:
    """The file's line where `exc` was raised, if it was raised inside the file."""
    path = os.path.abspath(location)
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if os.path.abspath(frame.filename) == path:
            line = frame.lineno
    return f"line {line}: " if line else ""


def read_namespace(location: str, label: str | None = None) -> dict[str, Any]:
    """Run a config file (or import `python:MODULE`) and return its top-level names.

    Messages name the file as `label` (as the user wrote it), default `location`."""
    if location.startswith("python:"):
        module_name = location[len("python:"):]
        try:
            module = sys.modules.get(module_name)
            # a second read (SIGHUP) must see the module's new contents
            module = importlib.reload(module) if module is not None else \
                importlib.import_module(module_name)
        except SyntaxError as exc:
            raise ConfigError(f"config module {module_name!r}: line {exc.lineno}: syntax "
                              f"error: {exc.msg}") from None
        except Exception as exc:  # noqa: BLE001 - any failure is one line, exit 2
            raise ConfigError(f"config module {module_name!r} cannot be imported: "
                              f"{type(exc).__name__}: {exc}") from None
        return dict(vars(module))
    filename = location[len("file:"):] if location.startswith("file:") else location
    shown = label or filename
    if not os.path.exists(filename):
        raise ConfigError(f"config file {shown!r} does not exist")
    if not os.path.isfile(filename):
        raise ConfigError(f"config file {shown!r} is not a file")
    try:
        with open(filename, "rb") as f:
            source = f.read()
    except OSError as exc:
        raise ConfigError(f"config file {shown!r}: {exc.strerror}") from None
    try:
        code = compile(source, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise ConfigError(f"{shown}: line {exc.lineno}: syntax error: {exc.msg}") from None
    except ValueError as exc:  # e.g. null bytes
        raise ConfigError(f"{shown}: {exc}") from None
    module = types.ModuleType(MODULE_NAME)
    module.__file__ = os.path.abspath(filename)
    previous = sys.modules.get(MODULE_NAME)
    sys.modules[MODULE_NAME] = module  # as Gunicorn (dataclasses, pickle need it)
    try:
        exec(code, module.__dict__)
    except SystemExit as exc:
        raise ConfigError(f"{shown}: called exit({exc.code!r})") from None
    except BaseException as exc:  # noqa: BLE001 - the user's file: one line, exit 2
        raise ConfigError(f"{shown}: {_error_line(filename, exc)}{type(exc).__name__}: "
                          f"{exc}") from None
    finally:
        if previous is None:
            sys.modules.pop(MODULE_NAME, None)
        else:
            sys.modules[MODULE_NAME] = previous
    return dict(vars(module))


# A setting's long flag as a Python name, where that is not the setting's own name
# (`--preload`: preload_app, `--access-logfile`: accesslog): a common slip in config files.
# Not the flags that are everyday variable names (`env = os.environ["ENV"]`, `name`, `pid`,
# a `log_file` that a logconfig_dict uses).
_FLAG_NAMES = {flag[2:].replace("-", "_"): setting.name
               for setting in BY_NAME.values() for flag in setting.flags
               if flag.startswith("--") and flag[2:].replace("-", "_") not in BY_NAME
               and flag not in ("--env", "--name", "--pid", "--log-file")}


def settings_from_namespace(namespace: dict[str, Any], label: str) -> dict[str, Any]:
    """The settings a config file's names give: {name: raw value}.

    Modules, private names, unknown helpers and classes under other names than a setting's
    are skipped (a class named `worker_class` or `logger_class` is that setting's value, as in
    Gunicorn, for its converter to take or refuse); `None` means "not set"
    (`workers = os.environ.get("WORKERS")` keeps the default when the variable is unset),
    except for `accesslog`: None is Gunicorn's default there and means no access log, which
    berth's default (stdout) is not, so `accesslog = None` turns it off, as in Gunicorn. A
    lower-case name one typo away from a setting the file does not set, or its flag's name
    (`preload` for preload_app), is an error; a name with a capital letter is a constant or
    a class, never a setting (Gunicorn's are all lower-case).
    """
    found: dict[str, Any] = {}
    unknown: list[str] = []
    for name, value in namespace.items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if name in BY_NAME:  # (a class too: Gunicorn takes `worker_class = UvicornWorker`)
            if name == "config":
                continue  # a file cannot name another file (as Gunicorn)
            if value is not None:
                found[name] = value
            elif name == "accesslog":  # (tiangolo's images: ACCESS_LOG="" gives None: off)
                found[name] = "none"
            continue
        if isinstance(value, type):
            continue  # a class the file defines or imports (a logger subclass...)
        unknown.append(name)
    names = [n for n in BY_NAME if n not in namespace]
    hooks = [n for n in HOOK_NAMES if n not in namespace]
    for name in unknown:
        if name != name.lower():  # a constant or a class (TIMEOUT = 5): no setting's shape
            continue
        value = namespace[name]
        pool = hooks if callable(value) else names
        flag_of = _FLAG_NAMES.get(name)  # preload = True: the flag's name, not the setting's
        close = ([flag_of] if flag_of in names else
                 difflib.get_close_matches(name, pool, n=1, cutoff=0.85))
        if close:
            raise ConfigError(f"{label}: unknown setting {name!r} (did you mean "
                              f"{close[0]!r}?)")
    return found

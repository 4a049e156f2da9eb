"""Value converters for the settings table (`berth/settings.py`).

Each turns a value from any source (the command line, an environment variable, a config file's
Python value) into the effective value, or raises `ValueError` whose text says what is
accepted (`Refused` for a value berth will not run with). The message that names the setting
and the source is made by `berth/config.py`.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any


class ConfigError(Exception):
    """A setting has a value berth cannot use: the message names it and what is accepted."""


def number(kind: type, minimum: float, what: str) -> Callable[[Any], Any]:
    """A converter to `kind` (int or float) of at least `minimum`, finite; `what` is how the
    error names what is accepted."""

    def convert(value: Any):
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(what)  # (int() would cut `workers = cpus * 1.5` silently)
        try:
            n = kind(value)
        except (TypeError, ValueError):
            raise ValueError(what) from None
        if not n >= minimum or n == float("inf"):
            raise ValueError(what)
        return n

    return convert


positive_int = number(int, 1, "a whole number >= 1")
non_negative_int = number(int, 0, "a whole number >= 0")
non_negative_float = number(float, 0, "a number of seconds >= 0")
positive_seconds = number(float, 0.001, "a number of seconds >= 0.001")


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


def log_format(value: Any) -> str:
    word = str(value).strip().lower()
    if word not in ("text", "json"):
        raise ValueError("text or json")
    return word


def log_overflow(value: Any) -> str:
    word = str(value).strip().lower()
    if word not in ("drop", "block"):
        raise ValueError("drop or block")
    return word


def text(value: Any) -> str:
    """A string setting. A path object or a number is taken as its text; anything else
    (a list, a bool, a file object) is refused, as Gunicorn refuses it ("Not a string"),
    rather than used as its repr: `pythonpath = ["src", "lib"]` would otherwise add the
    directories "['src'" and " 'lib']"."""
    if isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ValueError("a string")


def env_pair(value: Any) -> str:
    if "=" not in str(value):
        raise ValueError("KEY=VALUE")
    return str(value)


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = str(value).strip().lower()
    if word in ("1", "true", "yes", "on", "y"):
        return True
    if word in ("0", "false", "no", "off", "n", ""):
        return False
    raise ValueError("true or false (1/0, yes/no, on/off)")


def worker_count_or_auto(value: Any) -> int | str:
    """A count >= 1 or `auto`. A count above berth's maximum (128) is not an error here: a
    copied `cpu_count() * 2 + 1` on a big host is lowered to the maximum, with a warning, by
    `sizing.plan` (and is usually overridden by the command line anyway)."""
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        return positive_int(value)
    except ValueError as exc:
        raise ValueError(f"{exc}, or auto") from None


def threads_or_auto(value: Any) -> int | str:
    if str(value).strip().lower() == "auto":
        return "auto"
    try:
        return positive_int(value)
    except ValueError:
        raise ValueError("a whole number >= 1, or auto") from None


def octal_mask(value: Any) -> int:
    """`0o22`, `022`, `"0022"`, `18` → 18 (what os.umask takes)."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        word = str(value).strip().lower()
        try:
            n = int(word, 0) if word.startswith("0x") or word.startswith("0o") else \
                int(word, 8) if word.startswith("0") and len(word) > 1 else int(word)
        except ValueError:
            raise ValueError("a file mode mask such as 0o22, 022 or 18") from None
    if not 0 <= n <= 0o777:
        raise ValueError("a file mode mask from 0 to 0o777")
    return n


def anything(value: Any) -> Any:
    return value


def optional_text(value: Any) -> str | None:
    return None if value is None else str(value)


def statsd_address(value: Any) -> str | None:
    """HOST:PORT (a port of 1 to 65535; 8125 when there is none), or unix:PATH / a path:
    checked here (berth.statsd.parse_address), where berth.statsd would fail at its first
    datagram."""
    if value is None:
        return None
    from berth.statsd import parse_address

    text = str(value).strip()
    try:
        parse_address(text)
    except ValueError:
        raise ValueError("HOST:PORT with a port of 1 to 65535, or unix:PATH") from None
    return text


class Refused(ValueError):
    """A value berth will not run with: ignoring it would change security or meaning.

    The message is a whole sentence (what is not supported and what to do instead)."""


def refuse_unless(harmless: Callable[[Any], bool], reason: str) -> Callable[[Any], Any]:
    """A converter accepting only values that change nothing (a copied config file often
    spells out Gunicorn's defaults); anything else is refused with `reason`."""

    def convert(value: Any) -> Any:
        if harmless(value):
            return value
        raise Refused(reason)

    return convert


def refuse_if_on(reason: str) -> Callable[[Any], bool]:
    """A boolean setting berth accepts only off (Gunicorn's default); on is refused."""

    def convert(value: Any) -> bool:
        if boolean(value):
            raise Refused(reason)
        return False

    return convert


def header_map(value: Any) -> str:
    word = str(value).strip().lower()
    if word not in ("drop", "refuse", "dangerous"):
        raise ValueError("drop, refuse or dangerous")
    return word


def cert_reqs(value: Any) -> int:
    """0, 1, 2 or ssl's names (CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED)."""
    names = {"CERT_NONE": 0, "CERT_OPTIONAL": 1, "CERT_REQUIRED": 2}
    word = str(getattr(value, "name", value)).strip().upper().removeprefix("VERIFYMODE.")
    if word in names:
        return names[word]
    try:
        n = int(word)
    except ValueError:
        n = -1
    if n not in (0, 1, 2):
        raise ValueError("0 (none), 1 (optional) or 2 (required)")
    return n


def address_list(value: Any) -> str:
    """`forwarded_allow_ips`, `proxy_allow_ips`: addresses, CIDR networks or `*`, checked here
    (berth/trust.py reads them) and kept as the comma-separated text Gunicorn shows."""
    from berth.trust import TrustList

    items = [value] if isinstance(value, str) else list(value or ())
    try:
        TrustList.parse(items, "")
    except ValueError as exc:
        detail = str(exc).split(": ", 1)[-1]
        raise ValueError(f"IP addresses, CIDR networks or '*', comma-separated ({detail})") \
            from None
    return ",".join(str(item) for item in items)


def listen_address(value: Any) -> str:
    """`admin_bind`: one address to listen on, HOST:PORT, [IPv6]:PORT or unix:PATH, checked as
    `--bind` checks its addresses (berth/sockets.py) but without fd://N, which names a socket
    handed over for the app's traffic."""
    from berth.sockets import BindError, parse_bind

    text = str(value).strip()
    accepted = "HOST:PORT, [IPv6]:PORT or unix:PATH"
    if not text or text.startswith("fd://"):
        raise ValueError(accepted)
    try:
        parse_bind(text)
    except BindError as exc:
        detail = str(exc).split(": ", 1)[-1]  # (parse_bind names --bind: keep its reason)
        raise ValueError(accepted if detail.startswith("expected") else
                         f"{accepted} ({detail})") from None
    return text


def proxy_protocol(value: Any) -> str:
    """Gunicorn's modes (24.1+): off, v1, v2, auto; true/1 mean auto, false/0/none off."""
    if value is True:
        return "auto"
    if is_off(value):
        return "off"
    word = str(value).strip().lower()
    if word in ("true", "1", "yes", "on"):
        return "auto"
    if word not in ("v1", "v2", "auto"):
        raise ValueError("off, v1, v2 or auto")
    return word


def scheme_headers(value: Any) -> dict:
    """`secure_scheme_headers`: {header name: the exact value that means HTTPS}."""
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError("a dict of header names to values, both strings, such as "
                         "{'X-FORWARDED-PROTO': 'https'}")
    return {k.strip().upper(): v for k, v in value.items()}


def name_list(value: Any) -> list:
    """`forwarder_headers`: header names, comma-separated (or a list), kept upper-case."""
    items = value.split(",") if isinstance(value, str) else list(value or ())
    return [str(item).strip().upper() for item in items if str(item).strip()]


GUNICORN_LOGGER = "gunicorn.glogging.Logger"
# What Gunicorn's logger_class resolves to its own loggers: "simple" is its alias for the
# default (Config.logger_class), and its StatsD logger is the class it switches the default
# to when statsd_host is set (without it, that class logs as the default and sends nothing):
# berth's logs and its --statsd-host do what they do
GUNICORN_LOGGERS = (GUNICORN_LOGGER, "glogging.Logger", "simple",
                    "gunicorn.instrument.statsd.Statsd", "instrument.statsd.Statsd")


def is_default_logger(value: Any) -> bool:
    if value is None or value == "":
        return True
    if not isinstance(value, str):
        value = class_path(value)
    return value.strip() in GUNICORN_LOGGERS


def gunicorn_control_socket() -> str:
    """Gunicorn's default control socket path (what a copied config may spell out)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return os.path.join(runtime, "gunicorn.ctl")
    return os.path.join(os.path.expanduser("~"), ".gunicorn", "gunicorn.ctl")


def is_no_control_socket(value: Any) -> bool:
    return value is None or value == "" or str(value) == gunicorn_control_socket()


def is_off(value: Any) -> bool:
    return value is None or value is False or str(value).strip().lower() in (
        "", "off", "false", "none", "0", "no")


def is_falsy(value: Any) -> bool:
    return not value


SYNC_CLASSES = ("sync", "egg:gunicorn#sync", "gunicorn.workers.sync.SyncWorker")
GTHREAD_CLASSES = ("gthread", "egg:gunicorn#gthread", "gunicorn.workers.gthread.ThreadWorker")


ASGI_CLASSES = ("asgi", "egg:gunicorn#asgi", "gunicorn.workers.gasgi.ASGIWorker")
# served by berth's ASGI worker, with an info line saying so
UVICORN_CLASSES = ("uvicorn.workers.UvicornWorker", "uvicorn.workers.UvicornH11Worker",
                   "uvicorn_worker.UvicornWorker", "uvicorn_worker.UvicornH11Worker")


def class_path(value: Any) -> str:
    """A class given as an object (a config file's `worker_class = ThreadWorker`): its dotted
    path, as a string names it."""
    return f"{getattr(value, '__module__', '')}.{getattr(value, '__qualname__', repr(value))}"


def worker_class_name(value: Any) -> str:
    """A worker class as its name: a string stripped, or a class object (a config file's
    `worker_class = UvicornWorker`, which Gunicorn takes) as its import path, the one its
    package exports when that is a known one (uvicorn_worker.UvicornWorker, defined in a
    submodule)."""
    if isinstance(value, str):
        return value.strip()
    if not isinstance(value, type):
        return repr(value)
    path = class_path(value)
    exported = f"{value.__module__.partition('.')[0]}.{value.__qualname__}"
    known = SYNC_CLASSES + GTHREAD_CLASSES + ASGI_CLASSES + UVICORN_CLASSES
    return exported if path not in known and exported in known else path


def worker_class(value: Any) -> str:
    name = worker_class_name(value)
    if name in SYNC_CLASSES:
        return "sync"
    if name in GTHREAD_CLASSES:
        return "gthread"
    if name in ASGI_CLASSES or name in UVICORN_CLASSES:
        return "asgi"
    raise Refused(f"berth runs WSGI apps with its sync or gthread workers and ASGI apps with "
                  f"its asgi worker, not {name!r} (its event loops already keep slow clients "
                  f"off the app); use -k gthread (or -k sync) for WSGI, -k asgi for ASGI")


def asgi_loop(value: Any) -> str:
    word = str(value).strip().lower()
    if word not in ("auto", "asyncio", "uvloop"):
        raise ValueError("auto, asyncio or uvloop")
    if word == "uvloop":
        import importlib.util

        if importlib.util.find_spec("uvloop") is None:
            raise Refused("--asgi-loop uvloop: uvloop is not installed (pip install uvloop), "
                          "or use auto (uvloop when installed) or asyncio")
    return word


def asgi_lifespan(value: Any) -> str:
    word = str(value).strip().lower()
    if word not in ("auto", "on", "off"):
        raise ValueError("auto, on or off")
    return word


def _is_current(value: Any, lookup: Callable[[str], int], current: int) -> bool:
    """Unset, or the id (a number or a name `lookup` resolves) berth already runs as."""
    if value is None or value == "":
        return True
    try:
        wanted = int(value) if str(value).isdigit() else lookup(str(value))
    except (KeyError, ValueError):
        return False
    return wanted == current


def is_current_user(value: Any) -> bool:
    """Harmless --user: unset, or the user berth already runs as (a Dockerfile USER)."""
    import pwd

    return _is_current(value, lambda name: pwd.getpwnam(name).pw_uid, os.geteuid())


def is_current_group(value: Any) -> bool:
    """Harmless --group: unset, or the group berth already runs as."""
    import grp

    return _is_current(value, lambda name: grp.getgrnam(name).gr_gid, os.getegid())


def reload_engine(value: Any) -> str:
    """auto, poll or inotify, as in Gunicorn; inotify only where the kernel offers it (Gunicorn
    refuses it without its inotify package; berth needs no package, only Linux)."""
    word = str(value).strip().lower()
    if word not in ("auto", "poll", "inotify"):
        raise ValueError("one of auto, poll, inotify")
    if word == "inotify":
        from berth.reloader import inotify_unavailable

        why = inotify_unavailable()
        if why:
            raise Refused(f"inotify is not available here ({why}); use --reload-engine poll "
                          f"(or auto, which polls then)")
    return word


def hook(name: str) -> Callable[[Any], Callable]:
    def convert(value: Any) -> Callable:
        from berth.hooks import validate_hook

        return validate_hook(name, value)

    convert.__name__ = f"hook_{name}"
    return convert


# -- syslog (Gunicorn's forms) ----------------------------------------------------------------

SYSLOG_FACILITIES = {
    "auth": 4, "authpriv": 10, "cron": 9, "daemon": 3, "ftp": 11, "kern": 0, "lpr": 6,
    "mail": 2, "news": 7, "security": 4, "syslog": 5, "user": 1, "uucp": 8,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20, "local5": 21,
    "local6": 22, "local7": 23,
}


def syslog_facility(value: Any) -> str:
    """The `syslog_facility` converter: one of Gunicorn's names."""
    name = str(value).strip().lower()
    if name not in SYSLOG_FACILITIES:
        raise ValueError(", ".join(sorted(SYSLOG_FACILITIES)))
    return name


def syslog_address(value: Any) -> str:
    """The `syslog_addr` converter: checked here, parsed by `parse_syslog_address`."""
    parse_syslog_address(str(value))
    return str(value)


def parse_syslog_address(addr: str) -> tuple[int | None, Any]:
    """Gunicorn's forms: `udp://HOST:PORT`, `tcp://HOST:PORT` (port 514 by default),
    `unix://PATH`, `unix://PATH#dgram` or `#stream`: (socket type or None, address)."""
    if addr.startswith("unix://"):
        path, _, kind = addr[len("unix://"):].partition("#")
        if not path or kind not in ("", "dgram", "stream"):
            raise ValueError("unix://PATH, unix://PATH#dgram or unix://PATH#stream")
        kinds = {"dgram": socket.SOCK_DGRAM, "stream": socket.SOCK_STREAM}
        return kinds.get(kind), path
    scheme, _, rest = addr.partition("://")
    kind = {"udp": socket.SOCK_DGRAM, "tcp": socket.SOCK_STREAM}.get(scheme)
    if kind is None:
        raise ValueError("udp://HOST:PORT, tcp://HOST:PORT or unix://PATH")
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else ""
    else:
        host, _, port = rest.partition(":")
    if port and not port.isdigit() or port and not 0 < int(port) < 65536:
        raise ValueError(f"{port!r} is not a port number")
    return kind, ((host or "localhost").lower(), int(port or 514))

"""The effective configuration: every source read, layered, checked, and the decisions made.

Where a value comes from, lowest precedence first (each source replaces the one before):

1. the default (`WEB_CONCURRENCY`, when set, is the default for `workers`, as in Gunicorn);
2. the config file: `-c FILE`, `-c python:MODULE`, else `./berth.conf.py` or
   `./gunicorn.conf.py` when present in the current directory (`configfile.py`);
3. `GUNICORN_CMD_ARGS`, then `BERTH_CMD_ARGS` (flags, as on the command line);
4. `BERTH_<SETTING>` variables (`BERTH_WORKERS=4`, `BERTH_BIND=0.0.0.0:8000`);
5. the command line.

The source of every value is kept (`Config.sources`) for `--print-config` and `berth doctor`.
What depends on where berth runs (the bind when none is given, the auto sizing, the memory
rule, the shutdown defaults) is decided once by `decide()` into `Config.decisions`, each with
its reason; the settings then hold the numbers chosen, with the source `auto`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import sys
import textwrap
from typing import Any

from berth import __version__, configfile
from berth.container import default_bind
from berth.converters import UVICORN_CLASSES, ConfigError, Refused, worker_class_name
from berth.loader import AppSpecError, parse_app_uri
from berth.settings import (
    BERTH_ONLY,
    BY_NAME,
    IMPLEMENTED,
    NOT_NEEDED,
    REFUSED,
    SETTINGS,
    Setting,
)
from berth.sockets import BindError, parse_bind


def check_reload(cfg: Config, cwd: str) -> None:
    """--reload's rules across settings, once every source is applied: not with --preload
    (the app would be imported once, in the master, so new workers would fork the old code;
    Gunicorn documents the two as incompatible); extra files made absolute against the launch
    directory `cwd` (as Gunicorn: not against --chdir), a plain path that does not exist
    refused as Gunicorn refuses it, a glob that matches nothing yet only warned about."""
    if not cfg.reload:
        return
    if cfg.preload_app:
        raise ConfigError(f"{_label(BY_NAME['reload'], cfg.source('reload'))} cannot be used "
                          f"with {_label(BY_NAME['preload_app'], cfg.source('preload_app'))}: "
                          f"a preloaded app is imported once, in the master, so new workers "
                          f"would run the old code; drop --preload while developing")
    from berth.reloader import is_glob

    setting = BY_NAME["reload_extra_files"]
    entries = []
    for entry in cfg.reload_extra_files or ():
        path = os.path.join(cwd, entry)
        if is_glob(entry):
            import glob

            if not glob.glob(path, recursive=True):
                cfg.notices.append(("warning", f"{_label(setting, cfg.source(setting.name))}: "
                                               f"{entry!r} matches no file yet"))
        elif not os.path.exists(path):
            raise ConfigError(f"{_label(setting, cfg.source(setting.name))}: {entry!r} does not "
                              f"exist")
        entries.append(os.path.normpath(path))
    if entries:
        cfg.values["reload_extra_files"] = entries


def _label(setting: Setting, source: str) -> str:
    """Where a value came from, as a message names it."""
    kind, _, detail = source.partition(" ")
    if kind == "file":
        return f"{detail}: {setting.name}"
    if kind == "env" and detail in ("GUNICORN_CMD_ARGS", "BERTH_CMD_ARGS"):
        return f"{detail}: {setting.flag} ({setting.name})"
    if kind == "env":
        return f"{detail} ({setting.name})"
    if setting.flags:
        return f"{setting.flag} ({setting.name})"
    return setting.name


def convert_value(setting: Setting, value: Any, source: str = "cli") -> Any:
    """`value` from `source` → the effective value, or ConfigError naming the setting, the
    value and what is accepted."""
    try:
        if setting.action == "append":
            try:
                items = [value] if isinstance(value, str) else list(value)
            except TypeError:  # (a number, None: not a list of anything)
                raise ValueError(f"a string or a list of strings ({setting.metavar or 'text'}"
                                 f"{', e.g. 127.0.0.1:8000' if setting.name == 'bind' else ''})"
                                 ) from None
            return [setting.convert(v) for v in items]
        return setting.convert(value)
    except Refused as exc:
        raise ConfigError(f"{_label(setting, source)} = {value!r}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{_label(setting, source)}: invalid value {value!r}; expected "
                          f"{exc}") from None


@dataclasses.dataclass
class Config:
    """The effective configuration: one attribute per `Setting`, plus the app spec.

    `sources[name]` says where each value came from: `default`, `file PATH`, `env VAR`
    (`env BERTH_WORKERS`, `env GUNICORN_CMD_ARGS`...), `cli` or `auto` (decided at start:
    `decisions` says why). `notices` are (level, line) pairs to log at start.
    """

    app_uri: str = ""
    values: dict = dataclasses.field(default_factory=dict)
    sources: dict = dataclasses.field(default_factory=dict)
    notices: list = dataclasses.field(default_factory=list)
    decisions: Decisions = dataclasses.field(default_factory=lambda: Decisions())
    # the Uvicorn worker class the worker_class setting names ('' for any other): berth's ASGI
    # worker serves it, reading proxy headers as Uvicorn does (see uvicorn_worker_rules)
    uvicorn_worker: str = ""

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

    def set(self, name: str, value: Any, source: str = "cli") -> None:
        self.values[name] = convert_value(BY_NAME[name], value, source)
        self.sources[name] = source
        if name == "worker_class":
            given = worker_class_name(value)
            self.uvicorn_worker = given if given in UVICORN_CLASSES else ""

    def source(self, name: str) -> str:
        return self.sources.get(name, "default")

    def is_set(self, name: str) -> bool:
        """Given by some source (not left at its default)."""
        return self.source(name) != "default"

    # -- what Gunicorn's Config offers hooks besides the settings (server.cfg, worker.cfg) --

    @property
    def settings(self) -> dict[str, BoundSetting]:
        """Gunicorn's `cfg.settings`: each setting by name, with its `.value` (and `.get()`)
        in this configuration, besides its definition (`.default`, `.flags`...)."""
        return {name: BoundSetting(setting, self) for name, setting in BY_NAME.items()}

    @property
    def worker_class_str(self) -> str:
        return self.uvicorn_worker or str(self.worker_class)

    @property
    def address(self) -> list:
        """The binds as Gunicorn parses them: (host, port) tuples, unix socket paths, fd
        numbers."""
        from berth.hooks import gunicorn_address

        return [gunicorn_address(bind) for bind in self.bind]

    @property
    def is_ssl(self) -> bool:
        return bool(self.certfile or self.keyfile)

    @property
    def ssl_options(self) -> dict:
        return {name: getattr(self, name) for name in (
            "keyfile", "certfile", "ssl_version", "cert_reqs", "ca_certs",
            "suppress_ragged_eofs", "do_handshake_on_connect", "ciphers")}

    @property
    def proc_name(self) -> str | None:
        """Gunicorn's `cfg.proc_name`: --name, else default_proc_name."""
        return self.values.get("proc_name") or self.default_proc_name

    @property
    def default_proc_name(self) -> str | None:
        """Gunicorn sets it to the app spec as it loads the app (a config file may set it)."""
        return self.values.get("default_proc_name") or self.app_uri or None

    @property
    def env(self) -> dict:
        """`--env KEY=VALUE` (raw_env) as a dict, as Gunicorn's `cfg.env`."""
        return dict(pair.split("=", 1) for pair in self.raw_env or ())

    @property
    def uid(self) -> int:  # (berth refuses --user: the process's own)
        return os.geteuid()

    @property
    def gid(self) -> int:  # (berth refuses --group)
        return os.getegid()


class BoundSetting:
    """A setting's definition and its value in one Config (`Config.settings`), as
    Gunicorn's Setting objects give both."""

    __slots__ = ("_setting", "_cfg")

    def __init__(self, setting: Setting, cfg: Config):
        self._setting = setting
        self._cfg = cfg

    @property
    def value(self) -> Any:
        return getattr(self._cfg, self._setting.name)

    def get(self) -> Any:
        return self.value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._setting, name)


# -- reading the sources ------------------------------------------------------------------------

CMD_ARGS_VARS = ("GUNICORN_CMD_ARGS", "BERTH_CMD_ARGS")  # lowest precedence first
USAGE_NO_APP = "no app given: berth [options] MODULE:NAME"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse would print usage too)
        raise ConfigError(message)


def _epilog() -> str:
    def flags(title: str, status: str) -> str:
        names = ", ".join(s.flag for s in SETTINGS if s.status == status and s.flags)
        return textwrap.fill(f"{title}: {names}", 79, initial_indent="  ",
                             subsequent_indent="    ", break_on_hyphens=False)

    about = textwrap.fill(
        "Settings also come from a config file (-c FILE, -c python:MODULE, else "
        "./berth.conf.py or ./gunicorn.conf.py), GUNICORN_CMD_ARGS, BERTH_CMD_ARGS and "
        "BERTH_<SETTING> variables, in that order of precedence, all below the command "
        "line. Gunicorn's other flags are accepted too (see docs/settings.md):", 79)
    return "\n".join([
        "commands:",
        "  berth doctor [options] [MODULE:NAME]   explain the environment, the effective",
        "                                         configuration and what to fix",
        "  berth check [URL] [options]            exit 0 when URL (default: the admin /readyz,",
        "                                         else the ready path on the first --bind)",
        "                                         answers 2xx",
        "  berth top [URL] [options]              the admin listener's /status (default:",
        "                                         on --admin-bind), live in a terminal",
        "", about,
        flags("not needed with berth (an info line)", NOT_NEEDED),
        flags("refused unless they change nothing (exit 2)", REFUSED)])


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="berth", description="A pre-fork WSGI HTTP server built for "
                     "containers; accepts Gunicorn's flags and config files.",
                     epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("app", metavar="MODULE:NAME", nargs="?",
                        help="the WSGI app, e.g. myproject.wsgi:application or app:create_app()")
    parser.add_argument("-v", "--version", action="version", version=f"berth {__version__}")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for setting in SETTINGS:
        if not setting.flags:
            continue
        shown = setting.status in (IMPLEMENTED, BERTH_ONLY)
        target = parser
        if shown:
            target = groups.get(setting.section) or groups.setdefault(
                setting.section, parser.add_argument_group(setting.section.lower()))
        kwargs: dict = {"dest": setting.name, "default": None,
                        "help": setting.help if shown else argparse.SUPPRESS}
        if setting.action in ("store_true", "store_false"):
            kwargs["action"] = setting.action
        else:
            kwargs["metavar"] = setting.metavar
            if setting.action == "append":
                kwargs["action"] = "append"
            elif setting.action == "optional":
                kwargs["nargs"] = "?"
                kwargs["const"] = setting.const
        target.add_argument(*setting.flags, **kwargs)
    return parser


# --- reading the sources ----------------------------------------------------------------------

def _given(args: argparse.Namespace) -> dict:
    """The settings a parsed command line names (the app as `wsgi_app`)."""
    out = {s.name: getattr(args, s.name) for s in SETTINGS
           if s.flags and getattr(args, s.name, None) is not None}
    if args.app:
        out["wsgi_app"] = args.app
    return out


def _parse_cmd_args(parser: argparse.ArgumentParser, environ, var: str) -> dict:
    text = environ.get(var, "")
    if not text.strip():
        return {}
    try:
        return _given(parser.parse_args(shlex.split(text)))
    except ValueError as exc:  # shlex: no closing quotation
        raise ConfigError(f"{var}: {exc}") from None
    except ConfigError as exc:
        raise ConfigError(f"{var}: {exc}") from None


def _split_env(setting: Setting, text: str) -> list[str]:
    if setting.name == "bind":
        return [p for p in re.split(r"[,\s]+", text) if p]
    return shlex.split(text)


def env_settings(environ) -> dict:
    """`BERTH_<SETTING>` variables: {name: raw value}. Empty variables count as unset."""
    out = {}
    for setting in SETTINGS:
        var = setting.env_var
        if var is None or var not in environ or not environ[var].strip():
            continue
        raw = environ[var]
        if setting.action == "append":
            try:
                out[setting.name] = _split_env(setting, raw)
            except ValueError as exc:
                raise ConfigError(f"{var}: {exc}") from None
        else:
            out[setting.name] = raw.strip()
    return out


def _apply(cfg: Config, given: dict, source: str) -> None:
    for name, value in given.items():
        cfg.set(name, value, source)


def parse_config(argv: list[str], environ=os.environ, cwd: str | None = None,
                 require_app: bool = True) -> Config:
    """argv + environment + config file → Config (raises ConfigError with a one-line message).

    `cwd` is the directory relative config paths and the auto-loaded files are looked up in
    (the launch directory: a SIGHUP reload after --chdir still finds them).
    """
    cwd = cwd or os.getcwd()
    parser = build_parser()
    cli = _given(parser.parse_args(argv))
    layers = [(f"env {var}", _parse_cmd_args(parser, environ, var)) for var in CMD_ARGS_VARS]
    env = env_settings(environ)

    cfg = Config()
    concurrency = environ.get("WEB_CONCURRENCY", "").strip()
    if concurrency:
        cfg.set("workers", concurrency, "env WEB_CONCURRENCY")

    location, source = None, ""
    for src, given in [("cli", cli), ("env BERTH_CONFIG", env), *reversed(layers)]:
        if given.get("config"):
            location, source = given["config"], src
            break
    if location is None:
        location, note = configfile.find_auto_config(cwd)
        source = "auto"
        if note:
            cfg.notices.append(("info", note))
    if location:
        if cwd not in sys.path:  # as Gunicorn: the config may import the project's modules
            sys.path.insert(0, cwd)
        path = location
        if not location.startswith("python:") and not os.path.isabs(location):
            path = os.path.join(cwd, location.removeprefix("file:"))
        label = location.removeprefix("file:")
        for name, value in configfile.settings_from_namespace(
                configfile.read_namespace(path, label), label).items():
            cfg.set(name, value, f"file {label}")
        cfg.values["config"] = location
        cfg.sources["config"] = source
        how = {"cli": "-c", "auto": "found in the current directory"}.get(source, source)
        cfg.notices.insert(0, ("info", f"configuration file {label} loaded ({how})"))

    for src, given in layers:
        _apply(cfg, given, src)
    for name, value in env.items():
        cfg.set(name, value, f"env {BY_NAME[name].env_var}")
    _apply(cfg, cli, "cli")
    if not cfg.is_set("sendfile") and "SENDFILE" in environ:  # as Gunicorn reads it
        cfg.set("sendfile", environ["SENDFILE"].strip().lower() in ("y", "1", "yes", "true"),
                "env SENDFILE")
    if not cfg.is_set("forwarded_allow_ips") and "FORWARDED_ALLOW_IPS" in environ:  # Gunicorn's
        cfg.set("forwarded_allow_ips", environ["FORWARDED_ALLOW_IPS"], "env FORWARDED_ALLOW_IPS")

    cfg.app_uri = cfg.wsgi_app or ""
    if cfg.app_uri:
        try:
            parse_app_uri(cfg.app_uri)
        except AppSpecError as exc:
            raise ConfigError(str(exc)) from None
    elif require_app and not cfg.print_config:
        raise ConfigError(USAGE_NO_APP)
    if not cfg.bind:
        addr, why = default_bind(environ)
        cfg.values["bind"] = [addr]
        cfg.sources["bind"] = "auto"
        cfg.decisions.bind = why
    binds: dict[tuple, str] = {}  # the address bound -> the first --bind that names it
    for addr in cfg.bind:
        try:
            where = parse_bind(addr)
        except BindError as exc:
            raise ConfigError(str(exc)) from None
        if where in binds:  # (Gunicorn binds it twice: "Connection in use", exit 1)
            same = "is given twice" if addr == binds[where] else f"is {binds[where]} again"
            cfg.notices.append(("warning", f"--bind {addr} {same}: berth listens on it once"))
        else:
            binds[where] = addr
    if len(binds) < len(cfg.bind):
        cfg.values["bind"] = list(binds.values())
    check_reload(cfg, cwd)
    gunicorn_limit_caps(cfg)
    uvicorn_worker_rules(cfg)
    if cfg.worker_class == "asgi" and cfg.threads not in (1, "auto"):
        cfg.notices.append(("info", f"threads ({cfg.source('threads')}) does not apply to -k "
                                    f"asgi (one event loop per worker): 1"))
        cfg.values["threads"] = 1
    if cfg.worker_class == "asgi" and cfg.certfile and cfg.proxy_protocol != "off":
        raise ConfigError("--proxy-protocol with --certfile is not supported with -k asgi yet "
                          "(the PROXY header comes before the TLS handshake): use -k gthread, "
                          "or end TLS at the proxy")
    cfg.notices.extend(status_notices(cfg))
    return cfg


# Gunicorn's parser lowers a larger value of these to its maximum (http/message.py:
# MAX_REQUEST_LINE, MAX_HEADERS), so that a copied `--limit-request-line 16384` still means 8190
GUNICORN_LIMIT_CAPS = {"limit_request_line": 8190, "limit_request_fields": 32768}


def gunicorn_limit_caps(cfg: Config) -> None:
    """A request limit above Gunicorn's maximum is lowered to it, as Gunicorn's parser does
    (a request it would refuse must not reach the app under berth), with a warning."""
    for name, cap in GUNICORN_LIMIT_CAPS.items():
        value = cfg.values.get(name)
        if value is not None and value > cap:
            cfg.notices.append(("warning", f"{_label(BY_NAME[name], cfg.source(name))} = "
                                           f"{value}: above Gunicorn's maximum, {cap}, which "
                                           f"Gunicorn uses instead; so does berth"))
            cfg.values[name] = cap


def uvicorn_worker_rules(cfg: Config) -> None:
    """`-k uvicorn.workers.UvicornWorker` (or UvicornH11Worker, or uvicorn_worker's) is served
    by berth's ASGI worker, reading the headers as that worker does under Gunicorn, where
    Uvicorn parses the requests and Gunicorn's header_map does not apply.

    Header names with '_' reach the app in the scope's headers, as Uvicorn passes them (an
    ASGI header list keeps names as sent, so `X_Api_Key` cannot pass for `X-Api-Key` there as
    it does in a WSGI environ); berth's own reading of proxy headers still ignores them. An
    explicit header_map keeps berth's meaning.

    The proxy headers are read as that worker reads them under Gunicorn:
    UvicornWorker hands Gunicorn's forwarded_allow_ips to Uvicorn's Config (uvicorn/workers.py),
    whose proxy_headers is on by default, so ProxyHeadersMiddleware sets the scheme from
    X-Forwarded-Proto and the client from X-Forwarded-For, for a peer in that list (Uvicorn's
    rules: berth/forwarded.py). So here --forwarded-remote-addr is on, choosing the client as
    Uvicorn does, and X-Forwarded-Proto gives the scheme, as Uvicorn reads it. A setting given
    explicitly keeps its own meaning: --forwarded-remote-addr (on: berth's choice of the client;
    off: the peer stays) and secure_scheme_headers (Gunicorn's rule, with those headers).
    One info line says which."""
    name = cfg.uvicorn_worker
    if not name:
        return
    decisions = cfg.decisions
    if cfg.is_set("header_map"):
        names = f"header names with '_' as header_map ({cfg.source('header_map')}) says"
    else:
        decisions.underscore_names = "uvicorn"
        names = "header names with '_' reach the app, as Uvicorn passes them"
    decisions.websocket_unaccepted = 500  # (no setting chooses it: Uvicorn's, under its name)
    if cfg.is_set("secure_scheme_headers"):
        scheme = f"secure_scheme_headers ({cfg.source('secure_scheme_headers')}) set the scheme"
    else:
        decisions.scheme_rule = "uvicorn"
        scheme = "X-Forwarded-Proto sets the scheme"
    flag = _label(BY_NAME["forwarded_remote_addr"], cfg.source("forwarded_remote_addr"))
    if not cfg.is_set("forwarded_remote_addr"):
        cfg.values["forwarded_remote_addr"] = True
        cfg.sources["forwarded_remote_addr"] = "auto"
        decisions.client_rule = "uvicorn"
        decisions.proxy_headers = f"on under -k {name}, taking the client Uvicorn takes"
        client = ("X-Forwarded-For the client (--forwarded-remote-addr on, taking the "
                  "address Uvicorn takes)")
    elif cfg.forwarded_remote_addr:
        client = f"X-Forwarded-For or Forwarded the client, as {flag} picks it"
    else:
        client = f"the client stays the peer ({flag} is off)"
    cfg.notices.append(("info", f"-k {name} ({cfg.source('worker_class')}): served by berth's "
                                f"ASGI worker (-k asgi), with Uvicorn's proxy headers: from a "
                                f"peer in --forwarded-allow-ips, {scheme} and {client}; "
                                f"{names}"))


def status_notices(cfg: Config) -> list[tuple[str, str]]:
    """An info line for each Gunicorn setting given that berth does not need."""
    out = []
    for setting in SETTINGS:
        if setting.status != NOT_NEEDED or not cfg.is_set(setting.name):
            continue
        if cfg.values.get(setting.name) == setting.default:
            continue  # a copied config spelling out Gunicorn's default changes nothing
        named = f"{setting.name} ({setting.flag}, from {cfg.source(setting.name)})" \
            if setting.flags else f"{setting.name} (from {cfg.source(setting.name)})"
        out.append(("info", f"{named} is not needed with berth: {setting.note}"))
    return out


# --- values decided at start ------------------------------------------------------------------

# -- decisions: what depends on where berth runs ------------------------------------------------

DOCKER_STOP_WINDOW = 10.0  # `docker stop` default: SIGTERM, then SIGKILL 10 s later
K8S_STOP_WINDOW = 30.0  # terminationGracePeriodSeconds default
MASTER_MARGIN = 1.0  # the master needs about this long after the workers to exit cleanly
STOP_MARGIN = 2.0  # what the automatic graceful timeout leaves of the window: that, and slack


@dataclasses.dataclass
class Decisions:
    """What berth decided from where it runs (and, for the proxy headers, from the worker
    class), each with its reason: logged at start, shown by `--print-config` (beside the
    values, whose source is `auto`) and `berth doctor`."""

    bind: str = ""  # why this address, when no --bind was given
    sizing: str = ""  # the one start-up line of the sizing (workers and threads)
    sizing_warnings: tuple[str, ...] = ()
    auto_workers: int = 0  # what auto sizing chooses here (a configured count is held to it)
    workers_auto: bool = False  # the worker count is berth's: the memory cap may lower it
    shutdown: str = ""  # the SIGTERM plan: shutdown delay and graceful timeout, and why
    shutdown_warning: str = ""  # that plan outlasts the platform's stop window
    memory: str = ""  # why --max-worker-memory is what it is, when berth chose it
    # How a trusted proxy's headers are read (berth/forwarded.py): Gunicorn's scheme rule and
    # berth's choice of the client, or Uvicorn's, under its worker classes
    # (uvicorn_worker_rules: decided from the worker class, not from where berth runs).
    scheme_rule: str = "gunicorn"  # or "uvicorn": X-Forwarded-Proto as Uvicorn reads it
    client_rule: str = "berth"  # or "uvicorn": the X-Forwarded-For entry Uvicorn takes
    proxy_headers: str = ""  # why --forwarded-remote-addr is on, when berth turned it on
    # header names with '_': header_map's rule ("gunicorn"), or "uvicorn": in the ASGI scope
    underscore_names: str = "gunicorn"
    # a WebSocket app that returns without accepting: 403, as Gunicorn's ASGI worker, or 500
    # (and an error line), as Uvicorn
    websocket_unaccepted: int = 403

    def reason(self, name: str) -> str:
        """The reason behind an `auto` value of setting `name` ('' if none)."""
        return {"bind": self.bind, "workers": self.sizing, "threads": self.sizing,
                "graceful_timeout": self.shutdown, "shutdown_delay": self.shutdown,
                "max_worker_memory": self.memory,
                "forwarded_remote_addr": self.proxy_headers}.get(name, "")


def decide(cfg: Config, environ=os.environ, info=None) -> None:
    """The settings whose value depends on where berth runs: the auto sizing (and the
    memory cap's permission), the shutdown defaults (Kubernetes or not) and the memory rule.
    Each value goes into `cfg` with the source `auto`, its reason into `cfg.decisions`."""
    from berth import sizing
    from berth.container import detect

    if info is None:
        info = detect(environ=environ)
    decisions = cfg.decisions
    raw_workers, raw_threads = cfg.workers, cfg.threads
    plan = sizing.plan(info, raw_workers, raw_threads, workers_from=cfg.source("workers"),
                       threads_from=cfg.source("threads"),
                       worker_class=cfg.worker_class if cfg.is_set("worker_class") else "")
    for name, raw, value in (("workers", raw_workers, plan.workers),
                             ("threads", raw_threads, plan.threads)):
        cfg.values[name] = value
        if raw == "auto":
            cfg.sources[name] = "auto"
    decisions.sizing = plan.reason
    decisions.sizing_warnings = tuple(plan.warnings)
    decisions.auto_workers = plan.auto_workers
    decisions.workers_auto = raw_workers == "auto"

    in_k8s = bool(environ.get("KUBERNETES_SERVICE_HOST"))
    window = K8S_STOP_WINDOW if in_k8s else DOCKER_STOP_WINDOW
    place = (f"Kubernetes' {window:g} s termination grace period" if in_k8s else
             f"Docker's {window:g} s stop window, not in Kubernetes")
    if cfg.values.get("shutdown_delay") is None:
        cfg.values["shutdown_delay"] = 5.0 if in_k8s else 0.0
        cfg.sources["shutdown_delay"] = "auto"
    if cfg.values.get("graceful_timeout") is None:
        # what the window leaves after the shutdown delay (20 s and 8 s with the defaults'
        # delays), however long a delay is set
        left = window - cfg.shutdown_delay - STOP_MARGIN
        cfg.values["graceful_timeout"] = max(1.0, min(20.0 if in_k8s else 8.0, left))
        cfg.sources["graceful_timeout"] = "auto"
    takes = cfg.shutdown_delay + cfg.graceful_timeout
    fits = takes + MASTER_MARGIN <= window
    decisions.shutdown = (f"on SIGTERM: shutdown delay {cfg.shutdown_delay:g} s, graceful "
                          f"timeout {cfg.graceful_timeout:g} s "
                          f"({'inside' if fits else 'longer than'} {place})")
    decisions.shutdown_warning = "" if fits else (
        f"a stop may take {takes:g} s (shutdown delay + graceful timeout), longer than "
        f"{place.split(',')[0]}: requests still running then are cut off by SIGKILL "
        f"(`berth doctor` says how to fit)")

    if cfg.values.get("max_worker_memory") is None:
        cfg.sources["max_worker_memory"] = "auto"
        limit = info.memory_limit
        cfg.values["max_worker_memory"] = sizing.worker_memory_share(limit, cfg.workers)
        decisions.memory = (sizing.memory_rule(limit, cfg.workers) if limit else
                            "auto: off, no memory limit is known")


def load(argv: list[str], environ=os.environ, cwd: str | None = None,
         require_app: bool = True, info=None) -> Config:
    """Every source read and layered (`parse_config`), then the decisions made (`decide`):
    the Config a Master is started with."""
    cfg = parse_config(argv, environ, cwd, require_app)
    decide(cfg, environ, info)
    return cfg


# -- output -------------------------------------------------------------------------------------

def _show(value) -> str:
    if isinstance(value, type):  # (a config file's logger_class = Logger)
        return f"<class {value.__module__}.{value.__qualname__}>"
    if callable(value):
        name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
        return f"<function {name}>" if name else repr(value)
    return repr(value)


def config_rows(cfg: Config, everything: bool = False,
                reasons: bool = True) -> list[tuple[str, str, str]]:
    """(name, value, source) for every setting: the ones berth does not implement only when
    given, unless `everything`. With `reasons`, a value berth decided (`auto`) has its reason
    in the source column (`berth doctor` lists the decisions apart)."""
    rows = [("wsgi_app", _show(cfg.app_uri or None), cfg.source("wsgi_app"))]
    for setting in SETTINGS:
        name = setting.name
        if name in ("wsgi_app", "print_config", "check_config"):
            continue
        implemented = setting.status in (IMPLEMENTED, BERTH_ONLY)
        if not everything and not cfg.is_set(name) and (
                not implemented or setting.is_hook):
            continue
        source = cfg.source(name)
        if reasons and source == "auto" and cfg.decisions.reason(name):
            source = cfg.decisions.reason(name)
            if not source.startswith("auto"):
                source = f"auto: {source}"
        if not implemented:
            source += f"; berth: {setting.status}"
        # (the value given, not what a property makes of it: proc_name without --name is None)
        rows.append((name, _show(cfg.values.get(name, setting.default)), source))
    return rows


def render_config(cfg: Config, everything: bool = False) -> str:
    """`--print-config`: `name = value  # source`, one line per setting (the values are
    Python literals, as in a config file)."""
    rows = config_rows(cfg, everything)
    width = max(len(n) + len(v) for n, v, _ in rows) + 3
    return "\n".join(f"{f'{n} = {v}':<{width}}  # {s}" for n, v, s in rows)

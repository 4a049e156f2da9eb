"""`berth [options] MODULE:NAME` and `berth doctor`: the command line, built from `config.SETTINGS`.

Where a value comes from, lowest precedence first (each source replaces the one before):

1. the default (`WEB_CONCURRENCY`, when set, is the default for `workers`, as in Gunicorn);
2. the config file: `-c FILE`, `-c python:MODULE`, else `./berth.conf.py` or
   `./gunicorn.conf.py` when present in the current directory;
3. `GUNICORN_CMD_ARGS`, then `BERTH_CMD_ARGS` (flags, as on the command line);
4. `BERTH_<SETTING>` variables (`BERTH_WORKERS=4`, `BERTH_BIND=0.0.0.0:8000`);
5. the command line.

The source of every value is kept (`Config.sources`) for `--print-config` and `berth doctor`.
Values that depend on where berth runs (workers, threads, graceful timeout, bind...) are
resolved at start (`resolve_defaults`) and each decision is logged once with its reason.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import sys
import textwrap
import traceback

from berth import __version__, configfile
from berth.config import (
    BERTH_ONLY,
    BY_NAME,
    IMPLEMENTED,
    NOT_NEEDED,
    NOT_YET,
    REFUSED,
    SETTINGS,
    Config,
    ConfigError,
    Setting,
    check_reload,
)
from berth.container import default_bind
from berth.loader import AppSpecError, load_app, parse_app_uri
from berth.logs import setup_error_log
from berth.sockets import BindError, parse_bind

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
        "", about,
        flags("not needed with berth (an info line)", NOT_NEEDED),
        flags("not implemented yet (a warning)", NOT_YET),
        flags("refused unless they change nothing (exit 2)", REFUSED)])


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="berth", description="A pre-fork WSGI HTTP server built for "
                     "containers; accepts Gunicorn's flags and config files.",
                     epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("app", metavar="MODULE:NAME", nargs="?",
                        help="the WSGI app, e.g. myproject.wsgi:application or app:create_app()")
    parser.add_argument("--version", action="version", version=f"berth {__version__}")
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
        cfg.values["bind_reason"] = why
        cfg.sources["bind"] = "auto"
    for addr in cfg.bind:
        try:
            parse_bind(addr)
        except BindError as exc:
            raise ConfigError(str(exc)) from None
    check_reload(cfg, cwd)
    cfg.notices.extend(status_notices(cfg))
    return cfg


def status_notices(cfg: Config) -> list[tuple[str, str]]:
    """One line for each Gunicorn setting given that berth does not need or implement."""
    out = []
    for setting in SETTINGS:
        if setting.status not in (NOT_NEEDED, NOT_YET) or not cfg.is_set(setting.name):
            continue
        if cfg.values.get(setting.name) == setting.default:
            continue  # a copied config spelling out Gunicorn's default changes nothing
        named = f"{setting.name} ({setting.flag}, from {cfg.source(setting.name)})" \
            if setting.flags else f"{setting.name} (from {cfg.source(setting.name)})"
        if setting.status == NOT_NEEDED:
            out.append(("info", f"{named} is not needed with berth: {setting.note}"))
        else:
            out.append(("warning", f"{named} is not implemented in berth yet and is "
                                   f"ignored: {setting.note}"))
    return out


# --- values decided at start ------------------------------------------------------------------

def resolve_defaults(cfg: Config, environ=os.environ, info=None) -> None:
    """Settings whose default depends on where berth runs (each logged with its reason)."""
    from berth import sizing
    from berth.container import detect

    if info is None:
        info = detect(environ=environ)
    raw_workers, raw_threads = cfg.workers, cfg.threads
    decision = sizing.plan(info, raw_workers, raw_threads,
                           workers_from=cfg.source("workers"),
                           threads_from=cfg.source("threads"),
                           worker_class=cfg.worker_class if cfg.is_set("worker_class") else "")
    cfg.values["workers"] = decision.workers
    cfg.values["threads"] = decision.threads
    cfg.values["workers_auto"] = raw_workers == "auto"  # the memory cap may lower it
    cfg.values["auto_workers"] = decision.auto_workers
    cfg.values["sizing_reason"] = decision.reason
    for name, raw in (("workers", raw_workers), ("threads", raw_threads)):
        if raw == "auto":
            cfg.sources[name] = "auto"
    cfg.values["sizing_warnings"] = list(decision.warnings)

    in_k8s = bool(environ.get("KUBERNETES_SERVICE_HOST"))
    where = ("in Kubernetes: inside its 30 s termination grace period" if in_k8s else
             "not in Kubernetes: inside Docker's 10 s stop window")
    if cfg.values.get("graceful_timeout") is None:
        cfg.values["graceful_timeout"] = 20.0 if in_k8s else 8.0
        cfg.sources["graceful_timeout"] = "auto"
    if cfg.values.get("shutdown_delay") is None:
        cfg.values["shutdown_delay"] = 5.0 if in_k8s else 0.0
        cfg.sources["shutdown_delay"] = "auto"
    cfg.values["shutdown_reason"] = (f"on SIGTERM: shutdown delay {cfg.shutdown_delay:g} s, "
                                     f"graceful timeout {cfg.graceful_timeout:g} s ({where})")
    if cfg.values.get("max_worker_memory") is None:
        limit = info.memory_limit
        cfg.sources["max_worker_memory"] = "auto"
        if limit:
            share = int(limit * 0.9 / (cfg.workers + 1))
            cfg.values["max_worker_memory"] = share
            cfg.values["memory_reason"] = (f" (auto: 90% of the {limit >> 20} MiB memory limit "
                                           f"shared by {cfg.workers} workers + 1 replacement)")
        else:
            cfg.values["max_worker_memory"] = 0


def load_config(argv: list[str], environ=os.environ, cwd: str | None = None,
                require_app: bool = True, info=None) -> Config:
    """parse_config + resolve_defaults: the Config a Master is started with."""
    cfg = parse_config(argv, environ, cwd, require_app)
    resolve_defaults(cfg, environ, info)
    return cfg


def prepare_environment(cfg: Config) -> None:
    """--chdir, --pythonpath, --env: applied before the app is imported."""
    if cfg.chdir:
        try:
            os.chdir(cfg.chdir)
        except OSError as exc:
            raise ConfigError(f"--chdir: cannot change to {cfg.chdir!r}: {exc.strerror}") from None
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    if cfg.pythonpath:
        for path in reversed([p.strip() for p in cfg.pythonpath.split(",") if p.strip()]):
            sys.path.insert(0, os.path.abspath(path))
    for pair in cfg.raw_env or ():
        key, _, value = pair.partition("=")
        os.environ[key.strip()] = value


# --- output -----------------------------------------------------------------------------------

def _show(value) -> str:
    if callable(value):
        name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
        return f"<function {name}>" if name else repr(value)
    return repr(value)


def config_rows(cfg: Config, everything: bool = False) -> list[tuple[str, str, str]]:
    """(name, value, source) for every setting: the ones berth does not implement only when
    given, unless `everything`."""
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
        if not implemented:
            source += f"; berth: {setting.status}"
        rows.append((name, _show(getattr(cfg, name)), source))
    return rows


def render_config(cfg: Config, everything: bool = False) -> str:
    """`--print-config`: `name = value  # source`, one line per setting (the values are
    Python literals, as in a config file)."""
    rows = config_rows(cfg, everything)
    width = max(len(n) + len(v) for n, v, _ in rows) + 3
    return "\n".join(f"{f'{n} = {v}':<{width}}  # {s}" for n, v, s in rows)


def starting_line() -> str:
    """The first line berth logs: what is starting (as Gunicorn's "Starting gunicorn 27.0.1")."""
    return (f"Starting berth {__version__} (Python {platform.python_version()}, "
            f"{platform.python_implementation()})")


def log_start(cfg: Config, log, levels=("info", "warning")) -> None:
    """The start-up lines: the config file, the Gunicorn settings berth ignores, then the
    sizing decision (exactly one line) and its warnings."""
    for level, line in cfg.notices:
        if level in levels:
            getattr(log, level)("%s", line)
    if "info" in levels and cfg.values.get("sizing_reason"):
        log.info("%s", cfg.sizing_reason)
    if "warning" in levels:
        for line in cfg.values.get("sizing_warnings", ()):
            log.warning("%s", line)


def check_app(cfg: Config, log) -> int:
    """--check-config: 0 when the app loads, 1 when it does not, 2 for a configuration error."""
    try:
        prepare_environment(cfg)
    except ConfigError as exc:
        print(f"berth: error: {exc}", file=sys.stderr)
        return 2
    try:
        load_app(cfg.app_uri)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the app's failure, reported
        sys.stderr.write(traceback.format_exc())
        log.error("the app %s failed to load: %s: %s", cfg.app_uri, type(exc).__name__, exc)
        return 1
    log.info("configuration OK; the app %s loads", cfg.app_uri)
    return 0


def _write_pidfile(path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def _remove_pidfile(path: str) -> None:
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return  # someone else's now
        os.unlink(path)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["doctor"]:
        from berth.doctor import main as doctor_main

        return doctor_main(argv[1:])
    launch_dir = os.getcwd()
    try:
        cfg = load_config(argv, cwd=launch_dir)
        if cfg.print_config:
            print(render_config(cfg))
            if not cfg.app_uri:
                return 0
        log = setup_error_log(cfg.errorlog, cfg.loglevel)
    except ConfigError as exc:
        print(f"berth: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"berth: error: --error-logfile: {exc}", file=sys.stderr)
        return 2
    if cfg.check_config or cfg.print_config:
        log_start(cfg, log)
        return check_app(cfg, log)
    log.info("%s", starting_line())
    log_start(cfg, log)
    try:
        prepare_environment(cfg)
    except ConfigError as exc:
        print(f"berth: error: {exc}", file=sys.stderr)
        return 2
    from berth.master import Master
    from berth.sockets import BindError as _BindError

    if cfg.values.get("bind_reason"):
        log.info("listening on %s: %s", cfg.bind[0], cfg.bind_reason)

    def reload_config() -> Config:
        """SIGHUP: the command line, environment and config file, read again."""
        new = load_config(argv, cwd=launch_dir)
        log_start(new, log, levels=("warning",))
        return new

    pidfile = cfg.pidfile
    try:
        if pidfile:
            try:
                _write_pidfile(pidfile)
            except OSError as exc:
                log.error("--pid %s: %s", pidfile, exc.strerror)
                return 2
        return Master(cfg, log, lambda: load_app(cfg.app_uri), reload_config).run()
    except _BindError as exc:
        log.error("%s", exc)
        return 1
    finally:
        if pidfile:
            _remove_pidfile(pidfile)

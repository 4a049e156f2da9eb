"""`berth [options] MODULE:NAME`: the command line, built from the settings in `config.py`."""

from __future__ import annotations

import argparse
import os
import sys

from berth import __version__
from berth.config import SETTINGS, Config, ConfigError
from berth.container import default_bind
from berth.loader import AppSpecError, load_app, parse_app_uri
from berth.logs import setup_error_log
from berth.sockets import BindError, parse_bind


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too)
        self.exit(2, f"berth: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="berth", description="A pre-fork WSGI HTTP server built for "
                     "containers; accepts Gunicorn's common flags.")
    parser.add_argument("app", metavar="MODULE:NAME", nargs="?",
                        help="the WSGI app, e.g. myproject.wsgi:application or app:create_app()")
    parser.add_argument("--version", action="version", version=f"berth {__version__}")
    for setting in SETTINGS:
        kwargs = {"dest": setting.name, "help": setting.help, "default": None}
        if setting.action == "store_true":
            kwargs["action"] = "store_true"
        else:
            kwargs["metavar"] = setting.metavar
            if setting.action:
                kwargs["action"] = setting.action
        parser.add_argument(*setting.flags, **kwargs)
    return parser


def parse_config(argv: list[str], environ=os.environ) -> Config:
    """argv → Config (raises ConfigError with a one-line message)."""
    args = build_parser().parse_args(argv)
    cfg = Config()
    for setting in SETTINGS:
        value = getattr(args, setting.name)
        if value is not None and value is not False:
            cfg.set(setting.name, value)
    if not args.app:
        raise ConfigError("no app given: berth [options] MODULE:NAME")
    try:
        parse_app_uri(args.app)
    except AppSpecError as exc:
        raise ConfigError(str(exc)) from None
    cfg.app_uri = args.app
    if not cfg.bind:
        addr, why = default_bind(environ)
        cfg.values["bind"] = [addr]
        cfg.values["bind_reason"] = why
    for addr in cfg.bind:
        try:
            parse_bind(addr)
        except BindError as exc:
            raise ConfigError(str(exc)) from None
    return cfg


def resolve_defaults(cfg: Config, environ=os.environ) -> None:
    """Settings whose default depends on where berth runs (each logged with its reason)."""
    in_k8s = bool(environ.get("KUBERNETES_SERVICE_HOST"))
    where = ("in Kubernetes: inside its 30 s termination grace period" if in_k8s else
             "not in Kubernetes: inside Docker's 10 s stop window")
    if cfg.values.get("graceful_timeout") is None:
        cfg.values["graceful_timeout"] = 20.0 if in_k8s else 8.0
    if cfg.values.get("shutdown_delay") is None:
        cfg.values["shutdown_delay"] = 5.0 if in_k8s else 0.0
    cfg.values["shutdown_reason"] = (f"on SIGTERM: shutdown delay {cfg.shutdown_delay:g} s, "
                                     f"graceful timeout {cfg.graceful_timeout:g} s ({where})")
    if cfg.values.get("max_worker_memory") is None:
        from berth.container import detect

        limit = detect(environ=environ).memory_limit
        if limit:
            share = int(limit * 0.9 / (cfg.workers + 1))
            cfg.values["max_worker_memory"] = share
            cfg.values["memory_reason"] = (f" (auto: 90% of the {limit >> 20} MiB memory limit "
                                           f"shared by {cfg.workers} workers + 1 replacement)")
        else:
            cfg.values["max_worker_memory"] = 0


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        cfg = parse_config(argv)
        resolve_defaults(cfg)
        log = setup_error_log(cfg.errorlog, cfg.loglevel)
        prepare_environment(cfg)
    except ConfigError as exc:
        print(f"berth: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"berth: error: --error-logfile: {exc}", file=sys.stderr)
        return 2
    from berth.master import Master
    from berth.sockets import BindError as _BindError

    if cfg.values.get("bind_reason"):
        log.info("listening on %s: %s", cfg.bind[0], cfg.bind_reason)
    try:
        def reload_config() -> Config:
            new = parse_config(argv)
            resolve_defaults(new)
            return new

        return Master(cfg, log, lambda: load_app(cfg.app_uri), reload_config).run()
    except _BindError as exc:
        log.error("%s", exc)
        return 1

"""`berth [options] MODULE:NAME`, `berth doctor`, `berth check` and `berth top`: parse the
command line and dispatch.

The configuration itself (every source, its precedence, the start-up decisions) is
`berth/config.py`'s; this module asks it for the Config, then runs what was asked: the
server (`Master`), `--print-config`, `--check-config`, `berth doctor`, `berth check` or
`berth top`.

`berth check` runs every few seconds as a HEALTHCHECK, so this module imports what the server
alone needs (logging, the master) only once it knows it serves.
"""

from __future__ import annotations

import os
import sys

from berth import __version__, proctitle
from berth.config import Config, ConfigError, load, render_config
from berth.loader import load_app


def env_of(cfg: Config) -> dict[str, str]:
    """--env (raw_env) as {KEY: VALUE} (its converter has checked that each pair has a '=')."""
    env = {}
    for pair in cfg.raw_env or ():
        key, _, value = pair.partition("=")
        env[key.strip()] = value
    return env


def restore_env(keys, launch_env: dict[str, str]) -> None:
    """Put the variables `keys` back as berth found them at launch: the value they had, or
    none (Gunicorn's reload does this for the keys of the old --env, with its env_orig)."""
    for key in keys:
        if key in launch_env:
            os.environ[key] = launch_env[key]
        else:
            os.environ.pop(key, None)


def launch_directory() -> str:
    """The directory berth is started in, named as the shell names it: $PWD when it is this
    directory (reached through a symlink such as /srv/current), else os.getcwd(). As
    Gunicorn's util.getcwd(): a SIGHUP after the symlink moved to a new release changes to
    the new release, not the old one os.getcwd() resolved the link to."""
    cwd = os.getcwd()
    pwd = os.environ.get("PWD", "")
    try:
        if pwd and os.path.isabs(pwd) and os.path.samefile(pwd, cwd):
            return os.path.normpath(pwd)
    except OSError:
        pass
    return cwd


def change_directory(cfg: Config, launch_dir: str) -> str:
    """--chdir (relative to the launch directory), or else the launch directory itself,
    changed to as soon as the configuration is read, at start and on each SIGHUP, before
    any file it names is opened. As in Gunicorn (whose configuration ends with this chdir):
    a relative error log, logging configuration, access log or pid file is in that
    directory, SIGUSR1 reopens the same file, and a SIGHUP after a deploy moved a symlink
    (--chdir /srv/current) loads the app from the new target. Returns the directory as
    named (through its symlinks), which goes on sys.path."""
    directory = os.path.normpath(os.path.join(launch_dir, cfg.chdir)) if cfg.chdir else \
        launch_dir
    try:
        os.chdir(directory)
    except OSError as exc:
        shown = cfg.chdir or directory
        raise ConfigError(f"--chdir: cannot change to {shown!r}: {exc.strerror}") from None
    return directory


def prepare_environment(cfg: Config, directory: str) -> None:
    """--pythonpath, --env: applied before the app is imported, in `directory` (the --chdir
    directory as change_directory() named it: sys.path keeps that name, so a symlink is
    followed again when new workers import the app)."""
    if directory not in sys.path:
        sys.path.insert(0, directory)
    if cfg.pythonpath:  # as Gunicorn: each entry in turn at the front, so the last one first
        for path in [p.strip() for p in cfg.pythonpath.split(",") if p.strip()]:
            path = os.path.abspath(path)
            if path not in sys.path:
                sys.path.insert(0, path)
    os.environ.update(env_of(cfg))
    if cfg.keyfile and not cfg.certfile:
        raise ConfigError("--keyfile (keyfile) needs --certfile (certfile): the certificate "
                          "chain to serve TLS with")
    if cfg.certfile:  # loaded once here, so that a bad file is one line and exit 2
        import ssl

        from berth.worker.tls import EncryptedKey, make_context

        try:
            make_context(cfg)
        except EncryptedKey as exc:
            flag, name = ("--keyfile", "keyfile") if cfg.keyfile else ("--certfile", "certfile")
            raise ConfigError(f"{flag} ({name}) {getattr(cfg, name)!r}: {exc}") from None
        except (OSError, ssl.SSLError, TypeError, ValueError) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError):
                # (OpenSSL's errno names no file: the one that cannot be read is named)
                for flag, name in (("--certfile", "certfile"), ("--keyfile", "keyfile"),
                                   ("--ca-certs", "ca_certs")):
                    path = getattr(cfg, name)
                    try:
                        if path:
                            with open(path, "rb"):
                                pass
                    except OSError as unreadable:
                        raise ConfigError(f"{flag} ({name}) {path!r}: cannot read it: "
                                          f"{unreadable.strerror}") from None
            key = f" with --keyfile (keyfile) {cfg.keyfile!r}" if cfg.keyfile else ""
            raise ConfigError(f"--certfile (certfile) {cfg.certfile!r}{key}: cannot make the "
                              f"TLS context: {exc}") from None


# --- output -----------------------------------------------------------------------------------

def starting_line() -> str:
    """The first line berth logs: what is starting (as Gunicorn's "Starting gunicorn 27.0.1")."""
    import platform

    return (f"Starting berth {__version__} (Python {platform.python_version()}, "
            f"{platform.python_implementation()})")


def log_start(cfg: Config, log, levels=("info", "warning")) -> None:
    """The start-up lines: the config file, the Gunicorn settings berth ignores, then the
    sizing decision (exactly one line) and its warnings."""
    for level, line in cfg.notices:
        if level in levels:
            getattr(log, level)("%s", line)
    decisions = cfg.decisions
    if "info" in levels and decisions.sizing:
        log.info("%s", decisions.sizing)
    if "warning" in levels:
        for line in decisions.sizing_warnings:
            log.warning("%s", line)
        if decisions.shutdown_warning:
            log.warning("%s", decisions.shutdown_warning)


def check_app(cfg: Config, log, directory: str) -> int:
    """--check-config: 0 when the app loads, 1 when it does not, 2 for a configuration error."""
    try:
        prepare_environment(cfg, directory)
    except ConfigError as exc:
        print(f"berth: error: {exc}", file=sys.stderr)
        return 2
    try:
        load_app(cfg.app_uri)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the app's failure, reported
        log.error("the app %s failed to load: %s: %s", cfg.app_uri, type(exc).__name__, exc,
                  exc_info=True)
        return 1
    log.info("configuration OK; the app %s loads", cfg.app_uri)
    return 0


def _write_pidfile(path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def _running_pid_in(path: str) -> int | None:
    """The pid a pid file names when that process is running and is not this one (Gunicorn's
    Pidfile.validate: a process it may not signal runs too), else None. Beyond Gunicorn, a
    process whose command line does not name berth is not taken for one: `docker restart`
    keeps the file, and its pid may be another process's in the new run (Gunicorn's "Already
    running on PID" that never clears)."""
    try:
        with open(path) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    if pid <= 0 or pid == os.getpid():
        return None
    try:
        os.kill(pid, 0)
    except PermissionError:
        pass
    except OSError:
        return None
    try:  # a container restarted keeps its files: the pid may be another program's now
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"berth" not in f.read():
                return None
    except OSError:
        pass
    return pid


def _remove_pidfile(path: str) -> None:
    try:
        with open(path) as f:
            if f.read().strip() != str(os.getpid()):
                return  # someone else's now
        os.unlink(path)
    except OSError:
        pass


def check_access_log(cfg, base: str) -> None:
    """A file access log is opened by each worker after fork: one that cannot be written
    must stop berth here with one line (as Gunicorn does), not make every worker die."""
    target = str(cfg.accesslog or "")
    if target.lower() in ("-", "none", "off", "") or not os.path.isdir(base):
        return
    path = os.path.join(base, target)  # (relative to --chdir, where the workers open it)
    try:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC))
        except FileNotFoundError:  # tried by making it, then left for the workers to make
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                                 0o644))
            except FileExistsError:
                return  # (made meanwhile: by an old generation's worker, on SIGHUP)
            os.unlink(path)  # (--check-config leaves no file behind)
    except OSError as exc:
        raise ConfigError(f"--access-logfile (accesslog): cannot write to {target!r}: "
                          f"{exc.strerror}") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["doctor"]:
        from berth.doctor import main as doctor_main

        return doctor_main(argv[1:])
    if argv[:1] == ["check"]:
        from berth.check import main as check_main

        return check_main(argv[1:])
    if argv[:1] == ["top"]:
        from berth.top import main as top_main

        return top_main(argv[1:])
    from berth import logconfig
    from berth.logs import setup_error_log

    launch_dir = launch_directory()
    try:
        cfg = load(argv, cwd=launch_dir)
        if cfg.print_config:
            print(render_config(cfg))
            if not cfg.app_uri:
                return 0
        app_dir = change_directory(cfg, launch_dir)
        log = setup_error_log(cfg.errorlog, cfg.loglevel, cfg.log_format)
        check_access_log(cfg, app_dir)
        if logconfig.wanted(cfg):  # Gunicorn's logging settings: berth logs where they say
            log = logconfig.apply(cfg, list(log.handlers)).error_log
    except ConfigError as exc:
        print(f"berth: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"berth: error: --error-logfile: {exc}", file=sys.stderr)
        return 2
    if cfg.check_config or cfg.print_config:
        log_start(cfg, log)
        return check_app(cfg, log, app_dir)
    proctitle.prepare()  # before --env changes the environment
    launch_env = dict(os.environ)  # (what SIGHUP restores the old --env keys to)
    applied = env_of(cfg)  # the --env variables set in the master, which workers inherit
    try:
        prepare_environment(cfg, app_dir)
    except ConfigError as exc:
        print(f"berth: error: {exc}", file=sys.stderr)
        return 2
    log.info("%s", starting_line())
    log_start(cfg, log)
    from berth.master import Master
    from berth.sockets import BindError as _BindError

    if cfg.decisions.bind and os.environ.get("LISTEN_PID") != str(os.getpid()):
        # (under systemd socket activation the master serves systemd's sockets instead)
        log.info("listening on %s: %s", cfg.bind[0], cfg.decisions.bind)

    def set_env(for_cfg: Config) -> None:
        """The master's environment (which new workers inherit) gets `for_cfg`'s --env: the
        keys of the --env set before go back to their value at launch (or away) first, as
        Gunicorn's reload does. Also when a held-back reload goes back to the old
        configuration (Master.hold_back): its workers must not start with the new --env."""
        nonlocal applied
        restore_env(applied, launch_env)
        applied = env_of(for_cfg)
        os.environ.update(applied)

    def reload_config() -> Config:
        """SIGHUP: the command line, environment and config file, read again (from the
        environment they were read from at start), the directory changed to again (a
        --chdir symlink a deploy moved: the new workers import the new release, as under
        Gunicorn), and the new --env set for the new workers (set_env)."""
        restore_env(applied, launch_env)
        before = os.getcwd()
        try:
            new = load(argv, cwd=launch_dir)
            directory = change_directory(new, launch_dir)
            check_access_log(new, directory)  # (one the workers cannot open: the old one kept)
        except BaseException:
            os.environ.update(applied)  # not reloaded: the old --env stays with the old config
            try:
                os.chdir(before)
            except OSError:
                pass
            raise
        if directory not in sys.path:
            sys.path.insert(0, directory)
        set_env(new)
        log_start(new, log, levels=("warning",))
        return new

    pidfile = cfg.pidfile
    if pidfile and (running := _running_pid_in(pidfile)):
        # (as Gunicorn: overwritten, the file of the berth that runs was lost, and removed
        # at this one's exit, a failed bind included)
        log.error("--pid %s: already running on PID %d (or the pid file is stale: remove it)",
                  pidfile, running)
        return 1
    try:
        if pidfile:
            try:
                _write_pidfile(pidfile)
            except OSError as exc:
                log.error("--pid %s: %s", pidfile, exc.strerror)
                return 2
        return Master(cfg, log, lambda: load_app(cfg.app_uri), reload_config, set_env).run()
    except _BindError as exc:
        log.error("%s", exc)
        return 1
    finally:
        if pidfile:
            _remove_pidfile(pidfile)
        logconfig.drain()  # the users' handlers write what is queued

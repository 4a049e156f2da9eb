"""Process titles: `berth: master [NAME]` and `berth: worker [NAME]` in ps and top, as Gunicorn
shows `gunicorn: master [app]`, when setproctitle is installed (`pip install berth[proctitle]`).

NAME is `--name` (proc_name), else `default_proc_name`, else the app spec (MODULE:NAME): Gunicorn's
order (it sets default_proc_name to the app spec, and a config file may replace it). Without
setproctitle nothing changes; the master says so in one info line when `--name` was given.
The titles are set once per process (the master at start and on SIGHUP, a worker after fork),
never on a request's path.
"""

from __future__ import annotations

from typing import Any

INSTALL_HINT = "pip install berth[proctitle]"


def process_name(cfg: Any) -> str:
    """The NAME in `berth: master [NAME]`."""
    return cfg.proc_name or "berth"  # (Config.proc_name: else default_proc_name, else the app)


def prepare() -> bool:
    """Let setproctitle take over the memory of argv and the environment now, before `--env`
    changes the environment (Gunicorn does the same, after a crash: gunicorn#3430). False when
    setproctitle is not installed."""
    try:
        from setproctitle import getproctitle
    except ImportError:
        return False
    getproctitle()
    return True


def set_title(role: str, cfg: Any) -> bool:
    """`berth: ROLE [NAME]` as this process's title; False when setproctitle is not installed."""
    try:
        from setproctitle import setproctitle
    except ImportError:
        return False
    setproctitle(f"berth: {role} [{process_name(cfg)}]")
    return True

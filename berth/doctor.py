"""`berth doctor`: what berth sees, what it will do, and what to fix, for a person in a container.

```
berth doctor [options] [MODULE:NAME]
```

takes the same options, environment and config file as `berth`, and prints:

1. the environment: container, Kubernetes, PID 1, cgroup limits (`container.detect()`), user;
2. the sizing decision (the line berth logs at start);
3. the effective configuration, with the source of every value (default, file, env, cli, auto);
4. warnings, each with its fix (`diagnose`, a pure function of the config and the facts).

It does not import the app (use `--check-config` for that) and always exits 0, unless the
configuration itself is wrong (2).
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from typing import Any

from berth import __version__
from berth.config import (
    DOCKER_STOP_WINDOW,
    K8S_STOP_WINDOW,
    MASTER_MARGIN,
    Config,
    ConfigError,
    config_rows,
    load,
)

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
ADMIN_PORT = 9000  # what the --admin-bind advice suggests (nothing else claims it in berth)


@dataclass(frozen=True)
class Finding:
    problem: str
    fix: str


def _host(addr: str) -> str | None:
    if addr.startswith(("unix:", "fd://")):
        return None
    if addr.startswith("tcp://"):  # (Gunicorn's spelling: berth/sockets.py)
        addr = addr[6:]
    if addr.startswith("["):
        return addr[:addr.find("]") + 1] if "]" in addr else addr
    return addr.rpartition(":")[0] if ":" in addr else addr


def diagnose(cfg: Config, info: Any, euid: int | None = None) -> list[Finding]:
    """What is likely wrong, with its fix. `info` is a `container.ContainerInfo`."""
    euid = os.geteuid() if euid is None else euid
    out: list[Finding] = []
    graceful = float(cfg.graceful_timeout or 0)
    delay = float(cfg.shutdown_delay or 0)

    if info.in_kubernetes or info.in_container:
        window = K8S_STOP_WINDOW if info.in_kubernetes else DOCKER_STOP_WINDOW
        if delay + graceful + MASTER_MARGIN > window:
            left = max(0.0, window - delay - MASTER_MARGIN)
            need = math.ceil(delay + graceful + MASTER_MARGIN + 1)
            if info.in_kubernetes:
                where = (f"Kubernetes' {window:g} s terminationGracePeriodSeconds minus the "
                         f"{delay:g} s shutdown delay")
                more = f"or set terminationGracePeriodSeconds: {need} in the pod spec"
            else:
                where = f"Docker's {window:g} s stop window"
                if delay:
                    where += f" minus the {delay:g} s shutdown delay"
                more = (f"or give the container more time: docker run --stop-timeout {need}, "
                        f"compose stop_grace_period: {need}s")
            if left < 1.0:
                fix = f"a --shutdown-delay under {window - MASTER_MARGIN - 1.0:g} s"
            elif cfg.source("graceful_timeout") == "auto":
                fix = f"--graceful-timeout {left:g}"
            else:  # (the automatic one fits what the window leaves after the delay)
                fix = f"--graceful-timeout {left:g} (or drop it: berth picks one that fits)"
            out.append(Finding(
                f"graceful timeout {graceful:g} s is longer than {where}: requests still "
                f"running then are cut off by SIGKILL", f"{fix}, {more}"))

    usable = info.usable_cpus
    quota = info.cpu_limit
    auto = cfg.decisions.auto_workers
    workers = cfg.workers
    if isinstance(workers, int) and quota is not None:
        fair = max(auto or 0, math.ceil(quota))
        plural = "" if quota == 1 else "s"
        if workers > fair:
            out.append(Finding(
                f"workers={workers} but the CPU quota is {quota:g} CPU{plural}: the workers "
                f"share that time, get throttled, and each holds its own copy of the app in "
                f"memory",
                f"--workers auto (would start {auto}), or raise the CPU limit"))
    elif isinstance(workers, int) and usable is not None and workers > 2 * usable + 1:
        out.append(Finding(
            f"workers={workers} is more than 2 x {usable:g} usable CPUs + 1",
            f"--workers auto (would start {auto})"))

    if euid == 0:
        out.append(Finding(
            "running as root: a compromised app would own the container",
            "add a user to the image and `USER app` to the Dockerfile (Kubernetes: "
            "securityContext.runAsNonRoot: true)"))

    if str(cfg.accesslog).strip().lower() in ("none", "off", ""):
        out.append(Finding(
            "the access log is disabled: no record of requests, statuses or timings",
            "--access-logfile - (stdout, berth's default; your log collector reads it)"))

    if info.in_container:
        for addr in cfg.bind or ():
            if _host(addr) in LOOPBACK_HOSTS:
                port = addr.rpartition(":")[2]
                out.append(Finding(
                    f"bound to {addr} inside a container: only processes inside the "
                    f"container can connect (published ports and the kubelet's probes fail)",
                    f"--bind 0.0.0.0:{port} (or drop --bind: in a container berth listens on "
                    f"0.0.0.0)"))
        if cfg.admin_bind and _host(cfg.admin_bind) in LOOPBACK_HOSTS:
            out.append(Finding(
                f"admin listener on {cfg.admin_bind} inside a container: the kubelet's probes "
                f"and Prometheus cannot reach it",
                f"--admin-bind 0.0.0.0:{cfg.admin_bind.rpartition(':')[2]} (keep that port "
                f"off the public network)"))

    if (info.in_container or info.in_kubernetes) and not cfg.admin_bind:
        out.append(Finding(
            "no admin listener: probes go to the app's port, answered by a worker (none "
            "answers while every worker hangs or restarts), and there are no metrics",
            f"--admin-bind 0.0.0.0:{ADMIN_PORT}: the master answers /livez, /readyz, /metrics "
            f"(Prometheus) and /status there, whatever the workers are doing; point the "
            f"probes and the scraper at it, and keep the port off the public network"))

    for level, line in cfg.notices:
        if level == "warning":
            out.append(Finding(line, "see the line itself"))
    return out


def _section(title: str, lines: list[str]) -> str:
    return "\n".join([title, *(f"  {ln}" for ln in lines)])


def report(cfg: Config, info: Any, euid: int | None = None) -> str:
    """The whole doctor output."""

    euid = os.geteuid() if euid is None else euid
    try:
        import pwd

        user = f"{pwd.getpwuid(euid).pw_name} (uid {euid})"
    except (KeyError, ImportError):
        user = f"uid {euid}"
    yes = {True: "yes", False: "no", None: "unknown"}
    env = [
        f"container: {yes[info.in_container]} ({info.in_container_reason}); "
        f"Kubernetes: {yes[info.in_kubernetes]}; PID 1: {yes[info.is_pid1]}",
        f"cgroup {info.cgroup_layout}: {info.describe()}",
        f"usable CPUs: {info.usable_cpus:g} ({info.usable_cpus_source})"
        if info.usable_cpus is not None else f"usable CPUs: unknown ({info.usable_cpus_source})",
        f"/tmp in memory (tmpfs): {yes[info.tmp_is_tmpfs]} ({info.tmp_source})",
        f"user: {user}",
        f"berth {__version__}, Python {sys.version.split()[0]}",
    ]
    env.extend(f"note: {n}" for n in info.notes)

    decisions = cfg.decisions
    decided = [decisions.sizing, decisions.shutdown]
    if decisions.bind:
        decided.append(f"listening on {cfg.bind[0]}: {decisions.bind}")
    if cfg.max_worker_memory:
        decided.append(f"max worker memory {cfg.max_worker_memory >> 20} MiB"
                       + (f" ({decisions.memory})" if decisions.memory else ""))
    decided.extend(f"warning: {line}" for line in decisions.sizing_warnings)
    decided.extend(line for level, line in cfg.notices if level == "info")

    rows = config_rows(cfg, reasons=False)
    width = max(len(n) for n, _, _ in rows)
    vwidth = min(40, max(len(v) for _, v, _ in rows))
    conf = [f"{n:<{width}}  {v:<{vwidth}}  {s}" for n, v, s in rows]

    findings = diagnose(cfg, info, euid)
    warn = []
    for f in findings:
        warn.append(f"! {f.problem}")
        warn.append(f"  fix: {f.fix}")
    if not warn:
        warn = ["none"]

    return "\n\n".join([
        _section("Environment", env),
        _section("Decisions", [d for d in decided if d]),
        _section("Configuration (setting, value, source: default, file, env, cli or auto)",
                 conf),
        _section(f"Warnings ({len(findings)})", warn),
    ])


def main(argv: list[str]) -> int:
    from berth.container import detect

    info = detect()
    try:
        cfg = load(argv, require_app=False, info=info)
    except ConfigError as exc:
        print(_section("Environment", [info.describe()]))
        print(f"\nberth: error: {exc}", file=sys.stderr)
        return 2
    print(report(cfg, info))
    return 0

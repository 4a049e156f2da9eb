"""`berth doctor`: the environment, the configuration with its sources, warnings with fixes."""

from __future__ import annotations

import dataclasses
import re
import textwrap

from test_cli import run_berth
from test_sizing import info as fake_info

from berth.config import load
from berth.doctor import diagnose, report


def cfg_for(argv, info, env=None, cwd="/nonexistent", admin=True):
    """The config of `argv`. With an admin listener unless `admin` is false: the doctor
    recommends one in a container, and the other tests look at the other findings."""
    environ = {"BERTH_IN_CONTAINER": "1"}
    if admin:
        environ["BERTH_ADMIN_BIND"] = "0.0.0.0:9000"
    environ.update(env or {})
    return load(list(argv), environ=environ, cwd=cwd, require_app=False, info=info)


def problems(argv, info=None, env=None, euid=1000) -> list[str]:
    info = info or fake_info(cpus=2)
    return [f.problem for f in diagnose(cfg_for(argv, info, env), info, euid=euid)]


def test_berths_defaults_in_a_container_give_no_warning():
    assert problems(["-b", "0.0.0.0:8000"]) == []


def test_graceful_timeout_longer_than_dockers_stop_window():
    info = fake_info(cpus=2)
    found = diagnose(cfg_for(["--graceful-timeout", "30"], info), info, euid=1000)
    assert len(found) == 1
    assert found[0].problem.startswith("graceful timeout 30 s is longer than Docker's 10 s "
                                       "stop window")
    assert "--graceful-timeout 9" in found[0].fix and "--stop-timeout 32" in found[0].fix


def test_graceful_timeout_in_kubernetes_counts_the_shutdown_delay():
    info = dataclasses.replace(fake_info(cpus=2), in_kubernetes=True)
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    assert problems([], info, env) == []  # 5 s delay + 20 s graceful fit in 30 s
    found = diagnose(cfg_for(["--graceful-timeout", "25"], info, env), info, euid=1000)
    assert found[0].problem.startswith("graceful timeout 25 s is longer than Kubernetes' 30 s "
                                       "terminationGracePeriodSeconds minus the 5 s shutdown")
    assert "terminationGracePeriodSeconds: 32" in found[0].fix


def test_a_shutdown_delay_shortens_the_automatic_graceful_timeout_to_fit_the_window():
    # the automatic graceful timeout was 8 s whatever the delay: --shutdown-delay 5 made a
    # 13 s stop in Docker's 10 s window, and the start-up line said "inside" it
    info = fake_info(cpus=2)
    cfg = cfg_for(["--shutdown-delay", "5"], info)
    assert cfg.graceful_timeout == 3.0 and cfg.source("graceful_timeout") == "auto"
    assert "inside Docker's 10 s stop window" in cfg.decisions.shutdown
    assert not cfg.decisions.shutdown_warning
    assert problems(["--shutdown-delay", "5"], info) == []
    # a delay that leaves no room: a warning at start, and doctor says to shorten the delay
    cfg = cfg_for(["--shutdown-delay", "9"], info)
    assert "longer than Docker's 10 s stop window" in cfg.decisions.shutdown
    assert cfg.decisions.shutdown_warning.startswith("a stop may take 10 s")
    found = diagnose(cfg, info, euid=1000)
    assert "a --shutdown-delay under 8 s" in found[0].fix, found[0].fix


def test_a_set_graceful_timeout_longer_than_the_window_is_warned_of_at_start():
    cfg = cfg_for(["--graceful-timeout", "30"], fake_info(cpus=2))
    assert "graceful timeout 30 s (longer than Docker's 10 s" in cfg.decisions.shutdown
    assert "cut off by SIGKILL" in cfg.decisions.shutdown_warning
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    cfg = cfg_for(["--graceful-timeout", "30"], fake_info(cpus=2), env)
    assert "longer than Kubernetes' 30 s termination grace period" in cfg.decisions.shutdown


def test_more_workers_than_the_cpu_quota():
    info = fake_info(cpu_limit=2.0, cpus=16)
    found = problems(["-w", "4"], info)
    assert any(p.startswith("workers=4 but the CPU quota is 2 CPUs") for p in found)
    assert problems(["-w", "2"], info) == []


def test_running_as_root():
    found = problems([], euid=0)
    assert found == ["running as root: a compromised app would own the container"]


def test_access_log_disabled():
    assert any("access log is disabled" in p
               for p in problems(["--access-logfile", "none"]))


def test_loopback_bind_inside_a_container():
    found = diagnose(cfg_for(["-b", "127.0.0.1:8000"], fake_info(cpus=2)), fake_info(cpus=2),
                     euid=1000)
    assert found[0].problem.startswith("bound to 127.0.0.1:8000 inside a container")
    assert found[0].fix.startswith("--bind 0.0.0.0:8000")
    outside = dataclasses.replace(fake_info(cpus=2), in_container=False)
    assert diagnose(cfg_for(["-b", "127.0.0.1:8000"], outside), outside, euid=1000) == []


def test_an_admin_listener_is_recommended_in_a_container():
    info = fake_info(cpus=2)
    found = diagnose(cfg_for(["-b", "0.0.0.0:8000"], info, admin=False), info, euid=1000)
    assert [f.problem.split(":")[0] for f in found] == ["no admin listener"]
    assert found[0].fix.startswith("--admin-bind 0.0.0.0:9000: the master answers /livez")
    outside = dataclasses.replace(info, in_container=False)
    assert diagnose(cfg_for([], outside, admin=False), outside, euid=1000) == []


def test_an_admin_listener_on_loopback_inside_a_container():
    info = fake_info(cpus=2)
    found = problems(["-b", "0.0.0.0:8000", "--admin-bind", "127.0.0.1:9100"], info)
    assert found == ["admin listener on 127.0.0.1:9100 inside a container: the kubelet's "
                     "probes and Prometheus cannot reach it"]


def test_configuration_warnings_are_listed(tmp_path):
    cfg = cfg_for(["--reload", "--reload-extra-file", "templates/**/*.html", "app:app"],
                  fake_info(cpus=2), cwd=str(tmp_path))
    found = diagnose(cfg, fake_info(cpus=2), euid=1000)
    assert any("matches no file yet" in f.problem and f.fix == "see the line itself"
               for f in found)


def test_report_has_environment_decisions_configuration_and_warnings(tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text("workers = 3\n")
    info = fake_info(cpu_limit=1.0, cpus=8, memory=512 << 20)
    cfg = cfg_for(["--timeout", "9"], info, env={"BERTH_KEEPALIVE": "4"}, cwd=str(tmp_path))
    text = report(cfg, info, euid=0)
    for heading in ("Environment", "Decisions", "Configuration", "Warnings (2)"):
        assert re.search(rf"^{re.escape(heading)}", text, re.M), heading
    assert "cpu quota 1 (cgroup v2 cpu.max)" in text
    assert "workers=3 threads=4 (workers from file gunicorn.conf.py, threads auto" in text
    rows = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith("  ")}
    assert rows["workers"].split()[1:] == ["3", "file", "gunicorn.conf.py"]
    assert rows["timeout"].split()[1:] == ["9.0", "cli"]
    assert rows["keepalive"].split()[1:] == ["4.0", "env", "BERTH_KEEPALIVE"]
    assert rows["threads"].split()[1:] == ["4", "auto"]
    assert rows["backlog"].split()[1:] == ["2048", "default"]
    assert "! running as root" in text and "  fix: add a user" in text
    assert "! workers=3 but the CPU quota is 1 CPU:" in text


def test_doctor_command(tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text(textwrap.dedent("""\
        workers = 2
        def post_fork(server, worker):
            pass
    """))
    res = run_berth(["doctor", "--access-logfile", "none", "proto_app:app"], cwd=str(tmp_path))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.startswith("Environment\n")
    assert re.search(r"^  workers +2 +file gunicorn.conf.py$", out, re.M), out
    assert re.search(r"^  post_fork +<function post_fork> +file gunicorn.conf.py$", out, re.M)
    assert re.search(r"^  wsgi_app +'proto_app:app' +cli$", out, re.M)
    assert "! the access log is disabled" in out


def test_doctor_without_an_app_still_reports():
    res = run_berth(["doctor"])
    assert res.returncode == 0, res.stderr
    assert "Warnings (" in res.stdout


def test_doctor_with_a_wrong_setting_exits_2_naming_it():
    res = run_berth(["doctor", "--threads", "lots"])
    assert res.returncode == 2
    assert "--threads (threads): invalid value 'lots'" in res.stderr
    assert res.stdout.startswith("Environment")

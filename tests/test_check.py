"""`berth check [URL] [options]`: exit 0 when the URL answers 2xx within --check-timeout, 1
otherwise, 2 for a bad URL or configuration; one line either way. Without URL: the readiness
probe on the first --bind, from the same configuration the server reads.

End to end against real berth servers (the `berth` fixture) and sockets that never answer, all
on 127.0.0.1; the URL and bind rules also in-process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import APPS, ROOT, free_port
from proto_helpers import http_get, in_background, wait_for
from test_cli import run_berth

from berth.check import default_target, parse_url, split_url
from berth.config import ConfigError, parse_config


def check(tmp_path: Path, args, env=None, cwd: Path | None = None, timeout: float = 30):
    """Run `berth check ARGS` in a directory of its own (no config file of the server's)."""
    if cwd is None:
        cwd = tmp_path / "check-cwd"
        cwd.mkdir(exist_ok=True)
    return run_berth(["check", *args], timeout=timeout, env=env, cwd=str(cwd))


def one_line(res: subprocess.CompletedProcess) -> str:
    lines = (res.stdout + res.stderr).splitlines()
    assert len(lines) == 1, (res.returncode, res.stdout, res.stderr)
    return lines[0]


def ok_line(url: str, status: int = 200) -> str:
    return rf"ok: {re.escape(url)} {status} in \d+ ms"


# --- against a real server ----------------------------------------------------------------------

def test_a_url_that_answers_2xx_passes_and_anything_else_fails(berth, tmp_path):
    srv = berth(["-w", "1", "proto_app:app"])
    ready = f"{srv.url}/-/ready"
    res = check(tmp_path, [ready])
    assert res.returncode == 0, res.stderr
    assert re.fullmatch(ok_line(ready), one_line(res)) and res.stdout.strip()
    created = f"{srv.url}/status?code=201"
    res = check(tmp_path, [created])
    assert res.returncode == 0 and re.fullmatch(ok_line(created, 201), one_line(res))
    missing = f"{srv.url}/missing"
    res = check(tmp_path, [missing])
    assert res.returncode == 1
    assert re.fullmatch(rf"failed: {re.escape(missing)} 404 in \d+ ms", one_line(res))
    assert res.stderr.strip()  # a failure goes to stderr


def test_the_ready_probe_fails_the_check_during_the_shutdown_delay(berth, tmp_path):
    srv = berth(["-w", "1", "--shutdown-delay", "5", "proto_app:app"])
    ready = f"{srv.url}/-/ready"
    assert check(tmp_path, [ready]).returncode == 0
    srv.signal(signal.SIGTERM)
    assert wait_for(lambda: http_get(srv.port, "/-/ready")[0] == 503, timeout=4)
    assert http_get(srv.port, "/hello")[0] == 200  # still serving: only readiness says no
    res = check(tmp_path, [ready])
    assert res.returncode == 1
    assert re.fullmatch(rf"failed: {re.escape(ready)} 503 in \d+ ms", one_line(res))


def test_nothing_listening_fails_at_once(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/-/ready"
    start = time.monotonic()
    res = check(tmp_path, [url, "--check-timeout", "30"])
    assert time.monotonic() - start < 10  # refused: no waiting for the timeout
    assert res.returncode == 1
    assert one_line(res) == f"failed: {url}: connection refused"


@pytest.mark.parametrize("accept", [False, True], ids=["in-the-backlog", "accepted"])
def test_a_server_that_never_answers_fails_at_the_check_timeout(tmp_path, accept):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)  # the kernel completes the handshake; nobody ever answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/-/ready"
        cmd = [sys.executable, "-m", "berth", "check", url, "--check-timeout", "1"]
        env = {**os.environ, "PYTHONPATH": f"{APPS}{os.pathsep}{ROOT}",
               "BERTH_IN_CONTAINER": "0"}
        start = time.monotonic()
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env, cwd=str(tmp_path), stdin=subprocess.DEVNULL) as proc:
            if accept:
                listener.settimeout(10)
                conn, _ = listener.accept()  # held open, silent, until the check gives up
            try:
                out, err = proc.communicate(timeout=20)
            finally:
                if accept:
                    conn.close()
        elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < 8, elapsed
    assert proc.returncode == 1
    res = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    assert one_line(res) == f"failed: {url}: no answer within 1 s"


def test_without_url_it_checks_the_ready_path_on_the_first_bind(berth, tmp_path):
    srv = berth(["-w", "1", "--ready-path", "/-/up", "proto_app:app"])
    up = f"http://127.0.0.1:{srv.port}/-/up"
    for args, env in [
        (["-b", f"0.0.0.0:{srv.port}", "--ready-path", "/-/up"], {}),  # 0.0.0.0: loopback
        ([], {"BERTH_BIND": f"127.0.0.1:{srv.port}", "BERTH_READY_PATH": "/-/up"}),
        ([], {"GUNICORN_CMD_ARGS": f"--bind 127.0.0.1:{srv.port} --ready-path /-/up"}),
        (["--ready-path", "/-/up"], {"BERTH_CMD_ARGS": f"-b 127.0.0.1:{srv.port}"}),
    ]:
        res = check(tmp_path, args, env=env)
        assert res.returncode == 0, (args, env, res.stderr)
        assert re.fullmatch(ok_line(up), one_line(res)), (args, env)
    # the ready path is the configured one: the default /-/ready is an app path there (404)
    res = check(tmp_path, ["-b", f"127.0.0.1:{srv.port}"])
    assert res.returncode == 1 and " 404 in " in one_line(res)
    # the first bind is the one checked
    closed = free_port()
    res = check(tmp_path, ["-b", f"127.0.0.1:{closed}", "-b", f"127.0.0.1:{srv.port}",
                           "--ready-path", "/-/up"])
    assert res.returncode == 1
    assert one_line(res) == f"failed: http://127.0.0.1:{closed}/-/up: connection refused"


def test_without_url_it_checks_the_admin_readyz_even_with_every_app_thread_busy(berth,
                                                                                 tmp_path):
    admin = free_port()
    args = ["-w", "1", "--threads", "1", "--admin-bind", f"127.0.0.1:{admin}",
            "--shutdown-delay", "5"]
    srv = berth([*args, "--timeout", "30", "proto_app:app"])
    readyz = f"http://127.0.0.1:{admin}/readyz"
    t, _ = in_background(lambda: http_get(srv.port, "/sleep?s=4", timeout=10))
    time.sleep(0.3)  # the one app thread (the loop itself) is in the app now
    res = check(tmp_path, [*args, "--check-timeout", "2"])
    assert res.returncode == 0, res.stderr
    assert re.fullmatch(ok_line(readyz), one_line(res))
    srv.signal(signal.SIGTERM)
    res = check(tmp_path, [*args])
    assert res.returncode == 1
    assert re.fullmatch(rf"failed: {re.escape(readyz)} 503 in \d+ ms", one_line(res))
    t.join(timeout=10)


def test_without_url_it_reads_the_config_file_as_the_server_does(berth, tmp_path):
    srv = berth(["-w", "1", "--ready-path", "/-/up", "proto_app:app"])
    settings = f"bind = ['127.0.0.1:{srv.port}']\nready_path = '/-/up'\n"
    here = tmp_path / "project"
    here.mkdir()
    (here / "gunicorn.conf.py").write_text(settings)  # found in the current directory
    res = check(tmp_path, [], cwd=here)
    assert res.returncode == 0, res.stderr
    assert re.fullmatch(ok_line(f"http://127.0.0.1:{srv.port}/-/up"), one_line(res))
    elsewhere = tmp_path / "etc"
    elsewhere.mkdir()
    (elsewhere / "web.py").write_text(settings)
    res = check(tmp_path, ["-c", str(elsewhere / "web.py")])
    assert res.returncode == 0, res.stderr
    (here / "gunicorn.conf.py").write_text(settings + "wokers = 4\n")  # a config error: 2
    res = check(tmp_path, [], cwd=here)
    assert res.returncode == 2 and one_line(res).startswith("berth: error: ")


def test_a_unix_socket_bind_is_checked_over_the_socket(berth, tmp_path):
    path = tmp_path / "berth.sock"
    srv = berth(["-b", f"unix:{path}", "-w", "1", "proto_app:app"])
    res = check(tmp_path, ["-b", f"unix:{path}"])
    assert res.returncode == 0, res.stderr
    assert re.fullmatch(ok_line(f"http://unix:{path}:/-/ready"), one_line(res))
    res = check(tmp_path, [f"http://unix:{path}:/hello"])  # the same form as a URL
    assert res.returncode == 0, res.stderr
    srv.stop()
    res = check(tmp_path, ["-b", f"unix:{path}"])
    assert res.returncode == 1
    assert one_line(res).startswith(f"failed: http://unix:{path}:/-/ready: ")


def test_a_relative_unix_socket_is_checked_in_the_chdir_directory_where_it_is_bound(
        berth, tmp_path):
    """`--chdir app -b unix:berth.sock`: the server binds app/berth.sock (as Gunicorn does,
    after its chdir); berth check given the same flags must look there, not in the directory
    it runs in."""
    (tmp_path / "app").mkdir()
    srv = berth(["--chdir", "app", "-b", "unix:berth.sock", "-w", "1", "proto_app:app"],
                bind=False, cwd=tmp_path)
    assert (tmp_path / "app" / "berth.sock").exists()
    res = check(tmp_path, ["--chdir", "app", "-b", "unix:berth.sock"], cwd=tmp_path)
    assert res.returncode == 0, (res.stdout, res.stderr, srv.stderr())
    assert re.fullmatch(ok_line("http://unix:app/berth.sock:/-/ready"), one_line(res))


def test_with_certfile_it_checks_over_https_without_verifying(berth, tmp_path):
    trustme = pytest.importorskip("trustme")
    pem = tmp_path / "server.pem"
    trustme.CA().issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(pem)
    srv = berth(["-w", "1", "--certfile", str(pem), "proto_app:app"])
    res = check(tmp_path, ["-b", f"0.0.0.0:{srv.port}", "--certfile", str(pem)])
    assert res.returncode == 0, res.stderr
    assert re.fullmatch(ok_line(f"https://127.0.0.1:{srv.port}/-/ready"), one_line(res))
    # a URL given is checked as any client would: this CA is nobody's
    url = f"https://127.0.0.1:{srv.port}/-/ready"
    res = check(tmp_path, [url])
    assert res.returncode == 1
    assert one_line(res).startswith(f"failed: {url}: TLS: ")


@pytest.mark.parametrize("args", [
    ["ftp://127.0.0.1/-/ready"],
    ["127.0.0.1:8000/-/ready"],
    ["http://127.0.0.1:99999/"],
    ["--check-timeout", "0"],
    ["-b", "fd://3"],
    ["--ready-path", ""],
    ["--no-such-flag"],
], ids=["scheme", "no-scheme", "port", "timeout", "fd-bind", "no-probe", "flag"])
def test_a_bad_url_or_configuration_exits_2_with_one_line(tmp_path, args):
    res = check(tmp_path, args)
    assert res.returncode == 2
    assert one_line(res).startswith("berth: error: ")


def test_check_imports_neither_the_app_nor_the_server(tmp_path):
    """It runs every few seconds in a HEALTHCHECK: no app, master, worker, nor logging."""
    code = ("import sys\nfrom berth.cli import main\n"
            f"code = main(['check', 'http://127.0.0.1:{free_port()}/'])\n"
            "print(' '.join(sorted(sys.modules)))\n")
    env = {**os.environ, "PYTHONPATH": f"{APPS}{os.pathsep}{ROOT}", "BERTH_IN_CONTAINER": "0",
           "GUNICORN_CMD_ARGS": "proto_app:app"}  # an app spec, as the server's config has
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, env=env, cwd=str(tmp_path), check=False)
    assert res.returncode == 0 and "connection refused" in res.stderr, res.stderr
    modules = set(res.stdout.split())
    assert "berth.check" in modules
    loaded = sorted(m for m in modules if m in ("proto_app", "logging", "berth.master",
                                                "berth.logs", "berth.worker"))
    assert not loaded, loaded


# --- in-process: the URL and the default target ---------------------------------------------

def _target(argv, env=None):
    environ = {"BERTH_IN_CONTAINER": "0", **(env or {})}
    return default_target(parse_config(list(argv), environ=environ, cwd="/nonexistent",
                                       require_app=False))


@pytest.mark.parametrize(("argv", "env", "url"), [
    (["-b", "0.0.0.0:8001"], {}, "http://127.0.0.1:8001/-/ready"),
    (["-b", ":8002"], {}, "http://127.0.0.1:8002/-/ready"),
    (["-b", "[::]:8003"], {}, "http://[::1]:8003/-/ready"),
    (["-b", "[::1]:8004"], {}, "http://[::1]:8004/-/ready"),
    (["-b", "192.0.2.7:8005", "-b", "0.0.0.0:8006"], {}, "http://192.0.2.7:8005/-/ready"),
    (["-b", "unix:/run/berth.sock"], {}, "http://unix:/run/berth.sock:/-/ready"),
    (["--ready-path", "/healthz", "--certfile", "c.pem"], {}, "https://127.0.0.1:8000/healthz"),
    ([], {}, "http://127.0.0.1:8000/-/ready"),  # the server's own default bind
    ([], {"PORT": "9000"}, "http://127.0.0.1:9000/-/ready"),
    ([], {"BERTH_IN_CONTAINER": "1"}, "http://127.0.0.1:8000/-/ready"),
])
def test_the_default_target_is_the_ready_path_on_the_first_bind(argv, env, url):
    assert _target(argv, env).url == url


@pytest.mark.parametrize(("argv", "url"), [
    (["--admin-bind", "0.0.0.0:9100"], "http://127.0.0.1:9100/readyz"),
    (["--admin-bind", "unix:/run/admin.sock", "--certfile", "c.pem"],
     "http://unix:/run/admin.sock:/readyz"),  # (the admin listener is plain HTTP)
    (["--admin-bind", "127.0.0.1:9101", "--ready-path", ""], "http://127.0.0.1:9101/readyz"),
])
def test_the_default_target_is_the_admin_readyz_when_there_is_one(argv, url):
    assert _target(argv).url == url


def test_the_default_target_over_tls_or_a_unix_socket():
    tls = _target(["--certfile", "c.pem"])
    assert (tls.scheme, tls.verify) == ("https", False)  # berth's own certificate
    unix = _target(["-b", "unix:/run/berth.sock"])
    assert (unix.unix, unix.path, unix.host) == ("/run/berth.sock", "/-/ready", "localhost")


@pytest.mark.parametrize(("url", "parts"), [
    ("http://127.0.0.1:8000/-/ready", ("http", "127.0.0.1", 8000, "/-/ready", "")),
    ("HTTP://localhost", ("http", "localhost", 80, "/", "")),
    ("https://example.test/health?deep=1", ("https", "example.test", 443, "/health?deep=1", "")),
    ("http://[::1]:81/x", ("http", "::1", 81, "/x", "")),
    ("http://unix:/run/b.sock:/-/ready", ("http", "localhost", 0, "/-/ready", "/run/b.sock")),
    ("http://unix:/run/b.sock", ("http", "localhost", 0, "/", "/run/b.sock")),
])
def test_urls(url, parts):
    t = parse_url(url)
    assert (t.scheme, t.host, t.port, t.path, t.unix) == parts and t.url == url and t.verify


@pytest.mark.parametrize("url", ["ftp://x/", "localhost:8000", "http://", "http://:80/",
                                 "http://h:port/", "http://h:99999/", "http://unix:",
                                 "http://unix:/s.sock:ready", "http://a b/"])
def test_bad_urls(url):
    with pytest.raises(ConfigError, match="bad URL"):
        parse_url(url)


def test_the_url_is_the_first_argument_or_any_http_one():
    assert split_url(["http://h/", "-b", "x"]) == ("http://h/", ["-b", "x"])
    assert split_url(["-b", "x", "https://h/"]) == ("https://h/", ["-b", "x"])
    assert split_url(["-b", "x", "app:app"]) == (None, ["-b", "x", "app:app"])
    assert split_url(["--check-timeout", "2"]) == (None, ["--check-timeout", "2"])

"""Switching from Gunicorn is one word: a real Gunicorn config file and a typical Dockerfile
command line run unchanged with `berth` in place of `gunicorn`.

The Dockerfile line is

    CMD gunicorn -c gunicorn.conf.py --workers=2 --threads=4 --worker-class=gthread \
        --log-file=- --worker-tmp-dir /dev/shm --bind 0.0.0.0:8000 app:app

(here bound to 127.0.0.1 on a free port). The config file is written the way Gunicorn's own
example config and many projects write theirs: every common setting spelled out, a host-sized
`workers` the command line overrides, and the documented hook examples, which also write to a
file so the test can see them fire.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import ROOT, connect, free_port, http_get, read_response

GUNICORN_CONF = '''\
# gunicorn.conf.py
import multiprocessing
import os
import sys
import threading
import traceback

bind = "0.0.0.0:8000"
backlog = 2048

workers = multiprocessing.cpu_count() * 2 + 1
worker_class = "sync"
worker_connections = 1000
timeout = 30
keepalive = 2
max_requests = 1000
max_requests_jitter = 50

spew = False
daemon = False
raw_env = ["APP_GREETING=hello from gunicorn.conf.py"]
pidfile = None
umask = 0
user = None
group = None
tmp_upload_dir = None

errorlog = "-"
loglevel = "info"
accesslog = "-"
access_log_format = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'

proc_name = None


def _record(*parts):
    path = os.environ.get("HOOK_LOG")
    if path:
        with open(path, "a") as f:
            f.write(" ".join(str(p) for p in parts) + "\\n")


def post_fork(server, worker):
    server.log.info("Worker spawned (pid: %s)", worker.pid)
    _record("post_fork", worker.pid)


def pre_fork(server, worker):
    pass


def pre_exec(server):
    server.log.info("Forked child, re-executing.")


def when_ready(server):
    server.log.info("Server is ready. Spawning workers")
    _record("when_ready", server.pid)


def worker_int(worker):
    worker.log.info("worker received INT or QUIT signal")
    id2name = {th.ident: th.name for th in threading.enumerate()}
    code = []
    for thread_id, stack in sys._current_frames().items():
        code.append("\\n# Thread: %s(%d)" % (id2name.get(thread_id, ""), thread_id))
        for filename, lineno, name, line in traceback.extract_stack(stack):
            code.append('File: "%s", line %d, in %s' % (filename, lineno, name))
            if line:
                code.append("  %s" % (line.strip()))
    worker.log.debug("\\n".join(code))


def worker_abort(worker):
    worker.log.info("worker received SIGABRT signal")


def pre_request(worker, req):
    worker.log.debug("%s %s", req.method, req.path)
    _record("pre_request", req.method, req.path)


def post_request(worker, req, environ, resp):
    _record("post_request", req.path, resp.status)


def worker_exit(server, worker):
    _record("worker_exit", worker.pid)


def on_exit(server):
    _record("on_exit", server.pid)
'''

APP = '''\
import os


def app(environ, start_response):
    body = os.environ.get("APP_GREETING", "no greeting").encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def dockerfile_args(port: int) -> list[str]:
    return ["-c", "gunicorn.conf.py", "--workers=2", "--threads=4", "--worker-class=gthread",
            "--log-file=-", "--worker-tmp-dir", "/dev/shm", "--bind", f"127.0.0.1:{port}",
            "app:app"]


@pytest.fixture
def project(tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text(textwrap.dedent(GUNICORN_CONF))
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def test_the_gunicorn_dockerfile_command_runs_unchanged_and_serves(berth, project):
    port = free_port()
    srv = berth(dockerfile_args(port), bind=False, port=port,
                env={"HOOK_LOG": str(project / "hooks.log")})
    status, headers, body = http_get(port, "/")
    assert (status, body) == (200, b"hello from gunicorn.conf.py")  # raw_env from the file
    err = srv.stderr()
    # the command line wins over the file (workers, worker_class, bind)...
    assert "workers=2 threads=4 (workers from cli, threads from cli:" in err
    assert f"127.0.0.1:{port}" in err
    # ...and nothing a Gunicorn user wrote is a problem: no warning, one info line for the
    # tmp dir berth does not need, one for the pre_exec hook it never calls
    assert "[WARNING]" not in err, err
    assert "worker_tmp_dir (--worker-tmp-dir, from cli) is not needed" in err
    assert "pre_exec (from file gunicorn.conf.py) is not needed" in err
    # the access log, as the file asks, on stdout
    deadline = time.monotonic() + 5
    while '"GET / HTTP/1.1" 200' not in srv.stdout() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert '"GET / HTTP/1.1" 200' in srv.stdout()
    assert srv.stop(signal.SIGTERM) == 0


def test_the_config_file_is_a_valid_gunicorn_config(project):
    pytest.importorskip("gunicorn")
    res = subprocess.run([sys.executable, "-m", "gunicorn", "--check-config",
                          *dockerfile_args(free_port())], cwd=str(project), capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert res.returncode == 0, res.stderr


def test_berth_check_config_accepts_the_same_command(project):
    res = subprocess.run([sys.executable, "-m", "berth", "--check-config",
                          *dockerfile_args(free_port())], cwd=str(project), capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
                         env={**os.environ, "PYTHONPATH": str(ROOT),
                              "BERTH_IN_CONTAINER": "0"})
    assert res.returncode == 0, res.stderr


def test_the_gunicorn_hooks_fire_under_berth(berth, project):
    port = free_port()
    log = project / "hooks.log"
    srv = berth(dockerfile_args(port), bind=False, port=port, env={"HOOK_LOG": str(log)})
    assert http_get(port, "/hello")[0] == 200
    err = srv.stderr()
    assert "Server is ready. Spawning workers" in err
    assert err.count("Worker spawned (pid: ") >= 2
    deadline = time.monotonic() + 5
    while "post_request" not in (log.read_text() if log.exists() else "") and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    srv.stop()
    records = [line.split() for line in log.read_text().splitlines()]
    names = [r[0] for r in records]
    assert names.count("when_ready") == 1 and names.count("post_fork") >= 2
    assert ["pre_request", "GET", "/hello"] in records
    assert ["post_request", "/hello", "200", "OK"] in records
    assert names.count("worker_exit") >= 2
    assert names[-1] == "on_exit" and records[-1][1] == str(srv.pid)


@pytest.mark.parametrize("keep_alive, kept", [(None, True), ("0", False)])
def test_sync_workers_keep_connections_alive_unless_keep_alive_is_0(berth, keep_alive, kept):
    """Gunicorn's sync worker closes every connection after its response; berth's `-k sync`
    keeps it alive as gthread does (an idle connection costs it no thread), and
    `--keep-alive 0` closes, as the README and docs/settings.md say."""
    args = ["-k", "sync", "-w", "1", "--access-logfile", "none"]
    if keep_alive is not None:
        args += ["--keep-alive", keep_alive]
    srv = berth([*args, "super_app:app"])
    with connect(srv.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        status, headers, body = read_response(sock)
        assert status == 200 and body.startswith(b"pid=")
        assert (headers.get("connection") != "close") is kept, headers
        if kept:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            assert read_response(sock)[0] == 200
        else:
            assert sock.recv(1) == b""  # closed by the server

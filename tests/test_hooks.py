"""Gunicorn's server hooks: loading and validation, `call_hook`, and the objects hooks receive.

The last test runs berth with a config file of hooks that write to a file and checks that each
fires at its moment, with the attributes Gunicorn's documented examples use.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import signal
import socket
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest
from conftest import BufferedSocket, connect, free_port, http_get, read_response
from proto_helpers import HELLO, get_request, served_by, wait_for, wait_replaced

from berth import SERVER_SOFTWARE
from berth.config import Config
from berth.hooks import (
    HookError,
    RequestView,
    ResponseView,
    ServerView,
    WorkerView,
    call_hook,
    get_hook,
    validate_hook,
)
from berth.settings import HOOK_ARGS

HOOK_ARITY = {name: len(args) for name, args in HOOK_ARGS.items()}

GUNICORN_HOOKS = ("on_starting", "on_reload", "when_ready", "pre_fork", "post_fork",
                  "post_worker_init", "worker_int", "worker_abort", "pre_exec", "pre_request",
                  "post_request", "child_exit", "worker_exit", "nworkers_changed", "on_exit",
                  "ssl_context")


def test_every_gunicorn_hook_has_its_arity():
    assert set(HOOK_ARITY) == set(GUNICORN_HOOKS)
    gunicorn_config = pytest.importorskip("gunicorn.config")
    for s in gunicorn_config.KNOWN_SETTINGS:
        if s.name in HOOK_ARITY and s.name != "post_request":
            from gunicorn.util import get_arity

            assert get_arity(s.default) == HOOK_ARITY[s.name], s.name


@pytest.mark.parametrize("name", sorted(HOOK_ARITY))
def test_a_function_of_the_right_arity_is_accepted(name):
    def hook(*args):
        return args

    assert validate_hook(name, hook)(*([1] * HOOK_ARITY[name])) == tuple([1] * HOOK_ARITY[name])


def test_wrong_arity_is_refused_with_what_is_expected():
    with pytest.raises(HookError, match=r"a function taking 2 arguments \(server, worker\)"):
        validate_hook("post_fork", lambda server: None)
    with pytest.raises(HookError, match=r"2 arguments \(worker, req\)"):
        validate_hook("pre_request", lambda a, b, c: None)
    with pytest.raises(HookError, match=r"3 arguments \(server, new_value, old_value\)"):
        validate_hook("nworkers_changed", lambda a: None)
    with pytest.raises(HookError, match="not int"):
        validate_hook("on_exit", 3)


def test_post_request_may_take_two_three_or_four_arguments():
    calls = []
    validate_hook("post_request", lambda w, r: calls.append(2))(1, 2, 3, 4)
    validate_hook("post_request", lambda w, r, e: calls.append(3))(1, 2, 3, 4)
    validate_hook("post_request", lambda w, r, e, s: calls.append(4))(1, 2, 3, 4)
    assert calls == [2, 3, 4]
    with pytest.raises(HookError):
        validate_hook("post_request", lambda w: None)


def test_hook_given_as_an_import_path():
    assert validate_hook("on_exit", "os.path.exists") is os.path.exists
    with pytest.raises(HookError, match="cannot import"):
        validate_hook("on_exit", "no_such_module_berth.f")
    with pytest.raises(HookError, match="has no 'nope'"):
        validate_hook("on_exit", "os.nope")


def test_call_hook_calls_the_hook_and_returns_its_result():
    cfg = Config()
    assert call_hook(cfg, "on_starting", object()) is None  # no hook: nothing
    cfg.set("on_starting", lambda server: ("called", server), "file t.py")
    assert get_hook(cfg, "on_starting") is not None
    assert call_hook(cfg, "on_starting", "srv") == ("called", "srv")


def test_call_hook_logs_an_exception_and_survives(caplog):
    log = logging.getLogger("berth.test.hooks")
    cfg = Config()

    def broken(server):
        raise RuntimeError("hook-bug-42")

    cfg.set("when_ready", broken, "file t.py")
    server = SimpleNamespace(log=log)
    with caplog.at_level(logging.ERROR, logger="berth.test.hooks"):
        assert call_hook(cfg, "when_ready", server) is None
    assert "the when_ready hook raised an exception" in caplog.text
    assert "hook-bug-42" in caplog.text  # with the traceback


# --- the objects hooks receive -------------------------------------------------------------

ENVIRON = {
    "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/a b/c",
    "QUERY_STRING": "x=1&y=2", "RAW_URI": "/a%20b/c?x=1&y=2", "SERVER_PROTOCOL": "HTTP/1.0",
    "CONTENT_TYPE": "text/plain", "CONTENT_LENGTH": "3", "HTTP_HOST": "example.com",
    "HTTP_X_REQUEST_ID": "abc", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "5555",
    "wsgi.url_scheme": "http", "wsgi.input": None,
}


def test_request_view_has_gunicorns_request_attributes():
    req = RequestView(dict(ENVIRON))
    assert req.method == "POST"
    assert req.path == "/a%20b/c"  # as sent, like Gunicorn's req.path
    assert req.query == "x=1&y=2"
    assert req.uri == "/a%20b/c?x=1&y=2"
    assert req.version == (1, 0)
    assert req.scheme == "http"
    headers = dict(req.headers)
    assert headers == {"CONTENT-TYPE": "text/plain", "CONTENT-LENGTH": "3",
                       "HOST": "example.com", "X-REQUEST-ID": "abc"}
    assert all(isinstance(h, tuple) and len(h) == 2 for h in req.headers)
    # Gunicorn's shape: the (host, port) tuple, the port a number (here from the environ)
    assert req.remote_addr == req.peer_addr == ("127.0.0.1", 5555)


def test_what_a_pre_request_hook_does_to_req_headers_reaches_the_environ():
    """Gunicorn makes the environ from req.headers after pre_request, so a hook that appends
    or replaces a field (X-Request-Start for an APM's queue time) changes what the app sees."""
    env = dict(ENVIRON)
    req = RequestView(env)
    req.apply_header_changes()  # (headers never read: nothing to do)
    assert env == ENVIRON
    req.headers.append(("X-REQUEST-START", "t=1"))
    req.headers.append(("X-REQUEST-ID", "def"))  # a second field: joined, as Gunicorn
    req.headers.remove(("CONTENT-TYPE", "text/plain"))
    req.apply_header_changes()
    assert env["HTTP_X_REQUEST_START"] == "t=1"
    assert env["HTTP_X_REQUEST_ID"] == "abc,def"
    assert "CONTENT_TYPE" not in env and env["CONTENT_LENGTH"] == "3"
    req.headers = [("HOST", "example.org")]  # replaced whole, as Gunicorn's Request allows
    req.apply_header_changes()
    assert {k: v for k, v in env.items() if k.startswith(("HTTP_", "CONTENT_"))} == {
        "HTTP_HOST": "example.org"}


def test_request_view_reads_the_peer_from_the_socket_only_when_asked():
    asked = []

    def getpeername():
        asked.append(1)
        return ("::1", 5556, 0, 0)

    req = RequestView(dict(ENVIRON), getpeername)
    assert not asked
    assert req.remote_addr == req.peer_addr == ("::1", 5556, 0, 0) and asked == [1]

    def gone():
        raise OSError(107, "Transport endpoint is not connected")

    assert RequestView(dict(ENVIRON), gone).peer_addr == ("127.0.0.1", 5555)
    unix = dict(ENVIRON, REMOTE_ADDR="", REMOTE_PORT="")
    assert RequestView(unix).remote_addr == ""  # (Gunicorn: what accept() gives, '')


def test_request_view_without_raw_uri_uses_path_info():
    env = dict(ENVIRON)
    del env["RAW_URI"]
    req = RequestView(env)
    assert req.path == "/a b/c" and req.uri == "/a b/c?x=1&y=2"


def test_response_view_has_status_status_code_and_headers():
    resp = ResponseView("404 Not Found", [("Content-Type", "text/plain"),
                                          ("Content-Length", "9")], sent=9)
    assert resp.chunked is False and resp.version == SERVER_SOFTWARE  # (the Server header)
    assert resp.status == "404 Not Found"
    assert resp.status_code == 404
    assert resp.headers == [("Content-Type", "text/plain"), ("Content-Length", "9")]
    assert resp.response_length == 9 and resp.sent == 9
    assert ResponseView(None, None).status_code is None


def test_server_view_reads_through_to_the_master():
    log1, log2 = logging.getLogger("a"), logging.getLogger("b")
    cfg = Config(values={"workers": 3})
    master = SimpleNamespace(log=log1, cfg=cfg, app=None, listeners=["sock"],
                             workers={101: SimpleNamespace(age=1)})
    server = ServerView(master)
    assert server.log is log1 and server.cfg is cfg and server.pid == os.getpid()
    assert server.num_workers == 3 and server.LISTENERS == ["sock"]
    master.log = log2  # SIGUSR1 reopens the log: hooks see the new one
    assert server.log is log2
    assert server.WORKERS[101].pid == 101
    assert server.cfg.timeout == 30.0  # any setting, by Gunicorn's name


def test_worker_view_attributes():
    log = logging.getLogger("w")
    worker = WorkerView(Config(), log, pid=1234, age=5, ppid=1)
    assert (worker.pid, worker.ppid, worker.age, worker.log) == (1234, 1, 5, log)
    assert worker.max_requests == sys.maxsize and worker.sockets == []  # (as Gunicorn's)
    for missing in ("tmp", "timeout", "nr"):  # no true value in berth (berth/hooks.py)
        assert not hasattr(worker, missing)
    assert worker.cfg.loglevel == "info"
    assert "[booting]" in repr(WorkerView(Config(), log))


# --- end to end ----------------------------------------------------------------------------

HOOKS_CONF = '''\
import os

def _record(*parts):
    with open(os.environ["HOOK_LOG"], "a") as f:
        f.write(" ".join(str(p) for p in parts) + "\\n")

def on_starting(server):
    _record("on_starting", server.pid, server.cfg.workers)

def when_ready(server):
    server.log.info("Server is ready. Spawning workers")
    _record("when_ready", server.pid)

def pre_fork(server, worker):
    _record("pre_fork", server.pid)

def post_fork(server, worker):
    server.log.info("Worker spawned (pid: %s)", worker.pid)
    _record("post_fork", os.getpid(), worker.pid, worker.age)

def post_worker_init(worker):
    _record("post_worker_init", os.getpid(), worker.pid)

def pre_request(worker, req):
    worker.log.debug("%s %s", req.method, req.path)
    _record("pre_request", os.getpid(), worker.pid, req.method, req.path, req.query,
            dict(req.headers).get("X-HOOK-TEST"))

def post_request(worker, req, environ, resp):
    _record("post_request", os.getpid(), req.path, resp.status_code, environ["PATH_INFO"])

def nworkers_changed(server, new_value, old_value):
    _record("nworkers_changed", new_value, old_value)

def on_reload(server):
    _record("on_reload", server.pid)

def worker_exit(server, worker):
    _record("worker_exit", os.getpid(), worker.pid)

def child_exit(server, worker):
    _record("child_exit", os.getpid(), worker.pid)

def on_exit(server):
    _record("on_exit", server.pid)
'''


def read_records_text(path) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line for line in f.read().splitlines() if line.strip()]


def read_records(path) -> list[list[str]]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split() for line in f.read().splitlines() if line.strip()]


def wait_records(path, pred, timeout=10.0) -> list[list[str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        records = read_records(path)
        if pred(records):
            return records
        time.sleep(0.05)
    return read_records(path)


@pytest.mark.parametrize("hook", ["pre_request", "post_request"])
def test_sys_exit_in_a_request_hook_retires_the_worker_gracefully(berth, tmp_path, hook):
    (tmp_path / "exit.conf.py").write_text(textwrap.dedent(f"""
        import sys

        def {hook}(worker, req, *args):
            if req.path == "/hello":
                sys.exit(3)
        """))
    srv = berth(["-c", "exit.conf.py", "-w", "1", "--threads", "4", "proto_app:app"])
    first = served_by(srv.port)
    # (the request itself is answered: the hook's exception is logged, as any other is)
    assert http_get(srv.port, "/hello")[:3:2] == (200, HELLO)
    assert wait_replaced(srv.port, first)
    err = srv.stderr()
    assert f"the {hook} hook raised SystemExit" in err
    assert "retiring: the app raised SystemExit" in err


def test_preload_imports_the_app_before_on_starting_and_before_binding(berth, tmp_path):
    """Gunicorn's Arbiter.setup() imports a --preload'ed app, then start() calls on_starting
    and binds. berth called on_starting and bound first: a hook that prepares for the app
    after its import (or relies on the import having happened, as with Gunicorn) saw the
    other order."""
    log = tmp_path / "order.log"
    (tmp_path / "order_app.py").write_text(textwrap.dedent("""
        import os, socket
        with open(os.environ["HOOK_LOG"], "a") as f:
            s = socket.socket()
            bound = s.connect_ex(("127.0.0.1", int(os.environ["ORDER_PORT"]))) == 0
            s.close()
            f.write(f"import {'bound' if bound else 'unbound'}\\n")

        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        """))
    (tmp_path / "order.conf.py").write_text(textwrap.dedent("""
        import os
        preload_app = True

        def on_starting(server):
            with open(os.environ["HOOK_LOG"], "a") as f:
                f.write("on_starting\\n")
        """))
    port = free_port()
    srv = berth(["-c", "order.conf.py", "-w", "1", "order_app:app"], port=port,
                env={"HOOK_LOG": str(log), "ORDER_PORT": str(port)})
    assert http_get(srv.port, "/")[2] == b"ok"
    assert read_records_text(log) == ["import unbound", "on_starting"]


def test_hooks_fire_at_their_moments(berth, tmp_path):
    log = tmp_path / "hooks.log"
    (tmp_path / "hooks.conf.py").write_text(textwrap.dedent(HOOKS_CONF))
    srv = berth(["-c", "hooks.conf.py", "-w", "2", "--threads", "2", "proto_app:app"],
                env={"HOOK_LOG": str(log)})
    master = str(srv.pid)
    status, _, _ = http_get(srv.port, "/hello?a=1", headers={"X-Hook-Test": "yes"})
    assert status == 200
    assert read_records(log), "no hook fired"  # on_starting... ran before "ready": fail fast
    records = wait_records(log, lambda r: any(x[0] == "post_request" for x in r))
    names = [r[0] for r in records]
    assert names.count("on_starting") == 1 and ["on_starting", master, "2"] in records
    # the count is set first, as in Gunicorn's Arbiter.setup(), before on_starting
    assert records[:2] == [["nworkers_changed", "2", "None"], ["on_starting", master, "2"]]
    assert ["when_ready", master] in records
    assert names.count("pre_fork") >= 2 and all(r[1] == master for r in records
                                                if r[0] == "pre_fork")
    forks = [r for r in records if r[0] == "post_fork"]
    assert len(forks) >= 2
    for r in forks:  # called in the worker, with the worker's own pid
        assert r[1] == r[2] != master
    assert sorted(int(r[3]) for r in forks)[:2] == [1, 2]  # worker.age counts spawns
    assert names.count("post_worker_init") >= 2
    pre = [r for r in records if r[0] == "pre_request"]
    assert pre and pre[0][3:] == ["GET", "/hello", "a=1", "yes"] and pre[0][1] == pre[0][2]
    post = [r for r in records if r[0] == "post_request"]
    assert post[0][2:] == ["/hello", "200", "/hello"]

    srv.signal(signal.SIGTTIN)
    assert wait_records(log, lambda r: ["nworkers_changed", "3", "2"] in r)
    srv.signal(signal.SIGHUP)  # (-w 2 again: the count SIGTTIN raised goes back)
    records = wait_records(log, lambda r: ["on_reload", master] in r)
    assert records.index(["nworkers_changed", "2", "3"]) < records.index(["on_reload", master])

    srv.stop()
    records = read_records(log)
    names = [r[0] for r in records]
    assert names[-1] == "on_exit" and records[-1][1] == master
    exits = [r for r in records if r[0] == "worker_exit"]
    assert exits and all(r[1] == r[2] != master for r in exits)  # in the worker itself
    children = [r for r in records if r[0] == "child_exit"]
    assert children and all(r[1] == master != r[2] for r in children)  # in the master
    assert {r[2] for r in exits} <= {r[2] for r in children}


def test_sighup_calls_nworkers_changed_with_the_new_and_the_old_count(berth, tmp_path):
    # a reload that changed the worker count called no hook. Gunicorn's reload runs setup(),
    # whose `num_workers = cfg.workers` calls it, changed or not, before on_reload.
    log = tmp_path / "hooks.log"
    conf = tmp_path / "gunicorn.conf.py"
    hooks = textwrap.dedent(HOOKS_CONF)
    conf.write_text("workers = 2\n" + hooks)
    srv = berth(["--threads", "1", "proto_app:app"], env={"HOOK_LOG": str(log)})
    conf.write_text("workers = 3\n" + hooks)
    srv.signal(signal.SIGHUP)
    srv.wait_for_log("generation 2 ready (3 workers)")
    srv.signal(signal.SIGHUP)  # the same count: called all the same, as by Gunicorn
    srv.wait_for_log("generation 3 ready (3 workers)")
    master = str(srv.pid)
    assert [r for r in read_records(log) if r[0] in ("nworkers_changed", "on_reload")] == [
        ["nworkers_changed", "2", "None"],
        ["nworkers_changed", "3", "2"], ["on_reload", master],
        ["nworkers_changed", "3", "3"], ["on_reload", master]]


OBJECTS_CONF = '''
import os

def _record(**values):
    with open(os.environ["HOOK_LOG"], "a") as f:
        f.write(repr(values) + "\\n")

def pre_fork(server, worker):
    _record(hook="pre_fork", max_requests=worker.max_requests, address=server.address,
            sockets=sorted(str(s.getsockname()) for s in worker.sockets),
            proc_name=server.proc_name)

def pre_request(worker, req):
    _record(hook="pre_request", path=req.path, remote_addr=req.remote_addr,
            peer_addr=req.peer_addr)

def post_request(worker, req, environ, resp):
    _record(hook="post_request", path=req.path, remote_addr=req.remote_addr,
            version=resp.version, chunked=resp.chunked)
'''


@pytest.mark.parametrize("kind", ["gthread", "asgi"])
def test_hook_objects_have_gunicorns_attributes_in_gunicorns_shapes(berth, tmp_path, kind):
    # req.remote_addr was the string '127.0.0.1' and req.peer_addr's port a string; Gunicorn
    # gives both the address accept() returned: ('127.0.0.1', 56648), '' over a unix socket
    log = tmp_path / "hooks.log"
    path = tmp_path / "berth.sock"
    (tmp_path / "objects.conf.py").write_text(OBJECTS_CONF)
    app = ["-k", "asgi", "proto_asgi:app"] if kind == "asgi" else ["proto_app:app"]
    srv = berth(["-c", "objects.conf.py", "-b", f"unix:{path}", "-w", "1", "-n", "shop",
                 "--max-requests", "100", *app], env={"HOOK_LOG": str(log)})
    with connect(srv.port) as sock:
        client = sock.getsockname()
        sock.sendall(get_request("/hello"))
        assert read_response(sock)[0] == 200
        sock.sendall(get_request("/stream?n=2"))  # (no length: chunked on HTTP/1.1)
        assert read_response(sock)[0] == 200
    with BufferedSocket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(get_request("/hello", host="localhost"))
        assert read_response(sock)[0] == 200

    def records():
        return [ast.literal_eval(line) for line in read_records_text(log)]

    wait_for(lambda: sum(r["hook"] == "post_request" for r in records()) == 3)
    fork, *requests = records()
    assert fork == {"hook": "pre_fork", "max_requests": 100, "proc_name": "shop",
                    "address": [("127.0.0.1", srv.port), str(path)],
                    "sockets": sorted([str(("127.0.0.1", srv.port)), str(str(path))])}
    pre = [r for r in requests if r["hook"] == "pre_request"]
    post = [r for r in requests if r["hook"] == "post_request"]
    assert [(r["path"], r["remote_addr"], r["peer_addr"]) for r in pre] == [
        ("/hello", client, client), ("/stream", client, client), ("/hello", "", "")]
    # (in any order: a hook runs after its response is out, maybe after the next request's)
    assert sorted([(r["path"], r["remote_addr"], r["version"], r["chunked"]) for r in post],
                  key=repr) == sorted([
        ("/hello", client, SERVER_SOFTWARE, False), ("/stream", client, SERVER_SOFTWARE, True),
        ("/hello", "", SERVER_SOFTWARE, False)], key=repr)


CFG_CONF = """
import os

def when_ready(server):
    cfg = server.cfg
    with open(os.environ["HOOK_LOG"], "a") as f:
        f.write(repr({"proc_name": cfg.proc_name, "default_proc_name": cfg.default_proc_name,
                      "raw_env": list(cfg.raw_env), "env": cfg.env}) + "\\n")
"""


@pytest.mark.parametrize(("args", "expected"), [
    ([], {"proc_name": "proto_app:app", "default_proc_name": "proto_app:app", "raw_env": [],
          "env": {}}),
    (["-n", "shop", "-e", "A=1"], {"proc_name": "shop", "default_proc_name": "proto_app:app",
                                   "raw_env": ["A=1"], "env": {"A": "1"}}),
])
def test_server_cfg_gives_the_names_and_env_gunicorns_does(berth, tmp_path, args, expected):
    # Gunicorn's cfg.proc_name falls back to default_proc_name, which it sets to the app spec,
    # and raw_env is a list: hooks read None for both and failed on `for pair in raw_env`
    log = tmp_path / "hooks.log"
    (tmp_path / "cfg.conf.py").write_text(CFG_CONF)
    berth(["-c", "cfg.conf.py", "-w", "1", *args, "proto_app:app"], env={"HOOK_LOG": str(log)})
    wait_for(lambda: read_records_text(log))
    assert ast.literal_eval(read_records_text(log)[0]) == expected


SIDECAR_CONF = """
import subprocess
import sys

# (SIGHUP reads this file again: the list is kept where the new module finds it)
sidecars = sys.__dict__.setdefault("test_sidecars", [])


def when_ready(server):
    sidecars.append(subprocess.Popen(["sh", "-c", "exit 7"]))


def on_reload(server):
    for proc in sidecars:
        print("sidecar returncode", proc.wait(timeout=5), file=sys.stderr, flush=True)
"""


def test_a_child_a_hook_waits_for_later_keeps_its_exit_status(berth, tmp_path):
    # the master reaped every unknown zombie after 0.5 s, PID 1 or not: the hook's wait()
    # got 0 instead of 7. Outside PID 1 no orphan is ever the master's: it reaps none.
    (tmp_path / "sidecar.conf.py").write_text(SIDECAR_CONF)
    srv = berth(["-c", "sidecar.conf.py", "-w", "1", "proto_app:app"])
    time.sleep(1.5)  # (the child has been a zombie for three of the master's ticks)
    srv.signal(signal.SIGHUP)
    err = srv.wait_for_log("sidecar returncode", timeout=10)
    assert "sidecar returncode 7" in err, err


def test_an_aborted_worker_runs_worker_exit_after_worker_abort(berth, tmp_path):
    # Gunicorn's handle_abort calls worker_abort, then sys.exit(1): its worker_exit hook runs
    # too. berth's abort path ended in os._exit(1) after worker_abort: a cleanup in
    # worker_exit (flushing metrics, closing a client) never ran for a worker past --timeout.
    log = tmp_path / "hooks.log"
    (tmp_path / "abort.conf.py").write_text(textwrap.dedent('''\
        import os

        def _record(*parts):
            with open(os.environ["HOOK_LOG"], "a") as f:
                f.write(" ".join(str(p) for p in parts) + "\\n")

        def worker_abort(worker):
            _record("worker_abort", os.getpid(), worker.pid)

        def worker_exit(server, worker):
            _record("worker_exit", os.getpid(), worker.pid, worker.alive)
        '''))
    srv = berth(["-c", "abort.conf.py", "-w", "1", "--threads", "1", "--timeout", "1",
                 "super_app:app"], env={"HOOK_LOG": str(log)})
    victim = str(served_by(srv.port))
    sock = connect(srv.port)
    sock.sendall(get_request("/spin?s=30"))
    try:
        srv.wait_for_log(f"worker {victim} exited", timeout=15)
        records = wait_records(log, lambda r: any(x[0] == "worker_exit" for x in r), timeout=3)
    finally:
        sock.close()
    mine = [r for r in records if r[1] == victim]
    assert [r[0] for r in mine] == ["worker_abort", "worker_exit"], (records, srv.stderr())
    assert mine[1] == ["worker_exit", victim, victim, "False"]


@pytest.mark.parametrize("args", [["--threads", "1", "proto_app:app"],
                                  ["--threads", "4", "proto_app:app"],
                                  ["-k", "asgi", "proto_asgi:app"]],
                         ids=["wsgi-t1", "wsgi-t4", "asgi"])
def test_an_exception_in_pre_request_fails_the_request_with_500_and_no_app_call(
        berth, tmp_path, args):
    """As in Gunicorn, whose workers call pre_request inside the request's error handling: a
    check made there (a token, a quota) is not skipped when it raises. berth called the app
    anyway and answered 200."""
    (tmp_path / "deny.conf.py").write_text(textwrap.dedent("""
        def pre_request(worker, req):
            if req.path == "/record":
                raise PermissionError("denied by the hook")
        """))
    markers = tmp_path / "markers"
    markers.mkdir()
    srv = berth(["-c", "deny.conf.py", "-w", "1", *args],
                env={"PROTO_MARKER_DIR": str(markers)})
    status, _, _ = http_get(srv.port, "/record?tag=denied")
    assert status == 500
    assert wait_for(lambda: "denied by the hook" in srv.stderr(), timeout=5), srv.stderr()
    assert "Error handling request" in srv.stderr()
    assert not (markers / "record-denied").exists()  # the app was not called
    assert http_get(srv.port, "/hello")[:3:2] == (200, HELLO)  # the worker serves on


@pytest.mark.parametrize("threads", ["1", "4"])
def test_a_header_a_pre_request_hook_appends_reaches_the_app(berth, tmp_path, threads):
    """The recipe `req.headers.append(("X-REQUEST-START", ...))` in pre_request: under
    Gunicorn the app sees HTTP_X_REQUEST_START; berth made the environ before the hook and
    dropped it."""
    (tmp_path / "start.conf.py").write_text(textwrap.dedent("""
        def pre_request(worker, req):
            req.headers.append(("X-REQUEST-START", "t=1700000000.0"))
        """))
    srv = berth(["-c", "start.conf.py", "-w", "1", "--threads", threads, "proto_app:app"])
    status, _, body = http_get(srv.port, "/env")
    assert status == 200
    assert json.loads(body)["str"]["HTTP_X_REQUEST_START"] == "t=1700000000.0"


@pytest.mark.parametrize("args", [[], ["--preload"]], ids=["worker", "preload"])
def test_post_worker_init_may_wrap_the_app_in_worker_wsgi(berth, tmp_path, args):
    """Gunicorn's worker serves `worker.wsgi` once post_worker_init returns, so a hook may
    wrap the app in a middleware (`worker.wsgi = Middleware(worker.wsgi)`). berth's
    worker.wsgi could not be set: the hook raised, every worker died at boot, berth stopped."""
    (tmp_path / "wrap.conf.py").write_text(textwrap.dedent("""
        def post_worker_init(worker):
            inner = worker.wsgi
            def wrapped(environ, start_response):
                environ["HTTP_X_WRAPPED_BY_HOOK"] = "yes"
                return inner(environ, start_response)
            worker.wsgi = wrapped
        """))
    srv = berth(["-c", "wrap.conf.py", "-w", "1", *args, "proto_app:app"])
    status, _, body = http_get(srv.port, "/env")
    assert status == 200, srv.stderr()
    assert json.loads(body)["str"]["HTTP_X_WRAPPED_BY_HOOK"] == "yes"


@pytest.mark.parametrize("hook", ["post_fork", "post_worker_init"])
def test_a_boot_hook_that_raises_stops_its_worker_before_it_serves(berth, tmp_path, hook):
    """Gunicorn's worker does not boot when post_fork or post_worker_init raises: a worker
    whose database pool or tracer was not set up must not serve without it. berth's workers
    served on. Every worker dies before it is ready: berth stops (5 in a row), exit 1."""
    args = "server, worker" if hook == "post_fork" else "worker"
    (tmp_path / "boot.conf.py").write_text(textwrap.dedent(f"""
        def {hook}({args}):
            raise ConnectionRefusedError("no database at boot")
        """))
    srv = berth(["-c", "boot.conf.py", "-w", "1", "proto_app:app"], wait_ready=False)
    code = srv.wait(timeout=60)
    err = srv.stderr()
    assert code == 1, err
    assert "ready: " not in err
    assert f"the {hook} hook raised an exception: the worker exits" in err
    assert "no database at boot" in err
    assert "workers died before becoming ready" in err


def test_server_cfg_has_what_gunicorns_config_gives_hooks(berth, tmp_path):
    """Hooks read `server.cfg.settings[name].value`, `.address`, `.env`, `.is_ssl`... on
    Gunicorn's Config: each raised AttributeError in berth (logged, the hook cut short)."""
    out = tmp_path / "cfg.json"
    (tmp_path / "cfg.conf.py").write_text(textwrap.dedent(f"""
        import json

        def when_ready(server):
            cfg = server.cfg
            with open({str(out)!r}, "w") as f:
                json.dump({{
                    "workers": cfg.settings["workers"].value,
                    "workers_get": cfg.settings["workers"].get(),
                    "timeout_default": cfg.settings["timeout"].default,
                    "worker_class_str": cfg.worker_class_str,
                    "address": cfg.address,
                    "is_ssl": cfg.is_ssl,
                    "ssl_certfile": cfg.ssl_options["certfile"],
                    "env": cfg.env,
                    "uid": cfg.uid,
                    "gid": cfg.gid,
                }}, f)
        """))
    srv = berth(["-c", "cfg.conf.py", "-w", "2", "-e", "GREETING=hi", "proto_app:app"])
    assert wait_for(out.exists, timeout=5), srv.stderr()
    got = json.loads(out.read_text())
    assert got == {"workers": 2, "workers_get": 2, "timeout_default": 30.0,
                   "worker_class_str": "gthread", "address": [["127.0.0.1", srv.port]],
                   "is_ssl": False, "ssl_certfile": None, "env": {"GREETING": "hi"},
                   "uid": os.geteuid(), "gid": os.getegid()}, got
    assert "raised an exception" not in srv.stderr()

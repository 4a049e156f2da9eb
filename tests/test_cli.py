"""berth's command line, end to end: app specs, binds, options, startup failures."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
from conftest import APPS, ROOT, connect, free_port, read_response
from proto_helpers import HELLO, BufferedSocket, get_request, http_get, pids_children, wait_for

from berth.sockets import split_bind


def run_berth(args, timeout=20, env=None, cwd=None) -> subprocess.CompletedProcess:
    """Run berth to completion (for commands that must exit by themselves)."""
    full_env = dict(os.environ)
    full_env.update({"BERTH_IN_CONTAINER": "0", "PYTHONPATH": f"{APPS}{os.pathsep}{ROOT}"})
    full_env.pop("PORT", None)
    full_env.pop("WEB_CONCURRENCY", None)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "berth", *args], check=False,
                          capture_output=True, text=True, timeout=timeout, env=full_env,
                          cwd=cwd, stdin=subprocess.DEVNULL)


def get_json(port, path):
    status, _, body = http_get(port, path)
    assert status == 200, body
    return json.loads(body)


# --- informational flags ------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--version", "-v"])  # (-v: Gunicorn's short form)
def test_version_prints_version_and_exits_0(flag):
    res = run_berth([flag])
    assert res.returncode == 0, res.stderr
    version = re.search(r'__version__ = "([^"]+)"',
                        (ROOT / "berth" / "__init__.py").read_text()).group(1)
    assert version in res.stdout + res.stderr


def test_help_lists_the_main_options():
    res = run_berth(["--help"])
    assert res.returncode == 0
    text = res.stdout
    for opt in ("--bind", "--workers", "--threads", "--backlog", "--keep-alive", "--chdir",
                "--pythonpath", "--preload", "--access-logfile", "--error-logfile",
                "--access-logformat", "--log-level", "--header-timeout",
                "--limit-request-line", "--limit-request-fields",
                "--limit-request-field_size", "--body-buffer-size", "--graceful-timeout",
                "--version"):
        assert opt in text, f"{opt} missing from --help"


BAD_VALUES = [
    (["-w", "abc"], "worker"),
    (["--threads", "many"], "thread"),
    (["--backlog", "big"], "backlog"),
    (["--keep-alive", "forever"], "keep-alive"),
    (["--header-timeout", "soon"], "header-timeout"),
    (["--limit-request-line", "long"], "limit-request-line"),
    (["--body-buffer-size", "huge"], "body-buffer-size"),
    (["--log-level", "loud"], "log-level"),
    (["-b", "127.0.0.1:notaport"], "bind"),
]
# these passed --check-config and then failed at run time: a traceback, five workers dying
# with nothing naming the setting, or a bind refused by the kernel
RUN_TIME_FAILURES = [
    (["--statsd-host", "host:abc"], "statsd-host"),
    (["--statsd-host", "localhost:99999"], "statsd-host"),
    (["--access-logfile", "/nonexistent-berth-dir/access.log"], "access-logfile"),
    (["-b", "[zz::1]:8000"], "bind"),
]
BAD_VALUES += RUN_TIME_FAILURES


@pytest.mark.parametrize(("args", "setting"), BAD_VALUES, ids=[b[1] for b in BAD_VALUES])
def test_bad_flag_value_exits_2_naming_the_setting(args, setting):
    res = run_berth([*args, "proto_app:app"], timeout=20)
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line:\n{res.stderr}"
    assert setting in lines[0].lower(), f"the line does not name {setting!r}: {lines[0]}"


@pytest.mark.parametrize(("args", "setting"), RUN_TIME_FAILURES,
                         ids=[b[1] for b in RUN_TIME_FAILURES])
def test_check_config_refuses_what_the_run_would_fail_on(args, setting):
    res = run_berth(["--check-config", *args, "proto_app:app"], timeout=20)
    assert res.returncode == 2 and setting in res.stderr, (res.returncode, res.stderr)


def test_check_config_tries_the_access_log_without_leaving_one_behind(tmp_path):
    """Gunicorn's --check-config makes no file; berth's tries the access log (so that one
    the workers could not write is refused) and leaves neither a new file nor a changed one.
    A path the workers cannot open for writing (here a folder) is refused."""
    new_log = tmp_path / "access.log"
    res = run_berth(["--check-config", "--access-logfile", str(new_log), "proto_app:app"],
                    timeout=20)
    assert res.returncode == 0, res.stderr
    assert not new_log.exists()
    kept = tmp_path / "kept.log"
    kept.write_bytes(b"a line\n")
    res = run_berth(["--check-config", "--access-logfile", str(kept), "proto_app:app"],
                    timeout=20)
    assert res.returncode == 0 and kept.read_bytes() == b"a line\n", res.stderr
    res = run_berth(["--check-config", "--access-logfile", str(tmp_path), "proto_app:app"],
                    timeout=20)
    assert res.returncode == 2 and "access-logfile" in res.stderr, (res.returncode, res.stderr)


def test_missing_app_argument_exits_2():
    res = run_berth([], timeout=20)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr


# --- app specs ----------------------------------------------------------------------------

def test_module_variable_app(berth):
    srv = berth(["-w", "1", "proto_app:app"])
    assert http_get(srv.port, "/hello")[2] == HELLO


def test_factory_call_without_args(berth):
    srv = berth(["-w", "1", "factory_app:create_app()"])
    assert http_get(srv.port, "/")[2] == b"factory:default\n"


def test_factory_call_with_literal_arg(berth):
    srv = berth(["-w", "1", "factory_app:create_app('prod')"])
    assert http_get(srv.port, "/")[2] == b"factory:prod\n"


def test_factory_call_with_two_literal_args(berth):
    srv = berth(["-w", "1", 'factory_app:create_app("x", "-y")'])
    assert http_get(srv.port, "/")[2] == b"factory:x-y\n"


def _assert_exits_with_error(res: subprocess.CompletedProcess, *needles):
    assert res.returncode != 0
    for n in needles:
        assert n in res.stderr, f"{n!r} not in stderr:\n{res.stderr}"


def test_import_error_exits_nonzero_with_traceback(tmp_path):
    port = free_port()
    t0 = time.monotonic()
    res = run_berth(["-b", f"127.0.0.1:{port}", "-w", "1", "broken_app:app"], timeout=30,
                    cwd=str(tmp_path))
    assert time.monotonic() - t0 < 30
    _assert_exits_with_error(res, "Traceback", "berth_test_module_that_does_not_exist")
    assert res.returncode == 4, res.stderr  # (a failed reload holds back instead: not here)
    # no respawn loop: the import is not retried over and over
    assert res.stderr.count("berth_test_module_that_does_not_exist") < 10


@pytest.mark.parametrize("preload", [False, True])
def test_import_error_traceback_goes_to_the_error_log(tmp_path, preload):
    """As Gunicorn's: the traceback is in --error-logfile (not raw on stderr), and with
    --log-format json it is a field of one JSON record."""
    errlog = tmp_path / "error.log"
    more = ["--preload"] if preload else []
    res = run_berth(["-b", f"127.0.0.1:{free_port()}", "-w", "1", *more, "--error-logfile",
                     str(errlog), "broken_app:app"], timeout=30, cwd=str(tmp_path))
    assert res.returncode == 4, res.stderr
    text = errlog.read_text()
    assert "Traceback" in text and "berth_test_module_that_does_not_exist" in text, text
    assert "berth_test_module_that_does_not_exist" not in res.stderr, res.stderr
    res = run_berth(["-b", f"127.0.0.1:{free_port()}", "-w", "1", *more, "--log-format",
                     "json", "broken_app:app"], timeout=30, cwd=str(tmp_path))
    assert res.returncode == 4, res.stderr
    records = [json.loads(line) for line in res.stderr.splitlines()]  # every line: JSON
    failed = [r for r in records if "berth_test_module_that_does_not_exist" in
              r.get("exception", "")]
    assert failed and failed[0]["level"] == "error", records


def test_import_error_with_preload_exits_nonzero_with_traceback(tmp_path):
    port = free_port()
    res = run_berth(["-b", f"127.0.0.1:{port}", "-w", "2", "--preload", "broken_app:app"],
                    timeout=30, cwd=str(tmp_path))
    _assert_exits_with_error(res, "Traceback", "berth_test_module_that_does_not_exist")


def test_unknown_module_exits_nonzero(tmp_path):
    res = run_berth(["-b", f"127.0.0.1:{free_port()}", "-w", "1", "no_such_module_xyz:app"],
                    timeout=30, cwd=str(tmp_path))
    _assert_exits_with_error(res, "no_such_module_xyz")


def test_unknown_attribute_exits_nonzero(tmp_path):
    res = run_berth(["-b", f"127.0.0.1:{free_port()}", "-w", "1", "proto_app:no_such_app"],
                    timeout=30, cwd=str(tmp_path))
    _assert_exits_with_error(res, "no_such_app")


def test_non_callable_app_exits_nonzero(tmp_path):
    res = run_berth(["-b", f"127.0.0.1:{free_port()}", "-w", "1", "factory_app:not_callable"],
                    timeout=30, cwd=str(tmp_path))
    _assert_exits_with_error(res, "not_callable")


# --- binds --------------------------------------------------------------------------------

def test_bind_is_repeatable(berth):
    second = free_port()
    srv = berth(["-b", f"127.0.0.1:{second}", "-w", "1", "proto_app:app"])
    assert http_get(srv.port, "/hello")[2] == HELLO
    assert http_get(second, "/hello")[2] == HELLO


def test_a_tcp_scheme_bind_is_served_as_by_gunicorn(berth, tmp_path):
    # `tcp://HOST:PORT` passed --check-config, then stopped berth at start ("Name or service
    # not known"); Gunicorn's util.parse_address drops the prefix
    port = free_port()
    bind = f"tcp://127.0.0.1:{port}"
    assert run_berth(["--check-config", "-b", bind, "proto_app:app"]).returncode == 0
    berth(["-b", bind, "-w", "1", "proto_app:app"], bind=False, port=port)
    assert http_get(port, "/hello")[2] == HELLO


def test_an_address_bound_twice_is_listened_on_once(berth):
    # berth exited 1 ("Address already in use"); Gunicorn retries for 5 s, then exits 1
    port = free_port()
    bind = f"127.0.0.1:{port}"
    srv = berth(["-b", bind, "-b", bind, "-b", f"tcp://{bind}", "-w", "1", "proto_app:app"],
                bind=False, port=port)
    assert http_get(port, "/hello")[2] == HELLO
    err = srv.stderr()
    assert f"--bind {bind} is given twice: berth listens on it once" in err
    assert f"--bind tcp://{bind} is {bind} again: berth listens on it once" in err


@pytest.mark.parametrize(("bind", "expected"), [
    ("tcp://127.0.0.1:8001", (socket.AF_INET, ("127.0.0.1", 8001))),
    ("tcp://[::1]:8001", (socket.AF_INET6, ("::1", 8001))),
    ("unix:/run/b.sock", (socket.AF_UNIX, "/run/b.sock")),
    ("unix:///run/b.sock", (socket.AF_UNIX, "/run/b.sock")),
    ("unix://b.sock", (socket.AF_UNIX, "b.sock")),  # relative, as for Gunicorn
    ("[localhost]:8001", (socket.AF_INET, ("localhost", 8001))),
])
def test_binds_are_read_as_gunicorns_parse_address_reads_them(bind, expected):
    assert split_bind(bind) == expected
    gunicorn_util = pytest.importorskip("gunicorn.util")
    family, where = expected
    assert gunicorn_util.parse_address(bind) == where


def test_bind_ipv6_loopback(berth):
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    srv = berth(["-b", f"[::1]:{port}", "-w", "1", "proto_app:app"])
    with BufferedSocket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(("::1", port))
        sock.sendall(get_request("/env", host=f"[::1]:{port}"))
        status, _, body = read_response(sock)
    assert status == 200
    env = json.loads(body)["str"]
    assert env["REMOTE_ADDR"] == "::1"
    # the 127.0.0.1 bind from the fixture works too
    assert http_get(srv.port, "/hello")[2] == HELLO


def _dual_stack_default() -> bool:
    """Whether an IPv6 wildcard socket takes IPv4 clients here unless told not to (Linux's
    net.ipv6.bindv6only = 0, the usual default)."""
    try:
        with open("/proc/sys/net/ipv6/bindv6only") as f:
            if f.read().strip() != "0":
                return False
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _dual_stack_default(), reason="no dual-stack IPv6 sockets here")
def test_an_ipv6_wildcard_bind_takes_ipv4_clients_too_as_gunicorns_does(berth):
    """Gunicorn never sets IPV6_V6ONLY, so `-b [::]:8000` (the usual dual-stack bind in
    Kubernetes) takes IPv4 clients too; berth set it, and IPv4 clients (probes, a proxy on
    127.0.0.1) were refused."""
    port = free_port()
    srv = berth(["-b", f"[::]:{port}", "-w", "1", "proto_app:app"], bind=False, port=port)
    status, _, body = http_get(port, "/env")  # (over IPv4: 127.0.0.1)
    assert status == 200, srv.stderr()
    assert json.loads(body)["str"]["REMOTE_ADDR"] == "::ffff:127.0.0.1"  # (as in Gunicorn)
    with BufferedSocket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(("::1", port))
        sock.sendall(get_request("/hello", host=f"[::1]:{port}"))
        assert read_response(sock)[0] == 200


@pytest.mark.skipif(not _dual_stack_default(), reason="no dual-stack IPv6 sockets here")
def test_an_ipv6_wildcard_beside_an_ipv4_bind_on_its_port_is_ipv6_only(berth):
    """`-b 127.0.0.1:P -b [::]:P`: the IPv6 listener is IPv6 only, so the two do not collide
    (a dual-stack `::` would take the IPv4 port too: EADDRINUSE)."""
    port = free_port()
    srv = berth(["-b", f"[::]:{port}", "-w", "1", "proto_app:app"], port=port)
    assert http_get(port, "/hello")[2] == HELLO, srv.stderr()  # (the fixture's 127.0.0.1)
    with BufferedSocket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(("::1", port))
        sock.sendall(get_request("/hello", host=f"[::1]:{port}"))
        assert read_response(sock)[0] == 200


@pytest.mark.parametrize("binds, expected", [
    (["[::]:8000"], set()),
    (["0.0.0.0:8000", "[::]:8000"], {"[::]:8000"}),
    (["0.0.0.0:8000", "[::]:9000", "[::1]:8000", "unix:/tmp/x.sock"], {"[::1]:8000"}),
])
def test_v6only_binds_are_the_ipv6_ones_sharing_an_ipv4_binds_port(binds, expected):
    from berth.sockets import v6only_binds

    assert v6only_binds(binds) == expected


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_systemd_socket_activation_and_notify_as_gunicorn(tmp_path, kind):
    """Gunicorn's documented systemd setup (a gunicorn.socket unit, Type=notify, no --bind):
    the master serves the sockets systemd passes ($LISTEN_FDS from fd 3 when $LISTEN_PID is
    its pid) instead of binding, and sends READY=1 to $NOTIFY_SOCKET once it listens. berth
    bound 127.0.0.1:8000 and never told systemd it started (the unit timed out). A unix
    socket systemd owns is left in place at exit (its unit listens on it again)."""
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(20)
    if kind == "tcp":
        port = free_port()
        listener = socket.create_server(("127.0.0.1", port))
    else:
        path = tmp_path / "activated.sock"
        listener = socket.socket(socket.AF_UNIX)
        listener.bind(str(path))
        listener.listen(16)
    launcher = ("import os, sys\n"
                "os.dup2(int(sys.argv[1]), 3)\n"
                "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
                "os.execv(sys.executable, [sys.executable, '-m', 'berth', *sys.argv[2:]])\n")
    env = dict(os.environ, PYTHONPATH=f"{APPS}{os.pathsep}{ROOT}", BERTH_IN_CONTAINER="0",
               NOTIFY_SOCKET=str(tmp_path / "notify"))
    env.pop("PORT", None)
    err = tmp_path / "stderr.log"
    with open(err, "wb") as err_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", launcher, str(listener.fileno()), "-w", "1", "proto_app:app"],
            env=env, cwd=str(tmp_path), stdout=subprocess.DEVNULL, stderr=err_file,
            pass_fds=(listener.fileno(),))
    try:
        assert notify.recv(4096).startswith(b"READY=1"), err.read_text()
        assert wait_for(lambda: "ready: " in err.read_text(), timeout=20), err.read_text()
        assert "systemd socket activation" in err.read_text()
        assert "127.0.0.1:8000" not in err.read_text()
        if kind == "tcp":
            assert http_get(port, "/hello")[2] == HELLO
        else:
            with BufferedSocket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(path))
                sock.sendall(get_request("/hello"))
                assert read_response(sock)[2] == HELLO
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        if kind == "unix":
            assert path.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        listener.close()
        notify.close()


def test_bind_unix_socket(berth, tmp_path):
    path = tmp_path / "berth.sock"
    berth(["-b", f"unix:{path}", "-w", "1", "proto_app:app"])
    assert path.exists()
    with BufferedSocket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(get_request("/hello", host="localhost"))
        status, _, body = read_response(sock)
    assert (status, body) == (200, HELLO)


def test_a_request_on_a_unix_socket_has_no_client_address_as_in_gunicorn(berth, tmp_path):
    # nginx in front on a unix socket: every request used to say REMOTE_ADDR 127.0.0.1
    # (passing "only from localhost" checks) and SERVER_NAME localhost, SERVER_PORT 0
    path = tmp_path / "berth.sock"
    srv = berth(["-b", f"unix:{path}", "-w", "1", "proto_app:app"])
    with BufferedSocket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(get_request("/env", host="shop.example.com"))
        status, _, body = read_response(sock)
    env = json.loads(body)["str"]
    assert status == 200
    assert env["REMOTE_ADDR"] == "" and "REMOTE_PORT" not in env
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("shop.example.com", "80")
    assert wait_for(lambda: '"GET /env HTTP/1.1" 200' in srv.stdout())
    line = next(ln for ln in srv.stdout().splitlines() if "GET /env" in ln)
    assert not line.startswith("127.0.0.1"), line  # (%(h)s: the empty address, as Gunicorn)


def test_a_unix_socket_request_behind_a_proxy_takes_its_server_from_host_after_the_scheme(
        berth, tmp_path):
    # nginx on the socket, terminating TLS: SERVER_PORT was read before X-Forwarded-Proto made
    # the scheme https (80, where Gunicorn says 443); with the PROXY protocol, a header naming
    # the client hid that the socket is a unix one (SERVER_NAME localhost, SERVER_PORT 0)
    path = tmp_path / "berth.sock"
    berth(["-b", f"unix:{path}", "-w", "1", "--proxy-protocol", "auto", "proto_app:app"])
    sends = {
        "forwarded": get_request("/env", host="shop.example.com",
                                 headers={"X-Forwarded-Proto": "https"}),
        "proxy": b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n"
                 + get_request("/env", host="shop.example.com:8443"),
    }
    got = {}
    for name, raw in sends.items():
        with BufferedSocket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(raw)
            status, _, body = read_response(sock)
        assert status == 200, name
        got[name] = json.loads(body)["str"]
    env = got["forwarded"]
    assert (env["wsgi.url_scheme"], env["SERVER_NAME"], env["SERVER_PORT"]) == (
        "https", "shop.example.com", "443")
    env = got["proxy"]
    assert (env["REMOTE_ADDR"], env["REMOTE_PORT"]) == ("203.0.113.7", "56324")
    assert (env["SERVER_NAME"], env["SERVER_PORT"]) == ("shop.example.com", "8443")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_unix_socket_file_is_removed_at_exit_after_a_graceful_or_a_quick_stop(
        berth, tmp_path, sig):
    path = tmp_path / "berth.sock"
    srv = berth(["-b", f"unix:{path}", "-w", "1", "proto_app:app"])
    assert path.exists()
    assert srv.stop(sig) == 0, srv.stderr()
    assert not path.exists(), f"{path} left behind after {sig.name}"


def _umask_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    pytest.skip("no Umask in /proc/PID/status (Linux < 4.7)")


@pytest.mark.parametrize(("args", "mode"), [([], 0o777), (["--umask", "0o027"], 0o750),
                                            (["-m", "077"], 0o700)],
                         ids=["default-0", "0o027", "077"])
def test_umask_sets_the_unix_socket_mode_only(berth, tmp_path, args, mode):
    """As Gunicorn: --umask (default 0) is the umask while the unix socket is bound, so it
    sets the socket's mode; the master and workers keep the umask they started with."""
    path = tmp_path / "berth.sock"
    old = os.umask(0o022)
    try:
        srv = berth(["-b", f"unix:{path}", "-w", "1", *args, "proto_app:app"])
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode
    for pid in [srv.pid, *pids_children(srv.pid)]:
        assert _umask_of(pid) == 0o022, pid


def _can_bind_with_reuseport(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            s.bind(("127.0.0.1", port))  # never listens: takes none of berth's connections
        except OSError:
            return False
        return True


def test_reuse_port_sets_so_reuseport_on_the_listener(berth):
    srv = berth(["-w", "1", "--reuse-port", "proto_app:app"])
    assert _can_bind_with_reuseport(srv.port)
    assert http_get(srv.port, "/hello")[2] == HELLO


def test_without_reuse_port_the_port_is_berths_alone(berth):
    srv = berth(["-w", "1", "proto_app:app"])
    assert not _can_bind_with_reuseport(srv.port)


def test_bind_inherited_fd(berth):
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    port = lsock.getsockname()[1]
    fd = lsock.fileno()
    os.set_inheritable(fd, True)
    try:
        srv = berth(["-b", f"fd://{fd}", "-w", "1", "proto_app:app"], bind=False, port=port,
                    pass_fds=(fd,))
        lsock.close()  # only berth holds the listening socket now
        assert http_get(port, "/hello")[2] == HELLO
        assert srv.proc.poll() is None
    finally:
        lsock.close()


def test_default_bind_is_localhost_8000_outside_a_container(berth):
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket() as s:
            try:
                s.bind((host, 8000))
            except OSError:
                pytest.skip("port 8000 is in use")
    srv = berth(["-w", "1", "proto_app:app"], bind=False, port=8000,
                env={"BERTH_IN_CONTAINER": "0"})
    assert http_get(8000, "/hello")[2] == HELLO
    assert "127.0.0.1:8000" in srv.stderr()


# --- worker / thread options --------------------------------------------------------------

def test_workers_option_starts_that_many_worker_processes(berth):
    srv = berth(["-w", "3", "proto_app:app"])
    assert wait_for(lambda: len(pids_children(srv.pid)) >= 3, timeout=10), \
        pids_children(srv.pid)
    assert http_get(srv.port, "/hello")[2] == HELLO


def test_threads_option_serves_requests_concurrently(berth):
    srv = berth(["-w", "1", "--threads", "4", "proto_app:app"])
    results = []

    def one():
        results.append(http_get(srv.port, "/sleep?s=0.6", timeout=10)[0])

    t0 = time.monotonic()
    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    elapsed = time.monotonic() - t0
    assert results == [200] * 4
    assert elapsed < 2.0, f"4 x 0.6 s sleeps took {elapsed:.2f}s with --threads 4"


def test_preload_imports_app_in_master(berth):
    srv = berth(["-w", "1", "--preload", "proto_app:app"])
    info = get_json(srv.port, "/pid")
    assert info["import_pid"] == srv.pid
    assert info["pid"] != srv.pid


def test_without_preload_app_is_imported_in_worker(berth):
    srv = berth(["-w", "1", "proto_app:app"])
    info = get_json(srv.port, "/pid")
    assert info["import_pid"] == info["pid"]
    assert info["pid"] != srv.pid
    # the app's objects, loaded in the worker, are frozen out of the collector's full passes
    assert info["gc_frozen"] > 1000


def test_backlog_option_accepted(berth):
    srv = berth(["-w", "1", "--backlog", "16", "proto_app:app"])
    assert http_get(srv.port, "/hello")[2] == HELLO


# --- environment / paths ------------------------------------------------------------------

def test_env_option_sets_os_environ_for_app(berth):
    srv = berth(["-w", "1", "-e", "BERTH_TEST_A=alpha", "-e", "BERTH_TEST_B=x=y",
                 "proto_app:app"])
    assert get_json(srv.port, "/osenv?key=BERTH_TEST_A") == {"BERTH_TEST_A": "alpha"}
    assert get_json(srv.port, "/osenv?key=BERTH_TEST_B") == {"BERTH_TEST_B": "x=y"}


def test_env_option_visible_at_import_time_with_preload(berth, tmp_path):
    mod = tmp_path / "envmod"
    mod.mkdir()
    (mod / "env_at_import.py").write_text(
        "import os\nVALUE = os.environ.get('BERTH_TEST_IMPORT', 'unset').encode()\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Length', str(len(VALUE)))])\n"
        "    return [VALUE]\n")
    srv = berth(["-w", "1", "--preload", "--pythonpath", str(mod), "-e",
                 "BERTH_TEST_IMPORT=seen", "env_at_import:app"])
    assert http_get(srv.port, "/")[2] == b"seen"


def _write_cwd_app(directory, name):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(
        "import os\n"
        "def app(environ, start_response):\n"
        "    body = os.getcwd().encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(body)))])\n"
        "    return [body]\n")


def test_chdir_changes_directory_and_finds_app_there(berth, tmp_path):
    appdir = tmp_path / "chdir_target"
    _write_cwd_app(appdir, "cwd_app_for_chdir")
    srv = berth(["-w", "1", "--chdir", str(appdir), "cwd_app_for_chdir:app"])
    assert http_get(srv.port, "/")[2] == str(appdir).encode()


def test_pythonpath_adds_import_directory(berth, tmp_path):
    appdir = tmp_path / "elsewhere"
    _write_cwd_app(appdir, "cwd_app_for_pythonpath")
    srv = berth(["-w", "1", "--pythonpath", str(appdir), "cwd_app_for_pythonpath:app"])
    assert http_get(srv.port, "/")[0] == 200


def test_pythonpath_entries_are_searched_in_gunicorns_order(berth, tmp_path):
    """Gunicorn inserts each --pythonpath entry at the front of sys.path in turn, so with
    `--pythonpath a,b` a module found in both is imported from b (and a directory already on
    sys.path is not added again): the same module must be imported under berth."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "which_pythonpath_dir.py").write_text(f"WHO = {name!r}\n")
    (tmp_path / "pp_order_app.py").write_text(
        "import which_pythonpath_dir\n"
        "def app(environ, start_response):\n"
        "    body = which_pythonpath_dir.WHO.encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(body)))])\n"
        "    return [body]\n")
    srv = berth(["-w", "1", "--pythonpath", "a,b", "pp_order_app:app"])
    assert http_get(srv.port, "/")[2] == b"b"


def test_relative_log_and_pid_files_are_in_the_chdir_directory_as_in_gunicorn(berth, tmp_path):
    """Gunicorn changes to --chdir once its configuration is read, before it opens any file
    the configuration names: `--chdir sub --error-logfile err.log` writes sub/err.log, as
    the access log and the pid file are, and SIGUSR1 (logrotate) reopens that same file."""
    sub = tmp_path / "sub"
    _write_cwd_app(sub, "cwd_app_for_chdir_logs")
    srv = berth(["-w", "1", "--chdir", "sub", "--error-logfile", "err.log", "--access-logfile",
                 "acc.log", "-p", "berth.pid", "cwd_app_for_chdir_logs:app"], wait_ready=False,
                cwd=tmp_path)
    log = sub / "err.log"
    assert wait_for(lambda: log.exists() and "ready: " in log.read_text(), timeout=20), (
        srv.stderr(), sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")))
    assert not (tmp_path / "err.log").exists()
    assert (sub / "berth.pid").read_text().strip() == str(srv.pid)
    assert http_get(srv.port, "/")[2] == str(sub).encode()
    log.rename(sub / "err.log.1")  # logrotate, then SIGUSR1: the master reopens the error log
    srv.signal(signal.SIGUSR1)
    assert wait_for(lambda: log.exists(), timeout=10), sorted(
        str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert wait_for(lambda: (sub / "acc.log").exists(), timeout=10)


def test_a_request_line_limit_above_gunicorns_maximum_serves_as_gunicorn_does(berth):
    """`--limit-request-line 20000`: Gunicorn answers a 9000-byte request line 414 (its parser
    lowers the limit to 8190); so must berth, with a warning at start saying so."""
    srv = berth(["-w", "1", "--limit-request-line", "20000", "proto_app:app"])
    assert "--limit-request-line (limit_request_line) = 20000: above Gunicorn's maximum, " \
           "8190" in srv.stderr()
    line = b"GET /" + b"a" * (9000 - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"
    with connect(srv.port, timeout=5) as sock:
        sock.sendall(line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_response(sock)[0] == 414
    assert http_get(srv.port, "/?q=" + "a" * 8000)[0] == 200


@pytest.mark.parametrize("how", ["--chdir", "started there"])
def test_sighup_after_a_deploy_moved_the_symlink_serves_the_new_release(berth, tmp_path, how):
    """The classic Gunicorn deploy: releases in their own directories, a symlink `current`
    moved to the new one, then SIGHUP. Gunicorn changes to --chdir again on SIGHUP (or to
    $PWD, the symlink as the shell named it, without --chdir), so its new workers import
    the new release; they must under berth too, not the old one the link was resolved to."""
    for release in ("r1", "r2"):
        _write_cwd_app(tmp_path / release, "release_app_for_sighup")
    current = tmp_path / "current"
    current.symlink_to("r1")
    if how == "--chdir":
        srv = berth(["-w", "1", "--chdir", str(current), "release_app_for_sighup:app"])
    else:
        srv = berth(["-w", "1", "release_app_for_sighup:app"], cwd=current,
                    env={"PWD": str(current)})
    assert http_get(srv.port, "/")[2] == str(tmp_path / "r1").encode()
    (tmp_path / "next").symlink_to("r2")
    os.replace(tmp_path / "next", current)  # (atomically, as deploy tools move it)
    srv.signal(signal.SIGHUP)
    assert wait_for(lambda: http_get(srv.port, "/")[2] == str(tmp_path / "r2").encode(),
                    timeout=15), srv.stderr()


# --- logging options ----------------------------------------------------------------------

def test_error_logfile_receives_server_log_and_app_tracebacks(berth, tmp_path):
    log = tmp_path / "error.log"
    srv = berth(["-w", "1", "--error-logfile", str(log), "proto_app:app"], wait_ready=False)
    assert wait_for(lambda: log.exists() and "ready: " in log.read_text(), timeout=20), \
        srv.stderr()
    assert http_get(srv.port, "/raise-before")[0] == 500
    assert wait_for(lambda: "proto-boom-before-start-response" in log.read_text(), timeout=5)


def test_first_log_line_names_berths_and_pythons_versions(berth, tmp_path):
    """As Gunicorn's "Starting gunicorn 27.0.1": the first line says what is starting, even
    before the config file's and the sizing lines."""
    import platform

    (tmp_path / "gunicorn.conf.py").write_text("workers = 1\n")
    srv = berth(["proto_app:app"])
    version = re.search(r'__version__ = "([^"]+)"',
                        (ROOT / "berth" / "__init__.py").read_text()).group(1)
    first = srv.stderr().splitlines()[0]
    assert re.fullmatch(r"\[[^\]]+\] \[\d+\] \[INFO\] Starting berth (\S+) \(Python (\S+), "
                        r"(\w+)\)", first), first
    assert first.endswith(f"Starting berth {version} (Python {platform.python_version()}, "
                          f"{platform.python_implementation()})"), first


def test_log_level_debug_starts(berth):
    srv = berth(["-w", "1", "--log-level", "debug", "proto_app:app"])
    assert http_get(srv.port, "/hello")[2] == HELLO


def test_ready_line_names_the_bound_address(berth):
    srv = berth(["-w", "1", "proto_app:app"])
    ready = [ln for ln in srv.stderr().splitlines() if "ready: " in ln]
    assert ready
    assert f"127.0.0.1:{srv.port}" in srv.stderr()

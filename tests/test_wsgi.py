"""WSGI (PEP 3333) behaviour of berth, end to end through a real process on 127.0.0.1.

The HTTP rules around the app (header names with `_`, a response header with CR or LF, a body
cut short by the app) are test_http's, which runs them on both worker kinds."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import APPS, ROOT, read_response
from proto_helpers import (
    HELLO,
    big_pattern,
    connect,
    get_request,
    http_get,
    pids_children,
    read_head,
    send_raw,
    served_by,
    start_module_server,
    status_of,
    wait_for,
    wait_replaced,
)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    server = start_module_server(tmp_path_factory, ["-w", "1", "--threads", "4", "proto_app:app"],
                                 name="wsgi")
    yield server
    server.stop()


def request(port, raw: bytes):
    with connect(port) as sock:
        sock.sendall(raw)
        return read_response(sock)


def env_of(port, raw: bytes) -> tuple[dict, dict, dict, int]:
    with connect(port) as sock:
        sock.sendall(raw)
        client_port = sock.getsockname()[1]
        status, _, body = read_response(sock)
    assert status == 200, body
    data = json.loads(body)
    return data["str"], data["other"], data["extra"], client_port


# --- environ --------------------------------------------------------------------------------

def test_environ_has_cgi_keys(srv):
    raw = get_request("/env/some%20path/caf%C3%A9?a=1&b=%20&c", method="POST",
                      host=f"127.0.0.1:{srv.port}",
                      headers={"Content-Type": "application/x-test", "X-Custom": "v1"},
                      body=b"hello")
    env, _other, extra, client_port = env_of(srv.port, raw)
    assert env["REQUEST_METHOD"] == "POST"
    assert env["SCRIPT_NAME"] == ""
    # percent-decoded, then the bytes decoded as latin-1 (PEP 3333)
    assert env["PATH_INFO"] == "/env/some path/caf\u00c3\u00a9"
    assert env["QUERY_STRING"] == "a=1&b=%20&c"
    assert env["RAW_URI"] == "/env/some%20path/caf%C3%A9?a=1&b=%20&c"
    assert env["CONTENT_TYPE"] == "application/x-test"
    assert env["CONTENT_LENGTH"] == "5"
    assert "HTTP_CONTENT_TYPE" not in env and "HTTP_CONTENT_LENGTH" not in env
    assert env["SERVER_NAME"] == "127.0.0.1"
    assert env["SERVER_PORT"] == str(srv.port)
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["HTTP_HOST"] == f"127.0.0.1:{srv.port}"
    assert env["HTTP_X_CUSTOM"] == "v1"
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(client_port)
    assert extra["body_len"] == 5


def test_an_app_mounted_at_script_name_gets_requests_outside_it_unmounted(berth):
    srv = berth(["-w", "1", "proto_app:app"], env={"SCRIPT_NAME": "/app/"})
    env = env_of(srv.port, get_request("/app/env?x=1"))[0]
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("/app", "/env")
    # a probe sent to the pod itself: the path it asked for, not /app/env (Gunicorn: 500)
    env = env_of(srv.port, get_request("/env"))[0]
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("", "/env")


def test_a_trusted_proxys_script_name_wins_outside_the_environments_mount(berth):
    """As in Gunicorn, a SCRIPT_NAME header from a trusted proxy (forwarder_headers) replaces
    the environment's SCRIPT_NAME, for a path outside that mount as well as under it."""
    srv = berth(["-w", "1", "proto_app:app"], env={"SCRIPT_NAME": "/app"})
    for path, mount in (("/fwd/env", "/fwd"), ("/app/sub/env", "/app/sub")):
        env = env_of(srv.port, get_request(path, headers={"SCRIPT_NAME": mount}))[0]
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == (mount, "/env"), path
    # a path that is under neither: the proxy's error, as before (Gunicorn: 500)
    raw, _ = send_raw(srv.port, get_request("/env", headers={"SCRIPT_NAME": "/fwd"}))
    assert status_of(raw) == 400


def test_environ_has_wsgi_keys(srv):
    env, other, extra, _ = env_of(srv.port, get_request("/env"))
    assert extra["wsgi.version"] == [1, 0]
    assert env["wsgi.url_scheme"] == "http"
    assert extra["wsgi.multithread"] is True  # --threads 4
    assert isinstance(extra["wsgi.multiprocess"], bool)
    assert extra["wsgi.run_once"] is False
    assert extra["wsgi.input_terminated"] is True
    assert extra["has_file_wrapper"] is True
    assert extra["errors_has_write"] is True
    assert extra["input_has_read"] is True
    for key in ("wsgi.input", "wsgi.errors", "wsgi.version", "wsgi.multithread",
                "wsgi.multiprocess", "wsgi.run_once"):
        assert key in other, key


def test_environ_get_without_body_has_empty_query_and_no_content_length_value(srv):
    env, _, extra, _ = env_of(srv.port, get_request("/env"))
    assert env["QUERY_STRING"] == ""
    assert env["REQUEST_METHOD"] == "GET"
    assert env.get("CONTENT_LENGTH", "") in ("", "0")
    assert extra["body_len"] == 0


def test_environ_http10_protocol(srv):
    env, _, _, _ = env_of(srv.port, get_request("/env", version="HTTP/1.0"))
    assert env["SERVER_PROTOCOL"] == "HTTP/1.0"


def test_header_map_dangerous_and_unconventional_versions_end_to_end(berth):
    """Gunicorn's --header-map dangerous maps `_` names anyway; with
    --permit-unconventional-http-version the app sees HTTP/1.2 as sent, and the answer is
    an HTTP/1.1 response."""
    srv = berth(["-w", "1", "--header-map", "dangerous", "--permit-unconventional-http-version",
                 "proto_app:app"])
    raw = get_request("/env", version="HTTP/1.2", headers={"X-Foo": "dash", "X_Foo": "under"})
    with connect(srv.port) as sock:
        sock.sendall(raw)
        head = read_head(sock)
        assert head.startswith(b"HTTP/1.1 200 "), head
    env, _, _, _ = env_of(srv.port, raw)
    assert env["SERVER_PROTOCOL"] == "HTTP/1.2"
    assert env["HTTP_X_FOO"] == "dash,under"
    env, _, _, _ = env_of(srv.port, get_request("/env", version="HTTP/2.0"))
    assert env["SERVER_PROTOCOL"] == "HTTP/2.0"
    assert status_of(send_raw(srv.port, b"GET /env\r\nHost: a\r\n\r\n")[0]) == 400


def test_repeated_headers_are_joined_with_commas(srv):
    raw = (b"GET /env HTTP/1.1\r\nHost: a\r\nX-Multi: a\r\nX-Multi: b\r\n\r\n")
    env, _, _, _ = env_of(srv.port, raw)
    assert [p.strip() for p in env["HTTP_X_MULTI"].split(",")] == ["a", "b"]


def test_header_values_are_latin1_strings(srv):
    raw = b"GET /env HTTP/1.1\r\nHost: a\r\nX-Latin: caf\xe9\r\n\r\n"
    env, _, _, _ = env_of(srv.port, raw)
    assert env["HTTP_X_LATIN"] == "caf\u00e9"


def test_chunked_request_sets_content_length_and_input_terminated(srv):
    payload = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    status, headers, body = request(srv.port, get_request(
        "/echo", method="POST", headers={"Transfer-Encoding": "chunked"}, body=payload))
    assert (status, body) == (200, b"hello world")
    assert headers["x-content-length"] == "11"
    assert headers["x-input-terminated"] == "True"


# --- wsgi.input -----------------------------------------------------------------------------

INPUT_BODY = b"line1\nline2\nline three is longer\nlast-no-newline"


def input_parts(port, op, chunked=False):
    if chunked:
        mid = len(INPUT_BODY) // 2
        pieces = [INPUT_BODY[:mid], INPUT_BODY[mid:]]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        raw = get_request(f"/input?op={op}", method="POST",
                          headers={"Transfer-Encoding": "chunked"}, body=payload)
    else:
        raw = get_request(f"/input?op={op}", method="POST", body=INPUT_BODY)
    status, _, body = request(port, raw)
    assert status == 200, body
    data = json.loads(body)
    assert data["types"] in (["bytes"], [])
    return [p.encode("latin-1") for p in data["parts"]]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_wsgi_input_read_n(srv, chunked):
    parts = input_parts(srv.port, "read", chunked)
    assert parts[0] == b"lin"
    assert parts[1] == b"e1\nl"
    assert parts[-1] == b""  # reading past the end gives b"" without blocking
    assert b"".join(parts) == INPUT_BODY


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_wsgi_input_readline(srv, chunked):
    parts = input_parts(srv.port, "readline", chunked)
    assert parts == INPUT_BODY.splitlines(keepends=True) + [b""]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_wsgi_input_readline_with_size(srv, chunked):
    parts = input_parts(srv.port, "readline_n", chunked)
    assert parts[0] == b"lin"
    assert parts[1] == b"e1\n"
    assert parts[2] == b"line"
    assert parts[-1] == b""
    assert all(len(p) <= 4 for p in parts[2:])
    assert b"".join(parts) == INPUT_BODY


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_wsgi_input_readlines(srv, chunked):
    assert input_parts(srv.port, "readlines", chunked) == INPUT_BODY.splitlines(keepends=True)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_wsgi_input_iteration(srv, chunked):
    assert input_parts(srv.port, "iter", chunked) == INPUT_BODY.splitlines(keepends=True)


# --- response writing -----------------------------------------------------------------------

def test_write_callable_and_iterable_arrive_in_order(srv):
    status, _, body = request(srv.port, get_request("/write"))
    assert status == 200
    assert body == b"one-two-three-four"


def test_write_callable_on_http10(srv):
    raw, _closed = send_raw(srv.port, get_request("/write", version="HTTP/1.0"))
    assert status_of(raw) == 200
    assert raw.partition(b"\r\n\r\n")[2] == b"one-two-three-four"


@pytest.mark.parametrize("kind", ["str-subclass", "str-enum", "tuple", "items",
                                  "spaced-length"])
def test_start_response_takes_what_gunicorn_takes(srv, kind):
    """PEP 3333 asks for a list of pairs of str. Gunicorn also takes str subclasses (a
    markupsafe Markup or Django SafeString value, an enum of str), the headers as a tuple or
    dict.items(), and a Content-Length with spaces around its digits: an app that works
    there must not get a 500 here."""
    with connect(srv.port) as sock:
        for _ in range(2):  # (the second time from the head caches)
            sock.sendall(get_request(f"/as-gunicorn-takes?kind={kind}"))
            status, headers, body = read_response(sock)
            assert (status, body) == (200, b"taken")
            assert (headers["content-type"], headers["x-kind"]) == ("text/plain", kind)
            assert headers["content-length"] == "5"


@pytest.mark.parametrize("parts", ["list=1", "list=0"], ids=["list", "iterable"])
def test_two_different_content_lengths_from_the_app_are_its_error(srv, parts):
    """Two values frame the body two ways: a client must refuse the response (RFC 9112
    6.3), and a proxy that takes the other value than berth reads the rest of the body as
    the next response. Gunicorn sends both; berth answers a logged 500."""
    raw, closed = send_raw(srv.port, get_request(f"/lengths?values=5,10&{parts}"))
    assert status_of(raw) == 500 and closed
    assert raw.lower().count(b"content-length:") == 1, raw  # the 500's own
    assert wait_for(lambda: "two different Content-Length" in srv.stderr())
    # the same value twice frames the body one way: sent as the app gave it, as by Gunicorn
    with connect(srv.port) as sock:
        sock.sendall(get_request(f"/lengths?values=10,10&{parts}"))
        assert read_response(sock)[::2] == (200, b"0123456789")


@pytest.mark.parametrize("cl", ["0", "1"], ids=["chunked", "content-length"])
def test_a_write_after_the_body_ended_never_reaches_the_wire(srv, cl):
    """A write() from the iterable's close() comes after the body's end (the last chunk, or
    the Content-Length's last byte): sent, it would be read as the start of the next response
    on the connection (Gunicorn sends it). It is dropped and logged."""
    with connect(srv.port) as sock:
        sock.sendall(get_request(f"/write-in-close?cl={cl}") + get_request("/hello"))
        assert read_response(sock)[::2] == (200, b"body")
        assert read_response(sock)[::2] == (200, HELLO)
    logged = "longer than its Content-Length" if cl == "1" else "after its body ended"
    assert wait_for(lambda: logged in srv.stderr())


def test_start_response_with_exc_info_replaces_headers(srv):
    status, _headers, body = request(srv.port, get_request("/exc-info"))
    assert status == 500
    assert body == b"handled-error"


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "payload.bin"
    path.write_bytes(os.urandom((3 << 20) + 333))
    return path


@pytest.mark.parametrize("cl", ["1", "0"], ids=["with-content-length", "without"])
def test_file_wrapper_bytes_match_file(srv, data_file, cl):
    status, _headers, body = request(srv.port, get_request(f"/file?path={data_file}&cl={cl}"))
    assert status == 200
    assert len(body) == data_file.stat().st_size
    assert body == data_file.read_bytes()


@pytest.mark.parametrize("kind", ["gzip", "bz2"])
def test_file_wrapper_over_a_decompressing_file_sends_what_it_reads(srv, tmp_path, kind):
    # gzip.open() and bz2.open() have the compressed file's descriptor: sendfile sent the
    # compressed bytes (Gunicorn does too), where PEP 3333 wants iter(filelike.read, b"")
    data = os.urandom(1000) * 300
    path = tmp_path / f"data.{kind}"
    with __import__(kind).open(path, "wb") as f:
        f.write(data)
    status, _headers, body = request(srv.port, get_request(f"/file?path={path}&cl=0&open={kind}"))
    assert (status, len(body), body == data) == (200, len(data), True)


def test_file_wrapper_on_http10(srv, data_file):
    raw, _closed = send_raw(srv.port, get_request(f"/file?path={data_file}&cl=1",
                                                  version="HTTP/1.0"))
    assert status_of(raw) == 200
    assert raw.partition(b"\r\n\r\n")[2] == data_file.read_bytes()


def test_file_wrapper_accepts_file_like_object_without_fileno(srv):
    n = 300_000
    status, _, body = request(srv.port, get_request(f"/file-like?n={n}"))
    assert status == 200
    assert len(body) == n
    assert body == b"".join(big_pattern(n))
    assert wait_for((srv.markers / "close-filelike").exists), \
        "the file-like object given to wsgi.file_wrapper was not closed"


def _sendfile_calls(tmp_path, data_file, args=(), env_extra=None) -> list[str]:
    """Serve `data_file` through wsgi.file_wrapper under strace: the sendfile syscalls made."""
    strace = shutil.which("strace")
    if not strace:
        pytest.skip("strace is not installed: cannot observe the sendfile syscall")
    from conftest import free_port
    port = free_port()
    trace = tmp_path / "strace.out"
    env = dict(os.environ)
    env.update({"BERTH_IN_CONTAINER": "0", "PYTHONPATH": f"{APPS}{os.pathsep}{ROOT}"})
    env.pop("PORT", None)
    env.pop("SENDFILE", None)
    env.update(env_extra or {})
    err_path = tmp_path / "stderr.log"
    with open(tmp_path / "stdout.log", "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [strace, "-f", "-e", "trace=sendfile", "-o", str(trace),
             sys.executable, "-m", "berth", "-b", f"127.0.0.1:{port}", "-w", "1",
             "--threads", "1", *args, "proto_app:app"],
            stdout=out, stderr=err, env=env, cwd=str(tmp_path), stdin=subprocess.DEVNULL)
        try:
            ready = wait_for(lambda: "ready: " in err_path.read_text(errors="replace")
                             or proc.poll() is not None, timeout=30)
            if proc.poll() is not None:
                log = err_path.read_text(errors="replace")
                if "ptrace" in log or "Operation not permitted" in log:
                    pytest.skip(f"strace cannot trace here: {log[:300]}")
                pytest.fail(f"berth under strace exited early: {log}")
            assert ready
            for cl in ("1", "0"):
                status, _, body = request(port, get_request(f"/file?path={data_file}&cl={cl}"))
                assert status == 200
                assert body == data_file.read_bytes()
        finally:
            # stop berth itself (strace's child) by PID; strace exits when its tracee does
            berth_pids = pids_children(proc.pid)
            for pid in berth_pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                for pid in [*berth_pids, proc.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait(timeout=5)
    text = trace.read_text(errors="replace")
    return [ln for ln in text.splitlines() if "sendfile(" in ln]


def test_file_wrapper_uses_sendfile(tmp_path, data_file):
    calls = _sendfile_calls(tmp_path, data_file)
    assert calls, "no sendfile syscall traced"
    assert any(not ln.rstrip().endswith("= -1") and "= -1 E" not in ln for ln in calls), calls


@pytest.mark.parametrize(("args", "env"), [(["--no-sendfile"], None), ([], {"SENDFILE": "0"})],
                         ids=["--no-sendfile", "SENDFILE=0"])
def test_no_sendfile_sends_the_file_without_sendfile(tmp_path, data_file, args, env):
    """As Gunicorn's --no-sendfile (or $SENDFILE off): the file is read and sent in blocks."""
    assert _sendfile_calls(tmp_path, data_file, args, env) == []


# --- errors from the app --------------------------------------------------------------------

def test_exception_before_start_response_gives_500_and_traceback_in_stderr(srv):
    status, _, _ = request(srv.port, get_request("/raise-before"))
    assert status == 500
    err = wait_for(lambda: "proto-boom-before-start-response" in srv.stderr() and srv.stderr())
    assert err, "no traceback of the app error in stderr"
    assert "Traceback" in err
    # the worker survives
    assert http_get(srv.port, "/hello")[2] == HELLO


@pytest.mark.parametrize("threads", ["1", "4"])
def test_sys_exit_in_a_view_answers_500_and_the_worker_is_replaced_gracefully(berth, threads):
    # (a --max-requests far away with its jitter: the master still names SystemExit)
    srv = berth(["-w", "1", "--threads", threads, "--max-requests", "1",
                 "--max-requests-jitter", "1000000", "proto_app:app"])
    first = served_by(srv.port)
    with connect(srv.port) as other:  # in flight when the app exits: it finishes
        other.sendall(get_request("/sleep?s=1"))
        time.sleep(0.3)
        raw, closed = send_raw(srv.port, get_request("/exit"))
        assert status_of(raw) == 500 and closed
        assert read_response(other)[:3:2] == (200, b"slept 1.0")
    assert wait_replaced(srv.port, first)
    err = srv.stderr()
    assert "SystemExit: 3" in err and "the app raised SystemExit" in err
    assert "retiring: the app raised SystemExit" in err and "--max-requests" not in err


# --- close() of the returned iterable --------------------------------------------------------

def _wait_marker(srv, tag, timeout=5.0):
    path = srv.markers / f"close-{tag}"
    return wait_for(path.exists, timeout=timeout)


def test_close_called_after_normal_response(srv):
    status, _, body = request(srv.port, get_request("/closeable?tag=normal"))
    assert (status, body) == (200, b"c-1\nc-2\n")
    assert _wait_marker(srv, "normal")


def test_close_called_after_head(srv):
    with connect(srv.port) as sock:
        sock.sendall(get_request("/closeable?tag=head", method="HEAD"))
        assert status_of(read_head(sock)) == 200
    assert _wait_marker(srv, "head")


def test_close_called_when_iteration_raises(srv):
    _raw, closed = send_raw(srv.port, get_request("/closeable?tag=raise&mode=raise"))
    assert closed
    assert _wait_marker(srv, "raise")


def test_close_called_when_taking_the_first_part_on_the_loop_thread_raises(berth):
    # (a fresh server: its loop thread is the main thread until a stream is handed over)
    srv = berth(["-w", "1", "--threads", "4", "proto_app:app"])
    with connect(srv.port) as sock:
        deadline = time.monotonic() + 10  # until an app thread stands by (baton.py)
        while True:
            sock.sendall(get_request("/thread"))
            name = read_response(sock)[2]
            if name == b"MainThread":
                break
            assert time.monotonic() < deadline, f"the loop thread never answered: {name}"
            time.sleep(0.05)
        sock.sendall(get_request("/closeable?tag=raise-first&mode=raise-first"))
        assert read_response(sock)[0] == 500
        assert sock.recv(10) == b""
    assert close_counts(srv, "raise-first", 1).get("raise-first") == 1


def close_counts(srv, tag: str, want: int) -> dict:
    """The app's close() counts, once `tag`'s reached `want` (or after 5 s)."""
    deadline = time.monotonic() + 5
    counts = {}
    while time.monotonic() < deadline:
        counts = json.loads(request(srv.port, get_request("/close-counter"))[2])
        if counts.get(tag) == want:
            break
        time.sleep(0.05)
    return counts


def test_close_called_once_per_response_of_one_sized_part(srv):
    # (with app threads the loop thread closes such a body as soon as its end is seen)
    with connect(srv.port) as sock:
        for _ in range(3):
            sock.sendall(get_request("/closeable?tag=sized&mode=sized"))
            status, headers, body = read_response(sock)
            assert (status, body) == (200, b"c-1\n")
            assert "transfer-encoding" not in {k.lower() for k in headers}
    time.sleep(0.2)  # (a second close() of the last one would have run by now)
    assert close_counts(srv, "sized", 3).get("sized") == 3


def test_close_called_when_client_disconnects_mid_body(srv):
    with connect(srv.port) as sock:
        sock.sendall(get_request("/closeable?tag=disconnect&mode=big"))
        read_head(sock)
        sock.recv(65536)
    assert _wait_marker(srv, "disconnect", timeout=10)


def test_close_counter_route_counts_per_process(srv):
    request(srv.port, get_request("/closeable?tag=counted"))
    request(srv.port, get_request("/closeable?tag=counted"))
    assert close_counts(srv, "counted", 2).get("counted") == 2


# --- wsgiref validator ----------------------------------------------------------------------

def test_validator_wrapped_app_runs_without_warnings(berth):
    srv = berth(["-w", "1", "--threads", "2", "proto_app:validated_app"])
    cases = [
        get_request("/x?a=1"),
        get_request("/post", method="POST", body=b"payload"),
        get_request("/lines", method="POST", body=b"l1\nl2"),
        get_request("/chunked", method="POST", headers={"Transfer-Encoding": "chunked"},
                    body=b"3\r\nabc\r\n0\r\n\r\n"),
        get_request("/stream"),
        get_request("/x", version="HTTP/1.0"),
    ]
    with connect(srv.port) as sock:
        for raw in cases[:-1]:
            sock.sendall(raw)
            status, _, body = read_response(sock)
            assert status == 200, body
            assert body.startswith(b"ab" if b"/stream" in raw else b"method=")
    raw, _ = send_raw(srv.port, cases[-1])
    assert status_of(raw) == 200
    with connect(srv.port) as sock:
        sock.sendall(get_request("/head", method="HEAD"))
        assert status_of(read_head(sock)) == 200
    srv.stop()
    err = srv.stderr()
    for bad in ("WSGIWarning", "Warning", "AssertionError", "Traceback",
                "garbage collected without being closed"):
        assert bad not in err, f"{bad!r} in stderr:\n{err}"


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


EARLY_HINTS = (b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n"
               b"Link: </app.js>; rel=preload; as=script\r\n\r\n")


def _read_64_mib_written(sock) -> None:
    status, _, body = read_response(sock)
    assert status == 200 and len(body) == 1024 * 65536


def _read_64_early_hints_of_a_mib(sock) -> None:
    for _ in range(64):
        assert read_head(sock).startswith(b"HTTP/1.1 103 Early Hints\r\nX-Pad: ppp")
    assert read_head(sock) == EARLY_HINTS
    assert read_response(sock)[::2] == (200, b"hinted")


@pytest.mark.parametrize("path,read", [("/write-big?n=1024", _read_64_mib_written),
                                       ("/early-hints?many=64", _read_64_early_hints_of_a_mib)],
                         ids=["write", "early-hints"])
def test_a_slow_reader_keeps_worker_memory_bounded_inline(berth, path, read):
    # with --threads 1 the app runs on the loop; 64 MiB through write(), or as 103s (early
    # hints), to a client that reads nothing for a while must not be queued in memory: the
    # loop waits for the reader
    srv = berth(["-w", "1", "--threads", "1", "--access-logfile", "none", "proto_app:app"])
    (worker,) = pids_children(srv.pid)
    before = _rss_kib(worker)
    with connect(srv.port, timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(get_request(path))
        time.sleep(1.0)
        peak = _rss_kib(worker)
        read(sock)
    assert peak - before < 16 * 1024, f"worker RSS grew {peak - before} KiB while blocked"


@pytest.mark.parametrize("threads", ["1", "4"])
def test_wsgi_early_hints_sends_a_103_while_the_app_still_works(berth, tmp_path, threads):
    """Gunicorn's wsgi.early_hints: the 103 reaches the client before the app has answered
    (the app waits for a file the test makes only once the 103 is read), on the loop thread
    (--threads 1) and on an app thread after a takeover (--threads 4); then the response."""
    srv = berth(["-w", "1", "--threads", threads, "--access-logfile", "none", "proto_app:app"])
    go = tmp_path / "go"
    with connect(srv.port) as sock:
        sock.sendall(get_request(f"/early-hints?wait={go}"))
        assert read_head(sock, timeout=4) == EARLY_HINTS
        go.touch()
        status, headers, body = read_response(sock)
        assert (status, body) == (200, b"hinted")


def test_wsgi_early_hints_keep_their_place_among_pipelined_responses(srv):
    with connect(srv.port) as sock:
        sock.sendall(get_request("/hello") + get_request("/early-hints") + get_request("/hello"))
        assert read_response(sock)[2] == HELLO
        assert read_head(sock) == EARLY_HINTS
        assert read_response(sock)[2] == b"hinted"
        assert read_response(sock)[2] == HELLO


@pytest.mark.parametrize("query,version,status,body", [
    ("", "HTTP/1.0", 200, b"hinted"),  # an HTTP/1.0 client knows no 1xx: nothing sent
    ("late=1", "HTTP/1.1", 200, b"hinted"),  # after the head: nothing sent, nothing broken
    ("bad=1", "HTTP/1.1", 500, None),  # a header berth would not send: the app's error
])
def test_wsgi_early_hints_sends_nothing_where_a_103_has_no_place(srv, query, version, status,
                                                                  body):
    keep = {"Connection": "keep-alive"} if version == "HTTP/1.0" else {}
    with connect(srv.port) as sock:
        sock.sendall(get_request(f"/early-hints?{query}", version=version, headers=keep)
                     + get_request("/hello", version=version, headers=keep))
        got_status, _, got_body = read_response(sock)
        assert got_status == status
        if body is not None:
            assert got_body == body
        if status == 200:  # (and the connection goes on: the next response follows)
            assert read_response(sock)[2] == HELLO


def test_wsgi_early_hints_behind_a_held_response_go_out_while_the_app_works(berth, tmp_path):
    """--threads 1: the pipelined response before it is held for the loop's flush, which
    comes once the app returns: the 103 queued behind it must not wait for the app too."""
    srv = berth(["-w", "1", "--threads", "1", "--access-logfile", "none", "proto_app:app"])
    go = tmp_path / "go"
    with connect(srv.port, timeout=3) as sock:
        sock.sendall(get_request("/hello") + get_request(f"/early-hints?wait={go}"))
        assert read_response(sock)[2] == HELLO
        assert read_head(sock, timeout=3) == EARLY_HINTS
        go.touch()
        assert read_response(sock)[::2] == (200, b"hinted")

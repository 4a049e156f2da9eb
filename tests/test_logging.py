"""Access and error logging of berth, end to end."""

from __future__ import annotations

import re
import socket
import struct
import time

from proto_helpers import HELLO, connect, get_request, http_get, read_head, wait_for

# Gunicorn's default: '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
DEFAULT_LINE = re.compile(
    r'^127\.0\.0\.1 - - \[\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] '
    r'"GET /hello\?from=test HTTP/1\.1" 200 14 "-" "berth-test/1\.0"$', re.MULTILINE)


def test_access_log_default_format_on_stdout(berth):
    srv = berth(["-w", "1", "proto_app:app"])
    http_get(srv.port, "/hello?from=test", headers={"User-Agent": "berth-test/1.0"})
    out = wait_for(lambda: DEFAULT_LINE.search(srv.stdout()) and srv.stdout(), timeout=5)
    assert out, f"no Gunicorn-style access line on stdout:\n{srv.stdout()!r}"


def test_access_log_shows_referer_and_error_status(berth):
    srv = berth(["-w", "1", "proto_app:app"])
    http_get(srv.port, "/nope", headers={"User-Agent": "ua", "Referer": "http://ref.test/x"})
    pattern = re.compile(r'"GET /nope HTTP/1\.1" 404 \d+ "http://ref\.test/x" "ua"$',
                         re.MULTILINE)
    assert wait_for(lambda: pattern.search(srv.stdout()), timeout=5), srv.stdout()


def test_access_log_dash_goes_to_stdout(berth):
    srv = berth(["-w", "1", "--access-logfile", "-", "proto_app:app"])
    http_get(srv.port, "/hello?dash=1")
    assert wait_for(lambda: "/hello?dash=1" in srv.stdout(), timeout=5)


def test_wsgi_errors_go_to_the_error_log_one_record_a_line(berth, tmp_path):
    # they went to the process's stderr: not to --error-logfile (where Gunicorn's go), and
    # raw text in the middle of --log-format json's lines
    import json

    log = tmp_path / "error.log"
    srv = berth(["-w", "1", "--error-logfile", str(log), "--log-format", "json",
                 "proto_app:app"], wait_ready=False)
    assert wait_for(lambda: log.exists() and "ready: " in log.read_text(), timeout=20)
    assert http_get(srv.port, "/wsgi-errors")[0] == 200
    want = ["errors-print", "errors-write", "errors-lines-1", "errors-lines-2", "errors-flushed"]
    assert wait_for(lambda: "errors-flushed" in log.read_text(), timeout=5)
    records = [json.loads(line) for line in log.read_text().splitlines()]  # all of them JSON
    got = [r["message"] for r in records if r["message"].startswith("errors-")]
    assert got == want
    assert "errors-" not in srv.stderr()


def test_access_log_to_file(berth, tmp_path):
    log = tmp_path / "access.log"
    srv = berth(["-w", "1", "--access-logfile", str(log), "proto_app:app"])
    http_get(srv.port, "/hello?file=1")
    assert wait_for(lambda: log.exists() and "/hello?file=1" in log.read_text(), timeout=5)
    assert "/hello?file=1" not in srv.stdout()


def test_access_log_none_writes_nothing_to_stdout(berth):
    srv = berth(["-w", "1", "--access-logfile", "none", "proto_app:app"])
    for i in range(3):
        assert http_get(srv.port, f"/hello?n={i}")[2] == HELLO
    time.sleep(1.0)
    assert srv.stdout() == ""
    assert "/hello?n=" not in srv.stderr()


def test_custom_access_log_format(berth):
    fmt = ("CUSTOM s=%(s)s m=%(m)s U=%(U)s q=%(q)s H=%(H)s B=%(B)s "
           "trace=%({x-trace}i)s ctype=%({content-type}o)s D=%(D)s h=%(h)s")
    srv = berth(["-w", "1", "--access-logformat", fmt, "proto_app:app"])
    http_get(srv.port, "/hello?x=1&y=2", headers={"X-Trace": "abc123"})
    pattern = re.compile(r"^CUSTOM s=200 m=GET U=/hello q=x=1&y=2 H=HTTP/1\.1 B=14 "
                         r"trace=abc123 ctype=text/plain D=\d+ h=127\.0\.0\.1$", re.MULTILINE)
    assert wait_for(lambda: pattern.search(srv.stdout()), timeout=5), srv.stdout()


def test_custom_access_log_format_empty_query_and_204(berth):
    srv = berth(["-w", "1", "--access-logformat", "X %(m)s %(U)s [%(q)s] %(s)s %(b)s",
                 "proto_app:app"])
    with connect(srv.port) as sock:
        sock.sendall(get_request("/status?code=204", headers={"Connection": "close"}))
        read_head(sock)
    http_get(srv.port, "/path")
    out = wait_for(lambda: "X GET /path [] 200" in srv.stdout() and srv.stdout(), timeout=5)
    assert out, srv.stdout()
    assert re.search(r"^X GET /status \[code=204\] 204 ", srv.stdout(), re.MULTILINE), \
        srv.stdout()


def _error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines()
            if "ERROR" in ln or "Traceback" in ln or "Exception" in ln]


def test_client_disconnects_are_not_logged_as_errors(berth):
    srv = berth(["-w", "1", "--threads", "2", "proto_app:app"])
    # 1. connect and close without sending anything
    connect(srv.port).close()
    # 2. close in the middle of the head
    with connect(srv.port) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHo")
    # 3. close in the middle of a body
    with connect(srv.port) as sock:
        sock.sendall(get_request("/echo", method="POST", headers={"Content-Length": "100000"})
                     + b"x" * 1000)
    # 4. close in the middle of a large response
    with connect(srv.port) as sock:
        sock.sendall(get_request("/big?n=20000000"))
        read_head(sock)
        sock.recv(1024)
    # 5. reset (RST) in the middle of a large response
    sock = connect(srv.port)
    sock.sendall(get_request("/big?n=20000000&chunked=1"))
    read_head(sock)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    # 6. close mid-way through a streamed response
    with connect(srv.port) as sock:
        sock.sendall(get_request("/stream?n=50&delay=0.02"))
        read_head(sock)
    time.sleep(1.5)
    assert http_get(srv.port, "/hello")[2] == HELLO
    time.sleep(0.3)
    bad = _error_lines(srv.stderr())
    assert not bad, "client disconnects logged as errors:\n" + srv.stderr()


def test_app_exception_is_logged_with_traceback(berth):
    srv = berth(["-w", "1", "proto_app:app"])
    assert http_get(srv.port, "/raise-before")[0] == 500
    err = wait_for(lambda: "proto-boom-before-start-response" in srv.stderr() and srv.stderr(),
                   timeout=5)
    assert err and "Traceback" in err


def test_log_level_warning_hides_info_but_keeps_errors(berth):
    srv = berth(["-w", "1", "--log-level", "warning", "proto_app:app"], wait_ready=False)

    def up():
        try:
            return http_get(srv.port, "/hello", timeout=2)[2] == HELLO
        except OSError:
            return srv.proc.poll() is not None  # exited: stop waiting, asserted below

    assert wait_for(up, timeout=20, interval=0.1)
    assert srv.proc.poll() is None, srv.stderr()
    assert http_get(srv.port, "/raise-before")[0] == 500
    assert wait_for(lambda: "proto-boom-before-start-response" in srv.stderr(), timeout=5), \
        "an app error must still be logged at --log-level warning"
    srv.stop()
    info = [ln for ln in srv.stderr().splitlines() if "INFO" in ln and "ready: " not in ln]
    assert not info, "INFO lines at --log-level warning:\n" + "\n".join(info)


def test_access_log_cannot_be_forged_by_the_client(berth):
    """A client's `"`, `\\`, tab and non-ASCII bytes in any atom copied from the request are
    escaped, so the line still splits into the fields the format defines."""
    import shlex

    fmt = ('%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" '
           '"%({x-evil}i)s" "%(q)s"')
    srv = berth(["-w", "1", "--access-logformat", fmt, "proto_app:app"])
    http_get(srv.port, '/hello?q="x"%20200%20"\\', headers={
        "User-Agent": 'evil" 200 999 "injected',
        "Referer": 'http://ref/" - "\\',
        "X-Evil": 'tab\there \xe9 "end',
    })
    line = wait_for(lambda: [ln for ln in srv.stdout().splitlines() if "/hello?q=" in ln],
                    timeout=5)
    assert line and len(line) == 1, srv.stdout()
    (line,) = line
    assert line.isascii() and line.isprintable(), line
    parts = shlex.split(line)
    assert len(parts) == 12, parts
    assert parts[5] == 'GET /hello?q="x"%20200%20"\\ HTTP/1.1'
    assert parts[6:8] == ["200", "14"]
    assert parts[8] == 'http://ref/" - "\\'
    assert parts[9] == 'evil" 200 999 "injected'
    assert parts[10] == 'tab\\x09here \\xe9 "end'
    assert parts[11] == 'q="x"%20200%20"\\'
    assert ' "evil\\" 200 999 \\"injected" ' in line  # Gunicorn's \" for a quote


def test_sighup_applies_a_changed_error_log_file_level_and_format(berth, tmp_path):
    # Gunicorn's reload sets its error log up again (errorlog, loglevel); berth's kept the
    # start's, without a word, while the new workers' access log did follow the reload
    import json
    import signal

    conf = tmp_path / "berth.conf.py"
    conf.write_text("workers = 1\n")
    errlog = tmp_path / "error.log"
    srv = berth(["-c", str(conf), "proto_app:app"])
    conf.write_text(f"workers = 1\nerrorlog = {str(errlog)!r}\nloglevel = 'debug'\n")
    srv.signal(signal.SIGHUP)
    wait_for(lambda: errlog.exists() and "generation 2 ready" in errlog.read_text(), timeout=15)
    assert re.search(r"\[DEBUG\] worker \d+ ready", errlog.read_text())  # the new level
    assert http_get(srv.port, "/raise-before")[0] == 500
    wait_for(lambda: "Error handling request GET /raise-before" in errlog.read_text(),
             timeout=5)  # a new worker's error too
    assert "Error handling request" not in srv.stderr()
    conf.write_text(f"workers = 1\nerrorlog = {str(tmp_path / 'no' / 'x.log')!r}\n")
    srv.signal(signal.SIGHUP)
    wait_for(lambda: "generation 3 ready" in errlog.read_text(), timeout=15)
    assert "x.log: No such file or directory; the error log stays" in errlog.read_text()
    conf.write_text("workers = 1\nlog_format = 'json'\n")
    srv.signal(signal.SIGHUP)
    wait_for(lambda: "generation 4 ready" in srv.stderr(), timeout=15)
    line = next(x for x in srv.stderr().splitlines() if "generation 4 ready" in x)
    assert json.loads(line)["level"] == "info"

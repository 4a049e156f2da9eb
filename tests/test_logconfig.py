"""Gunicorn's logging settings: logconfig_dict, --log-config-json, --log-config and syslog,
through real servers, with the users' handlers behind a queue (berth/logconfig.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from conftest import connect, free_port
from proto_helpers import http_get, wait_for
from test_admin import metric, scrape
from test_cli import run_berth

from berth.converters import parse_syslog_address
from berth.logconfig import SafeAtoms, atoms

ACCESS_FORMAT = '%(h)s "%(r)s" %(s)s %(b)s "%({user-agent}i)s"'


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "berth.conf.py"
    path.write_text(body)
    return path


JSON_CONFIG = '''
logconfig_dict = {
    "version": 1,
    "filters": {"atoms": {"()": "logging_parts.AtomsFilter"}},
    "formatters": {"json": {"()": "pythonjsonlogger.json.JsonFormatter",
                            "fmt": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
    "handlers": {
        "out": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["atoms"],
                "stream": "ext://sys.stdout"},
        "err": {"class": "logging.StreamHandler", "formatter": "json",
                "stream": "ext://sys.stderr"},
    },
    "root": {"level": "WARNING", "handlers": ["err"]},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["err"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["out"], "propagate": False},
    },
}
''' + f"access_log_format = {ACCESS_FORMAT!r}\n"


def test_a_python_json_logger_config_gets_gunicorns_records(berth, tmp_path):
    pytest.importorskip("pythonjsonlogger")
    conf = write_config(tmp_path, JSON_CONFIG)
    srv = berth(["-c", str(conf), "-w", "1", "--threads", "2", "proto_app:app"])
    for agent in ("probe/1", 'say "hi"'):
        assert http_get(srv.port, "/hello?x=1", headers={"User-Agent": agent})[0] == 200
    assert http_get(srv.port, "/status?code=404")[0] == 404
    assert wait_for(lambda: len(json_lines(srv.stdout())) >= 3, timeout=5)
    srv.stop()
    access = json_lines(srv.stdout())
    assert len(access) == 3 and not [line for line in srv.stdout().splitlines()
                                     if not line.startswith("{")]  # berth's own lines: none
    first = access[0]
    assert first["name"] == "gunicorn.access" and first["levelname"] == "INFO"
    assert first["message"] == '127.0.0.1 "GET /hello?x=1 HTTP/1.1" 200 14 "probe/1"'
    # the record is Gunicorn's: the format as msg, the atoms as args ("-" when unknown)
    assert first["format_given"] == ACCESS_FORMAT
    assert (first["atom_status"], first["atom_agent"], first["atom_missing"]) == (
        "200", "probe/1", "-")
    assert access[1]["atom_agent"] == 'say \\"hi\\"'  # Gunicorn escapes the quote
    assert access[2]["atom_status"] == "404"
    errors = json_lines(srv.stderr())
    assert {e["name"] for e in errors} == {"gunicorn.error"}
    messages = [e["message"] for e in errors]
    assert any(m.startswith("ready: 1 workers serving") for m in messages)
    assert any("stopped" in m for m in messages)  # drained at exit


def test_a_stuck_handler_never_holds_a_request_and_a_full_queue_drops_and_counts(berth,
                                                                                tmp_path):
    conf = write_config(tmp_path, '''
logconfig_dict = {
    "version": 1,
    "handlers": {"stuck": {"class": "logging_parts.StuckHandler"},
                 "err": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr"}},
    "root": {"handlers": ["err"]},
    "loggers": {"gunicorn.access": {"handlers": ["stuck"], "propagate": False}},
}
''')
    admin = free_port()
    srv = berth(["-c", str(conf), "-w", "1", "--threads", "1", "--admin-bind",
                 f"127.0.0.1:{admin}", "proto_app:app"])
    srv.admin = admin
    # more requests than the queue holds (10,000), pipelined on one connection
    n = 10_300
    with connect(srv.port, timeout=60) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n" * n)
        got = b""
        deadline = time.monotonic() + 60
        while got.count(b"HTTP/1.1 200 ") < n and time.monotonic() < deadline:
            data = sock.recv(1 << 20)
            if not data:
                break
            got += data
    assert got.count(b"HTTP/1.1 200 ") == n  # the stuck handler held none of them
    m = wait_for(lambda: (lambda m: m if metric(m, "berth_log_lines_dropped_total") else None)(
        scrape(srv)), timeout=5)
    # the one record the thread took is stuck, 10,000 wait: the rest were dropped
    assert 290 <= metric(m, "berth_log_lines_dropped_total") <= 300
    assert http_get(srv.port, "/hello")[0] == 200


def test_log_config_json_and_a_file_handler_reopened_on_sigusr1(berth, tmp_path):
    log = tmp_path / "access.log"
    conf = tmp_path / "logging.json"
    conf.write_text(json.dumps({
        "version": 1,
        "formatters": {"plain": {"format": "%(name)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(log),
                              "formatter": "plain"}},
        "root": {"handlers": []},  # (Gunicorn's defaults' root names a handler of theirs)
        "loggers": {"berth.access": {"level": "INFO", "handlers": ["file"],
                                     "propagate": False}},
    }))
    srv = berth(["--log-config-json", str(conf), "-w", "1", "proto_app:app"])
    assert http_get(srv.port, "/hello")[0] == 200
    assert wait_for(lambda: log.exists() and "GET /hello" in log.read_text(), timeout=5)
    line = log.read_text().splitlines()[0]
    assert line.startswith("berth.access 127.0.0.1 - - [")
    assert '"GET /hello HTTP/1.1" 200 14' in line
    assert "GET /hello" not in srv.stdout()  # the configuration took the access log
    log.rename(tmp_path / "access.log.1")
    srv.signal(signal.SIGUSR1)
    srv.wait_for_log("SIGUSR1: reopening log files")

    def reopened():
        http_get(srv.port, "/path")
        return log.exists() and "GET /path" in log.read_text()

    assert wait_for(reopened, timeout=5, interval=0.3)


def test_log_config_file_with_gunicorns_ini_form(berth, tmp_path):
    ini = tmp_path / "logging.ini"
    ini.write_text("""
[loggers]
keys=root, gunicorn.error, gunicorn.access

[handlers]
keys=console, error

[formatters]
keys=tagged

[logger_root]
level=WARNING
handlers=error

[logger_gunicorn.error]
level=INFO
handlers=error
propagate=0
qualname=gunicorn.error

[logger_gunicorn.access]
level=INFO
handlers=console
propagate=0
qualname=gunicorn.access

[handler_console]
class=StreamHandler
formatter=tagged
args=(sys.stdout, )

[handler_error]
class=StreamHandler
formatter=tagged
args=(sys.stderr, )

[formatter_tagged]
format=TAGGED %(name)s %(levelname)s %(message)s
""")
    srv = berth(["--log-config", str(ini), "-w", "1", "proto_app:app"])
    assert http_get(srv.port, "/hello")[0] == 200
    assert wait_for(lambda: "TAGGED gunicorn.access INFO 127.0.0.1" in srv.stdout(), timeout=5)
    assert "TAGGED gunicorn.error INFO ready: 1 workers serving" in srv.stderr()


@pytest.mark.parametrize(("args", "words"), [
    (["--log-config-json", "/nonexistent/logging.json"], "--log-config-json"),
    (["--log-config", "/nonexistent/logging.ini"], "--log-config /nonexistent/logging.ini"),
    (["--log-syslog-facility", "nope"], "syslog_facility"),
    (["--log-syslog-to", "http://x"], "syslog_addr"),
])
def test_a_bad_logging_setting_is_one_line_and_exit_2(tmp_path, args, words):
    res = run_berth([*args, "proto_app:app"], cwd=str(tmp_path))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], res.stderr


def test_a_logconfig_dict_that_breaks_gunicorns_merge_says_why(tmp_path):
    conf = write_config(tmp_path, 'logconfig_dict = {"version": 1, "handlers": {}}\n')
    res = run_berth(["-c", str(conf), "proto_app:app"], cwd=str(tmp_path))
    assert res.returncode == 2
    (line,) = res.stderr.strip().splitlines()
    assert line.startswith("berth: error: logconfig_dict: Unable to configure ")
    assert "give 'root' and 'loggers' too" in line


def udp_listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    return sock


def datagrams(sock: socket.socket, until, timeout: float = 5.0) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(got):
        try:
            got.append(sock.recv(65536).decode())
        except TimeoutError:
            pass
    return got


def test_syslog_gets_both_logs_with_gunicorns_tags_and_stdout_keeps_the_access_log(berth):
    with udp_listener() as sock:
        port = sock.getsockname()[1]
        srv = berth(["--log-syslog", "--log-syslog-to", f"udp://127.0.0.1:{port}",
                     "--log-syslog-facility", "local3", "-w", "1", "proto_app:app"])
        assert http_get(srv.port, "/hello")[0] == 200
        got = datagrams(sock, lambda g: any(".access:" in d for d in g))
    error = [d for d in got if "gunicorn.proto_app.app.error:" in d]
    access = [d for d in got if "gunicorn.proto_app.app.access:" in d]
    # <priority>: facility local3 (19) * 8 + severity info (6) = 158
    assert any(d.startswith("<158>gunicorn.proto_app.app.error: [") and "ready: 1 workers" in d
               for d in error), got
    (line,) = access
    assert line.startswith("<158>gunicorn.proto_app.app.access: [")
    assert '"GET /hello HTTP/1.1" 200 14' in line
    assert wait_for(lambda: '"GET /hello HTTP/1.1" 200 14' in srv.stdout(), timeout=3)


def test_syslog_without_access_lines_and_with_a_prefix(berth):
    with udp_listener() as sock:
        port = sock.getsockname()[1]
        srv = berth(["--log-syslog", "--log-syslog-to", f"udp://127.0.0.1:{port}",
                     "--log-syslog-prefix", "shop", "--disable-redirect-access-to-syslog",
                     "-w", "1", "proto_app:app"])
        assert http_get(srv.port, "/hello")[0] == 200
        assert wait_for(lambda: "GET /hello" in srv.stdout(), timeout=3)
        srv.stop()
        got = datagrams(sock, lambda g: any("stopped" in d for d in g))
    assert any(d.startswith("<14>gunicorn.shop.error: [") for d in got), got
    assert not [d for d in got if ".access:" in d or "GET /hello" in d]


def test_berth_error_when_the_configuration_names_it(berth, tmp_path):
    conf = write_config(tmp_path, '''
logconfig_dict = {
    "version": 1,
    "formatters": {"named": {"format": "NAMED %(name)s %(message)s"}},
    "handlers": {"err": {"class": "logging.StreamHandler", "formatter": "named",
                         "stream": "ext://sys.stderr"}},
    "root": {"handlers": []},
    "loggers": {"berth.error": {"level": "INFO", "handlers": ["err"]}},
}
''')
    srv = berth(["-c", str(conf), "-w", "1", "proto_app:app"])
    assert "NAMED berth.error ready: 1 workers serving" in srv.stderr()
    assert http_get(srv.port, "/hello")[0] == 200
    # no configuration names an access logger: berth's own access log writes, as before
    assert wait_for(lambda: '"GET /hello HTTP/1.1" 200 14' in srv.stdout(), timeout=3)


# -- unit -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("addr", "parsed"), [
    ("udp://localhost:514", (socket.SOCK_DGRAM, ("localhost", 514))),
    ("udp://10.0.0.1", (socket.SOCK_DGRAM, ("10.0.0.1", 514))),
    ("tcp://LOGS:1514", (socket.SOCK_STREAM, ("logs", 1514))),
    ("udp://[::1]:5140", (socket.SOCK_DGRAM, ("::1", 5140))),
    ("unix:///dev/log", (None, "/dev/log")),
    ("unix:///dev/log#dgram", (socket.SOCK_DGRAM, "/dev/log")),
])
def test_syslog_addresses_in_gunicorns_forms(addr, parsed):
    assert parse_syslog_address(addr) == parsed


@pytest.mark.parametrize("addr", ["localhost:514", "udp://h:port", "udp://h:70000",
                                  "unix://", "unix:///dev/log#raw"])
def test_bad_syslog_addresses(addr):
    with pytest.raises(ValueError):
        parse_syslog_address(addr)


def test_atoms_are_gunicorns():
    environ = {"REQUEST_METHOD": "POST", "RAW_URI": "/a?b=1", "PATH_INFO": "/a",
               "QUERY_STRING": "b=1", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "10.1.2.3",
               "HTTP_USER_AGENT": 'x"y', "HTTP_X_TRACE_ID": "t1", "CONTENT_TYPE": "text/plain",
               "HTTP_AUTHORIZATION": "Basic dXNlcjpwdw=="}
    a = SafeAtoms(atoms(environ, "201 Created", 12, 1.5, [("X-Out", "o")]))
    assert (a["h"], a["r"], a["s"], a["b"], a["B"], a["u"]) == (
        "10.1.2.3", "POST /a?b=1 HTTP/1.1", "201", "12", 12, "user")
    assert (a["T"], a["M"], a["D"], a["L"]) == (1, 1500, 1_500_000, "1.500000")
    assert a["a"] == 'x\\"y' and a["{User-Agent}i"] == 'x\\"y'
    assert a["{x-trace-id}i"] == "t1" and a["{content-type}i"] == "text/plain"
    assert a["{x-out}o"] == "o" and a["{remote_addr}e"] == "10.1.2.3"
    assert a["{nothing}i"] == "-" and a["z"] == "-" and a["p"] == f"<{os.getpid()}>"


def test_sighup_says_a_changed_logging_configuration_waits_for_the_next_start(berth, tmp_path):
    conf = write_config(tmp_path, "workers = 1\n")
    srv = berth(["-c", str(conf), "proto_app:app"])
    conf.write_text("workers = 1\nsyslog = True\n")
    srv.signal(signal.SIGHUP)
    srv.wait_for_log("generation 2 ready", timeout=15)
    assert "SIGHUP: the logging configuration settings (logconfig_dict" in srv.stderr()
    assert http_get(srv.port, "/hello")[0] == 200

"""--capture-output: what the app prints goes to the error log (a file, or stderr), never
into the access log's stream."""

from __future__ import annotations

from proto_helpers import http_get, wait_for


def capturing_to(berth, errlog):
    """A server with --capture-output into the error log file `errlog`, once it is ready
    (its "ready" line goes to that file, not to stderr)."""
    srv = berth(["-w", "1", "--capture-output", "--error-logfile", str(errlog),
                 "proto_app:app"], wait_ready=False)
    wait_for(lambda: errlog.exists() and "ready: " in errlog.read_text(), timeout=20)
    return srv


def test_prints_go_to_the_error_log_file_and_the_access_log_stays_clean(berth, tmp_path):
    errlog = tmp_path / "error.log"
    srv = capturing_to(berth, errlog)
    assert http_get(srv.port, "/print?text=hello-from-the-app")[0] == 200
    wait_for(lambda: "hello-from-the-app-on-stderr" in errlog.read_text(), timeout=5)
    text = errlog.read_text()
    assert "hello-from-the-app\n" in text
    wait_for(lambda: "GET /print?text=hello-from-the-app" in srv.stdout(), timeout=5)
    assert "hello-from-the-app\n" not in srv.stdout()  # only the access line mentions it
    assert "hello-from-the-app" not in srv.stderr()


def test_with_the_error_log_on_stderr_prints_go_there(berth):
    srv = berth(["-w", "1", "--capture-output", "proto_app:app"])
    assert http_get(srv.port, "/print?text=to-stderr")[0] == 200
    wait_for(lambda: "to-stderr-on-stderr" in srv.stderr(), timeout=5)
    assert "to-stderr\n" in srv.stderr()
    wait_for(lambda: "GET /print?text=to-stderr" in srv.stdout(), timeout=5)
    assert "to-stderr\n" not in srv.stdout()


def test_without_it_prints_stay_on_stdout(berth):
    srv = berth(["-w", "1", "proto_app:app"])
    assert http_get(srv.port, "/print?text=stays-out")[0] == 200
    wait_for(lambda: "stays-out\n" in srv.stdout(), timeout=5)


def test_sigusr1_moves_the_captured_output_to_the_reopened_file(berth, tmp_path):
    """logrotate renames the error log and sends SIGUSR1: what the app prints from then on
    goes to the new file, as Gunicorn's reopen_files does, not on into the renamed one."""
    import signal

    errlog = tmp_path / "error.log"
    rotated = tmp_path / "error.log.1"
    srv = capturing_to(berth, errlog)
    assert http_get(srv.port, "/print?text=before-rotation")[0] == 200
    wait_for(lambda: "before-rotation-on-stderr" in errlog.read_text(), timeout=5)
    errlog.rename(rotated)
    srv.signal(signal.SIGUSR1)
    wait_for(lambda: errlog.exists(), timeout=5)
    # (the worker reopens on its loop's next turn: a print may still reach the renamed
    # file just before that; once one is in the new file, all the later ones are)
    tries = iter(range(1000))
    assert wait_for(lambda: http_get(srv.port, f"/print?text=after-{next(tries)}")[0] == 200
                    and "after-" in errlog.read_text(), timeout=5), rotated.read_text()
    assert http_get(srv.port, "/print?text=settled")[0] == 200
    wait_for(lambda: "settled-on-stderr" in errlog.read_text(), timeout=5)
    assert "settled\n" in errlog.read_text()
    assert "settled" not in rotated.read_text()


def json_records(text: str) -> list[dict]:
    import json

    return [json.loads(line) for line in text.splitlines() if line]  # (raises on a raw line)


def test_with_json_logs_each_printed_line_is_a_record_stdout_info_stderr_error(berth, tmp_path):
    """--log-format json promises one JSON object per line: prints are records too (they were
    raw text among them), one per line, in both targets of the error log."""
    errlog = tmp_path / "error.log"
    for target in (["--error-logfile", str(errlog)], []):
        srv = berth(["-w", "1", "--capture-output", "--log-format", "json", *target,
                     "proto_app:app"], wait_ready=not target)

        def read(target=target, srv=srv) -> str:
            if not target:
                return srv.stderr()
            return errlog.read_text() if errlog.exists() else ""

        assert wait_for(lambda: "ready: " in read(), timeout=20), read()
        assert http_get(srv.port, "/print?text=one%0Atwo")[0] == 200

        def printed(read=read) -> list:  # (stdout's and stderr's prints: two pipes)
            return sorted((r["level"], r["message"]) for r in json_records(read())
                          if r["message"] in ("one", "two", "two-on-stderr"))

        assert wait_for(lambda f=printed: len(f()) >= 4, timeout=10), read()
        records = printed()
        assert records == [("error", "one"), ("error", "two-on-stderr"), ("info", "one"),
                           ("info", "two")], records
        if target:
            assert "two" not in srv.stderr()
        srv.stop()


STDOUT_ACCESS_CONFIG = '''
capture_output = True
logconfig_dict = {
    "formatters": {"f": {"format": "CFG %(name)s %(message)s"}},
    "handlers": {
        "out": {"class": "logging.StreamHandler", "formatter": "f", "stream": "ext://sys.stdout"},
        "err": {"class": "logging.StreamHandler", "formatter": "f", "stream": "ext://sys.stderr"},
    },
    "root": {"level": "WARNING", "handlers": []},
    "loggers": {
        "gunicorn.access": {"level": "INFO", "handlers": ["out"], "propagate": False},
        "gunicorn.error": {"level": "INFO", "handlers": ["err"], "propagate": False},
    },
}
'''


def test_a_logging_configurations_stdout_handler_stays_on_stdout(berth, tmp_path):
    """Gunicorn captures output only into an error log file: with the error log on stderr
    and a logconfig_dict sending gunicorn.access to ext://sys.stdout, its access lines are on
    stdout. berth captures there too (prints go to stderr), but the configuration's handlers
    are not prints: their lines stay on their stream (they went to stderr, captured)."""
    for log_format in ("text", "json"):
        conf = tmp_path / f"{log_format}.conf.py"
        conf.write_text(STDOUT_ACCESS_CONFIG)
        srv = berth(["-c", str(conf), "-w", "1", "--log-format", log_format, "proto_app:app"])
        assert http_get(srv.port, "/print?text=printed-line")[0] == 200
        assert wait_for(lambda srv=srv: "printed-line-on-stderr" in srv.stderr(), timeout=5)
        assert wait_for(lambda srv=srv: "CFG gunicorn.access 127.0.0.1" in srv.stdout(),
                        timeout=5), (srv.stdout(), srv.stderr())
        assert "GET /print?text=printed-line" in srv.stdout()
        assert "gunicorn.access" not in srv.stderr()
        assert "printed-line\n" not in srv.stdout()  # the app's print is still captured
        srv.stop()

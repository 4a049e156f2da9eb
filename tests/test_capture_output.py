"""--capture-output: what the app prints goes to the error log (a file, or stderr), never
into the access log's stream."""

from __future__ import annotations

from proto_helpers import http_get, wait_for


def test_prints_go_to_the_error_log_file_and_the_access_log_stays_clean(berth, tmp_path):
    errlog = tmp_path / "error.log"
    srv = berth(["-w", "1", "--capture-output", "--error-logfile", str(errlog),
                 "proto_app:app"], wait_ready=False)
    wait_for(lambda: errlog.exists() and "ready: " in errlog.read_text(), timeout=20)
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
    srv = berth(["-w", "1", "--capture-output", "--error-logfile", str(errlog),
                 "proto_app:app"], wait_ready=False)
    wait_for(lambda: errlog.exists() and "ready: " in errlog.read_text(), timeout=20)
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

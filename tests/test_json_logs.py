"""--log-format json, end to end: both logs are one JSON object per line, access lines carry
the request id the app sees."""

from __future__ import annotations

import json

from proto_helpers import get_request, http_get, send_raw, wait_for


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_both_logs_are_json_lines_and_the_app_sees_the_request_id(berth):
    srv = berth(["-w", "1", "--log-format", "json", "proto_app:app"])
    assert http_get(srv.port, "/hello?q=1", headers={"X-Request-ID": "req-42"})[0] == 200
    env = json.loads(http_get(srv.port, "/env")[2])["str"]
    assert http_get(srv.port, "/raise-before")[0] == 500
    # a header with a quote, a backslash and a byte outside ASCII: still one valid line
    raw, _ = send_raw(srv.port, get_request("/hello", headers={
        "Connection": "close", "User-Agent": 'ua "q" \\ \xe9\tx'}))
    wait_for(lambda: len(json_lines(srv.stdout())) >= 4, timeout=5)
    access = json_lines(srv.stdout())
    first = access[0]
    assert {k: first[k] for k in ("level", "method", "path", "query", "status", "bytes",
                                  "remote_addr", "request_id", "user_agent", "referer")} == {
        "level": "info", "method": "GET", "path": "/hello", "query": "q=1", "status": 200,
        "bytes": 14, "remote_addr": "127.0.0.1", "request_id": "req-42", "user_agent": None,
        "referer": None}
    assert first["timestamp"].endswith("Z") and len(first["timestamp"]) == 24
    assert isinstance(first["pid"], int) and first["duration_ms"] >= 0
    assert "GET /hello?q=1 HTTP/1.1 200" in first["message"]
    # without X-Request-ID berth makes one, and it is the one the app saw
    assert access[1]["request_id"] == env["berth.request_id"]
    assert env["berth.request_id"].startswith(f"{first['pid']:x}-")
    assert access[2]["status"] == 500
    assert access[3]["user_agent"] == 'ua "q" \\ \xe9\tx'
    assert all(line.isascii() for line in srv.stdout().splitlines())
    errors = json_lines(srv.stderr())
    assert all({"timestamp", "level", "pid", "message"} <= set(e) for e in errors)
    failure = next(e for e in errors if e["level"] == "error")
    assert "Error handling request GET /raise-before" in failure["message"]
    assert failure["exception"].startswith("Traceback") and "\n" in failure["exception"]


def test_a_long_request_id_is_not_taken(berth):
    srv = berth(["-w", "1", "--log-format", "json", "proto_app:app"])
    env = json.loads(http_get(srv.port, "/env", headers={"X-Request-ID": "x" * 300})[2])["str"]
    assert env["berth.request_id"] != "x" * 300 and len(env["berth.request_id"]) < 40


def test_without_json_there_is_no_request_id(berth):
    srv = berth(["-w", "1", "proto_app:app"])
    env = json.loads(http_get(srv.port, "/env")[2])["str"]
    assert "berth.request_id" not in env
    wait_for(lambda: '"GET /env HTTP/1.1" 200' in srv.stdout(), timeout=5)


def test_asgi_access_lines_carry_the_request_id_and_the_app_sees_it(berth):
    # under -k asgi the access line's request_id was null, X-Request-ID or not
    srv = berth(["-w", "1", "-k", "asgi", "--log-format", "json", "asgi_app:app"])
    assert http_get(srv.port, "/hello", headers={"X-Request-ID": "req-7"})[0] == 200
    status, _, body = http_get(srv.port, "/scope")
    assert status == 200
    scope = json.loads(body)
    wait_for(lambda: len(json_lines(srv.stdout())) >= 2, timeout=5)
    first, second = json_lines(srv.stdout())[:2]
    assert first["path"] == "/hello" and first["request_id"] == "req-7"
    assert second["request_id"] == scope["berth.request_id"]
    assert second["request_id"].startswith(f"{second['pid']:x}-")

"""Unit tests for the benchmark harness's parsing and /proc helpers (no servers, no wrk).

Run with `python -m pytest benchmarks/test_bench.py`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import bench  # benchmarks/ is on sys.path: pytest prepends the test file's directory
import pytest

WRK_OK = """\
Running 5s test @ http://127.0.0.1:8000/
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.23ms  310.00us   9.80ms   90.00%
    Req/Sec    40.10k     1.20k   42.00k    80.00%
  Latency Distribution
     50%  812.00us
     75%    1.10ms
     90%    1.50ms
     99%    3.25ms
  200123 requests in 5.00s, 25.00MB read
Requests/sec:  40024.60
Transfer/sec:      5.00MB
"""

WRK_ERRORS = """\
  Latency Distribution
     50%    1.02s
     99%    2.00s
  61 requests in 1.00m, 7.00KB read
  Socket errors: connect 1, read 2, write 3, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:      1.02
"""


def test_parse_wrk() -> None:
    result = bench.parse_wrk(WRK_OK)
    assert result.requests == 200123
    assert result.seconds == pytest.approx(5.0)
    assert result.rps == pytest.approx(40024.60)
    assert result.p50_ms == pytest.approx(0.812)
    assert result.p99_ms == pytest.approx(3.25)
    assert result.errors == 0


def test_parse_wrk_errors_and_units() -> None:
    result = bench.parse_wrk(WRK_ERRORS)
    assert result.seconds == pytest.approx(60.0)
    assert result.p50_ms == pytest.approx(1020.0)
    assert result.socket_errors == {"connect": 1, "read": 2, "write": 3, "timeout": 4}
    assert result.non_2xx_3xx == 5
    assert result.errors == 15


def test_parse_wrk_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        bench.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")


def test_process_tree_and_cpu_of_a_child() -> None:
    sleeper = "import time; time.sleep(30)"
    code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {sleeper!r}])"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        tree: list[bench.ProcStat] = []
        for _ in range(100):  # the grandchild needs a moment to appear
            tree = bench.process_tree(proc.pid)
            if len(tree) == 2:
                break
            time.sleep(0.05)
        assert tree[0].pid == proc.pid
        assert len(tree) == 2 and tree[1].ppid == proc.pid
        assert all(st.cpu_ticks >= 0 for st in tree)
    finally:
        for st in reversed(bench.process_tree(proc.pid)):
            os.kill(st.pid, signal.SIGKILL)
        proc.wait(10)
    assert bench.process_tree(proc.pid) == []


def test_read_stat_of_self() -> None:
    st = bench.read_stat(os.getpid())
    assert st is not None and st.ppid == os.getppid()
    assert bench.is_same_process(os.getpid(), st.start_ticks)
    assert not bench.is_same_process(os.getpid(), st.start_ticks + 1)


def test_shell_join_keeps_port_expandable() -> None:
    cmd = ["wrk", "-H", "Connection: close", "--port", "$PORT", "http://127.0.0.1:$PORT/"]
    assert bench.shell_join(cmd) == (
        "wrk -H 'Connection: close' --port $PORT http://127.0.0.1:$PORT/"
    )


def test_targets() -> None:
    scenarios = bench.build_scenarios(gunicorn_extra=())
    hello = scenarios["hello-t1"]

    def summary(name: str, rps: float) -> bench.Summary:
        return bench.Summary(name, 1, rps, rps, rps, 1.0, 2.0, 10.0, 90.0, 50.0, 0, 1)

    summaries = {
        "berth-t1": summary("berth-t1", 80_000),
        "berth-t1-log": summary("berth-t1-log", 60_000),
        "gunicorn-gthread-t4": summary("gunicorn-gthread-t4", 8_000),
    }
    results = bench.evaluate(hello, summaries)
    assert [r.passed for r in results] == [True, None, False]  # granian missing: n/a
    sleep = bench.evaluate(scenarios["sleep"], {"berth-2x4": summary("berth-2x4", 156.0)})
    assert sleep[0].kind == "ceiling" and sleep[0].passed is True


def _summary(name: str, rps: float, cpu_us: float = 10.0) -> bench.Summary:
    return bench.Summary(name, 1, rps, rps, rps, 1.0, 2.0, cpu_us, 90.0, 50.0, 0, 1)


def test_baseline_twins_and_selection(tmp_path: Path) -> None:
    hello = bench.build_scenarios(gunicorn_extra=())["hello-t1"]
    baseline = bench.Baseline("HEAD~1", "1a2b3c4d" * 5, "1a2b3c4", "subject", tmp_path)
    servers = bench.with_baselines(hello.servers, baseline)
    names = [s.name for s in servers]
    assert names[:4] == ["berth-t1", "berth-t1@1a2b3c4", "berth-t1-log", "berth-t1-log@1a2b3c4"]
    assert len(servers) == len(hello.servers) + 2  # peers get no twin
    twin = servers[1]
    assert twin.baseline_of == "berth-t1" and twin.pythonpath == tmp_path
    assert twin.argv == servers[0].argv and twin.source == "berth@1a2b3c4"
    assert servers[0].source == "berth" and servers[0].pythonpath == bench.REPO_ROOT
    assert bench.server_env(tmp_path)["PYTHONPATH"] == str(tmp_path)
    # a baseline comes with the server it mirrors, or alone if only its own name matches
    pick = [s.name for s in servers if bench.selected(s, ["berth-t1"])]
    assert pick == ["berth-t1", "berth-t1@1a2b3c4"]
    assert [s.name for s in servers if bench.selected(s, ["*@*"])] == names[1:4:2]
    assert all(bench.selected(s, None) for s in servers)


def test_ratio_tables_with_baseline(tmp_path: Path) -> None:
    hello = bench.build_scenarios(gunicorn_extra=())["hello-t1"]
    baseline = bench.Baseline("x", "f" * 40, "fffffff", "s", tmp_path)
    servers = bench.with_baselines(hello.servers, baseline)
    summaries = {
        "berth-t1": _summary("berth-t1", 60_000, cpu_us=9.0),
        "berth-t1@fffffff": _summary("berth-t1@fffffff", 50_000, cpu_us=10.0),
        "gunicorn-gthread-t4": _summary("gunicorn-gthread-t4", 6_000),
    }
    (text,) = bench.ratio_tables(servers, summaries)
    rows = {
        line.split()[0]: line.split()[1:]
        for line in text.splitlines()
        if line.startswith("    berth")
    }
    assert rows == {
        "berth-t1": ["10.00x", "1.20x", "0.90x"],
        "berth-t1@fffffff": ["8.33x", "-", "-"],
    }
    # without peers only the berth servers that have a baseline get a row
    del summaries["gunicorn-gthread-t4"]
    (text,) = bench.ratio_tables(servers, summaries)
    assert "berth / peer" not in text and text.splitlines()[-1].split() == [
        "berth-t1",
        "1.20x",
        "0.90x",
    ]
    # no baseline, no peers: no table
    assert bench.ratio_tables(hello.servers, {"berth-t1": summaries["berth-t1"]}) == []


def test_best_of_group_is_the_faster_member_in_this_run() -> None:
    flask = bench.build_scenarios(gunicorn_extra=())["flask"]
    summaries = {
        "berth-t1": _summary("berth-t1", 5_000),
        "berth-t4-default": _summary("berth-t4-default", 5_400),
        "granian-bt1": _summary("granian-bt1", 4_000),
        "granian-bt4": _summary("granian-bt4", 5_000),
    }
    assert bench.pick_best(flask.best_of, summaries) == {"granian-best": "granian-bt4"}
    t4, t1 = bench.evaluate(flask, summaries)
    assert t4.text == "berth-t4-default >= 1.05x granian-best (= granian-bt4)"
    assert t4.value == pytest.approx(1.08) and t4.passed is True and t4.goal_met is False
    assert t4.shown() == "1.08x (goal 1.1x: not yet)"
    assert t1.value == pytest.approx(1.0) and t1.passed is False and t1.goal is None
    # the other member wins when it is the faster one; a met goal says so
    summaries["granian-bt1"] = _summary("granian-bt1", 4_800)
    summaries["granian-bt4"] = _summary("granian-bt4", 4_500)
    t4, t1 = bench.evaluate(flask, summaries)
    assert "(= granian-bt1)" in t4.text and t4.value == pytest.approx(1.125)
    assert t4.goal_met is True and t4.shown().endswith("(goal 1.1x: met)")


def _run(server: str, rnd: int, rps: float) -> bench.Run:
    wrk = bench.WrkResult(int(rps * 4), 4.0, rps, 1.0, 2.0, {}, 0)
    return bench.Run(server, rnd, True, wrk=wrk)


def test_a_ratio_target_shows_its_rounds_and_whether_they_agree() -> None:
    """The verdict on a noisy machine: the ratio round by round (each round's servers ran
    back to back), against the pick of a best-of group, and "undecided" when some rounds
    pass and some fail."""
    flask = bench.build_scenarios(gunicorn_extra=())["flask"]
    per_round = {"berth-t4-default": (5_500, 4_000, 6_000), "berth-t1": (5_600, 4_300, 6_100),
                 "granian-bt1": (3_000, 2_500, 3_500), "granian-bt4": (5_000, 4_000, 5_000),
                 "berth-t1@1a2b3c4": (1.0, 1.0, 1.0)}  # (not a target's: left out)
    runs = [_run(name, n + 1, rps) for name, values in per_round.items()
            for n, rps in enumerate(values)]
    runs.append(bench.Run("granian-bt4", 4, False, error="did not start"))  # (no pair: out)
    runs.append(_run("berth-t1", 4, 9_999.0))
    summaries = {name: _summary(name, sorted(v)[1]) for name, v in per_round.items()}
    t4, t1 = bench.evaluate(flask, summaries, runs)
    assert t4.rounds == pytest.approx([1.1, 1.0, 1.2])  # against granian-bt4, the pick
    assert t4.passed is True  # 5,500 / 5,000 = 1.10x
    assert t4.shown() == ("1.10x (goal 1.1x: met); rounds 1.00x..1.20x, the rounds disagree: "
                          "undecided")
    assert t1.rounds == pytest.approx([1.12, 1.075, 1.22])
    assert t1.shown() == "1.12x; rounds 1.07x..1.22x, every round agrees"
    assert bench.evaluate(flask, summaries)[1].shown() == "1.12x"  # no runs: medians alone


def test_best_of_needs_every_member() -> None:
    # A best of the members that happened to run could flatter berth: not evaluated.
    flask = bench.build_scenarios(gunicorn_extra=())["flask"]
    summaries = {
        "berth-t1": _summary("berth-t1", 5_000),
        "berth-t4-default": _summary("berth-t4-default", 5_400),
        "granian-bt1": _summary("granian-bt1", 4_000),
    }
    assert bench.pick_best(flask.best_of, summaries) == {}
    assert [t.passed for t in bench.evaluate(flask, summaries)] == [None, None]
    assert bench.evaluate(flask, summaries)[0].shown() == "not measured"


def test_latency_and_ratio_targets_of_hello_t4() -> None:
    hello_t4 = bench.build_scenarios(gunicorn_extra=())["hello-t4"]
    fast = replace(_summary("berth-t4", 30_000), p99_ms=1.5)
    summaries = {"berth-t4": fast, "berth-t1": _summary("berth-t1", 31_000)}
    gthread, vs_t1, p99 = bench.evaluate(hello_t4, summaries)
    assert gthread.passed is None  # gunicorn not measured
    assert vs_t1.passed is True and vs_t1.value == pytest.approx(30 / 31)
    assert p99.kind == "p99" and p99.passed is True and p99.text == "berth-t4 p99 < 2ms"
    assert p99.shown() == "1.50ms"
    summaries["berth-t4"] = replace(fast, rps=29_000, p99_ms=2.0)
    _, vs_t1, p99 = bench.evaluate(hello_t4, summaries)
    assert vs_t1.passed is False and p99.passed is False  # the bound itself is not below it


def test_server_share_and_report_rows() -> None:
    flask = bench.build_scenarios(gunicorn_extra=())["flask"]
    summaries = {
        "berth-t1": _summary("berth-t1", 5_000, cpu_us=150.0),
        "granian-bt1": _summary("granian-bt1", 4_000, cpu_us=200.0),
        "granian-bt4": _summary("granian-bt4", 4_500, cpu_us=190.0),
    }
    shared = bench.add_server_share(summaries, 100.0)
    assert shared["berth-t1"].server_share_us_per_request == pytest.approx(50.0)
    assert shared["granian-bt4"].server_share_us_per_request == pytest.approx(90.0)
    assert bench.add_server_share(summaries, None)["berth-t1"].server_share_us_per_request is None
    inproc = [bench.InprocessRun(1, ok=True, us_per_request=100.0), bench.InprocessRun(2, False)]
    targets = bench.evaluate(flask, shared)
    text = bench.report(flask, flask.servers, shared, [], targets, 2, 100.0, inproc)
    lines = text.splitlines()
    assert "share us/req" in lines[0]
    best = next(line.split() for line in lines if line.startswith("  granian-best"))
    assert best[:4] == ["granian-best", "(=", "granian-bt4)", "4,500"] and "90.0" in best
    assert "app in-process (flaskapp:app, no server): 100.0 us/req (median of 1/2 rounds" in text
    assert "failed app in-process runs:" in text
    # the ratio table has the group as a peer column
    (ratios,) = bench.ratio_tables(
        flask.servers, bench.with_best(shared, {"granian-best": "granian-bt4"}), ["granian-best"]
    )
    row = next(line.split() for line in ratios.splitlines() if line.startswith("    berth-t1"))
    assert row == ["berth-t1", "1.25x", "1.11x", "1.11x"]


def test_inprocess_calls_the_app_as_a_server_would() -> None:
    import inprocess

    environ = inprocess.request_environ(8123)
    assert environ["HTTP_HOST"] == "127.0.0.1:8123" and environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["REQUEST_METHOD"] == "GET" and environ["PATH_INFO"] == "/"
    assert not any(k.startswith("HTTP_") and k != "HTTP_HOST" for k in environ)

    closed: list[bool] = []
    seen: list[dict[str, Any]] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            return iter([b"ab", b"cde"])

        def close(self) -> None:
            closed.append(True)

    def app(env: dict[str, Any], start_response: Callable[..., Any]) -> Body:
        seen.append(env)
        env["app.wrote"] = True  # must not leak into the next request's environ
        start_response("200 OK", [])
        return Body()

    assert inprocess.call_once(app, environ) == ("200 OK", 5)
    assert inprocess.call_once(app, environ) == ("200 OK", 5)
    assert closed == [True, True] and "app.wrote" not in environ
    assert seen[0] is not seen[1] and seen[0]["wsgi.input"] is not seen[1]["wsgi.input"]

    result = inprocess.measure("hello:app", repeats=2, seconds=0.01)
    assert result.status == "200 OK" and result.body_bytes == 13
    assert len(result.repeats_us) == 2 and result.us_per_call > 0


def test_measure_inprocess_in_a_subprocess() -> None:
    run = bench.measure_inprocess("hello:app", 1, cpu=None)
    assert run.ok and run.us_per_request and run.us_per_request > 0, run.error
    assert run.repeats_us and len(run.repeats_us) == bench.INPROCESS_REPEATS
    broken = bench.measure_inprocess("no_such_module:app", 2, cpu=None)
    assert not broken.ok and "no_such_module" in (broken.error or "")


def test_asgi_scenarios_run_every_server_on_one_uvloop_worker_without_access_log() -> None:
    scenarios = bench.build_scenarios(gunicorn_extra=("--no-control-socket",))
    for name, app in (("asgi-hello", "asgihello:app"), ("asgi-fastapi", "fastapiapp:app")):
        sc = scenarios[name]
        servers = {s.name: s for s in sc.servers}
        assert list(servers) == ["berth-asgi", "uvicorn", "gunicorn-asgi", "granian-asgi"]
        assert all(s.argv[-1] == app for s in sc.servers)
        berth, uvicorn, gunicorn, granian = (" ".join(s.argv) for s in sc.servers)
        assert "-k asgi -w 1 " in berth and "--threads" not in berth
        assert "--access-logfile none" in berth  # berth's loop: its default (auto = uvloop)
        assert "--workers 1 --loop uvloop --http httptools" in uvicorn
        assert "--no-access-log" in uvicorn and servers["uvicorn"].ready_stream == "stderr"
        assert "-w 1 -k asgi" in gunicorn and "--asgi-loop uvloop" in gunicorn
        assert "--no-control-socket" in gunicorn and "--access-logfile" not in gunicorn  # off
        assert "--interface asgi" in granian and "--workers 1" in granian
        assert "--loop uvloop" in granian and "--no-access-log" in granian
        assert "--blocking-threads" not in granian
        (target,) = sc.targets
        assert isinstance(target, bench.Target)
        assert (target.server, target.minimum, target.versus) == ("berth-asgi", 1.0, "uvicorn")
    assert scenarios["asgi-hello"].targets[0].goal == 1.3
    # the WSGI servers keep their flags: no -k, --threads as given
    hello_t1 = " ".join(scenarios["hello-t1"].servers[0].argv)
    assert " -k " not in hello_t1 and "-w 1 --threads 1 --access-logfile none" in hello_t1


def test_asgi_hello_target_and_goal() -> None:
    hello = bench.build_scenarios(gunicorn_extra=())["asgi-hello"]
    summaries = {
        "berth-asgi": _summary("berth-asgi", 45_000),
        "uvicorn": _summary("uvicorn", 40_000),
    }
    (gate,) = bench.evaluate(hello, summaries)
    assert gate.passed is True and gate.goal_met is False
    assert gate.shown() == "1.12x (goal 1.3x: not yet)"
    summaries["berth-asgi"] = _summary("berth-asgi", 54_000)
    assert bench.evaluate(hello, summaries)[0].shown() == "1.35x (goal 1.3x: met)"
    (ratios,) = bench.ratio_tables(hello.servers, summaries)
    assert ratios.splitlines()[-1].split() == ["berth-asgi", "1.35x"]


def test_inprocess_calls_an_asgi_app_as_berth_would() -> None:
    import asyncio

    import asgihello
    import hello
    import inprocess

    assert inprocess.is_asgi(asgihello.app) and not inprocess.is_asgi(hello.app)
    scope = inprocess.request_scope(8123)
    assert scope["headers"] == [(b"host", b"127.0.0.1:8123")] and scope["path"] == "/"
    # the ASGI hello sends the WSGI hello's body and headers (names in lower case)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    asyncio.run(asgihello.app(dict(scope), receive, send))
    start, body = sent
    assert start["status"] == 200 and body["body"] == hello.BODY
    assert [(n.decode(), v.decode()) for n, v in start["headers"]] == [
        (name.lower(), value) for name, value in hello.HEADERS
    ]

    seen: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen.append(scope)
        scope["app.wrote"] = True  # must not leak into the next request's scope
        assert (await receive())["type"] == "http.request"
        assert (await receive())["type"] == "http.disconnect"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ab", "more_body": True})
        await send({"type": "http.response.body", "body": b"cde"})

    assert asyncio.run(inprocess.call_once_asgi(app, scope)) == ("200 OK", 5)
    assert asyncio.run(inprocess.call_once_asgi(app, scope)) == ("200 OK", 5)
    assert seen[0] is not seen[1] and "app.wrote" not in scope

    result = inprocess.measure("asgihello:app", repeats=2, seconds=0.01)
    assert result.status == "200 OK" and result.body_bytes == 13
    assert len(result.repeats_us) == 2 and result.us_per_call > 0


def test_inprocess_times_the_fastapi_app_in_its_scenario() -> None:
    pytest.importorskip("fastapi")
    assert bench.build_scenarios(gunicorn_extra=())["asgi-fastapi"].inprocess_app == (
        "fastapiapp:app"
    )
    run = bench.measure_inprocess("fastapiapp:app", 1, cpu=None)
    assert run.ok and run.us_per_request and run.us_per_request > 0, run.error


def test_the_instructions_counts_in_process_driver_calls_the_app() -> None:
    """instructions.py --inprocess runs this driver under callgrind; here without valgrind:
    it imports the app from benchmarks/ and calls it, and fails loudly on a bad app."""
    import instructions

    ok = subprocess.run([sys.executable, "-c", instructions.INPROCESS,
                         str(instructions.BENCH_DIR), "hello:app", "3"],
                        capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, "-c", instructions.INPROCESS,
                          str(instructions.BENCH_DIR), "no_such_module:app", "3"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "no_such_module" in bad.stderr
    argv = instructions.granian_argv(8123, "flaskapp:app", 4)
    assert argv[:2] == ["-m", "granian"] and "--blocking-threads" in argv
    assert argv[argv.index("--blocking-threads") + 1] == "4" and argv[-1] == "flaskapp:app"

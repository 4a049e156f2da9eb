"""Real ASGI frameworks on the real server, through a real client: FastAPI, Starlette and
Django's ASGI handler (tests/apps/asgi_fastapi.py, asgi_starlette.py, asgi_django.py) behind
`python -m berth -k asgi -w 1`, driven with httpx on 127.0.0.1.

Each app runs twice, with the default event loop (uvloop, when installed) and with
`--asgi-loop asyncio`; the six servers start together once for the module. The same cases run
on every app where the framework has the feature: JSON in and out, a streamed body, server-sent
events, multipart uploads (small, and larger than --body-buffer-size so berth streams the body
to the app), lifespan state (FastAPI and Starlette; Django has no lifespan, which
`--asgi-lifespan auto` must shrug off), and a client that leaves in the middle of an endless
stream: the app must learn of it (http.disconnect from receive(), or its generator cancelled
or closed), as the marker file the app writes says.

Every wait is bounded: httpx timeouts, `wait_for` loops, the servers' `wait_for_log`.
"""

from __future__ import annotations

import hashlib
import random
import signal
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import APPS as APPS_DIR
from conftest import Server
from proto_helpers import start_module_server, wait_for

if str(APPS_DIR) not in sys.path:
    sys.path.insert(0, str(APPS_DIR))

from asgi_parts import pattern_chunk

APPS = {
    "fastapi": "asgi_fastapi:app",
    "starlette": "asgi_starlette:app",
    "django": "asgi_django:application",
}
try:
    import uvloop  # noqa: F401

    DEFAULT_LOOP = "uvloop"
except ImportError:
    DEFAULT_LOOP = "asyncio"
LOOPS = {"default": [], "asyncio": ["--asgi-loop", "asyncio"]}
TIMEOUT = httpx.Timeout(10.0)


def cases(*frameworks: str) -> list:
    return [pytest.param(fw, loop, id=f"{fw}-{loop}") for fw in frameworks for loop in LOOPS]


ALL = cases(*APPS)
WITH_LIFESPAN = cases("fastapi", "starlette")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """{(framework, loop): Server}: all six started at once, then waited for."""
    started: dict[tuple[str, str], Server] = {}
    try:
        for fw, spec in APPS.items():
            for loop, loop_args in LOOPS.items():
                started[fw, loop] = start_module_server(
                    tmp_path_factory, ["-w", "1", "-k", "asgi", *loop_args, spec],
                    name=f"{fw}-{loop}", wait_ready=False)
        for srv in started.values():
            srv.wait_for_log("ready: ", timeout=60)
        yield started
    finally:
        for srv in started.values():  # all drain at once (a second SIGTERM changes nothing)
            srv.signal(signal.SIGTERM)
        for srv in started.values():
            srv.stop()


def client(srv: Server) -> httpx.Client:
    # trust_env=False: no proxy from the environment between the test and 127.0.0.1
    return httpx.Client(base_url=srv.url, timeout=TIMEOUT, trust_env=False)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_marker(markers: Path, name: str, timeout: float = 5.0) -> str:
    """The marker's text once a whole line is in it ("" if none within `timeout`): the app
    creates the file and writes the line in two steps."""
    path = markers / name

    def text() -> str:
        return path.read_text() if path.exists() else ""

    wait_for(lambda: text().endswith("\n"), timeout=timeout)
    return text()


def parse_sse(lines) -> list[dict]:
    """Events of a text/event-stream (the fields this test's apps send; no multi-line data)."""
    events, fields = [], {}
    for line in lines:
        if not line:
            if fields:
                events.append(fields)
            fields = {}
            continue
        if line.startswith(":"):
            continue  # a comment (a keep-alive)
        name, _, value = line.partition(":")
        fields[name] = value[1:] if value.startswith(" ") else value
    if fields:
        events.append(fields)
    return events


# -- JSON --------------------------------------------------------------------------------------


@pytest.mark.parametrize("fw, loop", ALL)
def test_json_endpoints_answer_get_and_post_on_one_connection(servers, fw, loop):
    with client(servers[fw, loop]) as c:
        r = c.get("/json", params={"name": "bérth"})
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/json")
        first = r.json()
        assert first == {"framework": fw, "name": "bérth", "http_version": "1.1",
                         "loop": DEFAULT_LOOP if loop == "default" else "asyncio",
                         "client_port": first["client_port"]}
        payload = {"numbers": [3, 4, 35], "label": "sum"}
        r = c.post("/json", json=payload)
        assert r.status_code == 200
        assert r.json() == {"framework": fw, "echo": payload, "sum": 42, "count": 3}
        # the same client port after the POST: one keep-alive connection for all three
        assert c.get("/json").json()["client_port"] == first["client_port"]


# -- streaming ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fw, loop", ALL)
def test_streamed_body_reaches_the_client_while_the_app_still_runs(servers, fw, loop):
    """The app holds after its first chunk until the test opens a gate (a file): the test
    can only open it if that chunk came through while the app was still streaming."""
    srv = servers[fw, loop]
    n, size, gate = 4, 1000, f"gate-{uuid.uuid4().hex}"
    expected = b"".join(pattern_chunk(i, size) for i in range(n))
    with client(srv) as c, c.stream("GET", "/stream",
                                    params={"n": n, "size": size, "gate": gate}) as r:
        assert r.status_code == 200
        assert r.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in r.headers
        body = b""
        pieces = r.iter_raw()
        while len(body) < size:
            body += next(pieces)
        assert body[:size] == pattern_chunk(0, size)
        (srv.markers / gate).touch()
        body += b"".join(pieces)
    assert body == expected
    assert not (srv.markers / f"{gate}.timeout").exists()


@pytest.mark.parametrize("fw, loop", ALL)
def test_server_sent_events_arrive_as_an_event_stream(servers, fw, loop):
    with client(servers[fw, loop]) as c, c.stream("GET", "/sse",
                                                  params={"n": 4, "delay": 0.05}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        assert "content-length" not in r.headers
        events = parse_sse(r.iter_lines())
    assert events == [{"id": str(i), "event": "tick", "data": f"{fw} {i}"} for i in range(4)]


# -- uploads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1000, 3 * 1024 * 1024 + 7], ids=["small", "over-body-buffer"])
@pytest.mark.parametrize("fw, loop", ALL)
def test_multipart_upload_reaches_the_app_whole(servers, fw, loop, size):
    """3 MiB is over berth's --body-buffer-size (1 MiB): the app reads it as it arrives."""
    data = random.Random(size).randbytes(size)
    with client(servers[fw, loop]) as c:
        r = c.post("/upload", files={"file": ("data.bin", data, "application/octet-stream")},
                   data={"note": "a note"})
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["filename"], got["size"], got["sha256"], got["note"]) == (
        "data.bin", size, sha(data), "a note")
    if fw == "django":  # Django keeps uploads up to 1 MiB in memory, larger ones on disk
        assert got["handler"] == ("InMemoryUploadedFile" if size < 1 << 20
                                  else "TemporaryUploadedFile")


# -- lifespan ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fw, loop", WITH_LIFESPAN)
def test_lifespan_state_set_at_startup_reaches_requests(servers, fw, loop):
    srv = servers[fw, loop]
    with client(srv) as c:
        r = c.get("/state")
    assert r.status_code == 200
    got = r.json()
    assert got["greeting"] == f"hello from {fw}'s lifespan"
    assert got["startup_pid"] == got["pid"]  # the worker ran the startup, not the master
    assert read_marker(srv.markers, "lifespan-startup").split() == [str(got["pid"])]


@pytest.mark.parametrize("fw", ["fastapi", "starlette"])
def test_lifespan_shutdown_runs_when_berth_stops(berth, tmp_path, fw):
    markers = tmp_path / "markers"
    markers.mkdir()
    srv = berth(["-w", "1", "-k", "asgi", APPS[fw]], env={"PROTO_MARKER_DIR": str(markers)})
    pid = read_marker(markers, "lifespan-startup").split()
    assert len(pid) == 1
    assert srv.stop(signal.SIGTERM) == 0
    assert read_marker(markers, "lifespan-shutdown", timeout=0).split() == pid


@pytest.mark.parametrize("loop", LOOPS)
def test_django_without_lifespan_is_served_with_lifespan_auto(servers, loop):
    srv = servers["django", loop]
    assert "the ASGI app does not support lifespan" in srv.stderr()
    assert "Django can only handle ASGI/HTTP connections, not lifespan" in srv.stderr()
    with client(srv) as c:
        assert c.get("/json").json()["framework"] == "django"


def test_django_with_lifespan_on_stops_berth(berth):
    srv = berth(["-w", "1", "-k", "asgi", "--asgi-lifespan", "on", APPS["django"]],
                wait_ready=False)
    assert srv.wait(timeout=30) == 4  # Gunicorn's "the app could not be loaded"
    assert "ASGI lifespan startup failed" in srv.stderr()


# -- a client that leaves ---------------------------------------------------------------------

# (framework, endpoint, what the app's marker says it saw)
LEAVERS = [
    # raw ASGI: a second receive() returns http.disconnect
    ("starlette", "/raw-forever", "http.disconnect"),
    ("fastapi", "/raw-forever", "http.disconnect"),
    # Starlette's documented way: request.is_disconnected() (a receive() that does not wait)
    ("starlette", "/forever", "http.disconnect"),
    # a plain generator in a StreamingResponse: closed once the response stops iterating it
    ("fastapi", "/forever", "GeneratorExit"),
    # FastAPI's EventSourceResponse runs the generator in a task group it cancels
    ("fastapi", "/sse-forever", "CancelledError"),
    # Django's handler awaits receive() beside the response and cancels it on http.disconnect
    ("django", "/forever", "CancelledError"),
]


def leaver_cases(loops=LOOPS) -> list:
    return [pytest.param(fw, loop, path, saw, id=f"{fw}{path}-{loop}")
            for fw, path, saw in LEAVERS for loop in loops]


def leave_after_first_chunk(srv: Server, path: str, tag: str) -> None:
    with client(srv) as c, c.stream("GET", path, params={"tag": tag}) as r:
        assert r.status_code == 200
        assert next(r.iter_raw())
    # leaving the block closes the response before its end: httpx closes the connection


# A client that closes its connection while the app writes nothing: its FIN is the disconnect
# (as with Uvicorn), so the app is told at once, not at its next write. (First in this
# section: the slow view ends while the other tests run, not in the servers' drain.)
def test_client_that_gives_up_on_a_slow_django_view_gets_it_cancelled(servers):
    srv = servers["django", "default"]
    tag = f"slow-{uuid.uuid4().hex}"
    with client(srv) as c, pytest.raises(httpx.ReadTimeout):
        c.get("/slow", params={"tag": tag, "seconds": 1.5}, timeout=httpx.Timeout(10, read=0.5))
    assert read_marker(srv.markers, f"{tag}.started")  # the view ran, and the client then closed
    # "finished" (1.5 s later) is what berth gives today
    assert read_marker(srv.markers, tag).split() == ["CancelledError"]


def test_client_leaving_an_idle_stream_is_told_to_the_app_at_once(servers):
    srv = servers["starlette", "default"]
    tag = f"idle-{uuid.uuid4().hex}"
    with client(srv) as c, c.stream("GET", "/raw-wait",
                                    params={"tag": tag, "seconds": 1.5}) as r:
        assert next(r.iter_raw()) == pattern_chunk(0, 64)
    # "timeout" (1.5 s later) is what berth gives today
    assert read_marker(srv.markers, tag).split() == ["http.disconnect"]


@pytest.mark.parametrize("fw, loop, path, saw", leaver_cases())
def test_client_leaving_mid_stream_is_seen_by_the_app(servers, fw, loop, path, saw):
    srv = servers[fw, loop]
    tag = f"left-{uuid.uuid4().hex}"
    leave_after_first_chunk(srv, path, tag)
    assert read_marker(srv.markers, tag).split() == [saw]
    with client(srv) as c:  # the worker goes on serving
        assert c.get("/json").status_code == 200


# Starlette (FastAPI's too) streams a StreamingResponse without listening for http.disconnect
# when the server says ASGI spec 2.4, and turns the OSError that send() raises once the client
# is gone into starlette.requests.ClientDisconnect, which it lets out of the app: berth logs
# that at debug, not as an app error.
@pytest.mark.parametrize("fw, loop, path, saw", leaver_cases(loops=["default"]))
def test_client_leaving_mid_stream_is_not_logged_as_an_app_error(servers, fw, loop, path, saw):
    srv = servers[fw, loop]
    tag = f"quiet-{uuid.uuid4().hex}"
    leave_after_first_chunk(srv, path, tag)
    assert read_marker(srv.markers, tag).split() == [saw]
    # the request is over (its access line is written once the app's task is), and an error
    # line, if any, was logged before that
    assert wait_for(lambda: f"tag={tag}" in srv.stdout(), timeout=5)
    assert f"error in ASGI app: GET {path}?tag={tag}" not in srv.stderr()

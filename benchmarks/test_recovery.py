"""Unit tests for recovery.py's /proc helpers and bookkeeping (no berth started).

Run with `python -m pytest benchmarks/test_recovery.py`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import recovery  # benchmarks/ is on sys.path: pytest prepends the test file's directory


def test_children_of_a_process() -> None:
    sleeper = "import time; time.sleep(30)"
    code = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {sleeper!r}])"
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        kids: list[int] = []
        for _ in range(100):
            kids = recovery.children(proc.pid)
            if kids:
                break
            time.sleep(0.05)
        assert len(kids) == 1
        assert proc.pid in recovery.children(os.getpid())
    finally:
        for pid in recovery.children(proc.pid):
            os.kill(pid, 9)
        proc.kill()
        proc.wait(10)


def test_socket_inode_and_holder() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            with accepted:
                local = client.getsockname()[1]
                inode = recovery.socket_inode(port, local)  # the server side of the connection
                assert inode == os.fstat(accepted.fileno()).st_ino
                assert recovery.holds_socket(os.getpid(), inode)
                assert not recovery.holds_socket(os.getppid(), inode)
                assert recovery.socket_inode(port, 1) is None


def test_line_log() -> None:
    r, w = os.pipe()
    with os.fdopen(r, "rb") as reader:
        log = recovery.LineLog(reader)
        os.write(w, b"one\n[x] [1] [DEBUG] worker 42 ready\n")
        assert log.wait_for("worker 42 ready", 5.0) is not None
        assert log.find("one", start=1) is None
        assert log.wait_for("never", 0.05) is None
        os.close(w)
        log.join(5.0)
    assert [line for _, line in log.lines] == ["one", "[x] [1] [DEBUG] worker 42 ready"]


def test_client_between() -> None:
    client = recovery.Client(port=1, interval=0.0)  # never started
    client.done = [1.0, 2.0, 2.5, 4.0, 9.0]
    client.failures = [(2.2, "RemoteDisconnected"), (5.0, "timeout")]
    ok, failed, gap = client.between(2.1, 4.5)
    assert ok == 2 and failed == ["RemoteDisconnected"]
    assert gap == 1.5  # 2.5 -> 4.0; the gap since the last success before (2.0 -> 2.5) is shorter
    assert client.between(10.0, 11.0) == (0, [], None)


def test_summary_counts_failures_by_victim() -> None:
    trials = [
        recovery.Trial(1, 10, True, 11, 1.0, 2.0, 9.0, 100, ["ConnectionResetError"], 12.0),
        recovery.Trial(2, 11, False, 12, 1.0, 2.0, 11.0, 100, [], 3.0),
    ]
    text = recovery.summary(trials, load=True)
    assert "median  10.0 ms, min 9.0, max 11.0" in text
    assert "client failures: 1 (per trial: 1 0); 1 when the killed worker held" in text
    assert "0 otherwise" in text
    assert "client" not in recovery.summary(trials, load=False)

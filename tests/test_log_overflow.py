"""A stalled access-log reader (stdout is a pipe nobody reads): with --log-overflow drop (the
default) serving goes on, memory stays bounded and the dropped lines are counted in the
metrics; with block, the worker waits for the reader."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from conftest import APPS, ROOT, connect, free_port, read_response
from proto_helpers import pids_children, wait_for

UA = "x" * 1000  # each access line about 1 KB: a 4 MiB backlog fills in about 4,000 requests


def start(tmp_path, *args):
    port, admin = free_port(), free_port()
    env = dict(os.environ, BERTH_IN_CONTAINER="0", PYTHONPATH=f"{APPS}{os.pathsep}{ROOT}")
    err = tmp_path / "stderr.log"
    with open(err, "wb") as err_file:
        proc = subprocess.Popen(  # stdout: a pipe this test never reads
            [sys.executable, "-m", "berth", "-b", f"127.0.0.1:{port}", "-w", "1",
             "--threads", "1", "--admin-bind", f"127.0.0.1:{admin}", *args, "proto_app:app"],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=err_file,
            stdin=subprocess.DEVNULL)
    wait_for(lambda: "ready: " in err.read_text(), timeout=20)
    return proc, port, admin, err


def get(sock, path="/hello"):
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: {UA}\r\n\r\n".encode())
    return read_response(sock)


def metric(admin, name):
    with connect(admin) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        _, _, body = read_response(sock)
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.slow
def test_with_drop_a_stalled_reader_never_stops_serving_and_the_drops_are_counted(tmp_path):
    proc, port, admin, err = start(tmp_path)
    try:
        (worker,) = pids_children(proc.pid)
        with connect(port) as sock:
            t0 = time.monotonic()
            rss = []
            for _ in range(6):
                for _ in range(6000):  # some 6 MB of access lines each round, none read
                    assert get(sock)[0] == 200
                time.sleep(0.6)  # (a tick: what waited is dropped)
                rss.append(rss_kib(worker))
            took = time.monotonic() - t0
        wait_for(lambda: (metric(admin, "berth_log_lines_dropped_total") or 0) > 0, timeout=5)
        dropped = metric(admin, "berth_log_lines_dropped_total")
        print(f"36,000 requests in {took:.1f} s with nobody reading; {dropped:.0f} lines "
              f"dropped; worker RSS after each 6,000: {rss} KiB")
        assert 20000 < dropped <= 36000
        # bounded: rounds 4 to 6 (18 MB more lines) leave the worker's memory near the highest
        # of rounds 1 to 3 (unbounded, it would grow by those 18 MB). The highest, not round 3's:
        # the 4 MiB backlog may have just been dropped and its memory returned when round 3 is
        # read, and refilled when round 6 is; and on a loaded machine the allocator's arenas
        # once grew by 9 MB in one round and then stayed (CI: 31.9, 29.9, 40.9, 40.9 MiB).
        # (the last round, not the highest of 4 to 6: in a full CI run one round spiked by
        # 16 MB and fell back, [33540, 38036, 38444, 54656, 54656, 38812])
        assert rss[-1] - max(rss[:3]) < 12 * 1024, rss
        assert "access log:" in err.read_text() and "lines dropped" in err.read_text()
    finally:
        proc.terminate()  # our own child, by pid
        try:
            proc.communicate(timeout=15)  # (reads the pipe so that it can exit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def test_with_block_the_worker_waits_for_the_reader(tmp_path):
    proc, port, admin, err = start(tmp_path, "--log-overflow", "block")
    try:
        stalled = False
        with connect(port, timeout=3) as sock:
            for _ in range(10000):
                try:
                    assert get(sock)[0] == 200
                except TimeoutError:
                    stalled = True
                    break
        assert stalled, "10,000 requests served with nobody reading the log under block"
        drained = threading.Event()

        def drain():
            while proc.stdout.read(1 << 16):
                drained.set()

        threading.Thread(target=drain, daemon=True).start()
        assert drained.wait(10)
        with connect(port, timeout=10) as sock:  # the reader reads: serving goes on
            assert get(sock)[0] == 200
        assert metric(admin, "berth_log_lines_dropped_total") == 0
    finally:
        proc.terminate()  # our own child, by pid
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

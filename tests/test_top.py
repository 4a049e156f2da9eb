"""`berth top [URL]`: the admin listener's /status, live in a terminal; q or Ctrl-C quits and
gives the terminal back; without a terminal, one snapshot (exit 0) or one line (exit 1).

The view is checked with /status documents made by `berth.admin.render_status` (so a change
of the document shows here); the rest runs real servers with `--admin-bind 127.0.0.1:PORT`
and `berth top` under a real pseudo-terminal. There a small Python process is the session
leader, as a shell would be: it runs `berth top`, then reports its exit code and whether the
terminal's modes are what they were before. Every read and wait is bounded; processes are
ended by PID.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import sys
import termios
import time

import pytest
from conftest import APPS, ROOT, free_port
from proto_helpers import http_get, in_background, pids_children
from test_admin import start
from test_cli import run_berth

from berth.admin import Seen, Totals, View, render_status
from berth.check import Target
from berth.config import ConfigError, parse_config
from berth.scoreboard import BUSY, IDLE, Slot
from berth.top import ENTER, LEAVE, frame, screen, target_of, with_status_path

# -- the view, from documents made by hand -----------------------------------------------------


def status(*workers: Seen, threads: int = 2) -> dict:
    return render_status(View(
        now=100.0, workers=list(workers), serving=True, phase="serving", allowance=30.0,
        threads=threads, listeners=[("http://127.0.0.1:8000", 3), ("unix:/run/b.sock", None)],
        retired=Totals(), config={"workers": len(workers), "threads": threads,
                                  "bind": ["127.0.0.1:8000", "unix:/run/b.sock"]},
        pid=40, uptime=3725.0))


def worker(pid: int, state: int = IDLE, **fields) -> Seen:
    return Seen(pid, 2, 75.0, Slot(pid=pid, state=state, heartbeat=99.6, **fields), False)


def test_the_view_has_a_row_per_worker_with_its_oldest_request():
    doc = status(worker(41, served=12, rss=50 << 20),
                 worker(42, BUSY, served=3, in_flight=2, busy_threads=2, rss=60 << 20,
                        oldest_start=97.5, oldest_line="GET /report?user=alice HTTP/1.1"))
    lines = screen(doc, "http://127.0.0.1:9000/status", "12:00:00")
    text = "\n".join(lines)
    assert lines[0] == "berth top  http://127.0.0.1:9000/status  12:00:00  (q or Ctrl-C: quit)"
    assert "master 40: serving, up 62m" in text
    assert "/livez 200: 2 of 2 workers alive; /readyz 200: 2 workers serving (1 busy)" in text
    assert "listeners: http://127.0.0.1:8000 (3 waiting), unix:/run/b.sock" in text
    assert "bind 127.0.0.1:8000, unix:/run/b.sock" in text
    head = next(i for i, line in enumerate(lines) if line.lstrip().startswith("PID"))
    assert lines[head].split() == ["PID", "GEN", "STATE", "AGE", "SERVED", "IN-FLIGHT", "BUSY",
                                   "RSS", "BEAT", "OLDEST", "REQUEST"]
    assert lines[head + 1].split() == ["41", "2", "idle", "75s", "12", "0", "0", "50M", "0.4s"]
    assert lines[head + 2].split() == ["42", "2", "busy", "75s", "3", "2", "2", "60M", "0.4s",
                                       "2.5s", "GET", "/report", "HTTP/1.1"]  # (no query)
    assert lines[-1] == "2 workers: 15 served, 2 in flight, 2 busy threads, 110M RSS"
    # without a terminal: the same view, without the keys to quit
    assert screen(doc, "u", "12:00:00", live=False)[0] == "berth top  u  12:00:00"


def test_a_request_running_on_the_loop_shows_its_age_without_a_line():
    doc = status(worker(41, BUSY, in_flight=1, oldest_start=99.0), threads=1)
    row = [line for line in screen(doc, "u", "t") if line.lstrip().startswith("41 ")]
    assert row[0].split()[-2:] == ["1.0s", "running"]


def test_no_answer_is_one_line_in_the_view_with_the_last_answer():
    lines = screen(None, "http://h:1/status", "12:00:05",
                   "failed: http://h:1/status: connection refused", "12:00:01")
    assert lines[2:] == ["failed: http://h:1/status: connection refused",
                         "trying again every 1 s; last answer at 12:00:01"]


def test_control_characters_from_the_document_never_reach_the_terminal():
    doc = status(worker(41, BUSY, in_flight=1, oldest_start=99.0,
                        oldest_line="GET /\x1b[2Jx\x9b1m HTTP/1.1"))
    doc["phase"] = "serving\x07"
    text = "\n".join(screen(doc, "u", "t"))
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", text)
    assert "GET /?[2Jx?1m HTTP/1.1" in text


def test_another_document_is_said_not_to_be_berths_status():
    lines = screen({"workers": [{"pid": 1}]}, "u", "t")
    assert lines[-1].startswith("not berth's /status document (KeyError")


def test_a_frame_fits_the_terminal_and_never_scrolls_it():
    lines = [f"line {i} " + "x" * 100 for i in range(30)]
    text = frame(lines, 40, 24)
    assert text.startswith("\x1b[H") and text.count("\r\n") == 23  # 24 rows, no newline after
    rows = text[len("\x1b[H"):].split("\r\n")
    assert all(row.startswith("\x1b[2K") and len(row) - len("\x1b[2K") == 40 for row in rows)
    short = frame(["a", "b"], 40, 24)
    assert short == "\x1b[H\x1b[2Ka\r\n\x1b[2Kb\r\n\x1b[J"  # and the rest erased


def test_the_url_defaults_to_status_on_the_admin_listener():
    assert with_status_path("http://127.0.0.1:9000") == "http://127.0.0.1:9000/status"
    assert with_status_path("http://127.0.0.1:9000/") == "http://127.0.0.1:9000/"
    assert with_status_path("http://unix:/run/a.sock") == "http://unix:/run/a.sock:/status"
    assert with_status_path("http://unix:/run/a.sock:/x") == "http://unix:/run/a.sock:/x"
    cfg = parse_config(["--admin-bind", "0.0.0.0:9000"], environ={}, require_app=False)
    assert target_of(None, cfg) == Target("http://127.0.0.1:9000/status", "http", "127.0.0.1",
                                          9000, "/status", verify=False)
    cfg = parse_config(["--admin-bind", "unix:/run/admin.sock", "--certfile", "c.pem"],
                       environ={}, require_app=False)
    target = target_of(None, cfg)
    assert (target.unix, target.path, target.scheme) == ("/run/admin.sock", "/status", "http")
    with pytest.raises(ConfigError, match="top: no admin listener"):
        target_of(None, parse_config([], environ={}, require_app=False))
    with pytest.raises(ConfigError, match="top: bad URL"):
        target_of("127.0.0.1:9000", cfg)


# -- without a terminal: one snapshot ------------------------------------------------------------


def top(tmp_path, args, timeout: float = 20):
    """`berth top ARGS` with stdout a pipe, in a directory of its own (no config file)."""
    cwd = tmp_path / "top-cwd"
    cwd.mkdir(exist_ok=True)
    return run_berth(["top", *args], timeout=timeout, cwd=str(cwd))


def test_without_a_terminal_it_prints_one_snapshot_and_exits_0(berth, tmp_path):
    srv = start(berth, "-w", "2")
    started = time.monotonic()
    res = top(tmp_path, [f"http://127.0.0.1:{srv.admin}"])
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - started < 10 and not res.stderr
    assert "\x1b" not in res.stdout  # plain text
    pids = {int(line.split()[0]) for line in res.stdout.splitlines()
            if re.match(r"\s*\d+\s+\d+\s+(idle|busy|booting)\b", line)}
    assert pids == set(pids_children(srv.pid))
    # without URL: /status on --admin-bind, as berth check finds its probe
    res = top(tmp_path, ["--admin-bind", f"127.0.0.1:{srv.admin}"])
    assert res.returncode == 0 and f"master {srv.pid}: serving" in res.stdout


def test_an_admin_listener_on_a_unix_socket_is_reached_over_it(berth, tmp_path):
    path = tmp_path / "admin.sock"
    srv = berth(["--admin-bind", f"unix:{path}", "-w", "1", "proto_app:app"])
    res = top(tmp_path, ["--admin-bind", f"unix:{path}"])
    assert res.returncode == 0, res.stderr
    assert f"master {srv.pid}: serving" in res.stdout
    assert f"http://unix:{path}:/status" in res.stdout.splitlines()[0]


def test_without_a_terminal_no_answer_is_one_line_and_exit_1(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/status"
    res = top(tmp_path, [url])
    assert res.returncode == 1 and not res.stdout
    assert res.stderr.splitlines() == [f"failed: {url}: connection refused"]


@pytest.mark.parametrize("args,message", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["127.0.0.1:9000"], "top: bad URL"),
    ([], "top: no admin listener"),
])
def test_a_bad_flag_url_or_configuration_is_one_line_and_exit_2(tmp_path, args, message):
    res = top(tmp_path, args)
    assert res.returncode == 2 and not res.stdout
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("berth: error: ") and message in lines[0]


def test_help_says_what_it_does_without_a_terminal(tmp_path):
    res = top(tmp_path, ["--help"])
    assert res.returncode == 0
    assert "When stdout is not a terminal: one snapshot" in " ".join(res.stdout.split())


# -- in a terminal ---------------------------------------------------------------------------------

# The session leader on the pseudo-terminal. Ctrl-C reaches the whole foreground process group,
# so it keeps a handler of its own (not SIG_IGN, which berth top would inherit).
LEADER = r"""
import fcntl, os, signal, struct, subprocess, sys, termios
signal.signal(signal.SIGINT, lambda *_: None)
fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
before = termios.tcgetattr(0)
proc = subprocess.Popen([sys.executable, "-m", "berth", "top", *sys.argv[1:]])
print(f"[top pid {proc.pid}]", flush=True)
code = proc.wait()
same = termios.tcgetattr(0) == before
print(f"\r\n[top exited {code}; terminal {'restored' if same else 'changed'}]", flush=True)
"""
ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
OUTPUT_LIMIT = 16 << 20


class Terminal:
    """`berth top ARGS` under a real pseudo-terminal; `screen()` is what it wrote, without
    its escape sequences."""

    def __init__(self, args: list[str], cwd):
        env = dict(os.environ)
        env.update({"BERTH_IN_CONTAINER": "0", "PYTHONPATH": f"{APPS}{os.pathsep}{ROOT}",
                    "TERM": "xterm"})
        pid, fd = pty.fork()
        if pid == 0:  # the child: the session leader, the pty its controlling terminal
            try:
                os.chdir(cwd)
                os.execve(sys.executable, [sys.executable, "-c", LEADER, *args], env)
            finally:
                os._exit(127)
        self.leader, self.fd, self.raw, self.top, self.top_exited = pid, fd, b"", 0, False
        self.read_until(lambda: b"[top pid " in self.raw, timeout=10)
        found = re.search(rb"\[top pid (\d+)\]", self.raw)
        assert found, self.raw
        self.top = int(found.group(1))

    def screen(self) -> str:
        return ESCAPES.sub(b"", self.raw).replace(b"\r", b"").decode("utf-8", "replace")

    def read_until(self, done, timeout: float) -> bool:
        """Read what the terminal shows until done() or `timeout` seconds; done()."""
        deadline = time.monotonic() + timeout
        while not done() and len(self.raw) < OUTPUT_LIMIT:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([self.fd], [], [], min(left, 0.1))
            if ready:
                try:
                    data = os.read(self.fd, 65536)
                except OSError:  # EIO: every process on the terminal's side has closed it
                    data = b""
                if not data:
                    break
                self.raw += data
        return bool(done())

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def exit_line(self, timeout: float) -> str | None:
        """The leader's report once berth top has exited, within `timeout` seconds."""
        pattern = re.compile(r"\[top exited (-?\d+); terminal (\w+)\]")
        self.read_until(lambda: pattern.search(self.screen()), timeout)
        found = pattern.search(self.screen())
        self.top_exited = bool(found)  # (then its pid is no longer berth top's to end)
        return found.group(0) if found else None

    def close(self) -> None:
        """End berth top (unless the leader saw it exit), then the leader (our child: its
        pid is ours until it is reaped here)."""
        for pid in ([] if self.top_exited or not self.top else [self.top]) + [self.leader]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(self.leader, 0)
        except ChildProcessError:
            pass
        os.close(self.fd)


@pytest.fixture
def terminal(tmp_path):
    """Factory: `term = terminal(["top", "args"])`; each is ended by PID at teardown."""
    opened: list[Terminal] = []
    cwd = tmp_path / "top-cwd"
    cwd.mkdir(exist_ok=True)

    def open_(args: list[str]) -> Terminal:
        term = Terminal(args, cwd)
        opened.append(term)
        return term

    yield open_
    for term in opened:
        term.close()


def shows_pids(term: Terminal, pids) -> bool:
    text = term.screen()
    return bool(pids) and all(re.search(rf"^\s*{pid}\s", text, re.M) for pid in pids)


def left_cleanly(term: Terminal) -> bool:
    """The alternate screen was left, and the cursor shown again, after the last frame."""
    raw = term.raw
    return (raw.rfind(LEAVE.encode()) > raw.rfind(ENTER.encode()) >= 0
            and raw.rfind(LEAVE.encode()) > raw.rfind(b"\x1b[H"))


def test_in_a_terminal_it_lists_the_live_workers_and_q_quits_restoring_it(berth, terminal):
    srv = start(berth, "-w", "2")
    term = terminal([f"http://127.0.0.1:{srv.admin}"])
    pids = pids_children(srv.pid)
    assert term.read_until(lambda: shows_pids(term, pids), timeout=5), term.screen()
    assert f"master {srv.pid}: serving" in term.screen()
    assert "(q or Ctrl-C: quit)" in term.screen()
    frames = term.raw.count(b"\x1b[H")
    assert term.read_until(lambda: term.raw.count(b"\x1b[H") > frames, timeout=3), \
        "not redrawn within a second or so"
    started = time.monotonic()
    term.type(b"q")
    assert term.exit_line(timeout=3) == "[top exited 0; terminal restored]", term.screen()
    assert time.monotonic() - started < 3
    assert left_cleanly(term)


def test_ctrl_c_quits_cleanly(berth, terminal):
    srv = start(berth, "-w", "1")
    term = terminal([f"http://127.0.0.1:{srv.admin}"])
    assert term.read_until(lambda: shows_pids(term, pids_children(srv.pid)), timeout=5)
    term.type(b"\x03")  # the terminal makes it SIGINT for the foreground process group
    assert term.exit_line(timeout=3) == "[top exited 0; terminal restored]", term.screen()
    assert "Traceback" not in term.screen() and left_cleanly(term)


def test_sigterm_restores_the_terminal_too(berth, terminal):
    srv = start(berth, "-w", "1")
    term = terminal([f"http://127.0.0.1:{srv.admin}"])
    assert term.read_until(lambda: shows_pids(term, pids_children(srv.pid)), timeout=5)
    os.kill(term.top, signal.SIGTERM)
    assert term.exit_line(timeout=3) == f"[top exited {128 + signal.SIGTERM}; terminal " \
                                        f"restored]", term.screen()
    assert left_cleanly(term)


def test_a_stuck_request_shows_its_line_in_the_view(berth, terminal):
    srv = start(berth, "-w", "2", "--threads", "2")
    term = terminal([f"http://127.0.0.1:{srv.admin}/status"])
    assert term.read_until(lambda: shows_pids(term, pids_children(srv.pid)), timeout=5)
    assert "GET /sleep" not in term.screen()
    t, _ = in_background(lambda: http_get(srv.port, "/sleep?s=3&token=hunter2", timeout=10))
    stuck = re.compile(r"^\s*\d+\s+1\s+busy\s.*\s\d\.\ds\s+GET /sleep HTTP/1\.1$", re.M)
    assert term.read_until(lambda: stuck.search(term.screen()), timeout=2.5), term.screen()
    assert "hunter2" not in term.screen()
    term.type(b"q")
    assert term.exit_line(timeout=3) == "[top exited 0; terminal restored]"
    t.join(timeout=10)


def test_no_answer_shows_in_the_view_until_berth_answers(berth, terminal):
    """A restarting server: berth top waits for it, saying why, and shows it once up."""
    admin = free_port()
    url = f"http://127.0.0.1:{admin}/status"
    term = terminal([url])
    refused = f"failed: {url}: connection refused"
    assert term.read_until(lambda: refused in term.screen(), timeout=5), term.screen()
    assert term.read_until(lambda: term.screen().count(refused) >= 2, timeout=3), \
        "not tried again within a second or so"
    srv = berth(["--admin-bind", f"127.0.0.1:{admin}", "-w", "1", "proto_app:app"])
    assert term.read_until(lambda: shows_pids(term, pids_children(srv.pid)), timeout=5), \
        term.screen()
    term.type(b"q")
    assert term.exit_line(timeout=3) == "[top exited 0; terminal restored]"


def test_ctrl_z_gives_the_terminal_back_and_takes_it_again(berth, terminal):
    """SIGTSTP: the shell's screen and modes come back before berth top stops. (Here the
    process group has no shell to stop it for, so the kernel does not stop it; it takes the
    terminal again at once, as after `fg`.)"""
    srv = start(berth, "-w", "1")
    term = terminal([f"http://127.0.0.1:{srv.admin}"])
    assert term.read_until(lambda: shows_pids(term, pids_children(srv.pid)), timeout=5)
    assert not termios.tcgetattr(term.fd)[3] & termios.ECHO  # (cbreak: keys not echoed)
    leaves, enters = term.raw.count(LEAVE.encode()), term.raw.count(ENTER.encode())
    os.kill(term.top, signal.SIGTSTP)
    assert term.read_until(lambda: term.raw.count(LEAVE.encode()) > leaves
                           and term.raw.count(ENTER.encode()) > enters, timeout=3)
    assert term.raw.rfind(ENTER.encode()) > term.raw.rfind(LEAVE.encode())
    frames = term.raw.count(b"\x1b[H")
    assert term.read_until(lambda: term.raw.count(b"\x1b[H") > frames, timeout=3)
    assert not termios.tcgetattr(term.fd)[3] & termios.ECHO  # cbreak again
    term.type(b"q")
    assert term.exit_line(timeout=3) == "[top exited 0; terminal restored]"

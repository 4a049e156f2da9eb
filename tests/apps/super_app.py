"""WSGI test app for berth's supervision tests (timeouts, recycling, signals, PID 1).

Routes (query parameters in brackets):
  /                  "pid=<worker pid>\\n" (small, no filesystem access); header X-Pid
  /pid               JSON {"pid": worker pid}
  /sleep [s]         sleeps s seconds (default 1, at most 30), then answers "slept <s>"
  /deadline          calls sleepy_function_for_deadline(): sleeps 5 s (past a --timeout of 1)
  /spin [s]          calls spin_the_loop(): a busy loop of s seconds (default 30, at most 30)
  /hog [mb]          keeps mb MiB (default 100, at most 512) alive in this worker, touched
  /double-fork       forks a child that forks a grandchild and exits at once; waits for the
                     child; the grandchild reports its new parent pid, sleeps 0.5 s, exits.
                     JSON {"child", "grandchild", "grandchild_ppid", "child_status"}
  /subprocess        subprocess.run(["true"]) -> JSON {"returncode"}
  /stat              os.stat() of this module's directory: one file syscall on purpose (the
                     positive control of the no-filesystem test)

Environment, read at import (so a test can shape the boot):
  SUPER_APP_IMPORT_SLEEP=S   sleep S seconds while the module is imported (booting)
  SUPER_APP_EXIT_AT_IMPORT=N os._exit(N) while the module is imported (a worker dying at boot)
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from urllib.parse import parse_qs

if os.environ.get("SUPER_APP_EXIT_AT_IMPORT"):
    os._exit(int(os.environ["SUPER_APP_EXIT_AT_IMPORT"]))

if os.environ.get("SUPER_APP_IMPORT_SLEEP"):
    time.sleep(float(os.environ["SUPER_APP_IMPORT_SLEEP"]))

_hog: list[bytearray] = []


def _qs(environ) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", ""),
                                         keep_blank_values=True).items()}


def sleepy_function_for_deadline() -> None:
    time.sleep(5)


def spin_the_loop(seconds: float) -> int:
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def _double_fork() -> dict:
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # the child: fork the grandchild, exit at once
        try:
            os.close(r)
            me = os.getpid()
            if os.fork() == 0:  # the grandchild
                try:
                    deadline = time.monotonic() + 5
                    while os.getppid() == me and time.monotonic() < deadline:
                        time.sleep(0.005)
                    os.write(w, json.dumps({"grandchild": os.getpid(),
                                            "grandchild_ppid": os.getppid()}).encode())
                    os.close(w)
                    time.sleep(0.5)
                finally:
                    os._exit(0)
        finally:
            os._exit(0)
    os.close(w)
    _, status = os.waitpid(child, 0)
    data = b""
    deadline = time.monotonic() + 5
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            part = os.read(r, 4096)
            if not part:
                break
            data += part
    finally:
        os.close(r)
    out = json.loads(data) if data else {"grandchild": None, "grandchild_ppid": None}
    out.update(child=child, child_status=os.waitstatus_to_exitcode(status))
    return out


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    q = _qs(environ)
    status = "200 OK"
    ctype = "text/plain"
    if path == "/":
        body = b"pid=%d\n" % os.getpid()
    elif path == "/pid":
        body = json.dumps({"pid": os.getpid()}).encode()
        ctype = "application/json"
    elif path == "/sleep":
        s = min(float(q.get("s", "1")), 30.0)
        time.sleep(s)
        body = f"slept {s}".encode()
    elif path == "/deadline":
        sleepy_function_for_deadline()
        body = b"woke up\n"
    elif path == "/spin":
        n = spin_the_loop(min(float(q.get("s", "30")), 30.0))
        body = f"spun {n}\n".encode()
    elif path == "/hog":
        mb = min(int(q.get("mb", "100")), 512)
        block = bytearray(mb << 20)
        for i in range(0, len(block), 4096):  # touch every page: it counts in RSS
            block[i] = 1
        _hog.append(block)
        body = f"holding {sum(len(b) for b in _hog) >> 20} MiB\n".encode()
    elif path == "/double-fork":
        body = json.dumps(_double_fork()).encode()
        ctype = "application/json"
    elif path == "/subprocess":
        rc = subprocess.run(["true"], check=False).returncode
        body = json.dumps({"returncode": rc}).encode()
        ctype = "application/json"
    elif path == "/stat":
        body = b"%d\n" % os.stat(os.path.dirname(os.path.abspath(__file__))).st_mtime_ns
    else:
        status = "404 Not Found"
        body = b"not found\n"
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body))),
                            ("X-Pid", str(os.getpid()))])
    return [body]

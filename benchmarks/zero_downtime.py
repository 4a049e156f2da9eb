"""Zero downtime behind HAProxy, berth against Gunicorn: the scenario of
tests/test_zero_downtime.py (a rolling restart of two instances, SIGHUP to both, a worker
killed with SIGKILL, under continuous load of fast and 200 ms requests), run once per server.

    python benchmarks/zero_downtime.py

berth runs as deploy/haproxy.cfg says: --shutdown-delay 3, HAProxy's checks on the admin
/readyz. Gunicorn (gthread, 2 workers x 4 threads, its defaults otherwise: it has no shutdown
delay and no admin listener) is checked on its app port with GET /, the same HAProxy settings
otherwise. Prints the requests served and the failures the clients saw, before and after the
SIGKILL (after it, the killed worker's requests in flight may fail for either server).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT / "tests")]

from conftest import APPS  # noqa: E402
from test_zero_downtime import CONFIG, HAPROXY, run_scenario, start_berth  # noqa: E402


class GunicornInstance:
    """What run_scenario needs of an instance, for Gunicorn."""

    def __init__(self, tmp: Path, port: int):
        self.err_path = tmp / "stderr.log"
        self._err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-w", "2", "-k", "gthread", "--threads", "4",
             "-b", f"127.0.0.1:{port}", "--chdir", str(APPS), "super_app:app"],
            stdout=subprocess.DEVNULL, stderr=self._err, stdin=subprocess.DEVNULL,
            cwd=str(tmp))
        self.pid = self.proc.pid
        deadline = time.monotonic() + 20
        while self.stderr().count("Booting worker") < 2:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn did not start:\n{self.stderr()}")
            time.sleep(0.05)

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout=timeout)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {text!r} from gunicorn:\n{self.stderr()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # our own child, by pid
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()


def start_gunicorn(tmp: Path, port: int, check_port: int) -> GunicornInstance:
    return GunicornInstance(tmp, port)


start_gunicorn.check_ports = lambda ports: (ports["a"], ports["b"])  # the app port itself


def main() -> int:
    if HAPROXY is None or shutil.which(sys.executable) is None:
        print("HAProxy is not installed (apt-get install haproxy)")
        return 2
    results = {}
    with tempfile.TemporaryDirectory(prefix="berth-zero-downtime-") as tmp:
        tmp = Path(tmp)
        gunicorn_cfg = tmp / "haproxy-gunicorn.cfg"  # the same, checked on the app with GET /
        gunicorn_cfg.write_text(re.sub(r"option httpchk GET /readyz", "option httpchk GET /",
                                       CONFIG.read_text()))
        for name, start, reload_log, config in (
                ("berth", start_berth, "starting 2 workers of generation 2", CONFIG),
                ("gunicorn", start_gunicorn, "Hang up: Master", gunicorn_cfg)):
            (tmp / name).mkdir()
            results[name] = run_scenario(tmp / name, start, reload_log, HAPROXY, config)
    print(f"{'server':<10} {'served':>7} {'failed before the SIGKILL':>27} "
          f"{'failed after it':>16}")
    for name, r in results.items():
        print(f"{name:<10} {r['served']:>7} {len(r['before_kill']):>27} "
              f"{len(r['after_kill']):>16}")
        for _, what in (r["before_kill"] + r["after_kill"])[:5]:
            print(f"    {name}: {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

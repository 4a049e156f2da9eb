"""/status in a real headless browser: Chromium from the distribution's packages (`.ci/run`
installs it; without it these tests skip and say so).

Chromium loads the admin listener's page with its own Accept header, and `--dump-dom` prints
the document it built once the page had loaded: what Blink parsed, not the bytes berth sent.
That DOM is read with test_admin's html.parser (`table_of`), so a page the browser would
show differently from the one the unit test parses (or JSON where HTML was meant) fails here.

The browser runs with a fresh profile, HOME and caches in the test's tmp_path, without the
connections a fresh profile makes (refused on a closed network, slow elsewhere), and in its own
session so that a hang ends with its whole process group killed by id after BROWSER_BOUND s.

The refresh itself is not followed here: with --virtual-time-budget Chromium honours the 1 s
refresh on virtual time, reloading 13 to 15 times a second without end, and never dumps the
DOM. That the refresh is in the document it built is what is checked.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from proto_helpers import http_get, in_background, pids_children, wait_for
from test_admin import start, status_of, table_of

CHROMIUM = shutil.which("chromium")  # Debian's package: /usr/bin/chromium
BROWSER_BOUND = 30.0  # seconds; a load takes about 1 s on an idle 2-core machine

# --no-sandbox: the tests run as root in CI, where Chromium refuses its sandbox. The --disable-*
# flags stop the connections a fresh profile makes at start (updates, sync, field trials).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; .ci/run "
                             "installs it)")


def said(stderr: bytes) -> str:
    """The end of Chromium's stderr without its complaints that there is no D-Bus (every run
    here has a dozen)."""
    lines = stderr.decode(errors="replace").splitlines()
    return "\n".join(ln for ln in lines if "dbus" not in ln)[-2000:]


def rendered(url: str, home: Path) -> str:
    """The DOM Chromium built from `url`. Skips if the browser cannot run here at all (exit
    status other than 0, nothing printed); fails if it is still running after BROWSER_BOUND."""
    home.mkdir()
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / "config"),
               XDG_CACHE_HOME=str(home / "cache"))
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={home / 'profile'}",
                             "--dump-dom", url], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=BROWSER_BOUND)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the browser and its renderer, zygote, utilities
        out, err = proc.communicate()
        pytest.fail(f"Chromium still running after {BROWSER_BOUND:g} s:\n{said(err)}")
    tail = said(err)
    if proc.returncode != 0 and not out:
        pytest.skip(f"Chromium cannot run here (exit {proc.returncode}): {tail[-300:]}")
    dom = out.decode()
    assert 'id="workers"' in dom, f"no workers table in what Chromium rendered:\n{dom[:2000]}" \
                                  f"\nChromium's stderr:\n{tail}"
    return dom


def test_chromium_renders_the_status_table_with_the_live_worker_pids(berth, tmp_path):
    srv = start(berth, "-w", "2", "--threads", "2")
    page = table_of(rendered(f"http://127.0.0.1:{srv.admin}/status", tmp_path / "browser"))
    rows = [r for r in page.rows if r]
    assert {int(r[0]) for r in rows} == set(pids_children(srv.pid))
    assert page.refresh == "1"  # the meta refresh is in the document Blink built


def test_chromium_shows_the_request_a_worker_is_stuck_in(berth, tmp_path):
    # Stuck for much longer than the browser may take; --graceful-timeout 1 ends it at stop.
    srv = start(berth, "-w", "2", "--threads", "2", "--graceful-timeout", "1")
    t, _ = in_background(lambda: http_get(srv.port, "/sleep?s=60&token=hunter2", timeout=70))
    assert wait_for(lambda: any(w["oldest_request"] for w in status_of(srv)["workers"]),
                    timeout=2.5, interval=0.1), "the stuck request never showed in /status"
    dom = rendered(f"http://127.0.0.1:{srv.admin}/status", tmp_path / "browser")
    rows = [r for r in table_of(dom).rows if r]
    stuck = [r for r in rows if r[2] == "busy"]
    assert len(stuck) == 1, rows
    assert int(stuck[0][0]) in pids_children(srv.pid)
    assert stuck[0][7] == "GET /sleep HTTP/1.1" and stuck[0][8].endswith(" s")
    assert "hunter2" not in dom
    srv.stop()
    t.join(timeout=5)

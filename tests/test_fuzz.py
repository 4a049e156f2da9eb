"""fuzz/fuzz_parser.py: the request parser fuzzed for a while must show no crash or hang, and
the fuzzer must catch a parser that crashes or hangs (each run is a subprocess, bounded)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT

pytest.importorskip("hypothesis")

FUZZER = ROOT / "fuzz" / "fuzz_parser.py"


def fuzz(args: list[str], prelude: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the fuzzer (its main(), after `prelude`) in a fresh interpreter."""
    code = textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(FUZZER.parent)!r})
        import fuzz_parser
        from berth.http.parser import RequestParser
        {textwrap.indent(textwrap.dedent(prelude), "        ").strip()}
        sys.exit(fuzz_parser.main({args!r}))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=str(ROOT))


@pytest.mark.slow
def test_eight_seconds_of_fuzzing_find_no_crash_hang_or_split_dependence():
    proc = subprocess.run([sys.executable, str(FUZZER), "--seconds", "8"], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "ok: " in proc.stdout


@pytest.mark.parametrize(("broken", "args"), [
    ("raise ValueError('planted')", ["--seconds", "20", "--no-shrink"]),
    ("while True: pass", ["--seconds", "20", "--hang-after", "0.3", "--no-shrink"]),
], ids=["crash", "hang"])
def test_the_fuzzer_reports_a_parser_that_crashes_or_hangs(broken, args):
    prelude = f"""
        class Broken(RequestParser):
            def on_url(self, url):  # most examples have a target
                if url:
                    {broken}
                super().on_url(url)
        fuzz_parser.RequestParser = Broken
    """
    proc = fuzz(args, prelude)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "FAILED after" in proc.stdout
    assert ("planted" if "raise" in broken else "Hang") in proc.stdout + proc.stderr

"""Unit tests for syscalls.py's parsers (no server, no tracer).

Run with `python -m pytest benchmarks/test_syscalls.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import syscalls  # benchmarks/ is on sys.path: pytest prepends the test file's directory

# strace 6.1 `-c` output: usecs/call and errors cells may be blank
STRACE = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 96.35    2.432595         148     16338      2059 futex
  2.19    0.055374          62       885           sendto
  1.28    0.032394          36       888           recvfrom
  0.03    0.000742          14        52         1 accept4
------ ----------- ----------- --------- --------- ----------------
100.00    2.524643         136     18163      2060 total
"""

PERF = """\
# started on Mon Dec  1 10:45:00 2026

9254,,raw_syscalls:sys_enter,3012345678,100.00,,
0,,syscalls:sys_enter_futex,3012345678,100.00,,
4400,,syscalls:sys_enter_recvfrom,3012345678,100.00,,
"""


def test_parse_strace_summary() -> None:
    counts = syscalls.parse_strace_summary("strace: Process 1 attached\n" + STRACE)
    assert counts == {
        "futex": 16338,
        "sendto": 885,
        "recvfrom": 888,
        "accept4": 52,
        "total": 18163,
    }


def test_parse_strace_summary_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        syscalls.parse_strace_summary(
            "strace: attach: ptrace(PTRACE_SEIZE, 1): Operation not permitted"
        )


def test_parse_perf_stat() -> None:
    assert syscalls.parse_perf_stat(PERF) == {"total": 9254, "futex": 0, "recvfrom": 4400}
    with pytest.raises(ValueError):
        syscalls.parse_perf_stat("<not counted>,,syscalls:sys_enter_futex,0,0.00,,\n")
    with pytest.raises(ValueError):
        syscalls.parse_perf_stat("")


def test_tracer_commands_attach_to_the_worker_only(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert syscalls.tracer_command("strace", 42, out) == [
        "strace",
        "-c",
        "-f",
        "-p",
        "42",
        "-o",
        str(out),
    ]
    perf = syscalls.tracer_command("perf", 42, out)
    assert perf[:2] == ["perf", "stat"] and perf[-2:] == ["-p", "42"]
    assert "syscalls:sys_enter_futex" in perf[perf.index("-e") + 1].split(",")


def test_per_request() -> None:
    r = syscalls.SyscallResult("perf", 4, 100, 3.0, 3.1, 33.3, 0, {"total": 350, "futex": 117})
    assert r.per_request("futex") == pytest.approx(1.17)
    assert r.per_request("sendto") is None

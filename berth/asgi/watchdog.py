"""Who blocks the event loop: the loop's own heartbeat, and a thread that watches it.

A blocking call inside an `async def` (a sync database driver, `time.sleep`, a CPU-heavy loop)
freezes every connection of the worker, silently. Here the loop stores the time every PING
seconds (a callback); the watchdog thread wakes as often and, when that time is older than
`--loop-block-warn`, samples the loop thread's Python stack (`sys._current_frames`). When the
loop runs again (or after REPORT_AFTER seconds of one block, so that a block the master ends
at --timeout is still told), the worker logs a warning with the duration and that stack: its
first line names the innermost frame of the app, the code that blocks, not the loop's. Each
block counts once in `blocked` (berth_loop_blocked_total).

`busy_ratio()` is the loop thread's CPU time over the wall time since its last call: the share
of the time the loop spends running callbacks (berth_loop_busy_ratio), the ASGI worker's
utilisation (an event loop has no busy app threads to count). A callback that blocks without
using the CPU (a sleep, a sync socket) shows in the watchdog's warnings, not in this share.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback

PING = 0.05  # seconds between the loop's beats (and the watchdog's looks)
REPORT_AFTER = 2.0  # a block still going on after this long is logged without waiting more
# Frames of these files are the server's, not the code that blocks the loop
_SERVER_PARTS = (os.sep + "asyncio" + os.sep, os.sep + "uvloop" + os.sep,
                 os.sep + "berth" + os.sep, os.sep + "concurrent" + os.sep)


def blocking_frame(stack: list[traceback.FrameSummary]) -> traceback.FrameSummary | None:
    """The innermost frame that is not the server's or the event loop's."""
    for summary in reversed(stack):
        if not any(part in summary.filename for part in _SERVER_PARTS):
            return summary
    return None


class LoopWatch:
    def __init__(self, loop, warn: float, log):
        self.loop = loop
        self.warn = warn
        self.log = log
        self.beat = time.monotonic()
        self.blocked = 0
        self.thread_id = threading.get_ident()  # the loop runs on the thread that makes this
        try:
            self._clock = time.pthread_getcpuclockid(self.thread_id)
        except (AttributeError, OSError):
            self._clock = None
        self._last = (time.monotonic(), self._cpu())
        self._stop = threading.Event()

    def start(self) -> None:
        self.loop.call_soon(self._ping)
        if self.warn > 0:
            threading.Thread(target=self._watch, name="berth-loop-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _ping(self) -> None:
        self.beat = time.monotonic()
        self.loop.call_later(PING, self._ping)

    def _cpu(self) -> float:
        return time.clock_gettime(self._clock) if self._clock is not None else 0.0

    def busy_ratio(self) -> float:
        """The loop thread's CPU share since the last call (0 to 1)."""
        now, cpu = time.monotonic(), self._cpu()
        then, cpu_then = self._last
        self._last = (now, cpu)
        wall = now - then
        return min(1.0, max(0.0, (cpu - cpu_then) / wall)) if wall > 0 else 0.0

    def _watch(self) -> None:
        block_beat = None  # the beat the current block started after
        stack: list[traceback.FrameSummary] = []
        reported = False
        while not self._stop.wait(PING):
            beat = self.beat
            now = time.monotonic()
            late = now - beat - PING  # how long the loop has not run its beat past its time
            if block_beat is not None and beat != block_beat:  # the block is over
                if not reported:
                    self._report(beat - block_beat - PING, stack, over=True)
                block_beat = None
                continue
            if late < self.warn:
                continue
            if block_beat is None:  # a new block: take the stack while it is on it
                block_beat = beat
                reported = False
                self.blocked += 1
                frame = sys._current_frames().get(self.thread_id)
                stack = traceback.extract_stack(frame) if frame is not None else []
                del frame
            elif not reported and late >= REPORT_AFTER:
                self._report(late, stack, over=False)
                reported = True

    def _report(self, seconds: float, stack: list, over: bool) -> None:
        culprit = blocking_frame(stack)
        where = (f"{culprit.name} ({culprit.filename}:{culprit.lineno})" if culprit is not None
                 else "(no frame outside the server)")
        self.log.warning("worker %d: the event loop was blocked %s %.0f ms by %s "
                         "(--loop-block-warn %g s); its stack:\n%s", os.getpid(),
                         "for" if over else "for at least", seconds * 1000, where, self.warn,
                         "".join(traceback.format_list(stack)).rstrip())

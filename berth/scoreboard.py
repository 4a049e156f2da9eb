"""The scoreboard: one fixed-size slot per worker in anonymous shared memory.

The master maps it before forking, so every worker shares it without a file. A worker writes
only its own slot, from its loop thread, twice a second (a heartbeat is a memory store, no
syscall); the master reads every slot to see who is alive, busy, booting or wants replacing.
Nothing here touches the filesystem.

There are MAX_SLOTS slots: enough for the most workers berth runs (MAX_WORKERS) plus as many
replacements starting during a reload or while workers are recycled.

A worker whose loop thread runs the app itself (`--threads 1`) cannot write its slot until the
app returns, so the slot would say "idle" through a request of any length. Such a worker keeps
one more word per slot, outside the slot and its seqlock: when its loop starts the app it
stores the time (an aligned 8-byte store, about 50 ns a request, measured), and 0 when the app
returns. `read()` folds it in: the worker is busy, with one more request in flight and one more
busy thread. What that request is (its line) is not stored: a line costs about 300 ns more per
request, 3% of a hello-world request on the loop thread.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass

from berth.sizing import MAX_WORKERS  # the cap on --workers, declared once (sizing is pure)

MAX_SLOTS = 2 * MAX_WORKERS

# states
# booting: importing the app (not held to --timeout); idle, busy: serving; retiring:
# --max-requests reached, no new connections (the master starts its replacement, then stops
# it); out of service: a request overran its deadline (replaced at once, finishes the rest);
# draining: told to stop (SIGTERM), finishing what is in flight.
FREE, BOOTING, IDLE, BUSY, DRAINING, RETIRING, OUT_OF_SERVICE = range(7)
STATE_NAMES = ("free", "booting", "idle", "busy", "draining", "retiring", "out of service")

LINE_SIZE = 96  # bytes kept of the oldest in-flight request's first line

# pid, generation, state, busy threads, heartbeat, served, in flight, oldest start,
# oldest line, rss, counters: responses 2xx 3xx 4xx 5xx, bytes sent, requests over deadline,
# access-log lines dropped
_SLOT = struct.Struct(f"=iIBHdQId{LINE_SIZE}sQQQQQQQQQ")
_SEQ = struct.Struct("=I")  # a seqlock word before each slot (see Scoreboard.write)
SLOT_SIZE = (_SEQ.size + _SLOT.size + 63) // 64 * 64  # cache-line aligned: no shared lines


@dataclass
class Slot:
    pid: int = 0
    generation: int = 0
    state: int = FREE
    busy_threads: int = 0
    heartbeat: float = 0.0  # time.monotonic() of the loop's last beat
    served: int = 0
    in_flight: int = 0
    oldest_start: float = 0.0
    oldest_line: str = ""
    rss: int = 0  # bytes
    uss: int = 0  # bytes private to this worker (measured once, when it is ready)
    status_2xx: int = 0
    status_3xx: int = 0
    status_4xx: int = 0
    status_5xx: int = 0
    bytes_sent: int = 0
    over_deadline: int = 0
    log_dropped: int = 0  # access-log lines dropped (--log-overflow drop, a reader too slow)
    app_since: float = 0.0  # --threads 1: the loop thread runs the app since then (0: it does not)

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state] if self.state < len(STATE_NAMES) else "?"


class Scoreboard:
    def __init__(self, slots: int = MAX_SLOTS):
        self.slots = slots
        # anonymous and shared across fork; after the slots, one cache line the master writes,
        # then each slot's app word (8-byte aligned)
        self.mem = mmap.mmap(-1, slots * SLOT_SIZE + 64 + slots * 8)
        self._flag = slots * SLOT_SIZE
        words = slots * SLOT_SIZE + 64
        self._app_words = memoryview(self.mem)[words:words + slots * 8].cast("d")

    def set_shutting_down(self) -> None:
        """The master got SIGTERM: readiness probes answer 503 from now on."""
        self.mem[self._flag] = 1

    @property
    def shutting_down(self) -> bool:
        return self.mem[self._flag] == 1

    def app_word(self, index: int) -> memoryview:
        """Slot `index`'s app word, for the worker's loop thread: `word[0] = time.monotonic()`
        when it starts running the app, `word[0] = 0.0` when the app returns."""
        return self._app_words[index:index + 1]

    def write(self, index: int, slot: Slot) -> None:
        """Seqlock write: the sequence word is odd while the slot changes, so a reader never
        takes a half-written slot (pack_into zeroes the record before it fills it in)."""
        line = slot.oldest_line.encode("latin-1", "replace")[:LINE_SIZE]
        data = _SLOT.pack(slot.pid, slot.generation, slot.state, slot.busy_threads,
                          slot.heartbeat, slot.served, slot.in_flight, slot.oldest_start, line,
                          slot.rss, slot.uss, slot.status_2xx, slot.status_3xx,
                          slot.status_4xx, slot.status_5xx, slot.bytes_sent, slot.over_deadline,
                          slot.log_dropped)
        base = index * SLOT_SIZE
        mem = self.mem
        seq = _SEQ.unpack_from(mem, base)[0]
        _SEQ.pack_into(mem, base, (seq + 1) & 0xFFFFFFFF)
        mem[base + _SEQ.size:base + _SEQ.size + _SLOT.size] = data
        _SEQ.pack_into(mem, base, (seq + 2) & 0xFFFFFFFF)

    def read(self, index: int) -> Slot:
        base = index * SLOT_SIZE
        mem = self.mem
        for _ in range(1000):
            before = _SEQ.unpack_from(mem, base)[0]
            if before & 1:
                continue
            fields = _SLOT.unpack_from(mem, base + _SEQ.size)
            if _SEQ.unpack_from(mem, base)[0] == before:
                break
        (pid, generation, state, busy, heartbeat, served, in_flight, oldest_start, line,
         rss, uss, s2, s3, s4, s5, sent, over, dropped) = fields
        slot = Slot(pid, generation, state, busy, heartbeat, served, in_flight, oldest_start,
                    line.rstrip(b"\0").decode("latin-1"), rss, uss, s2, s3, s4, s5, sent, over,
                    dropped)
        since = self._app_words[index]
        if since:  # the loop thread is in the app: its slot was written before that
            slot.app_since = since
            if state == IDLE:
                slot.state = BUSY
            slot.in_flight += 1
            slot.busy_threads += 1
            if not oldest_start or since < oldest_start:
                slot.oldest_start, slot.oldest_line = since, ""  # (its line is not stored)
        return slot

    def free_index(self, taken: set[int]) -> int:
        for index in range(self.slots):
            if index not in taken:
                return index
        raise RuntimeError(f"no free scoreboard slot (the cap is {self.slots})")

    def clear(self, index: int) -> None:
        self.write(index, Slot())
        self._app_words[index] = 0.0  # (a worker killed inside the app leaves it set)

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
import time
import zlib
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
NO_CONNS = 1 << 62  # a connections word: this slot's worker takes no connections now

# What the request counters are broken down by (berth_requests_total{method,status_class},
# berth_request_duration_seconds). A method outside METHODS counts as OTHER, and so does a
# request the parser rejected (it has no method to trust).
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "OTHER")
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
# Upper bounds of the duration histogram's buckets, in seconds (and +Inf after them): from
# half a millisecond, where a quick view answers, to the 30 s of a long request.
DURATION_BOUNDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0, 10.0, 30.0)
N_REQUESTS = len(METHODS) * len(STATUS_CLASSES)  # responses by method and status class
N_BUCKETS = len(DURATION_BOUNDS) + 1

# pid, generation, state, busy threads, heartbeat, served, in flight, oldest start,
# oldest line, rss, uss, bytes sent, requests over deadline, access-log lines dropped,
# queue depth, requests queued, seconds queued, duration sum, event-loop blocks, event-loop
# busy share, open WebSockets, the app's SystemExit, the loop thread's switches to the app
# threads (a slow call, an app that waits), then the responses by method and status class,
# then the duration buckets (each bucket's own count, not cumulative)
_SLOT = struct.Struct(f"=iIBHdQId{LINE_SIZE}sQQQQQIQddQdIBQQ{N_REQUESTS}Q{N_BUCKETS}Q")
_FIXED = 24  # fields before the responses
_SEQ = struct.Struct("=I")  # a seqlock word before each slot (see Scoreboard.write)
_SUM = struct.Struct("=I")  # then the record's CRC-32, then the record
_DATA = _SEQ.size + _SUM.size  # where the record starts in its slot
SPINS = 1000  # reads of a slot being written before the reader sleeps between reads
WRITER_GONE = 0.2  # seconds a slot may stay mid-write before its writer is taken for dead
SLOT_SIZE = (_DATA + _SLOT.size + 63) // 64 * 64  # cache-line aligned: no shared lines


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
    bytes_sent: int = 0
    over_deadline: int = 0
    log_dropped: int = 0  # access-log lines dropped (--log-overflow drop, a reader too slow)
    queue_depth: int = 0  # requests waiting for an app thread now
    queued: int = 0  # requests that went through the app threads' queue
    queued_seconds: float = 0.0  # the time they waited there, summed
    duration_sum: float = 0.0  # seconds, from the app call to the response's end, summed
    loop_blocked: int = 0  # -k asgi: times a callback held the event loop past --loop-block-warn
    loop_busy: float = 0.0  # -k asgi: the event loop thread's CPU share over the last tick
    websockets_open: int = 0  # -k asgi: WebSocket connections open now
    app_exit: int = 0  # 1: retiring because the app raised SystemExit (not --max-requests)
    # --threads above 1: times the loop thread sent the app calls to the app threads for a
    # while (berth.worker.baton): an app thread took the loop over from a slow call; measured
    # calls waited off the CPU
    switches_slow_call: int = 0
    switches_app_waits: int = 0
    # responses, index METHODS.index(method) * 5 + status class - 1
    requests: tuple = (0,) * N_REQUESTS
    durations: tuple = (0,) * N_BUCKETS  # responses per duration bucket (DURATION_BOUNDS)
    app_since: float = 0.0  # --threads 1: the loop thread runs the app since then (0: it does not)

    @property
    def state_name(self) -> str:
        return STATE_NAMES[self.state] if self.state < len(STATE_NAMES) else "?"


class Scoreboard:
    def __init__(self, slots: int = MAX_SLOTS):
        self.slots = slots
        # anonymous and shared across fork; after the slots, one cache line the master writes,
        # then each slot's app word, then its connections word (8-byte aligned)
        self.mem = mmap.mmap(-1, slots * SLOT_SIZE + 64 + slots * 24)
        self._flag = slots * SLOT_SIZE
        # (in the master's line) the slots workers have used: what a worker balances over
        self._in_use = memoryview(self.mem)[self._flag + 8:self._flag + 16].cast("q")
        words = slots * SLOT_SIZE + 64
        self._app_words = memoryview(self.mem)[words:words + slots * 8].cast("d")
        conns = words + slots * 8
        self._conn_words = memoryview(self.mem)[conns:conns + slots * 8].cast("q")
        stops = conns + slots * 8
        self._stop_words = memoryview(self.mem)[stops:stops + slots * 8].cast("q")
        self._stuck: dict[int, int] = {}  # a slot's word a read waited WRITER_GONE for
        for index in range(slots):
            self.clear(index)  # (an empty record with its checksum)

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

    def conn_words(self) -> memoryview:
        """Each slot's open connections while its worker takes new ones, else NO_CONNS:
        written by the worker's loop, read by its siblings' (berth.worker.admission)."""
        return self._conn_words

    def ask_to_stop(self, index: int) -> None:
        """The master, before it sends slot `index`'s worker SIGTERM (or SIGQUIT): the signal
        is its. A SIGTERM a worker gets while its word is 0 came from elsewhere: a stop sent
        to the whole process group (systemd's KillMode=control-group, dumb-init, `timeout`)
        reaches the master too, and the worker follows the master's shutdown delay instead
        (berth.worker.process)."""
        self._stop_words[index] = 1

    def stop_asked(self, index: int) -> bool:
        return self._stop_words[index] != 0

    def slots_in_use(self) -> memoryview:
        """One word: how many of the first slots workers have used, so far (the master writes
        it as it starts workers, `free_index`): the connections words a worker balances
        over. It is read at each balancing, not at fork: a worker started alone (`-w 1`)
        balances with the siblings SIGTTIN gives it later."""
        return self._in_use

    def write(self, index: int, slot: Slot) -> None:
        """Seqlock write: the sequence word is odd while the slot changes, so a reader never
        takes a half-written slot (the record is copied in between the two). A
        worker killed mid-write leaves it odd: the master's next write (`clear`) makes it
        even again. Python has no memory barriers to order these stores as other CPUs see
        them: on x86 they are seen in program order, on ARM64 they may not be, so the record
        carries its CRC-32 and a read takes it only when the two agree (`_fields`)."""
        line = slot.oldest_line.encode("latin-1", "replace")[:LINE_SIZE]
        data = _SLOT.pack(slot.pid, slot.generation, slot.state, slot.busy_threads,
                          slot.heartbeat, slot.served, slot.in_flight, slot.oldest_start, line,
                          slot.rss, slot.uss, slot.bytes_sent, slot.over_deadline,
                          slot.log_dropped, slot.queue_depth, slot.queued, slot.queued_seconds,
                          slot.duration_sum, slot.loop_blocked, slot.loop_busy,
                          slot.websockets_open, slot.app_exit, slot.switches_slow_call,
                          slot.switches_app_waits, *slot.requests, *slot.durations)
        base = index * SLOT_SIZE
        mem = self.mem
        seq = _SEQ.unpack_from(mem, base)[0] | 1
        _SEQ.pack_into(mem, base, seq)
        mem[base + _DATA:base + _DATA + _SLOT.size] = data
        _SUM.pack_into(mem, base + _SEQ.size, zlib.crc32(data))
        _SEQ.pack_into(mem, base, (seq + 1) & 0xFFFFFFFF)

    def read(self, index: int) -> Slot:
        fields = self._fields(index * SLOT_SIZE)
        slot = Slot(*fields[:8], fields[8].rstrip(b"\0").decode("latin-1"), *fields[9:_FIXED],
                    requests=fields[_FIXED:_FIXED + N_REQUESTS],
                    durations=fields[_FIXED + N_REQUESTS:])
        state = slot.state
        since = self._app_words[index]
        if since:  # the loop thread is in the app: its slot was written before that
            slot.app_since = since
            if state == IDLE:
                slot.state = BUSY
            slot.in_flight += 1
            slot.busy_threads += 1
            if not slot.oldest_start or since < slot.oldest_start:
                slot.oldest_start, slot.oldest_line = since, ""  # (its line is not stored)
        return slot

    def _fields(self, base: int) -> tuple:
        """The slot's fields, whole: read while the sequence word is even and the same before
        and after, and matching their checksum (a record seen half-written, however the
        CPU ordered the stores). A writer preempted mid-write (a busy machine takes its CPU
        away between the two sequence writes, for milliseconds) is waited for: after SPINS
        reads, with a sleep between reads. A writer killed mid-write leaves the word odd for
        good: after WRITER_GONE the fields are taken as they are (the master reaps the worker
        and clears its slot), and so at once by the next reads while the word stays the same
        (a writer stopped, not dead: SIGSTOP)."""
        mem = self.mem
        start, end = base + _DATA, base + _DATA + _SLOT.size
        spins = SPINS
        gone_at = 0.0
        while True:
            before = _SEQ.unpack_from(mem, base)[0]
            total = _SUM.unpack_from(mem, base + _SEQ.size)[0]
            data = mem[start:end]
            if (not before & 1 and _SEQ.unpack_from(mem, base)[0] == before
                    and zlib.crc32(data) == total):
                return _SLOT.unpack(data)
            if spins:
                spins -= 1
                continue
            if self._stuck.get(base) == before:
                return _SLOT.unpack(data)
            now = time.monotonic()
            if not gone_at:
                gone_at = now + WRITER_GONE
            elif now >= gone_at:
                self._stuck[base] = before
                return _SLOT.unpack(data)
            time.sleep(0.001)

    def free_index(self, taken: set[int]) -> int:
        """The lowest slot not taken, for a worker about to start (counted in `slots_in_use`
        from now on)."""
        for index in range(self.slots):
            if index not in taken:
                if index >= self._in_use[0]:
                    self._in_use[0] = index + 1
                return index
        raise RuntimeError(f"no free scoreboard slot (the cap is {self.slots})")

    def clear(self, index: int) -> None:
        self.write(index, Slot())
        self._app_words[index] = 0.0  # (a worker killed inside the app leaves it set)
        self._conn_words[index] = NO_CONNS
        self._stop_words[index] = 0
        self._stuck.pop(index * SLOT_SIZE, None)  # (its next worker starts afresh)

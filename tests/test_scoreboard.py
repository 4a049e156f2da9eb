"""The scoreboard is shared memory: what a forked worker writes, the master reads."""

import os
import signal
import time

from berth import scoreboard
from berth.scoreboard import (
    _DATA,
    _SEQ,
    BUSY,
    IDLE,
    MAX_SLOTS,
    MAX_WORKERS,
    N_BUCKETS,
    N_REQUESTS,
    SLOT_SIZE,
    WRITER_GONE,
    Scoreboard,
    Slot,
)


def test_slot_round_trips_every_field():
    board = Scoreboard(4)
    slot = Slot(pid=1234, generation=3, state=BUSY, busy_threads=2, heartbeat=12.5, served=99,
                in_flight=2, oldest_start=11.0, oldest_line="GET /x HTTP/1.1", rss=5 << 20,
                uss=3 << 20, bytes_sent=4096, over_deadline=1, log_dropped=2, queue_depth=3,
                queued=7, queued_seconds=0.25, duration_sum=1.5, loop_blocked=4,
                loop_busy=0.5, websockets_open=6, app_exit=1, switches_slow_call=8,
                switches_app_waits=9,
                requests=tuple(range(1, N_REQUESTS + 1)), durations=tuple(range(N_BUCKETS)))
    board.write(2, slot)
    assert board.read(2) == slot
    assert board.read(1) == Slot()


def test_slots_are_cache_line_aligned_and_cover_workers_plus_replacements():
    assert SLOT_SIZE % 64 == 0
    assert MAX_SLOTS >= 2 * MAX_WORKERS


def test_long_request_line_is_cut_not_spilled_into_the_next_slot():
    board = Scoreboard(2)
    board.write(0, Slot(pid=1, oldest_line="GET /" + "a" * 500))
    assert len(board.read(0).oldest_line) <= 96
    assert board.read(1) == Slot()


def test_a_forked_child_writes_what_the_parent_reads():
    board = Scoreboard(4)
    pid = os.fork()
    if pid == 0:
        try:
            board.write(3, Slot(pid=os.getpid(), state=BUSY, heartbeat=time.monotonic()))
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    seen = board.read(3)
    assert seen.pid == pid and seen.state == BUSY and seen.heartbeat > 0


def test_a_worker_killed_mid_write_leaves_a_slot_the_master_can_read_and_clear():
    """A worker SIGKILLed between the two sequence writes leaves its slot's word odd for good.
    Reading it (the master's check, /status) must not fail, and clearing it (the master,
    once it has reaped the worker) must make it readable again."""
    board = Scoreboard(2)
    board.write(1, Slot(pid=4321, state=BUSY, served=7))
    pid = os.fork()
    if pid == 0:  # what write() does first, then the SIGKILL
        try:
            seq = _SEQ.unpack_from(board.mem, SLOT_SIZE)[0]
            _SEQ.pack_into(board.mem, SLOT_SIZE, seq + 1)
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
    os.waitpid(pid, 0)
    assert _SEQ.unpack_from(board.mem, SLOT_SIZE)[0] & 1
    started = time.monotonic()
    torn = board.read(1)  # as it is, once WRITER_GONE has passed: what the dead worker left
    assert time.monotonic() - started >= WRITER_GONE
    assert (torn.pid, torn.served) == (4321, 7)
    started = time.monotonic()
    assert board.read(1).pid == 4321  # the same odd word again: at once
    assert time.monotonic() - started < WRITER_GONE
    board.clear(1)
    assert not _SEQ.unpack_from(board.mem, SLOT_SIZE)[0] & 1
    assert board.read(1) == Slot()
    board.write(1, Slot(pid=99))
    assert board.read(1).pid == 99 and not _SEQ.unpack_from(board.mem, SLOT_SIZE)[0] & 1


def test_a_read_waits_for_a_writer_that_lost_its_cpu_mid_write(monkeypatch):
    """On a busy machine a worker can be preempted between the two sequence writes for
    milliseconds: the master's read then gets the slot it went on to write, whole (it once
    gave up after 1,000 quick reads and raised, which stopped the master)."""
    monkeypatch.setattr(scoreboard, "WRITER_GONE", 10.0)  # (however slow the child is)
    board = Scoreboard(2)
    board.write(0, Slot(pid=1, served=1))
    odd_r, odd_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # write() held up after its first sequence write
        try:
            seq = _SEQ.unpack_from(board.mem, 0)[0]
            _SEQ.pack_into(board.mem, 0, seq + 1)
            os.write(odd_w, b"x")
            time.sleep(0.05)  # (the record half-written meanwhile: zeroes)
            board.mem[_SEQ.size:SLOT_SIZE] = bytes(SLOT_SIZE - _SEQ.size)
            board.write(0, Slot(pid=2, served=2))  # (a write from an odd word ends even)
        finally:
            os._exit(0)
    os.close(odd_w)  # (a child that dies before writing: the read below sees EOF)
    try:
        assert os.read(odd_r, 1) == b"x"
        seen = board.read(0)
    finally:
        os.close(odd_r)
        os.waitpid(pid, 0)
    assert (seen.pid, seen.served) == (2, 2)


def test_a_record_seen_before_its_checksum_is_not_taken(monkeypatch):
    """Where stores may be seen out of program order (ARM64; Python has no barriers), a read
    can find the sequence word even and unchanged around a record that is half new. The
    record's CRC-32 then disagrees: the read waits for the whole write, as it does for an
    odd word, instead of taking a heartbeat or a pid made of two records."""
    monkeypatch.setattr(scoreboard, "WRITER_GONE", 10.0)  # (however slow the child is)
    board = Scoreboard(2)
    board.write(0, Slot(pid=1, served=1, heartbeat=5.0))
    new = Slot(pid=2, served=2, heartbeat=6.0, requests=(7,) * N_REQUESTS,
               durations=(8,) * N_BUCKETS)
    torn_r, torn_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the new record's bytes visible, its checksum and sequence not yet
        try:
            scratch = Scoreboard(1)
            scratch.write(0, new)
            half = _DATA + (SLOT_SIZE - _DATA) // 2  # (its pid, served and heartbeat: old)
            board.mem[half:SLOT_SIZE] = scratch.mem[half:SLOT_SIZE]
            os.write(torn_w, b"x")
            time.sleep(0.05)
            board.write(0, new)
        finally:
            os._exit(0)
    os.close(torn_w)
    try:
        assert os.read(torn_r, 1) == b"x"
        assert _SEQ.unpack_from(board.mem, 0)[0] % 2 == 0  # (the word says: whole)
        seen = board.read(0)
    finally:
        os.close(torn_r)
        os.waitpid(pid, 0)
    assert seen == new


def test_a_record_that_never_matches_its_checksum_is_read_after_writer_gone():
    board = Scoreboard(1)
    board.write(0, Slot(pid=3, served=4))
    board.mem[_DATA] ^= 0xFF  # (pid's low byte changed, the checksum not)
    started = time.monotonic()
    seen = board.read(0)  # taken as it is once WRITER_GONE has passed: never a hang
    assert time.monotonic() - started >= WRITER_GONE
    assert seen.served == 4 and seen.pid != 3
    board.clear(0)
    assert board.read(0) == Slot()


def test_free_index_skips_taken_slots_and_counts_the_slots_in_use():
    board = Scoreboard(4)
    in_use = board.slots_in_use()
    assert in_use[0] == 0
    assert board.free_index(set()) == 0 and in_use[0] == 1
    assert board.free_index({0, 1}) == 2 and in_use[0] == 3
    assert board.free_index({1}) == 0 and in_use[0] == 3  # (it only grows)


def test_the_loop_threads_app_word_makes_an_idle_slot_busy_until_cleared():
    board = Scoreboard(4)
    board.write(1, Slot(pid=7, state=IDLE, in_flight=0, busy_threads=0, heartbeat=5.0))
    word = board.app_word(1)
    word[0] = 100.0  # the worker's loop thread starts the app
    seen = board.read(1)
    assert (seen.state, seen.in_flight, seen.busy_threads) == (BUSY, 1, 1)
    assert seen.app_since == seen.oldest_start == 100.0
    assert board.read(0).app_since == 0.0 and board.read(2).app_since == 0.0
    word[0] = 0.0  # the app returned
    assert board.read(1).state == IDLE
    word[0] = 100.0
    board.clear(1)  # the worker died inside the app: its slot is freed with the word
    assert board.read(1) == Slot()


def test_an_older_request_on_an_app_thread_stays_the_oldest():
    board = Scoreboard(2)
    board.write(0, Slot(pid=7, state=BUSY, in_flight=1, busy_threads=1, oldest_start=50.0,
                        oldest_line="POST /upload HTTP/1.1"))
    board.app_word(0)[0] = 60.0
    seen = board.read(0)
    assert (seen.in_flight, seen.oldest_start, seen.oldest_line) == (2, 50.0,
                                                                     "POST /upload HTTP/1.1")

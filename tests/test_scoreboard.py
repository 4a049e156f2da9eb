"""The scoreboard is shared memory: what a forked worker writes, the master reads."""

import os
import time

from berth.scoreboard import BUSY, MAX_SLOTS, MAX_WORKERS, SLOT_SIZE, Scoreboard, Slot


def test_slot_round_trips_every_field():
    board = Scoreboard(4)
    slot = Slot(pid=1234, generation=3, state=BUSY, busy_threads=2, heartbeat=12.5, served=99,
                in_flight=2, oldest_start=11.0, oldest_line="GET /x HTTP/1.1", rss=5 << 20,
                uss=3 << 20, status_5xx=1, bytes_sent=4096, over_deadline=1)
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


def test_free_index_skips_taken_slots():
    board = Scoreboard(3)
    assert board.free_index({0, 1}) == 2

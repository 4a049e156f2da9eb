"""Request counters, kept per thread without a lock and folded into the scoreboard slot.

A list of numbers per thread that answers requests (an app thread, the loop thread, the ASGI
event loop): `counts[METHOD_ROW[method] + (ord(status[0]) & 15)]` counts responses by method
and status class (a row of 16 per method: a digit's low nibble is its value, whatever the
digit); `counts[BYTES]` the body bytes sent; `counts[DURATIONS + bisect(DURATION_BOUNDS,
seconds)]` the duration histogram (bisect_left: a bucket holds the durations up to and
including its bound, Prometheus' `le`) and `counts[DURATION_SUM]` its sum; `counts[QUEUED]` and
`counts[QUEUED_SUM]` the requests that waited for an app thread, and how long. The worker's
tick sums the lists (`totals`) and `publish` puts them in the slot (berth.scoreboard).
"""

from __future__ import annotations

from bisect import bisect_left

from berth.scoreboard import DURATION_BOUNDS, METHODS, N_BUCKETS, STATUS_CLASSES, Slot

METHOD_ROW = {m.encode(): 16 * i for i, m in enumerate(METHODS[:-1])}
OTHER_ROW = 16 * (len(METHODS) - 1)
BYTES = 16 * len(METHODS)
DURATIONS = BYTES + 1
DURATION_SUM = DURATIONS + N_BUCKETS
QUEUED = DURATION_SUM + 1
QUEUED_SUM = QUEUED + 1
N_COUNTS = QUEUED_SUM + 1


def new_counts() -> list:
    counts = [0] * N_COUNTS
    counts[DURATION_SUM] = counts[QUEUED_SUM] = 0.0
    return counts


def count(counts: list, method: bytes, status: str, sent: int, seconds: float) -> None:
    """Count one response (the WSGI responder inlines the same on its fast path)."""
    counts[METHOD_ROW.get(method, OTHER_ROW) + (ord(status[0]) & 15)] += 1
    counts[BYTES] += sent
    counts[DURATIONS + bisect_left(DURATION_BOUNDS, seconds)] += 1
    counts[DURATION_SUM] += seconds


def totals(stats: list[list]) -> list:
    """Every thread's counters, summed (read while requests go on: a request counted in one
    field and not yet in another shows up at the next tick)."""
    return [sum(column) for column in zip(*stats)] if stats else new_counts()


def publish(totals_: list, slot: Slot) -> None:
    """The counters, as the scoreboard keeps them."""
    classes = len(STATUS_CLASSES)
    slot.requests = tuple(totals_[row + c] for row in range(0, BYTES, 16)
                          for c in range(1, classes + 1))
    slot.bytes_sent = totals_[BYTES]
    slot.durations = tuple(totals_[DURATIONS:DURATION_SUM])
    slot.duration_sum = totals_[DURATION_SUM]
    slot.queued, slot.queued_seconds = totals_[QUEUED], totals_[QUEUED_SUM]

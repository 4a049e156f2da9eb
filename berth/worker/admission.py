"""Room for connections, the same in both event loops (berth's epoll loop for WSGI, the ASGI
worker's asyncio loop): what to close when a worker is full or out of file descriptors.

Out of file descriptors (EMFILE, ENFILE) or kernel memory, accept() fails at once, again and
again, while the listener stays readable. The loop backs off for a moment and closes the
oldest connections with no request in progress (their clients reconnect: RFC 9112 9.3.1 lets
them retry): a quarter of them, at least a few, so a backlog of waiting clients gets in
within a few rounds instead of spinning until idle connections time out. At
--worker-connections, room is made the same way, a smaller share at a time (the worker is
full, not failing). Each says so at most once a second, with counts.

With more than one worker, accepts are balanced across them (`balance_with`; a worker started
alone too, once SIGTTIN gives it siblings: the slots it scans are read at each turn). A burst of
connections (a load balancer's pool, wrk's connections, opened before anything is sent) goes
to whichever worker wakes first, and on a busy CPU that one could take the whole burst, where
keep-alive then pins it. So each worker publishes its open connections in the scoreboard
(`publish_conns`), and one with BALANCE_SLACK more than a sibling that takes new ones too
stops accepting for DEFER (`defer`): the next connection goes to a sibling. Two workers
deferring to each other take turns at a burst. A deferral is short because connections that
come and go (`Connection: close`) keep the counts uneven without any harm: with 5 ms
deferrals, two ASGI workers answered 0.6x as many such requests. After UNANSWERED deferrals
in a row in which no sibling took a connection (busy, stuck, or given no CPU in time), a
worker defers no more for DEFER_AGAIN (`end_deferral`): such a sibling costs new connections
a few ms at most.

A loop using `Admission` has `conns`, `max_conns`, `log`, `accepting`, `set_accepting(bool)`
(which calls `publish_conns`) and `sheddable()` (its connections with no request in progress;
each has `last_active` and `close()`), and sets `now` before it calls these.
"""

from __future__ import annotations

import errno
import logging

from berth.logs import Throttled
from berth.scoreboard import NO_CONNS

ACCEPT_BATCH = 4  # connections taken per wake-up (a burst spreads over the workers)
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_BACKOFF = 0.1  # seconds without accepting after accept() ran out of descriptors
SHED_SHARE = 4
SHED_MIN = ACCEPT_BATCH
BOUND_SHED_SHARE = 16
BALANCE_SLACK = 2  # connections more than the least-loaded sibling
DEFER = 0.001  # seconds a deferral lasts
UNANSWERED = 3  # deferrals in a row that no sibling answered, before DEFER_AGAIN
DEFER_AGAIN = 0.1  # seconds with no deferral then


class AdmissionState:
    """What Admission keeps, in one slotted object (`Admission.admit`): on the loop itself it
    made up to 13 more instance attributes, and past 29 every attribute read of the loop's,
    on every request, loses its specialization (see berth.worker.loop.Loop)."""

    __slots__ = ("accept_resume", "refused", "shed", "full_shed", "refused_logged",
                 "full_logged", "conn_words", "slot", "slots_in_use", "defer_until",
                 "defer_after", "deferred_least", "unanswered", "bad_request")

    def __init__(self, log):
        self.accept_resume = 0.0  # no accepting before then (out of file descriptors)
        self.refused = self.shed = self.full_shed = 0  # since the last line about them
        self.refused_logged = self.full_logged = -1.0
        self.conn_words = None  # every worker's open connections (the scoreboard's), balancing
        self.slot = 0  # this worker's word
        self.slots_in_use = None  # the scoreboard's count of the slots workers use (the lowest)
        self.defer_until = 0.0  # deferring to a sibling until then (not accepting meanwhile)
        self.defer_after = 0.0  # no deferring again before then
        self.deferred_least = 0  # the fewest connections of a worker when this one deferred
        self.unanswered = 0  # deferrals in a row during which no sibling took a connection
        # a request refused (400, 408, 431...): a warning, as Gunicorn's "Invalid request
        # from ip=...", at most one a second (with a count of the others)
        self.bad_request = Throttled(log, logging.WARNING)


class Admission:
    admit: AdmissionState  # made by the subclass's __init__

    # -- balance across the workers (see module) ----------------------------------------------

    def balance_with(self, conn_words, slots_in_use, slot: int) -> None:
        self.admit.conn_words = conn_words
        self.admit.slots_in_use = slots_in_use  # (the scoreboard's word: it grows with SIGTTIN)
        self.admit.slot = slot

    def least_conns(self) -> int:
        """The fewest open connections of a worker taking new ones (this one included)."""
        return min(self.admit.conn_words[:self.admit.slots_in_use[0]])

    def open_conns(self) -> int:
        return len(self.conns)

    def publish_conns(self) -> None:
        """This worker's open connections, for its siblings (NO_CONNS while it takes none:
        paused or out of descriptors; deferring is not pausing)."""
        admit = self.admit
        words = admit.conn_words
        if words is not None:
            words[admit.slot] = (self.open_conns() if self.accepting or admit.defer_until
                                 else NO_CONNS)

    def defer(self, now: float) -> bool:
        """Before accepting, when balancing: whether to leave new connections to a sibling
        for DEFER (then accepting is off until `end_deferral`)."""
        if now < self.admit.defer_after or self.admit.slots_in_use[0] < 2:
            return False  # (one worker: no sibling to leave them to, until SIGTTIN)
        least = self.least_conns()
        if self.open_conns() < least + BALANCE_SLACK:
            return False
        self.admit.deferred_least = least
        self.admit.defer_until = now + DEFER
        self.set_accepting(False)
        return True

    def end_deferral(self, now: float) -> bool:
        """While deferring: False until DEFER has passed (whatever the queue: the worker was
        accepting when it deferred), then end it and return True."""
        if now < self.admit.defer_until:
            return False
        self.admit.defer_until = 0.0
        words = self.admit.conn_words
        if words is not None and self.least_conns() <= self.admit.deferred_least:
            self.admit.unanswered += 1  # its siblings took none: not scheduled in time, or stuck
            if self.admit.unanswered >= UNANSWERED:
                self.admit.unanswered = 0
                self.admit.defer_after = now + DEFER_AGAIN
        else:
            self.admit.unanswered = 0
        self.publish_conns()  # (NO_CONNS until it accepts again)
        return True

    def withdraw(self) -> None:
        """This worker takes no more connections (retiring, draining): its siblings stop
        counting it."""
        self.admit.defer_until = 0.0
        if self.admit.conn_words is not None:
            self.admit.conn_words[self.admit.slot] = NO_CONNS
            self.admit.conn_words = None

    # -- room -----------------------------------------------------------------------------------

    def shed_idle(self, share: int) -> int:
        """Close the oldest connections with no request in progress: a `share` of them, at
        least SHED_MIN; return how many."""
        idle = sorted(self.sheddable(), key=lambda c: c.last_active)
        shed = idle[:max(SHED_MIN, len(idle) // share)]
        for conn in shed:
            conn.close()
        return len(shed)

    def make_room(self, now: float) -> bool:
        """At --worker-connections: make room for a new connection; False if none can go."""
        shed = self.shed_idle(BOUND_SHED_SHARE)
        self.admit.full_shed += shed
        if now - self.admit.full_logged >= 1.0:
            self.log.info("at worker_connections (%d): closed %d connections with no request "
                          "in progress (the oldest) to make room%s", self.max_conns,
                          self.admit.full_shed, "" if shed else "; none left: not accepting until "
                          "one ends")
            self.admit.full_logged = now
            self.admit.full_shed = 0
        return self.open_conns() < self.max_conns

    def room_at_tick(self, now: float, listening: bool) -> None:
        """Each tick, while not accepting: a worker that was full with nothing idle at its
        last accept makes room now if a connection has become idle since (nothing else would
        until a keep-alive expires)."""
        if not self.accepting and listening and self.open_conns() >= self.max_conns:
            self.make_room(now)

    def out_of_descriptors(self, exc: OSError, now: float) -> None:
        """accept() failed for want of a file descriptor (or kernel memory). Degrade, never
        spin: shed the oldest idle connections, stop accepting for ACCEPT_BACKOFF, and say so
        at most once a second, with a count."""
        self.admit.refused += 1
        self.admit.shed += self.shed_idle(SHED_SHARE)
        if now - self.admit.refused_logged >= 1.0:
            self.log.warning("accept failed: %s (%d times); closed %d idle keep-alive "
                             "connections (the oldest) to make room; %d connections open",
                             exc.strerror, self.admit.refused, self.admit.shed, len(self.conns))
            self.admit.refused_logged = now
            self.admit.refused = self.admit.shed = 0
        self.admit.accept_resume = now + ACCEPT_BACKOFF
        self.set_accepting(False)

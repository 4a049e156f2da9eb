"""Room for connections, the same in both event loops (berth's epoll loop for WSGI, the ASGI
worker's asyncio loop): what to close when a worker is full or out of file descriptors.

Out of file descriptors (EMFILE, ENFILE) or kernel memory, accept() fails at once, again and
again, while the listener stays readable. The loop backs off for a moment and closes the
oldest connections with no request in progress (their clients reconnect: RFC 9112 9.3.1 lets
them retry): a quarter of them, at least a few, so a backlog of waiting clients gets in
within a few rounds instead of spinning until idle connections time out. At
--worker-connections, room is made the same way, a smaller share at a time (the worker is
full, not failing). Each says so at most once a second, with counts.

A loop using `Admission` has `conns`, `max_conns`, `log`, `set_accepting(bool)` and
`sheddable()` (its connections with no request in progress; each has `last_active` and
`close()`), and sets `now` before it calls these.
"""

from __future__ import annotations

import errno

ACCEPT_BATCH = 4  # connections taken per wake-up (a burst spreads over the workers)
OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
ACCEPT_BACKOFF = 0.1  # seconds without accepting after accept() ran out of descriptors
SHED_SHARE = 4
SHED_MIN = ACCEPT_BATCH
BOUND_SHED_SHARE = 16


class Admission:
    accept_resume = 0.0  # no accepting before then (out of file descriptors)
    refused = shed = full_shed = 0  # since the last line about them
    refused_logged = full_logged = -1.0

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
        self.full_shed += shed
        if now - self.full_logged >= 1.0:
            self.log.info("at worker_connections (%d): closed %d connections with no request "
                          "in progress (the oldest) to make room%s", self.max_conns,
                          self.full_shed, "" if shed else "; none left: not accepting until "
                          "one ends")
            self.full_logged = now
            self.full_shed = 0
        return len(self.conns) < self.max_conns

    def out_of_descriptors(self, exc: OSError, now: float) -> None:
        """accept() failed for want of a file descriptor (or kernel memory). Degrade, never
        spin: shed the oldest idle connections, stop accepting for ACCEPT_BACKOFF, and say so
        at most once a second, with a count."""
        self.refused += 1
        self.shed += self.shed_idle(SHED_SHARE)
        if now - self.refused_logged >= 1.0:
            self.log.warning("accept failed: %s (%d times); closed %d idle keep-alive "
                             "connections (the oldest) to make room; %d connections open",
                             exc.strerror, self.refused, self.shed, len(self.conns))
            self.refused_logged = now
            self.refused = self.shed = 0
        self.accept_resume = now + ACCEPT_BACKOFF
        self.set_accepting(False)

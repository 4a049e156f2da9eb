"""Who runs the loop. With app threads (`--threads` above 1) the loop thread still answers
requests itself, as with one thread, while an idle app thread stands by to take the loop over.

Handing every request to an app thread costs a wake-up and two GIL hand-offs per request: with
four threads, hello world ran at 0.77x to 0.86x of one thread, and Flask and Django lost the
batching of their sends (the README's performance section). So the loop thread runs the app
inline whenever an app thread stands by: the *watcher*. It waits for work with a timeout of
WATCH_EVERY, and when it finds the loop thread inside one app call for longer than TAKEOVER,
it takes the loop over (`watch`). The old loop thread finishes that response as an app thread
would (while inside the app its sends never touch the loop's state, see `lead`), then joins the
app threads: `Deposed` unwinds its loop frames (the events it had not handled yet are reported
again: epoll is level-triggered). App code on the loop thread is the app call, taking the
body's first parts, the iterable's close() and the request hooks: each runs under `lead`. A
response that turns out to be a stream of several parts is handed over at once (`hand_over`):
it goes on on the thread its iterator started on, and the loop goes to an idle app thread.

The loop thread answers inline only while the app threads' queue is empty
(`Responder.dispatch`), and the watcher leaves its post only while the loop thread runs no app
code; should `lead` still find no watcher, it summons one (WATCH). The loop's tick is due by
a time kept on the Loop (checked when a thread starts running it and after each turn's
events), as is the rest of the loop's state, so the loop may move between threads as often as
it likes; signals reach it through the wakeup pipe's bytes, whichever thread runs it (Python
runs signal handlers on the main thread only).

What this keeps true:
- the loop is held by the app for about TAKEOVER + WATCH_EVERY at most (heartbeat, probes,
  slow clients and deadlines go on), where an app thread's GIL allows;
- no more than --threads app calls at once: the loop thread's inline call takes the place of
  the watcher, who is idle, and inline calls happen only while one stands by;
- a server with fast requests pays no hand-off per request.

An app whose requests wait (on a database, a sleep) needs the app threads even when each wait
is short: one at a time on the loop thread, waits of 1 ms would cap a worker at 1,000 requests
a second. So one app call in SAMPLE_EVERY also has its thread's CPU time and voluntary context
switches measured (getrusage): when two such calls in a row blocked (a voluntary switch) and
spent more than WAITED of their time, and at least WAITED_AT_LEAST, off the CPU, requests go to
the app threads for a while, as they do after a takeover, before the
loop thread tries again (`lead`). The first two calls after that are measured, and each back-off
in a row lasts twice the one before (BACK_OFF up to BACK_OFF_MOST): an app that always waits
costs two inline calls every 16 s; a measured call that did not wait starts again from
BACK_OFF.

A watcher that sees no request answered for PARK_AFTER stops waking up (an idle server
sleeps); the next request goes to an app thread, which stands by again once it has answered.
"""

from __future__ import annotations

import resource
import threading
import time
from queue import Empty

WATCH_EVERY = 0.01  # the watcher's wake-ups while it stands by
TAKEOVER = 0.01  # an inline app call older than this loses the loop to the watcher
BACK_OFF = 1.0  # after a takeover: requests go to the app threads for this long (doubling,
BACK_OFF_MOST = 16.0  # up to this, while each try waits again)
PARK_AFTER = 1.0  # a watcher that sees no request answered for this long stops waking up
SAMPLE_EVERY = 32  # inline app calls per one whose CPU time is measured (a system call each)
WAITED = 0.25  # a measured call that spent more than this share of its time off the CPU
WAITED_AT_LEAST = 0.0001  # and at least this long: it waited (twice in a row: back off)
getrusage = resource.getrusage
monotonic = time.monotonic
RUSAGE_THREAD = resource.RUSAGE_THREAD
TAKE_LOOP = object()  # queued for an app thread: run the loop from now on (hand_over)
WATCH = object()  # queued for an app thread: stand by (`lead` found no watcher)


class Deposed(BaseException):
    """Raised on a thread that ran the loop, once it has finished the response it was answering
    when another thread took the loop over: its loop frames unwind, it joins the app threads.
    (A BaseException: the loop's `except Exception` handlers let it through.)"""


class Baton:
    """The loop's hand-over between threads (see module). Everything that decides who runs
    the loop is done under `lock`, on the app threads' side. The loop thread takes no lock per
    request: each app call is an entry of `calls`, which it adds and pops, and the watcher takes
    the loop over only by popping that entry first (under `lock`); a dict's pop is one atomic
    step, so exactly one of the two pops it. An entry's key is the call's start (its value the
    Response): a response runs several calls in a row (the app, then its body's parts), and a
    watcher that saw an old one must not pop the next, which started later. (Two calls with
    one start, on a clock too coarse to tell them apart, are both as old as the watcher
    reckons: the one it pops has run past TAKEOVER too.) A thread that was deposed never
    touches its successor's entries."""

    def __init__(self, responder, running):
        self.responder = responder  # its `inline`, `busy`, `work` and `served`
        self.running = running  # the scoreboard's app word: the loop thread's app call
        self.lock = threading.Lock()
        self.calls: dict = {}  # the loop thread's app call: start -> Response
        self.leader = threading.get_ident()  # the thread that runs the loop
        self.watcher = 0  # the app thread standing by (its ident; 0: none)
        self.quiet = False  # the watcher parked: no app thread stands by until one answers
        self.back_off_until = 0.0
        self.sample = SAMPLE_EVERY  # inline calls until the next measured one
        self.waited = 0  # measured calls in a row that waited
        self.back_off = BACK_OFF  # the next back-off's length
        self.seen_served = -1  # the watcher's view of `responder.served`, and since when
        self.seen_at = 0.0
        self.summoned = False  # a WATCH is queued
        # the app word still shows the deposed call until the new loop thread's first tick
        # has written the slot with it (_depose; then slot_written)
        self.word_left = False
        self.take_loop = None  # set by the worker: run the loop on this thread (until Deposed)
        # times requests went to the app threads for a while (berth_app_thread_switches_total):
        self.slow_calls = 0  # a watcher took the loop over from a slow call
        self.app_waits = 0  # measured calls waited off the CPU

    # -- on the loop thread ------------------------------------------------------------------

    def lead(self, resp, call, *args):
        """Run app code `call(*args)` for `resp` on the loop thread, as an app thread would: its
        sends (the WSGI write()) are an app thread's, so that the watcher may take the loop
        over meanwhile. If it did, `resp.req.dispatched` is set and `resp.inline` stays False:
        the caller finishes the response as an app thread."""
        resp.inline = False
        self.sample -= 1
        if not self.sample:
            return self.measure(resp, call, args)
        calls = self.calls
        # (the app's sign of life, as on an app thread: a send waiting for a slow reader
        # sets it to 0 meanwhile, which a takeover keeps)
        resp.req.progress = since = monotonic()
        calls[since] = resp
        if not self.watcher:  # it left just now (see wait): another must stand by
            self.summon()
        try:
            return call(*args)
        finally:
            if calls.pop(since, None) is None:  # taken over: let the depose finish
                self.lock.acquire()
                self.lock.release()
            if not resp.req.dispatched:
                resp.inline = True

    def measure(self, resp, call, args):
        """lead(), for one call in SAMPLE_EVERY: does the app wait (see module)?"""
        # (blocked, not preempted: a busy machine or a CPU quota takes the CPU away too, but
        # without a voluntary context switch)
        usage = getrusage(RUSAGE_THREAD)
        resp.req.progress = since = monotonic()
        self.calls[since] = resp
        if not self.watcher:
            self.summon()
        try:
            return call(*args)
        finally:
            took = time.monotonic() - since
            after = getrusage(RUSAGE_THREAD)
            blocked = after.ru_nvcsw > usage.ru_nvcsw
            off_cpu = took - (after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime)
            self.calls.pop(since, None)
            with self.lock:  # (after a takeover: once the watcher has deposed this thread)
                if resp.req.dispatched:  # taken over: that backed off already
                    self.sample = 1
                elif blocked and off_cpu > WAITED * took and off_cpu > WAITED_AT_LEAST:
                    self.waited += 1
                    if self.waited >= 2:
                        self.back_off_now(since + took)
                        self.app_waits += 1
                    else:
                        self.sample = 1  # is the next one waiting too?
                else:
                    self.waited = 0
                    self.sample = SAMPLE_EVERY
                    self.back_off = BACK_OFF
            if not resp.req.dispatched:
                resp.inline = True

    def hand_over(self, resp) -> bool:
        """`resp` is a stream: let an idle app thread take the loop, and go on with the stream
        on this thread as an app thread. False if no app thread is surely idle."""
        responder = self.responder
        with self.lock:
            handed = self.watcher and not responder.work.qsize()
            if handed:
                self._depose(resp, time.monotonic())
        if not handed:
            self.summon()  # (the stream stays on the loop thread: at least let one stand by)
            return False
        responder.work.put(TAKE_LOOP)
        return True

    def summon(self) -> None:
        """The loop thread runs app code with no watcher (it parked or took work just as the
        call began): the next idle app thread stands by."""
        with self.lock:
            if self.watcher or self.summoned:
                return
            self.summoned = True
        self.responder.work.put(WATCH)

    def _depose(self, resp, progress: float) -> None:
        """Under the lock: the loop thread's response becomes an app thread's (its deadline
        kept by the loop's sweep, its thread counted busy)."""
        req = resp.req
        conn = resp.conn
        req.dispatched = resp.started or progress
        conn.response = resp
        conn.thread = self.leader
        responder = self.responder
        responder.busy[self.leader] = True
        responder.inline = False
        self.watcher = 0
        # The loop's next thread ticks first thing: its slot then shows the request in flight
        # (an app thread's), and only then is the app word cleared. Cleared here, the slot,
        # written before the call, and the word showed this worker idle until that tick:
        # /status did, to a browser, and on a loaded machine to a test, between two busy reads
        self.word_left = True
        responder.loop.next_tick = time.monotonic()
        resp.inline = False

    def slot_written(self) -> None:
        """The loop's new thread has ticked (Loop.run): its slot shows the deposed call as an
        app thread's, so the app word may let go of it (see _depose)."""
        if self.word_left:
            self.word_left = False
            self.running[0] = 0.0

    def back_off_now(self, now: float) -> None:
        """Under the lock: the app waits; requests go to the app threads for a while."""
        self.back_off_until = now + self.back_off
        self.back_off = min(self.back_off * 2, BACK_OFF_MOST)
        self.responder.inline = False
        self.waited = 0
        self.sample = 1  # the first calls after it are measured

    # -- on an app thread ----------------------------------------------------------------------

    def stand_by(self, me: int, summoned: bool = False) -> bool:
        """An idle app thread: become the watcher if there is none (and not parked)."""
        with self.lock:
            if summoned:
                self.summoned = False
                self.quiet = False
            if self.watcher or self.quiet:
                return False
            self.watcher = me
            now = time.monotonic()
            self.responder.inline = now >= self.back_off_until
            self.seen_served = self.responder.served
            self.seen_at = now
        return True

    def wait(self, me: int, get):
        """The watcher waits for work, watching the loop thread meanwhile. Returns an item of
        work, or None once it is no longer the watcher."""
        while self.watcher == me:
            try:
                item = get(timeout=WATCH_EVERY)
            except Empty:
                item = None
            if item is None:  # (outside the except: what the loop logs has no context)
                self.watch(me)
                continue
            if item is WATCH:
                with self.lock:
                    self.summoned = False
                continue
            with self.lock:
                # The watcher leaves only while the loop thread runs no app code (`lead`
                # adds its call, then looks for a watcher: one of the two sees the other).
                stay = self.calls and self.watcher == me
                if not stay and self.watcher == me:
                    self.watcher = 0
                    self.responder.inline = False
            if stay:  # (queued just before an inline call began): held until the call ends
                return self.hold(me, item)
            return item
        return None

    def hold(self, me: int, item):
        """The watcher got work while the loop thread runs app code: it keeps watching until
        that call ends (or it takes the loop over and comes back), then answers the work."""
        while True:
            time.sleep(WATCH_EVERY)
            self.watch(me)
            with self.lock:
                if self.watcher != me:  # it took the loop, and was deposed in turn (or parked)
                    return item
                if not self.calls:
                    self.watcher = 0
                    self.responder.inline = False
                    return item

    def watch(self, me: int) -> None:
        """The watcher's turn: take the loop over from an app call that runs long (and run
        the loop until deposed in turn); end a back-off; park when nothing happens."""
        now = time.monotonic()
        calls = list(self.calls.items())  # (one step: the loop thread may change it)
        responder = self.responder
        if calls:
            since, resp = calls[0]
            if now - since > TAKEOVER:
                with self.lock:
                    # (the loop thread pops its call when it ends: whoever pops first has it)
                    if self.watcher != me or self.calls.pop(since, None) is None:
                        return  # the call ended meanwhile
                    self._depose(resp, since)
                    self.leader = me
                    self.back_off_now(now)
                    self.slow_calls += 1
                self.take_loop()
                return
        else:
            since = 0.0
        served = responder.served
        if served != self.seen_served:
            self.seen_served = served
            self.seen_at = now
        park = not since and now - self.seen_at > PARK_AFTER
        if park or (not responder.inline and now >= self.back_off_until):
            with self.lock:
                if self.watcher == me and not (park and self.calls):
                    if park:
                        self.watcher = 0
                        self.quiet = True
                    responder.inline = not park

    def take(self, me: int) -> None:
        """TAKE_LOOP: this app thread runs the loop (until deposed in turn)."""
        self.leader = me
        self.take_loop()

"""The threads of a worker with `--threads N > 1`: whoever is free runs the loop (the baton),
and the loop's thread runs quick requests itself.

Why: handing every request from a loop thread to an app thread costs GIL hand-offs. Under
load the loop and the app threads are all runnable, and each system call one of them makes
(recv, send, epoll_wait) passes the GIL to another: about 16 futex calls per request, and a
hello-world 0.76x to 0.86x as fast as `--threads 1`, where the loop runs the app itself.

So the N + 1 threads (N may run the app at once, one always runs the loop) take turns
(leader/follower, with a lazy hand-off):

- The thread holding the baton runs the loop. A complete request, when an app thread is free
  and requests have been quick lately, it answers itself, as `--threads 1` does: no hand-off,
  no wake-up, one runnable thread.
- One free thread is the *standby*. While the holder answers a request, the standby looks
  every LOOK_EVERY seconds; once the answer has taken longer than RESCUE_AFTER (the app waits
  on a database, or computes), the standby takes the baton and runs the loop. The old holder
  finishes its response as an app thread would, then is free again. So the loop never stays
  away for more than about 3 ms (plus a GIL switch interval when the app computes):
  probes, reading, accepting and the heartbeat go on.
- A holder that must wait for a slow reader (more than the write-behind bound queued) hands
  the baton to the standby first: the holder never blocks.
- When the app waits (the holder measures one app call in SAMPLE_EVERY: its time off the
  CPU), or N requests are in the app already, or the request's body still streams in, the
  holder queues the request for a free thread instead: requests that wait must overlap, and
  the hand-off costs little next to a wait. After a while it tries again (BACKOFF).
- A standby with nothing to watch for a while (an idle worker) stops looking, and the next
  answer wakes it: an idle worker does not wake up every LOOK_EVERY.

Every decision is taken under one lock, held for a few statements and never around I/O or
the app; a thread is woken through its own parked lock (`Hand`), with its task set.
"""

from __future__ import annotations

import collections
import threading
import time
import traceback

# Seconds a holder may answer a request before the standby takes the loop. Short, because
# the threads are there for apps that wait (a database, another service): a request that
# waits longer than this overlaps with the next ones.
RESCUE_AFTER = 0.001
# Each look costs the standby a wake-up and a GIL round-trip (two context switches, about
# four futex calls) while requests flow: every 2 ms, 500 a second. So a holder is rescued
# between 1 and 3 ms into a long answer.
LOOK_EVERY = 0.002
IDLE_LOOKS = 25  # looks with no answer started (50 ms): the standby stops looking
# An app that waits (off the CPU: a database, a sleep) gains from threads even when its waits
# are shorter than RESCUE_AFTER: its requests should overlap, not queue behind the holder.
# One answer in SAMPLE_EVERY that the holder gives has its app call measured: wall time and
# the thread's CPU time. At each tick, when the app's calls spent more than WAITING of their
# time, and WAIT_MIN on average, off the CPU, requests go to free threads for BACKOFF ticks
# (doubling at each confirmation, up to BACKOFF_MAX), then the holder tries again. Only the
# app call is measured, not berth's own sends, so a slowed-down system call (strace, a busy
# kernel) does not count as the app waiting.
SAMPLE_EVERY = 8
SAMPLES_MIN = 4
WAITING = 0.5
WAIT_MIN = 50e-6
BACKOFF = 2
BACKOFF_MAX = 64

LEAD = "lead"  # a Hand's task: run the loop
WATCH = "watch"  # a Hand's task: be the standby


class Hand:
    """One thread of the crew: a lock it parks on (held while it runs), and its next task."""

    __slots__ = ("park", "task", "woken", "ident")

    def __init__(self) -> None:
        self.park = threading.Lock()
        self.park.acquire()
        self.task = None
        self.woken = False
        self.ident = 0


class Crew:
    def __init__(self, size: int, answer, log, on_thread_start) -> None:
        self.size = size  # at most this many requests in the app at once
        self.answer = answer  # (conn, req) -> None: an app thread's answer
        self.log = log
        self.on_thread_start = on_thread_start  # on each new thread (its counters)
        self.loop = None  # set by the worker: run_baton(), alive
        self.lock = threading.Lock()
        self.holder = 0  # ident of the thread running the loop
        # The holder's answer in progress, as [(started, ident)], or []. Whoever pops it owns
        # the end of that answer: the holder when it ends in time (it keeps the baton), the
        # standby when it rescues, the holder again when it hands the baton over. A list's
        # pop() is one atomic step, so the holder's fast path takes no lock.
        self.answering: list[tuple[float, int]] = []
        self.in_app = 0  # requests being answered, but for the holder's (in `answering`)
        self.work: collections.deque = collections.deque()  # waiting for a free thread
        self.free: list[Hand] = []  # parked threads, most recently parked last
        self.standby: Hand | None = None
        self.resting = False  # the standby waits without looking (nothing to watch)
        self.started = 0  # answers the holder started (the standby's sign of activity)
        self.inline_ok = True  # False: the app waits, requests go to free threads (`tick`)
        self.sampled = 0  # app calls measured since the last tick, their wall and off-CPU time
        self.sampled_wall = self.sampled_off = 0.0
        self.backoff = BACKOFF
        self.queue_ticks = 0  # ticks left before the holder tries answering again
        self.on_exit = None  # (code) -> None: a thread other than the main one ended the loop

    # -- the threads ---------------------------------------------------------------------------

    def start(self, threads: int) -> Hand:
        """Start `threads` threads; the calling (main) thread holds the baton. Returns the
        main thread's Hand, for `serve`."""
        main = Hand()
        main.ident = self.holder = threading.get_ident()
        for i in range(threads):
            threading.Thread(target=self._thread, args=(Hand(),), name=f"berth-app-{i}",
                             daemon=True).start()
        return main

    def _thread(self, hand: Hand) -> None:
        self.on_thread_start()
        try:
            self.serve(hand)
        except BaseException:  # noqa: BLE001 - the loop failed on this thread
            self.log.error("worker crashed:\n%s", traceback.format_exc())
            self.on_exit(1)
            return
        self.on_exit(0)  # this thread ended the loop: the process exits

    def serve(self, hand: Hand) -> None:
        """A thread's life: run the loop while holding the baton, answer what it is given,
        watch as the standby, or park. Returns on the thread that ended the loop."""
        hand.ident = threading.get_ident()
        lock = self.lock
        task = LEAD if self.holder == hand.ident else None
        if task is None:
            with lock:
                task = self._next(hand)
        while True:
            while task is None or task is WATCH:
                task = self._watch(hand) if task is WATCH else self._park(hand)
            if task is LEAD:
                self.loop.run_baton()  # returns when the baton is lost, or the loop ends
                if not self.loop.alive:
                    return
            else:
                conn, req = task
                try:
                    self.answer(conn, req)
                finally:
                    with lock:
                        self.in_app -= 1
            with lock:
                task = self._next(hand)

    def _next(self, hand: Hand):
        """(Under the lock.) A free thread's next task: queued work, else the standby's watch
        if there is none, else park."""
        if self.work:
            self.in_app += 1
            return self.work.popleft()
        if self.standby is None:
            self.standby = hand
            self.resting = False
            return WATCH
        self.free.append(hand)
        return None

    def _wake(self, hand: Hand, task) -> None:
        """(Under the lock.) Give a parked thread its task (None: just look again). The park
        lock is released once per wait, however many wakes come before the thread runs."""
        hand.task = task
        if not hand.woken:
            hand.woken = True
            hand.park.release()

    def _take(self, hand: Hand):
        """(Under the lock.) The task a wake gave, once the park lock is ours again."""
        if not hand.woken:
            return None
        hand.woken = False
        task, hand.task = hand.task, None
        return task

    def _park(self, hand: Hand):
        hand.park.acquire()
        with self.lock:
            return self._take(hand)

    def _watch(self, hand: Hand):
        """The standby: every LOOK_EVERY, take the loop from a holder whose answer has taken
        longer than RESCUE_AFTER; rest when nothing happens. Returns a task given meanwhile
        (work, or LEAD), or LEAD after a rescue."""
        lock = self.lock
        answering = self.answering
        seen = -1
        quiet = 0
        while True:
            if self.resting:
                got = hand.park.acquire()
            else:
                got = hand.park.acquire(timeout=LOOK_EVERY)
            with lock:
                if not got and hand.woken:  # woken just as the wait timed out
                    hand.park.acquire()
                task = self._take(hand)
                if task is not None:
                    return task  # (whoever gave it took this thread off standby)
                if self.standby is not hand:  # (not expected)
                    return self._next(hand)
                if answering:
                    since = answering[0][0]
                    if time.monotonic() - since > RESCUE_AFTER:
                        try:
                            answering.pop()
                        except IndexError:
                            continue  # the answer ended just now
                        self.in_app += 1  # the old holder goes on as an app thread
                        self._lead(hand)
                        return LEAD
                if self.started != seen:
                    seen = self.started
                    quiet = 0
                elif not answering:
                    quiet += 1
                    if quiet >= IDLE_LOOKS:
                        self.resting = True

    def _lead(self, hand: Hand) -> None:
        """(Under the lock.) `hand` takes the baton; a parked thread becomes the standby."""
        self.holder = hand.ident
        if self.standby is hand:
            self.standby = None
        if self.standby is None and self.free:
            self.standby = standby = self.free.pop()
            self.resting = False
            self._wake(standby, WATCH)

    # -- what the holder asks ------------------------------------------------------------------

    def begin_inline(self, now: float):
        """May the holder answer a request itself? Yes when a standby watches and a thread
        is free for it: returns the answer's token (for `end_inline`), else None. No lock:
        only the holder adds to these counts, and what other threads change meanwhile only
        makes room."""
        if not self.inline_ok or self.standby is None or self.in_app >= self.size:
            return None
        token = (now, threading.get_ident())
        self.answering.append(token)
        self.started += 1
        if self.resting:
            with self.lock:
                if self.resting and self.standby is not None:
                    self.resting = False
                    self._wake(self.standby, None)  # it looks again
        return token

    def end_inline(self, token: tuple[float, int]) -> bool:
        """The holder's answer is over; returns whether this thread still holds the baton.
        (Its token may be gone: taken by a rescue, or by this thread handing the baton over,
        and the new holder's may be there: only this one's own is removed, in one step.)"""
        try:
            self.answering.remove(token)
        except ValueError:  # the standby took the loop meanwhile (or was handed it)
            with self.lock:
                self.in_app -= 1  # (counted as an app thread's since)
            return False
        return True

    def measure(self) -> bool:
        """Whether the holder's answer just begun has its app call measured (`record`)."""
        return not self.started % SAMPLE_EVERY

    def record(self, wall: float, cpu: float) -> None:
        """One measured app call: its wall time and its thread's CPU time."""
        self.sampled += 1
        self.sampled_wall += wall
        if wall > cpu:
            self.sampled_off += wall - cpu

    def tick(self) -> str | None:
        """Twice a second (the worker's tick): should the holder answer requests itself?
        Returns a sentence when that changes (for the debug log)."""
        change = None
        if self.inline_ok:
            if self.sampled >= SAMPLES_MIN:
                off, wall = self.sampled_off, self.sampled_wall
                if off > WAITING * wall and off > WAIT_MIN * self.sampled:
                    self.inline_ok = False
                    self.queue_ticks = self.backoff
                    self.backoff = min(self.backoff * 2, BACKOFF_MAX)
                    change = (f"the app waits ({off / wall:.0%} of its calls off the CPU): "
                              f"requests go to app threads for {self.queue_ticks} ticks")
                else:
                    self.backoff = BACKOFF
        else:
            self.queue_ticks -= 1
            if self.queue_ticks <= 0:
                self.inline_ok = True
                change = "the loop's thread tries answering requests again"
        self.sampled = 0
        self.sampled_wall = self.sampled_off = 0.0
        return change

    def submit(self, conn, req) -> None:
        """Queue a request for a free thread (the holder calls this)."""
        with self.lock:
            if self.in_app < self.size:
                hand = self.free.pop() if self.free else None
                if hand is None and self.standby is not None:
                    hand = self.standby  # the holder is not answering: nothing to watch
                    self.standby = None
                if hand is not None:
                    self.in_app += 1
                    self._wake(hand, (conn, req))
                    return
            self.work.append((conn, req))

    def before_wait(self) -> None:
        """An answering thread is about to wait (for a slow reader): if it is the holder,
        it hands the baton to the standby (or a parked thread) first: the loop goes on."""
        answering = self.answering
        if not answering:
            return
        with self.lock:
            if not answering or answering[0][1] != threading.get_ident():
                return
            hand = self.standby
            if hand is None:
                hand = self.free.pop() if self.free else None
                if hand is None:
                    return  # every thread answers: the loop waits with this one
            answering.pop()
            self.in_app += 1  # this thread goes on as an app thread
            self._lead(hand)
            self._wake(hand, LEAD)

    def queued(self) -> int:
        return len(self.work)

    def busy(self) -> int:
        return self.in_app + len(self.answering)

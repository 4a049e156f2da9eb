"""The master: binds, forks workers, watches them through the scoreboard, stops on signals.

It is one selector loop: signals arrive through `signal.set_wakeup_fd`, worker readiness through
a pipe each worker writes its pid to once it serves, and twice a second it reads the scoreboard
(shared memory, no syscall) to check heartbeats, recycling wishes and memory. The master never
runs the app (with `--preload` it imports it once, before forking).

The same loop runs from start to exit through four phases: serving; in the shutdown delay
(SIGTERM: serving on while readiness says 503); draining (workers finish what is in flight);
stopping now (SIGINT/SIGQUIT). Each signal is handled in one place, `handle_signal`, which
knows the phase: once berth is shutting down, a signal that asks for more work (SIGHUP, SIGTTIN,
SIGTTOU) is logged as ignored with the reason, SIGUSR1 still reopens the logs, and SIGINT or
SIGQUIT still cut a drain short.

Every worker exit is logged once, with its real cause: the exit code or signal, or what berth
did to it and why (missed heartbeat, recycled), or the kernel's OOM killer, read from the
cgroup's own counter rather than guessed from a SIGKILL.

With `--reload` the master also watches the app's source files (`berth/reloader.py`: the workers
report which files they imported through a pipe, an inotify fd or a once-a-second poll says
which changed) and starts a new generation of workers on a change. New code that does not
start (an import error, or any death before ready) never stops berth then: the workers already
serving keep serving, nothing is respawned, and the next change tries again. A SIGHUP reload
whose new generation does not start (an import error, or BOOT_FAILURES_MAX deaths before ready)
is held back the same way while the old generation serves (`start_failed`): a broken deploy
must not stop healthy workers. Only at first start, with nothing to keep serving, does berth
stop instead of respawning into the same failure.
"""

from __future__ import annotations

import collections
import gc
import math
import os
import random
import selectors
import signal
import socket
import sys
import time
from functools import partial

from berth import container, logconfig, proctitle, reloader
from berth.admin import AdminServer
from berth.children import (
    KILL_GRACE_QUICK,
    MASTER_SIGNALS,
    ExitReader,
    OrphanReaper,
    WorkerInfo,
    early_signals,
    send_signal,
    stacks_file,
    take_stacks,
)
from berth.hooks import ServerView, WorkerView, call_boot_hook, call_hook
from berth.logs import AccessLog, reopen_error_log, retarget_error_log
from berth.scoreboard import BOOTING, OUT_OF_SERVICE, RETIRING, Scoreboard, Slot
from berth.sizing import MAX_WORKERS, connection_bound, raise_open_files_limit
from berth.sockets import (
    create_listener,
    describe,
    sd_notify,
    systemd_listen_fds,
    v6only_binds,
)
from berth.statsd import SETTINGS as STATSD_SETTINGS
from berth.statsd import LogCounter, Statsd, StatsdTee
from berth.worker.process import EXIT_APP_LOAD_ERROR, Worker, private_memory

BOOT_FAILURES_MAX = 5  # workers dying before they are ready, within BOOT_FAILURE_WINDOW
BOOT_FAILURE_WINDOW = 60.0
STACKS_GRACE = 0.2  # a silent worker: seconds from the stack dump (SIGUSR2) to SIGABRT
ABORT_GRACE = 1.0  # and from SIGABRT to SIGKILL
TICK = 0.5
RSS_SAMPLES = 3  # consecutive samples over --max-worker-memory before a worker is recycled
# With app threads the loop never runs the app, but CPU-bound app threads hold the GIL and
# delay its heartbeat: measured 0.88 s between two beats (0.5 s nominal) with 4 threads each
# spinning for a second. So a threaded worker's loop gets at least this long, whatever the
# request --timeout; with --threads 1 the app runs on the loop and --timeout is the allowance.
THREADED_LOOP_ALLOWANCE = 5.0
OVERRAN = "retired: a request overran its deadline"
STOP_POLL = 0.05  # while workers stop: how often the loop looks for exits and the deadline
# A turn of the master's loop that raises (a defect of berth's) is logged with its traceback,
# and the loop goes on after a pause: the workers serve on. After MASTER_FAILURES turns in a
# row berth shuts down as on SIGTERM (readiness 503, the shutdown delay, in-flight requests
# finished within --graceful-timeout) and exits 1 (`turn_failed`).
MASTER_FAILURES = 5
MASTER_FAILURE_PAUSE = 0.1

# The master's phases. One loop runs through all of them; `handle_signal` says what each signal
# does in each, and `loop` what a turn does.
SERVING = "serving"
DELAYING = "in the shutdown delay"  # SIGTERM: serving on; readiness says 503
DRAINING = "draining"  # workers finish in-flight requests within --graceful-timeout
QUITTING = "stopping now"  # SIGINT/SIGQUIT, or a failure: workers stop at once
# Signals that ask for more work, once berth is shutting down: logged as ignored, and why.
IGNORED_WHILE_STOPPING = {
    signal.SIGHUP: "a reload would start workers only to stop them",
    signal.SIGTTIN: "the number of workers no longer changes",
    signal.SIGTTOU: "the number of workers no longer changes",
}


class Master:
    def __init__(self, cfg, log, load_app, reload_config=None, set_env=None):
        self.cfg = cfg
        self.log = log
        self.load_app = load_app
        self.reload_config = reload_config
        self.set_env = set_env  # (cfg): put cfg's --env in the environment workers inherit
        self.app = None
        self.listeners: list[socket.socket] = []
        self.workers: dict[int, WorkerInfo] = {}
        self.generation = 1
        self.announced = False
        self.phase = SERVING
        self.deadline = 0.0  # the end of the shutdown delay, or of the stop
        self.signals: collections.deque = collections.deque()
        self.boot_failures: collections.deque = collections.deque()
        # new code failed to start: why (as logged); no worker is started until the next
        # SIGHUP (or, under --reload, change)
        self.paused = ""
        self.exit_code = 0
        self.scoreboard = Scoreboard()
        self.info = container.detect()
        self.exits = ExitReader(self.info)
        self.orphans = OrphanReaper(log)
        self.age = 0  # workers started so far (Gunicorn's worker.age)
        self.memory_checked = False
        self.fewer_why = "SIGTTOU"  # why the count was lowered last (set_workers)
        self.server = ServerView(self)
        self.reload_reason = "reloaded (SIGHUP)"  # why the old generation is stopped
        self.code: reloader.CodeReloader | None = None  # --reload
        self.admin: AdminServer | None = None  # --admin-bind
        self.statsd = Statsd.from_config(cfg)  # --statsd-host
        if self.statsd is not None:
            log.addHandler(LogCounter(self.statsd))

    @property
    def stopping(self) -> bool:
        """Workers are being stopped: their exits are expected and none is started."""
        return self.phase in (DRAINING, QUITTING)

    @property
    def loop_allowance(self) -> float:
        if not self.cfg.timeout:
            return math.inf  # --timeout 0: no silent-loop check (as Gunicorn)
        if self.cfg.threads == 1:
            return self.cfg.timeout
        return max(self.cfg.timeout, THREADED_LOOP_ALLOWANCE)

    def is_silent(self, slot: Slot, now: float) -> bool:
        """The supervision rule: a worker past booting whose loop has not written its slot
        within `loop_allowance`. check_workers kills it; /livez counts it as dead."""
        return slot.state != BOOTING and now - slot.heartbeat > self.loop_allowance

    # -- start ------------------------------------------------------------------------------

    def run(self) -> int:
        cfg = self.cfg
        if not proctitle.set_title("master", cfg) and cfg.is_set("proc_name"):
            self.log.info("proc_name %r is not shown: process titles need setproctitle (%s)",
                          cfg.proc_name, proctitle.INSTALL_HINT)
        # the count is set first, before on_starting: Gunicorn's Arbiter.__init__ runs setup(),
        # whose `num_workers = cfg.workers` calls the hook, before start() calls on_starting
        call_hook(cfg, "nworkers_changed", self.server, cfg.workers, None)
        # --preload imports the app here, as Gunicorn's setup() does: before on_starting, and
        # before binding (an app that cannot load never takes the address)
        if cfg.preload_app:
            try:
                self.app = self.load_app()
            except BaseException:  # noqa: BLE001
                self.log.error("the app failed to load; stopping", exc_info=True)
                return EXIT_APP_LOAD_ERROR
            gc.collect()
            gc.freeze()  # keep the app's pages shared with the workers (no gc writes to them)
        call_hook(cfg, "on_starting", self.server)
        activated = systemd_listen_fds()
        if activated:  # systemd socket activation: its sockets, not --bind (as Gunicorn)
            for fd in activated:
                self.listeners.append(create_listener(f"fd://{fd}", cfg.backlog))
        else:
            v6only = v6only_binds(cfg.bind)
            for addr in cfg.bind:
                self.listeners.append(create_listener(addr, cfg.backlog, cfg.reuse_port,
                                                      cfg.umask, v6only=addr in v6only))
        # named once, while they are open: stop() closes them, and a worker's late "ready"
        # can still arrive after that
        scheme = "https" if cfg.certfile else "http"
        self.listener_names = ", ".join(describe(s, scheme) for s in self.listeners)
        if activated:
            self.log.info("systemd socket activation: serving the %d sockets systemd passed "
                          "(%s), not --bind", len(activated), self.listener_names)
        # (a socket systemd owns stays: its unit listens on it again at the next start)
        self.unix_paths = [] if activated else [
            s.getsockname() for s in self.listeners if s.family == socket.AF_UNIX]
        sd_notify("READY=1\nSTATUS=berth master booted")  # (as Gunicorn: once it listens)
        if cfg.admin_bind:
            self.admin = AdminServer(self, cfg.admin_bind)
        self.ready_r, self.ready_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.ready_r, False)
        if cfg.reload:
            self.code = reloader.CodeReloader(cfg, self.log)
        self.sig_r, self.sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.sig_w, warn_on_full_buffer=False)
        for sig in MASTER_SIGNALS:
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGWINCH, signal.SIG_IGN)  # docker run -it: terminal resizes
        self.log.info("berth master %d%s: %d workers x %d threads, %s; %s",
                      os.getpid(), " (PID 1)" if os.getpid() == 1 else "", cfg.workers,
                      cfg.threads, f"timeout {cfg.timeout:g} s" if cfg.timeout else
                      "timeout 0 (no deadline)", cfg.decisions.shutdown)
        before, after = raise_open_files_limit()
        if after != before:
            self.log.info("open files limit raised from %d to %d (the hard limit)", before, after)
        bound, line = connection_bound(cfg.worker_connections, after)
        if bound != cfg.worker_connections:
            cfg.set("worker_connections", bound, "auto")
            self.log.warning(line)
        else:
            self.log.info(line)
        if cfg.max_worker_memory:
            self.log.info("max worker memory %d MiB%s", cfg.max_worker_memory >> 20,
                          f" ({cfg.decisions.memory})" if cfg.decisions.memory else "")
        call_hook(cfg, "when_ready", self.server)
        for _ in range(cfg.workers):
            self.spawn()
        try:
            self.loop()
        finally:  # (whatever happened, no worker outlives the master)
            self.finish_stop()
        call_hook(self.cfg, "on_exit", self.server)
        return self.exit_code

    # -- the loop ---------------------------------------------------------------------------

    def loop(self) -> None:
        """From the first fork to the stop's end. A turn waits for an event and handles the
        signals that came (`wait_and_handle`), reaps, then does what the phase asks: serving
        and through the shutdown delay, check the workers and keep their count (and, serving,
        reload changed code); stopping, return once every worker is gone or the deadline has
        passed (`finish_stop` then kills what is left)."""
        self.sel = sel = selectors.DefaultSelector()
        sel.register(self.sig_r, selectors.EVENT_READ)
        sel.register(self.ready_r, selectors.EVENT_READ)
        for fd in self.code.fds() if self.code is not None else ():
            sel.register(fd, selectors.EVENT_READ)
        if self.admin is not None:
            self.admin.register(sel)
        next_tick = time.monotonic() + TICK
        failed = 0  # turns in a row that raised
        while True:
            try:
                next_tick = self.turn(next_tick)
            except Exception:  # noqa: BLE001 - a defect of berth's: the workers serve on
                failed += 1
                if self.turn_failed(failed):
                    return
                time.sleep(MASTER_FAILURE_PAUSE)  # (a turn failing before its wait: no spin)
                continue
            failed = 0
            if next_tick is None:
                return

    def turn_failed(self, failed: int) -> bool:
        """A turn raised, the `failed`th in a row: log it; at MASTER_FAILURES, shut down as on
        SIGTERM. What the turn would have done for the phase is done here, so that the delay
        and the drain end by their deadlines. Return whether the loop is over."""
        serving = self.phase == SERVING
        self.log.exception("internal error in the master's loop (%d turn%s in a row)%s", failed,
                           "s" if failed > 1 else "", "; the workers serve on" if serving else "")
        if failed >= MASTER_FAILURES and serving:
            self.log.error("the master's loop failed %d turns in a row: shutting down "
                           "(in-flight requests are finished), then exit 1", failed)
            self.exit_code = self.exit_code or 1
            self.begin_shutdown("internal errors")
        if self.stopping:
            try:  # (its bookkeeping first: the counts kept, the child_exit hook)
                self.reap()
            except Exception:  # noqa: BLE001 - logged with the turn that failed
                self.reap_plainly()
        return self.stopped(time.monotonic())  # (finish_stop kills the rest)

    def stopped(self, now: float) -> bool:
        """Every turn, a failed one too: end the shutdown delay at its deadline; whether the
        stop is over (every worker gone, or its deadline passed)."""
        if self.phase == DELAYING and now >= self.deadline:
            self.begin_stop(graceful=True)
        return self.stopping and (not self.workers or now >= self.deadline)

    def turn(self, next_tick: float) -> float | None:
        """One turn of the loop; return when the next tick is due, or None once stopped."""
        self.wait_and_handle(self.wait_time(next_tick))
        self.reap()
        now = time.monotonic()
        if self.admin is not None:
            self.admin.tick(now)
        self.advance_aborts(now)
        if self.stopped(now):
            return None
        if self.stopping:
            return next_tick
        if now >= next_tick:
            next_tick = now + TICK
            self.check_workers(now)
            if self.code is not None:
                self.code.tick(now)
        if (self.phase == SERVING and self.code is not None and self.code.due
                and now >= self.code.due):
            self.reload_code()
        self.keep_count()
        return next_tick

    def wait_time(self, next_tick: float) -> float:
        """How long the next wait may last: until the tick, the end of the shutdown delay or
        the moment --reload acts, whichever is first; while workers stop, STOP_POLL."""
        if self.stopping:
            return STOP_POLL
        until = next_tick
        if self.phase == DELAYING:
            until = min(until, self.deadline)
        elif self.code is not None and self.code.due:
            until = min(until, self.code.due)
        return max(0.0, until - time.monotonic())

    # -- signals ----------------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        self.signals.append(signum)

    @staticmethod
    def _drain(fd: int) -> None:
        try:
            while os.read(fd, 512):
                pass
        except BlockingIOError:
            pass

    def wait_and_handle(self, timeout: float) -> None:
        """Wait up to `timeout` for an event: a signal (its handler queued it and the wakeup
        fd woke the selector), a worker's readiness, --reload's fds, the admin listener's
        sockets (registered with their handler as data). Then handle every signal that came,
        in order, each in the phase the one before it left."""
        for key, events in self.sel.select(timeout):
            if key.data is not None:
                key.data(events)
            elif key.fd == self.sig_r:
                self._drain(self.sig_r)
            elif key.fd == self.ready_r:
                self.read_ready()
            elif self.code is not None:
                self.code.readable(key.fd, self.workers)
        while self.signals:
            self.handle_signal(self.signals.popleft())

    def handle_signal(self, sig: int) -> None:
        """What a signal does, in every phase. None is dropped silently: one that cannot act
        any more says so and why."""
        name = signal.Signals(sig).name
        if sig == signal.SIGCHLD:
            return  # the loop reaps after every wake-up
        if sig == signal.SIGTERM:
            if self.phase == SERVING:
                self.begin_shutdown()
            else:
                self.log.info("SIGTERM: berth is already shutting down (%s); nothing changes",
                              self.phase)
        elif sig in (signal.SIGINT, signal.SIGQUIT):
            if self.phase == QUITTING:
                self.log.info("%s: berth is already stopping now", name)
            else:  # serving, in the shutdown delay or draining: stop at once
                self.begin_stop(graceful=False, why=name)
        elif sig == signal.SIGUSR1:  # in every phase: workers write logs until they exit
            self.reopen_logs()
        elif sig == signal.SIGUSR2:
            self.log.info("SIGUSR2 is not used by berth (no binary upgrade); ignored")
        elif self.phase != SERVING:
            self.log.warning("%s ignored: berth is shutting down (%s), and %s", name,
                             self.phase, IGNORED_WHILE_STOPPING[sig])
        elif sig == signal.SIGHUP:
            self.reload()
        elif sig == signal.SIGTTIN:
            self.set_workers(min(self.cfg.workers + 1, MAX_WORKERS), "SIGTTIN")
        elif sig == signal.SIGTTOU:
            self.set_workers(max(self.cfg.workers - 1, 1), "SIGTTOU")

    def reopen_logs(self) -> None:
        """SIGUSR1: reopen the log files (logrotate moved them), here and in every worker."""
        self.log.info("SIGUSR1: reopening log files")
        reopen_error_log(self.cfg.errorlog)
        logconfig.reopen_files()
        for info in self.workers.values():
            send_signal(info.pid, signal.SIGUSR1)

    def set_workers(self, count: int, why: str) -> None:
        old = self.cfg.workers
        self.fewer_why = why  # (what keep_count's retirements name)
        if count != old:
            self.cfg.values["workers"] = count
            self.log.info("%s: %d workers", why, count)
            call_hook(self.cfg, "nworkers_changed", self.server, count, old)

    def active(self) -> list[WorkerInfo]:
        """Workers of the current generation that are not on their way out."""
        return [w for w in self.workers.values()
                if w.generation == self.generation and not w.stopping and not w.killed
                and not w.replaced]

    def keep_count(self) -> None:
        """Start or stop workers so that the current generation has --workers of them
        (none once berth stops, holds back new code that failed to start, or gave up)."""
        if self.stopping or self.paused or self.exit_code:
            return
        active = self.active()
        for _ in range(self.cfg.workers - len(active)):
            self.spawn()
        if len(active) > self.cfg.workers:
            for info in sorted(active, key=lambda w: w.started)[:len(active) - self.cfg.workers]:
                self.retire(info, f"fewer workers asked ({self.fewer_why})")

    # -- workers ----------------------------------------------------------------------------

    def spawn(self, replacing: WorkerInfo | None = None) -> WorkerInfo:
        slot = self.scoreboard.free_index({w.slot for w in self.workers.values()})
        self.scoreboard.clear(slot)  # (its stop word too: the last worker's may be set)
        self.scoreboard.write(slot, Slot(state=BOOTING, generation=self.generation,
                                         heartbeat=time.monotonic()))
        cfg = self.cfg
        max_requests = 0
        if cfg.max_requests:
            max_requests = cfg.max_requests + random.randint(0, cfg.max_requests_jitter)
        self.age += 1
        view = WorkerView(cfg, self.log, age=self.age, max_requests=max_requests,
                          sockets=self.listeners)
        call_hook(cfg, "pre_fork", self.server, view)
        sys.stdout.flush()
        sys.stderr.flush()
        stacks_fd = stacks_file()
        # Signals wait across the fork: one that reached the child before it had handlers of
        # its own ran the master's handler there and was lost (a SIGTERM just after a
        # replacement started: a worker that never drained). The child records them from its
        # first step (early_signals) for the worker's handlers.
        signal.pthread_sigmask(signal.SIG_BLOCK, MASTER_SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS)
            if stacks_fd >= 0:
                os.close(stacks_fd)
            raise
        if pid:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, MASTER_SIGNALS)
            view.pid = pid
            info = WorkerInfo(pid, slot, self.generation, time.monotonic(), view=view,
                              stacks_fd=stacks_fd)
            if replacing is not None:
                info.replacement_for = replacing.pid
            self.workers[pid] = info
            return info
        # the worker process
        try:
            early_signals()  # (before anything else: see there)
            signal.set_wakeup_fd(-1)
            for fd in (self.sig_r, self.sig_w, self.ready_r):
                os.close(fd)
            for other in self.workers.values():  # (O_CLOEXEC closes them only at an exec)
                if other.stacks_fd >= 0:
                    os.close(other.stacks_fd)
            if self.admin is not None:
                self.admin.close_in_child()
            load_app = self.load_app
            if self.code is not None:  # the worker reports the app's files to the master
                load_app = self.code.for_worker(load_app)
            view.pid = os.getpid()
            call_boot_hook(cfg, "post_fork", self.server, view)
            logconfig.after_fork()
            access_log = None
            if self.cfg.accesslog.lower() not in ("none", "off", ""):
                access_log = AccessLog(self.cfg.accesslog, self.cfg.access_log_format, self.log,
                                       log_format=self.cfg.log_format,
                                       overflow=self.cfg.log_overflow)
            access_log = logconfig.access_log_for(self.cfg, access_log)
            if self.statsd is not None:  # the worker's own socket; the master's is not used
                self.statsd.close()
                statsd = self.statsd.fresh()
                for handler in [h for h in self.log.handlers if isinstance(h, LogCounter)]:
                    self.log.removeHandler(handler)
                self.log.addHandler(LogCounter(statsd))
                access_log = StatsdTee(access_log, statsd)
            kind = Worker
            if self.cfg.worker_class == "asgi":
                from berth.asgi.worker import AsgiWorker as kind
            worker = kind(self.cfg, self.listeners, self.app, self.log, access_log,
                          self.ready_w, load_app, scoreboard=self.scoreboard,
                          slot=slot, generation=self.generation, max_requests=max_requests,
                          view=view, server=self.server, stacks_fd=stacks_fd)
            worker.run()
        except BaseException:  # noqa: BLE001 - the worker could not be set up: said, not silent
            try:
                self.log.exception("worker %d could not start", os.getpid())
                logconfig.drain()
            except BaseException:  # noqa: BLE001
                pass
        finally:
            os._exit(1)

    def read_ready(self) -> None:
        try:
            data = os.read(self.ready_r, 4096)
        except BlockingIOError:
            return
        for i in range(0, len(data) - 3, 4):
            info = self.workers.get(int.from_bytes(data[i:i + 4], "little"))
            if info is None:
                continue
            info.ready = True
            self.log.debug("worker %d ready", info.pid)
            if not self.memory_checked:
                self.memory_checked = True
                self.cap_workers_by_memory(info)
            if info.replacement_for:  # recycling: the old one stops now that this one serves
                old = self.workers.get(info.replacement_for)
                if old is not None and not old.stopping:
                    self.stop_worker(old, old.flags.pop() if old.flags else "recycled")
        if self.stopping:
            return  # a late "ready" during the stop: nothing to announce or finish
        if not self.announced:
            ready = [w for w in self.workers.values() if w.ready]
            if len(ready) >= self.cfg.workers:
                self.announced = True
                self.log.info("ready: %d workers serving %s", len(ready), self.listener_names)
        self.finish_reload()

    def cap_workers_by_memory(self, info: WorkerInfo) -> None:
        """Once the first worker serves, its own memory (USS) is known: never run more
        workers than the container's memory limit holds, all of them plus one replacement
        under 80% of it (sizing.MEMORY_HEADROOM). A configured count only gets a warning."""
        limit = self.info.memory_limit
        slot = self.scoreboard.read(info.slot)
        uss = slot.uss
        if not limit or not uss:
            return
        from berth.sizing import cap_for_memory, format_bytes, recycle_bound

        cfg = self.cfg
        master_uss = private_memory() if cfg.preload_app else 0
        count, line = cap_for_memory(limit, uss, cfg.workers, master_uss)
        if line is not None:
            if cfg.decisions.workers_auto:
                self.log.warning("%s", line)
                self.set_workers(count, "memory limit")
            else:
                self.log.warning("%s; --workers %d was set explicitly, so it is kept",
                                 line.replace(f"workers={count} (lowered", f"workers={count} "
                                              "(would be lowered", 1), cfg.workers)
        if cfg.sources.get("max_worker_memory") == "auto" and slot.rss:
            # the share, now that a worker's own memory and its RSS are known, for the count
            # that runs (compared with RSS: a fresh worker must not be over it)
            bound = recycle_bound(limit, cfg.workers, uss, slot.rss, master_uss)
            cfg.values["max_worker_memory"] = bound
            if bound:
                self.log.info("max worker memory %d MiB (auto: a worker's share for %d "
                              "workers + 1 replacement, plus the %s of its RSS it shares)",
                              bound >> 20, cfg.workers, format_bytes(max(0, slot.rss - uss)))
            else:
                self.log.warning("max worker memory: off (auto): a fresh worker's RSS, %s, "
                                 "is at its share of the memory limit already; recycling it "
                                 "would never end", format_bytes(slot.rss))

    def send_statsd(self) -> None:
        """Twice a second, with --statsd-host: the master's gauges and log counts."""
        statsd = self.statsd
        statsd.gauges["gunicorn.workers"] = len(self.workers)
        if self.cfg.enable_backlog_metric:
            from berth.admin import listen_queue

            queues = [listen_queue(s) for s in self.listeners]
            statsd.histograms["gunicorn.backlog"] = sum(q for q in queues if q is not None)
        statsd.flush()

    def check_workers(self, now: float) -> None:
        """Twice a second: heartbeats, recycling wishes, memory."""
        cfg = self.cfg
        if self.statsd is not None:
            self.send_statsd()
        for info in list(self.workers.values()):
            slot = self.scoreboard.read(info.slot)
            if info.killed or slot.pid != info.pid or slot.generation != info.generation:
                continue
            if self.is_silent(slot, now):
                self.abort(info, now - slot.heartbeat, slot)
                continue
            if slot.state == RETIRING and not info.replaced and not self.paused:
                if slot.app_exit:  # (Responder.app_exited)
                    self.replace(info, "retiring: the app raised SystemExit")
                else:
                    self.replace(info, f"recycled after {slot.served} requests (--max-requests)")
            elif slot.state == OUT_OF_SERVICE and not info.stopping and not info.replaced:
                # the worker put itself out of service (a request overran its deadline)
                info.replaced = True
                info.stopping = OVERRAN
                self.log.warning("worker %d: a request overran its deadline; starting its "
                                 "replacement (it finishes its other requests)", info.pid)
                if not self.paused:
                    self.spawn()
            if cfg.max_worker_memory and slot.rss and not info.replaced and not self.paused:
                info.rss_over = info.rss_over + 1 if slot.rss > cfg.max_worker_memory else 0
                # (one replacement at a time, whatever started it: the memory rule has
                # room for one)
                if info.rss_over >= RSS_SAMPLES and not any(
                        w.replaced for w in self.workers.values()):
                    self.replace(info, f"recycled: RSS {slot.rss >> 20} MiB over "
                                       f"--max-worker-memory {cfg.max_worker_memory >> 20} MiB")

    def advance_aborts(self, now: float) -> None:
        """Every turn, whatever the phase: a silent worker's SIGABRT once its stacks are
        written (`abort`), then its SIGKILL ABORT_GRACE after that."""
        for info in self.workers.values():
            if info.sigabrt_at and now >= info.sigabrt_at:
                send_signal(info.pid, signal.SIGABRT)
                info.sigabrt_at = 0.0
                info.abort_at = now + ABORT_GRACE
            elif info.abort_at and now >= info.abort_at:
                send_signal(info.pid, signal.SIGKILL)
                info.abort_at = 0.0

    def abort(self, info: WorkerInfo, silent: float, slot: Slot) -> None:
        """A worker whose loop went silent: dump every thread's stack (faulthandler, on
        SIGUSR2, into its stacks file: logged once it is reaped), give the worker_abort path a
        chance (SIGABRT), then SIGKILL."""
        doing = ""
        if slot.oldest_line:
            doing = (f" while serving {slot.oldest_line!r} for "
                     f"{time.monotonic() - slot.oldest_start:.1f} s")
        if slot.in_flight:
            doing += f" ({slot.in_flight} requests in flight)"
        info.killed = (f"killed by berth: its loop was silent for {silent:.1f} s "
                       f"(allowed {self.loop_allowance:g} s){doing}")
        self.log.error("worker %d: loop silent for %.1f s (allowed %g s)%s; dumping its "
                       "stacks, then killing it", info.pid, silent, self.loop_allowance, doing)
        send_signal(info.pid, signal.SIGUSR2)
        # SIGABRT at a later tick, once faulthandler has written the stacks (the master does
        # not wait for it here: its admin listener answers meanwhile)
        info.sigabrt_at = time.monotonic() + STACKS_GRACE
        if not info.replaced:  # (a retiring worker's replacement is on its way already)
            info.replaced = True
            if not self.paused:
                self.spawn()

    def replace(self, info: WorkerInfo, why: str) -> None:
        """Recycle: start the replacement; the old worker is stopped once it is ready."""
        info.replaced = True
        info.flags.add(why)
        self.log.info("worker %d: %s; starting its replacement first", info.pid, why)
        self.spawn(replacing=info)

    def retire(self, info: WorkerInfo, why: str) -> None:
        info.replaced = True
        self.stop_worker(info, why)

    def stop_worker(self, info: WorkerInfo, why: str) -> None:
        info.stopping = why
        self.scoreboard.ask_to_stop(info.slot)
        send_signal(info.pid, signal.SIGTERM)

    def reload(self) -> None:
        """SIGHUP: new configuration and app in new workers; the old ones drain once the new
        ones are ready, and serve on if the new ones do not start (`start_failed`). Binds and
        a --preload'ed app stay as they are (Gunicorn keeps the app too, but binds a changed
        --bind: berth warns that it takes effect at the next start)."""
        old = self.cfg
        if self.reload_config is not None:
            try:
                new = self.reload_config()
            except Exception as exc:  # noqa: BLE001 - keep serving with the old configuration
                self.log.error("SIGHUP: configuration not reloaded: %s", exc)
                return
            if list(new.bind) != list(self.cfg.bind):
                # (Gunicorn's reload listens on a changed address; berth's workers inherit
                # the master's listeners: said, not silently dropped)
                self.log.warning("SIGHUP: --bind %s takes effect at the next start; still "
                                 "listening on %s", " ".join(new.bind),
                                 " ".join(self.cfg.bind))
            new.values["bind"] = self.cfg.bind
            self.reload_error_log(new)
            if new.admin_bind != self.cfg.admin_bind:  # (the master's own listener, likewise)
                self.log.warning("SIGHUP: --admin-bind %s takes effect at the next start; the "
                                 "admin listener stays %s", new.admin_bind or "(none)",
                                 self.cfg.admin_bind or "off")
                new.values["admin_bind"] = self.cfg.admin_bind
            self.cfg = new
            # the memory cap and the automatic --max-worker-memory are worked out again for
            # the new configuration, at its first ready worker
            self.memory_checked = False
            proctitle.set_title("master", new)  # --name may have changed, as in Gunicorn
        if self.code is not None:
            if self.code.settings_of(self.cfg) != self.code.settings:
                self.log.warning("SIGHUP: the --reload settings take effect at the next start")
        self.paused = ""
        if [getattr(old, n) for n in STATSD_SETTINGS] != [getattr(self.cfg, n)
                                                           for n in STATSD_SETTINGS]:
            self.log.warning("SIGHUP: the StatsD settings (--statsd-host, --statsd-prefix, "
                             "--dogstatsd-tags) take effect at the next start")
        if logconfig.settings_of(old) != logconfig.settings_of(self.cfg):
            self.log.warning("SIGHUP: the logging configuration settings (logconfig_dict, "
                             "--log-config, --log-config-json, --log-syslog...) take effect at "
                             "the next start")
        # as Gunicorn's reload: setup() sets num_workers again, which calls the hook with the
        # new count and the one it replaces, even when they are equal; then on_reload
        call_hook(self.cfg, "nworkers_changed", self.server, self.cfg.workers, old.workers)
        call_hook(self.cfg, "on_reload", self.server)
        self.generation += 1  # keep_count() starts the new generation's workers
        self.reload_reason = "reloaded (SIGHUP)"
        self.log.info("SIGHUP: reloading: starting %d workers of generation %d",
                      self.cfg.workers, self.generation)

    def reload_error_log(self, new) -> None:
        """SIGHUP: a changed --error-logfile, --log-format or --log-level applies from now on,
        here and in the new workers, as Gunicorn's reload sets its error log up again (a
        logging configuration's own loggers keep theirs: those settings wait for the next
        start)."""
        old = self.cfg
        if (new.errorlog, new.log_format) != (old.errorlog, old.log_format):
            try:
                retarget_error_log(new.errorlog, new.log_format)
            except OSError as exc:
                self.log.error("SIGHUP: --error-logfile %s: %s; the error log stays %s",
                               new.errorlog, exc.strerror or exc, old.errorlog)
                new.values["errorlog"] = old.errorlog
                new.values["log_format"] = old.log_format
        if new.loglevel != old.loglevel and logconfig.current() is None:
            self.log.setLevel(new.loglevel.upper())  # (berth.error)

    def finish_reload(self) -> None:
        new = [w for w in self.workers.values() if w.generation == self.generation]
        old = [w for w in self.workers.values()
               if w.generation < self.generation and not w.stopping]
        if old and sum(1 for w in new if w.ready) >= self.cfg.workers:
            self.log.info("generation %d ready (%d workers); the %d old workers finish their "
                          "requests and stop", self.generation, self.cfg.workers, len(old))
            for info in old:
                self.stop_worker(info, self.reload_reason)

    def reload_code(self) -> None:
        """--reload: a watched file changed: a new generation, as SIGHUP starts one (the
        configuration is not read again); the old workers drain once it is ready."""
        what = self.code.take_changes()
        self.paused = ""
        self.generation += 1
        self.reload_reason = f"reloaded ({what} changed)"
        self.log.info("reload: %s changed; starting %d workers of generation %d", what,
                      self.cfg.workers, self.generation)

    # -- reaping ----------------------------------------------------------------------------

    def reap_plainly(self) -> None:
        """Reap the workers that exited, with none of `reap`'s bookkeeping (which may be what
        fails: `turn_failed`, `finish_stop`)."""
        for pid in list(self.workers):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                info = self.workers.pop(pid)
                if info.stacks_fd >= 0:
                    os.close(info.stacks_fd)

    def reap(self) -> None:
        for pid in list(self.workers):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if done:
                self.worker_exited(self.workers.pop(pid), status)
        self.orphans.reap(self.workers)

    def worker_exited(self, info: WorkerInfo, status: int) -> None:
        stacks = take_stacks(info)  # (dumped by `abort`; it is complete now that it exited)
        if stacks:
            self.log.error("worker %d: the stacks of its threads (faulthandler, on SIGUSR2):\n%s",
                           info.pid, stacks.rstrip("\n"))
        call_hook(self.cfg, "child_exit", self.server, info.view)
        if info.replacement_for and not info.ready:
            old = self.workers.get(info.replacement_for)
            if old is not None and not old.stopping:
                old.replaced = False  # recycling starts over with a new replacement
                old.flags.clear()
        last = self.scoreboard.read(info.slot)
        self.scoreboard.clear(info.slot)
        if self.admin is not None:  # its counts, read before the slot was cleared (first:
            self.admin.keep_counts(last)  # whatever follows, counters never go back)
        if not info.stopping and last.state == OUT_OF_SERVICE and last.over_deadline:
            info.stopping = OVERRAN
        how = self.exits.how(status, killed_by_berth=bool(info.killed))
        reason = info.killed or info.stopping
        if self.admin is not None:
            self.admin.worker_exited(info, how)
        if self.stopping:
            self.log.debug("worker %d %s", info.pid, how)
            return
        load_error = os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_APP_LOAD_ERROR
        if not info.ready and (load_error or not reason):
            self.start_failed(info, how, load_error)
        elif reason:
            self.log.info("worker %d exited: %s (%s)", info.pid, reason, how)
        else:
            self.log.warning("worker %d exited unexpectedly: %s", info.pid, how)
        if self.paused and self.code is None and not any(
                w.generation < self.generation for w in self.serving()):
            # a failed reload kept the old workers serving, and the last of them is gone:
            # waiting keeps nothing serving any more, so the new generation is tried again,
            # under the rule of a first start (it stops berth if it fails again)
            self.paused = ""
            self.log.warning("no worker of the old generation is left; starting generation %d "
                             "again", self.generation)

    def serving(self) -> list[WorkerInfo]:
        """The workers that have been ready and that berth is not stopping."""
        return [w for w in self.workers.values() if w.ready and not w.stopping and not w.killed]

    def start_failed(self, info: WorkerInfo, how: str, load_error: bool) -> None:
        """A worker died before it was ready: the app does not load, or the worker dies
        booting. Never respawn into the same failure. At first start berth stops (exit 4 with
        the traceback above; exit 1 once BOOT_FAILURES_MAX workers died within
        BOOT_FAILURE_WINDOW, since one may die of something passing). In a reload (SIGHUP),
        while older workers serve, the same failures are held back instead (`hold_back`): a
        broken deploy must not stop healthy workers. Under --reload, any failure is held
        back at once."""
        what = ("could not load the app (traceback above)" if load_error
                else f"{how} before it was ready")
        if info.generation != self.generation:  # superseded: nothing restarts its generation
            self.log.warning("worker %d of generation %d %s (generation %d is starting)",
                             info.pid, info.generation, what, self.generation)
            return
        if self.paused:
            self.log.info("worker %d %s", info.pid, what)
            return
        failure = f"worker {info.pid} {what}"
        if self.code is None and not load_error:
            self.log.warning("worker %d exited unexpectedly: %s", info.pid, how)
            now = time.monotonic()
            self.boot_failures.append(now)
            while self.boot_failures and now - self.boot_failures[0] > BOOT_FAILURE_WINDOW:
                self.boot_failures.popleft()
            if len(self.boot_failures) < BOOT_FAILURES_MAX:
                return  # keep_count starts another one
            failure = (f"{len(self.boot_failures)} workers died before becoming ready within "
                       f"{BOOT_FAILURE_WINDOW:.0f} s")
        older = [w for w in self.serving() if w.generation < info.generation]
        if self.code is None and not older:
            self.log.error("%s; stopping", failure)
            self.give_up(EXIT_APP_LOAD_ERROR if load_error else 1)
            return
        self.hold_back(failure, older)

    def hold_back(self, failure: str, older: list[WorkerInfo]) -> None:
        """New code does not start: the workers already serving keep serving, and no worker
        is started (no respawn loop, recycling waits: a new worker would load the same code)
        until the next SIGHUP or, under --reload, change (`paused`). `older`: the serving
        workers of older generations."""
        self.boot_failures.clear()  # (the next try counts its own)
        serving = self.serving()
        if serving:
            gens = sorted({w.generation for w in serving})
            now = (f"the {len(serving)} workers of generation "
                   f"{', '.join(map(str, gens))} keep serving")
        else:
            now = "no worker is serving"
        if self.code is not None:
            self.paused = (f"{failure}; {now}; waiting for the next change to start new "
                           "workers (--reload)")
        else:
            # the old workers run the configuration they were started with: supervise them
            # (and start the next try) by it, not by the one that came with the failed reload
            failed = self.cfg
            self.cfg = max(older, key=lambda w: w.generation).view.cfg
            if self.set_env is not None:  # (a worker started again gets the old --env too)
                self.set_env(self.cfg)
            proctitle.set_title("master", self.cfg)
            if self.cfg.workers != failed.workers:  # the count kept is the old one again
                call_hook(self.cfg, "nworkers_changed", self.server, self.cfg.workers,
                          failed.workers)
            self.paused = (f"SIGHUP: reload failed: {failure}; {now} with the old code and "
                           "configuration; no new worker is started until the next SIGHUP")
        self.log.error("%s", self.paused)

    # -- stopping ---------------------------------------------------------------------------

    def give_up(self, exit_code: int) -> None:
        """A failure berth cannot serve through (the app does not load, workers keep dying at
        boot): exit with `exit_code` and start no more workers. Stop at once, unless in the
        shutdown delay: then the delay and the drain go on as planned."""
        self.exit_code = exit_code
        if self.phase == SERVING:
            self.begin_stop(graceful=False)

    def begin_shutdown(self, why: str = "SIGTERM") -> None:
        """SIGTERM: serve on through --shutdown-delay (load balancers deregister us), then
        drain (see `begin_stop`)."""
        delay = self.cfg.shutdown_delay or 0.0
        self.scoreboard.set_shutting_down()  # readiness probes say 503 from now on
        self.log.info("%s: serving for %g s more (shutdown delay), then finishing "
                      "in-flight requests within %g s", why, delay, self.cfg.graceful_timeout)
        if delay > 0:
            self.phase, self.deadline = DELAYING, time.monotonic() + delay
        else:  # at once, before the loop reaps: a SIGTERM to the whole process group also
            self.begin_stop(graceful=True)  # stops the workers, and that is no failure

    def begin_stop(self, graceful: bool, why: str = "") -> None:
        """Graceful (DRAINING): workers take what waits in the kernel queue, stop accepting,
        finish in-flight requests within --graceful-timeout. Quick (QUITTING, also from
        DRAINING): they stop at once. The loop waits for them until the deadline."""
        if graceful:
            self.phase, sig, grace = DRAINING, signal.SIGTERM, self.cfg.graceful_timeout + 1.0
        else:
            self.log.info("%sstopping now", f"{why}: " if why else "")
            self.phase, sig, grace = QUITTING, signal.SIGQUIT, KILL_GRACE_QUICK
        self.deadline = time.monotonic() + grace
        for info in self.workers.values():
            self.scoreboard.ask_to_stop(info.slot)
            send_signal(info.pid, sig)
        for sock in self.listeners:  # the workers hold the listeners until they have drained
            if sock.family == socket.AF_UNIX and graceful:
                continue
            sock.close()

    def finish_stop(self) -> None:
        """After the loop: kill the workers still there, reap them, close and remove the
        listeners, reap the last orphans."""
        for info in self.workers.values():
            self.log.warning("worker %d did not stop in time; killing it", info.pid)
            send_signal(info.pid, signal.SIGKILL)
        while self.workers:
            try:
                self.reap()
            except Exception:  # noqa: BLE001 - logged by the loop already: no bookkeeping now
                self.reap_plainly()
            if self.workers:
                time.sleep(0.01)
        for sock in self.listeners:
            sock.close()
        for path in self.unix_paths:  # (a quick stop has closed their sockets already)
            try:
                os.unlink(path)
            except OSError:
                pass
        last = [partial(self.orphans.reap, self.workers)]
        if self.code is not None:
            last.append(self.code.close)
        if self.admin is not None:
            last.append(self.admin.close)
        for step in last:
            try:
                step()
            except Exception:  # noqa: BLE001 - the rest of the cleanup still runs
                self.log.exception("internal error while stopping")
        self.log.info("berth master %d: stopped", os.getpid())

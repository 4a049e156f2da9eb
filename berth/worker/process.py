"""A worker process's life: start, signals, heartbeat, deadline overruns, drain, exit.

`Worker.run()` is the worker's main. It loads the app (unless the master preloaded it), puts
together the loop (`loop.py`) and the Responder that runs the app (`app.py`), says "ready" to
the master, and runs the loop until the worker is told to stop or drains. With app threads
the loop may move to another thread (`berth/worker/baton.py`); the process then exits from
there (`take_loop`), and the main thread serves as an app thread meanwhile.

Twice a second the loop calls `tick`: the worker writes its scoreboard slot (the heartbeat the
master watches, with its state, counters and RSS: a memory store, no file), flushes the access
log, checks that its master still lives, and has the loop sweep its deadlines. A request whose
app is silent past `--timeout` on an app thread cannot be stopped: its stack is logged, it is
answered 504 (or its connection closed), and the worker takes itself out of service; the
master starts its replacement at once, and this worker finishes the rest and exits.
"""

from __future__ import annotations

import ctypes
import faulthandler
import gc
import importlib
import logging
import os
import resource
import signal
import sys
import threading
import time
import traceback

from berth import logconfig, proctitle
from berth.children import EARLY_SIGNALS
from berth.hooks import WorkerView, call_boot_hook, call_hook
from berth.http.framing import error_response
from berth.logs import WholeLineHandler, reopen_error_log
from berth.scoreboard import (
    BOOTING,
    BUSY,
    DRAINING,
    IDLE,
    OUT_OF_SERVICE,
    RETIRING,
    Scoreboard,
    Slot,
)
from berth.worker.app import Responder, request_line
from berth.worker.baton import Deposed
from berth.worker.loop import TICK, Loop, silent_since

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
EXIT_APP_LOAD_ERROR = 4  # as Gunicorn: the app could not be loaded; the master stops
# A SIGTERM not from the master (berth.scoreboard.ask_to_stop) drains the worker after this
# long, unless the master says meanwhile that it is shutting down (it got it too)
TERM_FROM_ELSEWHERE_WAIT = 1.0
CAPTURED_LINE_MAX = 64 * 1024  # bytes of a captured line without an end, per JSON record
BOOT_WARN_AFTER = 30  # seconds: an import still running is logged (--timeout's, unless it is 0)
# the signals a worker handles (`_on_signal`, then `on_signals`)
WORKER_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1)
CALL_APP = Responder.call_app.__code__  # the frame whose `resp` is a running app's response


_IMPORTLIB = os.path.dirname(importlib.__file__) + os.sep


def app_frames(stack: traceback.StackSummary) -> str:
    """A stack inside the app's import, formatted: the frames below berth's loader, without
    importlib's own (all of them if the loader is not on it)."""
    start = 0
    for i, frame in enumerate(stack):
        if frame.filename.endswith(os.path.join("berth", "loader.py")):
            start = i + 1
    frames = [f for f in stack[start:] if not f.filename.startswith(("<frozen ", _IMPORTLIB))]
    return "".join(traceback.format_list(frames)).rstrip()


class Worker:
    def __init__(self, cfg, listeners: list, app, log, access_log,
                 ready_fd: int | None, load_app=None, scoreboard: Scoreboard | None = None,
                 slot: int = 0, generation: int = 0, max_requests: int = 0,
                 view=None, server=None, stacks_fd: int = -1):
        self.cfg = cfg
        self.listeners = listeners
        self.app = app
        self.load_app = load_app
        self.log = log
        self.access_log = access_log
        self.ready_fd = ready_fd
        self.max_requests = max_requests
        self.alive = True
        self.ppid = os.getppid()
        self.drain_deadline = 0.0
        self.quick_stop = 0.0  # when a SIGINT or SIGQUIT came (the master kills at + 2 s)
        self.scoreboard = scoreboard
        self.slot = Slot(generation=generation, state=BOOTING)
        self.slot_index = slot
        self.statm = -1
        self.view = view if view is not None else WorkerView(cfg, log, pid=os.getpid())
        self.server = server
        self.stacks_fd = stacks_fd  # where its threads' stacks go on SIGUSR2 (-1: stderr)
        self.last_tick = self.max_tick_gap = 0.0
        self.term_from_elsewhere = 0.0  # when a SIGTERM not from the master came (on_signals)
        self.exit_hook_ran = False  # worker_exit: once, on exit or on abort
        self.orphaned = False  # the master is gone (tick): draining
        self.responder: Responder | None = None
        self.loop: Loop | None = None
        self.captured = False  # --capture-output as records (_capture_as_records)

    # -- start and exit ------------------------------------------------------------------------

    def run(self) -> None:
        """The worker's main: never returns (the process exits)."""
        code = 0
        try:
            self._setup_process()
            self.beat(BOOTING)  # booting (importing the app) does not count against --timeout
            if self.app is None:
                try:
                    self.app = self.load_watched()
                except BaseException:  # noqa: BLE001 - any failure to load is fatal
                    # the traceback goes to the error log, as Gunicorn's does (its file, one
                    # JSON record, syslog), never raw to stderr
                    self.log.error("worker %d: the app failed to load; stopping", os.getpid(),
                                   exc_info=True)
                    logconfig.drain()
                    os._exit(EXIT_APP_LOAD_ERROR)
            self.view.app = self.app
            self.view.booted = True
            call_boot_hook(self.cfg, "post_worker_init", self.view)
            self.app = self.view.app  # (the hook may have wrapped it: worker.wsgi = ...)
            self._assemble()
            # What is loaded now (the app's modules, routes, settings) lives as long as the
            # worker: frozen, the collector's full passes no longer walk it (a 3 to 4 ms pause
            # every few thousand Django requests, measured), and its pages are not written to.
            gc.collect()
            gc.freeze()
            self.slot.uss = private_memory()
            # (a SIGTERM during the ASGI lifespan startup may have begun the drain already)
            self.beat(self.slot.state if self.loop.draining else IDLE)
            self.last_tick = time.monotonic()
            if self.ready_fd is not None:
                os.write(self.ready_fd, os.getpid().to_bytes(4, "little"))
            try:
                self.loop.run(self.tick, time.monotonic)
                deposed = False
            except Deposed:
                deposed = True
            if deposed:  # an app thread runs the loop now: this one becomes one too
                # (outside the except: the Deposed and the loop frames it holds are let go)
                self.responder.serve()  # (never returns: take_loop's thread ends the process)
            self._after_loop()
        except BaseException:  # noqa: BLE001
            self.log.error("worker %d crashed:\n%s", os.getpid(), traceback.format_exc())
            code = 1
        finally:
            self.exit(code)

    def take_loop(self) -> None:
        """On an app thread: run the loop from now on (berth/worker/baton.py). Returns when
        this thread hands it over in turn; the process exits here when the loop ends."""
        code = 0
        try:
            self.loop.run(self.tick, time.monotonic)
            self._after_loop()
        except Deposed:
            return
        except BaseException:  # noqa: BLE001
            self.log.error("worker %d crashed:\n%s", os.getpid(), traceback.format_exc())
            code = 1
        self.exit(code)

    def exit(self, code: int) -> None:
        """The last counts, the worker_exit hook, the logs flushed; then the process ends."""
        try:
            if self.responder is not None:
                # the last counts reach the slot: the master adds them to its totals when it
                # clears the slot, so the metrics lose none of this worker's requests
                try:
                    self.beat()
                except Exception:  # noqa: BLE001 - exiting anyway
                    pass
            self.log.debug("worker %d: longest gap between heartbeats %.3f s (every %.1f s "
                           "when idle)", os.getpid(), self.max_tick_gap, TICK)
            self._worker_exit_hook()
            if self.access_log is not None:
                self.access_log.close()
            logconfig.drain()
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
        finally:
            os._exit(code)

    def _capture_output(self) -> None:
        """--capture-output: what the app prints (stdout and stderr, its subprocesses' too)
        goes to the error log: its file, or stderr. Gunicorn does it only for a file; berth
        also for stderr, because stdout carries the access log (whose own descriptor is not
        this one: see berth.logs.LineSink)."""
        if self.captured:
            return  # (records through pipes: a reopened file is the handler's own business)
        handlers = self.log.handlers
        fd = next((h.fd for h in handlers if isinstance(h, WholeLineHandler)), 2)
        if self.cfg.errorlog in ("-", ""):  # (Gunicorn would not capture: a logging
            logconfig.keep_std_streams()  # configuration's stdout handler stays on stdout)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        if (self.cfg.log_format == "json" and handlers
                and all(type(h) is WholeLineHandler for h in handlers)):
            self._capture_as_records(handlers)
            return
        os.dup2(fd, 1)
        if fd != 2:
            os.dup2(fd, 2)

    def _capture_as_records(self, handlers) -> None:
        """--capture-output with --log-format json: each line the app prints is one JSON
        record of the error log (INFO from stdout, ERROR from stderr, as wsgi.errors), not raw
        text among them. Its stdout and stderr become pipes (its subprocesses inherit them),
        read by a thread each; the handlers write to their own descriptor, never to 1 or 2."""
        for handler in handlers:
            if handler.fd in (1, 2):
                handler.fd = os.dup(handler.fd)
                os.set_inheritable(handler.fd, False)
        for target, level in ((1, logging.INFO), (2, logging.ERROR)):
            r, w = os.pipe2(os.O_CLOEXEC)
            os.dup2(w, target)  # (inheritable: the app's subprocesses write there too)
            os.close(w)
            threading.Thread(target=self._log_lines, args=(r, level),
                             name=f"berth-capture-{target}", daemon=True).start()
        self.captured = True

    def _log_lines(self, fd: int, level: int) -> None:
        """A captured stream's reader: a record per line (a line longer than
        CAPTURED_LINE_MAX is cut into records of that size)."""
        held = b""
        while True:
            try:
                data = os.read(fd, 65536)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if not data:
                if held:
                    self.log.log(level, "%s", held.decode("utf-8", "replace"))
                return
            lines = (held + data).split(b"\n")
            held = lines.pop()
            if len(held) > CAPTURED_LINE_MAX:
                lines.append(held)
                held = b""
            for line in lines:
                self.log.log(level, "%s", line.decode("utf-8", "replace"))

    def _setup_process(self) -> None:
        proctitle.set_title("worker", self.cfg)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
                    signal.SIGUSR1, signal.SIGCHLD, signal.SIGWINCH, signal.SIGTTIN,
                    signal.SIGTTOU):
            signal.signal(sig, signal.SIG_DFL)
        try:  # die with the master (Linux), checked by getppid() as well
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if os.getppid() != self.ppid:
            os._exit(0)
        self._sig_r, self._sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._sig_w, warn_on_full_buffer=False)
        self._signals: set[int] = set()  # received, not yet handled (see _on_signal)
        for sig in WORKER_SIGNALS:
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGWINCH, signal.SIG_IGN)
        # A silent worker: the master sends SIGUSR2 (every thread's stack, written by
        # faulthandler from C, so it works while Python code is stuck, to the stacks file the
        # master logs once the worker is gone: berth.children.stacks_file), then SIGABRT (the
        # worker_abort path, if the main thread still runs Python), then SIGKILL.
        faulthandler.register(signal.SIGUSR2, all_threads=True, chain=False,
                              file=self.stacks_fd if self.stacks_fd >= 0 else sys.stderr)
        signal.signal(signal.SIGABRT, self._on_abort)
        # the signals that came between the fork and these handlers (berth.children
        # early_signals): this worker's to handle now
        for sig in EARLY_SIGNALS:
            if sig in WORKER_SIGNALS:
                self._on_signal(sig, None)
        EARLY_SIGNALS.clear()
        if self.cfg.capture_output:
            self._capture_output()
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file on overlay disk
        try:
            self.statm = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self.statm = -1

    def load_watched(self):
        """load_app, watched: an import still running after --timeout (BOOT_WARN_AFTER when 0)
        is logged with where the main thread is, and again each time the wait doubles. It is
        not bounded (a model or a migration may take long), but a worker that never gets ready
        says why. (A SIGTERM meanwhile is handled once the app is loaded: the worker then
        serves what waits in the listen queue, and drains; the master kills it at the stop's
        deadline if the import is still running.)"""
        done = threading.Event()
        main = threading.get_ident()
        pid = os.getpid()

        def watch() -> None:
            waited, step = 0.0, float(self.cfg.timeout or BOOT_WARN_AFTER)
            while not done.wait(step):
                waited += step
                frame = sys._current_frames().get(main)
                where = app_frames(traceback.extract_stack(frame)) if frame else "?"
                self.log.warning("worker %d: still loading the app after %.0f s (not ready; "
                                 "loading is not bounded by --timeout); the main thread is "
                                 "at:\n%s", pid, waited, where)
                step = waited

        watcher = threading.Thread(target=watch, name="berth-load-watch", daemon=True)
        watcher.start()
        try:
            return self.load_app()
        finally:
            done.set()
            watcher.join()

    def _assemble(self) -> None:
        """The Responder that runs the app, and the loop that feeds it."""
        self.responder = responder = Responder(
            self.cfg, self.app, self.log, self.access_log, self.view,
            max_requests=self.max_requests, heartbeat_if_due=self.heartbeat_if_due,
            ready=self.ready, running=self.scoreboard.app_word(self.slot_index)
            if self.scoreboard is not None else None)
        self.loop = loop = Loop(self.cfg, self.listeners, self.log, responder,
                                signal_fd=self._sig_r, process=self)
        self.balance(loop)
        responder.loop = loop
        if responder.baton is not None:
            responder.baton.take_loop = self.take_loop
        loop.setup()
        responder.start()

    def balance(self, loop) -> None:
        """Balance the loop's accepts against its siblings' (berth.worker.admission), with
        one worker too: SIGTTIN may give it siblings later."""
        if self.scoreboard is not None:
            loop.balance_with(self.scoreboard.conn_words(), self.scoreboard.slots_in_use(),
                              self.slot_index)

    def retiring(self) -> None:
        """The loop stopped accepting for good: --max-requests, or the app's SystemExit (the
        master names the one it was)."""
        self.slot.app_exit = int(self.responder.app_exit)
        self.beat(RETIRING)

    def _after_loop(self) -> None:
        """The loop has stopped, the process is about to exit (another kind of worker has
        more to finish here)."""

    # -- signals -------------------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        """Python runs this on the main thread only, at its next bytecode: the loop may run on
        another thread meanwhile (berth/worker/baton.py) and read the wakeup pipe first, so the
        pipe's bytes count too (on_signals); and while the app runs an event loop of its own on
        the main thread (uvloop), the wakeup bytes go to that loop, so this records the signal
        and wakes the loop itself. Each signal is handled once (`_signals` is a set)."""
        self._signals.add(signum)
        try:
            os.write(self._sig_w, b"\0")
        except OSError:
            pass

    def _worker_exit_hook(self) -> None:
        """The worker_exit hook, once, whichever way the worker ends (exit or abort)."""
        if self.exit_hook_ran:
            return
        self.exit_hook_ran = True
        self.view.alive = False
        call_hook(self.cfg, "worker_exit", self.server, self.view)

    def _on_abort(self, signum, frame) -> None:
        self.log.error("worker %d aborted: its loop was silent past --timeout", os.getpid())
        try:
            self._answer_stuck()
        except Exception:  # noqa: BLE001 - the exit must not wait on this
            self.log.exception("cannot answer the requests in flight")
        call_hook(self.cfg, "worker_abort", self.view)
        # Gunicorn's handle_abort ends in sys.exit(1), so its worker_exit hook runs after
        # worker_abort: a cleanup there (metrics flushed, files closed) runs for an aborted
        # worker too (the master's SIGKILL, ABORT_GRACE later, still bounds both hooks)
        self._worker_exit_hook()
        if self.access_log is not None:
            self.access_log.close(timeout=0.2)
        logconfig.drain(0.2)
        os._exit(1)

    def _answer_stuck(self) -> None:
        """An aborted worker, before it exits: each request whose app is running and has sent
        nothing gets the 504 a request over --timeout gets on an app thread, not a connection
        closed under it (Gunicorn's sync worker answers 500 there: its abort raises
        SystemExit in the app). The apps are found on the threads' stacks: the one the loop
        thread runs itself (--threads 1), whose Response only its frame holds, too."""
        loop = self.loop
        if loop is None:
            return
        running = []
        for frame in sys._current_frames().values():
            while frame is not None:
                if frame.f_code is CALL_APP:
                    resp = frame.f_locals.get("resp")
                    if resp is not None:
                        running.append(resp)
                    break
                frame = frame.f_back
        for resp in running:
            conn = resp.conn
            if resp.head_sent or conn.active is not resp.req or conn.closed:
                continue
            if not conn.lock.acquire(blocking=False):  # (held by the code this interrupted)
                continue
            try:
                if conn.out or conn.dead:
                    continue
                conn.dead = True
                resp.overrun = True
            finally:
                conn.lock.release()
            conn.send_last(error_response(504, date=self.responder.date))
            self.responder.concluded_overrun(resp)
            self.log.error("%s: answered 504, its app silent past --timeout in a worker "
                           "aborted", request_line(resp.req))

    def on_signals(self) -> None:
        """The signal pipe is readable: it holds one byte per signal, its number."""
        try:
            while data := os.read(self._sig_r, 512):
                self._signals.update(data)
        except BlockingIOError:
            pass
        self._signals.discard(0)  # (_on_signal's wake-up)
        while self._signals:
            sig = self._signals.pop()
            if sig == signal.SIGTERM:
                if self.scoreboard is None or self.scoreboard.stop_asked(self.slot_index):
                    self.start_drain()
                elif not self.term_from_elsewhere:
                    # not the master's: sent to the whole process group, the master has it
                    # too and keeps this worker serving through the shutdown delay. Unless
                    # the master says it is shutting down within a moment, it was this
                    # worker's alone (`kill <pid>`): then it drains (tick).
                    self.term_from_elsewhere = time.monotonic()
            elif sig in (signal.SIGINT, signal.SIGQUIT):
                call_hook(self.cfg, "worker_int", self.view)
                self.quick_stop = self.quick_stop or time.monotonic()
                self.loop.alive = False
            elif sig == signal.SIGUSR1:
                reopen_error_log(self.cfg.errorlog)
                if self.cfg.capture_output:  # the app's stdout and stderr: the new file too
                    self._capture_output()
                logconfig.reopen_files()
                if self.access_log is not None:
                    self.access_log.reopen()

    # -- heartbeat -----------------------------------------------------------------------------

    def ready(self) -> bool:
        """What the readiness probe says: not once the server or this worker stops."""
        return not (self.loop.draining or (self.scoreboard is not None
                                           and self.scoreboard.shutting_down))

    def heartbeat_if_due(self) -> None:
        """The app runs on the loop thread (inline) and made progress (a body part, a client
        that read): the loop is not silent, whatever the age of the response."""
        if time.monotonic() - self.slot.heartbeat >= TICK:
            self.beat()

    def beat(self, state: int | None = None) -> None:
        """Write this worker's scoreboard slot: the heartbeat and what the master reads."""
        if self.scoreboard is None:
            return
        slot = self.slot
        if state is not None:
            slot.state = state
        slot.pid = os.getpid()
        slot.heartbeat = time.monotonic()
        responder = self.responder
        if responder is not None:
            responder.publish(slot)
        slot.log_dropped = logconfig.dropped() + (
            self.access_log.dropped_total if self.access_log is not None else 0)
        if self.statm >= 0:
            try:
                slot.rss = int(os.pread(self.statm, 64, 0).split()[1]) * PAGE_SIZE
            except (OSError, IndexError, ValueError):
                pass
        self.scoreboard.write(self.slot_index, slot)

    def tick(self, now: float) -> None:
        """Twice a second, from the loop: Date, access log, parent, deadlines, heartbeat,
        and the end of a drain."""
        gap = now - self.last_tick
        if gap > self.max_tick_gap:
            self.max_tick_gap = gap  # how late the loop got to its heartbeat (logged at exit)
        self.last_tick = now
        responder = self.responder
        responder.date.refresh()
        if self.access_log is not None:
            self.access_log.flush()
        loop = self.loop
        if not self.orphaned and os.getppid() != self.ppid:
            self.orphaned = True
            # (as Gunicorn's workers do: the requests in flight are finished, within
            # --graceful-timeout, and the listeners closed at once; nothing is accepted again)
            self.log.info("worker %d: the master is gone; finishing the requests in flight, "
                          "then exiting", os.getpid())
            self.start_drain(take_backlog=False)  # (which ticks again: then draining)
            return
        if self.term_from_elsewhere and not loop.draining:
            if self.scoreboard.stop_asked(self.slot_index):
                self.term_from_elsewhere = 0.0  # (the master's SIGTERM came: on_signals)
            elif self.scoreboard.shutting_down:
                self.term_from_elsewhere = 0.0
                self.log.info("worker %d: SIGTERM to the process group; serving on until "
                              "the master asks (its shutdown delay)", os.getpid())
            elif now - self.term_from_elsewhere >= TERM_FROM_ELSEWHERE_WAIT:
                self.term_from_elsewhere = 0.0
                self.start_drain()
        in_flight, oldest = loop.sweep(now)
        slot = self.slot
        slot.in_flight = in_flight
        slot.oldest_start = oldest.dispatched if oldest is not None else 0.0
        slot.oldest_line = request_line(oldest) if oldest is not None else ""
        state = slot.state
        if state == IDLE or state == BUSY:
            state = BUSY if in_flight else IDLE
        self.beat(state)
        if loop.draining:
            busy = slot.busy_threads
            # (an app thread whose connection berth ended, e.g. past its deadline, is waited
            # for too: its iterable's close() runs when the app's blocked call returns)
            if not loop.open_conns() and not busy:  # (ASGI: with those accepted, not yet made)
                loop.alive = False
            elif now > self.drain_deadline:
                self.log.warning("worker %d: graceful timeout; closing %d connections, %d app "
                                 "threads still busy", os.getpid(), len(loop.conns), busy)
                loop.alive = False

    # -- stopping ------------------------------------------------------------------------------

    def overrun(self, conn, req, now: float) -> None:
        """A request's app was silent past --timeout on an app thread. Threads cannot be
        stopped: log its stack, answer 504 if nothing was sent (else just close), and put this
        worker out of service: the master starts a replacement at once, this worker finishes
        the rest."""
        self.slot.over_deadline += 1
        frame = sys._current_frames().get(conn.thread)
        stack = "".join(traceback.format_stack(frame)) if frame is not None else "(gone)\n"
        self.log.error("request over its deadline (silent for %.1f s, --timeout %g): %s; the "
                       "stack of its thread:\n%s", now - silent_since(req, now),
                       self.cfg.timeout, request_line(req), stack.rstrip())
        with conn.lock:
            resp = conn.response
            answer = (resp is None or not resp.head_sent) and not conn.out and not conn.dead
            conn.dead = True  # the app thread's writes fail from now on
            if answer and resp is not None:
                resp.overrun = True  # (its thread must not log the response it makes)
        if answer:
            conn.send_last(error_response(504, date=self.responder.date))
            if resp is not None:  # (None: the app is not called yet; its thread logs it)
                self.responder.concluded_overrun(resp)
        conn.close()
        if not self.loop.draining:
            self.start_drain(take_backlog=False, state=OUT_OF_SERVICE)

    def start_drain(self, take_backlog: bool = True, state: int = DRAINING) -> None:
        """Stop accepting (after taking what already waits in the backlog), finish what is in
        flight, close idle keep-alive connections, then exit."""
        loop = self.loop
        if loop.draining:
            return
        self.drain_deadline = time.monotonic() + self.cfg.graceful_timeout
        loop.stop_listening(take_backlog)
        self.slot.state = state
        self.tick(time.monotonic())


def private_memory() -> int:
    """Bytes of memory only this process uses (USS: private clean + dirty pages), read once
    when the worker is ready: with --preload the rest is shared with the master."""
    try:
        with open("/proc/self/smaps_rollup") as f:
            total = 0
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
            return total
    except (OSError, ValueError, IndexError):
        return 0

"""The master: binds, forks workers, restarts those that die, stops on signals.

It is one selector loop: signals arrive through `signal.set_wakeup_fd`, worker readiness through
a pipe each worker writes its pid to once it serves. The master never runs the app.
"""

from __future__ import annotations

import collections
import gc
import os
import selectors
import signal
import socket
import sys
import time
import traceback

from berth.logs import AccessLog
from berth.sockets import create_listener, describe
from berth.worker import EXIT_APP_LOAD_ERROR, Worker

BOOT_FAILURES_MAX = 5  # workers dying before they are ready, within BOOT_FAILURE_WINDOW
BOOT_FAILURE_WINDOW = 60.0
KILL_GRACE_QUICK = 2.0  # SIGINT/SIGQUIT: seconds before leftovers are killed


class Master:
    def __init__(self, cfg, log, load_app):
        self.cfg = cfg
        self.log = log
        self.load_app = load_app
        self.app = None
        self.listeners = []
        self.workers: dict[int, float] = {}  # pid -> start time
        self.ready_pids: set[int] = set()
        self.announced = False
        self.stopping = False
        self.signals: collections.deque = collections.deque()
        self.boot_failures: collections.deque = collections.deque()
        self.exit_code = 0

    def run(self) -> int:
        cfg = self.cfg
        for addr in cfg.bind:
            self.listeners.append(create_listener(addr, cfg.backlog))
        if cfg.preload_app:
            try:
                self.app = self.load_app()
            except BaseException:  # noqa: BLE001
                sys.stderr.write(traceback.format_exc())
                self.log.error("the app failed to load; stopping")
                return EXIT_APP_LOAD_ERROR
            gc.collect()
            gc.freeze()  # keep the app's pages shared with the workers (no gc writes to them)
        self.ready_r, self.ready_w = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.ready_r, False)
        self.sig_r, self.sig_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self.sig_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGCHLD,
                    signal.SIGHUP, signal.SIGUSR1, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGWINCH, signal.SIG_IGN)
        self.log.info("berth master %d: %d workers x %d threads%s", os.getpid(), cfg.workers,
                      cfg.threads, " (app preloaded)" if cfg.preload_app else "")
        for _ in range(cfg.workers):
            self.spawn()
        self.loop()
        return self.exit_code

    def _on_signal(self, signum, frame) -> None:
        self.signals.append(signum)

    def loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.sig_r, selectors.EVENT_READ)
        sel.register(self.ready_r, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select(1.0):
                if key.fd == self.sig_r:
                    try:
                        while os.read(self.sig_r, 512):
                            pass
                    except BlockingIOError:
                        pass
                else:
                    self.read_ready()
            self.reap()
            while self.signals:
                sig = self.signals.popleft()
                if sig == signal.SIGTERM:
                    self.stop(graceful=True)
                    return
                if sig in (signal.SIGINT, signal.SIGQUIT):
                    self.stop(graceful=False)
                    return
                if sig == signal.SIGUSR1:
                    for pid in self.workers:
                        self._kill(pid, signal.SIGUSR1)
                elif sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU):
                    self.log.info("signal %s is not supported yet; ignored",
                                  signal.Signals(sig).name)
            if self.stopping:
                self.stop(graceful=False)
                return
            while len(self.workers) < self.cfg.workers:
                self.spawn()

    def spawn(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            self.workers[pid] = time.monotonic()
            return
        # the worker process
        try:
            signal.set_wakeup_fd(-1)
            os.close(self.sig_r)
            os.close(self.sig_w)
            os.close(self.ready_r)
            access_log = None
            if self.cfg.accesslog.lower() not in ("none", "off", ""):
                access_log = AccessLog(self.cfg.accesslog, self.cfg.access_log_format, self.log)
            worker = Worker(self.cfg, self.listeners, self.app, self.log, access_log,
                            self.ready_w, self.load_app)
            worker.run()
        finally:
            os._exit(1)

    def read_ready(self) -> None:
        try:
            data = os.read(self.ready_r, 4096)
        except BlockingIOError:
            return
        for i in range(0, len(data) - 3, 4):
            pid = int.from_bytes(data[i:i + 4], "little")
            self.ready_pids.add(pid)
            self.log.debug("worker %d ready", pid)
        if not self.announced and len(self.ready_pids & self.workers.keys()) >= self.cfg.workers:
            self.announced = True
            self.log.info("ready: %d workers serving %s", len(self.workers),
                          ", ".join(describe(s) for s in self.listeners))

    def reap(self) -> None:
        for pid in list(self.workers):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0
            if not done:
                continue
            started = self.workers.pop(pid)
            was_ready = pid in self.ready_pids
            self.ready_pids.discard(pid)
            self.worker_exited(pid, status, started, was_ready)

    def worker_exited(self, pid: int, status: int, started: float, was_ready: bool) -> None:
        if os.WIFSIGNALED(status):
            how = f"was killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
        else:
            how = f"exited with code {os.waitstatus_to_exitcode(status)}"
        if self.stopping:
            self.log.debug("worker %d %s", pid, how)
            return
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_APP_LOAD_ERROR:
            self.log.error("worker %d could not load the app (traceback above); stopping", pid)
            self.exit_code = EXIT_APP_LOAD_ERROR
            self.stopping = True
            return
        self.log.warning("worker %d %s; starting a replacement", pid, how)
        if not was_ready:
            now = time.monotonic()
            self.boot_failures.append(now)
            while self.boot_failures and now - self.boot_failures[0] > BOOT_FAILURE_WINDOW:
                self.boot_failures.popleft()
            if len(self.boot_failures) >= BOOT_FAILURES_MAX:
                self.log.error("%d workers died before becoming ready within %.0f s; stopping",
                               len(self.boot_failures), BOOT_FAILURE_WINDOW)
                self.exit_code = 1
                self.stopping = True

    def _kill(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, graceful: bool) -> None:
        """SIGTERM: workers finish in-flight requests within --graceful-timeout. SIGINT and
        SIGQUIT: workers stop at once. Whatever is left then is killed."""
        self.stopping = True
        if graceful:
            self.log.info("SIGTERM: finishing in-flight requests (up to %.1f s)",
                          self.cfg.graceful_timeout)
            sig, grace = signal.SIGTERM, self.cfg.graceful_timeout + 1.0
        else:
            self.log.info("stopping now")
            sig, grace = signal.SIGQUIT, KILL_GRACE_QUICK
        for pid in self.workers:
            self._kill(pid, sig)
        deadline = time.monotonic() + grace
        while self.workers and time.monotonic() < deadline:
            self.reap()
            if self.workers:
                time.sleep(0.02)
        for pid in self.workers:
            self.log.warning("worker %d did not stop in time; killing it", pid)
            self._kill(pid, signal.SIGKILL)
        while self.workers:
            self.reap()
            if self.workers:
                time.sleep(0.01)
        for sock in self.listeners:
            if sock.family == socket.AF_UNIX:
                try:
                    os.unlink(sock.getsockname())
                except OSError:
                    pass
            sock.close()
        self.log.info("berth master %d: stopped", os.getpid())

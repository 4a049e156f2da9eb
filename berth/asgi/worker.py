"""The ASGI worker process: the WSGI worker's process room (`berth.worker.process.Worker`:
signals, heartbeat, scoreboard, --max-requests, drain) around an asyncio loop
(`berth.asgi.server.AsgiLoop`) instead of berth's epoll loop and app threads.

At start, after the app is imported: the event loop, the lifespan startup (a failure stops
berth: the app-load exit code), the watchdog of the loop (`berth.asgi.watchdog`). At the end:
the apps still running (HTTP and WebSocket) get their disconnect and are cancelled, then the
lifespan shutdown runs, all within --graceful-timeout: the drain keeps `reserve()` seconds of
it for these.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time

from berth.asgi.lifespan import Lifespan, LifespanFailed
from berth.asgi.server import AsgiLoop, new_event_loop
from berth.asgi.watchdog import LoopWatch
from berth.children import KILL_GRACE_QUICK
from berth.worker.process import EXIT_APP_LOAD_ERROR, WORKER_SIGNALS, Worker


def asgi3(app):
    """An ASGI 2 app (a class: instance per scope, then awaited with receive and send) as an
    ASGI 3 callable; an ASGI 3 app as it is."""
    if inspect.isclass(app) and not hasattr(app, "__await__"):  # (Uvicorn's test)
        async def adapter(scope, receive, send):
            await app(scope)(receive, send)

        return adapter
    return app


class AsgiWorker(Worker):
    lifespan: Lifespan | None = None
    starting = False  # the lifespan startup runs (the signals are read from its start)
    drain_asked: tuple | None = None  # a drain asked for meanwhile: (take_backlog, state, when)

    def reserve(self) -> float:
        """Seconds of --graceful-timeout kept for the end (disconnects, cancellations, lifespan
        shutdown): at most 1 s, so the requests get the rest (Uvicorn gives them all of it;
        berth keeps the end inside the stop window). The lifespan shutdown gets whatever the
        requests leave of the window, at least this."""
        return min(1.0, self.cfg.graceful_timeout / 4)

    def _assemble(self) -> None:
        cfg = self.cfg
        loop = new_event_loop(cfg.asgi_loop)
        asyncio.set_event_loop(loop)
        ssl_context = None
        if cfg.certfile:
            from berth.worker.tls import Contexts

            ssl_context = Contexts(cfg, self.log, time.monotonic())
        app = asgi3(self.app)
        self.loop = self.responder = server = AsgiLoop(
            cfg, self.listeners, self.log, app, self.access_log, signal_fd=self._sig_r,
            on_signals=self.on_signals, max_requests=self.max_requests,
            on_retire=lambda: self.beat_retiring(), ssl_context=ssl_context, loop=loop,
            view=self.view, ready=self.ready)
        self.balance(server)
        server.setup()
        server.watch = LoopWatch(loop, cfg.loop_block_warn, self.log)
        server.watch.start()
        for sig in WORKER_SIGNALS:  # (the loop's own wake-up: uvloop takes the wakeup fd)
            loop.add_signal_handler(sig, self._on_async_signal, sig)
        self.lifespan = Lifespan(app, cfg.asgi_lifespan, self.log, cfg.timeout)
        self.starting = True
        try:
            server.state = loop.run_until_complete(self.lifespan.startup())
        except LifespanFailed as exc:
            self.log.error("worker %d: ASGI lifespan startup failed: %s; stopping",
                           os.getpid(), exc)
            os._exit(EXIT_APP_LOAD_ERROR)
        self.starting = False
        if self.drain_asked is not None and server.alive:  # (not after a SIGINT, SIGQUIT)
            take_backlog, state, asked = self.drain_asked
            self.start_drain(take_backlog, state)
            self.drain_deadline -= time.monotonic() - asked  # (counted from the SIGTERM)

    def beat_retiring(self) -> None:
        from berth.scoreboard import RETIRING

        self.beat(RETIRING)

    def _on_async_signal(self, sig: int) -> None:
        self._signals.add(sig)
        self.on_signals()

    def start_drain(self, take_backlog: bool = True, state=None) -> None:
        if self.loop.draining:
            return
        if self.starting:  # the requests waiting in the listen queue need the app started
            self.drain_asked = self.drain_asked or (take_backlog, state, time.monotonic())
            return
        if state is None:
            super().start_drain(take_backlog)
        else:
            super().start_drain(take_backlog, state)
        self.drain_deadline -= self.reserve()

    def _after_loop(self) -> None:
        server = self.loop
        reserve = self.reserve()
        if self.quick_stop:  # SIGINT, SIGQUIT (a drain's too): before the master's kill
            end = self.quick_stop + KILL_GRACE_QUICK - 0.5
        elif self.drain_deadline:  # the end of --graceful-timeout (the deadline kept the
            end = self.drain_deadline + reserve  # reserve back)
        else:
            end = time.monotonic() + reserve
        server.shutdown(timeout=min(0.5, reserve / 2))
        left = max(0.5, end - time.monotonic())
        server.loop.run_until_complete(self.lifespan.shutdown(left))
        server.watch.stop()

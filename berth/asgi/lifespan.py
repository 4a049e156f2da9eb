"""The ASGI lifespan protocol (spec 2.0, with the state extension), run by each worker.

`--asgi-lifespan auto` (the default) runs it and takes an app that raises before it answers
`lifespan.startup` as one without lifespan support (a line at info: Django's ASGI handler and
plain apps raise on a scope type they do not know); `on` requires it: such an exception is a
startup failure; `off` skips it. A startup failure (`lifespan.startup.failed`, or an exception
with `on`) stops the worker with the app-load exit code, so the master stops berth with the
error instead of starting workers again and again.

`scope["state"]` is a dict the app fills at startup; each request's scope gets a shallow copy
of it (what FastAPI and Starlette read as `request.state`).
"""

from __future__ import annotations

import asyncio
import os

# the lifespan spec's own version (2.0), not the HTTP spec's (berth.asgi.protocol.ASGI)
LIFESPAN_ASGI = {"version": "3.0", "spec_version": "2.0"}


class LifespanFailed(Exception):
    """Startup failed: the message says why."""


class Lifespan:
    def __init__(self, app, mode: str, log, warn_after: float = 30.0):
        self.app = app
        self.warn_after = warn_after  # 0: never
        self.mode = mode
        self.log = log
        self.state: dict = {}
        self.supported = mode != "off"
        self.task: asyncio.Task | None = None
        self.inbox: asyncio.Queue | None = None
        self.started: asyncio.Future | None = None
        self.stopped: asyncio.Future | None = None
        self.error: str | None = None

    async def startup(self) -> dict | None:
        """Run the app's startup; return the state for request scopes (None: no lifespan)."""
        if not self.supported:
            return None
        loop = asyncio.get_running_loop()
        self.inbox = asyncio.Queue()
        self.started = loop.create_future()
        self.stopped = loop.create_future()
        scope = {"type": "lifespan", "asgi": LIFESPAN_ASGI, "state": self.state}
        self.task = loop.create_task(self._main(scope))
        await self.inbox.put({"type": "lifespan.startup"})
        await self._wait_for_startup()
        if self.started.done():
            failure = self.started.result()
            if failure is not None:
                raise LifespanFailed(failure)
            return self.state
        # the app returned or raised before it answered startup
        if self.error is not None and self.mode == "on":
            raise LifespanFailed(self.error)
        if self.error is not None:
            self.log.info("the ASGI app does not support lifespan (it raised on the lifespan "
                          "scope: %s); going on without it (--asgi-lifespan on requires it)",
                          self.error.splitlines()[-1] if self.error else "")
        elif self.mode == "on":
            raise LifespanFailed("the app returned without answering lifespan.startup")
        self.supported = False
        return None

    async def _wait_for_startup(self) -> None:
        """Until the app answers startup or ends. A startup still waiting after `warn_after`
        seconds (--timeout) is logged, and again each time the wait doubles: it is not bounded
        (a migration may take long), but a worker that serves nothing says why."""
        waited, step = 0.0, self.warn_after
        while True:
            done, _ = await asyncio.wait({self.started, self.task}, timeout=step or None,
                                         return_when=asyncio.FIRST_COMPLETED)
            if done:
                return
            waited += step
            self.log.warning("worker %d: the ASGI app's lifespan startup has not completed "
                             "after %.0f s; the worker serves no request until it does",
                             os.getpid(), waited)
            step = waited

    async def _main(self, scope: dict) -> None:
        try:
            await self.app(scope, self.inbox.get, self._send)
        except BaseException as exc:  # noqa: BLE001 - reported through startup()/shutdown()
            import traceback

            self.error = "".join(traceback.format_exception(exc)).rstrip()
            if self.started.done() and not self.stopped.done():
                self.stopped.set_result(self.error)

    async def _send(self, message: dict) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            if not self.started.done():
                self.started.set_result(None)
        elif kind == "lifespan.startup.failed":
            if not self.started.done():
                self.started.set_result(message.get("message") or "lifespan.startup.failed")
        elif kind == "lifespan.shutdown.complete":
            if not self.stopped.done():
                self.stopped.set_result(None)
        elif kind == "lifespan.shutdown.failed":
            if not self.stopped.done():
                self.stopped.set_result(message.get("message") or "lifespan.shutdown.failed")
        else:
            raise RuntimeError(f"unexpected lifespan message {kind!r}")

    async def shutdown(self, timeout: float) -> None:
        """Run the app's shutdown, for at most `timeout` seconds."""
        if not self.supported or self.task is None:
            return
        if self.task.done():
            self.log.warning("the ASGI app's lifespan ended before shutdown")
            return
        await self.inbox.put({"type": "lifespan.shutdown"})
        done, _ = await asyncio.wait([self.stopped, self.task], timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if not done:
            self.log.warning("lifespan shutdown did not finish within %.1f s", timeout)
            self.task.cancel()
        elif self.stopped.done() and self.stopped.result() is not None:
            self.log.error("lifespan shutdown failed: %s", self.stopped.result())

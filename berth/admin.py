"""The admin listener: liveness, readiness, metrics and status, answered by the master.

`--admin-bind ADDRESS` makes the master listen there too, and its selector loop (`Master.loop`)
serves it beside the signals and the workers' readiness pipe: accept without blocking, read one
request head (at most HEAD_LIMIT bytes, within DEADLINE seconds of the accept), answer from the
scoreboard, close (`Connection: close`). Nothing here waits for a worker or runs the app, so
it answers while every app thread is busy and while a worker hangs: what it reports is the
shared memory the master supervises with, read at the moment of the request.

Endpoints (GET and HEAD; another method on them is 405, another path 404):
  /livez    200 unless every worker is past its supervision allowance, by the rule that has
            the master kill a silent worker (`Master.is_silent`): a busy worker is alive, and
            so is a booting one. No worker at all (the master is starting them) is alive too:
            restarting the container would not start them sooner.
  /readyz   200 while berth serves (503 from SIGTERM on, the shutdown delay included) and at
            least one worker can take work: idle or busy (busy is still ready), not silent.
  /metrics  Prometheus text exposition, version 0.0.4 (`render_metrics`).
  /status   JSON: each worker, the listeners, a summary of the configuration, and why new
            workers are held back after a failed reload (`render_status`).

Counters never go back: the master hands each exiting worker's last slot to `keep_counts`,
which adds its counts to the retired totals as the slot is cleared (a worker publishes its
counts once more as it exits; one killed outright loses what it served since its last beat,
at most half a second).

The rendering functions are pure: they take a `View` (what `AdminServer.view()` reads from the
master and its scoreboard at one moment) and are tested with views made by hand.
"""

from __future__ import annotations

import functools
import json
import os
import selectors
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from berth import __version__
from berth.http.framing import DateCache
from berth.http.parser import REASONS, HttpError, RequestParser
from berth.scoreboard import (
    BOOTING,
    BUSY,
    DURATION_BOUNDS,
    IDLE,
    METHODS,
    N_BUCKETS,
    N_REQUESTS,
    STATE_NAMES,
    STATUS_CLASSES,
    Slot,
)
from berth.sockets import BindError, create_listener, describe

if TYPE_CHECKING:
    from berth.children import WorkerInfo
    from berth.master import Master

HEAD_LIMIT = 8192  # bytes of a request head: a probe or a scrape sends a few hundred
DEADLINE = 2.0  # seconds from accept to the client's close: read, answer, linger
MAX_CONNECTIONS = 32  # open at once; more wait in the listen queue
BACKLOG = 64

# Why a worker was replaced (berth_worker_restarts_total{reason}). Exits while berth stops and
# those of workers it had too many of (SIGTTOU) are not restarts.
RESTART_REASONS = (
    "silent",  # its loop was silent past --timeout: killed
    "deadline",  # a request overran --timeout: it put itself out of service
    "max_requests",  # recycled after --max-requests
    "max_memory",  # recycled: RSS over --max-worker-memory
    "reload",  # SIGHUP or --reload started a new generation
    "oom_killed",  # the kernel's OOM killer (the cgroup's count rose)
    "signal",  # killed by a signal berth did not send
    "exited",  # exited by itself (a crash, os._exit, the app could not be loaded)
)
_TCP_LISTEN = 10  # tcp_info.tcpi_state of a listening socket
_TCPI_UNACKED = struct.Struct("=I")  # at offset 24: for a listening socket, its accept queue


# -- what a request sees: the view ------------------------------------------------------------

@dataclass
class Seen:
    """One worker as the master knows it, with its slot as read now."""

    pid: int
    generation: int
    age: float  # seconds since the master forked it
    slot: Slot
    silent: bool  # past its supervision allowance (Master.is_silent)


@dataclass
class Totals:
    """Counts of workers that are gone, kept so that counters never go back."""

    requests: list[int] = field(default_factory=lambda: [0] * N_REQUESTS)  # see Slot
    durations: list[int] = field(default_factory=lambda: [0] * N_BUCKETS)
    duration_sum: float = 0.0
    queued: int = 0
    queued_seconds: float = 0.0
    loop_blocked: int = 0
    switches_slow_call: int = 0
    switches_app_waits: int = 0
    bytes_sent: int = 0
    over_deadline: int = 0
    log_dropped: int = 0
    restarts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESTART_REASONS, 0))

    def add(self, slot: Slot) -> None:
        for name in ("requests", "durations"):
            mine = getattr(self, name)
            for i, n in enumerate(getattr(slot, name)):
                mine[i] += n
        self.duration_sum += slot.duration_sum
        self.queued += slot.queued
        self.queued_seconds += slot.queued_seconds
        self.loop_blocked += slot.loop_blocked
        self.switches_slow_call += slot.switches_slow_call
        self.switches_app_waits += slot.switches_app_waits
        self.bytes_sent += slot.bytes_sent
        self.over_deadline += slot.over_deadline
        self.log_dropped += slot.log_dropped


@dataclass
class View:
    """What the endpoints answer from: the master and its scoreboard at one moment."""

    now: float
    workers: list[Seen]
    serving: bool  # the master's phase is "serving" (no SIGTERM, SIGINT or failure yet)
    phase: str
    allowance: float  # the silent-loop allowance (Master.loop_allowance), for the reason
    threads: int
    listeners: list[tuple[str, int | None]]  # (address, accept queue length or None)
    retired: Totals
    config: dict
    pid: int = 0
    uptime: float = 0.0
    held_back: str = ""  # why no new worker is started (a failed reload), as logged


# -- the endpoints: pure functions of a View --------------------------------------------------

def liveness(view: View) -> tuple[bool, str]:
    """(alive, reason)."""
    workers = view.workers
    if not workers:
        return True, "no worker yet: the master is starting them"
    alive = [w for w in workers if not w.silent]
    if alive:
        booting = sum(1 for w in alive if w.slot.state == BOOTING)
        more = f" ({booting} booting)" if booting else ""
        return True, f"{len(alive)} of {len(workers)} workers alive{more}"
    return False, (f"every worker ({len(workers)}) has been silent longer than its allowance "
                   f"({view.allowance:g} s); the master is replacing them")


def readiness(view: View) -> tuple[bool, str]:
    """(ready, reason)."""
    if not view.serving:
        return False, f"shutting down ({view.phase})"
    serving = [w for w in view.workers if w.slot.state in (IDLE, BUSY) and not w.silent]
    if serving:
        busy = sum(1 for w in serving if w.slot.state == BUSY)
        return True, f"{len(serving)} workers serving ({busy} busy)"
    counts: dict[str, int] = {}
    for w in view.workers:
        name = "silent" if w.silent else w.slot.state_name
        counts[name] = counts.get(name, 0) + 1
    states = ", ".join(f"{n} {name}" for name, n in counts.items()) or "no workers"
    return False, f"no worker can take requests ({states})"


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def render_metrics(view: View) -> str:
    """Prometheus text exposition 0.0.4: HELP and TYPE lines, then the samples."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples, suffix: str = "") -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        samples_of(name + suffix, samples)

    def samples_of(name: str, samples) -> None:
        for labels, value in samples:
            text = ",".join(f'{k}="{_label(v)}"' for k, v in labels)
            out.append(f"{name}{{{text}}} {_number(value)}" if text
                       else f"{name} {_number(value)}")

    def histogram(name: str, help_text: str, buckets, total: float, count: int,
                  kind: str = "histogram") -> None:
        family(name, kind, help_text, buckets, "_bucket")
        samples_of(f"{name}_sum", [((), total)])
        samples_of(f"{name}_count", [((), count)])

    slots = [w.slot for w in view.workers]
    retired = view.retired
    total = Totals(list(retired.requests), list(retired.durations), retired.duration_sum,
                   retired.queued, retired.queued_seconds, retired.loop_blocked,
                   retired.switches_slow_call, retired.switches_app_waits)
    for slot in slots:
        total.add(slot)
    classes = len(STATUS_CLASSES)
    family("berth_requests_total", "counter",
           "Responses sent, by method and status class (workers publish their counts twice "
           "a second).",
           [((("method", method), ("status_class", status_class)), total.requests[m * classes + c])
            for m, method in enumerate(METHODS) for c, status_class in enumerate(STATUS_CLASSES)])
    buckets, running = [], 0
    for bound, n in zip((*DURATION_BOUNDS, "+Inf"), total.durations):
        running += n
        buckets.append(((("le", bound if bound == "+Inf" else repr(bound)),), running))
    histogram("berth_request_duration_seconds",
              "Seconds from the app call to the response's end (requests berth answers "
              "itself, probes and rejected requests, count as 0).",
              buckets, total.duration_sum, running)
    histogram("berth_request_queue_seconds",
              "Seconds requests waited for an app thread (a request the loop thread runs "
              "itself does not wait and is not counted).", [], total.queued_seconds,
              total.queued, kind="summary")
    family("berth_request_queue_depth", "gauge", "Requests waiting for an app thread now.",
           [((), sum(s.queue_depth for s in slots))])
    family("berth_response_bytes_total", "counter", "Response body bytes sent.",
           [((), retired.bytes_sent + sum(s.bytes_sent for s in slots))])
    family("berth_requests_over_deadline_total", "counter",
           "Requests whose app was silent past --timeout (answered 504 or cut off).",
           [((), retired.over_deadline + sum(s.over_deadline for s in slots))])
    family("berth_log_lines_dropped_total", "counter",
           "Access-log lines dropped because the log was not read fast enough "
           "(--log-overflow drop).",
           [((), retired.log_dropped + sum(s.log_dropped for s in slots))])
    family("berth_requests_in_flight", "gauge", "Requests being answered now.",
           [((), sum(s.in_flight for s in slots))])
    busy = idle = 0
    for w in view.workers:
        taken = min(w.slot.busy_threads, view.threads)
        busy += taken
        if w.slot.state in (IDLE, BUSY) and not w.silent:
            idle += view.threads - taken
    family("berth_app_threads", "gauge",
           "App threads running a request (busy), and waiting for one in the workers that "
           "take requests (idle).", [((("state", "busy"),), busy), ((("state", "idle"),), idle)])
    states = dict.fromkeys(STATE_NAMES[1:], 0)  # (not "free")
    for slot in slots:
        states[slot.state_name] = states.get(slot.state_name, 0) + 1
    family("berth_workers", "gauge", "Worker processes, by scoreboard state.",
           [((("state", name),), n) for name, n in states.items()])
    family("berth_worker_restarts_total", "counter",
           "Workers replaced while serving, by reason.",
           [((("reason", reason),), n) for reason, n in retired.restarts.items()])
    family("berth_worker_heartbeat_age_seconds", "gauge",
           "Seconds since each worker's loop last wrote its slot.",
           [((("pid", w.pid),), round(max(0.0, view.now - w.slot.heartbeat), 3))
            for w in view.workers])
    family("berth_worker_rss_bytes", "gauge", "Resident memory of each worker.",
           [((("pid", w.pid),), w.slot.rss) for w in view.workers if w.slot.rss])
    if view.config.get("worker_class") == "asgi":
        family("berth_loop_blocked_total", "counter",
               "Times a callback held a worker's event loop longer than --loop-block-warn "
               "(each logged with the stack of the code that blocked it).",
               [((), total.loop_blocked)])
        family("berth_loop_busy_ratio", "gauge",
               "Each worker's event-loop thread's CPU share over its last half second: the "
               "ASGI worker's utilisation.",
               [((("pid", w.pid),), round(w.slot.loop_busy, 4)) for w in view.workers
                if w.slot.state not in (BOOTING,)])
        family("berth_websockets_open", "gauge", "WebSocket connections open, per worker.",
               [((("pid", w.pid),), w.slot.websockets_open) for w in view.workers])
    if view.config.get("worker_class") != "asgi":  # (0 with --threads 1: kept across a
        family("berth_app_thread_switches_total", "counter",  # SIGHUP that changes it)
               "Times a worker's loop thread, which runs quick app calls itself, sent the "
               "requests to its app threads for a while (1 s, doubling while it recurs): "
               "slow_call, an app call ran past 10 ms and an app thread took the loop over; "
               "app_waits, app calls waited off the CPU (a database, a sleep).",
               [((("reason", "slow_call"),), total.switches_slow_call),
                ((("reason", "app_waits"),), total.switches_app_waits)])
    family("berth_listen_queue", "gauge",
           "Connections waiting in each TCP listener's accept queue.",
           [((("listener", name),), n) for name, n in view.listeners if n is not None])
    return "\n".join(out) + "\n"


def redact(line: str) -> str:
    """A request line without its query string (or fragment): only the path is kept, which
    also drops an absolute-form target's scheme, host and credentials."""
    method, _, rest = line.partition(" ")
    target, sep, version = rest.partition(" ")
    if "://" in target:
        try:
            target = urlsplit(target).path or "/"
        except ValueError:
            target = "/"
    target = target.split("?", 1)[0].split("#", 1)[0]
    return f"{method} {target}{sep}{version}".rstrip()


def render_status(view: View) -> dict:
    """The /status document."""
    workers = []
    for w in sorted(view.workers, key=lambda w: w.pid):
        slot = w.slot
        oldest = None
        if slot.oldest_start:
            oldest = {"line": redact(slot.oldest_line) if slot.oldest_line else None,
                      "age_s": round(max(0.0, view.now - slot.oldest_start), 3)}
        workers.append({
            "pid": w.pid, "generation": w.generation,
            "state": "silent" if w.silent else slot.state_name,
            "age_s": round(w.age, 3), "requests_served": slot.served,
            "in_flight": slot.in_flight, "busy_threads": slot.busy_threads,
            "oldest_request": oldest, "rss_bytes": slot.rss,
            "heartbeat_age_s": round(max(0.0, view.now - slot.heartbeat), 3),
        })
        if view.threads > 1 and view.config.get("worker_class") != "asgi":
            workers[-1]["app_thread_switches"] = {"slow_call": slot.switches_slow_call,
                                                  "app_waits": slot.switches_app_waits}
        if view.config.get("worker_class") == "asgi":
            workers[-1].update(loop_busy=round(slot.loop_busy, 4),
                               loop_blocked=slot.loop_blocked,
                               websockets_open=slot.websockets_open)
    live, live_reason = liveness(view)
    ready, ready_reason = readiness(view)
    return {
        "berth": __version__, "pid": view.pid, "uptime_s": round(view.uptime, 3),
        "phase": view.phase,
        "live": {"ok": live, "reason": live_reason},
        "ready": {"ok": ready, "reason": ready_reason},
        "held_back": view.held_back or None,
        "workers": workers,
        "listeners": [{"address": name, "listen_queue": n} for name, n in view.listeners],
        "config": view.config,
    }


def render_status_html(status: dict) -> str:
    """/status for a browser: the same facts as a table, rendered here and refreshed every
    second by the page itself (no JavaScript). Every value is escaped."""
    from html import escape

    def cell(value) -> str:
        return f"<td>{escape('' if value is None else str(value))}</td>"

    rows = []
    for w in status["workers"]:
        oldest = w["oldest_request"] or {}
        request = oldest.get("line") or ("running" if oldest else "")
        age = f"{oldest['age_s']:.1f} s" if oldest else ""
        rows.append("<tr>" + "".join(cell(v) for v in (
            w["pid"], w["generation"], w["state"], f"{w['age_s']:.0f} s", w["requests_served"],
            w["in_flight"], w["busy_threads"], request, age, f"{w['rss_bytes'] >> 20} MiB",
            f"{w['heartbeat_age_s']:.1f} s")) + "</tr>")
    listeners = "".join(f"<li>{escape(str(item['address']))}: {item['listen_queue']} waiting"
                        "</li>" for item in status["listeners"])
    config = ", ".join(f"{escape(str(k))} {escape(str(v))}" for k, v in status["config"].items())
    head = ("pid", "generation", "state", "age", "served", "in flight", "busy threads",
            "oldest request", "its age", "RSS", "heartbeat")
    held = f"<p><strong>{escape(status['held_back'])}</strong></p>" if status["held_back"] else ""
    return (
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">"
        "<meta http-equiv=\"refresh\" content=\"1\"><title>berth status</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left}"
        "</style></head><body>"
        f"<h1>berth {escape(status['berth'])}, master {status['pid']}</h1>"
        f"<p>{escape(status['phase'])}; up {status['uptime_s']:.0f} s; live: "
        f"{escape(status['live']['reason'])}; ready: {escape(status['ready']['reason'])}</p>"
        f"{held}<table id=\"workers\"><thead><tr>" + "".join(f"<th>{h}</th>" for h in head) +
        "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
        f"<h2>Listeners</h2><ul>{listeners}</ul><h2>Configuration</h2><p>{config}</p>"
        "</body></html>\n")


def restart_reason(info: WorkerInfo, how: str) -> str | None:
    """Why an exited worker was replaced (RESTART_REASONS), from what the master recorded
    (`WorkerInfo.killed`, `.stopping`: the words of its log line) and how it ended; None
    for a worker berth had too many of."""
    from berth.master import OVERRAN

    why = info.stopping
    if info.killed:
        return "silent"
    if why == OVERRAN:
        return "deadline"
    if "--max-requests" in why:
        return "max_requests"
    if "--max-worker-memory" in why:
        return "max_memory"
    if why.startswith("reloaded"):
        return "reload"
    if "fewer workers" in why:
        return None
    if "OOM killer" in how:
        return "oom_killed"
    if how.startswith("killed by signal"):
        return "signal"
    return "exited"


def listen_queue(sock: socket.socket) -> int | None:
    """Connections waiting in a TCP listener's accept queue: TCP_INFO's `tcpi_unacked` (for a
    listening socket the kernel reports its accept queue there, and the backlog in
    `tcpi_sacked`). None for a unix socket, a closed one, or when the kernel does not say."""
    if sock.fileno() < 0 or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except OSError:
        return None
    if len(info) < 28 or info[0] != _TCP_LISTEN:
        return None
    return _TCPI_UNACKED.unpack_from(info, 24)[0]


# -- HTTP: one request per connection ---------------------------------------------------------

def response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
             head_only: bool = False, date: DateCache | None = None,
             extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    reason = REASONS.get(status) or {200: "OK", 404: "Not Found",
                                     405: "Method Not Allowed"}.get(status, "Error")
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}",
             f"Content-Length: {len(body)}", "Cache-Control: no-store", "Connection: close"]
    lines.extend(f"{k}: {v}" for k, v in extra)
    head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
    head += (date.suffix if date is not None else b"") + b"\r\n"
    return head if head_only else head + body


class _Conn:
    __slots__ = ("sock", "deadline", "parser", "received", "out", "answered")

    def __init__(self, sock: socket.socket, deadline: float):
        self.sock = sock
        self.deadline = deadline
        self.parser = RequestParser(limit_request_line=2048, limit_request_fields=50,
                                    limit_request_field_size=HEAD_LIMIT,
                                    body_buffer_size=HEAD_LIMIT)
        self.received = 0
        self.out = b""  # what is left to send
        self.answered = False  # then: sending `out`, or waiting for the client's close


class AdminServer:
    """The admin listener of one master: its socket, its connections, the retired totals."""

    def __init__(self, master: Master, address: str):
        self.master = master
        self.address = address
        try:
            self.sock = create_listener(address, BACKLOG, umask=master.cfg.umask)
        except BindError as exc:
            raise BindError(f"--admin-bind: {exc}") from None
        self.sock.setblocking(False)
        self.path = self.sock.getsockname() if self.sock.family == socket.AF_UNIX else None
        scheme = "https" if master.cfg.certfile else "http"
        self.listeners = [(describe(s, scheme), s) for s in master.listeners]
        self.name = describe(self.sock)
        self.conns: dict[int, _Conn] = {}
        self.sel: selectors.BaseSelector | None = None
        self.accepting = False
        self.retired = Totals()
        self.started = time.monotonic()
        self.date = DateCache()
        self.routes = {b"/livez": self.livez, b"/readyz": self.readyz,
                       b"/metrics": self.metrics, b"/status": self.status}

    # -- the master's side: its loop, its workers, its exit ---------------------------------

    def register(self, sel: selectors.BaseSelector) -> None:
        """Serve from the master's selector: each registration's data is its handler."""
        self.sel = sel
        self._accepting(True)
        self.master.log.info("admin listener on %s: /livez /readyz /metrics /status", self.name)

    def tick(self, now: float) -> None:
        """Every turn of the master's loop (at least twice a second): close the connections
        past their deadline, and accept again once there is room."""
        for conn in [c for c in self.conns.values() if now >= c.deadline]:
            if not conn.answered:
                try:
                    conn.sock.send(response(408, b"request head timed out\n"))
                except OSError:
                    pass
            self._close(conn)
        if not self.accepting and len(self.conns) < MAX_CONNECTIONS and self.sel is not None:
            self._accepting(True)

    def keep_counts(self, last: Slot) -> None:
        """A worker is gone: keep its counts (its slot as it was before it was cleared)."""
        self.retired.add(last)

    def worker_exited(self, info: WorkerInfo, how: str) -> None:
        """A worker is gone: count why, if it was a restart."""
        if self.master.stopping:
            return
        reason = restart_reason(info, how)
        if reason is not None:
            self.retired.restarts[reason] += 1

    def close(self) -> None:
        for conn in list(self.conns.values()):
            self._close(conn)
        self._accepting(False)
        self.sock.close()
        if self.path:
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def close_in_child(self) -> None:
        """In a freshly forked worker: drop its copies of the sockets (the master's stay
        open; the shared selector is not touched)."""
        for conn in self.conns.values():
            conn.sock.close()
        self.sock.close()

    # -- connections ------------------------------------------------------------------------

    def _accepting(self, on: bool) -> None:
        if on == self.accepting or self.sel is None:
            return
        self.accepting = on
        if on:
            self.sel.register(self.sock, selectors.EVENT_READ, self._on_accept)
        else:
            self.sel.unregister(self.sock)

    def _on_accept(self, mask: int) -> None:
        while len(self.conns) < MAX_CONNECTIONS:
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # (out of descriptors: the tick tries again)
                self.master.log.warning("admin listener: accept failed: %s", exc)
                self._accepting(False)
                return
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic() + DEADLINE)
            self.conns[sock.fileno()] = conn
            self.sel.register(sock, selectors.EVENT_READ, functools.partial(self._on_io, conn))
        self._accepting(False)  # full: the rest wait in the listen queue

    def _on_io(self, conn: _Conn, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self._read(conn)
        if mask & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
            self._send(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)  # the client closed (after our answer, or before it)
            return
        if conn.answered:
            return  # lingering: whatever else it sends is dropped
        conn.received += len(data)
        try:
            if conn.received > HEAD_LIMIT:
                raise HttpError(431, "request head too large")
            conn.parser.feed(data)
        except HttpError as err:
            detail = f"{err.detail}\n".encode("latin-1", "replace")
            self._answer(conn, response(err.status, detail, date=self.date))
            return
        parser = conn.parser
        req = parser.ready[0] if parser.ready else parser.current
        if req is None or parser.in_head or not req.method:
            return  # the head is not complete yet
        try:
            data = self.answer(req.method, req.url, req.headers.get("HTTP_ACCEPT", ""))
        except Exception:  # noqa: BLE001 - a defect of berth's: 500, and the master goes on
            self.master.log.exception("internal error answering %s on the admin listener",
                                      req.url.decode("latin-1"))
            data = response(500, b"internal error: see the server's log\n", date=self.date,
                            head_only=req.method == b"HEAD")
        self._answer(conn, data)

    def _answer(self, conn: _Conn, data: bytes) -> None:
        conn.answered = True
        conn.out = data
        self._send(conn)

    def _send(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if conn.out:
            self.sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE,
                            functools.partial(self._on_io, conn))
            return
        # All sent: say so (FIN), then wait for the client's close, reading what it may
        # still send, so that closing with unread bytes does not reset the connection
        # under a response it has not read yet.
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        self.sel.modify(conn.sock, selectors.EVENT_READ, functools.partial(self._on_io, conn))

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd < 0:
            return
        self.conns.pop(fd, None)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        conn.parser.close()

    # -- the endpoints ----------------------------------------------------------------------

    def answer(self, method: bytes, url: bytes, accept: str = "") -> bytes:
        """The whole response to `method url` (`accept`: the Accept header, for /status)."""
        self.date.refresh()
        head_only = method == b"HEAD"
        handler = self.routes.get(url.split(b"?", 1)[0])
        if handler is None:
            return response(404, b"not found: the admin listener serves /livez, /readyz, "
                                 b"/metrics and /status\n", head_only=head_only,
                            date=self.date)
        if method not in (b"GET", b"HEAD"):
            return response(405, b"only GET and HEAD\n", date=self.date,
                            extra=(("Allow", "GET, HEAD"),))
        if handler == self.status and "text/html" in accept:  # a browser
            status, content_type, body = self.status_page(self.view())
        else:
            status, content_type, body = handler(self.view())
        return response(status, body, content_type, head_only=head_only, date=self.date)

    def livez(self, view: View) -> tuple[int, str, bytes]:
        ok, reason = liveness(view)
        return (200 if ok else 503), "text/plain; charset=utf-8", f"{reason}\n".encode()

    def readyz(self, view: View) -> tuple[int, str, bytes]:
        ok, reason = readiness(view)
        return (200 if ok else 503), "text/plain; charset=utf-8", f"{reason}\n".encode()

    def metrics(self, view: View) -> tuple[int, str, bytes]:
        return 200, "text/plain; version=0.0.4; charset=utf-8", render_metrics(view).encode()

    def status(self, view: View) -> tuple[int, str, bytes]:
        return 200, "application/json", (json.dumps(render_status(view), indent=1) +
                                         "\n").encode()

    def status_page(self, view: View) -> tuple[int, str, bytes]:
        return 200, "text/html; charset=utf-8", render_status_html(render_status(view)).encode()

    def view(self) -> View:
        """The master and its scoreboard, now."""
        from berth.master import SERVING

        master = self.master
        cfg = master.cfg
        now = time.monotonic()
        seen = []
        for info in master.workers.values():
            slot = master.scoreboard.read(info.slot)
            seen.append(Seen(info.pid, info.generation, now - info.started, slot,
                             master.is_silent(slot, now)))
        return View(
            now=now, workers=seen, serving=master.phase == SERVING, phase=master.phase,
            allowance=master.loop_allowance, threads=cfg.threads,
            listeners=[(name, listen_queue(sock)) for name, sock in self.listeners],
            retired=self.retired, pid=os.getpid(), uptime=now - self.started,
            held_back=master.paused,
            config={"workers": cfg.workers, "threads": cfg.threads,
                    "worker_class": cfg.worker_class, "timeout": cfg.timeout,
                    "graceful_timeout": cfg.graceful_timeout,
                    "shutdown_delay": cfg.shutdown_delay, "keepalive": cfg.keepalive,
                    "max_requests": cfg.max_requests, "bind": list(cfg.bind or ()),
                    "admin_bind": self.name})

"""StatsD metrics with Gunicorn's names (`--statsd-host`, `--statsd-prefix`, `--dogstatsd-tags`),
sent over UDP (or a unix datagram socket) without ever blocking.

Gunicorn sends three datagrams per request from the request's own thread. berth records the
request (one list append, on the path of every request only when StatsD is on) and each
worker's loop sends what was recorded twice a second, several metrics per datagram (StatsD
and DogStatsD take newline-separated metrics): the same series and the same totals.
  - per request: `gunicorn.request.duration:<ms>|ms`, and the counters `gunicorn.requests`
    and `gunicorn.request.status.<code>` (summed over the half second: `:<n>|c|@1.0`);
  - `gunicorn.log.critical|error|warning|exception` counters from the error log;
  - the master: the gauge `gunicorn.workers` each tick, and, with `--enable-backlog-metric`,
    `gunicorn.backlog` (connections waiting in the listeners' accept queues), a histogram
    (`|h`) as Gunicorn sends it.
"""

from __future__ import annotations

import logging
import re
import socket
from collections import Counter

from berth.logs import AccessTee

MAX_DATAGRAM = 1432  # fits an Ethernet MTU with IP and UDP headers
SETTINGS = ("statsd_host", "statsd_prefix", "dogstatsd_tags")  # read at start (Statsd.fresh)


def parse_address(value: str):
    """`HOST:PORT`, `[IPv6]:PORT`, `tcp://` before either (Gunicorn's default port 8125 and
    host localhost when one is missing), or `unix:PATH` / a path: (family, address).
    ValueError for a port that is not 1 to 65535 (checked when the setting is read)."""
    value = value.strip()
    if value.startswith("unix:") or value.startswith("/"):
        path = value.removeprefix("unix:")
        if not path:
            raise ValueError("no path")
        return socket.AF_UNIX, path
    value = value.removeprefix("tcp://")
    if value.startswith("[") and value.endswith("]"):
        host, port = value, ""
    elif ":" in value:
        host, _, port = value.rpartition(":")
    else:
        host, port = value, ""
    host = host.strip("[]") or "localhost"
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"port {port!r}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return family, (host, int(port or 8125))


class Statsd:
    """What one process sends (see the module docstring). `record()` is called per request,
    `flush()` by the loop or the master's tick."""

    def __init__(self, address: str, prefix: str = "", tags: str = ""):
        self.settings = (address, prefix, tags)  # (each worker's own: `fresh`)
        family, self.address = parse_address(address)
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.prefix = re.sub(r"^(.+[^.]+)\.*$", "\\g<1>.", prefix)  # as Gunicorn's: one "."
        self.tail = f"|#{tags}" if tags else ""
        self.requests: list[tuple[str, float]] = []  # (status, seconds), appended per request
        # the list `lines()` took last, and how much of it was sent: an app thread that read
        # `self.requests` just before the swap appends to it after (see `lines`)
        self.taken: list[tuple[str, float]] = []
        self.taken_sent = 0
        self.counted: Counter = Counter()  # the same for `counts`: the one taken last, and
        self.counted_sent: Counter = Counter()  # what of it was sent
        self.counts: Counter = Counter()  # other counters (log levels)
        self.gauges: dict[str, float] = {}
        self.histograms: dict[str, float] = {}  # one value each per flush (gunicorn.backlog)

    @classmethod
    def from_config(cls, cfg) -> Statsd | None:
        if not cfg.statsd_host:
            return None
        return cls(cfg.statsd_host, cfg.statsd_prefix, cfg.dogstatsd_tags)

    def fresh(self) -> Statsd:
        """The same destination, prefix and tags, on a socket of its own (a new worker's).
        The settings are the master's, read at start: a SIGHUP does not change them (as in
        Gunicorn, whose StatsD logger is made once), so the master's gauges and the workers'
        requests never go to two places, and a reload without statsd_host does not leave
        its workers without the object they count into."""
        return Statsd(*self.settings)

    def record(self, status: str, seconds: float) -> None:
        self.requests.append((status, seconds))

    def lines(self) -> list[str]:
        # what other threads added to the list (and the counter) taken last, after it was
        # taken (as berth.logs.AccessLog.flush looks again): sent now, once
        late = self.taken[self.taken_sent:]
        taken, self.requests = self.requests, []
        sent = len(taken)
        requests = late + taken[:sent]
        self.taken, self.taken_sent = taken, sent
        late_counts = Counter(self.counted) - self.counted_sent  # (copied at once, in C)
        counted, self.counts = self.counts, Counter()
        self.counted, self.counted_sent = counted, Counter(counted)
        counts = self.counted_sent + late_counts
        gauges, self.gauges = self.gauges, {}
        histograms, self.histograms = self.histograms, {}
        p, tail = self.prefix, self.tail
        out = [f"{p}gunicorn.request.duration:{seconds * 1000:.3f}|ms{tail}"
               for _, seconds in requests]
        if requests:
            out.append(f"{p}gunicorn.requests:{len(requests)}|c|@1.0{tail}")
            by_status = Counter(status[:3] for status, _ in requests)
            out += [f"{p}gunicorn.request.status.{code}:{n}|c|@1.0{tail}"
                    for code, n in sorted(by_status.items())]
        out += [f"{p}{name}:{n}|c|@1.0{tail}" for name, n in sorted(counts.items())]
        out += [f"{p}{name}:{value:g}|g{tail}" for name, value in sorted(gauges.items())]
        out += [f"{p}{name}:{value:g}|h{tail}" for name, value in sorted(histograms.items())]
        return out

    def flush(self) -> None:
        """Send what was recorded: whole metrics, newline-joined, a datagram at a time.
        A full socket buffer or an absent server loses them, as UDP may."""
        datagram: list[str] = []
        size = 0
        for line in self.lines():
            if datagram and size + len(line) + 1 > MAX_DATAGRAM:
                self._send("\n".join(datagram))
                datagram, size = [], 0
            datagram.append(line)
            size += len(line) + 1
        if datagram:
            self._send("\n".join(datagram))

    def _send(self, text: str) -> None:
        try:
            self.sock.sendto(text.encode("ascii", "replace"), self.address)
        except OSError:
            pass

    def close(self) -> None:
        self.sock.close()


class LogCounter(logging.Handler):
    """Counts the error log's warnings, errors, criticals and exceptions for StatsD."""

    def __init__(self, statsd: Statsd):
        super().__init__(logging.WARNING)
        self.statsd = statsd

    def emit(self, record: logging.LogRecord) -> None:
        name = "exception" if record.exc_info and record.levelno >= logging.ERROR else \
            record.levelname.lower()
        self.statsd.counts[f"gunicorn.log.{name}"] += 1


class StatsdTee(AccessTee):
    """The worker's access log with StatsD beside it: each request is recorded for StatsD,
    then formatted for the access log if there is one. The request path is unchanged."""

    def __init__(self, access_log, statsd: Statsd):
        super().__init__(access_log)
        self.statsd = statsd
        record = statsd.record
        if access_log is None:
            def format(environ, status, sent, seconds, headers):
                record(status, seconds)
        else:
            access_format = access_log.format

            def format(environ, status, sent, seconds, headers):
                record(status, seconds)
                return access_format(environ, status, sent, seconds, headers)
        self.format = format

    def flush(self) -> None:
        super().flush()
        self.statsd.flush()

    def close(self, timeout: float = 2.0) -> None:
        super().close(timeout)
        self.statsd.flush()

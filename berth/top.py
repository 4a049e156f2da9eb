"""`berth top [URL] [options]`: the admin listener's /status, live in a terminal.

Three rooms, in this order below:
- what to show: `screen()` turns a /status document (or the reason there is none) into lines
  of text, and `frame()` turns lines into what redraws a terminal of a given size. Both are
  pure and tested with documents made by hand (`berth.admin.render_status`).
- where it comes from: `fetch()`, one GET of /status with `berth.check.get` (its deadline per
  step, unix sockets), the document or the one line that says why there is none.
- the terminal: `Terminal` puts it in cbreak mode (each key arrives at once and is not
  echoed; Ctrl-C stays a signal, so it interrupts a GET too) on the alternate screen, and
  `watch()` redraws every second, waiting for a key on stdin with select in between. Every
  way out (q, Ctrl-C, SIGTERM, SIGHUP, an exception) goes through one `finally` that gives the
  shell its screen and its terminal modes back; Ctrl-Z gives them back before stopping and
  takes the terminal again on `fg`.

When stdout is not a terminal (a pipe, a file, a script) there is nothing to redraw: one
snapshot as plain text and exit 0, or one line and exit 1 when the admin listener does not
answer. Like `berth check`, it imports the configuration and http.client, never the server.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import sys
import time

from berth.check import Target, get, parse_url, split_url, target_for_bind, why_no_answer
from berth.config import Config, ConfigError, parse_config

USAGE = """\
usage: berth top [URL] [options]

The admin listener's /status, redrawn every second: each worker (pid, generation, state,
age, requests served, in flight, busy threads, RSS, heartbeat age, and its oldest request
in flight with that request's age), the listeners' accept queues and the configuration.
q or Ctrl-C quits.

Without URL: /status on --admin-bind, read from the same options, environment and config
file as `berth` itself (0.0.0.0 and :: are reached on the loopback, unix:PATH over the
socket). URL: http://HOST[:PORT][/PATH] or http://unix:/PATH/TO.sock[:/PATH]; the path
defaults to /status.

While the admin listener does not answer (berth restarting), the view says why and tries
again every second. When stdout is not a terminal: one snapshot as plain text and exit 0,
or one line and exit 1 when there is no answer within --check-timeout seconds (default 5).
Exit 2 for a bad URL or configuration."""

STATUS_PATH = "/status"
REFRESH = 1.0  # seconds between two GETs, and the most one GET may take in the live view
# Cursor home, erase a line, erase below, the alternate screen on and off (the shell's screen
# comes back as it was), the cursor hidden and shown: the VT100/xterm sequences every
# terminal emulator in use understands.
HOME, ERASE_LINE, ERASE_BELOW = "\x1b[H", "\x1b[2K", "\x1b[J"
ENTER = "\x1b[?1049h\x1b[?25l"
LEAVE = "\x1b[?25h\x1b[?1049l"
QUIT_KEYS = b"qQ\x03"  # (\x03: Ctrl-C read as a key, should the terminal not make it SIGINT)

# A worker's columns: heading, right-aligned.
COLUMNS = (("PID", True), ("GEN", True), ("STATE", False), ("AGE", True), ("SERVED", True),
           ("IN-FLIGHT", True), ("BUSY", True), ("RSS", True), ("BEAT", True),
           ("OLDEST", True), ("REQUEST", False))

# Control characters (C0, DEL, C1) from the document are shown as "?": a request line comes
# from a client, and an escape sequence in it must not reach the terminal.
_SAFE = {c: "?" for c in (*range(0x20), *range(0x7F, 0xA0))}


def safe(value: object) -> str:
    return str(value).translate(_SAFE)


# -- what to show -----------------------------------------------------------------------------

def duration(seconds: float) -> str:
    """Compact: 0.4s, 42s, 12m, 5h, 3d (tenths only where they matter: request ages)."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def mib(n: int) -> str:
    return f"{n / (1 << 20):.0f}M" if n else "-"


def worker_row(w: dict) -> list[str]:
    oldest = w["oldest_request"]
    # (with --threads 1 the request running on the loop has no line, only an age)
    request = (oldest.get("line") or "running") if oldest else ""
    return [safe(v) for v in (
        w["pid"], w["generation"], w["state"], duration(w["age_s"]), w["requests_served"],
        w["in_flight"], w["busy_threads"], mib(w["rss_bytes"]),
        duration(w["heartbeat_age_s"]), duration(oldest["age_s"]) if oldest else "",
        request)]


def table(rows: list[list[str]]) -> list[str]:
    """Aligned columns; the last one (the request line) is not padded."""
    headings = [h for h, _ in COLUMNS]
    widths = [max(len(r[i]) for r in [headings, *rows]) for i in range(len(COLUMNS))]
    out = []
    for row in [headings, *rows]:
        cells = [cell.rjust(width) if right else cell.ljust(width)
                 for cell, width, (_, right) in zip(row[:-1], widths, COLUMNS)]
        out.append("  ".join([*cells, row[-1]]).rstrip())
    return out


def summary(doc: dict) -> list[str]:
    """The master, its probes, the listeners and the configuration: one line each."""
    def probe(name: str) -> str:
        answer = doc[name]
        return f"/{name}z {200 if answer['ok'] else 503}: {safe(answer['reason'])}"

    listeners = ", ".join(
        safe(item["address"]) + ("" if item["listen_queue"] is None
                                 else f" ({item['listen_queue']} waiting)")
        for item in doc["listeners"]) or "none"
    config = ", ".join(
        f"{safe(key)} {safe(', '.join(map(str, value)) if isinstance(value, list) else value)}"
        for key, value in doc["config"].items())
    return [f"berth {safe(doc['berth'])}, master {safe(doc['pid'])}: {safe(doc['phase'])}, "
            f"up {duration(doc['uptime_s'])}",
            f"{probe('live')}; {probe('ready')}",
            f"listeners: {listeners}", f"config: {config}"]


def totals(workers: list[dict]) -> str:
    return (f"{len(workers)} workers: {sum(w['requests_served'] for w in workers)} served, "
            f"{sum(w['in_flight'] for w in workers)} in flight, "
            f"{sum(w['busy_threads'] for w in workers)} busy threads, "
            f"{mib(sum(w['rss_bytes'] for w in workers))} RSS")


def screen(doc: dict | None, url: str, clock: str, error: str = "", last_answer: str = "",
           live: bool = True) -> list[str]:
    """The lines of one view: a title, then the document, or why there is none."""
    title = f"berth top  {safe(url)}  {clock}" + ("  (q or Ctrl-C: quit)" if live else "")
    if doc is None:
        since = f"; last answer at {last_answer}" if last_answer else ""
        return [title, "", safe(error), f"trying again every {REFRESH:g} s{since}"]
    try:
        workers = doc["workers"]
        return [title, *summary(doc), "", *table([worker_row(w) for w in workers]),
                "", totals(workers)]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # another /status
        return [title, "", f"not berth's /status document ({type(exc).__name__}: "
                           f"{safe(exc)[:80]})"]


def frame(lines: list[str], width: int, height: int) -> str:
    """What redraws a `width` x `height` terminal with `lines`: home, each line erased then
    written (clipped to the screen), and the rest of the screen erased. It never writes a
    newline on the last row, which would scroll the screen."""
    shown = [line[:width] for line in lines[:height]]
    text = HOME + "\r\n".join(ERASE_LINE + line for line in shown)
    if len(shown) < height:
        text += "\r\n" + ERASE_BELOW
    return text


# -- where it comes from ----------------------------------------------------------------------

def with_status_path(url: str) -> str:
    """A URL without a path gets /status (the admin listener serves nothing at /)."""
    _, sep, rest = url.partition("://")
    if not sep:
        return url  # (parse_url says what is wrong with it)
    if rest.startswith("unix:"):
        return url if ":" in rest[5:] else f"{url}:{STATUS_PATH}"
    return url if any(c in rest for c in "/?#") else url + STATUS_PATH


def target_of(url: str | None, cfg: Config) -> Target:
    """The /status to watch: URL, or else the one on --admin-bind."""
    if url is not None:
        return parse_url(with_status_path(url), "top")
    if not cfg.admin_bind:
        raise ConfigError("top: no admin listener: berth serves /status with --admin-bind "
                          "ADDRESS; give berth top that option (as berth runs with it) or "
                          "the URL of its /status")
    # (the admin listener speaks plain HTTP, with --certfile too)
    return target_for_bind(cfg.admin_bind, STATUS_PATH, tls=False, chdir=cfg.chdir)


def fetch(target: Target, timeout: float) -> tuple[dict | None, str]:
    """(the /status document, "") or (None, the one line that says why there is none)."""
    import http.client

    try:
        status, body, _ = get(target, timeout, agent="berth-top")
    except (OSError, http.client.HTTPException) as exc:
        return None, f"failed: {target.url}: {why_no_answer(exc, timeout)}"
    if status != 200:
        return None, f"failed: {target.url} {status}"
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("workers"), list):
        return None, f"failed: {target.url}: not berth's /status (a JSON document expected)"
    return doc, ""


# -- the terminal -----------------------------------------------------------------------------

class Stopped(Exception):
    """SIGTERM or SIGHUP: leave as for q, and exit 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@dataclasses.dataclass
class Terminal:
    """stdout (a terminal) and stdin's modes while berth top owns them."""

    out: int  # the file descriptor drawn on
    keys: int | None  # stdin, when it is a terminal (else only Ctrl-C quits)
    saved: list | None = None  # stdin's modes before
    inside: bool = False
    reading: bool = True  # False once stdin says end of file

    def enter(self) -> None:
        import termios
        import tty

        self.inside = True  # (first: a Ctrl-C from here on finds the way out)
        if self.keys is not None:
            self.saved = termios.tcgetattr(self.keys)
            tty.setcbreak(self.keys, termios.TCSANOW)
        self.write(ENTER)

    def leave(self) -> None:
        """The shell's screen and modes back; safe to call twice, and when the terminal is
        gone (SIGHUP)."""
        import termios

        if not self.inside:
            return
        self.inside = False
        try:
            self.write(LEAVE)
        except OSError:
            pass
        if self.keys is not None and self.saved is not None:
            try:
                termios.tcsetattr(self.keys, termios.TCSAFLUSH, self.saved)
            except termios.error:
                pass

    def write(self, text: str) -> None:
        data = text.encode(sys.stdout.encoding or "utf-8", "replace")
        while data:
            data = data[os.write(self.out, data):]

    def size(self) -> tuple[int, int]:
        try:
            width, height = os.get_terminal_size(self.out)
        except OSError:
            width = height = 0
        return width or 80, height or 24  # (a fresh pseudo-terminal says 0 x 0)

    def wait_for_quit(self, until: float) -> bool:
        """Wait until `until` (time.monotonic) for q or Ctrl-C: True when it came."""
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return False
            if self.keys is None or not self.reading:
                time.sleep(left)
                return False
            ready, _, _ = select.select([self.keys], [], [], left)
            if ready:
                try:
                    data = os.read(self.keys, 64)
                except OSError:  # (the terminal is gone: SIGHUP follows)
                    data = b""
                if not data:  # stdin closed: no more keys (Ctrl-C still quits)
                    self.reading = False
                elif any(key in QUIT_KEYS for key in data):
                    return True


def watch(target: Target) -> int:
    """The live view until q, Ctrl-C (exit 0), SIGTERM or SIGHUP (128 + its number)."""
    keys = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    term = Terminal(sys.stdout.fileno(), keys)

    def stop(signum, frame):
        raise Stopped(signum)

    def suspend(signum, frame):  # Ctrl-Z: the shell's terminal back, stop, then take it again
        term.leave()
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTSTP)  # (stopped here until SIGCONT)
        signal.signal(signal.SIGTSTP, suspend)
        term.enter()

    handlers = {signal.SIGTERM: stop, signal.SIGHUP: stop, signal.SIGTSTP: suspend}
    before = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    before[signal.SIGINT] = signal.getsignal(signal.SIGINT)
    code = 0
    try:
        term.enter()
        last_answer = ""
        while True:
            started = time.monotonic()
            doc, error = fetch(target, REFRESH)
            clock = time.strftime("%H:%M:%S")
            if doc is not None:
                last_answer = clock
            term.write(frame(screen(doc, target.url, clock, error, last_answer), *term.size()))
            if term.wait_for_quit(started + REFRESH):
                break
    except KeyboardInterrupt:
        pass
    except Stopped as exc:
        code = 128 + exc.signum
    finally:
        for sig in before:  # a second Ctrl-C must not cut the way out short
            signal.signal(sig, signal.SIG_IGN)
        term.leave()
        for sig, handler in before.items():
            signal.signal(sig, handler)
    return code


def snapshot(target: Target, timeout: float) -> int:
    """stdout is not a terminal: one view as plain text (0), or the line saying why not (1)."""
    doc, error = fetch(target, timeout)
    if doc is None:
        print(error, file=sys.stderr)
        return 1
    print("\n".join(screen(doc, target.url, time.strftime("%H:%M:%S"), live=False)))
    return 0


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(USAGE)
        return 0
    url, options = split_url(argv)
    try:
        cfg = parse_config(options, require_app=False)
        target = target_of(url, cfg)
    except ConfigError as exc:
        print(f"berth: error: {exc}", file=sys.stderr)
        return 2
    if not sys.stdout.isatty():
        return snapshot(target, cfg.check_timeout)
    return watch(target)

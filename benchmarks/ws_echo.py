#!/usr/bin/env python3
"""WebSocket echo of small messages: berth `-k asgi` against Uvicorn's `websockets`
implementation, on the same raw ASGI app (benchmarks/ws_echo_app.py), in the same run.

Run from the repository root:

    python benchmarks/ws_echo.py                          # 5 rounds x 5 s, 50 conns, 32 bytes
    python benchmarks/ws_echo.py --rounds 3 --duration 3 --server berth --server uvicorn-sansio

Method:

* Each round starts every server fresh on a free 127.0.0.1 port, pinned to one CPU
  (`taskset -c 1`: berth's master and worker alike), with 1 worker, and measures them one
  right after the other (the others idle); the client is pinned to the other CPU (`-c 0`).
* The client (this file with `--client`, in `--client-procs` processes) opens `--connections`
  WebSockets, no extension offered, and on each does request/response: one masked text frame
  of `--size` bytes, wait for the echo, the next. It is raw sockets on asyncio (uvloop when
  installed) with the frame built once: about 18 µs of client CPU per message, where a
  client on the `websockets` library (asyncio) spent 49 µs, more than the servers (40 to 80),
  and so measured itself. Every echo is checked.
* After `--warmup` seconds (not counted) messages are counted for `--duration` seconds. In the
  same window the server's CPU time (utime+stime of its process tree), the client's, and each
  CPU's busy time (/proc/stat) are read: a server below 90 % of its CPU while the client's CPU
  is above 90 % busy (with the client, or with other processes) is flagged `client-bound`
  (the ratio then says nothing about the servers), and CPU time taken by other processes on
  either CPU is shown (`others`). A run
  whose server was below 90 % of its CPU, or lost over 10 % of it to others, is `disturbed`;
  a round with a disturbed run is summarised apart, and `--until-quiet` repeats it.
* Rounds alternate the servers, their order rotated each round: on this shared VM a server's
  msg/s drifts by 20 % within a minute even when no other process runs, so the ratio of two
  runs seconds apart is steadier than either number. The report gives each server's median
  msg/s and CPU µs per message, and berth's ratio to each peer per round and of the medians.

Standard library, plus Uvicorn (and uvloop, httptools) for the peers; Linux only (/proc,
taskset).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT_S = 30.0
STOP_GRACE_S = 10.0
START_SLACK_S = 2.0  # from launching the clients to their first message: time to connect
BOUND_PCT = 90.0  # CPU use above which a process counts as saturated
QUIET_PCT = 10.0  # a run where other processes took more of the server's CPU is "disturbed"

UVICORN = [sys.executable, "-m", "uvicorn", "--host", HOST, "--port", "{PORT}",
           "--loop", "uvloop", "--http", "httptools", "--workers", "1", "--no-access-log",
           "--log-level", "warning", "--app-dir", str(BENCH_DIR)]
SERVERS = {
    "berth": [sys.executable, "-m", "berth", "-b", f"{HOST}:{{PORT}}", "-k", "asgi", "-w", "1",
              "--access-logfile", "none", "--chdir", str(BENCH_DIR), "ws_echo_app:app"],
    "uvicorn": [*UVICORN, "--ws", "websockets", "ws_echo_app:app"],
    # not in the default run: Uvicorn's newer implementations, for reference
    "uvicorn-sansio": [*UVICORN, "--ws", "websockets-sansio", "ws_echo_app:app"],
    "uvicorn-wsproto": [*UVICORN, "--ws", "wsproto", "ws_echo_app:app"],
}
DEFAULT_SERVERS = ["berth", "uvicorn"]


# -- frames ------------------------------------------------------------------------------------


def client_frame(opcode: int, payload: bytes) -> bytes:
    """A whole masked frame (clients must mask, RFC 6455 §5.3)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    whole = (mask * (n // 4 + 1))[:n]
    return head + mask + bytes(a ^ b for a, b in zip(payload, whole))


def server_frame(opcode: int, payload: bytes) -> bytes:
    """The frame a server sends for `payload` (unmasked; the echo expected, byte for byte)."""
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x80 | opcode, n) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def handshake_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\n\r\n").encode()


# -- the client (--client) -----------------------------------------------------------------------


class EchoConnection(asyncio.Protocol):
    """One WebSocket doing request/response. The usual read is exactly one whole echo, which
    is compared with the expected frame and answered by the next message; anything else
    (the handshake, a split or coalesced read, a ping) goes through `_parse`."""

    running = True  # every connection stops sending when the window ends

    def __init__(self, payload: bytes, count: list[int], opened: asyncio.Future):
        self.payload = payload
        self.frame = client_frame(0x1, payload)
        self.reply = server_frame(0x1, payload)
        self.count = count
        self.opened = opened
        self.buf = b""
        self.open = False
        self.error: str | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if not self.buf and data == self.reply:
            self.count[0] += 1
            if EchoConnection.running:
                self.transport.write(self.frame)
            return
        self.buf += data
        self._parse()

    def _parse(self) -> None:
        if not self.open:
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101 "):
                return self._fail(f"handshake: {head[:80]!r}")
            self.buf, self.open = rest, True
            self.opened.set_result(None)
        buf = self.buf
        while len(buf) >= 2:
            first, second = buf[0], buf[1]
            n, start = second & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, start = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, start = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < start + n:
                break
            payload, buf = buf[start:start + n], buf[start + n:]
            opcode = first & 0x0F
            if second & 0x80 or not first & 0x80:
                return self._fail("a masked or fragmented frame from the server")
            if opcode == 0x1:
                if payload != self.payload:
                    return self._fail(f"echo mismatch: {payload[:40]!r}")
                self.count[0] += 1
                if EchoConnection.running:
                    self.transport.write(self.frame)
            elif opcode == 0x9:  # ping: pong
                self.transport.write(client_frame(0xA, payload))
            elif opcode == 0x8:
                return self._fail(f"closed by the server: {payload[:40]!r}")
        self.buf = buf

    def _fail(self, why: str) -> None:
        self.error = why
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(why))
        self.transport.abort()

    def connection_lost(self, exc) -> None:
        if EchoConnection.running and self.error is None:
            self.error = f"connection lost: {exc}"
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(self.error))


async def run_client(port: int, connections: int, size: int, start: float, warmup: float,
                     duration: float) -> dict:
    loop = asyncio.get_running_loop()
    count = [0]
    conns = []
    payload = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    for _ in range(connections):
        opened = loop.create_future()
        _, proto = await loop.create_connection(
            lambda opened=opened: EchoConnection(payload, count, opened), HOST, port)
        proto.transport.write(handshake_request(port))
        conns.append(proto)
        await opened
    late = time.monotonic() - start
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    for proto in conns:
        proto.transport.write(proto.frame)
    await asyncio.sleep(max(0.0, start + warmup - time.monotonic()))
    n0, cpu0 = count[0], self_cpu()
    await asyncio.sleep(max(0.0, start + warmup + duration - time.monotonic()))
    n1, cpu1 = count[0], self_cpu()
    EchoConnection.running = False
    errors = [p.error for p in conns if p.error]
    for proto in conns:
        proto.transport.abort()
    return {"messages": n1 - n0, "cpu_s": cpu1 - cpu0, "late_s": max(0.0, late),
            "errors": errors[:3], "error_count": len(errors)}


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def client_main(args: argparse.Namespace) -> None:
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    result = loop.run_until_complete(run_client(args.port, args.connections, args.size,
                                                args.start, args.warmup, args.duration))
    loop.close()
    print(json.dumps(result))


# -- /proc ---------------------------------------------------------------------------------------


def proc_stat(pid: int) -> tuple[int, float] | None:
    """(ppid, CPU seconds with reaped children) of one process."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()  # fields[n - 3] is stat field n
    return int(fields[1]), sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK


def tree_cpu(root: int) -> float:
    """CPU seconds of `root` and its live descendants."""
    stats = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (st := proc_stat(int(entry.name))) is not None:
            stats[int(entry.name)] = st
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            todo.extend(p for p, (ppid, _) in stats.items() if ppid == pid)
    return total


def tree_pids(root: int) -> list[int]:
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and (st := proc_stat(int(entry.name))) and st[0] == pid:
                todo.append(int(entry.name))
    return out


def cpu_busy(cpu: int) -> float:
    """Non-idle seconds of one CPU since boot (/proc/stat)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            ticks = [int(v) for v in line.split()[1:]]
            return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLK_TCK
    raise ValueError(f"no cpu{cpu} in /proc/stat")


# -- one measurement -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def echo_once(port: int) -> bool:
    """A handshake and one echo: the server is ready."""
    try:
        with socket.create_connection((HOST, port), timeout=2) as sock:
            sock.sendall(handshake_request(port))
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                data += chunk
            if not data.startswith(b"HTTP/1.1 101 "):
                return False
            rest = data.partition(b"\r\n\r\n")[2]
            sock.sendall(client_frame(0x1, b"ready?"))
            want = server_frame(0x1, b"ready?")
            while len(rest) < len(want):
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                rest += chunk
            sock.sendall(client_frame(0x8, struct.pack("!H", 1000)))
            return rest.startswith(want)
    except OSError:
        return False


@dataclass
class Result:
    server: str
    msgs_per_s: float
    server_cpu_pct: float
    client_cpu_pct: float
    us_per_msg: float  # server CPU per message
    other_server_cpu_pct: float  # busy time of the server's CPU not spent by the server
    other_client_cpu_pct: float
    errors: int

    @property
    def client_bound(self) -> bool:
        """The client's CPU was full (the client, or others there) and the server's not."""
        return (self.client_cpu_pct + self.other_client_cpu_pct > BOUND_PCT
                and self.server_cpu_pct < BOUND_PCT)

    @property
    def disturbed(self) -> bool:
        """The server was not the bottleneck with its CPU to itself: its msg/s says little."""
        return self.other_server_cpu_pct > QUIET_PCT or self.server_cpu_pct < BOUND_PCT


@dataclass
class Running:
    name: str
    proc: subprocess.Popen
    port: int
    log: Path


def start_server(name: str, args: argparse.Namespace, log_dir: Path) -> Running:
    port = free_port()
    argv = [a.replace("{PORT}", str(port)) for a in SERVERS[name]]
    env = dict(os.environ, PYTHONPATH=f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    log = log_dir / f"{name}.log"  # (the last round's)
    with open(log, "wb") as err:
        proc = subprocess.Popen(["taskset", "-c", str(args.server_cpu), *argv], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    return Running(name, proc, port, log)


def wait_ready(server: Running) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not echo_once(server.port):
        if server.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{server.name} did not start: see {server.log}")
        time.sleep(0.1)


def measure(server: Running, args: argparse.Namespace) -> Result:
    """One run of the clients against a started server."""
    start = time.monotonic() + START_SLACK_S
    per_proc = [args.connections // args.client_procs + (i < args.connections % args.client_procs)
                for i in range(args.client_procs)]
    clients = []
    try:
        for n in per_proc:
            clients.append(subprocess.Popen(
                ["taskset", "-c", str(args.client_cpu), sys.executable, __file__, "--client",
                 "--port", str(server.port), "--connections", str(n), "--size", str(args.size),
                 "--start", repr(start), "--warmup", str(args.warmup),
                 "--duration", str(args.duration)], stdout=subprocess.PIPE, text=True))
        pid = server.proc.pid
        t0 = start + args.warmup
        time.sleep(max(0.0, t0 - time.monotonic()))
        s0, b0, c0 = tree_cpu(pid), cpu_busy(args.server_cpu), cpu_busy(args.client_cpu)
        time.sleep(max(0.0, t0 + args.duration - time.monotonic()))
        s1, b1, c1 = tree_cpu(pid), cpu_busy(args.server_cpu), cpu_busy(args.client_cpu)
        reports = []
        for proc in clients:
            out, _ = proc.communicate(timeout=args.duration + 30)
            reports.append(json.loads(out))
    finally:
        for proc in clients:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    late = max(r["late_s"] for r in reports)
    if late > 0:
        print(f"  warning: the clients connected {late:.2f} s late; raise START_SLACK_S",
              file=sys.stderr)
    for r in reports:
        for e in r["errors"]:
            print(f"  {server.name}: client error: {e}", file=sys.stderr)
    messages = sum(r["messages"] for r in reports)
    client_cpu = sum(r["cpu_s"] for r in reports)
    d = args.duration
    return Result(
        server=server.name, msgs_per_s=messages / d, server_cpu_pct=100 * (s1 - s0) / d,
        client_cpu_pct=100 * client_cpu / d,
        us_per_msg=1e6 * (s1 - s0) / messages if messages else float("nan"),
        other_server_cpu_pct=max(0.0, 100 * ((b1 - b0) - (s1 - s0)) / d),
        other_client_cpu_pct=max(0.0, 100 * ((c1 - c0) - client_cpu) / d),
        errors=sum(r["error_count"] for r in reports))


def run_round(i: int, names: list[str], args: argparse.Namespace,
              log_dir: Path) -> dict[str, Result]:
    """Every server started fresh and idle while another is measured; measured in an order
    rotated by i, one right after another (seconds apart: the machine drifts less)."""
    servers = []
    try:
        for name in names:
            servers.append(start_server(name, args, log_dir))
        for server in servers:
            wait_ready(server)
        order = servers[i % len(servers):] + servers[:i % len(servers)]
        results = {}
        for server in order:
            results[server.name] = r = measure(server, args)
            print(f"round {i + 1} {server.name:<16} {r.msgs_per_s:>8,.0f} msg/s "
                  f"{r.us_per_msg:5.1f} µs/msg  server {r.server_cpu_pct:.0f}% "
                  f"client {r.client_cpu_pct:.0f}%  others {r.other_server_cpu_pct:.0f}% "
                  f"{r.other_client_cpu_pct:.0f}%", flush=True)
        return {name: results[name] for name in names}
    finally:
        for server in servers:
            stop(server.proc)


def stop(server: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL for the server and whatever it left (by PID)."""
    if server.poll() is not None:
        return
    pids = tree_pids(server.pid)
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    for pid in pids[1:]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# -- the report ----------------------------------------------------------------------------------


def quiet(results: dict[str, Result]) -> bool:
    return not any(r.disturbed for r in results.values())


def summary(label: str, rounds: list[dict[str, Result]], names: list[str]) -> None:
    print(f"{label}:")
    medians = {}
    for n in names:
        rs = [r[n] for r in rounds]
        medians[n] = statistics.median(r.msgs_per_s for r in rs)
        print(f"  {n:<16} {medians[n]:>8,.0f} msg/s  "
              f"{statistics.median(r.us_per_msg for r in rs):>5.1f} µs server CPU/msg  "
              f"server {statistics.median(r.server_cpu_pct for r in rs):.0f}% "
              f"client {statistics.median(r.client_cpu_pct for r in rs):.0f}% of a CPU"
              + (f"  errors {sum(r.errors for r in rs)}" if any(r.errors for r in rs) else ""))
    for n in names:
        if n != "berth" and "berth" in medians:
            per_round = sorted(r["berth"].msgs_per_s / r[n].msgs_per_s for r in rounds)
            cpu = statistics.median(r[n].us_per_msg / r["berth"].us_per_msg for r in rounds)
            print(f"  berth / {n}: {medians['berth'] / medians[n]:.2f}x msg/s of the medians, "
                  f"{statistics.median(per_round):.2f}x the median round (rounds: "
                  f"{', '.join(f'{x:.2f}' for x in per_round)}); {n} spends {cpu:.2f}x berth's "
                  f"CPU per message")


def report(rounds: list[dict[str, Result]], names: list[str]) -> None:
    print(f"\n{'round':<6}" + "".join(f"{n:>28}" for n in names)
          + "".join(f"{'berth/' + n:>{max(16, len(n) + 9)}}" for n in names if n != "berth"))
    for i, results in enumerate(rounds):
        row = f"{i + 1:<6}"
        for n in names:
            r = results[n]
            flag = ("C" if r.client_bound else " ") + ("!" if r.disturbed else " ")
            row += (f"{r.msgs_per_s:>10,.0f} {r.server_cpu_pct:>4.0f}%{r.client_cpu_pct:>4.0f}%"
                    f"{r.other_server_cpu_pct:>4.0f}%{flag}")
        for n in names:
            if n != "berth" and "berth" in results:
                ratio = results["berth"].msgs_per_s / results[n].msgs_per_s
                row += f"{ratio:>{max(16, len(n) + 9) - 1}.2f}x"
        print(row)
    print("  (msg/s; CPU use of the server, of the client, of others on the server's CPU;\n"
          "   C: client-bound, the client's CPU full and not the server's; !: disturbed, the "
          f"server below {BOUND_PCT:.0f} % of its CPU or others over {QUIET_PCT:.0f} %)\n")
    summary(f"all {len(rounds)} rounds", rounds, names)
    calm = [r for r in rounds if quiet(r)]
    if calm and len(calm) < len(rounds):
        summary(f"the {len(calm)} undisturbed rounds", calm, names)
    elif not calm:
        print("every round was disturbed by other work on the machine: rerun when it is quiet")
    if any(r.client_bound for rs in rounds for r in rs.values()):
        print("warning: the client's CPU was full before a server's was (C): those rounds do "
              "not measure the servers (others on the client's CPU, or a client too slow: try "
              "--client-procs 2)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--until-quiet", action="store_true",
                        help="repeat disturbed rounds (up to 3x --rounds in all) until --rounds "
                             "undisturbed ones are had")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before counting")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--size", type=int, default=32, help="message bytes")
    parser.add_argument("--server", action="append", choices=sorted(SERVERS),
                        help=f"repeatable; default {' '.join(DEFAULT_SERVERS)}")
    parser.add_argument("--server-cpu", type=int, default=1)
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--client-procs", type=int, default=1,
                        help="client processes sharing the connections (all on --client-cpu)")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args)
        return
    names = args.server or DEFAULT_SERVERS
    log_dir = Path(os.environ.get("TMPDIR", "/tmp")) / "berth-ws-echo"
    log_dir.mkdir(exist_ok=True)
    print(f"{args.connections} connections, {args.size}-byte text messages, request/response; "
          f"{args.rounds} rounds x {args.duration:g} s (+{args.warmup:g} s warm-up); server on "
          f"CPU {args.server_cpu}, {args.client_procs} client process(es) on CPU "
          f"{args.client_cpu}; server logs in {log_dir}")
    rounds: list[dict[str, Result]] = []
    while True:
        done = sum(map(quiet, rounds)) if args.until_quiet else len(rounds)
        if done >= args.rounds or len(rounds) >= 3 * args.rounds:
            break
        rounds.append(run_round(len(rounds), names, args, log_dir))
    report(rounds, names)
    if args.json:
        args.json.write_text(json.dumps([{n: vars(r) for n, r in rs.items()} for rs in rounds],
                                        indent=1))


if __name__ == "__main__":
    main()

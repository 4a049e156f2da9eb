#!/usr/bin/env python3
"""Fuzz berth's request parser (berth/http/parser.py) with Hypothesis, for a given time.

    python fuzz/fuzz_parser.py --seconds 60
    python fuzz/fuzz_parser.py --seconds 600 --seed 7      # another, repeatable, run

An example is: the parser's options (Gunicorn's method, version and header-map settings,
small and large limits and body buffers), a stream of requests built from HTTP/1.1's grammar
(methods llhttp knows and does not, every request-target form, versions, header fields with odd
names and whitespace, Content-Length and chunked bodies with extensions, BWS and trailers,
pipelining), then mutated (bytes changed, inserted, deleted, a slice repeated), then cut into
reads at arbitrary places. The parser gets the reads one by one, as the worker gives it recv()'s
bytes. It must parse them or raise its own HttpError; it fails when it:

  - raises anything else (a crash: berth would drop the connection without an answer);
  - takes longer than --hang-after seconds on one example (each is a few KiB: a hang);
  - parses the whole stream and the cut one, both without an error, into different requests
    (where reads happen to end must not change what a request is).

Exit status 0: no failure in the time given; 1: a failure, printed with the shrunk example
(make it a byte test in tests/test_parser.py). Runs in one process on one core.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from berth.http.parser import HttpError, RequestParser  # noqa: E402

# -- the grammar, with the shapes that have rules of their own ----------------------------------

# In half the examples every part is well-formed (so that the parser's later rules, pipelining
# and the comparison of reads are reached); in the others each part is sometimes odd:
# `sometimes(draw, noisy, usual, odd, percent)`. Hypothesis shrinks towards the usual.

KNOWN_METHODS = [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE",
                 b"PROPFIND", b"MKCOL", b"PURGE", b"QUERY", b"M-SEARCH"]
EXTENSION_METHODS = [b"BREW", b"VERSION-CONTROL", b"MKREDIRECTREF", b"MKCOLX", b"GETS", b"A_B",
                     b"X.Y!", b"M" * 20, b"123"]
ODD_METHODS = [b"CONNECT", b"PRI", b"get", b"Brew", b"connect", b"head", b"BR", b"G", b"M" * 21,
               b"BR#EW", b"", b"B(R)"]
UPPER_TOKEN = "!$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
TOKEN = UPPER_TOKEN + "#abcdefghijklmnopqrstuvwxyz"
ODD_TARGETS = [b"*", b"example.com:443", b"1.2.3.4:443", b"[::1]:443", b"http://h/x",
               b"https://h:8443/", b"ftp://h/", b"/%00", b"/\xff", b"", b"/a b"]
ODD_VERSIONS = [b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"HTTP/1.", b"http/1.1", b"HTTP/11.1", b""]
NAMES = [b"Content-Type", b"X-Request-Id", b"Accept", b"Cookie", b"User-Agent", b"X-Forwarded-For",
         b"X_Forwarded_For", b"Trailer", b"TE", b"Expect", b"Upgrade"]
ODD_NAMES = [b"Content-Length", b"Transfer-Encoding", b"Host", b"Connection", b"X Y", b"",
             b"X\x00", b"\xe9"]
VALUES = [b"h", b"text/plain", b"a,b", b"caf\xe9", b"\xa0", b"", b"close", b"keep-alive",
          b"100-continue", b"upgrade", b"websocket", b"trailers", b"1.2.3.4"]
ODD_VALUES = [b"0", b"+5", b"chunked", b"gzip, chunked", b"identity", b"a\x00b", b"a\x7f"]
WHITESPACE = [b"", b" ", b"\t", b" \t ", b"  "]


def sometimes(draw, noisy: bool, usual, odd, percent: int = 10):
    if noisy and draw(st.integers(0, 99)) >= 100 - percent:
        return draw(odd)
    return draw(usual)


def eol(draw, noisy: bool) -> bytes:
    return sometimes(draw, noisy, st.just(b"\r\n"), st.sampled_from([b"\n", b"\r", b"\r\r\n"]),
                     3)


def token(alphabet: str, max_size: int = 24):
    return st.text(alphabet, min_size=1, max_size=max_size).map(str.encode)


@st.composite
def field(draw, noisy: bool) -> bytes:
    name = sometimes(draw, noisy, st.one_of(st.sampled_from(NAMES), token(TOKEN, 12)),
                     st.one_of(st.sampled_from(ODD_NAMES), st.binary(max_size=6)))
    value = sometimes(draw, noisy, st.one_of(st.sampled_from(VALUES), token(TOKEN, 12)),
                      st.one_of(st.sampled_from(ODD_VALUES), st.binary(max_size=12)))
    colon = sometimes(draw, noisy, st.just(b":"), st.sampled_from([b" :", b"", b"::"]), 3)
    return (name + colon + draw(st.sampled_from(WHITESPACE)) + value
            + draw(st.sampled_from(WHITESPACE)) + eol(draw, noisy))


@st.composite
def chunked_body(draw, noisy: bool) -> bytes:
    out = []
    for data in draw(st.lists(st.binary(min_size=1, max_size=24), max_size=4)):
        size = b"%x" % len(data)
        size = sometimes(draw, noisy, st.sampled_from([size, size.upper(), b"0" + size]),
                         st.sampled_from([b"%x" % (len(data) + 1), b"-1", b"x", b" " + size]))
        ext = sometimes(draw, noisy,
                        st.sampled_from([b"", b";e", b";e=1", b' ;e="q q"', b"\t;e", b" "]),
                        st.sampled_from([b"; e=1", b";e ;f", b";", b";e=\x00"]), 20)
        out.append(size + ext + eol(draw, noisy) + data + eol(draw, noisy))
    last = sometimes(draw, noisy, st.sampled_from([b"0", b"00", b"0;e", b"0 "]),
                     st.sampled_from([b"", b"1", b"0x0"]), 5)
    trailers = b"".join(draw(st.lists(field(noisy), max_size=2)))
    out.append(last + eol(draw, noisy) + trailers + eol(draw, noisy))
    return b"".join(out)


@st.composite
def request(draw, noisy: bool) -> bytes:
    method = sometimes(draw, noisy, st.one_of(st.sampled_from(KNOWN_METHODS + EXTENSION_METHODS),
                                       token(UPPER_TOKEN, 20)),
                       st.one_of(st.sampled_from(ODD_METHODS), token(TOKEN, 30),
                                 st.binary(max_size=6)), 15)
    target = sometimes(draw, noisy, st.one_of(st.just(b"/"), token(TOKEN + "/?=&", 16).map(
        lambda t: b"/" + t)), st.one_of(st.sampled_from(ODD_TARGETS), st.binary(max_size=8)))
    version = sometimes(draw, noisy, st.sampled_from([b"HTTP/1.1"] * 19 + [b"HTTP/1.0"]),
                        st.sampled_from(ODD_VERSIONS), 5)
    space = sometimes(draw, noisy, st.just(b" "), st.sampled_from([b"  ", b"\t", b""]), 3)
    line = method + space + target + b" " + version + eol(draw, noisy)
    fields = draw(st.lists(field(noisy), max_size=4))
    if not noisy or draw(st.integers(0, 9)):
        fields.insert(draw(st.integers(0, len(fields))), b"Host: h\r\n")
    kind = draw(st.sampled_from(["none", "length", "chunked"]))
    body = b""
    if kind == "length":
        body = draw(st.binary(max_size=40))
        length = sometimes(draw, noisy, st.just(len(body)),
                           st.sampled_from([len(body) + 1, max(0, len(body) - 1)]), 5)
        fields.append(b"Content-Length: %d\r\n" % length)
    elif kind == "chunked":
        body = draw(chunked_body(noisy))
        fields.append(b"Transfer-Encoding: chunked\r\n")
    return (sometimes(draw, noisy, st.just(b""), st.just(b"\r\n"), 10) + line + b"".join(fields)
            + eol(draw, noisy) + body)


@st.composite
def mutated(draw, stream: bytes) -> bytes:
    data = bytearray(stream)
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        what = draw(st.sampled_from(["change", "insert", "delete", "repeat"]))
        if what == "change":
            data[at] = draw(st.integers(0, 255))
        elif what == "insert":
            data[at:at] = draw(st.sampled_from([b"\r\n", b" ", b"\t", b"\x00", b"0\r\n\r\n",
                                                b"GET / HTTP/1.1\r\n", b":", b";"]))
        elif what == "delete":
            del data[at:at + draw(st.integers(1, 4))]
        else:
            n = draw(st.integers(1, 16))
            data[at:at] = data[at:at + n]
    return bytes(data)


options = st.fixed_dictionaries({
    "limit_request_line": st.sampled_from([4094] * 6 + [0, 24]),
    "limit_request_fields": st.sampled_from([100] * 6 + [0, 2]),
    "limit_request_field_size": st.sampled_from([8190] * 6 + [0, 16]),
    "body_buffer_size": st.sampled_from([1 << 20, 1 << 20, 8, 1]),
    "header_map": st.sampled_from(["drop", "refuse", "dangerous"]),
    "permit_unconventional_http_version": st.booleans(),
    "permit_unconventional_http_method": st.booleans(),
    "casefold_http_method": st.booleans(),
})


@st.composite
def example(draw) -> tuple[dict, bytes, list[int]]:
    noisy = draw(st.booleans())
    stream = b"".join(draw(st.lists(request(noisy), min_size=1, max_size=4)))
    if noisy and draw(st.integers(0, 9)) >= 5:
        stream = draw(mutated(stream))
    cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=8))))
    return draw(options), stream, [c for c in cuts if 0 < c < len(stream)]


# -- one example ------------------------------------------------------------------------------

class Hang(Exception):
    """An example ran longer than --hang-after seconds."""


class Alarm(Exception):
    """Raised by SIGALRM inside an example: where it lands (in a callback llhttp called, say)
    it may come out wrapped in another exception, so run() also notes that it rang."""


def parse(parser_class, opts: dict, reads: list[bytes]):
    """(requests, the HttpError's status or None, whether a request is unfinished)"""
    parser = parser_class(**opts)
    got = []
    try:
        for data in reads:
            parser.feed(data)
            got.extend(parser.ready)
            parser.ready.clear()
    except HttpError as err:
        return got, err.status, True
    return got, None, parser.current is not None


def summary(req) -> tuple:
    body = b"".join(req.body_stream.chunks) if req.streaming else req.body
    return (req.method, req.url, req.version, req.server_protocol, sorted(req.headers.items()),
            body, req.complete, req.keep_alive, req.expect_continue)


def check(parser_class, opts: dict, stream: bytes, cuts: list[int]) -> None:
    reads = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    whole = parse(parser_class, opts, [stream])
    cut = parse(parser_class, opts, reads)
    for got, _, _ in (whole, cut):
        for req in got:  # what the worker relies on
            assert isinstance(req.method, bytes) and req.method, req.method
            assert req.complete or req.streaming
    # Where reads end must not change what a request is. Only streams that parse without an
    # error, and only while every connection stays open: bytes after an Upgrade or a close are
    # not parsed when they come in the same read, and llhttp refuses them when they come later.
    if whole[1] is None and cut[1] is None and all(
            r.keep_alive for r in whole[0] + cut[0]):
        assert [summary(r) for r in whole[0]] == [summary(r) for r in cut[0]], (
            "the same bytes, read in other pieces, gave other requests")
        assert whole[2] == cut[2]


RANG: list[bool] = []


def on_alarm(signum, frame):
    RANG.append(True)
    raise Alarm("the example's time is up")


def run(seconds: float, hang_after: float = 2.0, first_seed: int | None = None,
        parser_class=None, shrink: bool = True, batch: int = 200, out=None) -> int:
    """Fuzz for `seconds`; 0 when nothing failed, 1 (after printing it) when something did.
    `parser_class`: RequestParser (the module's, looked up now), or a broken one to see the
    fuzzer catch it."""
    parser_class = parser_class or RequestParser
    out = out or sys.stdout
    examples = 0

    @settings(max_examples=batch, deadline=None, database=None, derandomize=False,
              suppress_health_check=list(HealthCheck),
              phases=[Phase.generate, Phase.shrink] if shrink else [Phase.generate])
    @given(example())
    def fuzz(ex):
        nonlocal examples
        examples += 1
        opts, stream, cuts = ex
        RANG.clear()
        signal.setitimer(signal.ITIMER_REAL, hang_after)
        try:
            check(parser_class, opts, stream, cuts)
        except Exception as exc:
            if RANG:
                raise Hang(f"one example ran longer than {hang_after} s: a hang") from exc
            raise
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    started = time.monotonic()
    batches = 0
    try:
        while time.monotonic() - started < seconds:
            test = fuzz if first_seed is None else seed(first_seed + batches)(fuzz)
            test()
            batches += 1
    except Exception:  # noqa: BLE001 - Hypothesis re-raises the shrunk example's failure
        print(traceback.format_exc(), file=out)
        print(f"FAILED after {examples} examples, {time.monotonic() - started:.1f} s: the "
              "falsifying example is printed above; make it a test in tests/test_parser.py",
              file=out)
        return 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    print(f"ok: {examples} examples in {time.monotonic() - started:.1f} s, no crash, hang or "
          "split-dependent request", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="how long to fuzz (default 60)")
    parser.add_argument("--hang-after", type=float, default=2.0, metavar="SECONDS",
                        help="an example taking longer is a hang (default 2)")
    parser.add_argument("--seed", type=int, default=None,
                        help="repeatable run: batch i uses seed SEED+i")
    parser.add_argument("--no-shrink", action="store_true",
                        help="report a failure as found (shrinking a hang takes long)")
    args = parser.parse_args(argv)
    return run(args.seconds, args.hang_after, args.seed, shrink=not args.no_shrink)


if __name__ == "__main__":
    sys.exit(main())

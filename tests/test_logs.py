"""berth/logs.py without a server: the access-log format (atoms and escaping, with plain dicts)
and the one writer both logs write lines through (with pipes and a socket pair)."""

from __future__ import annotations

import base64
import fcntl
import logging
import os
import re
import shlex
import socket
import threading
import time

import pytest

from berth.logs import (
    PIPE_BUF,
    LineSink,
    compile_access_format,
    escape,
    write_lines,
    write_whole_lines,
)

DEFAULT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'


def environ(**extra) -> dict:
    e = {"REMOTE_ADDR": "10.0.0.7", "REQUEST_METHOD": "GET", "RAW_URI": "/a?b=1",
         "PATH_INFO": "/a", "QUERY_STRING": "b=1", "SERVER_PROTOCOL": "HTTP/1.1"}
    e.update(extra)
    return e


def line(fmt: str, e: dict, status: str = "200 OK", headers=()) -> str:
    data = compile_access_format(fmt)(e, status, 12, 0.25, list(headers))
    assert isinstance(data, bytes) and data.endswith(b"\n")
    assert data.count(b"\n") == 1, data  # one line, whatever the request held
    return data.decode("ascii")[:-1]  # escaped lines are ASCII


# --- escape() -------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "logged"), [
    ("Mozilla/5.0 (X11)", "Mozilla/5.0 (X11)"),
    ('evil" 200 999 "injected', 'evil\\" 200 999 \\"injected'),
    ("back\\slash", "back\\\\slash"),
    ("tab\there", "tab\\x09here"),
    ("line\nbreak\r", "line\\x0abreak\\x0d"),
    ("nul\x00del\x7f", "nul\\x00del\\x7f"),
    ("caf\xe9", "caf\\xe9"),  # a latin-1 request byte: that byte
    ("\u20ac", "\\xe2\\x82\\xac"),  # above U+00FF (not from a request): its UTF-8 bytes
    ("", ""),
])
def test_escape_is_apache_style(raw, logged):
    assert escape(raw) == logged


def test_escape_takes_any_value():
    assert escape(42) == "42" and escape(None) == "None"


def test_a_clean_value_is_returned_as_is():
    value = "GET /index.html?x=1 HTTP/1.1"
    assert escape(value) is value


# --- the compiled format --------------------------------------------------------------------

def fields(text: str) -> list[str]:
    """A default-format line split as log parsers do: quoted fields honour \\" and \\\\."""
    return shlex.split(text, posix=True)


def test_default_format_line_is_gunicorns():
    out = line(DEFAULT, environ(HTTP_REFERER="http://r/", HTTP_USER_AGENT="ua/1"))
    assert re.fullmatch(r'10\.0\.0\.7 - - \[\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] '
                        r'"GET /a\?b=1 HTTP/1\.1" 200 12 "http://r/" "ua/1"', out), out


def test_hostile_values_cannot_forge_fields():
    e = environ(HTTP_USER_AGENT='evil" 200 999 "injected',
                HTTP_REFERER='http://x/" 500 1 "\\',
                RAW_URI='/search?q="quoted"\\', QUERY_STRING='q="quoted"\\',
                HTTP_X_EVIL='a"b\nfake line')
    out = line(DEFAULT + ' "%({x-evil}i)s" "%(q)s"', e)
    parts = fields(out)
    assert len(parts) == 12, parts
    assert parts[5] == 'GET /search?q="quoted"\\ HTTP/1.1'
    assert parts[6:8] == ["200", "12"]
    assert parts[8] == 'http://x/" 500 1 "\\'
    assert parts[9] == 'evil" 200 999 "injected'
    assert parts[10] == "a\"b\\x0afake line"  # the newline stays escaped text
    assert parts[11] == 'q="quoted"\\'


def test_basic_auth_user_is_escaped():
    auth = "Basic " + base64.b64encode(b'ev"il\\:pw').decode()
    out = line(DEFAULT, environ(HTTP_AUTHORIZATION=auth))
    assert fields(out)[2] == 'ev"il\\'
    assert ' ev\\"il\\\\ ' in out


def test_path_decoded_newline_and_method_are_escaped():
    out = line('%(m)s %(U)s %(H)s', environ(REQUEST_METHOD='G"T', PATH_INFO="/a\nb\x7f"))
    assert out == 'G\\"T /a\\x0ab\\x7f HTTP/1.1'


def test_response_header_and_environ_atoms_are_escaped():
    out = line('%({etag}o)s %({x}e)s', environ(x="a\tb"), headers=[("ETag", '"abc"')])
    assert out == '\\"abc\\" a\\x09b'


def test_a_repeated_response_header_logs_its_last_value_as_gunicorn_does():
    # Gunicorn's atoms are a dict updated from the response's header list: the last wins
    headers = [("Set-Cookie", "a=1"), ("Content-Type", "text/plain"), ("Set-Cookie", "b=2")]
    assert line('%({set-cookie}o)s %({Content-Type}o)s %({etag}o)s', environ(),
                headers=headers) == "b=2 text/plain -"


def test_clean_lines_take_the_same_shape_through_both_paths():
    """A line needing no escape is the same whether or not another value did."""
    clean = line(DEFAULT, environ(HTTP_USER_AGENT="ua"))
    dirty = line(DEFAULT, environ(HTTP_USER_AGENT='u"a'))
    assert dirty.replace('u\\"a', "ua") == clean


@pytest.mark.parametrize("fmt", ['%(s)s\t%(a)s\t"%(r)s"', 'café %(a)s', '100%% "%(a)s" \\ %(s)s'])
def test_format_text_that_is_not_plain_is_kept_and_values_still_escaped(fmt):
    compiled = compile_access_format(fmt)
    ok = compiled(environ(HTTP_USER_AGENT="ua"), "200 OK", 1, 0.0, [])
    bad = compiled(environ(HTTP_USER_AGENT='u"a\t'), "200 OK", 1, 0.0, [])
    assert ok.decode() == fmt.replace("%%", "%").replace("%(s)s", "200").replace(
        "%(a)s", "ua").replace("%(r)s", "GET /a?b=1 HTTP/1.1") + "\n"
    assert b'u\\"a\\x09' in bad


def test_environ_atom_is_the_requests_wsgi_environ_in_any_case(monkeypatch):
    """As Gunicorn: `{var}e` reads the request's environ (not the process environment)."""
    monkeypatch.setenv("BERTH_TEST_ONLY_IN_OS_ENVIRON", "os")
    e = environ(HTTP_X_ID="7")
    e["wsgi.url_scheme"] = "http"
    out = line("%({remote_addr}e)s %({REMOTE_ADDR}e)s %({http_x_id}e)s %({wsgi.url_scheme}e)s "
               "%({berth_test_only_in_os_environ}e)s", e)
    assert out == "10.0.0.7 10.0.0.7 7 http -"


# --- writing lines ----------------------------------------------------------------------------

def small_pipe(blocking: bool) -> tuple[int, int]:
    """A pipe that holds PIPE_BUF bytes (the least Linux allows), so a test can fill it."""
    r, w = os.pipe2(os.O_CLOEXEC)
    fcntl.fcntl(w, 1031, PIPE_BUF)  # F_SETPIPE_SZ
    os.set_blocking(w, blocking)
    return r, w


def lines_of(size: int, count: int) -> bytes:
    return b"".join(b"%0*d\n" % (size - 1, i) for i in range(count))


def test_whole_line_writer_writes_one_piece_per_run_of_lines_that_fits_in_pipe_buf():
    writes = []

    def write(piece):
        writes.append(bytes(piece))
        return len(piece)

    data = lines_of(1000, 9) + b"x" * (PIPE_BUF + 10) + b"\n"
    assert write_whole_lines(write, data) == len(data)
    assert b"".join(writes) == data
    assert [len(w) for w in writes[:3]] == [4000, 4000, 1000]  # whole lines, <= PIPE_BUF
    assert len(writes[3]) == PIPE_BUF + 11  # a line longer than PIPE_BUF: one write, whole


def test_whole_line_writer_stops_at_a_line_end_when_a_non_blocking_pipe_is_full():
    r, w = small_pipe(blocking=False)
    try:
        data = lines_of(1500, 4)
        done = write_whole_lines(lambda piece: os.write(w, piece), data)
        assert done == 3000  # two whole lines fit in the pipe's 4096 bytes, the third waits
        assert os.read(r, 65536) == data[:done]
        assert write_whole_lines(lambda piece: os.write(w, piece), data, done) == len(data)
        assert os.read(r, 65536) == data[done:]
    finally:
        os.close(r)
        os.close(w)


def test_error_log_writes_every_line_even_when_its_descriptor_is_non_blocking():
    r, w = small_pipe(blocking=False)
    data = lines_of(1000, 20)
    got = bytearray()

    def read_slowly():
        deadline = time.monotonic() + 10
        while len(got) < len(data) and time.monotonic() < deadline:
            time.sleep(0.02)
            try:
                got.extend(os.read(r, 65536))
            except BlockingIOError:
                pass

    os.set_blocking(r, False)
    reader = threading.Thread(target=read_slowly)
    reader.start()
    try:
        write_lines(w, data)  # waits for the reader, never drops a line
        reader.join(10)
        assert bytes(got) == data
    finally:
        reader.join(10)
        os.close(r)
        os.close(w)


def test_access_log_sink_on_a_socket_sends_whole_lines_without_blocking():
    a, b = socket.socketpair()
    try:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sink = LineSink("-", a.fileno())
        data = lines_of(1000, 1000)  # far more than the socket buffers hold
        t0 = time.monotonic()
        done = sink.write_some(data)
        assert time.monotonic() - t0 < 2
        assert 0 < done < len(data)
        assert done % 1000 == 0  # whole lines only
        sink.close()
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize(("fmt", "logged"), [
    # conversions other than `s`, as Gunicorn formats them (its atoms B T M D are numbers)
    ("%(h)-12s|%(s)s", "10.0.0.7    |200"),
    ("T=%(T)d D=%(D)d M=%(M)05d B=%(B)x", "T=0 D=250000 M=00250 B=c"),
    ("%(r)r", "'GET /a?b=1 HTTP/1.1'"),
    # `%%` is a percent sign, also before an atom's name
    ("%%(h)s %(h)s 100%%", "%(h)s 10.0.0.7 100%"),
    # a conversion Gunicorn cannot format either (`h` is text) stays as it is written
    ("%(h)d %(s)s", "%(h)d 200"),
])
def test_conversions_other_than_s_are_gunicorns(fmt, logged):
    assert line(fmt, environ()) == logged


@pytest.mark.parametrize("fmt", ["%(h)s %(m)c", "%(a)c", "%(B)c", "%(s)c %(l)c"])
def test_a_one_character_conversion_stays_as_written_and_never_raises(fmt):
    # `%c` takes one character or a code point: the check at compile time ('-', 0) passed,
    # and every request then raised TypeError (OverflowError for %(B)c past 1 MiB sent) in
    # the responder, which logged an internal error and closed the keep-alive connection
    access_line = compile_access_format(fmt)
    e = environ(HTTP_USER_AGENT="curl/8")
    for sent in (12, 3_000_000):
        out = access_line(e, "200 OK", sent, 0.25, []).decode()
        assert out == fmt.replace("%(h)s", "10.0.0.7") + "\n"


def test_a_converted_value_is_escaped_too():
    out = line('%(a)-12s|%({x-evil}i)r', environ(HTTP_USER_AGENT='u"a\n', HTTP_X_EVIL="b\tc"))
    assert out == 'u\\"a\\x0a        |\'b\\\\tc\''


def test_the_clock_is_never_seen_with_the_new_second_and_the_old_text(monkeypatch):
    # %(t)s is `_Clock.text if int(now) == _Clock.second else _Clock.refresh(now)`, read by
    # every app thread; refresh() stored the second before formatting its text, so a thread
    # switch inside it let another thread log the last second's text ("" at the first line)
    from berth import logs

    seen = []
    localtime = time.localtime

    def other_thread_formats_a_line(t):
        seen.append(logs._Clock.text if int(t) == logs._Clock.second else "refreshes")
        return localtime(t)

    monkeypatch.setattr(logs._Clock, "second", -1)
    monkeypatch.setattr(logs._Clock, "text", "")
    monkeypatch.setattr(logs.time, "localtime", other_thread_formats_a_line)
    text = logs._Clock.refresh(1_000_000.5)
    assert seen == ["refreshes"]
    assert logs._Clock.text == text and logs._Clock.second == 1_000_000


def test_a_line_appended_while_the_access_log_flushes_is_written_once(tmp_path):
    # an app thread's append can land in the list flush() just took: after flush() read its
    # length, that line was joined and written now, and again at the next round as late
    from berth.logs import AccessLog

    class Racing(list):
        def __len__(self):
            n = super().__len__()
            if n == 1:
                self.append(b"appended during the flush\n")  # (another thread, right now)
            return n

    target = tmp_path / "access.log"
    log = AccessLog(str(target), "%(r)s", logging.getLogger("test"))
    log.lines = Racing([b"first\n"])
    log.flush()
    log.flush()
    log.close()
    assert target.read_text() == "first\nappended during the flush\n"


def test_a_flush_keeps_up_with_a_reader_that_keeps_up(tmp_path, monkeypatch):
    # a pipe holds 64 KiB; the loop flushes twice a second and stopped at the first EAGAIN,
    # so a worker wrote at most a few pipefuls a second, and dropped lines ("not read fast
    # enough") behind a reader that took everything at once (150,000 quick requests through
    # `| cat`: 81,460 dropped). A flush now waits for such a reader, briefly.
    from berth import logs
    from berth.logs import AccessLog, LineSink

    r, w = os.pipe2(os.O_NONBLOCK)
    os.set_blocking(r, True)
    woken = threading.Event()
    got = []

    def reader():
        woken.wait(10)
        while True:
            data = os.read(r, 1 << 16)
            if not data:
                return
            got.append(len(data))

    real_select = logs.select.select

    def select(rl, wl, xl, timeout):  # (the flush waits: the reader is scheduled now)
        woken.set()
        return real_select(rl, wl, xl, timeout)

    monkeypatch.setattr(logs.select, "select", select)
    monkeypatch.setattr(logs, "KEEP_UP", 5.0, raising=False)  # (a slow machine)
    thread = threading.Thread(target=reader)
    thread.start()
    log = AccessLog(str(tmp_path / "unused.log"), "%(r)s", logging.getLogger("test"))
    sink = LineSink.__new__(LineSink)
    sink.sock, sink.fd, sink.piece, sink.capacity = None, w, PIPE_BUF, 0
    log.sink = sink
    line = b"x" * 99 + b"\n"
    log.lines = [line] * 4000  # 400 kB: six pipefuls
    try:
        log.flush()
        assert log.backlog == b"" and log.dropped_total == 0
    finally:
        woken.set()
        os.close(w)
        thread.join(10)
        os.close(r)
    assert sum(got) == 400_000


def test_a_line_longer_than_pipe_buf_is_one_write_and_waits_for_room_for_all_of_it():
    # a huge header made a line longer than PIPE_BUF, which was cut into writes of PIPE_BUF:
    # two workers writing to one stdout pipe had their lines land inside each other's (2 of
    # 800 JSON lines with a 7 kB User-Agent, -w 2, did not parse)
    chunks = []

    def write(view):
        chunks.append(len(view))
        return len(view)

    data = b"a\n" + b"x" * 9999 + b"\n" + b"b\n"
    assert write_whole_lines(write, data) == len(data)
    assert chunks == [2, 10000, 2]
    chunks.clear()  # a pipe without room for the whole line: not a part of it now
    assert write_whole_lines(write, data, fits=lambda size: size <= 5000) == 2
    assert chunks == [2]
    r, w = os.pipe2(os.O_NONBLOCK)  # what a pipe's sink says
    try:
        sink = LineSink.__new__(LineSink)
        sink.sock, sink.fd, sink.piece, sink.capacity = None, w, PIPE_BUF, 65536
        assert sink.fits(60000)
        os.write(w, b"y" * 10000)
        assert not sink.fits(60000) and sink.fits(50000) and sink.fits(70000)
    finally:
        os.close(r)
        os.close(w)

"""Response framing, sans-IO (`berth/http/framing.py`): every rule checked with byte strings."""

from __future__ import annotations

import pytest

from berth.http.framing import (
    HAS_DATE,
    HAS_SERVER,
    BadResponseHeaders,
    DateCache,
    chunk,
    early_hints,
    error_response,
    frame,
)

CT = [("Content-Type", "text/plain")]


def test_app_content_length_frames_the_body_and_keeps_the_connection():
    f = frame("1.1", "200 OK", [*CT, ("Content-Length", "5")], True, False, None)
    assert f.head == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n"
    assert (f.remaining, f.chunked, f.no_body, f.keep_alive) == (5, False, False, True)


def test_known_length_is_sent_as_content_length():
    f = frame("1.1", "200 OK", CT, True, False, 12)
    assert f.head.endswith(b"Content-Type: text/plain\r\nContent-Length: 12\r\n")
    assert (f.remaining, f.chunked) == (12, False)


def test_unknown_length_on_http11_is_chunked():
    f = frame("1.1", "200 OK", CT, True, False, None)
    assert f.head.endswith(b"Transfer-Encoding: chunked\r\n")
    assert (f.remaining, f.chunked, f.keep_alive) == (None, True, True)
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"


def test_unknown_length_on_http10_is_close_delimited():
    f = frame("1.0", "200 OK", CT, True, False, None)
    assert f.head == b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
    assert (f.remaining, f.chunked, f.keep_alive) == (None, False, False)


def test_unknown_length_on_http10_keeps_a_head_responses_connection():
    f = frame("1.0", "200 OK", CT, True, True, None)  # (HEAD: no body for the close to end)
    assert f.head == b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: keep-alive\r\n"
    assert (f.no_body, f.keep_alive) == (True, True)


def test_http10_keep_alive_is_said_and_http11_close_is_said():
    f10 = frame("1.0", "200 OK", CT, True, False, 3)
    assert f10.head.endswith(b"Content-Length: 3\r\nConnection: keep-alive\r\n")
    f11 = frame("1.1", "200 OK", CT, False, False, 3)
    assert f11.head.endswith(b"Content-Length: 3\r\nConnection: close\r\n")
    assert not f11.keep_alive


def test_head_request_has_the_length_but_no_body():
    f = frame("1.1", "200 OK", CT, True, True, 42)
    assert f.head.endswith(b"Content-Length: 42\r\n")
    assert f.no_body and f.keep_alive


@pytest.mark.parametrize("status", ["204 No Content", "304 Not Modified"])
def test_204_and_304_carry_no_body_and_no_framing(status):
    f = frame("1.1", status, [("ETag", '"x"')], True, False, None)
    assert f.head == f"HTTP/1.1 {status}\r\nETag: \"x\"\r\n".encode()
    assert (f.no_body, f.remaining, f.chunked, f.keep_alive) == (True, 0, False, True)


@pytest.mark.parametrize("length", ["0", "7"])
def test_a_204_never_carries_the_apps_content_length(length):
    # RFC 9110 8.6: a server MUST NOT send one (Envoy answers 502 to a 204 with a length);
    # Django sets one on every response. Asked twice: the second comes from the caches.
    headers = [("Content-Length", length), ("X-A", "1"), ("Connection", "close")]
    for _ in range(2):
        f = frame("1.1", "204 No Content", headers, True, False, int(length))
        assert f.head == b"HTTP/1.1 204 No Content\r\nX-A: 1\r\nConnection: close\r\n"
        assert (f.no_body, f.remaining, f.keep_alive) == (True, 0, False)


def test_a_304_keeps_the_content_length_of_the_get():
    f = frame("1.1", "304 Not Modified", [("Content-Length", "120")], True, False, None)
    assert f.head == b"HTTP/1.1 304 Not Modified\r\nContent-Length: 120\r\n"
    assert (f.no_body, f.remaining) == (True, 0)


def test_hop_by_hop_headers_are_dropped_and_connection_close_is_honoured():
    headers = [*CT, ("Connection", "close"), ("Keep-Alive", "timeout=5"),
               ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"), ("X-Kept", "1")]
    f = frame("1.1", "200 OK", headers, True, False, None)
    assert f.head == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Kept: 1\r\n"
                      b"Transfer-Encoding: chunked\r\nConnection: close\r\n")
    assert not f.keep_alive


def test_connection_keep_alive_from_the_app_is_dropped_and_changes_nothing():
    f = frame("1.1", "200 OK", [("Connection", "keep-alive")], True, False, 0)
    assert f.head == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n" and f.keep_alive


@pytest.mark.parametrize("value", ["12a", "-1", "1e3", "５", "+5", "1_0", " ", "5 5"])
def test_a_bad_content_length_from_the_app_is_refused(value):
    with pytest.raises(BadResponseHeaders, match="Content-Length"):
        frame("1.1", "200 OK", [("Content-Length", value)], True, False, None)


@pytest.mark.parametrize("value", [" 5", "5 ", "\t5\t", " 5 "])
def test_spaces_around_the_apps_content_length_are_not_part_of_it(value):
    """RFC 9110 5.5; Gunicorn strips them from every value. The first head is framed from
    scratch, the next of the same shape from its template (see _frame_by_shape)."""
    for length in (value, value.replace("5", "7")):
        headers = [("X-Shape", "spaced-length"), ("Content-Length", length)]
        assert frame("1.1", "200 OK", headers, True, False, None).remaining == int(length)


@pytest.mark.parametrize("lengths", [("5", "10"), ("10", "5"), ("5", "5", "6")])
def test_content_lengths_that_disagree_are_refused(lengths):
    """They frame the body two ways (RFC 9112 6.3); Gunicorn sends them all."""
    for status in ("200 OK", "304 Not Modified"):
        with pytest.raises(BadResponseHeaders, match="two different Content-Lengths"):
            frame("1.1", status, [("Content-Length", v) for v in lengths], True, False, None)


def test_content_lengths_that_agree_frame_the_body_and_are_sent_as_given():
    f = frame("1.1", "200 OK", [("Content-Length", "5"), ("content-length", " 5")], True,
              False, None)
    assert f.remaining == 5
    assert f.head == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length:  5\r\n"


def test_str_subclasses_are_taken_as_the_str_they_are():
    class Text(str):
        pass

    f = frame("1.1", "200 OK", [(Text("X-Sub"), Text("v")), ("Content-Length", Text("2"))],
              True, False, None)
    assert f.head == b"HTTP/1.1 200 OK\r\nX-Sub: v\r\nContent-Length: 2\r\n"
    assert f.remaining == 2


@pytest.mark.parametrize("headers", [
    [("X-A", "ok\r\nSet-Cookie: evil=1")],
    [("X-A", "ok\nX-B: 1")],
    [("X-A", "ok\r")],
    [("X-A\r\nX-B", "1")],
    [("X A", "1")],
    [("X-A:", "1")],
    [("X-A", 5)],
    [("X-A\x00", "1")],
])
def test_header_injection_and_invalid_headers_are_refused(headers):
    with pytest.raises(BadResponseHeaders):
        frame("1.1", "200 OK", headers, True, False, None)


@pytest.mark.parametrize("status", ["200\r\nX: y", "2000 OK", "OK", "20 OK", "200OK",
                                    "200 O\x00K", "200 \x7f", "099 X", "000 Zero", "600 Six",
                                    "999 Nine"])
def test_a_bad_status_is_refused(status):
    with pytest.raises(BadResponseHeaders, match="status"):
        frame("1.1", status, [], True, False, None)


@pytest.mark.parametrize("status", ["100 Continue", "101 Switching Protocols", "103 Early Hints",
                                    "199"])
def test_an_interim_status_is_refused_as_the_response(status):
    """RFC 9110 15.2: a 1xx is interim; as the response, the client would wait for the final
    one and read the next response as this request's (berth sends `100 Continue` itself)."""
    with pytest.raises(BadResponseHeaders, match="interim status"):
        frame("1.1", status, [("Content-Length", "0")], True, False, None)


def test_a_status_without_a_reason_phrase_keeps_the_space_after_the_code():
    """RFC 9112 4: status-line = HTTP-version SP status-code SP [ reason-phrase ]."""
    assert frame("1.1", "200", [], True, False, 0).head.startswith(b"HTTP/1.1 200 \r\n")
    assert frame("1.0", "404 ", [], False, False, 0).head.startswith(b"HTTP/1.0 404 \r\n")


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x1b", "\x1f",
                                  "\x7f"])
@pytest.mark.parametrize("cached", [False, True], ids=["first", "after-a-good-head"])
def test_a_control_character_in_a_header_value_is_refused(char, cached):
    """RFC 9110 5.5: a field value has no CTL but HTAB (NUL is called out: it must not be
    generated). Checked where CR and LF are, when a head is framed the first time."""
    good = [("X-A", "a\tb\x80\xff"), ("Content-Length", "1")]
    if cached:
        assert frame("1.1", "200 OK", good, True, False, None).remaining == 1
    with pytest.raises(BadResponseHeaders, match="control character"):
        frame("1.1", "200 OK", [("X-A", f"a{char}b"), ("Content-Length", "1")], True, False,
              None)


def test_framing_is_cached_and_unhashable_headers_still_work():
    headers = [*CT, ("Content-Length", "2")]
    assert frame("1.1", "200 OK", headers, True, False, None) is \
        frame("1.1", "200 OK", list(headers), True, False, None)
    f = frame("1.1", "200 OK", [["Content-Length", "2"]], True, False, None)  # lists, not tuples
    assert f.head == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"


def test_date_and_server_are_appended_unless_the_app_set_its_own():
    dates = DateCache()
    dates.refresh(784111777.0)  # Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example)
    own = frame("1.1", "200 OK", [("Date", "x"), ("Server", "mine")], True, False, 0).own
    assert own == HAS_DATE | HAS_SERVER and dates.suffixes[own] == b""
    plain = frame("1.1", "200 OK", [], True, False, 0).own
    assert dates.suffixes[plain] == dates.suffix
    assert dates.suffix.startswith(b"Server: berth/") and \
        dates.suffix.endswith(b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n")


def test_error_response_is_complete_and_closes():
    raw = error_response(400)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close" in head and b"Content-Length: %d" % len(body) in head
    assert error_response(400, head_only=True) == head + b"\r\n\r\n"


def _uncached(version, status, headers, keep_alive, no_body, known_length):
    from berth.http.framing import _frame
    return _frame(version, status, headers, keep_alive, no_body, known_length)


@pytest.mark.parametrize("before, after", [
    ([("Content-Type", "application/json")], [("X-Request-Id", "abc")]),
    ([], []),
    ([("Connection", "close"), ("X-A", "1")], [("Keep-Alive", "timeout=5")]),  # hop-by-hop
    ([("X-A", "1")], [("content-length", "{value}")]),  # two lengths (agreeing): no template
])
@pytest.mark.parametrize("version, keep_alive, no_body", [
    ("1.1", True, False), ("1.0", True, False), ("1.1", False, True)])
def test_a_head_that_differs_only_in_its_content_length_is_framed_as_if_uncached(
        before, after, version, keep_alive, no_body):
    # a JSON API: the same headers, another length each time (the head is made from a
    # template of the shape; it must be what framing from scratch gives, for every length)
    for value in ("7", "12", "7", "0", "123456", "12"):
        headers = [*before, ("Content-Length", value),
                   *((n, v.format(value=value)) for n, v in after)]
        for known in (None, 99):
            assert frame(version, "200 OK", headers, keep_alive, no_body, known) == \
                _uncached(version, "200 OK", list(headers), keep_alive, no_body, known)


@pytest.mark.parametrize("value", ["12a", "-1", "1e3", "５", "", "+5", " "])
def test_a_bad_content_length_is_refused_after_a_good_one_of_the_same_shape(value):
    headers = [("X-Shape", "bad-after-good"), ("Content-Length", "5")]
    frame("1.1", "200 OK", headers, True, False, None)
    with pytest.raises(BadResponseHeaders, match="Content-Length"):
        frame("1.1", "200 OK", [("X-Shape", "bad-after-good"), ("Content-Length", value)],
              True, False, None)


def test_an_interim_response_carries_its_headers_but_no_framing_ones():
    # RFC 9110 8.6 and 6.1: no Content-Length nor Transfer-Encoding in a 1xx (a client could
    # take it for the final response's); bytes read as latin-1, values stripped
    head = early_hints([("Link", " </a.css>; rel=preload "), (b"Content-Length", b"5"),
                        ("transfer-encoding", "chunked"), (b"X-B", "\xe9")])
    assert head == (b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n"
                    b"X-B: \xe9\r\n\r\n")
    assert early_hints([], "102 Processing") == b"HTTP/1.1 102 Processing\r\n\r\n"
    with pytest.raises(BadResponseHeaders):
        early_hints([("Link", "a\r\nX: 1")])

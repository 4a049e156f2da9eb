"""The HTTP parser is sans-IO: every rule is checked here with plain byte strings."""

import pytest

from berth.http.parser import AFTER_CHUNKED, FEED_SLICE, HttpError, RequestParser


def parse(data: bytes, **kw) -> RequestParser:
    p = RequestParser(**kw)
    p.feed(data)
    return p


def status_of(data: bytes, **kw) -> int:
    with pytest.raises(HttpError) as info:
        parse(data, **kw)
    return info.value.status


def test_simple_get_gives_method_target_version_and_cgi_headers():
    p = parse(b"GET /a/b?x=1 HTTP/1.1\r\nHost: example\r\nX-Request-Id: 7\r\n\r\n")
    (req,) = p.ready
    assert (req.method, req.url, req.version) == (b"GET", b"/a/b?x=1", "1.1")
    assert req.headers == {"HTTP_HOST": "example", "HTTP_X_REQUEST_ID": "7"}
    assert req.keep_alive and req.complete and req.body == b""


def test_bytes_fed_one_at_a_time_give_the_same_request():
    raw = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Type: a/b\r\n\r\nhello"
    p = RequestParser()
    for i in range(len(raw)):
        assert not p.ready
        p.feed(raw[i:i + 1])
    (req,) = p.ready
    assert req.body == b"hello"
    assert req.headers["CONTENT_LENGTH"] == "5" and req.headers["CONTENT_TYPE"] == "a/b"


def test_pipelined_requests_come_out_in_order():
    raw = b"".join(f"GET /{i} HTTP/1.1\r\nHost: h\r\n\r\n".encode() for i in range(3))
    assert [r.url for r in parse(raw).ready] == [b"/0", b"/1", b"/2"]


def mixed_pipeline(n: int) -> bytes:
    """`n` requests of every framing, some with heads longer than a slice (FEED_SLICE)."""
    parts = []
    for i in range(n):
        if i % 4 == 0:
            parts.append(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i)
        elif i % 4 == 1:
            body = b"<%d>" % i * (i % 300)
            parts.append(b"POST /%d HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n"
                         % (i, len(body)) + body)
        elif i % 4 == 2:
            parts.append(b"POST /%d HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"3\r\nabc\r\n0\r\n\r\n" % i)
        else:
            parts.append(b"GET /%d HTTP/1.1\r\nHost: h\r\nX-Pad: %s\r\n\r\n" % (i, b"p" * 5000))
    return b"".join(parts)


def test_a_long_read_fed_in_slices_stops_at_the_room_asked_and_loses_nothing():
    """feed_some() parses a read a slice at a time and stops once `room` requests are ready
    (the caller's queue is full); the bytes it returns, fed later, give the rest."""
    raw = mixed_pipeline(400)
    whole = parse(raw).ready
    p = RequestParser()
    got, rest, stops = [], raw, 0
    while rest is not None:
        rest = p.feed_some(rest, 10)
        assert len(p.ready) >= 10 or rest is None
        # what one stop parsed is bounded by a slice's worth of requests, not by the read
        assert len(p.ready) < 10 + FEED_SLICE // 20
        got += p.ready
        p.ready.clear()
        stops += rest is not None
    assert stops > 30
    assert [(r.method, r.url, r.body, r.headers) for r in got] == [
        (r.method, r.url, r.body, r.headers) for r in whole]


def test_a_body_is_fed_in_one_piece_and_what_follows_it_in_slices():
    p = RequestParser(body_buffer_size=1 << 20)
    p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 200000\r\n\r\n")
    fed = []
    feed = p.feed
    p.feed = lambda data: (fed.append(len(data)), feed(data))
    assert p.feed_some(b"x" * 65536, 1) is None
    assert p.feed_some(b"x" * (200000 - 65536) + b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 300,
                       2) is not None  # the body's rest in one piece, then slices
    assert fed[:3] == [65536, 200000 - 65536, FEED_SLICE]
    assert [len(r.body) for r in p.ready][:1] == [200000]


def test_chunked_body_is_dechunked_and_given_a_content_length():
    raw = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n")
    (req,) = parse(raw).ready
    assert req.body == b"hello world"
    assert req.headers["CONTENT_LENGTH"] == "11"
    assert "HTTP_TRANSFER_ENCODING" not in req.headers


def test_chunked_body_without_its_last_chunk_never_completes():
    p = parse(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    assert not p.ready and p.current is not None and not p.in_head


def test_head_in_progress_is_reported_for_the_deadline():
    p = parse(b"GET / HTTP/1.1\r\nHo")
    assert p.in_head and not p.ready


def test_repeated_headers_are_joined_with_commas():
    (req,) = parse(b"GET / HTTP/1.1\r\nHost: h\r\nAccept: a\r\nAccept: b\r\n\r\n").ready
    assert req.headers["HTTP_ACCEPT"] == "a,b"


def test_header_names_with_underscore_are_dropped():
    (req,) = parse(b"GET / HTTP/1.1\r\nHost: h\r\nX_Forwarded_For: 6.6.6.6\r\n"
                   b"X-Forwarded-For: 1.2.3.4\r\n\r\n").ready
    assert req.headers["HTTP_X_FORWARDED_FOR"] == "1.2.3.4"


def test_http11_without_host_is_400():
    assert status_of(b"GET / HTTP/1.1\r\n\r\n") == 400


def test_two_host_headers_are_400():
    assert status_of(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == 400
    assert status_of(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n") == 400


def test_two_content_type_headers_are_400():
    # RFC 9110 5.3: a field of one value cannot be joined into a list (Gunicorn: 400 too)
    assert status_of(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Type: a/b\r\n"
                     b"content-type: a/b\r\n\r\n") == 400


@pytest.mark.parametrize("host", [b"h, evil", b"h/evil", b"h evil", b"u@h", b"h:abc", b"[::1",
                                  b"h:80:81"])
@pytest.mark.parametrize("version", [b"1.1", b"1.0"])
def test_a_host_that_is_not_host_and_port_is_400(host, version):
    # RFC 9110 7.2 and RFC 9112 3.2: a Host with an invalid value MUST get 400 (Gunicorn
    # serves it: an app or a cache keyed on it sees two hosts, a path or a user)
    raw = b"GET / HTTP/" + version + b"\r\nHost: " + host + b"\r\n\r\n"
    assert status_of(raw) == 400
    assert status_of(raw) == 400  # (not remembered as good the second time either)


def test_a_bad_host_after_good_ones_on_one_connection_is_400():
    # (a connection's Host is compared with its last request's: a change is checked again)
    p = parse(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert len(p.ready) == 2
    with pytest.raises(HttpError) as info:
        p.feed(b"GET / HTTP/1.1\r\nHost: h@evil\r\n\r\n")
    assert info.value.status == 400


@pytest.mark.parametrize("host", [b"h", b"example.com:8080", b"127.0.0.1:80", b"[::1]:8443",
                                  b"[::1]", b"[fe80::1%25eth0]:80", b"a_b.example.", b"h,alias",
                                  b"xn--bcher-kva.de",
                                  b""])
def test_a_host_of_any_valid_form_is_served(host):
    # (an empty Host is what a client sends for a target with no authority: RFC 9110 7.2)
    (req,) = parse(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n").ready
    assert req.headers["HTTP_HOST"] == host.decode()


def test_a_chunked_body_of_tiny_chunks_costs_about_its_size_while_buffered():
    # each chunk was kept as its own bytes object: a body of 1-byte chunks held 27 times its
    # size (a hostile client: 10 connections near --body-buffer-size, 270 MB of a worker)
    import tracemalloc

    p = parse(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunks = b"1\r\nx\r\n" * 200_000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(0, len(chunks), 60_000):  # (in reads, as from a socket)
            p.feed(chunks[i:i + 60_000])
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 3 * 200_000, held  # (it was about 8 MB)
    p.feed(b"0\r\n\r\n")
    (req,) = p.ready
    assert type(req.body) is bytes and req.body == b"x" * 200_000
    assert req.headers["CONTENT_LENGTH"] == "200000"


def test_http10_without_host_is_fine_and_not_keep_alive():
    (req,) = parse(b"GET / HTTP/1.0\r\n\r\n").ready
    assert req.version == "1.0" and not req.keep_alive


def test_http10_keep_alive_is_honoured():
    (req,) = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").ready
    assert req.keep_alive


# The version of a request that begins a read is read from its bytes (HTTP11_LINE_END), the
# others' from llhttp: each request still gets its own.

def test_each_request_of_a_read_gets_its_own_version():
    raw = (b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
           b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
           b"GET /c HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    reqs = parse(raw).ready
    assert [(r.url, r.version, r.keep_alive) for r in reqs] == [
        (b"/a", "1.1", True), (b"/b", "1.0", True), (b"/c", "1.1", False)]
    assert reqs[1].server_protocol == "HTTP/1.0"


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_the_version_after_empty_lines_before_the_request_line(version):
    raw = b"\r\n\r\nGET /x HTTP/%s\r\nHost: h\r\n\r\n" % version.encode()
    (req,) = parse(raw).ready
    assert (req.url, req.version, req.server_protocol) == (b"/x", version, f"HTTP/{version}")


@pytest.mark.parametrize("version", ["1.0", "1.2"])
def test_a_version_other_than_1_1_that_begins_a_read_is_not_taken_for_1_1(version):
    p = RequestParser(permit_unconventional_http_version=True)
    p.feed(b"GET /x HTTP/%s\r\nHost: h\r\n\r\n" % version.encode())
    (req,) = p.ready
    assert req.server_protocol == f"HTTP/{version}"


def test_a_request_after_a_streamed_body_in_the_same_read_is_read_for_its_own_version():
    # A chunked body streamed (its request went out in an earlier read) ends with a trailer,
    # so where it ends is not known before llhttp parses it: the request after it is parsed in
    # the same piece, with no earlier request of this read in `ready`. Its version must not be
    # read at the read's start, where the chunk's data has " HTTP/1.1\r\n" at the place a
    # "GET /x" request line's version would be.
    p = RequestParser(body_buffer_size=4)
    p.feed(b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"8\r\nstreamed\r\n")
    (post,) = p.ready
    assert post.streaming
    p.ready.clear()  # (as the server does after each read)
    data = b"f\r\nabc HTTP/1.1\r\nd\r\n0\r\nX: y\r\n\r\nGET /x HTTP/1.0\r\n\r\n"
    assert data[len(b"GET /x"):].startswith(b" HTTP/1.1\r\n")
    p.feed(data)
    (get,) = p.ready
    assert (get.url, get.version, get.keep_alive) == (b"/x", "1.0", False)
    assert post.complete


def test_unknown_transfer_coding_is_501():
    raw = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    assert status_of(raw) == 501


def test_chunked_on_http10_is_400():
    raw = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert status_of(raw) == 400


@pytest.mark.parametrize("version", [b"2.0", b"1.2", b"0.9", b"3.7", b"9.9", b"0.0"])
def test_a_well_formed_version_berth_does_not_speak_is_505(version):
    assert status_of(b"GET / HTTP/" + version + b"\r\nHost: h\r\n\r\n") == 505


def test_http2_in_an_http1_request_line_is_505():
    assert status_of(b"GET / HTTP/2.0\r\nHost: h\r\n\r\n") == 505


# A request line that is not `method SP target SP HTTP/d.d` is the client's error: 400, never
# 505 (which monitoring counts as a server error). llhttp reads a line without a version as
# HTTP/0.9, so these reached the 505 rule before.
@pytest.mark.parametrize("line", [
    b"GET /",                       # no version
    b"POST /upload0HTTP/1.1",       # no space before the version
    b"GET / HTTP/1.1x",             # garbage after the version
    b"GET / HTTP/11.1",             # two-digit major
    b"GET / HTTP/1.",               # no minor
    b"GET / HTTP/1",                # no dot
    b"GET / http/1.1",              # lower-case protocol name
    b"GET / FOO/1.1",               # another protocol name
    b"GET / HTTP/1.1 extra",        # a fourth field
    b"GET / HTTP/1.1\x00",          # a control byte
])
def test_a_malformed_request_line_is_400_not_505(line):
    assert status_of(line + b"\r\nHost: h\r\n\r\n") == 400


def test_a_line_without_version_and_no_headers_is_400():
    assert status_of(b"GET /\r\n\r\n") == 400


def test_a_malformed_request_line_fed_byte_by_byte_is_still_400():
    p = RequestParser()
    with pytest.raises(HttpError) as info:
        for b in b"POST /upload0HTTP/1.1\r\nHost: h\r\n\r\n":
            p.feed(bytes([b]))
    assert info.value.status == 400


@pytest.mark.parametrize("raw", [
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +3\r\n\r\nabc",
    b"GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
    b"GET / HTTP/1.1\nHost: h\n\n",
    b"GE T / HTTP/1.1\r\nHost: h\r\n\r\n",
])
def test_smuggling_shapes_are_400(raw):
    assert status_of(raw) == 400


def test_request_line_over_the_limit_is_414():
    assert status_of(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: h\r\n\r\n",
                     limit_request_line=100) == 414


def test_too_many_fields_is_431():
    raw = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(10))
    assert status_of(raw + b"\r\n", limit_request_fields=5) == 431


def test_field_too_large_is_431():
    raw = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 200 + b"\r\n\r\n"
    assert status_of(raw, limit_request_field_size=100) == 431


def test_expect_100_continue_is_flagged_on_http11_only():
    p = parse(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    assert p.current.expect_continue and not p.ready
    p.feed(b"abc")
    assert p.ready[0].body == b"abc"


def test_body_over_the_buffer_is_released_early_and_streamed():
    p = parse(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabc", body_buffer_size=4)
    (req,) = p.ready
    assert req.streaming and not req.complete
    p.feed(b"defghij")
    assert req.complete and b"".join(req.body_stream.chunks) == b"abcdefghij"
    assert req.body_stream.done


def test_chunked_body_over_the_buffer_streams_without_a_length():
    p = parse(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
              b"6\r\nabcdef\r\n", body_buffer_size=4)
    (req,) = p.ready
    assert req.streaming and "CONTENT_LENGTH" not in req.headers
    p.feed(b"2\r\ngh\r\n0\r\n\r\n")
    assert b"".join(req.body_stream.chunks) == b"abcdefgh" and req.body_stream.done


def test_absolute_form_target_is_kept_raw():
    (req,) = parse(b"GET http://example.com/x?y=1 HTTP/1.1\r\nHost: example.com\r\n\r\n").ready
    assert req.url == b"http://example.com/x?y=1"


@pytest.mark.parametrize("target, host", [
    (b"http://other.example:8080/x?y=1", "other.example:8080"),
    (b"HTTPS://Other/x", "Other"),
    (b"http://[::1]:9", "[::1]:9"),
    (b"http://h.example?q#f", "h.example"),
])
def test_an_absolute_form_targets_authority_replaces_the_host_field(target, host):
    """RFC 9112 3.2.2: the server MUST ignore the received Host and use the target's."""
    (req,) = parse(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n").ready
    assert req.headers["HTTP_HOST"] == host and req.url == target


def test_an_absolute_form_target_gives_an_http10_request_its_host():
    (req,) = parse(b"GET http://other/x HTTP/1.0\r\n\r\n").ready
    assert req.headers["HTTP_HOST"] == "other"


@pytest.mark.parametrize("target", [b"http://u@other/x", b"http://u:p@other/x",
                                    b"http:///x", b"http://:80/x", b"http://a b/x",
                                    b"http://h:8o/x", b"ftp://h/x"])
def test_an_absolute_form_target_with_userinfo_or_no_good_host_gets_400(target):
    assert status_of(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n") == 400


def test_an_absolute_form_target_still_needs_a_host_field_in_http11():
    assert status_of(b"GET http://other/x HTTP/1.1\r\n\r\n") == 400
    assert status_of(b"GET http://other/x HTTP/1.1\r\nHost: a b\r\n\r\n") == 400


UPGRADE = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
NEXT = b"GET /next HTTP/1.1\r\nHost: h\r\n\r\n"


def test_an_upgrade_request_is_parsed_as_plain_http_and_kept_alive():
    """RFC 9110 7.8: a server that does not switch protocols processes the request as if
    Upgrade were absent (llhttp stops at its head): the next request is parsed after it."""
    p = parse(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
              + NEXT)
    assert [(r.url, r.keep_alive, r.complete) for r in p.ready] == [
        (b"/ws", True, True), (b"/next", True, True)]


@pytest.mark.parametrize("framing, body", [
    (b"Content-Length: 11\r\n", b"hello=world"),
    (b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n6;x=1\r\n=world\r\n0\r\nT: 1\r\n\r\n"),
], ids=["content-length", "chunked"])
@pytest.mark.parametrize("step", [0, 1, 7], ids=["whole", "byte-by-byte", "by-7-bytes"])
def test_an_upgrade_request_keeps_its_body_and_the_framing_after_it(framing, body, step):
    raw = b"POST /up HTTP/1.1\r\nHost: h\r\n" + UPGRADE + framing + b"\r\n" + body + NEXT
    p = RequestParser()
    for i in range(0, len(raw), step or len(raw)):
        p.feed(raw[i:i + (step or len(raw))])
    up, nxt = p.ready
    assert (up.url, up.body, up.headers["CONTENT_LENGTH"], up.keep_alive) == (
        b"/up", b"hello=world", "11", True)
    assert (nxt.url, nxt.body, nxt.complete) == (b"/next", b"", True)
    assert p.current is None and not p.in_head


def test_an_upgrade_request_larger_than_the_buffer_streams_its_body():
    raw = b"POST /up HTTP/1.1\r\nHost: h\r\n" + UPGRADE + b"Content-Length: 100\r\n\r\n"
    p = parse(raw + b"x" * 60, body_buffer_size=50)
    (up,) = p.ready
    assert up.streaming and not up.complete
    p.feed(b"y" * 40 + NEXT)
    assert up.complete and b"".join(up.body_stream.chunks) == b"x" * 60 + b"y" * 40
    assert up.body_stream.done and [r.url for r in p.ready] == [b"/up", b"/next"]


def test_many_upgrade_requests_with_bodies_in_one_read_are_parsed_in_a_loop():
    one = b"POST / HTTP/1.1\r\nHost: h\r\n" + UPGRADE + b"Content-Length: 1\r\n\r\nx"
    p = parse(one * 2000 + NEXT)  # (a recursion per request would exceed Python's limit)
    assert len(p.ready) == 2001 and all(r.body == b"x" for r in p.ready[:-1])


def test_a_connect_is_still_refused_after_an_upgrade_request():
    assert status_of(b"POST / HTTP/1.1\r\nHost: h\r\n" + UPGRADE + b"Content-Length: 1\r\n\r\nx"
                     b"CONNECT /x HTTP/1.1\r\nHost: h\r\n\r\n") == 501


# --- request-target forms (RFC 9112 3.2) ------------------------------------------------------

@pytest.mark.parametrize("method", [b"GET", b"HEAD", b"POST", b"DELETE", b"PROPFIND"])
def test_asterisk_form_is_400_for_any_method_but_options(method):
    assert status_of(method + b" * HTTP/1.1\r\nHost: h\r\n\r\n") == 400


def test_options_asterisk_is_served():
    (req,) = parse(b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n").ready
    assert (req.method, req.url, req.keep_alive) == (b"OPTIONS", b"*", True)


@pytest.mark.parametrize("target", [b"example.com:443", b"1.2.3.4:443", b"[::1]:443",
                                    b"[2001:db8::1]:8443", b"/path", b"*", b"http://x/"])
def test_connect_is_501_not_implemented(target):
    raw = b"CONNECT " + target + b" HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    assert status_of(raw) == 501


def test_requests_before_a_connect_are_still_served():
    p = RequestParser()
    with pytest.raises(HttpError) as info:
        p.feed(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
               b"CONNECT h:443 HTTP/1.1\r\nHost: h\r\n\r\n")
    assert info.value.status == 501 and [r.url for r in p.ready] == [b"/a"]


@pytest.mark.parametrize("target", [b"example.com:443", b"1.2.3.4:443", b"[::1]:443"])
def test_authority_form_with_another_method_is_400(target):
    assert status_of(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n") == 400


def test_a_header_value_that_never_ends_is_431_once_the_head_is_too_large():
    p = RequestParser(limit_request_fields=10, limit_request_field_size=100)
    p.feed(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ")
    with pytest.raises(HttpError) as info:
        for _ in range(100):
            p.feed(b"a" * 1000)
    assert info.value.status == 431


def test_transfer_coding_split_over_two_lines_is_still_501():
    raw = (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert status_of(raw) == 501


def test_limit_request_fields_zero_means_gunicorns_maximum():
    (req,) = parse(b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\n\r\n", limit_request_fields=0).ready
    assert req.headers["HTTP_A"] == "1"


# --- Gunicorn's header_map and permit_unconventional_http_version ----------------------------

UNDERSCORED = (b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\n"
               b"X_Forwarded_For: 6.6.6.6\r\nContent_Type: a/b\r\n\r\n")


def test_header_map_drop_is_the_default():
    (req,) = parse(UNDERSCORED, header_map="drop").ready
    assert req.headers == {"HTTP_HOST": "h", "HTTP_X_FORWARDED_FOR": "1.2.3.4"}


def test_header_map_refuse_answers_400():
    assert status_of(UNDERSCORED, header_map="refuse") == 400


def test_header_map_dangerous_maps_them_as_gunicorn_does():
    (req,) = parse(UNDERSCORED, header_map="dangerous").ready
    assert req.headers["HTTP_X_FORWARDED_FOR"] == "1.2.3.4,6.6.6.6"
    assert req.headers["HTTP_CONTENT_TYPE"] == "a/b" and "CONTENT_TYPE" not in req.headers


@pytest.mark.parametrize(("line", "framing", "protocol"), [
    (b"GET / HTTP/1.2", "1.1", "HTTP/1.2"),
    (b"GET / HTTP/2.0", "1.1", "HTTP/2.0"),
    (b"GET / HTTP/9.9", "1.1", "HTTP/9.9"),
    (b"GET / HTTP/0.5", "1.0", "HTTP/0.5"),
    (b"GET / HTTP/1.1", "1.1", "HTTP/1.1"),
    (b"GET / HTTP/1.0", "1.0", "HTTP/1.0"),
])
def test_permit_unconventional_http_version_serves_any_well_formed_version(line, framing,
                                                                           protocol):
    (req,) = parse(line + b"\r\nHost: h\r\n\r\n", permit_unconventional_http_version=True).ready
    assert (req.version, req.server_protocol) == (framing, protocol)


def test_permit_unconventional_http_version_still_refuses_malformed_lines_and_http09():
    kw = {"permit_unconventional_http_version": True}
    assert status_of(b"GET /\r\nHost: h\r\n\r\n", **kw) == 400
    assert status_of(b"GET / HTTP/1.1x\r\nHost: h\r\n\r\n", **kw) == 400
    assert status_of(b"GET / HTTP/0.9\r\nHost: h\r\n\r\n", **kw) == 505


def test_for_config_reads_the_configuration_once():
    class Cfg:
        reads = 0
        limit_request_line, limit_request_fields, limit_request_field_size = 100, 5, 50
        body_buffer_size = 10
        permit_unconventional_http_version = True
        permit_unconventional_http_method = True
        casefold_http_method = True
        secure_scheme_headers = {"X-FORWARDED-PROTO": "https"}
        forwarder_headers = ["SCRIPT_NAME"]
        forwarded_remote_addr = False

        @property
        def header_map(self):
            Cfg.reads += 1
            return "refuse"

    cfg = Cfg()
    p = RequestParser.for_config(cfg)
    RequestParser.for_config(cfg)
    assert Cfg.reads == 1
    assert (p.limit_line, p.limit_fields, p.body_limit) == (100, 5, 10)
    assert p.header_map == "refuse" and p.permit_other_versions
    assert p.permit_other_methods and p.casefold_methods
    assert RequestParser.for_config(Cfg()).header_map == "refuse" and Cfg.reads == 2


# --- header values: optional whitespace is not part of the value (RFC 9110 5.5) ---------------

def test_trailing_whitespace_is_trimmed_from_header_values():
    (req,) = parse(b"GET / HTTP/1.1\r\nHost: h \r\nX-Value:\tabc\t\r\nX-Two: d \t \r\n"
                   b"Accept: a \r\nAccept:\tb\t\r\nX-Inner: a  b\r\nX-Empty: \t\r\n\r\n").ready
    assert req.headers == {"HTTP_HOST": "h", "HTTP_X_VALUE": "abc", "HTTP_X_TWO": "d",
                           "HTTP_ACCEPT": "a,b", "HTTP_X_INNER": "a  b", "HTTP_X_EMPTY": ""}


def test_obs_text_at_the_end_of_a_value_is_not_whitespace():
    (req,) = parse(b"GET / HTTP/1.1\r\nHost: h\r\nX-Latin: caf\xa0 \r\nX-Nel: a\x85\r\n\r\n").ready
    assert (req.headers["HTTP_X_LATIN"], req.headers["HTTP_X_NEL"]) == ("caf\xa0", "a\x85")


def test_trailing_whitespace_does_not_hide_expect_100_continue_or_a_content_length():
    p = parse(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\t\r\n"
              b"Expect: 100-continue \r\n\r\n")
    assert p.current.expect_continue and p.current.content_length == 3
    p.feed(b"abc")
    assert p.ready[0].body == b"abc" and p.ready[0].headers["CONTENT_LENGTH"] == "3"


# --- trailer fields are discarded (RFC 9110 6.5.1) -----------------------------------------

CHUNKED = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"


def test_trailer_fields_do_not_become_headers():
    (req,) = parse(CHUNKED + b"X-Trailer: t1\r\nX-Other: t2\r\n\r\n").ready
    assert req.body == b"hello"
    assert req.headers == {"HTTP_HOST": "h", "CONTENT_LENGTH": "5"}


def test_a_trailer_named_like_a_head_field_changes_nothing():
    p = parse(CHUNKED + b"Host: evil\r\nExpect: 100-continue\r\n\r\n"
              b"POST /next HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\n")
    (req,) = p.ready
    assert req.headers["HTTP_HOST"] == "h" and "HTTP_EXPECT" not in req.headers
    nxt = p.current  # its body has not arrived: the Expect trailer must not ask for it
    assert nxt.url == b"/next" and not nxt.expect_continue


def test_trailers_of_a_streamed_body_do_not_touch_the_released_request():
    p = parse(CHUNKED.replace(b"0\r\n", b""), body_buffer_size=2)
    (req,) = p.ready
    headers = dict(req.headers)
    p.feed(b"0\r\nX-Trailer: late\r\n\r\n")
    assert req.complete and req.headers == headers


def test_trailer_fields_are_bounded_like_header_fields():
    many = b"".join(b"X-%d: 1\r\n" % i for i in range(6))
    assert status_of(CHUNKED + many + b"\r\n", limit_request_fields=5) == 431
    assert status_of(CHUNKED + b"X-Big: " + b"a" * 200 + b"\r\n\r\n",
                     limit_request_field_size=100) == 431
    (req,) = parse(CHUNKED + many[:-8] + b"\r\n", limit_request_fields=5).ready
    assert req.body == b"hello"


# --- chunk extensions: BWS before ';' (RFC 9112 7.1.1) ----------------------------------------

CHUNKED_HEAD = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("size_line", [b"5 ;ext=1", b"5\t;ext=1", b"5 \t ;ext=\"a b\"",
                                       b"5  ;a=1;b=2"])
def test_whitespace_between_chunk_size_and_extension_is_accepted(size_line):
    (req,) = parse(CHUNKED_HEAD + size_line + b"\r\nhello\r\n0 ;last\r\n\r\n").ready
    assert req.body == b"hello" and req.headers["CONTENT_LENGTH"] == "5"


@pytest.mark.parametrize("size_line", [b"5 x", b"5 5", b" 5", b"5\x0b;a", b"5 ;", b"0x5"])
def test_a_chunk_size_line_that_is_not_size_bws_extensions_is_still_400(size_line):
    assert status_of(CHUNKED_HEAD + size_line + b"\r\nhello\r\n0\r\n\r\n") == 400


# --- methods llhttp does not know: Gunicorn's rules (RFC 9110 9.1) --------------------------

def line(method: bytes, target: bytes = b"/", extra: bytes = b"") -> bytes:
    return method + b" " + target + b" HTTP/1.1\r\nHost: h\r\n" + extra + b"\r\n"


CONVENTIONAL = [b"BREW", b"VERSION-CONTROL", b"MKREDIRECTREF", b"A1B", b"FOO_BAR", b"X.Y",
                b"BREW!", b"M" * 20, b"123", b"ZZZ"]


@pytest.mark.parametrize("method", CONVENTIONAL)
def test_a_conventional_method_llhttp_does_not_know_is_served_as_sent(method):
    (req,) = parse(line(method, b"/p?q=1")).ready
    assert (req.method, req.url, req.headers) == (method, b"/p?q=1", {"HTTP_HOST": "h"})


@pytest.mark.parametrize("method", [b"get", b"Brew", b"BR", b"M" * 21, b"BR#EW", b"BR(EW",
                                    b"BR\"EW", b"BR\x7fEW", b"BR\xe9W"])
def test_an_unconventional_method_is_400(method):
    assert status_of(line(method)) == 400


@pytest.mark.parametrize("method", [b"get", b"Brew", b"BR", b"M" * 40, b"BR#EW", b"x"])
def test_permit_unconventional_http_method_serves_any_token(method):
    (req,) = parse(line(method), permit_unconventional_http_method=True).ready
    assert req.method == method


@pytest.mark.parametrize("method", [b"BR(EW", b"BR\"EW", b"BR\x7fEW", b"BR\xe9W"])
def test_permit_unconventional_http_method_still_wants_a_token(method):
    assert status_of(line(method), permit_unconventional_http_method=True) == 400


def test_a_method_over_the_request_line_limit_is_414():
    assert status_of(line(b"M" * 200), permit_unconventional_http_method=True,
                     limit_request_line=100) == 414


@pytest.mark.parametrize(("sent", "served"), [(b"brew", b"BREW"), (b"get", b"GET"),
                                              (b"Head", b"HEAD"), (b"BREW", b"BREW")])
def test_casefold_http_method_upper_cases_what_permit_lets_through(sent, served):
    (req,) = parse(line(sent), permit_unconventional_http_method=True,
                   casefold_http_method=True).ready
    assert req.method == served


def test_casefold_http_method_alone_still_refuses_lower_case_first():
    assert status_of(line(b"brew"), casefold_http_method=True) == 400  # as in Gunicorn


def test_a_folded_connect_is_501():
    raw = line(b"connect", b"h:443")
    assert status_of(raw, permit_unconventional_http_method=True,
                     casefold_http_method=True) == 501
    assert status_of(line(b"connect", b"/x"), permit_unconventional_http_method=True,
                     casefold_http_method=True) == 501


def test_an_extension_method_takes_the_target_rules():
    assert status_of(line(b"BREW", b"*")) == 400
    assert status_of(line(b"BREW", b"h:443")) == 400
    (req,) = parse(line(b"BREW", b"http://h/x")).ready
    assert req.url == b"http://h/x"


def test_an_extension_method_request_has_its_body_and_keeps_the_connection():
    raw = line(b"BREW", b"/pot", b"Content-Length: 5\r\n") + b"hello"
    raw += line(b"BREW", b"/chunked", b"Transfer-Encoding: chunked\r\n") + b"3\r\nabc\r\n0\r\n\r\n"
    raw += line(b"GET", b"/after")
    p = parse(raw)
    assert [(r.method, r.url, r.body, r.keep_alive) for r in p.ready] == [
        (b"BREW", b"/pot", b"hello", True), (b"BREW", b"/chunked", b"abc", True),
        (b"GET", b"/after", b"", True)]


def test_pipelined_extension_methods_among_others_in_one_read():
    methods = [b"GET", b"BREW", b"POST", b"MKREDIRECTREF", b"VERSION-CONTROL", b"DELETE",
               b"BREW"]
    raw = b""
    for i, m in enumerate(methods):
        body = b"x" * i
        raw += line(m, b"/%d" % i, b"Content-Length: %d\r\n" % i) + body
    p = parse(b"\r\n" + raw)
    assert [(r.method, r.url, r.body) for r in p.ready] == [
        (m, b"/%d" % i, b"x" * i) for i, m in enumerate(methods)]


RAW_MIX = (line(b"GET", b"/0") + line(b"BREW", b"/1", b"Content-Length: 3\r\n") + b"BRE"
           + line(b"VERSION-CONTROL", b"/2")
           + line(b"MKREDIRECTREF", b"/3", b"Transfer-Encoding: chunked\r\n")
           + b"4\r\nMKRE\r\n0\r\n\r\n" + line(b"PROPFIND", b"/4"))
MIX = [(b"GET", b"/0", b""), (b"BREW", b"/1", b"BRE"), (b"VERSION-CONTROL", b"/2", b""),
       (b"MKREDIRECTREF", b"/3", b"MKRE"), (b"PROPFIND", b"/4", b"")]


@pytest.mark.parametrize("step", [1, 2, 3, 5, 7, 13, 64])
def test_extension_methods_split_across_reads_anywhere(step):
    """Whatever the reads' boundaries (inside a method, a head, a body), the same requests."""
    p = RequestParser()
    got = []
    for i in range(0, len(RAW_MIX), step):
        p.feed(RAW_MIX[i:i + step])
        got += p.ready
        p.ready.clear()
    assert [(r.method, r.url, r.body) for r in got] == MIX


def test_a_body_spanning_reads_is_not_parsed_as_requests():
    """The bytes after a body that began in an earlier read are found by its length, never by
    searching: a request line inside the body stays body."""
    body = b"x" * 10 + line(b"BREW", b"/smuggled") + b"y" * 10
    raw = line(b"POST", b"/a", b"Content-Length: %d\r\n" % len(body))
    p = RequestParser()
    p.feed(raw + body[:5])
    p.feed(body[5:] + line(b"BREW", b"/real"))
    assert [(r.method, r.url) for r in p.ready] == [(b"POST", b"/a"), (b"BREW", b"/real")]
    assert p.ready[0].body == body


def test_a_head_spanning_reads_then_an_extension_method_in_the_same_read():
    p = RequestParser()
    p.feed(b"GET /a HTTP/1.1\r\nHost: h\r")
    p.feed(b"\n\r\n" + line(b"BREW", b"/b"))
    assert [(r.method, r.url) for r in p.ready] == [(b"GET", b"/a"), (b"BREW", b"/b")]


def test_an_unfinished_extension_method_keeps_the_head_deadline_running():
    p = parse(b"VERSION-CONT")
    assert p.in_head and not p.ready and p.current is not None
    p.feed(b"ROL / HTTP/1.1\r\nHost: h\r\n\r\n")
    (req,) = p.ready
    assert req.method == b"VERSION-CONTROL" and not p.in_head


def test_an_unfinished_method_that_breaks_the_rules_is_400_at_once():
    assert status_of(b"BREWBREWBREWBREWBREWB") == 400  # already over 20 characters
    assert status_of(b"BRew") == 400


def test_an_extension_method_after_a_chunked_body_that_spans_reads():
    p = RequestParser()
    p.feed(line(b"POST", b"/c", b"Transfer-Encoding: chunked\r\n") + b"4\r\nab")
    p.feed(b"cd\r\n0\r\n\r\n" + line(b"BREW", b"/b"))
    assert [(r.method, r.url, r.body) for r in p.ready] == [(b"POST", b"/c", b"abcd"),
                                                            (b"BREW", b"/b", b"")]


def test_an_extension_method_after_trailers_of_a_body_that_spans_reads_is_refused():
    """The one place berth cannot find such a request line: after a chunked body that began
    in an earlier read and ends with trailers (its end is found by searching for a bare last
    chunk). A 400 and a closed connection, never a guess at where the request starts."""
    p = RequestParser()
    p.feed(line(b"POST", b"/c", b"Transfer-Encoding: chunked\r\n") + b"4\r\nab")
    with pytest.raises(HttpError) as info:
        p.feed(b"cd\r\n0\r\nX-T: 1\r\n\r\n" + line(b"BREW", b"/b"))
    assert info.value.status == 400 and [r.url for r in p.ready] == [b"/c"]
    p = RequestParser()  # a method llhttp knows is parsed as ever
    p.feed(line(b"POST", b"/c", b"Transfer-Encoding: chunked\r\n") + b"4\r\nab")
    p.feed(b"cd\r\n0\r\nX-T: 1\r\n\r\n" + line(b"PUT", b"/b"))
    assert [r.url for r in p.ready] == [b"/c", b"/b"]


@pytest.mark.parametrize("endless", [b"0\r\nX-Trailer: ", b"0\r\nX-Trail", b"5;ext="],
                         ids=["trailer-value", "trailer-name", "chunk-extension"])
def test_a_trailer_or_chunk_line_that_never_ends_is_431_once_over_the_head_limit(endless):
    """llhttp keeps a trailer field's bytes until its line ends: without a bound, a client
    could grow the worker's memory (and its copying) without end, as a header could."""
    p = RequestParser(limit_request_fields=10, limit_request_field_size=100)
    p.feed(CHUNKED_HEAD + b"5\r\nhello\r\n" + endless)
    with pytest.raises(HttpError) as info:
        for _ in range(100):
            p.feed(b"a" * 1000)
    assert info.value.status == 431


def test_a_long_chunked_body_in_small_reads_is_not_bounded_by_the_head_limit():
    p = RequestParser(limit_request_fields=10, limit_request_field_size=100,
                      body_buffer_size=64)
    p.feed(CHUNKED_HEAD)
    for _ in range(2000):
        p.feed(b"1\r\n")
        p.feed(b"x\r\n")
    p.feed(b"0\r\n\r\n")
    (req,) = p.ready
    assert b"".join(req.body_stream.chunks) == b"x" * 2000


# --- found by fuzzing split pipelines (fuzz/fuzz_parser.py's comparison of reads) ------------

def reads_of(raw: bytes, cuts: list[int]) -> list[bytes]:
    return [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]


def parse_reads(reads: list[bytes], **kw) -> list[tuple]:
    p = RequestParser(**kw)
    got = []
    for data in reads:
        p.feed(data)
        got += p.ready
        p.ready.clear()
    assert p.current is None
    return [(r.method, r.url, b"".join(r.body_stream.chunks) if r.streaming else r.body)
            for r in got]


def test_the_rest_of_a_read_after_a_bare_last_chunk_inside_the_next_head_is_parsed():
    """A read continuing a chunked body with trailers: the place that looked like a last chunk
    ('Content-Length: 20\\r\\n\\r\\n' ends with '0\\r\\n\\r\\n') was inside the next request's
    head. The bytes after it were dropped, and the following read parsed as that request's
    body."""
    raw = (b"POST /1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"4\r\nabcd\r\n0\r\nX-T: 1\r\n\r\n"
           b"PUT /2 HTTP/1.1\r\nHost: h\r\nContent-Length: 20\r\n\r\n" + b"b" * 20
           + b"POST /3 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"2\r\nEG\r\n0\r\n\r\n")
    cuts = [raw.index(b"X-T") + 2, raw.index(b"EG") + 3]
    assert parse_reads(reads_of(raw, cuts), body_buffer_size=8) == [
        (b"POST", b"/1", b"abcd"), (b"PUT", b"/2", b"b" * 20), (b"POST", b"/3", b"EG")]


def test_a_method_split_after_a_chunked_body_that_began_in_an_earlier_read():
    """The read that ends a chunked body also begins the next request line ('PROPFIN', then
    'DX' in the next read). Once, that request's start was taken for the read's, and the method
    for 'ost: h...'; now the read is cut at the bare last chunk. With a trailer there is no
    such place: the method llhttp does not know gets the documented 400, never a guess."""
    raw = (b"GETS /0 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
           b"PROPFINDX /1 HTTP/1.1\r\nHost: h\r\n\r\n")
    cuts = [raw.index(b"Host") + 1, raw.index(b"DX /1")]
    assert parse_reads(reads_of(raw, cuts)) == [(b"GETS", b"/0", b""),
                                                 (b"PROPFINDX", b"/1", b"")]
    raw = raw.replace(b"0\r\n\r\nPROP", b"0\r\nX-T: 1\r\n\r\nPROP")
    cuts = [raw.index(b"Host") + 1, raw.index(b"DX /1")]
    with pytest.raises(HttpError) as info:
        parse_reads(reads_of(raw, cuts))
    assert info.value.detail == AFTER_CHUNKED


# --- what a trusted proxy may set: marked, and names with '_' kept aside ---------------------

def test_forwarding_headers_mark_the_request_and_forwarder_names_are_kept_aside():
    from berth.http.parser import mark_forwarding

    mark_forwarding(["X-FORWARDED-PROTO", "SCRIPT_NAME"])
    try:
        (plain,) = parse(b"GET / HTTP/1.1\r\nHost: h\r\nX-Other: 1\r\n\r\n").ready
        assert not plain.forwarded and plain.forwarder is None
        (req,) = parse(b"GET / HTTP/1.1\r\nHost: h\r\nx-forwarded-proto: https\r\n"
                       b"Script_Name: /app\r\nX_Other: 2\r\n\r\n").ready
        assert req.forwarded and req.forwarder == [("SCRIPT_NAME", "/app")]
        # the dash header stays a header; the '_' ones are not headers (X_Other: dropped)
        assert req.headers == {"HTTP_HOST": "h", "HTTP_X_FORWARDED_PROTO": "https"}
    finally:
        mark_forwarding([])
    (req,) = parse(b"GET / HTTP/1.1\r\nHost: h\r\nScript_Name: /app\r\n\r\n").ready
    assert not req.forwarded and req.forwarder is None and "HTTP_SCRIPT_NAME" not in req.headers


def test_each_line_of_a_scheme_header_is_kept_as_received():
    """A scheme header's lines are judged one by one (berth/forwarded.py, as Gunicorn): joined,
    `https, http` on one line and the lines `https` and `http` would be the same value."""
    from berth.http.parser import mark_forwarding

    mark_forwarding(["X-FORWARDED-FOR"], ["X-FORWARDED-PROTO"])
    try:
        (one,) = parse(b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https, http \r\n"
                       b"\r\n").ready
        assert one.forwarded and one.scheme_fields == [("HTTP_X_FORWARDED_PROTO", b"https, http")]
        (two,) = parse(b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\n"
                       b"x-forwarded-proto: http\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n").ready
        assert two.scheme_fields == [("HTTP_X_FORWARDED_PROTO", b"https"),
                                     ("HTTP_X_FORWARDED_PROTO", b"http")]
        assert two.headers["HTTP_X_FORWARDED_PROTO"] == "https,http"  # the environ's join
        (other,) = parse(b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n").ready
        assert other.forwarded and other.scheme_fields is None
    finally:
        mark_forwarding([])


def test_bytes_after_a_websocket_handshake_fed_in_slices_are_all_the_new_protocols():
    """The ASGI worker's parser switches protocols at a WebSocket handshake: what follows its
    head in the read, however many slices on, is the first frames (upgrade_rest), not
    requests."""
    from berth.asgi.protocol import AsgiParser

    frames = bytes(range(256)) * 40  # 10 KiB: more than two slices
    p = AsgiParser()
    assert p.feed_some(b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                       b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n" + frames, 16) is None
    assert [r.url for r in p.ready] == [b"/ws"] and p.switched
    assert p.upgrade_rest == frames


# --- a line still arriving is bounded as the field it will be (_line_so_far) ------------------

@pytest.mark.parametrize("prefix", [b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: ",
                                    CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nX-Trailer: ",
                                    CHUNKED_HEAD + b"5\r\nhello\r\n0\r\nX-Trail"],
                         ids=["header", "trailer-value", "trailer-name"])
def test_a_line_growing_over_reads_is_431_once_longer_than_a_field_may_be(prefix):
    """httptools joins the pieces of a field as reads bring them (a copy of all of it each
    time): refused once past --limit-request-field_size, not at the head's bound (808 KiB)."""
    p = RequestParser(limit_request_field_size=100)
    p.feed(prefix)
    p.feed(b"a" * 50)
    with pytest.raises(HttpError) as info:
        for _ in range(3):
            p.feed(b"a" * 30)
    assert info.value.status == 431


def test_a_field_line_at_the_limit_split_before_its_lf_is_served():
    """The whole line with its CRLF is --limit-request-field_size bytes (Gunicorn's count):
    its CR may arrive in one read and its LF in the next."""
    line = b"X-A: " + b"v" * (8190 - len(b"X-A: \r\n"))
    head = b"GET / HTTP/1.1\r\nHost: h\r\n" + line + b"\r"
    p = RequestParser()
    for i in range(0, len(head), 1000):
        p.feed(head[i:i + 1000])
    p.feed(b"\n\r\n")
    (req,) = p.ready
    assert req.headers["HTTP_X_A"] == line[5:].decode()


def test_a_chunk_extension_growing_over_reads_is_431_past_a_field_line():
    p = RequestParser(limit_request_field_size=100)
    p.feed(CHUNKED_HEAD + b"5\r\nhello\r\n5;e=")
    with pytest.raises(HttpError) as info:
        for _ in range(5):
            p.feed(b"x" * 30)
    assert info.value.status == 431


def test_a_long_body_line_of_a_pipelined_request_is_not_counted_as_the_next_heads():
    """The bytes after the last LF of a read are the unfinished head's only when no request
    ended before it in that read: a body without LF before it is not part of its line."""
    body = b"b" * 9000
    p = RequestParser()
    p.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 9000\r\n\r\n" + body + b"GET /n")
    p.feed(b"ext HTTP/1.1\r\nHost: h\r\n\r\n")
    assert [(r.url, len(r.body)) for r in p.ready] == [(b"/", 9000), (b"/next", 0)]


def test_a_request_line_longer_than_a_field_line_split_over_reads_is_the_line_limits():
    """With --limit-request-line above --limit-request-field_size, a long target arriving
    over reads is judged by the request line's limit (414), not taken for a field (431)."""
    target = b"/" + b"t" * 300
    p = RequestParser(limit_request_line=400, limit_request_field_size=100)
    p.feed(b"GET " + target[:50])
    p.feed(target[50:])
    p.feed(b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert [r.url for r in p.ready] == [target]
    p = RequestParser(limit_request_line=400, limit_request_field_size=100)
    p.feed(b"GET " + target[:50])
    with pytest.raises(HttpError) as info:
        p.feed(target[50:] * 2)
    assert info.value.status == 414

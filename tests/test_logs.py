"""The access-log format, compiled (berth/logs.py): atoms and escaping, with plain dicts."""

from __future__ import annotations

import base64
import re
import shlex

import pytest

from berth.logs import compile_access_format, escape

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

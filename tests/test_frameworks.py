"""Real frameworks on the real server: Flask (tests/apps/flask_app.py) and Django
(tests/apps/djapp.py) behind `python -m berth`, checked over sockets on 127.0.0.1.

Each framework runs in one server per thread configuration (`-w 1 --threads 4` and
`-w 1 --threads 1`), started once per test class. The same cases run against both frameworks
(`_FrameworkCases`); framework-specific ones live in the subclasses. At teardown every server's
stderr is checked for tracebacks other than the ones the `/boom` and `/stream-error` routes raise
on purpose ("RuntimeError: intentional failure ...").

The raw-socket client (`Conn`) is strict about framing: a duplicate response header, bytes after
a complete response, or a close right after a keep-alive response all fail a test.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import random
import socket
import time
import uuid
from pathlib import Path

import pytest
import requests
from conftest import APPS, Server

CONFIGS = {
    "threads4": ["-w", "1", "--threads", "4"],
    "threads1": ["-w", "1", "--threads", "1"],
}
TIMEOUT = (5, 20)  # requests: connect, read
STATIC_HELLO = APPS / "static" / "hello.txt"


def det_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def files_dir(tmp_path_factory) -> Path:
    """Files the apps serve from $BERTH_TEST_FILES_DIR (/files/<name>, /data/<name>)."""
    d = tmp_path_factory.mktemp("served-files")
    (d / "big.bin").write_bytes(det_bytes(3 * 1024 * 1024 + 7, seed=1))
    (d / "small.bin").write_bytes(det_bytes(1000, seed=2))
    (d / "empty.bin").write_bytes(b"")
    (d / "with space.txt").write_bytes(b"a file whose name has a space\n")
    return d


def start_server(app_spec: str, config: str, tmp: Path, files_dir: Path) -> Server:
    srv = Server(CONFIGS[config] + [app_spec], tmp, wait_ready=False,
                 env={"BERTH_TEST_FILES_DIR": str(files_dir)})
    try:
        srv.wait_for_log("ready: ", timeout=30)
    except BaseException:
        srv.stop()
        raise
    srv.config = config
    srv.threads = int(CONFIGS[config][CONFIGS[config].index("--threads") + 1])
    return srv


def stop_and_check(srv: Server) -> None:
    srv.stop()
    err = srv.stderr()
    tracebacks = err.count("Traceback (most recent call last)")
    intended = sum(1 for line in err.splitlines()
                   if line.startswith("RuntimeError: intentional failure"))
    assert tracebacks <= intended, f"unexpected tracebacks in berth's stderr:\n{err[-6000:]}"


@pytest.fixture
def session():
    s = requests.Session()
    s.trust_env = False  # never go through a proxy from the environment
    yield s
    s.close()


def build_request(method: str, path: str, headers: dict | None = None, body: bytes = b"",
                  version: str = "HTTP/1.1") -> bytes:
    hdrs = {"Host": "127.0.0.1"}
    hdrs.update(headers or {})
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k in hdrs):
        hdrs["Content-Length"] = str(len(body))
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    return (head + "\r\n").encode("latin-1") + body


class Conn:
    """A client connection with its own receive buffer (for keep-alive and pipelining)."""

    def __init__(self, port: int, timeout: float = 20.0, rcvbuf: int | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # a small window: the server's writes back up quickly
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.timeout = timeout
        self.buf = b""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError(f"connection closed; buffered: {self.buf[:200]!r}")
        return data

    def _need(self, n: int) -> None:
        while len(self.buf) < n:
            self.buf += self._recv()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self.buf += self._recv()
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def read_head(self) -> tuple[int, dict]:
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1."), f"bad status line {lines[0]!r}"
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            k = k.strip().lower()
            assert k not in headers or k == "set-cookie", f"duplicate response header {k!r}"
            headers[k] = v.strip()
        return status, headers

    def read_response(self, head_only: bool = False) -> tuple[int, dict, bytes]:
        """One response: (status, headers, body); headers["_chunks"] counts chunks."""
        status, headers = self.read_head()
        if head_only or status in (204, 304) or 100 <= status < 200:
            return status, headers, b""
        if headers.get("transfer-encoding", "").lower() == "chunked":
            assert "content-length" not in headers, "both Content-Length and chunked"
            out = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    assert self._line() == b"", "unexpected trailer"
                    break
                self._need(size + 2)
                out.append(self.buf[:size])
                assert self.buf[size:size + 2] == b"\r\n", "chunk not followed by CRLF"
                self.buf = self.buf[size + 2:]
            headers["_chunks"] = str(len(out))
            return status, headers, b"".join(out)
        if "content-length" in headers:
            n = int(headers["content-length"])
            self._need(n)
            body, self.buf = self.buf[:n], self.buf[n:]
            return status, headers, body
        return status, headers, self.read_until_closed()

    def wait_for(self, marker: bytes, timeout: float) -> bool:
        """Receive until `marker` is in the buffer; False if `timeout` passes (or EOF) first."""
        deadline = time.monotonic() + timeout
        try:
            while marker not in self.buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.sock.settimeout(left)
                data = self.sock.recv(65536)
                if not data:
                    return False
                self.buf += data
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(self.timeout)

    def read_until_closed(self) -> bytes:
        data, self.buf = self.buf, b""
        while True:
            more = self.sock.recv(65536)
            if not more:
                return data
            data += more

    def request(self, method: str, path: str, headers: dict | None = None, body: bytes = b"",
                version: str = "HTTP/1.1") -> tuple[int, dict, bytes]:
        self.send(build_request(method, path, headers, body, version))
        return self.read_response(head_only=(method == "HEAD"))

    def assert_quiet(self) -> None:
        """Nothing more arrives, and the connection stays open, after a complete response."""
        assert self.buf == b"", f"extra bytes after the response: {self.buf[:200]!r}"
        self.sock.settimeout(0.3)
        try:
            extra = self.sock.recv(65536)
        except TimeoutError:
            extra = None
        finally:
            self.sock.settimeout(self.timeout)
        assert extra is None, f"unexpected bytes or close after a complete response: {extra!r}"


def one_shot(port: int, method: str, path: str, headers: dict | None = None, body: bytes = b"",
             version: str = "HTTP/1.1"):
    """One request with `Connection: close` on a fresh connection: (status, headers, body)."""
    hdrs = {"Connection": "close"}
    hdrs.update(headers or {})
    with Conn(port) as conn:
        return conn.request(method, path, hdrs, body, version)


def multipart(fields: dict, files: dict) -> tuple[bytes, str]:
    """(body, content-type) of a multipart/form-data request, built by requests."""
    prep = requests.Request("POST", "http://127.0.0.1/", data=fields, files=files).prepare()
    return prep.body, prep.headers["Content-Type"]


def chunk_body(data: bytes, size: int) -> bytes:
    out = [b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size])
           for i in range(0, len(data), size)]
    return b"".join(out) + b"0\r\n\r\n"


class _FrameworkCases:
    """Cases both apps support. Subclasses set `app_spec`, `r` (route map) and expectations."""

    app_spec: str
    r: dict[str, str]
    index_body: bytes
    index_type: str
    stream_head: str  # prefix of each /stream chunk: "chunk" or "django"

    @pytest.fixture(scope="class", params=list(CONFIGS))
    def server(self, request, tmp_path_factory, files_dir):
        tmp = tmp_path_factory.mktemp(f"{self.app_spec.split(':')[0]}-{request.param}")
        srv = start_server(self.app_spec, request.param, tmp, files_dir)
        yield srv
        stop_and_check(srv)

    # helpers ---------------------------------------------------------------------------
    def pattern(self, n: int, size: int) -> bytes:
        out = []
        for i in range(n):
            head = f"{self.stream_head} {i:04d}|".encode()
            out.append((head * (size // len(head) + 1))[:size])
        return b"".join(out)

    # plain routes ----------------------------------------------------------------------
    def test_index(self, server):
        status, headers, body = one_shot(server.port, "GET", self.r["index"])
        assert status == 200
        assert body == self.index_body
        assert headers["content-type"] == self.index_type
        assert "date" in headers
        if "content-length" in headers:
            assert int(headers["content-length"]) == len(body)

    def test_index_with_requests(self, server, session):
        resp = session.get(server.url + self.r["index"], timeout=TIMEOUT)
        assert resp.status_code == 200
        assert resp.content == self.index_body

    def test_query_args_and_headers(self, server):
        status, headers, body = one_shot(
            server.port, "GET", self.r["query"] + "?x=1&x=caf%C3%A9&y=&z=a+b%26c",
            headers={"X-Custom": "hello there", "User-Agent": "berth-tests/1"})
        assert status == 200
        assert headers["content-type"] == "application/json"
        data = json.loads(body)
        assert data["args"] == {"x": ["1", "café"], "y": [""], "z": ["a b&c"]}
        assert data["headers"]["x-custom"] == "hello there"
        assert data["headers"]["host"] == "127.0.0.1"
        assert data["path"] == self.r["query"]
        assert data["method"] == "GET"

    def test_environ(self, server, session):
        resp = session.get(server.url + self.r["environ"], timeout=TIMEOUT)
        assert resp.status_code == 200
        env = resp.json()
        assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
        assert env["SCRIPT_NAME"] == ""
        assert env["PATH_INFO"] == self.r["environ"]
        assert env["wsgi.url_scheme"] == "http"
        # frameworks only take the file-wrapper path (and berth its sendfile path) with this
        assert env["has_file_wrapper"] is True

    def test_not_found(self, server, session):
        resp = session.get(server.url + "/no/such/route", timeout=TIMEOUT)
        assert resp.status_code == 404

    def test_app_exception_is_500_and_server_survives(self, server, session):
        resp = session.get(server.url + self.r["boom"], timeout=TIMEOUT)
        assert resp.status_code == 500
        assert "Server Error" in resp.text
        resp = session.get(server.url + self.r["index"], timeout=TIMEOUT)
        assert resp.status_code == 200
        assert resp.content == self.index_body

    # request bodies --------------------------------------------------------------------
    def test_post_form_urlencoded(self, server):
        body = b"a=1&b=two+words&b=caf%C3%A9&empty="
        status, headers, resp = one_shot(
            server.port, "POST", self.r["form"], body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 200
        data = json.loads(resp)
        assert data["form"] == {"a": ["1"], "b": ["two words", "café"], "empty": [""]}
        assert data["content_type"] == "application/x-www-form-urlencoded"

    def test_post_form_multipart_fields(self, server, session):
        resp = session.post(server.url + self.r["form"],
                            files={"a": (None, "1"), "b": (None, "zwei ünd drei")},
                            timeout=TIMEOUT)
        assert resp.status_code == 200
        assert resp.json()["form"] == {"a": ["1"], "b": ["zwei ünd drei"]}
        assert resp.json()["content_type"] == "multipart/form-data"

    def test_post_json(self, server, session):
        payload = {"numbers": [1, 2, 3, 4.5], "name": "café ☕", "nested": {"ok": True}}
        resp = session.post(server.url + self.r["json"], json=payload, timeout=TIMEOUT)
        assert resp.status_code == 200
        data = resp.json()
        assert data["echo"] == payload
        assert data["computed"] == {"sum": 10.5, "count": 4, "keys": ["name", "nested", "numbers"]}
        assert data["content_length"] == len(json.dumps(payload).encode())

    def test_post_json_large(self, server, session):
        # above berth's default --body-buffer-size (1 MiB): the body is streamed to the app
        payload = {"numbers": list(range(200_000)), "pad": "x" * 300_000}
        raw = json.dumps(payload).encode()
        assert len(raw) > 1024 * 1024
        resp = session.post(server.url + self.r["json"], data=raw,
                            headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
        assert resp.status_code == 200
        data = resp.json()
        assert data["computed"]["sum"] == sum(range(200_000))
        assert data["content_length"] == len(raw)

    def test_upload_2mib(self, server, session):
        content = det_bytes(2 * 1024 * 1024, seed=42)
        other = det_bytes(12_345, seed=43)
        resp = session.post(
            server.url + self.r["upload"],
            data={"note": "two files"},
            files=[("file", ("blob.bin", content, "application/octet-stream")),
                   ("extra", ("small.dat", other, "application/x-test"))],
            timeout=TIMEOUT)
        assert resp.status_code == 200, resp.text
        data = resp.json()
        files = {f["field"]: f for f in data["files"]}
        assert files["file"]["filename"] == "blob.bin"
        assert files["file"]["size"] == len(content)
        assert files["file"]["sha256"] == sha(content)
        assert files["extra"]["filename"] == "small.dat"
        assert files["extra"]["content_type"] == "application/x-test"
        assert files["extra"]["sha256"] == sha(other)
        assert data["form"] == {"note": ["two files"]}

    def test_upload_raw_socket_slow_client(self, server):
        # the body arrives in pieces with pauses: the server must wait for all of it
        content = det_bytes(300_000, seed=44)
        body, ctype = multipart({"note": "slow"}, {"file": ("slow.bin", content)})
        head = build_request("POST", self.r["upload"],
                             {"Content-Type": ctype, "Content-Length": str(len(body)),
                              "Connection": "close"})
        with Conn(server.port) as conn:
            conn.send(head)
            for i in range(0, len(body), 100_000):
                time.sleep(0.05)
                conn.send(body[i:i + 100_000])
            status, headers, resp = conn.read_response()
        assert status == 200
        f = json.loads(resp)["files"][0]
        assert (f["filename"], f["size"], f["sha256"]) == ("slow.bin", len(content), sha(content))

    def test_upload_expect_100_continue(self, server):
        content = det_bytes(2 * 1024 * 1024, seed=45)
        body, ctype = multipart({}, {"file": ("continue.bin", content)})
        head = build_request("POST", self.r["upload"],
                             {"Content-Type": ctype, "Content-Length": str(len(body)),
                              "Expect": "100-continue", "Connection": "close"})
        with Conn(server.port) as conn:
            conn.send(head)
            got_interim = conn.wait_for(b"\r\n\r\n", timeout=5)
            assert got_interim, f"no interim response before the body was sent: {conn.buf!r}"
            status, headers = conn.read_head()
            assert status == 100, f"expected 100 Continue before the body, got {status}"
            conn.send(body)
            status, headers, resp = conn.read_response()
        assert status == 200
        f = json.loads(resp)["files"][0]
        assert (f["size"], f["sha256"]) == (len(content), sha(content))

    # streaming responses ---------------------------------------------------------------
    def test_stream_is_chunked(self, server):
        status, headers, body = one_shot(server.port, "GET", self.r["stream"] + "?n=5&size=32")
        assert status == 200
        assert headers.get("transfer-encoding", "").lower() == "chunked"
        assert "content-length" not in headers
        assert headers["content-type"] == "application/octet-stream"
        assert body == self.pattern(5, 32)
        assert int(headers["_chunks"]) >= 1

    def test_stream_http10_is_close_delimited(self, server):
        status, headers, body = one_shot(server.port, "GET", self.r["stream"] + "?n=4&size=50",
                                         version="HTTP/1.0")
        assert status == 200
        assert "transfer-encoding" not in headers  # no chunked framing in HTTP/1.0
        assert body == self.pattern(4, 50)

    def test_stream_large(self, server, session):
        n, size = 80, 65536  # 5 MiB
        resp = session.get(server.url + self.r["stream"] + f"?n={n}&size={size}",
                           stream=True, timeout=TIMEOUT)
        assert resp.status_code == 200
        h = hashlib.sha256()
        total = 0
        for block in resp.iter_content(256 * 1024):
            h.update(block)
            total += len(block)
        assert total == n * size
        assert h.hexdigest() == sha(self.pattern(n, size))

    def test_stream_error_before_first_chunk_is_500(self, server, session):
        status, headers, body = one_shot(server.port, "GET", self.r["stream_error"] + "?at=0")
        assert status == 500
        resp = session.get(server.url + self.r["index"], timeout=TIMEOUT)
        assert (resp.status_code, resp.content) == (200, self.index_body)

    def test_stream_error_midway_is_not_a_complete_body(self, server):
        """Headers and two chunks are out when the generator raises: the client must see a
        truncated body (connection closed, no last chunk), never a complete response."""
        with Conn(server.port, timeout=10) as conn:
            conn.send(build_request("GET", self.r["stream_error"] + "?at=2"))
            status, headers = conn.read_head()
            assert status == 200
            assert headers.get("transfer-encoding", "").lower() == "chunked"
            rest = conn.read_until_closed()  # the server must close: the body cannot go on
        assert not rest.endswith(b"0\r\n\r\n"), f"truncated body framed as complete: {rest!r}"
        assert self.pattern(2, 16)[:16] in rest

    def test_stream_to_slow_reader(self, server):
        """A client that does not read for a while: the server's write buffer fills up while
        the generator is mid-way. The rest of the body must still come out intact (Flask's
        /stream uses stream_with_context, whose context must survive between chunks)."""
        n, size = 160, 65536  # 10 MiB: more than the kernel buffers on both ends hold
        with Conn(server.port, rcvbuf=16384) as conn:
            conn.send(build_request("GET", self.r["stream"] + f"?n={n}&size={size}",
                                    {"Connection": "close"}))
            time.sleep(1.0)
            status, headers, body = conn.read_response()
        assert status == 200
        assert len(body) == n * size
        assert sha(body) == sha(self.pattern(n, size))

    def test_stream_empty(self, server):
        status, headers, body = one_shot(server.port, "GET", self.r["stream"] + "?n=0")
        assert status == 200
        assert body == b""

    # files through wsgi.file_wrapper ---------------------------------------------------
    def test_static_file_from_app_folder(self, server):
        status, headers, body = one_shot(server.port, "GET", self.r["static"] + "hello.txt")
        assert status == 200
        expected = STATIC_HELLO.read_bytes()
        assert body == expected
        assert int(headers["content-length"]) == len(expected)
        assert headers["content-type"].startswith("text/plain")

    @pytest.mark.parametrize("name", ["big.bin", "small.bin", "with space.txt"])
    def test_file_bytes_match_disk(self, server, files_dir, name):
        path = self.r["files"] + name.replace(" ", "%20")
        status, headers, body = one_shot(server.port, "GET", path)
        expected = (files_dir / name).read_bytes()
        assert status == 200
        assert int(headers["content-length"]) == len(expected)
        assert "transfer-encoding" not in headers
        assert len(body) == len(expected)
        assert sha(body) == sha(expected)

    def test_file_large_with_requests(self, server, session, files_dir):
        resp = session.get(server.url + self.r["files"] + "big.bin", timeout=TIMEOUT)
        assert resp.status_code == 200
        assert resp.content == (files_dir / "big.bin").read_bytes()

    def test_empty_file(self, server):
        status, headers, body = one_shot(server.port, "GET", self.r["files"] + "empty.bin")
        assert status == 200
        assert headers["content-length"] == "0"
        assert body == b""

    def test_missing_file_is_404(self, server):
        status, _, _ = one_shot(server.port, "GET", self.r["files"] + "nope.bin")
        assert status == 404

    def test_bytesio_file(self, server):
        # a file-like object without fileno(): the file wrapper must fall back to read()
        status, headers, body = one_shot(server.port, "GET", self.r["bytesio"] + "?size=300000")
        assert status == 200
        expected = bytes(i % 251 for i in range(300_000))
        assert int(headers["content-length"]) == len(expected)
        assert body == expected

    def test_head_file_sends_no_body(self, server, files_dir):
        size = (files_dir / "big.bin").stat().st_size
        with Conn(server.port) as conn:
            status, headers, body = conn.request("HEAD", self.r["files"] + "big.bin")
            assert status == 200
            assert int(headers["content-length"]) == size
            assert headers.get("connection", "").lower() != "close"
            conn.assert_quiet()
            # the connection is still in sync: the next response parses cleanly
            status, headers, body = conn.request("GET", self.r["index"])
            assert status == 200
            assert body == self.index_body

    def test_head_index_sends_no_body(self, server):
        with Conn(server.port) as conn:
            status, headers, body = conn.request("HEAD", self.r["index"])
            assert status == 200
            conn.assert_quiet()
            status, headers, body = conn.request("GET", self.r["index"])
            assert status == 200
            assert body == self.index_body

    def test_head_on_a_streaming_route_claims_no_length(self, server):
        # Werkzeug hands a HEAD an empty body; the GET would be chunked, so a length of 0
        # would be false (and a cache or a client trusting it would be misled)
        with Conn(server.port) as conn:
            status, headers, body = conn.request("GET", self.r["stream"] + "?n=3&size=10")
            assert status == 200 and len(body) == 30
            assert "content-length" not in headers
            status, headers, body = conn.request("HEAD", self.r["stream"] + "?n=3&size=10")
            assert status == 200
            assert "content-length" not in headers, headers
            conn.assert_quiet()
            status, headers, body = conn.request("GET", self.r["index"])
            assert (status, body) == (200, self.index_body)

    # connections -----------------------------------------------------------------------
    def test_keep_alive_mixed_sequence(self, server, files_dir):
        """Every kind of response on one persistent connection, each framed correctly."""
        big = (files_dir / "big.bin").read_bytes()
        upload = det_bytes(50_000, seed=46)
        mp_body, mp_type = multipart({"k": "v"}, {"file": ("ka.bin", upload)})
        with Conn(server.port) as conn:
            for round_ in range(2):
                status, h, body = conn.request("GET", self.r["index"])
                assert (status, body) == (200, self.index_body)
                assert h.get("connection", "").lower() != "close"

                payload = json.dumps({"numbers": [round_, 2]}).encode()
                status, h, body = conn.request("POST", self.r["json"], body=payload,
                                           headers={"Content-Type": "application/json"})
                assert status == 200
                assert json.loads(body)["computed"]["sum"] == round_ + 2

                status, h, body = conn.request("GET", self.r["stream"] + "?n=3&size=10")
                assert (status, body) == (200, self.pattern(3, 10))

                status, h, body = conn.request("GET", self.r["files"] + "big.bin")
                assert status == 200 and body == big

                status, h, body = conn.request("HEAD", self.r["static"] + "hello.txt")
                assert status == 200 and body == b""

                status, h, body = conn.request("GET", self.r["bytesio"] + "?size=1000")
                assert status == 200 and body == bytes(i % 251 for i in range(1000))

                status, h, body = conn.request("POST", self.r["upload"], body=mp_body,
                                           headers={"Content-Type": mp_type})
                assert status == 200
                assert json.loads(body)["files"][0]["sha256"] == sha(upload)

                status, h, body = conn.request("GET", self.r["files"] + "empty.bin")
                assert (status, body) == (200, b"")

                status, h, body = conn.request("GET", self.r["boom"])
                assert status == 500

                status, h, body = conn.request("GET", "/no/such/route")
                assert status == 404
            conn.assert_quiet()

    def test_pipelined_requests(self, server, files_dir):
        reqs = (build_request("GET", self.r["index"])
                + build_request("GET", self.r["stream"] + "?n=2&size=8")
                + build_request("GET", self.r["files"] + "small.bin")
                + build_request("GET", self.r["query"] + "?x=last", {"Connection": "close"}))
        with Conn(server.port) as conn:
            conn.send(reqs)
            results = [conn.read_response() for _ in range(4)]
            assert conn.read_until_closed() == b""
        assert [r[0] for r in results] == [200, 200, 200, 200]
        assert results[0][2] == self.index_body
        assert results[1][2] == self.pattern(2, 8)
        assert results[2][2] == (files_dir / "small.bin").read_bytes()
        assert json.loads(results[3][2])["args"] == {"x": ["last"]}

    def test_concurrent_clients(self, server, files_dir):
        big = (files_dir / "big.bin").read_bytes()
        upload = det_bytes(2 * 1024 * 1024, seed=47)

        def fetch(i):
            with requests.Session() as s:
                s.trust_env = False
                kind = i % 4
                if kind == 0:
                    r = s.get(server.url + self.r["files"] + "big.bin", timeout=TIMEOUT)
                    return r.status_code == 200 and r.content == big
                if kind == 1:
                    r = s.get(server.url + self.r["stream"] + "?n=20&size=4096", timeout=TIMEOUT)
                    return r.status_code == 200 and r.content == self.pattern(20, 4096)
                if kind == 2:
                    r = s.post(server.url + self.r["upload"],
                               files={"file": ("c.bin", upload)}, timeout=TIMEOUT)
                    return r.status_code == 200 and r.json()["files"][0]["sha256"] == sha(upload)
                r = s.get(server.url + self.r["query"] + f"?i={i}", timeout=TIMEOUT)
                return r.status_code == 200 and r.json()["args"] == {"i": [str(i)]}

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(fetch, range(16)))
        assert results == [True] * 16


class TestFlask(_FrameworkCases):
    app_spec = "flask_app:app"
    r = {"index": "/", "query": "/query", "environ": "/environ", "form": "/form",
         "json": "/json", "upload": "/upload", "stream": "/stream", "static": "/static/",
         "files": "/files/", "bytesio": "/bytesio", "boom": "/boom",
         "stream_error": "/stream-error"}
    index_body = b"Hello from Flask on berth!\n"
    index_type = "text/plain; charset=utf-8"
    stream_head = "chunk"

    def test_index_has_content_length(self, server):
        status, headers, body = one_shot(server.port, "GET", "/")
        assert headers["content-length"] == str(len(self.index_body))
        assert "transfer-encoding" not in headers

    def test_environ_details(self, server, session):
        env = session.get(server.url + "/environ?a=1", timeout=TIMEOUT).json()
        assert env["REQUEST_METHOD"] == "GET"
        assert env["QUERY_STRING"] == "a=1"
        assert env["REMOTE_ADDR"] == "127.0.0.1"
        assert env["SERVER_PORT"] == str(server.port)
        assert env["wsgi.version"] == [1, 0]
        assert env["wsgi.run_once"] is False

    def test_repeated_request_header_is_combined(self, server):
        raw = (b"GET /query HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Multi: a\r\nX-Multi: b\r\n"
               b"Connection: close\r\n\r\n")
        with Conn(server.port) as conn:
            conn.send(raw)
            status, headers, body = conn.read_response()
        assert status == 200
        value = json.loads(body)["headers"]["x-multi"]
        assert [v.strip() for v in value.split(",")] == ["a", "b"]

    def test_percent_encoded_path(self, server):
        status, headers, body = one_shot(server.port, "GET", "/path/caf%C3%A9/x%20y/%E2%98%95")
        assert status == 200
        data = json.loads(body)
        assert data["p"] == "café/x y/☕"
        assert data["path"] == "/path/café/x y/☕"

    def test_chunked_request_body(self, server):
        # Werkzeug reads a chunked body only when the server sets wsgi.input_terminated
        payload = json.dumps({"numbers": list(range(1000)), "via": "chunked"}).encode()
        status, headers, body = one_shot(
            server.port, "POST", "/json", body=chunk_body(payload, 777),
            headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"})
        assert status == 200, body
        data = json.loads(body)
        assert data["echo"]["via"] == "chunked"
        assert data["computed"]["sum"] == sum(range(1000))

    def test_chunked_upload_2mib(self, server):
        content = det_bytes(2 * 1024 * 1024, seed=48)
        mp_body, mp_type = multipart({"how": "chunked"}, {"file": ("chunked.bin", content)})
        status, headers, body = one_shot(
            server.port, "POST", "/upload", body=chunk_body(mp_body, 65536),
            headers={"Content-Type": mp_type, "Transfer-Encoding": "chunked"})
        assert status == 200, body
        data = json.loads(body)
        assert data["form"] == {"how": ["chunked"]}
        f = data["files"][0]
        assert (f["size"], f["sha256"]) == (len(content), sha(content))

    def test_file_etag_and_304(self, server, files_dir):
        with Conn(server.port) as conn:
            status, headers, body = conn.request("GET", "/files/small.bin")
            assert status == 200
            etag = headers["etag"]
            assert "last-modified" in headers
            status, headers, body = conn.request("GET", "/files/small.bin",
                                             headers={"If-None-Match": etag})
            assert status == 304
            assert "transfer-encoding" not in headers
            conn.assert_quiet()
            status, headers, body = conn.request("GET", "/files/small.bin")
            assert status == 200
            assert body == (files_dir / "small.bin").read_bytes()

    @pytest.mark.parametrize("spec,start,end", [("1000-2999", 1000, 3000),
                                                ("-500", -500, None),
                                                ("3145000-", 3145000, None)])
    def test_file_range(self, server, files_dir, spec, start, end):
        data = (files_dir / "big.bin").read_bytes()
        expected = data[start:end]
        status, headers, body = one_shot(server.port, "GET", "/files/big.bin",
                                         headers={"Range": f"bytes={spec}"})
        assert status == 206
        assert int(headers["content-length"]) == len(expected)
        first = start % len(data)
        assert headers["content-range"] == \
            f"bytes {first}-{first + len(expected) - 1}/{len(data)}"
        assert body == expected

    @pytest.mark.parametrize("offset,length", [(0, 1000), (100, 500), (1_000_000, 1_500_000)])
    def test_file_wrapper_respects_content_length(self, server, files_dir, offset, length):
        data = (files_dir / "big.bin").read_bytes()
        with Conn(server.port) as conn:
            status, headers, body = conn.request(
                "GET", f"/partial/big.bin?offset={offset}&length={length}")
            assert status == 200
            assert headers["content-length"] == str(length)
            assert body == data[offset:offset + length]
            conn.assert_quiet()  # nothing past Content-Length
            status, headers, body = conn.request("GET", "/")
            assert (status, body) == (200, self.index_body)

    def test_stream_is_not_buffered(self, server, session):
        """The first chunk reaches the client while the generator is blocked."""
        if server.threads < 2:
            pytest.skip("needs a second app thread to serve /release")
        gate = uuid.uuid4().hex
        with Conn(server.port) as conn:
            conn.send(build_request("GET", f"/stream-gated?gate={gate}",
                                       {"Connection": "close"}))
            try:
                # the app's generator gives up after 10 s: wait well below that
                first = conn.wait_for(b"first chunk\n", timeout=5)
            finally:
                released = session.get(server.url + f"/release?gate={gate}", timeout=TIMEOUT)
            assert first, f"first chunk not sent while the generator waits; got {conn.buf!r}"
            assert released.status_code == 200
            status, headers, body = conn.read_response()
        assert status == 200
        assert headers.get("transfer-encoding", "").lower() == "chunked"
        assert body == b"first chunk\nsecond chunk\nthird chunk\n"


class TestDjango(_FrameworkCases):
    app_spec = "djapp:application"
    r = {"index": "/", "query": "/query/", "environ": "/environ/", "form": "/form/",
         "json": "/json/", "upload": "/upload/", "stream": "/stream/", "static": "/file/",
         "files": "/data/", "bytesio": "/bytesio/", "boom": "/boom/",
         "stream_error": "/stream-error/"}
    index_body = b"Hello from Django on berth!\n"
    index_type = "text/plain"
    stream_head = "django"

    def test_upload_handlers(self, server, session):
        """Requests up to FILE_UPLOAD_MAX_MEMORY_SIZE keep files in memory, larger go to disk."""
        for size, seed, handler in [(10_000, 50, "InMemoryUploadedFile"),
                                    (2 * 1024 * 1024, 51, "TemporaryUploadedFile")]:
            content = det_bytes(size, seed=seed)
            resp = session.post(server.url + "/upload/", files={"f": ("f.bin", content)},
                                timeout=TIMEOUT)
            assert resp.status_code == 200
            f = resp.json()["files"][0]
            assert f["handler"] == handler
            assert (f["size"], f["sha256"]) == (size, sha(content))

    def test_file_response_headers(self, server, files_dir):
        status, headers, body = one_shot(server.port, "GET", "/data/big.bin")
        assert status == 200
        assert headers["content-type"] == "application/octet-stream"
        assert headers["content-disposition"] == 'inline; filename="big.bin"'
        assert body == (files_dir / "big.bin").read_bytes()

    def test_disallowed_host_is_400(self, server):
        status, _, _ = one_shot(server.port, "GET", "/query/", headers={"Host": "evil.example"})
        assert status == 400
        status, _, body = one_shot(server.port, "GET", "/query/",
                                   headers={"Host": f"localhost:{server.port}"})
        assert status == 200
        assert json.loads(body)["headers"]["host"] == f"localhost:{server.port}"

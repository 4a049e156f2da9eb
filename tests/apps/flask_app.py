"""A Flask app for berth's real-framework end-to-end tests (tests/test_frameworks.py).

Run it with `berth flask_app:app` (tests/apps on PYTHONPATH). Routes:

    GET  /                  plain text
    GET  /query?x=..        request.args (all values), selected headers, path info as JSON
    GET  /path/<path:p>     the decoded path segment (checks PATH_INFO decoding)
    GET  /environ           a few WSGI environ facts as JSON
    POST /form              form fields as JSON (urlencoded or multipart)
    POST /json              the JSON body echoed back plus a computed field
    POST /upload            multipart file upload: filename, size and sha256 of each file
    GET  /stream            a generator response without Content-Length (n chunks of size bytes)
    GET  /stream-error?at=N yields N chunks, then raises
    GET  /stream-gated      yields one chunk, then waits for GET /release?gate=ID before the rest
    GET  /release?gate=ID   unblocks /stream-gated?gate=ID
    GET  /static/<name>     send_from_directory() from ./static next to this module
    GET  /files/<name>      send_from_directory() from $BERTH_TEST_FILES_DIR (tests write there)
    GET  /partial/<name>    part of a file via wsgi.file_wrapper, Content-Length < rest of file
    GET  /bytesio           send_file() of an in-memory BytesIO (file wrapper without fileno())
    GET  /boom              raises: Flask turns it into a 500
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path

from flask import (
    Flask,
    Response,
    abort,
    jsonify,
    request,
    send_file,
    send_from_directory,
    stream_with_context,
)
from werkzeug.wsgi import wrap_file

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"

app = Flask(__name__, static_folder=None)
app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024

_gates: dict[str, threading.Event] = {}
_gates_lock = threading.Lock()


def _gate(name: str) -> threading.Event:
    with _gates_lock:
        return _gates.setdefault(name, threading.Event())


@app.get("/")
def index():
    return Response("Hello from Flask on berth!\n", mimetype="text/plain")


@app.get("/query")
def query():
    return jsonify(
        args={k: request.args.getlist(k) for k in request.args},
        headers={
            "x-custom": request.headers.get("X-Custom"),
            "x-multi": request.headers.get("X-Multi"),
            "user-agent": request.headers.get("User-Agent"),
            "host": request.headers.get("Host"),
        },
        path=request.path,
        query_string=request.query_string.decode("latin-1"),
        method=request.method,
    )


@app.get("/path/<path:p>")
def path_echo(p: str):
    return jsonify(p=p, path=request.path)


@app.get("/environ")
def environ_facts():
    env = request.environ
    return jsonify(
        {
            "REQUEST_METHOD": env.get("REQUEST_METHOD"),
            "SCRIPT_NAME": env.get("SCRIPT_NAME"),
            "PATH_INFO": env.get("PATH_INFO"),
            "QUERY_STRING": env.get("QUERY_STRING"),
            "SERVER_NAME": env.get("SERVER_NAME"),
            "SERVER_PORT": env.get("SERVER_PORT"),
            "SERVER_PROTOCOL": env.get("SERVER_PROTOCOL"),
            "REMOTE_ADDR": env.get("REMOTE_ADDR"),
            "wsgi.url_scheme": env.get("wsgi.url_scheme"),
            "wsgi.version": list(env.get("wsgi.version", ())),
            "wsgi.multithread": env.get("wsgi.multithread"),
            "wsgi.multiprocess": env.get("wsgi.multiprocess"),
            "wsgi.run_once": env.get("wsgi.run_once"),
            "has_file_wrapper": "wsgi.file_wrapper" in env,
            "wsgi.input_terminated": env.get("wsgi.input_terminated"),
        }
    )


@app.post("/form")
def form():
    return jsonify(
        form={k: request.form.getlist(k) for k in request.form},
        content_type=request.mimetype,
    )


@app.post("/json")
def json_echo():
    data = request.get_json()
    if not isinstance(data, dict):
        abort(400)
    numbers = data.get("numbers", [])
    return jsonify(
        echo=data,
        computed={"sum": sum(numbers), "count": len(numbers), "keys": sorted(data)},
        content_length=request.content_length,
    )


@app.post("/upload")
def upload():
    files = []
    for field, storage in request.files.items(multi=True):
        content = storage.read()
        files.append(
            {
                "field": field,
                "filename": storage.filename,
                "content_type": storage.mimetype,
                "size": len(content),
                "sha256": hashlib.sha256(content).hexdigest(),
            }
        )
    return jsonify(files=files, form={k: request.form.getlist(k) for k in request.form})


def _pattern_chunk(i: int, size: int) -> bytes:
    """Chunk i of a /stream response: deterministic bytes the test can recompute."""
    head = f"chunk {i:04d}|".encode()
    return (head * (size // len(head) + 1))[:size]


@app.get("/stream")
def stream():
    n = request.args.get("n", 5, type=int)
    size = request.args.get("size", 32, type=int)

    @stream_with_context
    def generate():
        # stream_with_context keeps the request context alive while the server iterates
        assert request.path == "/stream"
        for i in range(n):
            yield _pattern_chunk(i, size)

    return Response(generate(), mimetype="application/octet-stream")


@app.get("/stream-error")
def stream_error():
    """Yields `at` chunks, then raises: the server must not end the body as if complete."""
    at = request.args.get("at", 0, type=int)

    def generate():
        for i in range(at):
            yield _pattern_chunk(i, 16)
        raise RuntimeError("intentional failure in /stream-error")

    return Response(generate(), mimetype="application/octet-stream")


@app.get("/stream-gated")
def stream_gated():
    event = _gate(request.args["gate"])

    def generate():
        yield b"first chunk\n"
        if not event.wait(timeout=10):
            yield b"gate timed out\n"
            return
        yield b"second chunk\n"
        yield b"third chunk\n"

    return Response(generate(), mimetype="text/plain")


@app.get("/release")
def release():
    _gate(request.args["gate"]).set()
    return Response("released\n", mimetype="text/plain")


@app.get("/static/<path:name>")
def static_file(name: str):
    return send_from_directory(STATIC_DIR, name)


@app.get("/files/<path:name>")
def data_file(name: str):
    root = os.environ.get("BERTH_TEST_FILES_DIR")
    if not root:
        abort(404)
    return send_from_directory(root, name)


@app.get("/partial/<name>")
def partial_file(name: str):
    """`length` bytes of $BERTH_TEST_FILES_DIR/<name> from `offset`, through wsgi.file_wrapper
    with an explicit Content-Length shorter than the rest of the file (the server must stop
    there, also when it uses sendfile)."""
    root = os.environ.get("BERTH_TEST_FILES_DIR")
    if not root or "/" in name:
        abort(404)
    offset = request.args.get("offset", 0, type=int)
    length = request.args.get("length", 0, type=int)
    f = open(os.path.join(root, name), "rb")
    f.seek(offset)
    resp = Response(wrap_file(request.environ, f), mimetype="application/octet-stream",
                    direct_passthrough=True)
    resp.content_length = length
    return resp


@app.get("/bytesio")
def bytesio():
    size = request.args.get("size", 100_000, type=int)
    data = bytes(i % 251 for i in range(size))
    return send_file(io.BytesIO(data), mimetype="application/octet-stream",
                     download_name="pattern.bin")


@app.get("/boom")
def boom():
    raise RuntimeError("intentional failure from /boom")

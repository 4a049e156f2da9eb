"""A Flask app with Flask-Sock WebSocket routes, as Gunicorn users run it (`--threads`): the
library takes the connection over through environ["gunicorn.socket"]
(tests/test_gunicorn_socket.py)."""

from flask import Flask, request
from flask_sock import Sock

app = Flask(__name__)
sock = Sock(app)


@sock.route("/echo")
def echo(ws):
    while True:
        data = ws.receive(timeout=10)
        if data is None or data == "bye":
            return
        ws.send(data)


@sock.route("/greet")
def greet(ws):  # the server speaks first, then ends the socket from its side
    ws.send(f"hello {request.args.get('name', 'you')}")


@app.route("/peer")
def peer():  # reads the socket's address only: an ordinary response, the connection kept
    s = request.environ.get("gunicorn.socket")
    if s is None:  # (berth: only a request that asks to upgrade has it)
        return "none"
    assert not hasattr(s, "read") and getattr(s, "__deepcopy__", None) is None  # (probes)
    host, _port = s.getpeername()[:2]
    return host


@app.route("/raw")
def raw():
    """The socket used directly, as a WSGI app without a library may: a response written by
    the app itself. What the app then returns is not sent: the socket is the app's."""
    s = request.environ["gunicorn.socket"]
    s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nmine")
    return "not sent"


@app.route("/into")
def into():
    """The socket read with recv_into, as a WSGI app without a library may: over TLS too, the
    bytes it gets are the client's plaintext."""
    s = request.environ["gunicorn.socket"]
    s.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x-raw\r\nConnection: upgrade\r\n\r\n")
    buf = bytearray(64)
    n = s.recv_into(buf)
    s.sendall(bytes(buf[:n]).upper())
    return "not sent"

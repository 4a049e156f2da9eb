"""An app that takes environ["gunicorn.socket"] and answers on it itself, with the garbage
collector off: /count says how many connections are still alive
(tests/test_gunicorn_socket.py)."""

import gc

from berth.worker.connection import Connection

gc.disable()  # (what is left alive then is what only a collection would free)


def app(environ, start_response):
    if environ["PATH_INFO"] == "/count":
        body = str(sum(1 for o in gc.get_objects() if isinstance(o, Connection))).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    environ["gunicorn.socket"].sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n"
                                       b"Connection: close\r\n\r\nmine")
    raise StopIteration

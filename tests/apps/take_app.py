"""A WSGI app that takes environ["gunicorn.socket"] from an app thread while the loop thread
is held longer than berth waits for it to let go (tests/test_gunicorn_socket.py)."""

import time

from berth.worker import hijack

hijack.TAKE_WAIT = 0.5  # (/slow holds the loop thread for longer)


def app(environ, start_response):
    if environ["PATH_INFO"] == "/slow":  # answered inline by the loop thread (--threads 1)
        time.sleep(2)
        start_response("200 OK", [("Content-Length", "4")])
        return [b"slow"]
    # /take: its body streams in (longer than --body-buffer-size), so an app thread answers it
    time.sleep(0.3)  # (meanwhile the loop thread takes up /slow)
    environ["gunicorn.socket"].sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmine")
    raise StopIteration

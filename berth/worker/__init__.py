"""A worker process, in four rooms (each imports only the rooms below it):

- `process.py`: the process's life: start, signals, heartbeat, deadline overruns, drain;
- `loop.py`: the event loop: epoll, accept, read into the parser, per-connection deadlines;
- `app.py`: running the app for a request: the WSGI Response, probes, error answers;
- `connection.py`: one connection's state, its write-behind queue and its sending;
- `admission.py` and `counts.py`: making room for connections, and the request counters,
  shared with the ASGI worker's loop (berth/asgi).

This file imports none of them, so that importing a lower room loads nothing above it.
"""

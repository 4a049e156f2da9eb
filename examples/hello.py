"""The smallest WSGI app: `berth examples.hello:app` (or `berth --chdir examples hello:app`)."""


def app(environ, start_response):
    body = b"Hello, world!\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

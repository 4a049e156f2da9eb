"""Factory apps for the CLI tests: `factory_app:create_app()`, `create_app('prod')`."""


def create_app(name="default", suffix=""):
    body = f"factory:{name}{suffix}\n".encode()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]

    return app


not_callable = "I am a string, not a WSGI app"

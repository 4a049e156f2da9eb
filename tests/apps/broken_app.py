"""A module that fails to import: berth must exit non-zero with the traceback on stderr."""

import berth_test_module_that_does_not_exist  # noqa: F401


def app(environ, start_response):  # pragma: no cover - never reached
    start_response("200 OK", [])
    return [b""]

"""The Django settings the test projects share (djapp for WSGI, asgi_django for ASGI): no
database, no installed apps, no middleware, Django's logging left alone."""

from __future__ import annotations

from django.conf import settings


def configure(urlconf: str, **extra) -> None:
    """Configure Django once per process, with `urlconf` as ROOT_URLCONF."""
    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY="berth-tests-not-secret",
        ALLOWED_HOSTS=["127.0.0.1", "localhost", "testserver"],
        ROOT_URLCONF=urlconf,
        INSTALLED_APPS=[],
        MIDDLEWARE=[],
        DATABASES={},
        USE_TZ=True,
        # uploads above 1 MiB go to a temporary file (TemporaryFileUploadHandler)
        FILE_UPLOAD_MAX_MEMORY_SIZE=1024 * 1024,
        LOGGING_CONFIG=None,
        **extra,
    )

"""A one-module Django project for berth's real-framework end-to-end tests.

Settings, URLs and views all live here; run it with `berth djapp:application` (tests/apps on
PYTHONPATH). No database, no installed apps, no middleware (so no CSRF). Routes:

    GET  /                  plain text
    GET  /query/?x=..       GET params (all values), selected headers, path as JSON
    POST /form/             POST fields as JSON (urlencoded or multipart)
    POST /json/             the JSON body echoed back plus a computed field
    POST /upload/           request.FILES: name, size and sha256 of each file
    GET  /stream/           StreamingHttpResponse (n chunks of size bytes, no Content-Length)
    GET  /stream-error/?at=N  StreamingHttpResponse that yields N chunks, then raises
    GET  /file/<name>       FileResponse of ./static/<name> next to this module
    GET  /data/<name>       FileResponse of $BERTH_TEST_FILES_DIR/<name> (tests write there)
    GET  /bytesio/          FileResponse of an in-memory BytesIO
    GET  /environ/          a few WSGI environ facts as JSON
    GET  /boom/             raises: Django turns it into a 500
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path

from django_settings import configure

# test_disallowed_host_is_400 sends a bad Host on purpose: keep its log out of stderr, which the
# tests scan for unexpected tracebacks (LOGGING_CONFIG=None leaves other errors on stderr).
logging.getLogger("django.security.DisallowedHost").setLevel(logging.CRITICAL)

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"

configure(__name__, DATA_UPLOAD_MAX_MEMORY_SIZE=8 * 1024 * 1024)

from django.core.wsgi import get_wsgi_application
from django.http import (
    FileResponse,
    Http404,
    HttpResponse,
    HttpResponseBadRequest,
    JsonResponse,
    StreamingHttpResponse,
)
from django.urls import path
from django.views.decorators.http import require_POST, require_safe


@require_safe
def index(request):
    return HttpResponse("Hello from Django on berth!\n", content_type="text/plain")


@require_safe
def query(request):
    return JsonResponse(
        {
            "args": {k: request.GET.getlist(k) for k in request.GET},
            "headers": {
                "x-custom": request.headers.get("X-Custom"),
                # get_host() checks ALLOWED_HOSTS (no middleware here does)
                "host": request.get_host(),
            },
            "path": request.path,
            "method": request.method,
        }
    )


@require_POST
def form(request):
    return JsonResponse(
        {"form": {k: request.POST.getlist(k) for k in request.POST},
         "content_type": request.content_type}
    )


@require_POST
def json_echo(request):
    try:
        data = json.loads(request.body)
    except ValueError:
        return HttpResponseBadRequest("bad json\n")
    if not isinstance(data, dict):
        return HttpResponseBadRequest("expected an object\n")
    numbers = data.get("numbers", [])
    return JsonResponse(
        {
            "echo": data,
            "computed": {"sum": sum(numbers), "count": len(numbers), "keys": sorted(data)},
            "content_length": len(request.body),
        }
    )


@require_POST
def upload(request):
    files = []
    for field in request.FILES:
        for f in request.FILES.getlist(field):
            h = hashlib.sha256()
            size = 0
            for chunk in f.chunks():
                h.update(chunk)
                size += len(chunk)
            files.append(
                {
                    "field": field,
                    "filename": f.name,
                    "content_type": f.content_type,
                    "size": size,
                    "sha256": h.hexdigest(),
                    "handler": type(f).__name__,
                }
            )
    return JsonResponse(
        {"files": files, "form": {k: request.POST.getlist(k) for k in request.POST}}
    )


def _pattern_chunk(i: int, size: int) -> bytes:
    head = f"django {i:04d}|".encode()
    return (head * (size // len(head) + 1))[:size]


@require_safe
def stream(request):
    n = int(request.GET.get("n", 5))
    size = int(request.GET.get("size", 32))
    return StreamingHttpResponse(
        (_pattern_chunk(i, size) for i in range(n)), content_type="application/octet-stream"
    )


@require_safe
def stream_error(request):
    at = int(request.GET.get("at", 0))

    def generate():
        for i in range(at):
            yield _pattern_chunk(i, 16)
        raise RuntimeError("intentional failure in /stream-error/")

    return StreamingHttpResponse(generate(), content_type="application/octet-stream")


def _file_response(root: Path, name: str) -> FileResponse:
    target = (root / name).resolve()
    if target.parent != root.resolve() or not target.is_file():
        raise Http404(name)
    return FileResponse(open(target, "rb"))


@require_safe
def static_file(request, name):
    return _file_response(STATIC_DIR, name)


@require_safe
def data_file(request, name):
    root = os.environ.get("BERTH_TEST_FILES_DIR")
    if not root:
        raise Http404(name)
    return _file_response(Path(root), name)


@require_safe
def bytesio(request):
    size = int(request.GET.get("size", 100_000))
    data = bytes(i % 251 for i in range(size))
    return FileResponse(io.BytesIO(data), content_type="application/octet-stream")


@require_safe
def environ_facts(request):
    env = request.META
    return JsonResponse(
        {
            "SERVER_PROTOCOL": env.get("SERVER_PROTOCOL"),
            "SCRIPT_NAME": env.get("SCRIPT_NAME"),
            "PATH_INFO": env.get("PATH_INFO"),
            "has_file_wrapper": "wsgi.file_wrapper" in env,
            "wsgi.url_scheme": env.get("wsgi.url_scheme"),
        }
    )


def boom(request):
    raise RuntimeError("intentional failure from /boom/")


urlpatterns = [
    path("", index),
    path("query/", query),
    path("form/", form),
    path("json/", json_echo),
    path("upload/", upload),
    path("stream/", stream),
    path("stream-error/", stream_error),
    path("file/<str:name>", static_file),
    path("data/<str:name>", data_file),
    path("bytesio/", bytesio),
    path("environ/", environ_facts),
    path("boom/", boom),
]

application = get_wsgi_application()

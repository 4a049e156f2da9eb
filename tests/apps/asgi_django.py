"""A one-module Django project served by Django's ASGI handler, for berth's ASGI end-to-end
tests: `berth -k asgi asgi_django:application` (tests/apps on PYTHONPATH). Configured like
djapp (the WSGI one): no database, no installed apps, no middleware. Async views, routes as in
asgi_starlette's docstring, less /state and the raw ASGI ones, plus /slow:

    GET  /json?name=..   POST /json   GET /stream   GET /sse   POST /upload (request.FILES)
    GET  /forever?tag=   a StreamingHttpResponse over an endless async generator; Django's
                         handler awaits receive() beside the response, and on http.disconnect
                         cancels it: marker <tag> reads "CancelledError"
    GET  /slow?tag=&seconds=   an async view that sleeps, then answers: marker <tag> reads
                         "finished", or "CancelledError" if Django cancelled it because its
                         client left (marker <tag>.started: the view began)

Django's ASGI handler has no lifespan support: it raises on the lifespan scope, which berth's
`--asgi-lifespan auto` takes as "no lifespan".
"""

from __future__ import annotations

import asyncio
import hashlib
import json

from django_settings import configure

configure(__name__)

from asgi_parts import endless, loop_package, mark, pattern_stream, sse_events
from django.core.asgi import get_asgi_application
from django.http import HttpResponseBadRequest, JsonResponse, StreamingHttpResponse
from django.urls import path
from django.views.decorators.http import require_POST, require_safe

FRAMEWORK = "django"


async def json_view(request):
    if request.method == "GET":
        return JsonResponse({"framework": FRAMEWORK, "name": request.GET.get("name"),
                             "http_version": request.scope["http_version"],
                             "loop": loop_package(), "client_port": request.scope["client"][1]})
    if request.method != "POST":
        return HttpResponseBadRequest("GET or POST\n")
    data = json.loads(request.body)
    numbers = data.get("numbers", [])
    return JsonResponse({"framework": FRAMEWORK, "echo": data, "sum": sum(numbers),
                         "count": len(numbers)})


@require_safe
async def stream(request):
    q = request.GET
    return StreamingHttpResponse(pattern_stream(int(q.get("n", 5)), int(q.get("size", 32)),
                                                q.get("gate")),
                                 content_type="application/octet-stream")


@require_safe
async def sse(request):
    events = sse_events(FRAMEWORK, int(request.GET.get("n", 4)),
                        float(request.GET.get("delay", 0.05)))
    response = StreamingHttpResponse(events, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    return response


@require_POST
async def upload(request):
    f = request.FILES["file"]
    h = hashlib.sha256()
    size = 0
    for chunk in f.chunks():
        h.update(chunk)
        size += len(chunk)
    return JsonResponse({"framework": FRAMEWORK, "filename": f.name, "size": size,
                         "sha256": h.hexdigest(), "note": request.POST.get("note"),
                         "handler": type(f).__name__})


@require_safe
async def forever(request):
    return StreamingHttpResponse(endless(request.GET["tag"]),
                                 content_type="application/octet-stream")


@require_safe
async def slow(request):
    tag = request.GET["tag"]
    mark(f"{tag}.started", "started")
    try:
        await asyncio.sleep(float(request.GET.get("seconds", 4)))
    except asyncio.CancelledError:
        mark(tag, "CancelledError")
        raise
    mark(tag, "finished")
    return JsonResponse({"framework": FRAMEWORK, "slept": True})


urlpatterns = [
    path("json", json_view),
    path("stream", stream),
    path("sse", sse),
    path("upload", upload),
    path("forever", forever),
    path("slow", slow),
]

application = get_asgi_application()

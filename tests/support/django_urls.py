"""The example's URLs plus pages the Django tests need: streamed, async, files, CSP."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator

from django.http import FileResponse, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.urls import path

from examples.django_app.urls import urlpatterns as example_urls
from px_middleware.django import exempt, set_user
from tests.support.django_pages import PAGE, chunks


def stream(request: HttpRequest) -> StreamingHttpResponse:
    return StreamingHttpResponse(chunks(), content_type="text/html; charset=utf-8")


async def astream(request: HttpRequest) -> StreamingHttpResponse:
    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks():
            await asyncio.sleep(0)  # a real await between chunks
            yield chunk

    return StreamingHttpResponse(body(), content_type="text/html; charset=utf-8")


def file(request: HttpRequest) -> FileResponse:
    return FileResponse(io.BytesIO(PAGE), content_type="text/html")


@exempt
def exempted(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE)


def exempt_here(request: HttpRequest) -> HttpResponse:
    exempt(request)
    return HttpResponse(PAGE)


@set_user(feature="reports", plan="pro")
def with_set_user(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE)


def csp_page(request: HttpRequest) -> HttpResponse:
    return render(request, "csp.html")


def csp_host_page(request: HttpRequest) -> HttpResponse:
    from csp.decorators import csp_update

    allow_stand_in = csp_update({"script-src": [os.environ["PX_LOCAL_URL"]]})
    response: HttpResponse = allow_stand_in(csp_page)(request)
    return response


urlpatterns = [
    *example_urls,
    path("t/stream", stream),
    path("t/astream", astream),
    path("t/file", file),
    path("t/exempt", exempted),
    path("t/exempt-here", exempt_here),
    path("t/set-user", with_set_user),
    path("t/csp", csp_page),
    path("t/csp-host", csp_host_page),
]

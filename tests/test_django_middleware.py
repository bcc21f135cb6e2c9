"""``PXMiddleware`` in process: Django's own handlers and test clients, sync and async.

The end-to-end tests (real servers, Chromium) are in ``test_django.py``; these pin the
translation of each kind of Django response and the guarantees: fail open, streaming
chunk by chunk, ``FileResponse`` untouched, ``Content-Length`` recomputed, the helpers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import django
import pytest
from django.conf import settings

KEY = "AP-DJANGO000002-2"
if not settings.configured:
    settings.configure(
        SECRET_KEY="test-only", ALLOWED_HOSTS=["testserver"], ROOT_URLCONF=__name__,
        INSTALLED_APPS=["django.contrib.auth", "django.contrib.contenttypes"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        MIDDLEWARE=["px_middleware.django.PXMiddleware", f"{__name__}.login_middleware"],
        USE_TZ=True, PX_PRODUCT_KEY=KEY, PX_HMAC_SECRET="test-hmac-secret",
    )
    django.setup()

from asgiref.sync import iscoroutinefunction, markcoroutinefunction  # noqa: E402
from django.contrib.auth.models import User as DjangoUser  # noqa: E402
from django.core.exceptions import ImproperlyConfigured  # noqa: E402
from django.http import (  # noqa: E402
    FileResponse,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
    JsonResponse,
    StreamingHttpResponse,
)
from django.test import AsyncClient, Client, RequestFactory, override_settings  # noqa: E402
from django.urls import path  # noqa: E402

from px_middleware import Account, Identity, User  # noqa: E402
from px_middleware.core.exchange import Exchange  # noqa: E402
from px_middleware.core.injector import Injector  # noqa: E402
from px_middleware.django import PXMiddleware, exempt, set_user, user_of  # noqa: E402

PAGE = b"<!doctype html><html><head><title>t</title></head><body><p>hello</p></body></html>"
CHUNKS = [b"<!doctype html><html>", b"<head><title>t</title>", b"</head><body>",
          b"<p>row</p>" * 3, b"</body></html>"]
SNIPPET = re.compile(rb'<script data-px-middleware="1"[^>]*>.*?</script>', re.S)
ALICE = DjangoUser(pk=7, username="alice", email="alice@acme.test", first_name="Alice",
                   last_name="", date_joined=dt.datetime(2024, 2, 12, tzinfo=dt.timezone.utc))


class login_middleware:
    """Stands in for AuthenticationMiddleware: ``?as=alice`` logs alice in. Sync and async."""

    sync_capable = async_capable = True

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        from django.contrib.auth.models import AnonymousUser

        request.user = ALICE if request.GET.get("as") == "alice" else AnonymousUser()
        return self.get_response(request)


def page(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE)


@exempt
def exempted(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE)


def exempt_here(request: HttpRequest) -> HttpResponse:
    exempt(request)
    return HttpResponse(PAGE)


@set_user(feature="reports", trialEnds=dt.date(2027, 1, 31))
def decorated(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE)


@set_user(feature="async")
async def decorated_async(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE)


def per_request(request: HttpRequest) -> HttpResponse:
    set_user(request, plan="pro")
    return HttpResponse(PAGE)


urlpatterns = [path("", page), path("exempt", exempted), path("exempt-here", exempt_here),
               path("decorated", decorated), path("decorated-async", decorated_async),
               path("per-request", per_request)]


def snippet(body: bytes) -> str:
    found: list[bytes] = SNIPPET.findall(body)
    assert len(found) == 1, body
    return found[0].decode()


# -- zero-code identify, hooks, helpers, through Django's handlers ---------------------------

@pytest.mark.parametrize("client_class", [Client, AsyncClient])
def test_request_user_is_identified_with_no_code(client_class: type) -> None:
    response = _get(client_class, "/?as=alice")
    script = snippet(response.content)
    assert ('"id":"7","email":"alice@acme.test","firstName":"Alice",'
            '"signUpDate":1707696000000,"userHash":"') in script  # empty last_name left out
    assert response["Cache-Control"] == "private"
    assert len(response.content) == len(PAGE) + len(script)
    anonymous = _get(client_class, "/")
    assert "identify" not in snippet(anonymous.content)


def _get(client_class: type, url: str) -> Any:
    client = client_class()
    if client_class is AsyncClient:
        return asyncio.run(client.get(url))
    return client.get(url)


@pytest.mark.parametrize(("url", "expected"), [
    ("/decorated?as=alice",
     'aptrinsic("set","user",{"feature":"reports","trialEnds":1801353600000})'),
    ("/decorated-async?as=alice", 'aptrinsic("set","user",{"feature":"async"})'),
    ("/per-request?as=alice", 'aptrinsic("set","user",{"plan":"pro"})'),
])
@pytest.mark.parametrize("client_class", [Client, AsyncClient])
def test_set_user_as_a_decorator_and_on_the_request(
    client_class: type, url: str, expected: str
) -> None:
    assert expected in snippet(_get(client_class, url).content)


@pytest.mark.parametrize("url", ["/exempt", "/exempt-here"])
@pytest.mark.parametrize("client_class", [Client, AsyncClient])
def test_exempt_as_a_decorator_and_on_the_request(client_class: type, url: str) -> None:
    assert _get(client_class, url + "?as=alice").content == PAGE
    assert SNIPPET.search(_get(client_class, "/?as=alice").content)  # the control


def hook(request: HttpRequest) -> Identity | None:
    user = user_of(request.user)
    return Identity(user, Account("acme", name="Acme")) if user else None


async def async_hook(request: HttpRequest) -> User:
    await asyncio.sleep(0)
    return User("async-7")


def raising_hook(request: HttpRequest) -> None:
    raise RuntimeError("the app's bug")


@pytest.mark.parametrize("client_class", [Client, AsyncClient])
def test_px_identify_hook_adds_the_account(client_class: type) -> None:
    with override_settings(PX_IDENTIFY=f"{__name__}.hook"):
        script = snippet(_get(client_class, "/?as=alice").content)
    assert '{"id":"acme","name":"Acme"}' in script and '"id":"7"' in script


def test_async_hook_runs_under_asgi_and_is_refused_under_wsgi(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with override_settings(PX_IDENTIFY=f"{__name__}.async_hook"):
        assert '"id":"async-7"' in snippet(_get(AsyncClient, "/").content)
        with caplog.at_level(logging.WARNING, logger="px_middleware"):
            assert _get(Client, "/").content == PAGE
    assert "needs Django under ASGI" in caplog.text


# -- the middleware on its own: each kind of response ------------------------------------------

def middleware(view: Any, **px: Any) -> PXMiddleware:
    with override_settings(**px):
        return PXMiddleware(view)


def browser_get(url: str = "/") -> HttpRequest:
    request = RequestFactory().get(url, HTTP_ACCEPT="text/html")
    request.user = ALICE
    return request


def test_identify_that_raises_leaves_the_page_alone(caplog: pytest.LogCaptureFixture) -> None:
    original = HttpResponse(PAGE)
    mw = middleware(lambda request: original, PX_IDENTIFY=f"{__name__}.raising_hook")
    with caplog.at_level(logging.WARNING, logger="px_middleware"):
        response = mw(browser_get())
    assert response is original and response.content == PAGE
    assert mw.counters.snapshot()["identify_errors"] == 1


def _broken(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("a bug of ours")


#: The injector decides on this one only at its end (close), not while fed.
AT_END = b"<!doctype html><html><head><title>t</title><link rel=icon href=x>"


@pytest.mark.parametrize(("target", "body"), [
    ((Exchange, "__init__"), PAGE), ((Exchange, "accepts"), PAGE), ((Exchange, "begin"), PAGE),
    ((Exchange, "headers"), PAGE), ((Injector, "feed"), PAGE), ((Injector, "close"), AT_END),
])
def test_our_errors_give_back_the_original_response(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    target: tuple[type, str], body: bytes,
) -> None:
    original = HttpResponse(body)
    original["Content-Length"] = str(len(body))
    before = list(original.items())
    mw = middleware(lambda request: original)
    monkeypatch.setattr(*target, _broken)
    with caplog.at_level(logging.ERROR, logger="px_middleware"):
        response = mw(browser_get())
    assert response is original
    assert response.content == body and list(response.items()) == before
    assert mw.counters.snapshot()["errors"] == 1 and len(caplog.records) == 1


def _sync_chunks() -> Iterator[bytes]:
    yield from CHUNKS


async def _async_chunks() -> AsyncIterator[bytes]:
    for chunk in CHUNKS:
        await asyncio.sleep(0)
        yield chunk


def middleware_for(original: Any, mode: str, **px: Any) -> PXMiddleware:
    """A sync (WSGI) or an async (ASGI) ``PXMiddleware`` over a view returning ``original``."""
    if mode == "sync":
        return middleware(lambda request: original, **px)

    async def view(request: HttpRequest) -> Any:
        return original

    return middleware(view, **px)


def serve(mw: PXMiddleware, body: list[bytes],
          at_start: Callable[[Any], None] | None = None) -> Any:
    """One request through ``mw``, its body read into ``body`` as the server would:
    under ASGI in the same event loop. ``at_start(response)`` sees the response as the
    middleware returned it."""
    async def drain(response: Any) -> None:
        if response.is_async:
            async for chunk in response.streaming_content:
                body.append(chunk)
        else:
            body.extend(response.streaming_content)

    async def run() -> Any:
        response = await mw(browser_get())
        if at_start is not None:
            at_start(response)
        try:
            await drain(response)
        finally:
            response.close()
        return response

    if mw.is_async:
        return asyncio.run(run())
    response = mw(browser_get())
    if at_start is not None:
        at_start(response)
    try:
        if response.is_async:  # under WSGI Django drains an async body in a loop of its own
            asyncio.run(drain(response))
        else:
            body.extend(response.streaming_content)
    finally:
        response.close()
    return response


#: (body, middleware): the sync body under WSGI, the async one under ASGI, and a sync
#: body under ASGI (a sync view's), which Django itself consumes in its sync thread.
STREAMS = pytest.mark.parametrize(("source", "mode"), [
    (_sync_chunks, "sync"), (_async_chunks, "async"), (_sync_chunks, "async"),
], ids=["sync", "async", "sync-under-async"])


@STREAMS
def test_streamed_bodies_hold_the_head_until_decided_then_pass_chunk_by_chunk(
    source: Any, mode: str,
) -> None:
    pulled: list[int] = []

    def counting() -> Any:
        if source is _sync_chunks:
            def sync_gen() -> Iterator[bytes]:
                for i, chunk in enumerate(CHUNKS):
                    pulled.append(i)
                    yield chunk
            return sync_gen()

        async def async_gen() -> AsyncIterator[bytes]:
            for i, chunk in enumerate(CHUNKS):
                pulled.append(i)
                yield chunk
        return async_gen()

    original = StreamingHttpResponse(counting(), content_type="text/html")
    held: list[int] = []

    def at_start(response: Any) -> None:
        # The head is final when the response is returned: the chunks up to </head>
        # were read for it, and nothing more.
        assert response is original and response.is_async is (source is _async_chunks)
        assert response["Cache-Control"] == "private"
        assert not response.has_header("Content-Length")
        held.extend(pulled)

    out: list[bytes] = []
    serve(middleware_for(original, mode), out, at_start)
    assert held == [0, 1, 2]
    body = b"".join(out)
    assert SNIPPET.sub(b"", body) == b"".join(CHUNKS) and len(SNIPPET.findall(body)) == 1
    # The held chunks go out injected, as one; then one out per chunk, as the app made it.
    assert out[1:] == CHUNKS[3:]


def test_an_async_body_under_sync_middleware_is_sent_as_is() -> None:
    # Django serves it under WSGI by consuming it whole in an event loop of its own:
    # reading part of it here, in another loop, is not safe for the app's generator.
    original = StreamingHttpResponse(_async_chunks(), content_type="text/html")
    before = list(original.items())
    body: list[bytes] = []
    mw = middleware_for(original, "sync")
    response = serve(mw, body)
    assert response is original and response.is_async
    assert list(response.items()) == before
    assert b"".join(body) == b"".join(CHUNKS)
    assert mw.counters.snapshot()["skipped"] == 1


@STREAMS
def test_an_error_of_ours_while_the_head_is_held_still_sends_every_byte_of_the_app(
    monkeypatch: pytest.MonkeyPatch, source: Any, mode: str,
) -> None:
    original = StreamingHttpResponse(source(), content_type="text/html")
    before = list(original.items())
    monkeypatch.setattr(Injector, "feed", _broken)
    body: list[bytes] = []
    mw = middleware_for(original, mode)
    response = serve(mw, body)
    assert response is original and list(response.items()) == before
    assert b"".join(body) == b"".join(CHUNKS)
    assert mw.counters.snapshot()["errors"] == 1


def _sync_broken_body() -> Iterator[bytes]:
    yield CHUNKS[0]
    raise RuntimeError("the app's bug")


async def _async_broken_body() -> AsyncIterator[bytes]:
    yield CHUNKS[0]
    raise RuntimeError("the app's bug")


@pytest.mark.parametrize(("source", "mode"), [
    (_sync_broken_body, "sync"), (_async_broken_body, "async"), (_sync_broken_body, "async"),
], ids=["sync", "async", "sync-under-async"])
def test_the_apps_error_while_the_head_is_held_is_raised_where_it_would_be_without_us(
    source: Any, mode: str,
) -> None:
    # Without us Django returns the response and the server meets the error mid-body,
    # after the head and the first chunk: not a 500 page from the middleware.
    original = StreamingHttpResponse(source(), content_type="text/html")
    before = list(original.items())
    mw = middleware_for(original, mode)
    got: list[bytes] = []

    def at_start(response: Any) -> None:
        assert response is original and list(response.items()) == before

    with pytest.raises(RuntimeError, match="the app's bug"):
        serve(mw, got, at_start)
    assert got == [CHUNKS[0]]
    assert "errors" not in mw.counters.snapshot()  # the app's error, not ours


def test_a_file_response_is_untouched() -> None:
    original = FileResponse(io.BytesIO(PAGE), content_type="text/html")
    stream = original.file_to_stream
    before = list(original.items())
    response = middleware(lambda request: original)(browser_get())
    assert response is original and response.file_to_stream is stream
    assert list(response.items()) == before
    assert b"".join(response.streaming_content) == PAGE


def test_the_session_cookie_is_one_of_the_response_cookies() -> None:
    def visitor_and_session(value: str) -> list[str]:
        return value.split(".")[1:3]  # layout.visitor.session.…

    # A cookie secret alone: sessions and their cookie, no delivery.
    with override_settings(PX_COOKIE_SECRET="test-cookie-secret"):
        client = Client()
        first = client.get("/?as=alice", HTTP_ACCEPT="text/html")
        morsel = first.cookies["px_session"]
        assert (morsel["path"], morsel["httponly"], morsel["samesite"]) == ("/", True, "Lax")
        assert int(morsel["max-age"]) > 0 and not first.has_header("Set-Cookie")
        second = client.get("/?as=alice", HTTP_ACCEPT="text/html")  # the client sent it back
    assert visitor_and_session(second.cookies["px_session"].value) == visitor_and_session(
        morsel.value)


def test_content_length_and_etag_follow_the_new_body() -> None:
    original = HttpResponse(PAGE)
    original["Content-Length"] = str(len(PAGE))
    original["ETag"] = '"v1"'
    response = middleware(lambda request: original)(browser_get())
    assert int(response["Content-Length"]) == len(response.content) > len(PAGE)
    assert response["ETag"] == 'W/"v1"'
    assert SNIPPET.sub(b"", response.content) == PAGE


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_streamed_with_content_length_gets_it_recomputed(mode: str) -> None:
    # The head waits for the injector's decision, so its length can follow the body.
    original = StreamingHttpResponse(iter([PAGE]), content_type="text/html")
    original["Content-Length"] = str(len(PAGE))
    out: list[bytes] = []
    response = serve(middleware_for(original, mode), out)
    body = b"".join(out)
    assert int(response["Content-Length"]) == len(body) > len(PAGE)
    assert SNIPPET.sub(b"", body) == PAGE


def test_json_is_the_same_object_untouched() -> None:
    original = JsonResponse({"ok": True})
    before = list(original.items())
    response = middleware(lambda request: original)(browser_get())
    assert response is original and list(response.items()) == before
    assert response.content == b'{"ok": true}'


def test_a_redirect_is_the_same_object_untouched() -> None:
    original = HttpResponseRedirect("/login/?next=/me/")
    before = list(original.items())
    response = middleware(lambda request: original)(browser_get())
    assert response is original and list(response.items()) == before
    assert response.content == b"" and not response.cookies


def test_an_outer_px_middleware_keeps_the_request() -> None:
    request = browser_get()
    request.META["px_middleware.seen"] = True  # what PXWsgiMiddleware sets on the environ
    original = HttpResponse(PAGE)
    assert middleware(lambda request: original)(request).content == PAGE


# -- configuration: settings first, then the environment -------------------------------------

def test_a_misspelt_setting_is_an_error_at_start_up() -> None:
    with pytest.raises(ImproperlyConfigured,
                       match=r"PX_HMAC_SECERT \(did you mean PX_HMAC_SECRET\?\)"):
        middleware(page, PX_HMAC_SECERT="x")


def test_a_px_identify_that_cannot_be_imported_is_an_error_at_start_up() -> None:
    with pytest.raises(ImproperlyConfigured, match=r"PX_IDENTIFY='myapp.px.nowhere'"):
        middleware(page, PX_IDENTIFY="myapp.px.nowhere")


class MinimalUser:
    """A custom user model with nothing but a key (no email, names or date_joined)."""

    is_authenticated = True
    pk = "u-42"


def test_user_of_takes_what_a_custom_user_has() -> None:
    assert user_of(MinimalUser()) == User("u-42")
    assert user_of(ALICE) == User("7", email="alice@acme.test", first_name="Alice",
                                  sign_up_date=ALICE.date_joined)
    assert user_of(None) is None


def test_settings_fall_back_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PX_API_URL", "https://px.internal.test/v1")
    monkeypatch.setenv("PX_HMAC_SECRET", "from-env")  # settings have one: they win
    monkeypatch.setenv("PX_PORT", "tcp://10.0.0.7:80")  # Kubernetes: ignored
    config = middleware(page).config
    assert config.api_url == "https://px.internal.test/v1"
    assert config.hmac_secret == "test-hmac-secret"

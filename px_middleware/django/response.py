"""Django requests and responses through the core's ``Exchange``.

This is the one place the Django integration drives the core, in the order
``px_middleware/wsgi.py`` does: ``Exchange(...)`` with the request facts, then
``accepts`` / ``begin`` at response start, ``feed`` / ``close`` for the body until the
exchange has ``decided``, ``headers`` for the head, ``finish`` for the page view.
Django hands a middleware the whole response object before anything is on the wire,
so the head is changed only once the injector has decided, and only as ``headers()``
says (the snippet went in, or the session cookie of a page view):

* ``HttpResponse``: the body is complete; injected in one go (``Content-Length``
  recomputed by the core), the response changed only once everything was computed;
* ``StreamingHttpResponse``: before the response is returned, its chunks are pulled
  until the exchange has decided (at most the injector's limit, 64 KiB, usually one
  chunk); the rest is re-wrapped lazily, passed on as is. A sync iterator under async
  middleware is pulled in Django's sync thread, where Django itself consumes it. An
  async iterator under sync middleware is sent as is: Django would have to consume it
  whole (``async_to_sync``) to serve it, and pulling part of it in another event loop
  than the one that finishes it is not safe for the app's generator;
* ``FileResponse`` (and whitenoise's): the body is never touched (sendfile path kept);
* anything else (not a page, not tracked): the same object, untouched.

Fail open: until the exchange has decided we keep the app's own chunks, so an error
of ours gives back its head and every byte of its body. An exception of the app's
iterator while we pull is raised where it would have been without us, after those
bytes, when the server iterates the body (not in the middleware, where Django would
turn it into a 500 page).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.http import FileResponse, HttpRequest, HttpResponse
from django.http.response import HttpResponseBase, StreamingHttpResponse

from px_middleware.config import PXConfig
from px_middleware.core.counters import Counters
from px_middleware.core.exchange import SET_USER_KEY, SKIP_KEY, Exchange, Snippets
from px_middleware.core.model import Identity
from px_middleware.core.tracking import Tracker

__all__ = ["DjangoExchange"]

log = logging.getLogger("px_middleware")


class DjangoExchange:
    """One request's ``Exchange`` and what it does to the Django response."""

    def __init__(self, config: PXConfig, counters: Counters, tracker: Tracker | None,
                 snippets: Snippets, path_allowed: Callable[[str], bool],
                 request: HttpRequest) -> None:
        meta = request.META
        self.counters = counters
        self.exchange = Exchange(
            config,
            counters,
            method=request.method or "GET",
            path=request.path_info,
            header=request.headers.get,
            path_allowed=path_allowed,
            query=meta.get("QUERY_STRING", ""),
            scheme=request.scheme or "http",
            # Not request.get_host(): ALLOWED_HOSTS is Django's to enforce, in the view.
            host=meta.get("HTTP_HOST") or meta.get("SERVER_NAME", ""),
            client=meta.get("REMOTE_ADDR"),
            tracker=tracker,
            snippets=snippets,
        )
        #: The app's head as ``accepts`` saw it (``headers()`` returns it when unchanged).
        self.original: list[tuple[str, str]] = []
        #: While the head is held: the app's own chunks, and what the exchange gave back.
        self.held: list[bytes] = []
        self.out: list[bytes] = []

    @property
    def active(self) -> bool:
        return self.exchange.active

    @property
    def may_inject(self) -> bool:
        return self.exchange.skip_reason is None

    def leave(self, reason: str) -> None:
        """Before ``respond``: nothing for this response (no snippet, no page view)."""
        self.exchange.leave(reason)

    def accepts(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        """At response start: True when ``respond`` needs the visitor's identity."""
        if request.META.get(SKIP_KEY):
            self.exchange.leave("skipped by the app (px_middleware.skip)")
            return False
        self.original = list(response.items())
        return self.exchange.accepts(response.status_code, self.original)

    def respond(self, request: HttpRequest, response: HttpResponseBase,
                identity: Identity | None, nonce: str | None) -> HttpResponseBase:
        """Under sync middleware: track and inject. Never raises."""
        try:
            if not self._begin(request, response, identity, nonce):
                return response
            if not isinstance(response, StreamingHttpResponse):
                return self._whole(response)
            if response.is_async:
                return self._as_is(response, "an async iterator under sync middleware "
                                             "(Django consumes it whole; sent as is)")
            source: Iterator[bytes] = response.streaming_content
        except Exception:
            self.failed("deciding at response start")
            return response
        try:
            error = self._pull(source)
        except Exception:
            self.failed("injecting")
            body = _SyncBody(self, self._give_up(), source)
        else:
            body = _SyncBody(self, self._decided(response, error), source, error)
        response.streaming_content = body  # Django registers its close(): the page view
        return response

    async def arespond(self, request: HttpRequest, response: HttpResponseBase,
                       identity: Identity | None, nonce: str | None) -> HttpResponseBase:
        """Under async middleware: the same; a sync body is pulled in Django's sync thread."""
        try:
            if not self._begin(request, response, identity, nonce):
                return response
            if not isinstance(response, StreamingHttpResponse):
                return self._whole(response)
            source: Any = response.streaming_content
        except Exception:
            self.failed("deciding at response start")
            return response
        body: _SyncBody | _AsyncBody
        try:
            if response.is_async:
                error = await self._apull(source)
                body = _AsyncBody(self, self._decided(response, error), source, error)
            else:
                # Thread-sensitive, as Django's own sync_to_async(list) of such a body.
                error = await sync_to_async(self._pull)(source)
                body = _SyncBody(self, self._decided(response, error), source, error)
        except Exception:
            self.failed("injecting")
            held = self._give_up()
            body = (_AsyncBody(self, held, source) if response.is_async
                    else _SyncBody(self, held, source))
        response.streaming_content = body  # Django registers its close(): the page view
        return response

    def finish(self) -> None:
        """The response is over: record its page view (never fails the response)."""
        try:
            self.exchange.finish()
        except Exception:
            self.failed("recording the page view")

    def failed(self, where: str) -> None:
        self.counters.incr("errors")
        log.exception("px_middleware: error while %s; response passed through unchanged", where)

    # -- the steps --------------------------------------------------------------------
    def _begin(self, request: HttpRequest, response: HttpResponseBase,
               identity: Identity | None, nonce: str | None) -> bool:
        """True: the body goes through the exchange. False: ``response`` is done."""
        injecting = self.exchange.begin(
            identity, nonce=nonce,
            # No nonce from django-csp is not an error: the core reads the CSP header.
            nonce_required=False, set_user=request.META.get(SET_USER_KEY),
        )
        if injecting and isinstance(response, FileResponse):
            self._as_is(response, "FileResponse (sent as is)")
            return False
        if injecting and not isinstance(response, (HttpResponse, StreamingHttpResponse)):
            self._as_is(response, f"{type(response).__name__}: a body we cannot read")
            return False
        if not injecting:
            self._write_head(response)
            self.finish()  # the page view, timed to the response start
        return injecting

    def _as_is(self, response: HttpResponseBase, reason: str) -> HttpResponseBase:
        """The body goes on untouched; the head as the exchange says (a page view's cookie)."""
        self.exchange.skip(reason)
        self._write_head(response)
        self.finish()
        return response

    def _write_head(self, response: HttpResponseBase) -> None:
        if self.exchange.changed:
            _write_headers(response, self.original, self.exchange.headers())

    def _whole(self, response: HttpResponse) -> HttpResponseBase:
        """A complete body, injected in one go; ``response`` changed only at the end."""
        exchange = self.exchange
        try:
            content = response.content
            out = exchange.feed(content) + exchange.close()
            headers = exchange.headers() if exchange.changed else None
        except Exception:
            self.failed("injecting")
            self.finish()
            return response
        if headers is not None:
            _write_headers(response, self.original, headers)
        if out != content:
            response.content = out
        self.finish()
        return response

    def _take(self, chunk: bytes) -> bool:
        """One chunk pulled while the head is held; True once the exchange has decided."""
        self.held.append(chunk)
        self.out.append(self.exchange.feed(chunk))
        return self.exchange.decided

    def _pull(self, source: Iterator[bytes]) -> Exception | None:
        """Pull ``source`` until decided; returns the app's exception, raises ours."""
        while True:
            try:
                chunk = next(source)
            except StopIteration:
                self.out.append(self.exchange.close())
                return None
            except Exception as exc:
                return exc
            if self._take(chunk):
                return None

    async def _apull(self, source: AsyncIterator[bytes]) -> Exception | None:
        """The same for an async iterator."""
        while True:
            try:
                chunk = await source.__anext__()
            except StopAsyncIteration:
                self.out.append(self.exchange.close())
                return None
            except Exception as exc:
                return exc
            if self._take(chunk):
                return None

    def _decided(self, response: StreamingHttpResponse, error: Exception | None) -> bytes:
        """After the pull: the head as the exchange says; returns what goes out first."""
        if error is not None:  # the app's body broke before we decided: its own bytes
            return self._give_up()
        try:
            self._write_head(response)
        except Exception:
            self.failed("injecting")
            return self._give_up()
        first = b"".join(self.out)
        self.held, self.out = [], []
        return first

    def _give_up(self) -> bytes:
        """Stop injecting: the app's chunks pulled so far, unchanged, and its own head."""
        held = b"".join(self.held)
        self.held, self.out = [], []
        return held


def _write_headers(response: HttpResponseBase, original: list[tuple[str, str]],
                   headers: list[tuple[str, str]]) -> None:
    """Make ``response``'s headers ``headers`` (Django keeps one value per name)."""
    cookies = [v for n, v in headers if n.lower() == "set-cookie" and (n, v) not in original]
    kept = [(n, v) for n, v in headers if (n, v) in original or n.lower() != "set-cookie"]
    names = {n.lower() for n, _ in kept}
    for name, _ in original:
        if name.lower() not in names:
            del response[name]
    for name, value in kept:
        response[name] = value
    for cookie in cookies:
        # Into response.cookies, where Django looks: its cache middleware never stores a
        # response that sets one, and its test client keeps it.
        response.cookies.load(cookie)


class _SyncBody:
    """A streamed body once decided: what went out first, then the app's rest as is.

    ``error``: the app's exception while we pulled, raised after its bytes, where the
    server would have met it without us. ``close()`` records the page view.
    """

    def __init__(self, page: DjangoExchange, first: bytes, rest: Iterator[bytes],
                 error: Exception | None = None) -> None:
        self._page = page
        self._first = first
        self._rest = rest
        self._error = error

    def __iter__(self) -> Iterator[bytes]:
        if self._first:
            yield self._first
        if self._error is not None:
            raise self._error
        yield from self._rest

    def close(self) -> None:
        self._page.finish()


class _AsyncBody:
    """The same for an async iterator (``StreamingHttpResponse`` under ASGI)."""

    def __init__(self, page: DjangoExchange, first: bytes, rest: AsyncIterator[bytes],
                 error: Exception | None = None) -> None:
        self._page = page
        self._first = first
        self._rest = rest
        self._error = error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._first:
            yield self._first
        if self._error is not None:
            raise self._error
        async for chunk in self._rest:
            yield chunk

    def close(self) -> None:
        self._page.finish()

"""Django requests and responses through the core's ``Exchange``.

This is the one place the Django integration drives the core, in the order
``px_middleware/wsgi.py`` does: ``Exchange(...)`` with the request facts, then
``accepts`` / ``begin`` at response start, ``headers``, ``feed`` / ``close`` for the
body, ``finish`` for the page view. Django hands a middleware the whole response
object before anything is on the wire, so:

* ``HttpResponse``: the body is complete; injected in one go, ``Content-Length``
  recomputed by the core, the response changed only once everything was computed;
* ``StreamingHttpResponse`` (sync or async iterator): the head is rewritten at once
  and the body wrapped lazily, chunk by chunk; until the injector decided, the app's
  own chunks are kept, so giving up mid-body still sends them byte for byte;
* ``FileResponse`` (and whitenoise's): the body is never touched (sendfile path kept);
* anything else (not a page, not tracked): the same object, untouched.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from django.http import FileResponse, HttpRequest
from django.http.response import HttpResponseBase, StreamingHttpResponse

from px_middleware.config import PXConfig
from px_middleware.core.counters import Counters
from px_middleware.core.exchange import SET_USER_KEY, SKIP_KEY, Exchange
from px_middleware.core.model import Identity
from px_middleware.core.tracking import Tracker

__all__ = ["DjangoExchange"]

log = logging.getLogger("px_middleware")


class DjangoExchange:
    """One request's ``Exchange`` and what it does to the Django response."""

    def __init__(self, config: PXConfig, counters: Counters, tracker: Tracker | None,
                 path_allowed: Callable[[str], bool], request: HttpRequest) -> None:
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
        )
        self.injecting = False
        #: The app's chunks while the injector has not decided (streamed bodies).
        self.held: list[bytes] = []

    @property
    def active(self) -> bool:
        return self.exchange.active

    @property
    def may_inject(self) -> bool:
        return self.exchange.skip_reason is None

    def skip(self, reason: str) -> None:
        self.exchange.skip(reason)

    def accepts(self, request: HttpRequest, response: HttpResponseBase) -> bool:
        """At response start: True when ``respond`` needs the visitor's identity."""
        if request.META.get(SKIP_KEY):
            return self.exchange.skip("skipped by the app (px_middleware.skip)")
        return self.exchange.accepts(response.status_code, list(response.items()))

    def respond(self, request: HttpRequest, response: HttpResponseBase,
                identity: Identity | None, nonce: str | None) -> HttpResponseBase:
        """Track and inject; ``response`` is changed only after everything was computed."""
        exchange = self.exchange
        original = list(response.items())
        if exchange.skip_reason is None:
            if isinstance(response, FileResponse):
                exchange.skip("FileResponse (sent as is)")
            elif response.streaming and exchange.has_content_length:
                exchange.skip("streamed with Content-Length (the head cannot wait)")
        self.injecting = exchange.begin(
            original, identity, nonce=nonce,
            # No nonce from django-csp is not an error: the core reads the CSP header.
            nonce_required=False, set_user=request.META.get(SET_USER_KEY),
        )
        if not self.injecting:
            headers = exchange.headers() if exchange.tracked else None
            if headers is not None:
                _write_headers(response, original, headers)
            self.finish()  # the page view, timed to the response start
            return response
        if isinstance(response, StreamingHttpResponse):
            headers = exchange.headers()  # streamed: the head goes out before the body
            body: Any = (_AsyncBody(self, response.streaming_content) if response.is_async
                         else _SyncBody(self, response.streaming_content))
            _write_headers(response, original, headers)
            response.streaming_content = body
            return response
        content = response.content
        out = exchange.feed(content) + exchange.close()
        headers = exchange.headers()
        _write_headers(response, original, headers)
        response.content = out
        self.finish()
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

    # -- streamed body --------------------------------------------------------------
    def feed(self, chunk: bytes) -> bytes | None:
        """What to send for one app chunk; ``None`` while the injector looks."""
        if not self.injecting:
            return chunk
        self.held.append(chunk)
        try:
            out = self.exchange.feed(chunk)
            injector = self.exchange.injector
            if injector is None or not injector.decided:
                return None
        except Exception:
            self.failed("injecting")
            return self._give_up()
        self.injecting = False  # decided: the rest passes as is
        self.held = []
        return out

    def end(self) -> bytes:
        """The app's body is over: what the injector still holds."""
        if not self.injecting:
            return b""
        self.injecting = False
        try:
            out = self.exchange.close()
        except Exception:
            self.failed("injecting")
            return self._give_up()
        self.held = []
        return out

    def _give_up(self) -> bytes:
        self.injecting = False
        held, self.held = b"".join(self.held), []
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
    """A streamed body, injected lazily; ``close()`` records the page view."""

    def __init__(self, page: DjangoExchange, source: Iterator[bytes]) -> None:
        self._page = page
        self._source = source
        self._done = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        page = self._page
        while True:
            try:
                chunk = next(self._source)
            except StopIteration:
                if self._done:
                    raise
                self._done = True
                tail = page.end()
                if tail:
                    return tail
                raise
            out = page.feed(chunk)
            if out:  # None or b"": the injector is still holding (at most 64 KiB)
                return out

    def close(self) -> None:
        self._page.finish()


class _AsyncBody:
    """The same for an async iterator (``StreamingHttpResponse`` under ASGI)."""

    def __init__(self, page: DjangoExchange, source: AsyncIterator[bytes]) -> None:
        self._page = page
        self._source = source
        self._done = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        page = self._page
        while True:
            try:
                chunk = await self._source.__anext__()
            except StopAsyncIteration:
                if self._done:
                    raise
                self._done = True
                tail = page.end()
                if tail:
                    return tail
                raise
            out = page.feed(chunk)
            if out:
                return out

    def close(self) -> None:
        self._page.finish()

"""``PXMiddleware``: the Django middleware, for WSGI and ASGI Django alike.

Django picks the mode: with an async handler below it (ASGI) it runs as a coroutine
and never blocks the event loop (``request.auser()``, a sync ``PX_IDENTIFY`` hook in
Django's sync thread); under WSGI it is a plain function. Either way the response is
translated by ``DjangoExchange``, and any exception of ours gives the app's response
back unchanged (logged, counted in ``errors``). A streamed page's first chunks are read
here, before the response is returned, until the snippet's place is known (at most
64 KiB): the head cannot change once Django has sent it.

Place it near the top of ``MIDDLEWARE``: after ``GZipMiddleware`` (we never
decompress), ``SecurityMiddleware`` and whitenoise, and before django-csp's
``CSPMiddleware``, so we see the policy it sets. ``request.user`` is read when the
response comes back, so it may sit above ``AuthenticationMiddleware``.

Delivery: events go to a background sender per process. Under WSGI, ``atexit``
flushes it when the worker exits. Under ASGI, wrap the application in
``with_lifespan`` (see ``lifespan.py``): uvicorn dies of the SIGTERM it re-raises,
so no ``atexit`` hook runs there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.http.response import HttpResponseBase

from px_middleware.config import PXConfig
from px_middleware.core.counters import Counters
from px_middleware.core.exchange import SEEN_KEY, Snippets
from px_middleware.core.model import Identity
from px_middleware.core.notices import REQUEST_NOTICES
from px_middleware.delivery import tracker_for
from px_middleware.django.response import DjangoExchange
from px_middleware.django.views import EXEMPT_ATTRIBUTE, skip
from px_middleware.django.who import Who, ensure_nonce, nonce_of

__all__ = ["PXMiddleware", "load_config"]

log = logging.getLogger("px_middleware")

#: Settings of the Django integration itself, not of ``PXConfig``.
DJANGO_SETTINGS = frozenset({"PX_IDENTIFY"})
_PAGE_KEY = "px_middleware.django.page"

GetResponse = Callable[[HttpRequest], Any]


def load_config() -> PXConfig:
    """``settings.PX_*`` (a misspelt one is an error), then ``PX_*`` from the environment."""
    values = {
        name: getattr(settings, name)
        for name in dir(settings)
        if name.startswith("PX_") and name not in DJANGO_SETTINGS
    }
    try:
        return PXConfig.from_mapping(values, environ=os.environ)
    except ValueError as exc:
        raise ImproperlyConfigured(f"px_middleware: {exc}") from exc


class PXMiddleware:
    """The PX tag and a verified ``identify`` on every HTML page; server-side events."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        self.config = load_config()
        self.counters = Counters()
        self.tracker = tracker_for(self.config, self.counters)
        self.snippets = Snippets()
        self._path_allowed = self.config.path_allowed()
        self.who = Who()
        # Django adapts a sync hook to an async handler in a thread; give it the right one.
        self.process_view: Callable[..., Any] = (
            self._aprocess_view if self.is_async else self._process_view
        )

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        page = self._start(request)
        response = self.get_response(request)
        if page is None:
            return response
        try:
            if not page.accepts(request, response):
                return response
            try:
                identity = self.who.identify(request)
            except Exception as exc:
                return self._identify_failed(page, response, exc)
        except Exception:
            page.failed("deciding at response start")
            return response
        return page.respond(request, response, identity, nonce_of(request))

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        page = self._start(request)
        response: HttpResponseBase = await self.get_response(request)
        if page is None:
            return response
        try:
            if not page.accepts(request, response):
                return response
            try:
                identity: Identity | None = await self.who.aidentify(request)
            except Exception as exc:
                return self._identify_failed(page, response, exc)
        except Exception:
            page.failed("deciding at response start")
            return response
        return await page.arespond(request, response, identity, nonce_of(request))

    # -- internals ------------------------------------------------------------------
    def _start(self, request: HttpRequest) -> DjangoExchange | None:
        meta = request.META
        scope = getattr(request, "scope", None) or {}
        if meta.get(SEEN_KEY) or scope.get(SEEN_KEY):
            return None  # an outer PX middleware (WSGI or ASGI) has this request
        meta[SEEN_KEY] = True
        try:
            page = DjangoExchange(self.config, self.counters, self.tracker, self.snippets,
                                  self._path_allowed, request)
        except Exception:
            self.counters.incr("errors")
            log.exception("px_middleware: error while reading the request; passed through")
            return None
        if not page.active:
            return None
        meta[_PAGE_KEY] = page
        return page

    def _identify_failed(self, page: DjangoExchange, response: HttpResponseBase,
                         exc: Exception) -> HttpResponseBase:
        self.counters.incr("identify_errors")
        REQUEST_NOTICES.note("identify() raised; page left alone", 1, repr(exc), exc_info=True)
        page.leave("identify() raised")
        return response

    def _process_view(self, request: HttpRequest, view: Callable[..., Any],
                      args: Any, kwargs: Any) -> None:
        if getattr(view, EXEMPT_ATTRIBUTE, False):
            skip(request)
            return
        page = request.META.get(_PAGE_KEY)
        if page is not None and page.may_inject:
            ensure_nonce(request)  # django-csp then puts it in the policy it writes

    async def _aprocess_view(self, request: HttpRequest, view: Callable[..., Any],
                             args: Any, kwargs: Any) -> None:
        self._process_view(request, view, args, kwargs)

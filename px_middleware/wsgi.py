"""``PXWsgiMiddleware``: the PX snippet for any WSGI app (Flask, Django, Pyramid, ...).

    app.wsgi_app = PXWsgiMiddleware(app.wsgi_app, PXConfig.from_env(), identify=fn)

Every decision is the core's (``Exchange``); this module only speaks PEP 3333:

* a response that will not get the snippet is returned exactly as the app made it
  (same iterable, same ``close()``, ``wsgi.file_wrapper`` kept for sendfile);
* ``identify`` runs inside the app's ``start_response`` call, while frameworks still
  have their request context (Flask pops it after ``wsgi_app`` returns);
* a streamed body (no ``Content-Length``) gets its headers at once and one yield per
  chunk the app yields; with ``Content-Length`` the head is held until the injector
  has decided (at most 64 KiB), so the length can be recomputed;
* any exception of ours is logged and the original response goes through unchanged.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING

from werkzeug.datastructures import EnvironHeaders
from werkzeug.wrappers import Request

from px_middleware.config import PXConfig
from px_middleware.exchange import SEEN_KEY, SET_USER_KEY, SKIP_KEY, Counters, Exchange
from px_middleware.identity import as_identity

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("px_middleware")

IdentifyFn = Callable[[Request], object]
NonceFn = Callable[[Request], "str | None"]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]


class PXWsgiMiddleware:
    """Inject the PX tag and ``identify`` call into a WSGI app's HTML pages.

    ``identify(request)`` gets a werkzeug ``Request`` and returns an ``Identity``, a
    ``User`` or ``None``. ``csp_nonce(request)``, when given, must return the page's
    nonce; without one the page is left alone (fail closed). Without it, a nonce in
    the response's ``Content-Security-Policy`` header is used.
    """

    def __init__(
        self,
        app: WSGIApplication,
        config: PXConfig,
        identify: IdentifyFn | None = None,
        *,
        csp_nonce: NonceFn | None = None,
    ) -> None:
        if identify is not None and inspect.iscoroutinefunction(identify):
            raise TypeError("identify must be a plain function under WSGI, not async")
        self.app = app
        self.config = config
        self.identify = identify
        self.csp_nonce = csp_nonce
        self.counters = Counters()
        self._path_allowed = config.path_allowed()

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        if environ.get(SEEN_KEY):
            return self.app(environ, start_response)
        environ[SEEN_KEY] = True
        try:
            exchange = Exchange(
                self.config,
                self.counters,
                method=environ.get("REQUEST_METHOD", "GET"),
                path=environ.get("PATH_INFO", ""),
                header=EnvironHeaders(environ).get,
                path_allowed=self._path_allowed,
            )
        except Exception:
            self._failed("reading the request")
            return self.app(environ, start_response)
        if exchange.skip_reason is not None:
            log.debug("px_middleware: not injected: %s", exchange.skip_reason)
            return self.app(environ, start_response)
        response = _Response(self, environ, start_response, exchange)
        return response.wrap(self.app(environ, response.start_response))

    def _failed(self, where: str) -> None:
        self.counters.incr("errors")
        log.exception("px_middleware: error while %s; response passed through unchanged", where)

    def _plan(self, environ: WSGIEnvironment, exchange: Exchange, status: str,
              headers: list[tuple[str, str]]) -> bool:
        """At response start: True when this response gets the snippet."""
        if environ.get(SKIP_KEY):
            return exchange.skip("skipped by the app (px_middleware.skip)")
        if not exchange.accepts(int(status.split(" ", 1)[0]), headers):
            return False
        request = Request(environ)
        try:
            identity = as_identity(self.identify(request)) if self.identify else None
        except Exception as exc:
            self.counters.incr("identify_errors")
            log.warning("px_middleware: identify() raised %r; page left alone", exc,
                        exc_info=True)
            return exchange.skip("identify() raised")
        nonce = None
        if self.csp_nonce is not None:
            try:
                nonce = self.csp_nonce(request)
            except Exception:
                log.warning("px_middleware: csp_nonce() raised", exc_info=True)
        return exchange.begin(
            headers,
            identity,
            nonce=nonce,
            nonce_required=self.csp_nonce is not None,
            set_user=environ.get(SET_USER_KEY),
        )


class _Response:
    """State of one response being injected; lives only for that request."""

    def __init__(self, middleware: PXWsgiMiddleware, environ: WSGIEnvironment,
                 start_response: StartResponse, exchange: Exchange) -> None:
        self.middleware = middleware
        self.environ = environ
        self.upstream = start_response
        self.exchange = exchange
        self.injecting: bool | None = None  # None until the app called start_response
        self.status = ""
        self.headers: list[tuple[str, str]] = []
        self.head_sent = False
        self.upstream_write: Callable[[bytes], object] | None = None

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: ExcInfo | None = None, /) -> Callable[[bytes], object]:
        if exc_info is not None and exc_info[0] is not None:
            # The app replaces its response after an error: step aside entirely.
            self.injecting = False
            self.head_sent = True
            return self.upstream(status, headers, exc_info)  # re-raises if head went out
        try:
            injecting = self.middleware._plan(self.environ, self.exchange, status, headers)
        except Exception:
            self.middleware._failed("deciding at response start")
            injecting = False
        self.injecting = injecting
        self.status, self.headers = status, headers
        if not injecting:
            self.head_sent = True
            return self.upstream(status, headers)
        if not self.exchange.has_content_length:
            self._send_head(final=True)  # streamed: nothing to recompute later
        return self.write

    def write(self, data: bytes) -> None:
        """The legacy ``write()`` path: give up on injection and pass through."""
        if self.injecting:
            self.injecting = False
            self.exchange.skip("the app used write()")
        if not self.head_sent:
            self._send_head(final=False)
        assert self.upstream_write is not None
        self.upstream_write(data)

    def wrap(self, app_iter: Iterable[bytes]) -> Iterable[bytes]:
        if self.injecting is False:
            return app_iter
        file_wrapper = self.environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(app_iter, file_wrapper):
            if self.injecting:
                self.injecting = False
                self.exchange.skip("wsgi.file_wrapper body (sent as is)")
                if not self.head_sent:
                    self._send_head(final=False)
            return app_iter
        return _Body(self, app_iter)

    def _send_head(self, *, final: bool) -> None:
        """Call the server's start_response: rewritten head, or the app's own."""
        headers = self.headers
        if final:
            try:
                headers = self.exchange.headers()
            except Exception:
                self.middleware._failed("rewriting headers")
        self.head_sent = True
        self.upstream_write = self.upstream(self.status, headers)


class _Body:
    """The injecting iterable: one output per app chunk, ``close()`` always forwarded."""

    def __init__(self, response: _Response, app_iter: Iterable[bytes]) -> None:
        self._response = response
        self._app_iter = app_iter

    def __iter__(self) -> Iterator[bytes]:
        response = self._response
        exchange = response.exchange
        for chunk in self._app_iter:
            if not response.injecting:
                if not response.head_sent:
                    response._send_head(final=False)
                yield chunk
                continue
            try:
                out = exchange.feed(chunk)
            except Exception:
                response.middleware._failed("injecting")
                yield self._give_up()  # the injector holds this chunk too
                continue
            if not response.head_sent:
                if not exchange.injector or not exchange.injector.decided:
                    continue  # Content-Length known: hold (<= 64 KiB) to recompute it
                response._send_head(final=True)
            yield out
        if response.injecting:
            try:
                out = exchange.close()
            except Exception:
                response.middleware._failed("injecting")
                yield self._give_up()
                return
            if not response.head_sent:
                response._send_head(final=True)
            if out:
                yield out
        elif not response.head_sent:
            response._send_head(final=False)

    def _give_up(self) -> bytes:
        """Fail open mid-body: the bytes held so far, unchanged; the rest passes as is."""
        response = self._response
        response.injecting = False
        held = response.exchange.injector.abandon() if response.exchange.injector else b""
        if not response.head_sent:
            response._send_head(final=False)
        return held

    def close(self) -> None:
        close = getattr(self._app_iter, "close", None)
        if close is not None:
            close()

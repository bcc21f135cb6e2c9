"""``PXWsgiMiddleware``: the PX snippet for any WSGI app (Flask, Django, Pyramid, ...).

    app.wsgi_app = PXWsgiMiddleware(app.wsgi_app, PXConfig.from_env(), identify=fn)

Every decision is the core's (``Exchange``); this module only speaks PEP 3333:

* a response that will not get the snippet nor a session cookie is returned exactly
  as the app made it (same iterable, same ``close()``, ``wsgi.file_wrapper`` kept);
* ``identify`` runs inside the app's ``start_response`` call, while frameworks still
  have their request context (Flask pops it after ``wsgi_app`` returns);
* the head is held until the injector has decided where the snippet goes, or that it
  does not (a fragment, a page with its own loader): headers are rewritten only when
  the snippet goes in, and ``Content-Length`` can be recomputed;
* any exception of ours is logged and the original response goes through unchanged:
  until the injector has decided we keep the app's own chunks, so giving up mid-body
  still sends its bytes, byte for byte.

Holding the head, the trade-off. PEP 3333 wants a middleware to yield once for each
chunk the app yields, but a server refuses even an empty chunk before
``start_response``'s head is sent, and the head cannot be sent before the decision.
So while undecided we pull the app's iterator without yielding: for at most the
injector's limit (64 KiB) of body, usually one chunk (the head of a page comes
first). A page that streams its head slowly reaches the browser that much later;
nothing is buffered beyond the limit, and a page that is not HTML, or not GET, is
never held.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING

from werkzeug.wrappers import Request
from werkzeug.wsgi import ClosingIterator

from px_middleware.config import PXConfig
from px_middleware.core.exchange import (
    SEEN_KEY,
    SET_USER_KEY,
    SKIP_KEY,
    Counters,
    Exchange,
    Snippets,
    pass_through_reason,
)
from px_middleware.core.model import as_identity
from px_middleware.core.notices import REQUEST_NOTICES
from px_middleware.core.policy import ResponseHead, content_type
from px_middleware.delivery import tracker_for

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["PXWsgiMiddleware"]

log = logging.getLogger("px_middleware")

IdentifyFn = Callable[[Request], object]
NonceFn = Callable[[Request], "str | None"]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]
#: What a request was when it came in: method, path, query, scheme, client address.
_Facts = tuple[str, str, str, str, "str | None"]


class PXWsgiMiddleware:
    """Inject the PX tag and ``identify`` call into a WSGI app's HTML pages.

    ``identify(request)`` gets a werkzeug ``Request`` and returns an ``Identity``, a
    ``User`` or ``None``. The request is shallow: reading its body raises, because
    the app owns the body.

    ``csp_nonce(request)`` returns the page's CSP nonce. With ``nonce_required`` (the
    default) a ``None`` means "this page needs a nonce we do not have": it is left
    alone (fail closed). With ``nonce_required=False`` a ``None`` only means "no
    nonce from here", and a nonce in the response's ``Content-Security-Policy``
    header is used when the policy needs one, as it is without ``csp_nonce``.
    """

    def __init__(
        self,
        app: WSGIApplication,
        config: PXConfig,
        identify: IdentifyFn | None = None,
        *,
        csp_nonce: NonceFn | None = None,
        nonce_required: bool = True,
    ) -> None:
        if identify is not None and inspect.iscoroutinefunction(identify):
            raise TypeError("identify must be a plain function under WSGI, not async")
        self.app = app
        self.config = config
        self.identify = identify
        self.csp_nonce = csp_nonce
        self.nonce_required = nonce_required and csp_nonce is not None
        self.counters = Counters()
        self.tracker = tracker_for(config, self.counters)
        self.snippets = Snippets()
        self._path_allowed = config.path_allowed()

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        if environ.get(SEEN_KEY):
            return self.app(environ, start_response)
        environ[SEEN_KEY] = True
        response = _Response(self, environ, start_response)
        return response.wrap(self.app(environ, response.start_response))

    def _failed(self, where: str) -> None:
        self.counters.incr("errors")
        log.exception("px_middleware: error while %s; response passed through unchanged", where)

    def _skipped(self, environ: WSGIEnvironment, request: Request) -> bool:
        """The app said: no PX on this response (``environ["px_middleware.skip"]``)."""
        return bool(environ.get(SKIP_KEY))

    def _request(self, environ: WSGIEnvironment) -> Request:
        """What the hooks get. Shallow: the body is the app's; reading it must fail."""
        return _LazyRequest(environ)

    def _exchange(self, environ: WSGIEnvironment, facts: _Facts,
                  started: float | None) -> Exchange | None:
        """The exchange for a response that may matter, or None (pass it through)."""
        try:
            header = _header_getter(environ)
            method, path, query, scheme, client = facts
            exchange = Exchange(
                self.config,
                self.counters,
                method=method,
                path=path,
                header=header,
                path_allowed=self._path_allowed,
                query=query,
                scheme=scheme,
                host=header("host") or environ.get("SERVER_NAME", ""),
                client=client,
                tracker=self.tracker,
                snippets=self.snippets,
                started=started,
            )
        except Exception:
            self._failed("reading the request")
            return None
        if not exchange.active:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("px_middleware: not injected: %s", exchange.skip_reason)
            return None
        return exchange

    def _identify_and_begin(self, environ: WSGIEnvironment, exchange: Exchange, status: int,
                            headers: list[tuple[str, str]], head: ResponseHead) -> bool:
        """At response start: identify the visitor and begin the exchange.

        True: the body goes through the exchange (and the head waits for its decision).
        """
        request = self._request(environ)
        if self._skipped(environ, request):
            exchange.leave("skipped by the app (px_middleware.skip)")
            return False
        if not exchange.accepts(status, headers, head):
            return False
        try:
            identity = as_identity(self.identify(request)) if self.identify else None
        except Exception as exc:
            self.counters.incr("identify_errors")
            REQUEST_NOTICES.note("identify() raised; page left alone", 1, repr(exc),
                                exc_info=True)
            exchange.leave("identify() raised")
            return False
        nonce = None
        if self.csp_nonce is not None:
            try:
                nonce = self.csp_nonce(request)
            except Exception:
                REQUEST_NOTICES.note("csp_nonce() raised", 1, "no nonce", exc_info=True)
        return exchange.begin(
            identity,
            nonce=nonce,
            nonce_required=self.nonce_required,
            set_user=environ.get(SET_USER_KEY),
        )


class _LazyRequest(Request):
    """A shallow werkzeug ``Request`` that reads the environ when first asked.

    ``Request.__init__`` decodes the path, parses the host and wraps the headers (about
    2 µs); most ``identify`` hooks read one cookie or ``environ`` key, or nothing. Any
    attribute ``__init__`` would have set runs it then, whatever werkzeug's version sets.
    """

    def __init__(self, environ: WSGIEnvironment) -> None:
        self.environ = environ
        self.shallow = True

    def __getattr__(self, name: str) -> object:
        # Only for attributes not found: the ones Request.__init__ sets, or none at all.
        if "_read" in self.__dict__:
            raise AttributeError(name)
        self.__dict__["_read"] = True
        Request.__init__(self, self.environ, populate_request=False, shallow=True)
        return getattr(self, name)


_ENVIRON_KEYS: dict[str, str] = {}


def _environ_key(name: str) -> str:
    key = name.upper().replace("-", "_")
    if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        key = "HTTP_" + key
    if len(_ENVIRON_KEYS) < 256:  # the core asks for a fixed set of names
        _ENVIRON_KEYS[name] = key
    return key


def _header_getter(environ: WSGIEnvironment) -> Callable[[str], str | None]:
    """``header(name)`` on the environ: a few times cheaper than werkzeug's
    ``EnvironHeaders``, and it runs for every request."""

    def header(name: str) -> str | None:
        value: str | None = environ.get(_ENVIRON_KEYS.get(name) or _environ_key(name))
        return value

    return header


class _Response:
    """State of one response going through the exchange; lives only for that request."""

    def __init__(self, middleware: PXWsgiMiddleware, environ: WSGIEnvironment,
                 start_response: StartResponse) -> None:
        self.middleware = middleware
        self.environ = environ
        self.upstream = start_response
        # The request as it came in: an app may rewrite PATH_INFO in place on its way
        # (werkzeug's DispatcherMiddleware does) before it starts the response.
        self.facts: _Facts = (
            environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", ""),
            environ.get("QUERY_STRING", ""), environ.get("wsgi.url_scheme", "http"),
            environ.get("REMOTE_ADDR"),
        )
        tracker = middleware.tracker
        self.started = tracker.clock() if tracker is not None else None
        #: Built at response start for a response that may matter (``pass_through_reason``).
        self.exchange: Exchange | None = None
        #: None until the app called start_response; then whether the body goes
        #: through the exchange (False once we hand it on as is).
        self.injecting: bool | None = None
        self.status = ""
        self.headers: list[tuple[str, str]] = []
        self.head_sent = False
        self.upstream_write: Callable[[bytes], object] | None = None
        #: The app's own chunks while the head is held, for failing open byte for byte.
        self.held: list[bytes] = []

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: ExcInfo | None = None, /) -> Callable[[bytes], object]:
        if exc_info is not None and exc_info[0] is not None:
            if self.injecting and not self.head_sent and any(self.held):
                # The app has produced body bytes, so for it the head is out: PEP 3333
                # says re-raise, as the server would have without us.
                raise exc_info[1].with_traceback(exc_info[2])
            # The app replaces its response after an error: step aside entirely.
            self.injecting = False
            self.held = []
            self.head_sent = True
            self.upstream_write = self.upstream(status, headers, exc_info)
            return self.upstream_write
        self.status, self.headers = status, headers
        middleware = self.middleware
        injecting = False
        try:
            reason = pass_through_reason(middleware.config, content_type(headers),
                                         middleware.tracker is not None)
            if reason is None:
                exchange = self.exchange = middleware._exchange(
                    self.environ, self.facts, self.started
                )
                if exchange is not None:
                    code = int(status.split(" ", 1)[0])
                    injecting = middleware._identify_and_begin(
                        self.environ, exchange, code, headers, ResponseHead(headers)
                    )
            elif log.isEnabledFor(logging.DEBUG):
                log.debug("px_middleware: not injected: %s", reason)
        except Exception:
            middleware._failed("deciding at response start")
        self.injecting = injecting
        if injecting:
            return self.write  # the head waits for the decision
        self.head_sent = True
        if self.exchange is not None and self.exchange.changed:
            try:  # not injected, but the session cookie goes out
                headers = self.exchange.headers()
            except Exception:
                middleware._failed("adding the session cookie")
        self.upstream_write = self.upstream(status, headers)
        return self.upstream_write

    def write(self, data: bytes) -> None:
        """The legacy ``write()`` path: give up on injection and pass through."""
        if self.injecting and not self.head_sent:
            held = self._hand_over("the app used write()")
            if held:
                self._write(held)
        self._write(data)

    def wrap(self, app_iter: Iterable[bytes]) -> Iterable[bytes]:
        file_wrapper = self.environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(app_iter, file_wrapper):
            if self.injecting:  # keep the server's sendfile path: hands off the body
                self._hand_over("wsgi.file_wrapper body (sent as is)")
            self.finish()  # the page view, timed to the response start
            return app_iter
        if self.injecting is False:
            if self.exchange is not None and self.exchange.changed:
                return ClosingIterator(app_iter, self.finish)  # finish(): the page view
            return app_iter
        return _Body(self, app_iter)

    def finish(self) -> None:
        """The response is over: record its page view (never fails the response)."""
        if self.exchange is None:
            return
        try:
            self.exchange.finish()
        except Exception:
            self.middleware._failed("recording the page view")

    # -- body ---------------------------------------------------------------------
    @property
    def _current(self) -> Exchange:
        """The exchange the body goes through: there is one whenever ``injecting``."""
        assert self.exchange is not None
        return self.exchange

    def feed(self, chunk: bytes) -> bytes | None:
        """What to send for one app chunk; ``None`` while the head is still held."""
        if self.head_sent:
            return chunk  # decided: the rest passes as is
        self.held.append(chunk)
        try:
            exchange = self._current
            out = exchange.feed(chunk)
            if not exchange.decided:
                return None  # hold (at most the injector's limit)
            return self._decided(out)
        except Exception:
            self.middleware._failed("injecting")
            return self._give_up()

    def end(self) -> bytes:
        """The app's body is over: what the injector still holds, head sent first."""
        if self.head_sent:
            return b""
        try:
            return self._decided(self._current.close())
        except Exception:
            self.middleware._failed("injecting")
            return self._give_up()

    def _decided(self, out: bytes) -> bytes:
        """The exchange has decided: its head goes out before ``out``."""
        self._send_head(self._current.headers())
        self.held = []
        return out

    def _hand_over(self, reason: str) -> bytes:
        """The body goes on as is (``write()``, sendfile): the app's unsent bytes."""
        try:
            self._current.skip(reason)
            head = self._current.headers()
        except Exception:
            self.middleware._failed("handing the body over")
            head = self.headers
        return self._give_up(head)

    def _give_up(self, head: list[tuple[str, str]] | None = None) -> bytes:
        """Stop injecting: the app's unsent bytes, unchanged; the rest passes as is."""
        self.injecting = False
        if not self.head_sent:
            self._send_head(self.headers if head is None else head)
        held, self.held = b"".join(self.held), []
        return held

    def _send_head(self, headers: list[tuple[str, str]]) -> None:
        self.upstream_write = self.upstream(self.status, headers)
        self.head_sent = True

    def _write(self, data: bytes) -> None:
        assert self.upstream_write is not None
        self.upstream_write(data)


class _Body:
    """The iterable going through the exchange; ``close()`` is always forwarded.

    While the head is held it pulls the app's chunks without yielding (see the module
    docstring); once decided, one output per app chunk.
    """

    def __init__(self, response: _Response, app_iter: Iterable[bytes]) -> None:
        self._response = response
        self._app_iter = app_iter

    def __iter__(self) -> Iterator[bytes]:
        response = self._response
        for chunk in self._app_iter:
            if response.injecting:
                out = response.feed(chunk)
                if out is None:
                    continue  # undecided: the head is held, nothing may be yielded yet
                yield out
            else:
                yield chunk
        if response.injecting:
            out = response.end()
            if out:
                yield out

    def close(self) -> None:
        try:
            close = getattr(self._app_iter, "close", None)
            if close is not None:
                close()
        finally:
            self._response.finish()

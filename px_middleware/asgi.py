"""``PXAsgiMiddleware``: the PX snippet for any ASGI app (Starlette, FastAPI, ...).

    app.add_middleware(PXAsgiMiddleware, config=PXConfig.from_env())

A pure ASGI middleware in the style of starlette's ``GZipMiddleware``: per-request
state lives in ``__call__``'s locals, every decision is the core's (``Exchange``).

* ``lifespan``, ``websocket`` and responses that will not get the snippet pass
  through message for message, untouched;
* ``http.response.start`` is held only until the injector has decided (at most
  64 KiB of body), so ``Content-Length`` can be recomputed before it goes out; from
  then on every message is forwarded as it comes;
* ``http.response.pathsend``, ``zerocopysend``, trailers and unknown messages are
  forwarded as they are (a body we never see is never injected);
* ``identify(request)`` runs once, at response start, when ``scope["user"]``,
  ``scope["session"]`` and ``scope["state"]`` are set. An ``async def`` one is
  awaited; a plain ``def`` one (and ``csp_nonce``) runs in anyio's worker threads, as
  Starlette runs sync endpoints, so a database lookup never blocks the event loop.
  Without one, the user is found where Starlette apps keep it (``core/scope.py``);
* an exception of ours is logged and the original messages go through unchanged;
  an exception of the app propagates exactly as it would without us.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from px_middleware.config import SHUTDOWN_TIMEOUT, PXConfig
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
from px_middleware.core.policy import ResponseHead
from px_middleware.core.scope import identity_from_scope, nonce_from_scope
from px_middleware.delivery import get_delivery, tracker_for

log = logging.getLogger("px_middleware")

IdentifyFn = Callable[[Request], Any]
NonceFn = Callable[[Request], Any]
#: What a request was when it came in: method, path, query, scheme, client address.
_Facts = tuple[str, str, str, str, "str | None"]


def _decode(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]


def _content_type(raw: list[tuple[bytes, bytes]]) -> str | None:
    """``policy.content_type`` on the raw headers: a response that passes through has
    nothing else decoded."""
    found = None
    for name, value in raw:
        if len(name) == 12 and name.lower() == b"content-type":
            found = value
    return None if found is None else found.decode("latin-1")


def _encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


_NAMES: dict[str, bytes] = {}


def _name(name: str) -> bytes:
    key = name.lower().encode("latin-1")
    if len(_NAMES) < 256:  # the core asks for a fixed set of names
        _NAMES[name] = key
    return key


def _header_getter(scope: Scope) -> Callable[[str], str | None]:
    """``header(name)`` on the scope's headers, the first of duplicates (as starlette's
    ``Headers.get``); one dict per request instead of a list scan per lookup, and only
    the values asked for decoded."""
    found: dict[bytes, bytes] | None = None

    def header(name: str) -> str | None:
        nonlocal found
        if found is None:
            # Names lowered here too: the ASGI spec asks servers to, not every one does.
            found = {key.lower(): value for key, value in reversed(scope.get("headers") or ())}
        value = found.get(_NAMES.get(name) or _name(name))
        return None if value is None else value.decode("latin-1")

    return header


def _is_async(fn: Callable[..., Any]) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 (an object with async __call__)
    )


async def _call(fn: Callable[[Request], Any], is_async: bool, request: Request) -> Any:
    """Await an async hook; run a sync one in a worker thread, off the event loop."""
    if is_async:
        return await fn(request)
    result = await anyio.to_thread.run_sync(fn, request)
    return await result if inspect.isawaitable(result) else result


class PXAsgiMiddleware:
    """Inject the PX tag and ``identify`` call into an ASGI app's HTML pages.

    ``identify(request)`` gets a starlette ``Request`` (sync or ``async def``) and
    returns an ``Identity``, a ``User`` or ``None``; it defaults to
    ``px_middleware.starlette.default_identify`` (``request.state.px_identity``, then
    an authenticated ``scope["user"]``, then ``scope["session"]["user_id"]``).

    ``csp_nonce(request)`` (sync or async) returns the page's CSP nonce. With
    ``nonce_required`` (the default) a ``None`` leaves the page alone (fail closed);
    with ``nonce_required=False`` it only means "no nonce from here". Without
    ``csp_nonce``, ``request.state.csp_nonce`` is used when the app set one. Either
    way a nonce in the response's ``Content-Security-Policy`` header is found by the
    core when the policy needs one.
    """

    def __init__(
        self,
        app: ASGIApp,
        config: PXConfig,
        identify: IdentifyFn | None = None,
        *,
        csp_nonce: NonceFn | None = None,
        nonce_required: bool = True,
    ) -> None:
        self.app = app
        self.config = config
        self.identify = identify
        self.csp_nonce = csp_nonce
        self.nonce_required = nonce_required and csp_nonce is not None
        self.counters = Counters()
        self.tracker = tracker_for(config, self.counters)
        self.snippets = Snippets()
        self._path_allowed = config.path_allowed()
        self._identify_async = identify is not None and _is_async(identify)
        self._nonce_async = csp_nonce is not None and _is_async(csp_nonce)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan" and self.tracker and self.tracker.capture:
            await self.app(scope, receive, self._lifespan_send(send))
            return
        if scope["type"] != "http" or scope.get(SEEN_KEY):
            await self.app(scope, receive, send)
            return
        scope[SEEN_KEY] = True
        try:
            client = scope.get("client")
            # The request as it came in: a router may rewrite the scope on its way.
            facts: _Facts = (
                scope["method"], scope["path"],
                scope.get("query_string", b"").decode("latin-1"),
                scope.get("scheme", "http"), client[0] if client else None,
            )
        except Exception:
            self._failed("reading the request")
            await self.app(scope, receive, send)
            return
        tracker = self.tracker
        started = tracker.clock() if tracker is not None else None
        await self._respond(scope, receive, send, facts, started)

    def _exchange(self, scope: Scope, facts: _Facts, started: float | None) -> Exchange | None:
        """The exchange for a response that may matter, or None (pass it through)."""
        try:
            header = _header_getter(scope)
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
                host=header("host") or "",
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

    def _lifespan_send(self, send: Send) -> Send:
        """Flush captured events when the server shuts the app down."""

        async def lifespan_send(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                delivery = get_delivery(self.config)
                await anyio.to_thread.run_sync(delivery.flush, SHUTDOWN_TIMEOUT)
            await send(message)

        return lifespan_send

    async def _respond(
        self, scope: Scope, receive: Receive, send: Send, facts: _Facts, started: float | None
    ) -> None:
        # Built at response start, for a response that may matter (``pass_through_reason``).
        exchange: Exchange | None = None
        # While ``held_start`` is set we are holding the head and the raw body chunks
        # seen so far; once the injector has decided, everything is forwarded as is.
        held_start: Message | None = None
        held_body: list[bytes] = []

        async def release_original(more_body: bool, handed_over: bool = False) -> None:
            """Fail open: the app's own start and the body bytes we were holding.

            ``handed_over``: not a failure, the body goes on as is; the exchange's head
            (with its session cookie when the page counts) goes out.
            """
            nonlocal held_start
            start, held_start = held_start, None
            body = b"".join(held_body)
            held_body.clear()
            assert start is not None and exchange is not None
            if handed_over and exchange.changed:
                start = {**start, "headers": _encode(exchange.headers())}
            await send(start)
            if body or not more_body:
                await send({"type": "http.response.body", "body": body, "more_body": more_body})

        async def send_wrapper(message: Message) -> None:
            nonlocal held_start, exchange
            if held_start is None:
                if message["type"] != "http.response.start" or exchange is not None:
                    await send(message)  # body after the decision, trailers, ...
                    return
                injecting = False
                try:
                    raw = message.get("headers", [])
                    reason = pass_through_reason(self.config, _content_type(raw),
                                                 self.tracker is not None)
                    if reason is None:
                        exchange = self._exchange(scope, facts, started)
                    elif log.isEnabledFor(logging.DEBUG):
                        log.debug("px_middleware: not injected: %s", reason)
                    if exchange is not None:
                        headers = _decode(raw)
                        injecting = await self._identify_and_begin(
                            scope, exchange, message["status"], headers, ResponseHead(headers)
                        )
                except Exception:
                    self._failed("deciding at response start")
                if injecting:
                    held_start = message
                    return
                try:
                    if exchange is not None and exchange.changed:
                        # Not injected, but the session cookie goes out.
                        message = {**message, "headers": _encode(exchange.headers())}
                except Exception:
                    self._failed("adding the session cookie")
                await send(message)
                return
            assert exchange is not None  # the start is held only while injecting
            if message["type"] != "http.response.body":
                # pathsend, zerocopysend, unknown: a body we cannot rewrite.
                exchange.skip(f"{message['type']} message (forwarded as is)")
                await release_original(more_body=True, handed_over=True)
                await send(message)
                return
            body = message.get("body", b"")
            more_body = message.get("more_body", False)
            held_body.append(body)
            try:
                out = exchange.feed(body)
                if not more_body:
                    out += exchange.close()
                if not exchange.decided:
                    return  # still looking for the insertion point (at most 64 KiB)
                start = held_start
                if exchange.changed:
                    start = {**start, "headers": _encode(exchange.headers())}
            except Exception:
                self._failed("injecting")
                await release_original(more_body)
                return
            held_start = None
            held_body.clear()
            await send(start)
            if out or not more_body:
                await send({**message, "body": out})

        try:
            try:
                await self.app(scope, receive, send_wrapper)
            except Exception:
                # Without us the start and the body so far would already be on the wire,
                # and the server's reaction (500 or a closed connection) depends on that.
                if held_start is not None:
                    try:
                        await release_original(more_body=True)
                    except Exception:
                        log.debug("px_middleware: could not flush before re-raising",
                                  exc_info=True)
                raise
            if held_start is not None:  # the app returned mid-body: let the server see it
                await release_original(more_body=True)
        finally:
            if exchange is not None:
                try:
                    exchange.finish()
                except Exception:
                    self._failed("recording the page view")

    def _failed(self, where: str) -> None:
        self.counters.incr("errors")
        log.exception("px_middleware: error while %s; response passed through unchanged", where)

    async def _identify_and_begin(self, scope: Scope, exchange: Exchange, status: int,
                                  headers: list[tuple[str, str]], head: ResponseHead) -> bool:
        """At response start: identify the visitor and begin the exchange.

        True: the body goes through the exchange (and the start waits for its decision).
        """
        if scope.get(SKIP_KEY):
            exchange.leave("skipped by the app (px_middleware.skip)")
            return False
        if not exchange.accepts(status, headers, head):
            return False
        # Only the app's own hooks need a Request; the scope lookups do not.
        request = Request(scope) if self.identify or self.csp_nonce else None
        try:
            if self.identify is None or request is None:
                found = identity_from_scope(scope)
            else:
                found = await _call(self.identify, self._identify_async, request)
            identity = as_identity(found)
        except Exception as exc:
            self.counters.incr("identify_errors")
            REQUEST_NOTICES.note("identify() raised; page left alone", 1, repr(exc),
                                exc_info=True)
            exchange.leave("identify() raised")
            return False
        nonce: Any = None
        if self.csp_nonce is not None and request is not None:
            try:
                nonce = await _call(self.csp_nonce, self._nonce_async, request)
            except Exception:
                REQUEST_NOTICES.note("csp_nonce() raised", 1, "no nonce", exc_info=True)
                nonce = None
        else:
            nonce = nonce_from_scope(scope)
        return exchange.begin(
            identity,
            nonce=nonce,
            nonce_required=self.nonce_required,
            set_user=scope.get(SET_USER_KEY),
        )

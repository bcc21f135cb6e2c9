"""``PXAsgiMiddleware``: the PX snippet for any ASGI app (Starlette, FastAPI, ...).

    app.add_middleware(PXAsgiMiddleware, config=PXConfig.from_env(), identify=fn)

A pure ASGI middleware in the style of starlette's ``GZipMiddleware``: per-request
state lives in ``__call__``'s locals, every decision is the core's (``Exchange``).

* ``lifespan``, ``websocket`` and responses that will not get the snippet pass
  through message for message, untouched;
* ``http.response.start`` is held only until the injector has decided (at most
  64 KiB of body), so ``Content-Length`` can be recomputed before it goes out;
* ``http.response.pathsend``, trailers and unknown messages are forwarded as they
  are (a body we never see is never injected);
* ``identify(request)`` may be async; it runs once, at response start, when
  ``scope["user"]``, ``scope["session"]`` and ``scope["state"]`` are set;
* an exception of ours is logged and the original messages go through unchanged;
  an exception of the app propagates exactly as it would without us.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from px_middleware.config import PXConfig
from px_middleware.exchange import SEEN_KEY, SET_USER_KEY, SKIP_KEY, Counters, Exchange
from px_middleware.identity import as_identity

log = logging.getLogger("px_middleware")

IdentifyFn = Callable[[Request], Any]
NonceFn = Callable[[Request], Any]


def _decode(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, str]]:
    return [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]


def _encode(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    return [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]


class PXAsgiMiddleware:
    """Inject the PX tag and ``identify`` call into an ASGI app's HTML pages.

    ``identify(request)`` gets a starlette ``Request`` (sync or ``async def``) and
    returns an ``Identity``, a ``User`` or ``None``. ``csp_nonce(request)``, when
    given, must return the page's nonce; without one the page is left alone.
    """

    def __init__(
        self,
        app: ASGIApp,
        config: PXConfig,
        identify: IdentifyFn | None = None,
        *,
        csp_nonce: NonceFn | None = None,
    ) -> None:
        self.app = app
        self.config = config
        self.identify = identify
        self.csp_nonce = csp_nonce
        self.counters = Counters()
        self._path_allowed = config.path_allowed()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get(SEEN_KEY):
            await self.app(scope, receive, send)
            return
        scope[SEEN_KEY] = True
        try:
            exchange = Exchange(
                self.config,
                self.counters,
                method=scope["method"],
                path=scope["path"],
                header=Headers(scope=scope).get,
                path_allowed=self._path_allowed,
            )
        except Exception:
            self._failed("reading the request")
            await self.app(scope, receive, send)
            return
        if exchange.skip_reason is not None:
            log.debug("px_middleware: not injected: %s", exchange.skip_reason)
            await self.app(scope, receive, send)
            return

        injecting = False
        held_start: Message | None = None  # our copy of http.response.start, not yet sent

        async def release_original(more_body: bool = True) -> None:
            """Fail open: send the app's own start and the body bytes we were holding."""
            nonlocal injecting, held_start
            injecting = False
            held = exchange.injector.abandon() if exchange.injector else b""
            if held_start is not None:
                start, held_start = held_start, None
                await send(start)
            if held or not more_body:
                await send({"type": "http.response.body", "body": held, "more_body": more_body})

        async def send_wrapper(message: Message) -> None:
            nonlocal injecting, held_start
            kind = message["type"]
            if kind == "http.response.start":
                try:
                    injecting = await self._plan(scope, exchange, message)
                except Exception:
                    self._failed("deciding at response start")
                    injecting = False
                if injecting:
                    held_start = message
                else:
                    await send(message)
                return
            if not injecting:
                await send(message)
                return
            if kind != "http.response.body":
                # pathsend, zerocopy, trailers, unknown: a body we cannot rewrite.
                exchange.skip(f"{kind} message (forwarded as is)")
                await release_original()
                await send(message)
                return
            body = message.get("body", b"")
            more_body = message.get("more_body", False)
            try:
                out = exchange.feed(body)
                if not more_body:
                    out += exchange.close()
                start_now = held_start is not None and (
                    not more_body or (exchange.injector is not None and exchange.injector.decided)
                )
                start = (
                    {**held_start, "headers": _encode(exchange.headers())}
                    if start_now and held_start is not None
                    else None
                )
            except Exception:
                self._failed("injecting")
                await release_original(more_body)  # the injector holds this chunk too
                return
            if start is not None:
                held_start = None
                await send(start)
            elif held_start is not None:
                return  # still looking for the insertion point (bounded by 64 KiB)
            if out or not more_body:
                await send({**message, "body": out, "more_body": more_body})

        try:
            await self.app(scope, receive, send_wrapper)
        except BaseException:
            # Without us the start (and any body) would already be on the wire.
            if held_start is not None:
                try:
                    await release_original()
                except Exception:
                    log.debug("px_middleware: could not flush before re-raising", exc_info=True)
            raise

    def _failed(self, where: str) -> None:
        self.counters.incr("errors")
        log.exception("px_middleware: error while %s; response passed through unchanged", where)

    async def _plan(self, scope: Scope, exchange: Exchange, start: Message) -> bool:
        """At response start: True when this response gets the snippet."""
        if scope.get(SKIP_KEY):
            return exchange.skip("skipped by the app (px_middleware.skip)")
        headers = _decode(start.get("headers", []))
        if not exchange.accepts(start["status"], headers):
            return False
        request = Request(scope)
        try:
            identity = None
            if self.identify is not None:
                result = self.identify(request)
                if inspect.isawaitable(result):
                    result = await result
                identity = as_identity(result)
        except Exception as exc:
            self.counters.incr("identify_errors")
            log.warning("px_middleware: identify() raised %r; page left alone", exc,
                        exc_info=True)
            return exchange.skip("identify() raised")
        nonce = None
        if self.csp_nonce is not None:
            try:
                nonce = self.csp_nonce(request)
                if inspect.isawaitable(nonce):
                    nonce = await nonce
            except Exception:
                log.warning("px_middleware: csp_nonce() raised", exc_info=True)
                nonce = None
        return exchange.begin(
            headers,
            identity,
            nonce=nonce,
            nonce_required=self.csp_nonce is not None,
            set_user=scope.get(SET_USER_KEY),
        )

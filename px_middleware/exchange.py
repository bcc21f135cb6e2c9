"""One request/response pair as the middleware sees it, with no I/O.

Both adapters drive an ``Exchange`` the same way, so every decision is made once,
here, and the WSGI and ASGI sides cannot drift apart:

1. ``Exchange(...)`` with the request facts; ``skip_reason`` says if it is not a page.
2. ``accepts(status, headers)`` at response start: status, media type, encoding.
3. ``begin(headers, identity, ...)`` once the adapter resolved who is on the page.
4. ``feed(chunk)`` / ``close()`` for the body; ``headers()`` for the response head.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from typing import Any

from px_middleware.config import PXConfig
from px_middleware.identity import Identity, coerce
from px_middleware.injector import Injector
from px_middleware.policy import (
    HeaderGetter,
    public_cache_reason,
    request_skip_reason,
    response_skip_reason,
    rewrite_headers,
)
from px_middleware.snippet import render

log = logging.getLogger("px_middleware")

#: Environ/scope key set by the first middleware, so a nested one stays out.
SEEN_KEY = "px_middleware.seen"
#: Environ/scope key apps set (directly or via helpers) to skip PX for one response.
SKIP_KEY = "px_middleware.skip"
#: Environ/scope key holding attributes queued by ``set_user`` for this response.
SET_USER_KEY = "px_middleware.set_user"

_CSP_NONCE = re.compile(r"'nonce-([A-Za-z0-9+/_=-]+)'")


class Counters:
    """Thread-safe named counters, readable from code (``middleware.counters``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


def csp_nonce_from_headers(headers: list[tuple[str, str]]) -> tuple[bool, str | None]:
    """From ``Content-Security-Policy``: (inline scripts need a nonce, the nonce allowed).

    Reusing the page's own nonce is what the app itself does for its inline scripts;
    a policy that blocks inline scripts and offers no nonce means: do not inject.
    """
    for name, value in headers:
        if name.lower() != "content-security-policy":
            continue
        directives = {d.split()[0].lower(): d for d in value.split(";") if d.split()}
        source = (
            directives.get("script-src-elem")
            or directives.get("script-src")
            or directives.get("default-src")
        )
        if source is None:
            continue
        match = _CSP_NONCE.search(source)
        if match:
            return True, match.group(1)
        if "'unsafe-inline'" not in source:
            return True, None
    return False, None


class Exchange:
    """Per-request state for one page; the adapters own one per request, in a local."""

    def __init__(
        self,
        config: PXConfig,
        counters: Counters,
        *,
        method: str,
        path: str,
        header: HeaderGetter,
        path_allowed: Callable[[str], bool],
    ) -> None:
        self._config = config
        self._counters = counters
        self._identified = False
        self._snippet_length = 0
        self.injector: Injector | None = None
        self._response_headers: list[tuple[str, str]] = []
        if not config.inject:
            self.skip_reason: str | None = "injection disabled (inject=False)"
        else:
            self.skip_reason = request_skip_reason(method, path, header, path_allowed)

    def skip(self, reason: str) -> bool:
        """Record why this response is passed through untouched; always False."""
        self.skip_reason = reason
        self._counters.incr("skipped")
        log.debug("px_middleware: not injected: %s", reason)
        return False

    def accepts(self, status: int, headers: list[tuple[str, str]]) -> bool:
        reason = response_skip_reason(status, headers, self._config.inject_statuses)
        return True if reason is None else self.skip(reason)

    def begin(
        self,
        headers: list[tuple[str, str]],
        identity: Identity | None,
        *,
        nonce: str | None = None,
        nonce_required: bool = False,
        set_user: Mapping[str, Any] | None = None,
        reset: bool = False,
    ) -> bool:
        """Render the snippet for this page. False: pass the response through."""
        if identity is None and not self._config.inject_anonymous:
            return self.skip("anonymous visitor and inject_anonymous=False")
        if identity is not None:
            reason = public_cache_reason(headers)
            if reason:
                return self.skip(reason)
        csp_needs_nonce, csp_nonce = csp_nonce_from_headers(headers)
        nonce = nonce or csp_nonce
        if nonce is None and (nonce_required or csp_needs_nonce):
            return self.skip("a CSP nonce is required but none was found (fail closed)")
        try:
            snippet = render(
                self._config,
                identity,
                nonce=nonce,
                set_user=self._set_user_values(set_user),
                reset=reset,
                on_attribute_error=self._attribute_error,
            )
        except (TypeError, ValueError) as exc:
            return self.skip(f"snippet not rendered: {exc}")
        self.injector = Injector(snippet)
        self._snippet_length = len(snippet)
        self._identified = identity is not None
        self._response_headers = headers
        return True

    @property
    def has_content_length(self) -> bool:
        return any(name.lower() == "content-length" for name, _ in self._response_headers)

    def headers(self) -> list[tuple[str, str]]:
        """The response head to send. With ``Content-Length`` call it once decided."""
        assert self.injector is not None
        inserted = self.injector.inserted
        if inserted is None and self.has_content_length:
            raise RuntimeError("Content-Length is known only once the injector decided")
        delta = 0 if inserted is False else self._snippet_length
        return rewrite_headers(
            self._response_headers, identified=self._identified, length_delta=delta
        )

    def feed(self, chunk: bytes) -> bytes:
        assert self.injector is not None
        if self.injector.decided:
            return chunk
        out = self.injector.feed(chunk)
        if self.injector.decided:
            self._log_outcome()
        return out

    def close(self) -> bytes:
        assert self.injector is not None
        if self.injector.decided:
            return b""
        out = self.injector.close()
        self._log_outcome()
        return out

    # -- internals ------------------------------------------------------------------
    def _log_outcome(self) -> None:
        assert self.injector is not None
        if self.injector.inserted:
            self._counters.incr("injected")
            if self._identified:
                self._counters.incr("identified")
        else:
            self.skip(self.injector.reason)

    def _attribute_error(self, name: str, exc: Exception) -> None:
        self._counters.incr("attributes_dropped")
        log.warning("px_middleware: attribute %r dropped from identify: %s", name, exc)

    def _set_user_values(self, values: Mapping[str, Any] | None) -> dict[str, Any] | None:
        if not values:
            return None
        result = {}
        for name, raw in values.items():
            try:
                value = coerce(name, raw)
            except (TypeError, ValueError) as exc:
                self._attribute_error(name, exc)
                continue
            if value is not None:
                result[name] = value
        return result

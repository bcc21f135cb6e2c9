"""One request/response pair as the middleware sees it, with no I/O.

Both adapters drive an ``Exchange`` the same way, so every decision is made once,
here, and the WSGI and ASGI sides cannot drift apart:

1. ``Exchange(...)`` with the request facts; ``skip_reason`` says if it is not a page.
2. ``accepts(status, headers)`` at response start: status, media type, encoding.
3. ``begin(headers, identity, ...)`` once the adapter resolved who is on the page;
   it returns whether the body goes through the injector.
4. ``headers()`` for the response head to send (rewritten, with the session cookie).
5. ``feed(chunk)`` / ``close()`` for the body when injecting.
6. ``finish()`` when the response is over: the page view, with its duration.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

from px_middleware.config import PXConfig
from px_middleware.core import csp
from px_middleware.core.counters import Counters
from px_middleware.core.injector import Injector
from px_middleware.core.model import Identity, coerce
from px_middleware.core.policy import (
    public_cache_reason,
    request_skip_reason,
    response_skip_reason,
    rewrite_headers,
)
from px_middleware.core.request import HeaderGetter, RequestInfo
from px_middleware.core.snippet import render
from px_middleware.core.tracking import Tracker, Visit

__all__ = ["SEEN_KEY", "SET_USER_KEY", "SKIP_KEY", "Counters", "Exchange"]

log = logging.getLogger("px_middleware")

#: Environ/scope key set by the first middleware, so a nested one stays out.
SEEN_KEY = "px_middleware.seen"
#: Environ/scope key apps set (directly or via helpers) to skip PX for one response.
SKIP_KEY = "px_middleware.skip"
#: Environ/scope key holding attributes queued by ``set_user`` for this response.
SET_USER_KEY = "px_middleware.set_user"

class Exchange:
    """Per-request state for one response; adapters keep one per request, in a local."""

    def __init__(
        self,
        config: PXConfig,
        counters: Counters,
        *,
        method: str,
        path: str,
        header: HeaderGetter,
        path_allowed: Callable[[str], bool],
        query: str = "",
        scheme: str = "http",
        host: str = "",
        client: str | None = None,
        tracker: Tracker | None = None,
    ) -> None:
        self._config = config
        self._counters = counters
        self._request = RequestInfo(method, path, header, query, scheme, host, client)
        self._tracker = tracker
        self._identified = False
        self._snippet_length = 0
        self._status = 0
        self._visit: Visit | None = None
        self._cookie: str | None = None
        self.injector: Injector | None = None
        self._response_headers: list[tuple[str, str]] = []
        allowed = path_allowed(path)
        reason = request_skip_reason(method, path, header, lambda _: allowed)
        self.skip_reason: str | None = (
            "injection disabled (inject=False)" if not config.inject else reason
        )
        self.track_reason: str | None = "tracking off"
        if tracker is not None:
            self.track_reason = tracker.request_skip_reason(self._request, allowed, reason)
            self._started = tracker.clock()

    @property
    def active(self) -> bool:
        """False: nothing to do for this request, pass it through untouched."""
        return self.skip_reason is None or self.track_reason is None

    def skip(self, reason: str) -> bool:
        """Record why this response gets no snippet; always False."""
        self.skip_reason = reason
        self._counters.incr("skipped")
        log.debug("px_middleware: not injected: %s", reason)
        return False

    def accepts(self, status: int, headers: list[tuple[str, str]]) -> bool:
        """At response start: is there anything to do (inject or track)?"""
        self._status = status
        self._response_headers = headers
        if self.skip_reason is None:
            reason = response_skip_reason(status, headers, self._config.inject_statuses)
            if reason is not None:
                self.skip(reason)
        if self._tracker is not None and self.track_reason is None:
            self.track_reason = self._tracker.response_skip_reason(status, headers)
        return self.active

    def begin(
        self,
        headers: list[tuple[str, str]],
        identity: Identity | None,
        *,
        nonce: str | None = None,
        nonce_required: bool = False,
        set_user: Mapping[str, Any] | None = None,
    ) -> bool:
        """Track this response and render its snippet. True: inject into the body."""
        self._response_headers = headers
        self._identified = identity is not None
        state = None
        if self._tracker is not None and self.track_reason is None:
            self._visit = self._tracker.visit(self._request, identity, self._tracker.clock())
            state = self._visit.state
        reset = state is not None and state.reset_pending
        injecting = self.skip_reason is None and self._prepare(
            headers, identity, nonce, nonce_required, set_user, reset
        )
        if self._visit is not None and state is not None:
            if injecting and reset:
                state = dataclasses.replace(state, reset_pending=False)
            assert self._tracker is not None
            self._cookie = self._tracker.cookie_header(state, self._request.scheme == "https")
        return injecting

    @property
    def tracked(self) -> bool:
        """True once ``begin`` tracked the response: its head carries our cookie."""
        return self._cookie is not None

    @property
    def has_content_length(self) -> bool:
        return any(name.lower() == "content-length" for name, _ in self._response_headers)

    def headers(self) -> list[tuple[str, str]]:
        """The head to send. When injecting with ``Content-Length``, call it once decided."""
        headers = self._response_headers
        if self.injector is not None:
            inserted = self.injector.inserted
            if inserted is None and self.has_content_length:
                raise RuntimeError("Content-Length is known only once the injector decided")
            # Undecided here means a streamed head that goes out now: assume the snippet.
            headers = rewrite_headers(
                headers,
                identified=self._identified and inserted is not False,
                length_delta=0 if inserted is False else self._snippet_length,
            )
        if self._cookie is not None:
            headers = [*headers, ("Set-Cookie", self._cookie)]
        return headers

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

    def finish(self) -> None:
        """The response is over (or abandoned): record its page view."""
        if self._visit is None or self._tracker is None:
            return
        visit, self._visit = self._visit, None
        duration_ms = int((self._tracker.clock() - self._started) * 1000)
        self._tracker.page_view(
            self._request, visit, status=self._status, duration_ms=max(duration_ms, 0)
        )

    # -- internals ------------------------------------------------------------------
    def _prepare(
        self,
        headers: list[tuple[str, str]],
        identity: Identity | None,
        nonce: str | None,
        nonce_required: bool,
        set_user: Mapping[str, Any] | None,
        reset: bool,
    ) -> bool:
        if identity is None and not self._config.inject_anonymous:
            return self.skip("anonymous visitor and inject_anonymous=False")
        if identity is not None:
            reason = public_cache_reason(headers)
            if reason:
                return self.skip(reason)
        page = f"{self._request.scheme}://{self._request.host}" if self._request.host else None
        verdict = csp.check(headers, nonce, self._config.sdk_script_url, page)
        if not verdict.allowed:
            return self.skip(verdict.reason)
        nonce = verdict.nonce
        if nonce is None and nonce_required:
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
        return True

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

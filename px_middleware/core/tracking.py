"""Server-side tracking for one middleware: which requests count, and what they send.

``Tracker`` is shared by all requests of a middleware and holds no per-request
state. The request path calls ``visit`` at response start (session rules, session
events, attribute upserts, the cookie to set) and ``page_view`` at response end.
Sending is somebody else's job: ``capture`` only appends to a bounded buffer.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from px_middleware.config import PXConfig
from px_middleware.core.counters import Counters
from px_middleware.core.events import (
    client_ip,
    custom_event,
    digest,
    filter_referrer,
    page_url,
    upsert_bodies,
)
from px_middleware.core.model import Identity
from px_middleware.core.policy import HTML_TYPES, media_type, public_cache_reason
from px_middleware.core.request import RequestInfo
from px_middleware.core.session import VISITOR_MAX_AGE, SessionCookie, SessionState, advance

log = logging.getLogger("px_middleware")

Capture = Callable[[str, dict[str, Any]], bool]


@dataclasses.dataclass
class Visit:
    """What ``Tracker.visit`` decided for one response."""

    state: SessionState
    account_id: str | None


class Tracker:
    """Sessions in a signed cookie, page-view/session events and upserts."""

    def __init__(
        self,
        config: PXConfig,
        counters: Counters,
        capture: Capture | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        secret = config.session_signing_secret
        if secret is None:
            raise ValueError("server-side sessions need cookie_secret, hmac_secret or api_key")
        self.config = config
        self.counters = counters
        self.capture = capture if config.events_enabled else None
        self.clock = clock
        self.cookie = SessionCookie(secret)
        self._bots = re.compile(config.bot_pattern, re.IGNORECASE)

    # -- which requests count ----------------------------------------------------------
    def request_skip_reason(
        self, request: RequestInfo, path_allowed: bool, inject_reason: str | None
    ) -> str | None:
        """Why this request is not tracked (``None``: it is, if the response qualifies)."""
        header = request.header
        if self.config.honor_privacy_signals and (
            header("sec-gpc") == "1" or header("dnt") == "1"
        ):
            return "privacy signal (Sec-GPC/DNT) honoured"
        if self._bots.search(header("user-agent") or ""):
            return "bot user agent"
        if self.config.track_all_responses:
            return None if path_allowed else "path excluded by include/exclude_paths"
        # Pages only: the same requests that could get the snippet (GET, no XHR, ...).
        return inject_reason

    def response_skip_reason(self, status: int, headers: list[tuple[str, str]]) -> str | None:
        if public_cache_reason(headers):
            return "Cache-Control public: no per-visitor cookie on a shared response"
        if self.config.track_all_responses:
            return None
        content_type = next((v for n, v in headers if n.lower() == "content-type"), None)
        if media_type(content_type) not in HTML_TYPES:
            return "not an HTML page"
        return None

    # -- what a tracked response sends -----------------------------------------------
    def visit(self, request: RequestInfo, identity: Identity | None, now: float) -> Visit:
        """Advance the visitor's session; capture session events and upserts."""
        config = self.config
        previous = self.cookie.load(request.cookie(config.cookie_name))
        user_id = identity.user.id if identity is not None else None
        account_id = identity.account.id if identity is not None and identity.account else None
        move = advance(previous, now=now, user_id=user_id, timeout=config.session_timeout)
        state = move.state
        if move.ended is not None:
            ended = move.ended
            end_ms = int((ended.last_seen if move.end_reason == "timeout" else now) * 1000)
            self._emit(
                config.session_end_event,
                ended,
                end_ms,
                None,
                {"duration_ms": ended.duration_ms, "pages": ended.pages,
                 "reason": move.end_reason},
            )
        if move.started:
            self._emit(config.session_start_event, state, int(now * 1000), account_id, {})
        if identity is not None and self.capture is not None:
            state = self._sync_attributes(identity, state)
        return Visit(state=state, account_id=account_id)

    def cookie_header(self, state: SessionState, secure: bool) -> str:
        value = self.cookie.dump(state)
        attrs = f"Path=/; Max-Age={VISITOR_MAX_AGE}; HttpOnly; SameSite=Lax"
        return f"{self.config.cookie_name}={value}; {attrs}" + ("; Secure" if secure else "")

    def page_view(
        self, request: RequestInfo, visit: Visit, *, status: int, duration_ms: int
    ) -> None:
        config = self.config
        state = visit.state
        attributes: dict[str, Any] = {
            "path": request.path,
            "method": request.method,
            "status": status,
            "duration_ms": duration_ms,
        }
        agent = request.header("user-agent")
        if agent:
            attributes["userAgent"] = agent[:512]
        remote = None
        if config.send_remote_host:
            remote = client_ip(
                request.client, request.header("x-forwarded-for"), config.trusted_proxies
            )
        self._emit(
            config.page_view_event,
            state,
            int(self.clock() * 1000),
            visit.account_id,
            attributes,
            url=page_url(request.scheme, request.host, request.path, request.query,
                         config.redact_query_keys),
            referrer=filter_referrer(request.header("referer"), config.redact_query_keys),
            remote_host=remote,
        )

    # -- internals ------------------------------------------------------------------
    def _emit(
        self,
        name: str,
        state: SessionState,
        date_ms: int,
        account_id: str | None,
        attributes: dict[str, Any],
        **extra: Any,
    ) -> None:
        if self.capture is None:
            return
        if state.user_id is None and not self.config.track_anonymous:
            return
        event = custom_event(
            self.config, name, date_ms=date_ms, state=state, account_id=account_id,
            attributes=attributes, **extra,
        )
        if not self.capture("event", event):
            self.counters.incr("events_dropped")

    def _sync_attributes(self, identity: Identity, state: SessionState) -> SessionState:
        assert self.capture is not None
        user, account = upsert_bodies(self.config, identity, on_error=self._attribute_error)
        fingerprint = digest(user, account)
        if fingerprint == state.digest:
            return state
        accepted = self.capture("user", user)
        if account is not None:
            accepted = self.capture("account", account) and accepted
        if not accepted:  # not remembered: the next request tries again
            self.counters.incr("events_dropped")
            return state
        return dataclasses.replace(state, digest=fingerprint)

    def _attribute_error(self, name: str, exc: Exception) -> None:
        self.counters.incr("attributes_dropped")
        log.warning("px_middleware: attribute %r not upserted: %s", name, exc)


"""One request/response pair as the middleware sees it, with no I/O.

``Exchange`` makes every decision for one response: inject or not, count a page view
or not, which session move, which events and upserts, which cookie. Both drivers (and
any other, such as Django's) drive it the same way, so they cannot drift apart:

0. Optionally, at response start: ``pass_through_reason(config, content_type(headers),
   tracking)`` not None means pass through untouched, with no exchange at all (most
   responses: JSON, assets). The drivers build the exchange only then, with the
   request facts read when the request came in and ``started`` its time.
1. ``Exchange(config, counters, method=..., path=..., header=..., path_allowed=...,
   query=..., scheme=..., host=..., client=..., tracker=..., snippets=...,
   started=...)`` with the request facts; ``tracker`` (``delivery.tracker_for``),
   ``snippets`` (``Snippets()``) and ``counters`` are made once per middleware.
   ``active`` False: nothing to do, pass the response through untouched
   (``skip_reason``/``track_reason`` say why).
2. ``accepts(status, headers, head)`` at response start: False means pass through
   untouched.
3. ``begin(identity, nonce=..., nonce_required=..., set_user=...)`` once the driver
   knows who is on the page. True: the body goes through ``feed``/``close``; False:
   the decision is made, and the head is ``headers()``, the body the app's own.
4. ``feed(chunk)`` for each body chunk, ``close()`` at its end: the bytes to send now
   (``b""`` while undecided). Hold the head until ``decided`` is True; that takes at
   most the injector's limit (64 KiB) of body, or the end of the body.
5. ``headers()`` once ``decided``: the head to send. It is the app's own list, the
   same object, when ``changed`` is False.
6. ``finish()`` when the response is over (or abandoned): the page view, timed.

``leave(reason)`` before ``begin`` means: nothing for this response (the app said
skip, ``identify`` raised). ``skip(reason)`` after ``begin`` means the driver hands
the body on as is (``write()``, sendfile); after it, call nothing but ``headers()``
(when not sent yet) and ``finish()``.
Events go to the ``capture`` callable of the ``Tracker`` the driver wires in.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from px_middleware.config import PXConfig
from px_middleware.core import csp
from px_middleware.core.counters import Counters
from px_middleware.core.events import (
    client_ip,
    custom_event,
    filter_referrer,
    page_url,
    upsert_bodies,
)
from px_middleware.core.injector import Injector, KnownHeads
from px_middleware.core.model import Identity, PXValue, coerce
from px_middleware.core.notices import REQUEST_NOTICES
from px_middleware.core.policy import (
    HTML_TYPES,
    ResponseHead,
    media_type,
    navigation_reason,
    request_skip_reason,
    response_skip_reason,
    rewrite_headers,
)
from px_middleware.core.request import HeaderGetter, cookie_value
from px_middleware.core.session import SessionState, Transition, advance, reset_shown
from px_middleware.core.snippet import NONCE_SLOT, render, with_nonce, with_set_user
from px_middleware.core.tracking import Tracker

__all__ = [
    "SEEN_KEY", "SET_USER_KEY", "SKIP_KEY", "Counters", "Exchange", "Snippets",
    "pass_through_reason",
]

log = logging.getLogger("px_middleware")

#: Environ/scope key set by the first middleware, so a nested one stays out.
SEEN_KEY = "px_middleware.seen"
#: Environ/scope key apps set (directly or via helpers) to skip PX for one response.
SKIP_KEY = "px_middleware.skip"
#: Environ/scope key holding attributes queued by ``set_user`` for this response.
SET_USER_KEY = "px_middleware.set_user"

#: A hashable, type-exact key for coerced attributes (``1``, ``1.0`` and ``True`` are
#: equal in Python but three different JSON values).
_Key = tuple[Any, ...]


def _key(attributes: Mapping[str, PXValue] | None) -> _Key:
    if not attributes:
        return ()
    return tuple((name, value, type(value)) for name, value in attributes.items())


class Snippets:
    """Per middleware: what repeats between requests, worked out once.

    What an identity comes to (``Known``: its attributes, snippets and upsert digest;
    the same user's identify call, with its HMAC, does not change between requests),
    one per user and account id, replaced when the values given for them change
    (bounded, least recently used out first); the anonymous snippets; and the
    injector's decisions on the heads it has read.
    """

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._known: dict[tuple[str, str | None], Known] = {}
        #: The anonymous snippet, by (reset, nonce slot).
        self.anonymous: dict[tuple[bool, bool], bytes] = {}
        self.heads = KnownHeads()

    def known(self, identity: Identity) -> Known:
        """What ``identity`` comes to, worked out again only when its values changed."""
        user, account = identity.user, identity.account
        raw = (user.raw_values(), None if account is None else account.raw_values())
        ids = (user.id, None if account is None else account.id)
        cache = self._known
        known = cache.pop(ids, None)
        if known is None or not known.matches(raw):
            known = Known(identity, raw)
            if len(cache) >= self._size:
                # StopIteration, RuntimeError: emptied or resized by another thread.
                with contextlib.suppress(StopIteration, RuntimeError):
                    cache.pop(next(iter(cache)), None)
        cache[ids] = known  # (re)inserted last: the most recently used
        return known


class Known:
    """One identity's values, worked out once and shared between requests: read it,
    never change what it holds (only ``snippets`` and ``digest`` fill in, once each).

    The errors coercing it reported are kept, to be counted again on every request,
    as coercing would.
    """

    __slots__ = ("account", "digest", "errors", "key", "raw", "snippets", "typed", "user")

    def __init__(self, identity: Identity, raw: tuple[tuple[Any, ...] | None, ...]) -> None:
        errors: list[tuple[str, Exception]] = []

        def on_error(name: str, exc: Exception) -> None:
            errors.append((name, exc))

        self.user, self.account = identity.attributes(on_error)
        self.errors = tuple(errors)
        self.key: _Key = (_key(self.user), _key(self.account))
        #: What it was given (``raw_values`` of the user and the account).
        self.raw = raw
        #: Per subject, where ``raw`` holds a value that equal values of other types
        #: coerce differently from (``1``, ``1.0``, ``True``): position and type. A
        #: str (its subclasses encode alike) and None have no such equals, and the
        #: class in front compares as itself.
        self.typed = tuple(
            () if values is None else tuple(
                (index, type(value)) for index, value in enumerate(values)
                if index and value is not None and type(value) is not str
            )
            for values in raw
        )
        #: The rendered snippet, by (reset, nonce slot).
        self.snippets: dict[tuple[bool, bool], bytes] = {}
        #: The upsert fingerprint (``_digest(key)``), once an upsert needed it.
        self.digest = ""

    def matches(self, raw: tuple[tuple[Any, ...] | None, ...]) -> bool:
        """Does ``raw`` come to these attributes: equal values, of the same types?"""
        try:
            if raw != self.raw:
                return False
        except (TypeError, ValueError):  # a custom value that cannot say (an array)
            return False
        for values, typed in zip(raw, self.typed, strict=True):
            for index, kind in typed:
                if type(values[index]) is not kind:  # type: ignore[index]
                    return False
        return True


def _digest(key: _Key) -> str:
    """A short fingerprint of the attributes last upserted; stored in the cookie."""
    return hashlib.sha256(repr(key).encode("utf-8", "surrogatepass")).hexdigest()[:16]


def pass_through_reason(config: PXConfig, content_type: str | None,
                        tracking: bool) -> str | None:
    """Before an ``Exchange`` is built: why this response can neither get the snippet
    nor count as a page view, whatever the request (None: it may). Most responses
    (JSON, assets) cannot: a driver passes them through without an exchange, and no
    request check is made for them, nor any other header read.

    ``content_type``: the response's (``policy.content_type(headers)``).
    """
    media = media_type(content_type)
    if media in HTML_TYPES:
        return None if config.inject or tracking else "injection disabled (inject=False)"
    if tracking and config.track_all_responses:
        return None
    return f"media type {media or 'missing'!r} is not HTML"


class Exchange:
    """Per-request state for one response; drivers keep one per request, in a local."""

    # Per-response state, at its start. Class attributes: each is immutable and set on
    # the instance when it first changes, so a response pays only for what it uses.
    _status = 0
    _head: ResponseHead | None = None
    _identity: Identity | None = None
    #: What the identity comes to (its attributes, for the snippet and the upsert).
    _known: Known | None = None
    _snippet = b""
    #: The session move of a response that may be a page view, until it is settled.
    _move: Transition | None = None
    #: The session after a counted page view (set once the response is settled).
    _state: SessionState | None = None
    _cookie: str | None = None
    _started = 0.0
    #: Whether the request-side tracking checks still wait for ``accepts``: they are
    #: left until the response is known to qualify (most are not pages).
    _track_checks = False
    #: The injector the body goes through: ours with the snippet, or an empty one that
    #: only tells a document from a fragment (for the page-view decision).
    injector: Injector | None = None
    track_reason: str | None = "tracking off"

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
        snippets: Snippets | None = None,
        started: float | None = None,
    ) -> None:
        self._config = config
        self._counters = counters
        self._method = method
        self._path = path
        self._header = header
        self._query = query
        self._scheme = scheme
        self._host = host
        self._client = client
        self._tracker = tracker
        #: Shared by a middleware's exchanges; without, this exchange's own (no sharing).
        self._snippets = Snippets() if snippets is None else snippets
        self._headers: list[tuple[str, str]] = []
        allowed = self._path_allowed = path_allowed(path)
        reason = self._request_reason = request_skip_reason(method, path, header, allowed)
        self.skip_reason: str | None = (
            "injection disabled (inject=False)" if not config.inject else reason
        )
        if tracker is not None:
            # When the request came in (``started``), if the driver built this later.
            self._started = tracker.clock() if started is None else started
            if self.skip_reason is None:
                self.track_reason, self._track_checks = None, True
            else:  # needed now: it decides whether this exchange is active at all
                self.track_reason = self._request_track_reason(allowed, reason)

    # -- the public sequence ---------------------------------------------------------
    @property
    def active(self) -> bool:
        """False: nothing to do for this request, pass it through untouched."""
        return self.skip_reason is None or self.track_reason is None

    def accepts(self, status: int, headers: list[tuple[str, str]],
                head: ResponseHead | None = None) -> bool:
        """At response start: is there anything to do (inject or track)?

        ``head``: ``ResponseHead(headers)``, when the driver has read it already.
        """
        self._status = status
        self._headers = headers
        head = self._head = ResponseHead(headers) if head is None else head
        if self.skip_reason is None:
            reason = response_skip_reason(status, head, self._config.inject_statuses)
            if reason is not None:
                self.skip(reason)
        if self.track_reason is None:
            reason = self._response_track_reason(status, head)
            if reason is None and self._track_checks:
                reason = self._request_track_reason(self._path_allowed, self._request_reason)
            self.track_reason = reason
        return self.active

    def begin(
        self,
        identity: Identity | None,
        *,
        nonce: str | None = None,
        nonce_required: bool = False,
        set_user: Mapping[str, Any] | None = None,
    ) -> bool:
        """Decide this response. True: its body goes through ``feed``/``close``."""
        head = self._head
        assert head is not None, "accepts() first"
        self._identity = identity
        tracker = self._tracker
        if identity is not None:
            # Worked out once per identity value, for the snippet and the upsert; its bad
            # values are counted on every request all the same.
            known = self._known = self._snippets.known(identity)
            for name, exc in known.errors:
                self._attribute_error(name, exc)
        if self.track_reason is None:
            assert tracker is not None
            previous = tracker.cookie.load(
                cookie_value(self._header("cookie"), self._config.cookie_name), self._started
            )
            user_id = identity.user.id if identity is not None else None
            self._move = advance(
                previous,
                now=self._started,
                user_id=user_id,
                user_key=tracker.cookie.user_key(user_id),
                timeout=self._config.session_timeout,
            )
        if self.skip_reason is None:
            reset = self._move is not None and self._move.state.reset_pending
            snippet = self._prepare(identity, nonce, nonce_required, set_user, reset)
            if snippet is not None:
                self._snippet = snippet
                self.injector = Injector(snippet, known=self._snippets.heads)
                return True
        if self._move is not None:
            if head.html and head.refusal is None and self._method != "HEAD":
                # Document or fragment? The empty injector says, with the body unchanged.
                self.injector = Injector(b"", known=self._snippets.heads)
                return True
            self._count(inserted=False)
        return False

    @property
    def decided(self) -> bool:
        """True once ``headers()`` is known (the head may go out)."""
        injector = self.injector
        return injector is None or injector.decided

    def feed(self, chunk: bytes) -> bytes:
        injector = self.injector
        assert injector is not None
        if injector.decided:
            return chunk
        out = injector.feed(chunk)
        if injector.decided:
            self._settle()
        return out

    def close(self) -> bytes:
        injector = self.injector
        assert injector is not None
        if injector.decided:
            return b""
        out = injector.close()
        self._settle()
        return out

    @property
    def changed(self) -> bool:
        """Whether ``headers()`` differs from the app's head (snippet in, or a cookie)."""
        return self._cookie is not None or self._inserted

    def headers(self) -> list[tuple[str, str]]:
        """The head to send, once ``decided``."""
        if not self.decided:
            raise RuntimeError("the head is known only once the injector decided")
        headers = self._headers
        if self._inserted:
            headers = rewrite_headers(
                headers, identified=self._identity is not None, length_delta=len(self._snippet)
            )
        if self._cookie is not None:
            headers = [*headers, ("Set-Cookie", self._cookie)]
        return headers

    def skip(self, reason: str) -> None:
        """No snippet for this response, for ``reason`` (counted, logged at debug).

        A driver calls it when it must hand the body on as is (``write()``, sendfile):
        the response is settled then, without the injector's verdict.
        """
        if self.skip_reason is None:  # counted once per response
            self._counters.incr("skipped")
            log.debug("px_middleware: not injected: %s", reason)
        self.skip_reason = reason
        injector = self.injector
        if injector is not None and not injector.decided:
            self.injector = None
            if self._move is not None:  # not classified: count it, as a page we cannot read
                self._count(inserted=False)

    def leave(self, reason: str) -> None:
        """Nothing for this response, for ``reason``: no snippet and no page view."""
        self.skip(reason)
        self.track_reason = reason
        self._move = None

    def finish(self) -> None:
        """The response is over (or abandoned): record its page view."""
        state, self._state = self._state, None
        tracker = self._tracker
        if state is None or tracker is None or tracker.capture is None:
            return
        config = self._config
        header = self._header
        now = tracker.clock()
        attributes: dict[str, Any] = {
            "path": self._path,
            "method": self._method,
            "status": self._status,
            "duration_ms": max(int((now - self._started) * 1000), 0),
        }
        agent = header("user-agent")
        if agent:
            attributes["userAgent"] = agent[:512]
        remote = None
        if config.send_remote_host:
            remote = client_ip(self._client, header("x-forwarded-for"), config.trusted_proxies)
        self._emit(
            config.page_view_event,
            state,
            # The request's start, not now: the browser may have asked another worker
            # for its next page before this one got here. Delivery orders by this date.
            int(self._started * 1000),
            attributes,
            url=page_url(self._scheme, self._host, self._path, self._query,
                         config.redact_query_keys),
            referrer=filter_referrer(header("referer"), config.redact_query_keys),
            remote_host=remote,
        )

    # -- which requests and responses are page views -----------------------------------
    def _request_track_reason(self, path_allowed: bool, inject_reason: str | None) -> str | None:
        assert self._tracker is not None
        header = self._header
        config = self._config
        if config.honor_privacy_signals and (header("sec-gpc") == "1" or header("dnt") == "1"):
            return "privacy signal (Sec-GPC/DNT) honoured"
        if self._tracker.is_bot(header("user-agent") or ""):
            return "bot user agent"
        if config.track_all_responses:
            return None if path_allowed else "path excluded by include/exclude_paths"
        # Pages only: the same requests that could get the snippet (GET, no XHR, ...),
        # and only navigations (not the page's own fetch()).
        return inject_reason or navigation_reason(header)

    def _response_track_reason(self, status: int, head: ResponseHead) -> str | None:
        if head.public is not None:
            return "Cache-Control public: no per-visitor cookie on a shared response"
        if status not in self._config.page_view_statuses:
            return f"status {status} is not a page view"
        if not self._config.track_all_responses and not head.html:
            return "not an HTML page"
        return None

    # -- settling a response -----------------------------------------------------------
    @property
    def _inserted(self) -> bool:
        injector = self.injector
        return bool(self._snippet) and injector is not None and injector.inserted is True

    def _settle(self) -> None:
        """The injector decided: count the outcome and, for a page, the page view."""
        injector = self.injector
        assert injector is not None
        if self._snippet:
            if injector.inserted:
                self._counters.incr("injected")
                if self._identity is not None:
                    self._counters.incr("identified")
            else:
                self.skip(injector.reason)
        if self._move is not None:
            if _fragment(injector):
                self._move = None
                self.track_reason = "an HTML fragment, not a page"
            else:
                self._count(inserted=self._inserted)

    def _count(self, *, inserted: bool) -> None:
        """A page view: session events, the upsert when attributes changed, the cookie."""
        move, self._move = self._move, None
        tracker = self._tracker
        assert move is not None and tracker is not None
        state = move.state
        config = self._config
        if tracker.capture is not None:
            if move.ended is not None:
                ended = move.ended
                if ended.user_id is None and ended.user_key is not None:
                    # Logout or a switch: the cookie names the old user by digest only.
                    self._counters.incr("session_end_unattributed")
                else:
                    end = ended.last_seen if move.end_reason == "timeout" else self._started
                    self._emit(
                        config.session_end_event,
                        ended,
                        int(end * 1000),
                        {"duration_ms": ended.duration_ms, "pages": ended.pages,
                         "reason": move.end_reason},
                        account=False,
                    )
            if move.started:
                self._emit(config.session_start_event, state, int(self._started * 1000), {})
            if self._identity is not None:
                state = self._upsert(state)
        if inserted:
            state = reset_shown(state)
        self._state = state
        secure = "; Secure" if self._scheme == "https" else ""
        self._cookie = (
            f"{config.cookie_name}={tracker.cookie.dump(state)}; "
            f"{tracker.cookie_attributes}{secure}"
        )

    def _upsert(self, state: SessionState) -> SessionState:
        tracker = self._tracker
        identity = self._identity
        assert tracker is not None and tracker.capture is not None and identity is not None
        known = self._known
        assert known is not None
        fingerprint = known.digest or _digest(known.key)
        known.digest = fingerprint
        if fingerprint == state.digest:
            return state
        # Coerced once (its errors counted in ``begin``); only the REST model's own
        # refusals (read-only, enum, integer) are new here.
        user_body, account_body = upsert_bodies(
            self._config, identity, on_error=self._upsert_error,
            coerced=(known.user, known.account),
        )
        accepted = tracker.capture("user", user_body)
        if account_body is not None:
            accepted = tracker.capture("account", account_body) and accepted
        if not accepted:  # not remembered: the next request tries again
            self._counters.incr("events_dropped")
            return state
        return state._replace(digest=fingerprint)

    def _emit(
        self,
        name: str,
        state: SessionState,
        date_ms: int,
        attributes: dict[str, Any],
        *,
        account: bool = True,
        **extra: Any,
    ) -> None:
        tracker = self._tracker
        assert tracker is not None and tracker.capture is not None
        if state.user_id is None and not self._config.track_anonymous:
            return
        identity = self._identity
        account_id = None
        if account and identity is not None and identity.account is not None:
            account_id = identity.account.id
        event = custom_event(
            self._config, name, date_ms=date_ms, state=state, account_id=account_id,
            attributes=attributes, **extra,
        )
        if not tracker.capture("event", event):
            self._counters.incr("events_dropped")

    # -- the snippet ---------------------------------------------------------------------
    def _prepare(
        self,
        identity: Identity | None,
        nonce: str | None,
        nonce_required: bool,
        set_user: Mapping[str, Any] | None,
        reset: bool,
    ) -> bytes | None:
        """The snippet for this page, or None (``skip_reason`` says why)."""
        if identity is None and not self._config.inject_anonymous:
            self.skip("anonymous visitor and inject_anonymous=False")
            return None
        head = self._head
        assert head is not None
        if identity is not None and head.public is not None:
            self.skip(head.public)
            return None
        if head.csp:  # no policy header: nothing to block, and no nonce of its own
            page = f"{self._scheme}://{self._host}" if self._host else None
            verdict = csp.check(self._headers, nonce, self._config.sdk_script_url, page)
            if not verdict.allowed:
                self.skip(verdict.reason)
                return None
            nonce = verdict.nonce
        if nonce is None and nonce_required:
            self.skip("a CSP nonce is required but none was found (fail closed)")
            return None
        values = self._set_user_values(set_user) if identity is not None else None

        known = self._known

        def build(nonce: str | None) -> bytes:
            coerced = None if known is None else (known.user, known.account)
            return render(self._config, identity, nonce=nonce, reset=reset, coerced=coerced)

        try:
            # Cached per identity; a nonce is per request, so it has a slot, and the
            # set_user values (often a time) are added after.
            cache = self._snippets.anonymous if known is None else known.snippets
            slot = (reset, nonce is not None)
            snippet = cache.get(slot)
            if snippet is None:
                snippet = cache[slot] = build(None if nonce is None else NONCE_SLOT)
            if nonce is not None:
                snippet = with_nonce(snippet, nonce)
            return with_set_user(snippet, values) if values else snippet
        except (TypeError, ValueError) as exc:
            self.skip(f"snippet not rendered: {exc}")
            return None

    def _upsert_error(self, name: str, exc: Exception) -> None:
        self._counters.incr("attributes_dropped")
        REQUEST_NOTICES.note(f"attribute {name!r} not upserted", 1, str(exc))

    def _attribute_error(self, name: str, exc: Exception) -> None:
        self._counters.incr("attributes_dropped")
        REQUEST_NOTICES.note(f"attribute {name!r} dropped", 1, str(exc))

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


def _fragment(injector: Injector) -> bool:
    """The injector found no document: an HTML fragment (``fetch()``, htmx, ...)."""
    return injector.inserted is False and not injector.document

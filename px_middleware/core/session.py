"""Server-side PX sessions: one signed cookie, a pure state machine, no I/O.

The whole state lives in the visitor's cookie (signed with itsdangerous), so any
number of processes and machines share nothing. ``advance`` applies PX's rules:

* a session ends after ``timeout`` seconds without a tracked request;
* a session ends when the identified user changes (login, logout, switch);
* after a logout, the next page must run ``aptrinsic('reset')`` once.

A cookie that is tampered with, expired or garbled is treated as absent: a new
visitor. That is logged at debug level and never raises.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import uuid

from itsdangerous import BadData, TimestampSigner

log = logging.getLogger("px_middleware")

#: How long the visitor id is remembered, like the SDK's ``apt.uid`` cookie.
VISITOR_MAX_AGE = 365 * 24 * 3600


@dataclasses.dataclass(frozen=True)
class SessionState:
    visitor_id: str
    session_id: str
    started: float  # epoch seconds
    last_seen: float
    pages: int
    user_id: str | None
    #: Digest of the user/account attributes last upserted through the REST API.
    digest: str | None = None
    #: Set when a user logged out or was replaced; cleared once a page carried
    #: ``aptrinsic('reset')``.
    reset_pending: bool = False

    @property
    def duration_ms(self) -> int:
        return int((self.last_seen - self.started) * 1000)


@dataclasses.dataclass(frozen=True)
class Transition:
    """What one tracked request did to the session."""

    state: SessionState
    #: The session that ended because of this request, if any (for ``session_end``).
    ended: SessionState | None
    #: Whether ``state`` is a session that starts with this request.
    started: bool
    #: How the ended session ended: ``"timeout"`` or ``"user_change"``.
    end_reason: str | None = None


def new_id() -> str:
    return str(uuid.uuid4())


def advance(
    previous: SessionState | None, *, now: float, user_id: str | None, timeout: float
) -> Transition:
    """Apply one tracked request at time ``now`` by ``user_id`` (None: anonymous)."""
    if previous is None:
        return Transition(_fresh(new_id(), now, user_id), ended=None, started=True)
    end_reason = None
    if now - previous.last_seen > timeout:
        end_reason = "timeout"
    elif user_id != previous.user_id:
        end_reason = "user_change"
    if end_reason is None:
        state = dataclasses.replace(
            previous, last_seen=max(now, previous.last_seen), pages=previous.pages + 1
        )
        return Transition(state, ended=None, started=False)
    fresh = _fresh(previous.visitor_id, now, user_id)
    # Logout or a switch to someone else: the browser SDK must forget the old user.
    if previous.reset_pending or (previous.user_id not in (None, user_id)):
        fresh = dataclasses.replace(fresh, reset_pending=True)
    if user_id is not None and user_id == previous.user_id:
        fresh = dataclasses.replace(fresh, digest=previous.digest)  # same user, timed out
    return Transition(fresh, ended=previous, started=True, end_reason=end_reason)


def _fresh(visitor_id: str, now: float, user_id: str | None) -> SessionState:
    return SessionState(
        visitor_id=visitor_id,
        session_id=new_id(),
        started=now,
        last_seen=now,
        pages=1,
        user_id=user_id,
    )


class SessionCookie:
    """Reads and writes ``SessionState`` as a compact, signed cookie value."""

    # A TimestampSigner over base64 JSON: what URLSafeTimedSerializer does, minus its
    # zlib round trip, which costs more than the rest of the cookie on every request.
    def __init__(self, secret: str, salt: str = "px_middleware.session") -> None:
        self._signer = TimestampSigner(secret, salt=salt)

    def load(self, value: str | None) -> SessionState | None:
        if not value:
            return None
        try:
            payload = self._signer.unsign(value, max_age=VISITOR_MAX_AGE)
            data = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
            visitor, session, started, last, pages, user, digest, reset = data
            state = SessionState(
                visitor_id=_text(visitor),
                session_id=_text(session),
                started=float(started),
                last_seen=float(last),
                pages=int(pages),
                user_id=None if user is None else _text(user),
                digest=None if digest is None else _text(digest),
                reset_pending=bool(reset),
            )
        except (BadData, ValueError, TypeError, UnicodeDecodeError) as exc:
            log.debug("px_middleware: session cookie ignored (%s); new visitor", exc)
            return None
        return state

    def dump(self, state: SessionState) -> str:
        data = [
            state.visitor_id,
            state.session_id,
            round(state.started, 3),
            round(state.last_seen, 3),
            state.pages,
            state.user_id,
            state.digest,
            int(state.reset_pending),
        ]
        payload = json.dumps(data, separators=(",", ":")).encode("utf-8")
        encoded = base64.urlsafe_b64encode(payload).rstrip(b"=")
        return self._signer.sign(encoded).decode("ascii")


def _text(value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 512:
        raise ValueError("malformed session cookie field")
    return value

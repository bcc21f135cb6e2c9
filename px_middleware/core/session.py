"""Server-side PX sessions: one signed cookie, a pure state machine, no I/O.

The whole state lives in the visitor's cookie (signed: a keyed BLAKE2b MAC), so any
number of processes and machines share nothing. ``advance`` applies PX's rules:

* a session ends after ``timeout`` seconds without a counted page view;
* a session ends when the identified user changes (login, logout, switch);
* after a logout or a switch, the next page must run ``aptrinsic('reset')`` once:
  ``advance`` sets ``reset_pending`` and ``reset_shown`` clears it.

The cookie holds a fixed-size keyed digest of the user id (``user_key``), never the
id itself, so it stays small whatever the id is; the id of the current request comes
from its identity (``SessionState.user_id``, not stored).

A cookie that is tampered with, expired, garbled or in an older layout is treated as
absent: a new visitor. That is logged at debug level and never raises.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import uuid
from typing import NamedTuple

log = logging.getLogger("px_middleware")

#: How long the visitor id is remembered, like the SDK's ``apt.uid`` cookie.
VISITOR_MAX_AGE = 365 * 24 * 3600
#: Longest id field a cookie may carry (ours are 36-character UUIDs, digests 32).
_MAX_FIELD = 64
#: First field of the cookie; an older layout is read as a new visitor.
_LAYOUT = "3"
#: What an id field may hold: our UUIDs and hex digests (and never the separator).
_ID = re.compile(r"[0-9A-Za-z-]+")
#: How many issued cookie values a process remembers (a few hundred KB at most).
_ISSUED = 4096


class SessionState(NamedTuple):
    """One visitor's session (a tuple: built on every tracked request, so it is cheap)."""

    visitor_id: str
    session_id: str
    started: float  # epoch seconds
    last_seen: float
    pages: int
    #: Keyed digest of the identified user's id (``None``: anonymous); in the cookie.
    user_key: str | None
    #: Digest of the user/account attributes last upserted through the REST API.
    digest: str | None = None
    #: Set when a user logged out or was replaced; cleared once a page carried
    #: ``aptrinsic('reset')`` (``reset_shown``).
    reset_pending: bool = False
    #: The user's id when this request knows it (from its identity); never stored.
    user_id: str | None = None

    @property
    def duration_ms(self) -> int:
        return int((self.last_seen - self.started) * 1000)


class Transition(NamedTuple):
    """What one counted page view did to the session."""

    state: SessionState
    #: The session that ended because of this request, if any (for ``session_end``).
    #: Its ``user_id`` is set when this request can name that user (see ``advance``).
    ended: SessionState | None
    #: Whether ``state`` is a session that starts with this request.
    started: bool
    #: How the ended session ended: ``"timeout"`` or ``"user_change"``.
    end_reason: str | None = None


def new_id() -> str:
    return str(uuid.uuid4())


def advance(
    previous: SessionState | None,
    *,
    now: float,
    user_id: str | None,
    user_key: str | None,
    timeout: float,
) -> Transition:
    """Apply one page view at time ``now`` by ``user_id`` (None: anonymous).

    ``user_key`` is ``SessionCookie.user_key(user_id)``. An ended session's user is
    named only when it is the same user as now (a timeout); after a logout or a switch
    the cookie holds only a digest, so ``ended.user_id`` stays ``None`` while
    ``ended.user_key`` is set: such a session cannot be attributed.
    """
    if previous is None:
        return Transition(_fresh(new_id(), now, user_id, user_key), ended=None, started=True)
    end_reason = None
    if now - previous.last_seen > timeout:
        end_reason = "timeout"
    elif user_key != previous.user_key:
        end_reason = "user_change"
    if end_reason is None:
        state = SessionState(
            previous.visitor_id, previous.session_id, previous.started,
            max(now, previous.last_seen), previous.pages + 1, previous.user_key,
            previous.digest, previous.reset_pending, user_id,
        )
        return Transition(state, ended=None, started=False)
    fresh = _fresh(previous.visitor_id, now, user_id, user_key)
    same_user = user_key is not None and user_key == previous.user_key
    ended = previous._replace(user_id=user_id) if same_user else previous
    # Logout or a switch to someone else: the browser SDK must forget the old user.
    if previous.reset_pending or (previous.user_key not in (None, user_key)):
        fresh = fresh._replace(reset_pending=True)
    if same_user:
        fresh = fresh._replace(digest=previous.digest)  # same user, timed out
    return Transition(fresh, ended=ended, started=True, end_reason=end_reason)


def reset_shown(state: SessionState) -> SessionState:
    """The page carried ``aptrinsic('reset')``: the pending reset is done."""
    return state._replace(reset_pending=False) if state.reset_pending else state


def _fresh(visitor_id: str, now: float, user_id: str | None, user_key: str | None
           ) -> SessionState:
    return SessionState(
        visitor_id=visitor_id,
        session_id=new_id(),
        started=now,
        last_seen=now,
        pages=1,
        user_key=user_key,
        user_id=user_id,
    )


class SessionCookie:
    """Reads and writes ``SessionState`` as a compact, signed cookie value.

    ``3.visitor.session.started_ms.last_ms.pages.user_key.digest.reset.MAC``, the MAC a
    128-bit keyed BLAKE2b in hex: every field is cookie-safe ASCII, so there is no JSON
    or base64 to pay for, and one C-level MAC per write (itsdangerous' HMAC signer
    costs several times more, and every page view reads and writes the cookie). A
    value this process issued is remembered (bounded), so reading it back, the next
    page of the same visitor, needs no MAC check.
    Expiry comes from ``last_seen``.
    """

    def __init__(self, secret: str, salt: str = "px_middleware.session") -> None:
        self._sign_key = hashlib.sha256(salt.encode() + b":" + secret.encode()).digest()
        self._key = hashlib.sha256(b"px_middleware.user_key:" + secret.encode()).digest()
        self._last: tuple[str | None, str | None] = (None, None)
        # Two generations, the newer filled until it is half the bound, then the older
        # dropped whole: evicting one by one from the front of a dict makes each
        # eviction scan the holes the previous ones left (several us per page view).
        self._issued: dict[str, SessionState] = {}
        self._older: dict[str, SessionState] = {}

    def user_key(self, user_id: str | None) -> str | None:
        """A fixed-size digest of ``user_id``, keyed so it cannot be looked up."""
        if user_id is None:
            return None
        last_id, last_key = self._last  # one tuple read: safe from any thread
        if user_id == last_id:
            return last_key
        data = user_id.encode("utf-8", "surrogatepass")
        key = hashlib.blake2b(data, key=self._key, digest_size=16).hexdigest()
        self._last = (user_id, key)
        return key

    def _mac(self, payload: bytes) -> bytes:
        # Keyed BLAKE2b is a MAC by design (RFC 7693), a third of HMAC-SHA256's cost.
        mac = hashlib.blake2b(payload, key=self._sign_key, digest_size=16)
        return mac.hexdigest().encode("ascii")

    def load(self, value: str | None, now: float | None = None) -> SessionState | None:
        """The state in ``value``, or None; ``now`` (epoch seconds) checks its age."""
        if not value:
            return None
        issued = self._issued.get(value) or self._older.get(value)
        if issued is not None and (now is None or now - issued.last_seen <= VISITOR_MAX_AGE):
            return issued
        try:
            payload, _, mac = value.encode("ascii").rpartition(b".")
            if not hmac.compare_digest(self._mac(payload), mac):
                raise ValueError("bad signature")
            # An older layout (JSON in base64) has one dot: it fails to unpack here.
            version, visitor, session, started, last, pages, user_key, digest, reset = (
                payload.decode("ascii").split(".")
            )
            if version != _LAYOUT:
                raise ValueError(f"cookie layout {version!r}")
            state = SessionState(
                visitor_id=_text(visitor),
                session_id=_text(session),
                started=_number(started) / 1000,
                last_seen=_number(last) / 1000,
                pages=_number(pages),
                user_key=_text(user_key) if user_key else None,
                digest=_text(digest) if digest else None,
                reset_pending=reset == "1",
            )
            if now is not None and now - state.last_seen > VISITOR_MAX_AGE:
                raise ValueError("expired")
        except (ValueError, TypeError, UnicodeError) as exc:
            log.debug("px_middleware: session cookie ignored (%s); new visitor", exc)
            return None
        return state

    def dump(self, state: SessionState) -> str:
        payload = (
            f"{_LAYOUT}.{state.visitor_id}.{state.session_id}.{int(state.started * 1000)}."
            f"{int(state.last_seen * 1000)}.{state.pages}.{state.user_key or ''}."
            f"{state.digest or ''}.{int(state.reset_pending)}"
        ).encode("ascii")
        value = (payload + b"." + self._mac(payload)).decode("ascii")
        issued = self._issued
        if len(issued) >= _ISSUED // 2:
            self._older, self._issued = issued, {}  # one swap: safe from any thread
        # As read from the cookie: every field but the last (user_id), which is never
        # stored (a positional copy: NamedTuple._replace costs more than the MAC).
        self._issued[value] = SessionState(*state[:-1])
        return value


def _text(value: str) -> str:
    if not value or len(value) > _MAX_FIELD or not _ID.fullmatch(value):
        raise ValueError("malformed session cookie field")
    return value


def _number(value: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 16:
        raise ValueError("malformed session cookie number")
    return int(value)

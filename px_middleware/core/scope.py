"""Where ASGI apps keep who is on the page and the page's CSP nonce.

Pure reads of the ASGI ``scope`` dict, shared by the ASGI driver (its default
``identify``) and the Starlette integration, which documents them for users:

1. ``scope["state"]["px_identity"]``, set by app code (``set_identity``, a FastAPI
   dependency); an explicit ``None`` means anonymous and stops the search;
2. an authenticated ``scope["user"]`` (Starlette's ``AuthenticationMiddleware``);
3. ``scope["session"]["user_id"]`` (Starlette's ``SessionMiddleware``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from px_middleware.core.model import Identity, User

log = logging.getLogger("px_middleware")

#: ``request.state`` attribute (and user-object attribute) holding the PX identity.
STATE_IDENTITY = "px_identity"
#: ``request.state`` attribute holding the page's CSP nonce.
STATE_NONCE = "csp_nonce"


def _state(scope: Mapping[str, Any]) -> Mapping[str, Any]:
    # Read scope["state"] without creating it (Request.state would setdefault it).
    state = scope.get("state")
    return state if isinstance(state, dict) else {}


def identity_from_scope(scope: Mapping[str, Any]) -> Identity | User | None:
    """The visitor's PX identity, from the first of the places above that knows it.

    The app's own statement comes first: it is the only one that can carry an account.
    """
    state = _state(scope)
    if STATE_IDENTITY in state:
        result: Identity | User | None = state[STATE_IDENTITY]
        return result
    user = scope.get("user")
    if user is not None and getattr(user, "is_authenticated", False):
        return _from_auth_user(user)
    session = scope.get("session")
    if isinstance(session, dict):
        # A plain .get: reading the session here must not mark it accessed.
        user_id = session.get("user_id")
        if user_id is not None and user_id != "":
            return User(id=user_id)
    return None


def _from_auth_user(user: Any) -> Identity | User | None:
    """An authenticated user object: its ``px_identity`` when it has one, else a
    ``User`` whose id is ``user.identity`` (``display_name`` as a fallback)."""
    hook = getattr(user, STATE_IDENTITY, None)
    if hook is not None:
        result: Identity | User | None = hook() if callable(hook) else hook
        return result
    try:
        user_id = user.identity
    except NotImplementedError:  # starlette's BaseUser leaves identity abstract
        user_id = None
    if user_id is None or user_id == "":
        user_id = getattr(user, "display_name", None)
    if user_id is None or user_id == "":
        log.debug("px_middleware: authenticated user has no identity or display_name")
        return None
    # Raw values, as in the Flask extension: the core drops (and counts) bad ones.
    return User(
        id=user_id,
        email=getattr(user, "email", None) or None,
        first_name=getattr(user, "first_name", None) or None,
        last_name=getattr(user, "last_name", None) or None,
    )


def nonce_from_scope(scope: Mapping[str, Any]) -> str | None:
    """The CSP nonce the app put in ``request.state.csp_nonce``, if any."""
    nonce = _state(scope).get(STATE_NONCE)
    return nonce if isinstance(nonce, str) else None

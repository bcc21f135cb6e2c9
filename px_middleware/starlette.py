"""Starlette and FastAPI conveniences: who is on the page, and per-request switches.

    app.add_middleware(PXAsgiMiddleware, config=PXConfig.from_env())

Nothing else is needed when the app already knows its user in one of the places
``default_identify`` looks (it is what ``PXAsgiMiddleware`` uses without
``identify=``). These helpers only resolve the current user and set scope keys the
middleware reads; every tracking decision stays in the core.

For FastAPI, state the identity from a dependency once for the whole app::

    def px_identity(user: DBUser = Depends(current_user)) -> Identity | None: ...

    app = FastAPI(dependencies=[Depends(px_identity_dependency(px_identity))])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection, Request
from starlette.types import Scope

from px_middleware.core.exchange import SET_USER_KEY, SKIP_KEY
from px_middleware.core.model import Identity, User
from px_middleware.core.scope import (
    identity_from_scope,
    nonce_from_scope,
)

if TYPE_CHECKING:
    from px_middleware.asgi import PXAsgiMiddleware

__all__ = [
    "default_identify",
    "exempt",
    "find_middleware",
    "px_identity_dependency",
    "scope_nonce",
    "set_identity",
    "set_user",
]



def default_identify(request: HTTPConnection) -> Identity | User | None:
    """The visitor's PX identity, from the first of these that knows it:

    1. ``request.state.px_identity`` set by app code (``set_identity``, a FastAPI
       dependency); an explicit ``None`` means anonymous and stops the search;
    2. an authenticated ``scope["user"]`` (``AuthenticationMiddleware``): its
       ``px_identity`` attribute or method when it has one, else a ``User`` whose id
       is ``user.identity`` (``display_name`` as a fallback), with ``email``,
       ``first_name`` and ``last_name`` when the user object has them;
    3. ``scope["session"]["user_id"]`` (``SessionMiddleware``).

    It is what ``PXAsgiMiddleware`` does without ``identify=``; call it from your own
    ``identify`` to fall back to it.
    """
    return identity_from_scope(request.scope)


def set_identity(request: HTTPConnection, identity: Identity | User | None) -> None:
    """State who is on this page; wins over ``scope["user"]`` and the session."""
    request.state.px_identity = identity


def set_user(request: HTTPConnection, **attributes: Any) -> None:
    """Queue ``aptrinsic("set", "user", {...})`` for this response (identified pages).

    Values are typed like identify attributes; one PX cannot store is dropped and
    counted, never an error for the page. Later calls add to earlier ones.
    """
    queued = request.scope.setdefault(SET_USER_KEY, {})
    queued.update(attributes)


def exempt(request: HTTPConnection) -> None:
    """Leave this response alone. Also usable as ``Depends(exempt)`` on a FastAPI route."""
    request.scope[SKIP_KEY] = True


def scope_nonce(scope: Scope) -> str | None:
    """The CSP nonce the app put in ``request.state.csp_nonce``, if any."""
    return nonce_from_scope(scope)


def px_identity_dependency(
    resolve: Callable[..., Any],
) -> Callable[..., Any]:
    """A FastAPI dependency that stores what ``resolve`` returns as the PX identity.

    ``resolve`` is itself a dependency (sync or async, with its own ``Depends``
    parameters) returning an ``Identity``, a ``User`` or ``None``. The wrapper
    returns the same value, so a route may also take it as a parameter.
    """
    from fastapi import Depends  # FastAPI is optional; only this helper needs it

    async def px_identity(request: Request, identity: Any = Depends(resolve)) -> Any:  # noqa: B008
        set_identity(request, identity)
        return identity

    px_identity.__name__ = f"px_identity_{getattr(resolve, '__name__', 'dependency')}"
    return px_identity


def find_middleware(app: Any) -> PXAsgiMiddleware | None:
    """The ``PXAsgiMiddleware`` inside ``app``, e.g. to read ``.counters``.

    Starlette builds its middleware stack on the first request; before that, and
    for an app without ours, this is ``None``.
    """
    from px_middleware.asgi import PXAsgiMiddleware

    node = getattr(app, "middleware_stack", None) or app
    seen = 0
    while node is not None and seen < 100:  # a chain of wrappers, each with .app
        if isinstance(node, PXAsgiMiddleware):
            return node
        node, seen = getattr(node, "app", None), seen + 1
    return None

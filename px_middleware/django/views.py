"""Per-view and per-request helpers: ``exempt``, ``set_user``, ``skip``.

    @px_middleware.django.exempt              # this view's pages never get the snippet
    def export(request): ...

    def report(request):
        px_middleware.django.set_user(request, plan="pro")   # aptrinsic('set', 'user', ...)
        px_middleware.django.exempt(request)                 # or: this response only

    @px_middleware.django.set_user(feature="reports")       # the same, for every page
    def reports(request): ...                                # of a view (sync or async)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, overload

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest

from px_middleware.core.exchange import SET_USER_KEY, SKIP_KEY

__all__ = ["EXEMPT_ATTRIBUTE", "exempt", "set_user", "skip"]

F = TypeVar("F", bound=Callable[..., Any])
#: Set on a view function by ``@exempt``; the middleware reads it in ``process_view``.
EXEMPT_ATTRIBUTE = "px_exempt"


def skip(request: HttpRequest) -> None:
    """No PX snippet on this request's response."""
    request.META[SKIP_KEY] = True


def exempt(target: Any) -> Any:
    """``@exempt`` on a view, or ``exempt(request)`` for this response only."""
    if isinstance(target, HttpRequest):
        skip(target)
        return None
    setattr(target, EXEMPT_ATTRIBUTE, True)
    return target


@overload
def set_user(request: HttpRequest, /, **attributes: Any) -> None: ...
@overload
def set_user(**attributes: Any) -> Callable[[F], F]: ...
def set_user(request: HttpRequest | None = None, /, **attributes: Any) -> Any:
    """Queue ``aptrinsic('set', 'user', {...})`` on this page (identified pages only).

    ``set_user(request, **attrs)`` in a view, or ``@set_user(**attrs)`` on a view.
    Names are PX API names (``trialEnds``); values are typed as for ``User`` (dates to
    epoch ms), and one PX cannot store is dropped and logged.
    """
    if request is not None:
        queued: dict[str, Any] = request.META.setdefault(SET_USER_KEY, {})
        queued.update(attributes)
        return None

    def decorate(view: F) -> F:
        if iscoroutinefunction(view):
            @functools.wraps(view)
            async def async_view(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                set_user(request, **attributes)
                return await view(request, *args, **kwargs)

            return async_view  # type: ignore[return-value]

        @functools.wraps(view)
        def sync_view(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            set_user(request, **attributes)
            return view(request, *args, **kwargs)

        return sync_view  # type: ignore[return-value]

    return decorate

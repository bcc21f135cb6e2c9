"""Who is on a Django page, for PX: ``request.user``, or the app's ``PX_IDENTIFY`` hook.

The hook is a dotted path in settings (``PX_IDENTIFY = "myapp.px.identify"``) to
``identify(request)``, returning an ``Identity``, a ``User`` or ``None``; under ASGI it
may be ``async def`` (a plain function runs in Django's sync thread, where the ORM works).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest
from django.utils.module_loading import import_string

from px_middleware.core.model import Identity, User, as_identity

__all__ = ["Who", "user_of"]

IdentifyHook = Callable[[HttpRequest], Any]


def user_of(user: Any) -> User | None:
    """A PX ``User`` from a Django user: ``pk``, email, names, ``date_joined``.

    ``None`` for anonymous users. Fields a custom user model lacks (or leaves empty)
    are left out. Hooks build on it: ``dataclasses.replace(user_of(u), role=...)``.
    """
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return User(
        str(user.pk),
        email=getattr(user, "email", None) or None,
        first_name=getattr(user, "first_name", None) or None,
        last_name=getattr(user, "last_name", None) or None,
        sign_up_date=getattr(user, "date_joined", None),
    )


class Who:
    """Resolves the visitor of one request; built once per middleware from settings."""

    def __init__(self) -> None:
        path = getattr(settings, "PX_IDENTIFY", None)
        try:
            self.hook: IdentifyHook | None = import_string(path) if path else None
        except ImportError as exc:
            raise ImproperlyConfigured(f"px_middleware: PX_IDENTIFY={path!r}: {exc}") from exc
        self._hook_is_async = self.hook is not None and iscoroutinefunction(self.hook)

    def identify(self, request: HttpRequest) -> Identity | None:
        """Under WSGI (or a sync hook's thread)."""
        if self.hook is not None:
            if self._hook_is_async:
                raise TypeError("PX_IDENTIFY is async def, which needs Django under ASGI")
            return as_identity(self.hook(request))
        return as_identity(user_of(getattr(request, "user", None)))

    async def aidentify(self, request: HttpRequest) -> Identity | None:
        """Under ASGI: the ORM is not called from the event loop."""
        if self.hook is not None:
            if self._hook_is_async:
                found = await self.hook(request)
            else:
                found = await sync_to_async(self.hook)(request)
            return as_identity(found)
        auser: Callable[[], Awaitable[Any]] | None = getattr(request, "auser", None)
        if auser is not None:
            return as_identity(user_of(await auser()))
        return await sync_to_async(self.identify)(request)


def nonce_of(request: HttpRequest) -> str | None:
    """django-csp's ``request.csp_nonce``, if this page has one (never creates one late)."""
    nonce = getattr(request, "csp_nonce", None)
    # django-csp's lazy object is falsy until evaluated; evaluating it after its
    # middleware wrote the header raises (a nonce not in the header is useless).
    if not nonce:
        return None
    try:
        return str(nonce)
    except Exception:
        return None


def ensure_nonce(request: HttpRequest) -> None:
    """Before the view: make django-csp put a nonce in the policy, for our script."""
    with contextlib.suppress(Exception):
        str(getattr(request, "csp_nonce", ""))

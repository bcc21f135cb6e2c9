"""Gainsight PX for Django: one line in ``settings.MIDDLEWARE``.

    MIDDLEWARE = [
        "django.middleware.security.SecurityMiddleware",
        "px_middleware.django.PXMiddleware",
        ...
    ]
    PX_PRODUCT_KEY = "AP-XXXXXXXXXXXX-2"    # secrets: PX_HMAC_SECRET etc. in the environment

Settings come from ``settings.PX_*`` (explicit: a misspelt one is an error at start-up),
then from ``PX_*`` environment variables for the ones settings lack. The logged-in
``request.user`` is identified with no code; ``PX_IDENTIFY = "myapp.px.identify"`` names
a function ``identify(request) -> Identity | User | None`` for anything else.

Under ASGI, wrap the application so a server's shutdown delivers what is queued
(Django has no lifespan): ``application = with_lifespan(get_asgi_application())``.
"""

from px_middleware.django.lifespan import with_lifespan
from px_middleware.django.middleware import PXMiddleware, load_config
from px_middleware.django.views import exempt, set_user, skip
from px_middleware.django.who import user_of

__all__ = [
    "PXMiddleware", "exempt", "load_config", "set_user", "skip", "user_of", "with_lifespan",
]

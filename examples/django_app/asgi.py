"""``uvicorn examples.django_app.asgi:application``: the example under ASGI.

``with_lifespan``: Django's ASGI handler has no lifespan, and without one nothing would
deliver the events still queued when uvicorn stops (it dies of the SIGTERM it re-raises).
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

from px_middleware.django import with_lifespan

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
application = with_lifespan(get_asgi_application())

from examples.django_app.database import ensure_database  # noqa: E402  (needs settings)

ensure_database()

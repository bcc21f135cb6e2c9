"""``uvicorn examples.django_app.asgi:application``: the example under ASGI.

Django's ASGI handler has no lifespan; uvicorn says so once at start-up and goes on.
Captured events are flushed when the process exits (``atexit``), on SIGTERM as on Ctrl-C.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "examples.django_app.settings")
application = get_asgi_application()

from examples.django_app.database import ensure_database  # noqa: E402  (needs settings)

ensure_database()

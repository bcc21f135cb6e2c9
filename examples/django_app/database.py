"""The example's SQLite database, created on first start (migrations and demo users).

Several gunicorn workers may start at once: a file lock lets one of them create it.
"""

from __future__ import annotations

import datetime as dt
import fcntl
from pathlib import Path

from django.conf import settings
from django.core.management import call_command

UTC = dt.timezone.utc
DEMO_USERS = [
    # email (also the username), password, first, last, joined, staff
    ("alice@acme.test", "alice", "Alice", "Anders", dt.datetime(2024, 2, 12, tzinfo=UTC), True),
    ("bob@globex.test", "bob", "Bob", "Brandt", dt.datetime(2025, 6, 1, tzinfo=UTC), False),
]


def ensure_database() -> None:
    path = Path(settings.DATABASES["default"]["NAME"])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + "-lock", "w") as lock:  # *.sqlite3-* is git-ignored
        fcntl.flock(lock, fcntl.LOCK_EX)
        call_command("migrate", verbosity=0, interactive=False)
        from django.contrib.auth import get_user_model

        users = get_user_model()
        for email, password, first, last, joined, staff in DEMO_USERS:
            if users.objects.filter(username=email).exists():
                continue
            users.objects.create_user(
                email, email, password, first_name=first, last_name=last,
                date_joined=joined, is_staff=staff, is_superuser=staff,
            )

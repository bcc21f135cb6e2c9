"""The Django example's settings plus test pages; ``DJANGO_BARE=1`` drops PX,
``DJANGO_CSP=1`` adds django-csp with a nonce policy."""

from __future__ import annotations

import os

from examples.django_app.settings import *  # noqa: F403
from examples.django_app.settings import MIDDLEWARE, TEMPLATES

ROOT_URLCONF = "tests.support.django_urls"
TEMPLATES[0]["DIRS"] = [HERE / "templates",  # noqa: F405
                        os.path.join(os.path.dirname(__file__), "django_templates")]
if os.environ.get("DJANGO_BARE") == "1":
    MIDDLEWARE = [m for m in MIDDLEWARE if not m.startswith("px_middleware")]

if os.environ.get("DJANGO_CSP") == "1":
    from csp.constants import NONCE, SELF

    INSTALLED_APPS = [*INSTALLED_APPS, "csp"]  # noqa: F405
    # Below ours, as the README says: we see the header it writes.
    MIDDLEWARE = [*MIDDLEWARE, "csp.middleware.CSPMiddleware"]
    # Nonce only; /t/csp-host adds the stand-in's origin (csp_update).
    CONTENT_SECURITY_POLICY = {
        "DIRECTIVES": {
            "default-src": [SELF],
            "script-src": [NONCE],
            "connect-src": [SELF, os.environ["PX_LOCAL_URL"]],
        },
    }

# Tests log in often: Django's own advice for test suites, a fast hasher.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

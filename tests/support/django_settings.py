"""The Django example's settings plus test pages; ``DJANGO_BARE=1`` drops PX,
``DJANGO_CSP`` adds django-csp with that policy (``nonce`` or ``nonce+host``)."""

from __future__ import annotations

import os

from examples.django_app.settings import *  # noqa: F403
from examples.django_app.settings import MIDDLEWARE, TEMPLATES

ROOT_URLCONF = "tests.support.django_urls"
TEMPLATES[0]["DIRS"] = [HERE / "templates",  # noqa: F405
                        os.path.join(os.path.dirname(__file__), "django_templates")]
if os.environ.get("DJANGO_BARE") == "1":
    MIDDLEWARE = [m for m in MIDDLEWARE if not m.startswith("px_middleware")]

_policy = os.environ.get("DJANGO_CSP")
if _policy:
    from csp.constants import NONCE, SELF

    INSTALLED_APPS = [*INSTALLED_APPS, "csp"]  # noqa: F405
    # Inside ours, as the README says: we see the header it writes.
    MIDDLEWARE = [*MIDDLEWARE, "csp.middleware.CSPMiddleware"]
    _stand_in = os.environ["PX_LOCAL_URL"]
    _scripts = [NONCE] if _policy == "nonce" else [NONCE, _stand_in]
    CONTENT_SECURITY_POLICY = {
        "DIRECTIVES": {
            "default-src": [SELF],
            "script-src": _scripts,
            "connect-src": [SELF, _stand_in],
        },
    }

"""Flask pages under real CSP set-ups (Flask-Talisman), for the Chromium tests.

``gunicorn 'tests.support.csp_app:create_app()'`` with ``PX_*`` variables pointing at
the devserver. ``PX(app)`` is wired as an app would wire it; the only PX-specific line
is the identity. ``/oracle`` is exempt from PX and renders our snippet itself under
any policy given in the query, so a test can ask Chromium whether it runs.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Flask, Response, request
from flask_talisman import Talisman

from px_middleware import PXConfig, User
from px_middleware.core.snippet import render
from px_middleware.flask import PX

DEVSERVER = os.environ.get("PX_LOCAL_URL", "http://127.0.0.1:8787")
USER = User("csp-user-1", email="csp@example.test", first_name="Cee")
APP_SCRIPT = "window.appScriptRan = true;"
APP_SCRIPT_HASH = base64.b64encode(hashlib.sha256(APP_SCRIPT.encode()).digest()).decode()
#: The nonce the oracle page gives our snippet (and that its policies may list).
ORACLE_NONCE = "n0nceOracle1"
PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>{head}
</head><body><h1>{title}</h1><script{nonce}>{app}</script></body></html>"""


F = TypeVar("F", bound=Callable[..., Any])


def view_options(talisman: Talisman, **options: Any) -> Callable[[F], F]:
    """Talisman's per-view decorator, typed."""
    decorator: Callable[[F], F] = talisman(**options)
    return decorator


def create_app() -> Flask:
    app = Flask(__name__)
    config = PXConfig.from_env()
    # Nonce-only script-src: Talisman adds 'nonce-…' to an otherwise empty source list.
    talisman = Talisman(
        app,
        force_https=False,
        content_security_policy={"default-src": "'self'", "script-src": "",
                                 "connect-src": DEVSERVER},
        content_security_policy_nonce_in=["script-src"],
    )
    PX(app, config=config, identify=lambda: USER)

    def page(title: str, nonce: bool = True, head: str = "") -> str:
        attr = f' nonce="{request.csp_nonce}"' if nonce else ""  # type: ignore[attr-defined]
        return PAGE.format(title=title, head=head, nonce=attr, app=APP_SCRIPT)

    @app.get("/talisman")
    def nonce_only() -> str:
        return page("talisman")

    @app.get("/strict-dynamic")
    @view_options(talisman,
        content_security_policy={"default-src": "'self'", "connect-src": DEVSERVER,
                                 "script-src": "'strict-dynamic' https: 'unsafe-inline'"},
        content_security_policy_nonce_in=["script-src"],
    )
    def strict_dynamic() -> str:
        return page("strict-dynamic")

    @app.get("/two-policies")
    @view_options(talisman, content_security_policy=None)
    def two_policies() -> Response:
        response = Response(page("two policies", nonce=False))
        hashed = f"'sha256-{APP_SCRIPT_HASH}'"
        response.headers.add("Content-Security-Policy",
                             f"script-src 'unsafe-inline' {DEVSERVER}; connect-src {DEVSERVER}")
        response.headers.add("Content-Security-Policy",
                             f"script-src {hashed} {DEVSERVER}; connect-src {DEVSERVER}")
        return response

    @app.get("/hash-unsafe-inline")
    @view_options(talisman, content_security_policy=None)
    def hash_unsafe_inline() -> Response:
        response = Response(page("hash", nonce=False))
        response.headers["Content-Security-Policy"] = (
            f"script-src 'sha256-{APP_SCRIPT_HASH}' 'unsafe-inline' {DEVSERVER}; "
            f"connect-src {DEVSERVER}"
        )
        return response

    @app.get("/oracle")
    @view_options(talisman, content_security_policy=None)
    @PX.exempt
    def oracle() -> Response:
        snippet = render(config, None, nonce=ORACLE_NONCE).decode()
        response = Response(PAGE.format(title="oracle", head=snippet, nonce="", app=""))
        for name in ("Content-Security-Policy", "Content-Security-Policy-Report-Only"):
            for policy in request.args.getlist(name):
                response.headers.add(name, policy)
        return response

    return app

"""A page whose identity is hostile, and pages under a strict CSP, for the browser tests.

``uvicorn --factory tests.support.hostile_app:create_app`` with ``PX_*`` variables pointing at the
devserver. The attribute values try every way out of a ``<script>`` element.
"""

from __future__ import annotations

import os
import secrets

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from px_middleware import Account, Identity, PXAsgiMiddleware, PXConfig, User

HOSTILE = "</script><script>window.pwned=1</script>"
HOSTILE_NAME = "Eve <!-- \u2028 \u2029 \"quoted\" 'single' & </SCRIPT>"
IDENTITY = Identity(
    User("eve-1", email="eve@evil.test", first_name=HOSTILE_NAME, last_name=HOSTILE,
         custom={"note": HOSTILE, "comment": "<!--", "sep": "a\u2028b"}),
    Account("evil", name=HOSTILE, custom={"motto": "' onload='window.pwned=2"}),
)
DEVSERVER = os.environ.get("PX_LOCAL_URL", "http://127.0.0.1:8787")
PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title></head>
<body><h1>{title}</h1>{script}</body></html>"""


async def hostile(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE.format(title="hostile", script=""))


async def strict_csp(request: Request) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    policy = (f"default-src 'self'; script-src 'nonce-{nonce}' {DEVSERVER}; "
              f"connect-src {DEVSERVER}")
    script = f'<script nonce="{nonce}">window.appScriptRan = true;</script>'
    return HTMLResponse(PAGE.format(title="csp", script=script),
                        headers={"Content-Security-Policy": policy})


async def csp_without_nonce(request: Request) -> HTMLResponse:
    policy = f"default-src 'self'; script-src {DEVSERVER}; connect-src {DEVSERVER}"
    return HTMLResponse(PAGE.format(title="no nonce", script=""),
                        headers={"Content-Security-Policy": policy})


def create_app() -> PXAsgiMiddleware:
    """``uvicorn --factory tests.support.hostile_app:create_app``."""
    return PXAsgiMiddleware(
        Starlette(routes=[Route("/", hostile), Route("/csp", strict_csp),
                          Route("/csp-without-nonce", csp_without_nonce)]),
        PXConfig.from_env(),
        identify=lambda request: IDENTITY,
    )

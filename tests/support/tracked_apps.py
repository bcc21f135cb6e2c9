"""Apps wrapped in the middleware with server-side events on, for real-server tests.

Configured from ``PX_*`` variables the test sets (the devserver's URL and key). Also a
gunicorn config module (``-c python:tests.support.tracked_apps``): ``worker_exit`` is
the one line the README tells gunicorn users to add. Built at import, so under
``--preload`` the middleware and its delivery exist in the master before the fork.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from px_middleware import PXAsgiMiddleware, PXConfig, PXWsgiMiddleware, User
from px_middleware.delivery import gunicorn_worker_exit

worker_exit = gunicorn_worker_exit

PAGE = b"<!doctype html><html><head><title>tracked</title></head><body>ok</body></html>"
px_config = PXConfig.from_env()  # not "config": gunicorn reads that name


def _page(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(PAGE)))])
    return [PAGE]


def _user(value: str | None, role: str | None = None) -> User | None:
    """``?u=<id>`` is the logged-in user; ``&role=`` changes an attribute (an upsert)."""
    return User(value, role=role) if value else None


wsgi = PXWsgiMiddleware(
    _page, px_config, identify=lambda r: _user(r.args.get("u"), r.args.get("role"))
)


async def _asgi_page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


asgi = PXAsgiMiddleware(
    Starlette(routes=[Route("/", _asgi_page)]),
    px_config,
    identify=lambda r: _user(r.query_params.get("u"), r.query_params.get("role")),
)

"""``create_app``: the stand-in's ASGI app, assembled from its parts."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from px_middleware.config import HashEncoding
from px_middleware.tools.devserver.api import api_routes
from px_middleware.tools.devserver.control import control_routes
from px_middleware.tools.devserver.dashboard import render_dashboard
from px_middleware.tools.devserver.errors import ApiError, error_response
from px_middleware.tools.devserver.faults import Faults
from px_middleware.tools.devserver.gate import ApiGate, TokenBucket, is_api_path
from px_middleware.tools.devserver.sdk import sdk_routes
from px_middleware.tools.devserver.store import Store

DEFAULT_API_KEY = "dev-api-key"
DEFAULT_HMAC_SECRET = "dev-hmac-secret"
DEFAULT_RATE_LIMIT = 200.0


def create_app(
    db_path: str | Path = ":memory:",
    *,
    api_key: str = DEFAULT_API_KEY,
    hmac_secret: str = DEFAULT_HMAC_SECRET,
    hash_encoding: HashEncoding = "hex",
    hash_field: str = "id",
    rate_limit: float = DEFAULT_RATE_LIMIT,
    accept_event_lists: bool = True,
) -> ASGIApp:
    """The whole stand-in as one ASGI app; the SQLite store closes on lifespan shutdown."""
    if hash_field not in ("id", "email"):
        raise ValueError(f"hash_field must be 'id' or 'email', not {hash_field!r}")
    if hash_encoding not in ("hex", "base64"):
        raise ValueError(f"hash_encoding must be 'hex' or 'base64', not {hash_encoding!r}")
    if not api_key or not hmac_secret:
        raise ValueError("api_key and hmac_secret must be non-empty")
    store = Store(db_path)
    faults = Faults()
    bucket = TokenBucket(rate_limit)
    subtitle = (
        f"db {store.path} · userHash of {hash_field} ({hash_encoding}) · "
        f"rate limit {rate_limit:g}/s"
    )

    async def dashboard(request: Request) -> Response:
        return HTMLResponse(render_dashboard(store, subtitle=subtitle))

    async def healthz(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        # Unknown /v1 routes and wrong methods answer in PX's error shape too.
        assert isinstance(exc, HTTPException)
        if is_api_path(request.url.path):
            return error_response(ApiError(exc.status_code, exc.detail, exc.headers))
        return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            store.close()

    routes = [
        *api_routes(store, accept_event_lists=accept_event_lists),
        *control_routes(store, faults, bucket),
        *sdk_routes(
            store, hmac_secret=hmac_secret, hash_field=hash_field, hash_encoding=hash_encoding
        ),
        Route("/", dashboard, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ApiError: on_api_error, HTTPException: on_http_error},
    )
    return ApiGate(app, store=store, faults=faults, bucket=bucket, api_key=api_key)

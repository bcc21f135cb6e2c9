"""The stand-in web SDK: ``/api/aptrinsic.js`` and the ``/sdk/calls`` it reports to.

The script records ``aptrinsic(...)`` calls instead of tracking anything. Pages are
served by the app under test on another origin, so ``/sdk/calls`` speaks CORS. The
identify call's ``userHash`` is checked here, with the secret the real tenant would
hold, so a browser test proves the page carried a hash PX would accept.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from px_middleware.config import HashEncoding
from px_middleware.core.signing import user_hash
from px_middleware.tools.devserver.api import read_json
from px_middleware.tools.devserver.errors import ApiError, error_response
from px_middleware.tools.devserver.store import Store

_SCRIPT = resources.files("px_middleware.tools.devserver").joinpath("sdk.js").read_text("utf-8")
_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Max-Age": "600",
}


def hash_valid(args: list[Any], secret: str, field: str, encoding: HashEncoding) -> bool | None:
    """Whether an identify call's ``userHash`` matches; ``None`` when none was sent."""
    user = args[0] if args else None
    if not isinstance(user, Mapping) or user.get("userHash") is None:
        return None
    value = user.get(field)
    sent = user["userHash"]
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not isinstance(sent, str):
        return False
    expected = user_hash(str(value), secret, encoding)
    return hmac.compare_digest(sent.encode("utf-8"), expected.encode("utf-8"))


def _call_errors(call: Any, prefix: str) -> list[str]:
    if not isinstance(call, dict):
        return [f"{prefix}call must be an object"]
    errors = []
    if not isinstance(call.get("method"), str):
        errors.append(f"{prefix}method must be a string")
    if not isinstance(call.get("args", []), list):
        errors.append(f"{prefix}args must be a list")
    for field in ("productKey", "url"):
        if call.get(field) is not None and not isinstance(call[field], str):
            errors.append(f"{prefix}{field} must be a string or null")
    return errors


def sdk_routes(
    store: Store, *, hmac_secret: str, hash_field: str, hash_encoding: HashEncoding
) -> list[BaseRoute]:
    async def script(request: Request) -> Response:
        return Response(
            _SCRIPT,
            media_type="application/javascript; charset=utf-8",
            headers={"Cache-Control": "no-store"},
        )

    async def record_calls(request: Request) -> Response:
        # The script posts text/plain (a CORS "simple request"), so parse any type.
        try:
            body = await read_json(request)
            calls = body if isinstance(body, list) else [body]
            many = isinstance(body, list)
            errors = [
                error
                for index, call in enumerate(calls)
                for error in _call_errors(call, f"[{index}]." if many else "")
            ]
            if errors:
                raise ApiError(400, errors)
        except ApiError as error:
            response = error_response(error)
            response.headers.update(_CORS)
            return response
        for call in calls:
            args = call.get("args", [])
            valid = (
                hash_valid(args, hmac_secret, hash_field, hash_encoding)
                if call["method"] == "identify"
                else None
            )
            store.add_sdk_call(call["method"], args, call.get("productKey"), call.get("url"), valid)
        return Response(status_code=204, headers=_CORS)

    async def preflight(request: Request) -> Response:
        return Response(status_code=204, headers=_CORS)

    return [
        Route("/api/aptrinsic.js", script, methods=["GET"]),
        Route("/sdk/calls", record_calls, methods=["POST"]),
        Route("/sdk/calls", preflight, methods=["OPTIONS"]),
    ]

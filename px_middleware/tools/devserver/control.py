"""``/_control``: what tests use to arrange faults and read what the stand-in received.

No API key here, and nothing under ``/_control`` is rate limited, logged or subject to
injected faults, so reading the state never disturbs the scenario under test.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from px_middleware.tools.devserver.api import CustomAttributes, event_filters, read_json
from px_middleware.tools.devserver.errors import ApiError
from px_middleware.tools.devserver.faults import FaultPlan, Faults
from px_middleware.tools.devserver.gate import RateLimit
from px_middleware.tools.devserver.store import Store


def control_routes(
    store: Store, faults: Faults, bucket: RateLimit, attributes: CustomAttributes
) -> list[BaseRoute]:
    async def set_faults(request: Request) -> Response:
        faults.set(FaultPlan.from_json(await read_json(request)))
        return JSONResponse(faults.plan.to_json())

    async def get_faults(request: Request) -> Response:
        return JSONResponse(faults.plan.to_json())

    async def reset(request: Request) -> Response:
        # Declared attributes are configuration (like --attribute), not received data.
        store.reset()
        faults.set(FaultPlan())
        bucket.refill()
        return Response(status_code=204)

    async def declare_attributes(request: Request) -> Response:
        """``{"USER": {"seats": "NUMBER"}, "ACCOUNT": {...}}`` adds custom attributes."""
        body = await read_json(request)
        if not isinstance(body, dict) or not all(isinstance(v, dict) for v in body.values()):
            raise ApiError(400, 'use {"USER": {"name": "STRING|NUMBER|BOOLEAN|DATE_TIME"}}')
        try:
            attributes.declare(body)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        return JSONResponse(attributes.to_json())

    async def get_attributes(request: Request) -> Response:
        return JSONResponse(attributes.to_json())

    async def requests(request: Request) -> Response:
        return JSONResponse(store.list_requests())

    async def sdk_calls(request: Request) -> Response:
        return JSONResponse(store.list_sdk_calls())

    async def events(request: Request) -> Response:
        return JSONResponse([stored.event for stored in store.list_events(event_filters(request))])

    async def users(request: Request) -> Response:
        return JSONResponse(store.list_records("user"))

    async def accounts(request: Request) -> Response:
        return JSONResponse(store.list_records("account"))

    return [
        Route("/_control/faults", set_faults, methods=["POST"]),
        Route("/_control/faults", get_faults, methods=["GET"]),
        Route("/_control/reset", reset, methods=["POST"]),
        Route("/_control/attributes", declare_attributes, methods=["POST"]),
        Route("/_control/attributes", get_attributes, methods=["GET"]),
        Route("/_control/requests", requests, methods=["GET"]),
        Route("/_control/sdk-calls", sdk_calls, methods=["GET"]),
        Route("/_control/events", events, methods=["GET"]),
        Route("/_control/users", users, methods=["GET"]),
        Route("/_control/accounts", accounts, methods=["GET"]),
    ]

"""``/_control``: what tests use to arrange faults and read what the stand-in received.

No API key here, and nothing under ``/_control`` is rate limited, logged or subject to
injected faults, so reading the state never disturbs the scenario under test.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from px_middleware.tools.devserver.api import event_filters, read_json
from px_middleware.tools.devserver.faults import FaultPlan, Faults
from px_middleware.tools.devserver.gate import TokenBucket
from px_middleware.tools.devserver.store import Store


def control_routes(store: Store, faults: Faults, bucket: TokenBucket) -> list[BaseRoute]:
    async def set_faults(request: Request) -> Response:
        faults.set(FaultPlan.from_json(await read_json(request)))
        return JSONResponse(faults.plan.to_json())

    async def get_faults(request: Request) -> Response:
        return JSONResponse(faults.plan.to_json())

    async def reset(request: Request) -> Response:
        store.reset()
        faults.set(FaultPlan())
        bucket.refill()
        return Response(status_code=204)

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
        Route("/_control/requests", requests, methods=["GET"]),
        Route("/_control/sdk-calls", sdk_calls, methods=["GET"]),
        Route("/_control/events", events, methods=["GET"]),
        Route("/_control/users", users, methods=["GET"]),
        Route("/_control/accounts", accounts, methods=["GET"]),
    ]

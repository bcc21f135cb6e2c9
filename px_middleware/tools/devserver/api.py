"""The REST API under ``/v1``: users, accounts and custom events, as PX answers them.

Statuses follow PX: POST 201 (400 when the id exists), PUT 204 (404 when missing),
DELETE 204/404. A request with any invalid item is rejected whole; nothing is stored.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from px_middleware.tools.devserver.errors import ApiError
from px_middleware.tools.devserver.schema import (
    ACCOUNT,
    USER,
    RecordSchema,
    event_errors,
    items_of,
    record_errors,
)
from px_middleware.tools.devserver.store import EVENT_FILTERS, Store


async def read_json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None


def _prefix(index: int, many: bool) -> str:
    return f"[{index}]." if many else ""


def record_routes(store: Store, schema: RecordSchema, collection: str) -> list[BaseRoute]:
    """CRUD for users (``/v1/users``, key ``identifyId``) or accounts (``/v1/accounts``)."""
    kind, key = schema.kind, schema.key

    def not_found(ids: list[str]) -> ApiError:
        return ApiError(404, [f"{kind} with {key} {value!r} not found" for value in ids])

    async def list_all(request: Request) -> Response:
        records = store.list_records(kind)
        # PX pages with a scroll id; everything fits in one page here.
        return JSONResponse({collection: records, "scrollId": None, "totalHits": len(records)})

    async def create(request: Request) -> Response:
        items, many = items_of(await read_json(request))
        errors = [
            error
            for index, item in enumerate(items)
            for error in record_errors(schema, item, _prefix(index, many))
        ]
        if errors:
            raise ApiError(400, errors)
        conflicts = store.create_records(kind, [(item[key], item) for item in items])
        if conflicts:
            raise ApiError(
                400, [f"{kind} with {key} {value!r} already exists" for value in conflicts]
            )
        return JSONResponse(items if many else items[0], status_code=201)

    async def update_by_body(request: Request) -> Response:
        # PX's route for ids that do not fit in a URL path: the id travels in the body.
        items, many = items_of(await read_json(request))
        errors = [
            error
            for index, item in enumerate(items)
            for error in record_errors(schema, item, _prefix(index, many))
        ]
        if errors:
            raise ApiError(400, errors)
        missing = store.update_records(kind, [(item[key], item) for item in items])
        if missing:
            raise not_found(missing)
        return Response(status_code=204)

    async def get_one(request: Request) -> Response:
        value = request.path_params["key"]
        record = store.get_record(kind, value)
        if record is None:
            raise not_found([value])
        return JSONResponse(record)

    async def update_one(request: Request) -> Response:
        value = request.path_params["key"]
        patch = await read_json(request)
        if not isinstance(patch, dict):
            raise ApiError(400, "request body must be a JSON object")
        errors = record_errors(schema, patch, require_key=False)
        if key in patch and patch[key] != value:
            errors.append(f"{key} in the body ({patch[key]!r}) differs from the path ({value!r})")
        if errors:
            raise ApiError(400, errors)
        missing = store.update_records(kind, [(value, {**patch, key: value})])
        if missing:
            raise not_found(missing)
        return Response(status_code=204)

    async def delete_one(request: Request) -> Response:
        value = request.path_params["key"]
        if not store.delete_record(kind, value):
            raise not_found([value])
        return Response(status_code=204)

    base = f"/v1/{collection}"
    return [
        Route(base, list_all, methods=["GET"]),
        Route(base, create, methods=["POST"]),
        Route(f"{base}/update", update_by_body, methods=["PUT"]),
        Route(base + "/{key:path}", get_one, methods=["GET"]),
        Route(base + "/{key:path}", update_one, methods=["PUT"]),
        Route(base + "/{key:path}", delete_one, methods=["DELETE"]),
    ]


def event_filters(request: Request) -> dict[str, str]:
    unknown = sorted(set(request.query_params) - set(EVENT_FILTERS))
    if unknown:
        raise ApiError(400, f"unknown filters {unknown}; known: {sorted(EVENT_FILTERS)}")
    return dict(request.query_params)


def event_routes(store: Store, *, accept_lists: bool = True) -> list[BaseRoute]:
    async def post_events(request: Request) -> Response:
        items, many = items_of(await read_json(request))
        if many and not accept_lists:  # PX documents one CustomEvent per request
            raise ApiError(400, "the body must be one CustomEvent object, not a list")
        errors = [
            error
            for index, item in enumerate(items)
            for error in event_errors(item, _prefix(index, many))
        ]
        if errors:
            raise ApiError(400, errors)
        store.add_events(items)
        return Response(status_code=201)

    async def list_events(request: Request) -> Response:
        return JSONResponse([stored.event for stored in store.list_events(event_filters(request))])

    return [
        Route("/v1/events/custom", post_events, methods=["POST"]),
        Route("/v1/events/custom", list_events, methods=["GET"]),
    ]


def api_routes(store: Store, *, accept_event_lists: bool = True) -> list[BaseRoute]:
    return [
        *record_routes(store, USER, "users"),
        *record_routes(store, ACCOUNT, "accounts"),
        *event_routes(store, accept_lists=accept_event_lists),
    ]

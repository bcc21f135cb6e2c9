"""The REST API under ``/v1``: users, accounts, custom events and attribute metadata.

Statuses follow PX: POST 201 (400 when the id exists), PUT 204 (404 when missing),
DELETE 204/404. A request with any invalid item is rejected whole; nothing is stored.
Lists page with ``pageSize``/``scrollId``: the last page carries no ``scrollId``, so a
client that follows the published rules stops.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from px_middleware.core.pxmodel import FIELDS, KEYS, STRUCTURAL, EntityName
from px_middleware.tools.devserver.errors import ApiError
from px_middleware.tools.devserver.schema import errors_of, items_of
from px_middleware.tools.devserver.store import EVENT_FILTERS, Store

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
#: Types that attribute metadata reports (PX has richer ones; these four are published).
METADATA_TYPES = ("STRING", "NUMBER", "BOOLEAN", "DATE_TIME")
ENTITIES: dict[str, EntityName] = {"USER": "user", "ACCOUNT": "account"}


class CustomAttributes:
    """The custom attributes declared for this stand-in (``--attribute``, ``/_control``),
    as PX's Administration > Attributes would hold them: per entity, name -> type."""

    def __init__(self, declared: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self._lock = threading.Lock()
        self._declared: dict[str, dict[str, str]] = {"USER": {}, "ACCOUNT": {}}
        if declared:
            self.declare(declared)

    def declare(self, declared: Mapping[str, Mapping[str, str]]) -> None:
        """Add (or retype) custom attributes; ``ValueError`` names every bad one."""
        errors = []
        for entity, attributes in declared.items():
            if entity not in ENTITIES:
                errors.append(f"entity {entity!r} is not USER or ACCOUNT")
                continue
            for name, kind in attributes.items():
                if not isinstance(kind, str) or kind.upper() not in METADATA_TYPES:
                    errors.append(f"{entity}.{name}: type must be one of {METADATA_TYPES}")
        if errors:
            raise ValueError("; ".join(errors))
        with self._lock:
            for entity, attributes in declared.items():
                self._declared[entity].update({n: k.upper() for n, k in attributes.items()})

    def clear(self) -> None:
        with self._lock:
            for attributes in self._declared.values():
                attributes.clear()

    def metadata(self, entity: str) -> list[dict[str, object]]:
        """Built-in scalar fields (from the one PX model), then the declared custom ones."""
        table = FIELDS[ENTITIES[entity]]
        result: list[dict[str, object]] = [
            {"apiName": name, "type": _metadata_type(field.type, field.date), "custom": False}
            for name, field in table.items()
            if name not in STRUCTURAL
        ]
        with self._lock:
            declared = dict(self._declared[entity])
        result.extend(
            {"apiName": name, "type": kind, "custom": True} for name, kind in declared.items()
        )
        return result

    def to_json(self) -> dict[str, dict[str, str]]:
        with self._lock:
            return {entity: dict(attributes) for entity, attributes in self._declared.items()}


def _metadata_type(kind: str, date: bool) -> str:
    if date:
        return "DATE_TIME"
    if kind in ("int64", "int32", "number"):
        return "NUMBER"
    return "BOOLEAN" if kind == "boolean" else "STRING"


async def read_json(request: Request) -> Any:
    body = await request.body()
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be an integer from {low} to {high}, got {raw!r}")
    return value


def _check_params(request: Request, known: Sequence[str]) -> None:
    unknown = sorted(set(request.query_params) - set(known))
    if unknown:
        raise ApiError(400, f"unknown query parameters {unknown}; known: {sorted(known)}")


def page(request: Request, items: list[Any], collection: str) -> Response:
    """One page of ``items`` by ``pageSize``/``scrollId``; the last page has no scrollId."""
    size = _int_param(request, "pageSize", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    offset = 0
    scroll = request.query_params.get("scrollId")
    if scroll is not None:
        try:
            offset = int(base64.urlsafe_b64decode(scroll.encode("ascii")).decode("ascii"))
        except (ValueError, binascii.Error, UnicodeError):
            raise ApiError(400, f"scrollId {scroll!r} is not one this server gave out") from None
    chunk = items[offset : offset + size]
    body: dict[str, Any] = {collection: chunk, "totalHits": len(items)}
    if offset + size < len(items):
        body["scrollId"] = base64.urlsafe_b64encode(str(offset + size).encode()).decode()
    return JSONResponse(body)


def record_routes(store: Store, entity: EntityName, collection: str) -> list[BaseRoute]:
    """CRUD for users (``/v1/users``, key ``identifyId``) or accounts (``/v1/accounts``)."""
    kind, key = entity, KEYS[entity]

    def not_found(ids: list[str]) -> ApiError:
        return ApiError(404, [f"{kind} with {key} {value!r} not found" for value in ids])

    async def list_all(request: Request) -> Response:
        _check_params(request, ("pageSize", "scrollId"))
        return page(request, store.list_records(kind), collection)

    async def create(request: Request) -> Response:
        items, many = items_of(await read_json(request))
        errors = errors_of(entity, items, many, create=True)
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
        errors = errors_of(entity, items, many, create=False)
        errors.extend(
            (f"[{index}]." if many else "") + f"{key} is required"
            for index, item in enumerate(items)
            if key not in item
        )
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
        errors = errors_of(entity, [patch], False, create=False)
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
    """``/_control/events`` filters: exact field values as plain query parameters."""
    unknown = sorted(set(request.query_params) - set(EVENT_FILTERS))
    if unknown:
        raise ApiError(400, f"unknown filters {unknown}; known: {sorted(EVENT_FILTERS)}")
    return dict(request.query_params)


def published_event_query(request: Request) -> tuple[dict[str, str], tuple[int, int], bool]:
    """PX's event read parameters: ``filter=eventName==x;identifyId==u``,
    ``dateRange=<from ms>,<to ms>`` (either end may be empty) and ``sort=date|-date``."""
    _check_params(request, ("filter", "pageSize", "sort", "dateRange", "scrollId"))
    filters: dict[str, str] = {}
    for clause in filter(None, request.query_params.get("filter", "").split(";")):
        name, sep, value = clause.partition("==")
        if not sep or name not in EVENT_FILTERS:
            raise ApiError(
                400, f"filter {clause!r}: use name==value with a name in {sorted(EVENT_FILTERS)}"
            )
        filters[name] = value
    low, high = 0, 2**63
    date_range = request.query_params.get("dateRange")
    if date_range is not None:
        start, sep, end = date_range.partition(",")
        try:
            low = int(start) if start else low
            high = int(end) if end else high
        except ValueError:
            sep = ""
        if not sep:
            raise ApiError(400, f"dateRange {date_range!r}: use <from ms>,<to ms>")
    sort = request.query_params.get("sort", "date")
    if sort not in ("date", "-date"):
        raise ApiError(400, f"sort {sort!r}: use date or -date")
    return filters, (low, high), sort == "-date"


def event_routes(store: Store, *, accept_lists: bool = True) -> list[BaseRoute]:
    async def post_events(request: Request) -> Response:
        items, many = items_of(await read_json(request))
        if many and not accept_lists:  # PX documents one CustomEvent per request
            raise ApiError(400, "the body must be one CustomEvent object, not a list")
        errors = errors_of("event", items, many, create=True)
        if errors:
            raise ApiError(400, errors)
        store.add_events(items)
        return Response(status_code=201)

    async def list_events(request: Request) -> Response:
        filters, (low, high), descending = published_event_query(request)
        events = [
            stored.event
            for stored in store.list_events(filters)
            if low <= _event_date(stored.event, stored.received_ms) <= high
        ]
        # Stable sort: events with the same date stay in arrival order.
        events.sort(key=lambda e: _event_date(e, 0), reverse=descending)
        return page(request, events, "customEvents")

    return [
        Route("/v1/events/custom", post_events, methods=["POST"]),
        Route("/v1/events/custom", list_events, methods=["GET"]),
    ]


def _event_date(event: Mapping[str, Any], default: int) -> int:
    date = event.get("date")
    return date if isinstance(date, int) and not isinstance(date, bool) else default


def model_routes(attributes: CustomAttributes) -> list[BaseRoute]:
    async def model(request: Request) -> Response:
        entity = request.path_params["entity"]
        if entity not in ENTITIES:
            raise ApiError(404, f"no model {entity!r}; use USER or ACCOUNT")
        return JSONResponse(attributes.metadata(entity))

    return [Route("/v1/admin/model/{entity}/attributes", model, methods=["GET"])]


def api_routes(
    store: Store, attributes: CustomAttributes, *, accept_event_lists: bool = True
) -> list[BaseRoute]:
    return [
        *record_routes(store, "user", "users"),
        *record_routes(store, "account", "accounts"),
        *event_routes(store, accept_lists=accept_event_lists),
        *model_routes(attributes),
    ]

"""What the stand-in accepts: PX's model from :mod:`px_middleware.core.pxmodel`, strictly.

Every departure is a 400 that names the field: an unknown field, a wrong type, a value
outside an enum, a missing required field, and (stricter than PX on purpose) a
read-only field, which PX would silently ignore so that the sender never learns its
value was lost. Dates must be epoch milliseconds: PX stores seconds as a 1970 date.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from px_middleware.core.pxmodel import FIELDS, EntityName, body_errors
from px_middleware.tools.devserver.errors import ApiError

Record = dict[str, Any]

#: Every field name, of any kind, that holds an epoch-ms date (for display).
DATE_FIELDS = frozenset(
    name for table in FIELDS.values() for name, field in table.items() if field.date
)


def items_of(body: Any) -> tuple[list[Record], bool]:
    """PX bodies are one object or a list of them; returns the items and whether a list."""
    if isinstance(body, dict):
        return [body], False
    if isinstance(body, list) and body and all(isinstance(item, dict) for item in body):
        return body, True
    raise ApiError(400, "request body must be a JSON object or a non-empty list of objects")


def errors_of(
    entity: EntityName, items: list[Record], many: bool, *, create: bool
) -> list[str]:
    return [
        error
        for index, item in enumerate(items)
        for error in body_errors(entity, item, create=create, prefix=f"[{index}]." if many else "")
    ]


def merge_record(stored: Mapping[str, Any], patch: Mapping[str, Any]) -> Record:
    """PUT semantics: given fields replace stored ones; custom attributes and location
    merge by key, so an update of ``location.city`` keeps the stored country."""
    merged = dict(stored)
    for field, value in patch.items():
        if field in ("customAttributes", "location") and isinstance(value, dict):
            merged[field] = {**(stored.get(field) or {}), **value}
        else:
            merged[field] = value
    return merged

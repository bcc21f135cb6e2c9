"""What the REST API accepts: the field types of users, accounts and custom events.

The stand-in is a little stricter than PX's documentation promises, on purpose: a
quoted number, a date in seconds or a misspelt ``identifyId`` is silently mangled
by the real service, so here it is a 400 that names the field and fails the test.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from px_middleware.tools.devserver.errors import ApiError

Record = dict[str, Any]

# Epoch-millisecond sanity bounds: below 1973-03-03 is almost surely seconds, above
# the year 5138 is micro- or nanoseconds. Both are the classic date bugs.
_MIN_EPOCH_MS = 10**11
_MAX_EPOCH_MS = 10**14

_LOCATION_STRINGS = frozenset(
    {"countryName", "countryCode", "stateName", "stateCode", "city", "street", "postalCode"}
)


@dataclasses.dataclass(frozen=True)
class RecordSchema:
    """Typed fields of one REST object kind; unknown fields are accepted as they are."""

    kind: str
    key: str
    dates: frozenset[str]
    numbers: frozenset[str]
    strings: frozenset[str]


USER = RecordSchema(
    kind="user",
    key="identifyId",
    dates=frozenset(
        {
            "signUpDate",
            "firstVisitDate",
            "lastSeenDate",
            "lastVisitedDate",
            "lastModifiedDate",
            "createDate",
        }
    ),
    numbers=frozenset({"score", "numberOfVisits"}),
    strings=frozenset(
        {
            "email",
            "firstName",
            "lastName",
            "title",
            "role",
            "phone",
            "gender",
            "accountId",
            "subscriptionId",
        }
    )
    | _LOCATION_STRINGS,
)
ACCOUNT = RecordSchema(
    kind="account",
    key="id",
    dates=frozenset({"createDate", "lastModifiedDate", "lastSeenDate"}),
    numbers=frozenset({"numberOfEmployees", "numberOfUsers"}),
    strings=frozenset({"name", "industry", "plan", "website", "sfdcId", "trackedSubscriptionId"})
    | _LOCATION_STRINGS,
)
#: Every field name, of either kind, that holds an epoch-ms date (for display).
DATE_FIELDS = USER.dates | ACCOUNT.dates | {"date"}

USER_TYPES = frozenset({"USER", "LEAD", "VISITOR"})
_EVENT_REQUIRED = ("eventName", "identifyId", "propertyKey")
_EVENT_STRINGS = ("eventId", "sessionId", "accountId", "url", "referrer", "remoteHost")
_EVENT_OBJECTS = ("attributes", "globalContext")


def items_of(body: Any) -> tuple[list[Record], bool]:
    """PX bodies are one object or a list of them; returns the items and whether a list."""
    if isinstance(body, dict):
        return [body], False
    if isinstance(body, list) and body and all(isinstance(item, dict) for item in body):
        return body, True
    raise ApiError(400, "request body must be a JSON object or a non-empty list of objects")


def _type_name(value: Any) -> str:
    """The JSON type of a parsed value, as the sender wrote it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value)


def date_error(field: str, value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"{field} must be an integer (epoch milliseconds), got {_type_name(value)}"
    if not _MIN_EPOCH_MS <= value <= _MAX_EPOCH_MS:
        return (
            f"{field}={value} is not epoch milliseconds (seconds, microseconds or a bogus value?)"
        )
    return None


def _key_error(field: str, value: Any) -> str | None:
    if value is None:
        return f"{field} is required"
    if not isinstance(value, str) or not value.strip():
        return f"{field} must be a non-empty string, got {json.dumps(value)}"
    return None


def record_errors(
    schema: RecordSchema, record: Mapping[str, Any], prefix: str = "", *, require_key: bool = True
) -> list[str]:
    """Messages for every badly typed field of a user or account; empty when valid."""
    errors: list[str] = []
    if require_key or schema.key in record:
        error = _key_error(prefix + schema.key, record.get(schema.key))
        if error:
            errors.append(error)
    for field, value in record.items():
        name = prefix + field
        if value is None or field == schema.key:
            continue
        if field in schema.dates:
            error = date_error(name, value)
            if error:
                errors.append(error)
        elif field in schema.numbers and not _is_number(value):
            errors.append(f"{name} must be a number, got {_type_name(value)}")
        elif field in schema.strings and not isinstance(value, str):
            errors.append(f"{name} must be a string, got {_type_name(value)}")
        elif field == "propertyKeys" and not (
            isinstance(value, list) and all(isinstance(key, str) for key in value)
        ):
            errors.append(f"{name} must be a list of product keys (strings)")
        elif field == "customAttributes":
            errors.extend(_custom_attribute_errors(name, value))
    return errors


def _custom_attribute_errors(name: str, value: Any) -> list[str]:
    if not isinstance(value, dict):
        return [f"{name} must be an object, got {_type_name(value)}"]
    return [
        f"{name}.{key} must be a string, number, boolean or null, got {_type_name(item)}"
        for key, item in value.items()
        if item is not None and not isinstance(item, (str, bool, int, float))
    ]


def event_errors(event: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Messages for every missing or badly typed field of a custom event."""
    errors: list[str] = []
    for field in _EVENT_REQUIRED:
        error = _key_error(prefix + field, event.get(field))
        if error:
            errors.append(error)
    user_type = event.get("userType")
    if user_type is not None and user_type not in USER_TYPES:
        errors.append(f"{prefix}userType must be one of {sorted(USER_TYPES)}, got {user_type!r}")
    date = event.get("date")
    if date is not None:
        error = date_error(prefix + "date", date)
        if error:
            errors.append(error)
    for field in _EVENT_STRINGS:
        value = event.get(field)
        if value is not None and not isinstance(value, str):
            errors.append(f"{prefix}{field} must be a string, got {_type_name(value)}")
    for field in _EVENT_OBJECTS:
        value = event.get(field)
        if value is not None and not isinstance(value, dict):
            errors.append(f"{prefix}{field} must be an object, got {_type_name(value)}")
    return errors


def merge_record(stored: Mapping[str, Any], patch: Mapping[str, Any]) -> Record:
    """PUT semantics: given fields replace stored ones, custom attributes merge by key."""
    merged = dict(stored)
    for field, value in patch.items():
        if field == "customAttributes" and isinstance(value, dict):
            merged[field] = {**(stored.get(field) or {}), **value}
        else:
            merged[field] = value
    return merged

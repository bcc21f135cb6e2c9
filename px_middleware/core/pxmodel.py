"""PX's published REST model as one table: every field, its type, enum, required, read-only.

This is the only copy (from ``PX-REST-MODEL.md``, Swagger 0.1.6). The REST bodies the
middleware builds, the loader's mapping targets and the stand-in's validation all read
it, so they cannot disagree about where ``city`` goes or whether ``score`` may be 3.5.

Two jobs, both pure:

* :func:`rest_value` turns one already-coerced Python value into what PX accepts for a
  field (enum in canonical case, integers only where PX wants ``int64``/``int32``), or
  raises ``ValueError`` naming the field (the middleware counts and logs that drop);
* :func:`body_errors` lists every departure of a JSON body from the model (the
  stand-in answers 400 with them; the loader checks the bodies it built).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

FieldType = Literal["string", "int64", "int32", "number", "boolean", "object", "array"]
EntityName = Literal["user", "account", "event"]

_INT32 = 2**31
_INT64 = 2**63
# Epoch-millisecond sanity bounds: below 1973-03-03 is almost surely seconds, above the
# year 5138 micro- or nanoseconds. PX would store either silently as a wrong date.
MIN_EPOCH_MS = 10**11
MAX_EPOCH_MS = 10**14
MAX_EVENT_NAME = 2000
MAX_EVENT_ATTRIBUTES = 50
MAX_ATTRIBUTE_KEY = 1024


@dataclasses.dataclass(frozen=True)
class Field:
    name: str
    type: FieldType
    enum: tuple[str, ...] = ()
    #: Required when the object is created (POST).
    required: bool = False
    #: PX ignores the value: sending it loses data without a word.
    read_only: bool = False
    #: An int64 holding epoch milliseconds UTC.
    date: bool = False


USER_TYPES = ("LEAD", "USER", "VISITOR", "EMPTY_USER_TYPE")
GENDERS = ("MALE", "FEMALE", "OTHER", "EMPTY_GENDER")


def _table(*fields: Field) -> dict[str, Field]:
    return {f.name: f for f in fields}


def _s(*names: str) -> list[Field]:
    return [Field(name, "string") for name in names]


def _date(name: str, *, read_only: bool = False) -> Field:
    return Field(name, "int64", date=True, read_only=read_only)


def _ro(*names: str) -> list[Field]:
    return [Field(name, "string", read_only=True) for name in names]


LOCATION_FIELDS = _table(
    *_s(
        "countryName", "countryCode", "stateName", "stateCode", "city", "street",
        "postalCode", "continent", "regionName", "timeZone",
    ),
    Field("coordinates", "object"),
)
COORDINATE_FIELDS = _table(Field("latitude", "number"), Field("longitude", "number"))

USER_FIELDS = _table(
    Field("identifyId", "string", required=True),
    Field("propertyKeys", "array", required=True),
    Field("type", "string", enum=USER_TYPES),
    Field("gender", "string", enum=GENDERS),
    *_s(
        "email", "firstName", "lastName", "title", "phone", "role", "subscriptionId",
        "accountId", "sfdcContactId",
    ),
    _date("signUpDate"),
    _date("firstVisitDate"),
    Field("score", "int64"),
    Field("globalUnsubscribe", "boolean"),
    Field("location", "object"),
    Field("customAttributes", "object"),
    *_ro("aptrinsicId", "id", "globalId", "channelMetricList", "lastVisitedUserAgentData",
         "lastInferredLocation"),
    _date("lastSeenDate", read_only=True),
    Field("numberOfVisits", "int64", read_only=True),
    _date("createDate", read_only=True),
    _date("lastModifiedDate", read_only=True),
)
ACCOUNT_FIELDS = _table(
    Field("id", "string", required=True),
    Field("name", "string", required=True),
    Field("propertyKeys", "array", required=True),
    *_s(
        "trackedSubscriptionId", "sfdcId", "dunsNumber", "industry", "sicCode", "website",
        "naicsCode", "plan", "parentGroupId", "gsId", "csm",
    ),
    _date("lastSeenDate"),
    _date("renewalDate"),
    Field("numberOfEmployees", "int32"),
    Field("healthScore", "int32"),
    Field("nps", "number"),
    Field("location", "object"),
    Field("customAttributes", "object"),
    Field("numberOfUsers", "int64", read_only=True),
    _date("createDate", read_only=True),
    _date("lastModifiedDate", read_only=True),
)
EVENT_FIELDS = _table(
    Field("eventName", "string", required=True),
    Field("identifyId", "string", required=True),
    Field("propertyKey", "string", required=True),
    Field("userType", "string", enum=USER_TYPES, required=True),
    *_s("eventId", "eventType", "sessionId", "accountId", "url", "referrer", "remoteHost"),
    _date("date"),
    Field("attributes", "object"),
    Field("globalContext", "object"),
)
FIELDS: dict[EntityName, dict[str, Field]] = {
    "user": USER_FIELDS,
    "account": ACCOUNT_FIELDS,
    "event": EVENT_FIELDS,
}
#: The key of each kind: ``/users/{identifyId}``, ``/accounts/{id}``.
KEYS: dict[EntityName, str] = {"user": "identifyId", "account": "id", "event": "eventName"}
#: Where free-form attributes live in each kind's body.
CUSTOM: dict[EntityName, str] = {
    "user": "customAttributes",
    "account": "customAttributes",
    "event": "attributes",
}
#: Top-level fields whose values are built by the body's own shape, never a scalar.
STRUCTURAL = frozenset({"location", "customAttributes", "attributes", "globalContext",
                        "propertyKeys"})


def scalar_fields(entity: EntityName) -> dict[str, Field]:
    """The fields one value can fill: top level (minus structure) plus ``location.*``."""
    table = {n: f for n, f in FIELDS[entity].items() if n not in STRUCTURAL}
    if "location" in FIELDS[entity]:
        for name, field in LOCATION_FIELDS.items():
            if name != "coordinates":
                table[f"location.{name}"] = field
        for name, field in COORDINATE_FIELDS.items():
            table[f"location.coordinates.{name}"] = field
    return table


def rest_value(field: Field, value: Any) -> Any:
    """``value`` (already coerced: str, int, float, bool) as PX accepts it for ``field``.

    Raises ``ValueError`` naming the field when PX would refuse or mangle it.
    """
    if field.read_only:
        raise ValueError(f"{field.name} is read-only in PX (PX ignores it); not sent")
    error = _type_error(field, value)
    if error is None and field.enum:
        for option in field.enum:
            if value.upper() == option:
                return option
        error = f"{field.name} must be one of {', '.join(field.enum)}, got {value!r}"
    if error is not None and field.type in ("int64", "int32") and _integral_float(value):
        value = int(value)  # 3.0 is the integer 3, which is what was meant
        error = _type_error(field, value)  # still in range, still epoch ms?
    if error is not None:
        raise ValueError(error)
    return value


def _integral_float(value: Any) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value.is_integer()


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _type_error(field: Field, value: Any, name: str | None = None) -> str | None:
    """Why ``value`` is not of the field's JSON type (enum not checked), or ``None``.

    ``name`` is how the field is named in the message (``location.city``, ``[2].date``).
    """
    kind, name = field.type, name or field.name
    got = _json_type(value)
    if kind == "string":
        ok = got == "string"
    elif kind in ("int64", "int32"):
        ok = got == "integer"
        if ok:
            bound = _INT32 if kind == "int32" else _INT64
            if not -bound <= value < bound:
                return f"{name} is out of range for {kind}: {value}"
            if field.date and not MIN_EPOCH_MS <= value <= MAX_EPOCH_MS:
                return (f"{name}={value} is not epoch milliseconds "
                        "(seconds, microseconds or a bogus value?)")
    elif kind == "number":
        ok = got in ("integer", "number") and math.isfinite(value)
    elif kind == "boolean":
        ok = got == "boolean"
    elif kind == "object":
        ok = got == "object"
    else:
        ok = got == "array"
    if ok:
        return None
    wanted = {"int64": "an integer", "int32": "an integer", "number": "a number",
              "string": "a string", "boolean": "a boolean", "object": "an object",
              "array": "an array"}[kind]
    if field.date:
        wanted = "an integer (epoch milliseconds)"
    return f"{name} must be {wanted}, got {got}" + (
        f" {value!r}" if got in ("integer", "number") else ""
    )


def body_errors(
    entity: EntityName, body: Mapping[str, Any], *, create: bool, prefix: str = ""
) -> list[str]:
    """Every departure of ``body`` from PX's model for ``entity``; empty when valid.

    Stricter than PX in one way, on purpose: a read-only field is an error here, while
    PX ignores it (and the sender never learns its value was lost). ``null`` means "not
    given" for optional fields.
    """
    table = FIELDS[entity]
    errors: list[str] = []
    for required in table.values():
        if not required.required or not (create or required.name in body):
            continue
        value = body.get(required.name)
        if value is None or (isinstance(value, str) and not value.strip()):
            errors.append(f"{prefix}{required.name} is required")
    for name, value in body.items():
        found = table.get(name)
        path = prefix + name
        if found is None:
            errors.append(f"{path} is not a field of a PX {entity}")
            continue
        field = found
        if field.read_only:
            errors.append(f"{path} is read-only in PX (PX would ignore it)")
            continue
        if value is None:
            continue
        error = _type_error(field, value, path)
        if error is not None:
            errors.append(error)
        elif field.enum and value not in field.enum:
            errors.append(f"{path} must be one of {', '.join(field.enum)}, got {value!r}")
        elif name == "propertyKeys":
            if not value or not all(isinstance(k, str) and k for k in value):
                errors.append(f"{path} must be a non-empty list of product keys (strings)")
        elif name == "location":
            errors.extend(_nested_errors(LOCATION_FIELDS, value, path))
        elif name in ("customAttributes", "attributes", "globalContext"):
            errors.extend(_flat_errors(value, path, limit=entity == "event" and
                                       name == "attributes"))
        elif name == "eventName" and len(value) > MAX_EVENT_NAME:
            errors.append(f"{path} is longer than {MAX_EVENT_NAME} characters")
    return errors


def _nested_errors(table: Mapping[str, Field], value: Mapping[str, Any], path: str) -> list[str]:
    errors: list[str] = []
    for name, item in value.items():
        field = table.get(name)
        sub = f"{path}.{name}"
        if field is None:
            errors.append(f"{sub} is not a field of a PX location")
        elif item is None:
            continue
        elif (error := _type_error(field, item, sub)) is not None:
            errors.append(error)
        elif name == "coordinates":
            errors.extend(_nested_errors(COORDINATE_FIELDS, item, sub))
    return errors


def _flat_errors(value: Mapping[str, Any], path: str, *, limit: bool) -> list[str]:
    errors = [
        f"{path}.{key} must be a string, number or boolean (flat), got {_json_type(item)}"
        for key, item in value.items()
        if item is not None and not isinstance(item, (str, bool, int, float))
    ]
    if limit:
        if len(value) > MAX_EVENT_ATTRIBUTES:
            errors.append(f"{path} has {len(value)} properties; at most {MAX_EVENT_ATTRIBUTES}")
        errors.extend(
            f"{path} key of {len(key)} characters is longer than {MAX_ATTRIBUTE_KEY}"
            for key in value
            if len(key) > MAX_ATTRIBUTE_KEY
        )
    return errors

"""Column → PX field mapping: the ``--map`` file, the plan built from it, and rows → bodies.

Everything that can be wrong with the mapping (a target that is not a PX field, a
mapped column missing from the file, two columns feeding one field) is found here,
once, before the first request. Row-level problems are returned per cell so the caller
can report file, row, column and reason.

Mapping file (TOML)::

    ignore = ["Internal notes"]          # columns to skip without a warning

    [columns]                            # CSV column = PX field path
    "User ID" = "identifyId"
    "E-mail" = "email"
    "Plan" = "customAttributes.plan"
    "City" = "location.city"

    [types]                              # PX field path = STRING|NUMBER|BOOLEAN|DATE_TIME
    "customAttributes.seats" = "NUMBER"

Columns not listed under ``[columns]`` whose names are PX field paths map to themselves.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import importlib
import json
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from px_middleware.core.pxmodel import Field, body_errors, rest_value
from px_middleware.tools.loader.fields import Schema
from px_middleware.tools.loader.values import (
    ATTR_TYPES,
    AttrType,
    ValueProblem,
    convert,
    is_empty,
)

#: The column an errors file adds; re-running that file must not warn about it.
ERROR_COLUMN = "error"
_EVENT_ID_NAMESPACE = uuid.UUID("6c1f0a52-6f1e-4d8e-9a57-3d0f5b3c2a10")


class PlanError(ValueError):
    """The mapping cannot work for this file; raised before any request is made."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


@dataclasses.dataclass(frozen=True)
class MappingFile:
    columns: dict[str, str] = dataclasses.field(default_factory=dict)
    types: dict[str, AttrType] = dataclasses.field(default_factory=dict)
    ignore: frozenset[str] = frozenset()


def load_mapping(path: str | Path) -> MappingFile:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanError([f"cannot read mapping file {path}: {exc.strerror}"]) from None
    try:
        data = _toml_loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise PlanError([f"{path}: not valid TOML: {exc}"]) from None
    problems: list[str] = []
    unknown = set(data) - {"columns", "types", "ignore"}
    if unknown:
        problems.append(f"{path}: unknown keys {sorted(unknown)}; use [columns], [types], ignore")
    columns = data.get("columns", {})
    types = data.get("types", {})
    ignore = data.get("ignore", [])
    if not isinstance(columns, dict) or not all(isinstance(v, str) for v in columns.values()):
        problems.append(f"{path}: [columns] must map column names to PX field names (strings)")
        columns = {}
    if not isinstance(types, dict):
        problems.append(f"{path}: [types] must map PX field names to a type")
        types = {}
    for field, attr_type in types.items():
        if attr_type not in ATTR_TYPES:
            problems.append(
                f"{path}: [types] {field} = {attr_type!r}: use one of {', '.join(ATTR_TYPES)}"
            )
    if not isinstance(ignore, list) or not all(isinstance(c, str) for c in ignore):
        problems.append(f"{path}: ignore must be a list of column names")
        ignore = []
    if problems:
        raise PlanError(problems)
    return MappingFile(dict(columns), dict(types), frozenset(ignore))


def _toml_loads(text: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib.loads(text)
    try:  # Python 3.10: the same parser, as a package
        tomli = importlib.import_module("tomli")
    except ImportError:
        raise ValueError("mapping files on Python 3.10 need `pip install tomli`") from None
    result: dict[str, Any] = tomli.loads(text)
    return result


@dataclasses.dataclass(frozen=True)
class Column:
    """One source column feeding one PX field."""

    name: str
    target: tuple[str, ...]  # "location.coordinates.latitude" split on dots
    type: AttrType
    #: The PX field, for its enum and integer rules; ``None`` for custom attributes.
    field: Field | None = None

    @property
    def path(self) -> str:
        return ".".join(self.target)


@dataclasses.dataclass(frozen=True)
class Options:
    """Per-run values added to every body."""

    tz: dt.tzinfo
    product_key: str | None = None
    #: Whether rows may create records (then PX's required-on-create fields are needed).
    create: bool = True


@dataclasses.dataclass(frozen=True)
class Plan:
    schema: Schema
    columns: tuple[Column, ...]
    options: Options
    warnings: tuple[str, ...] = ()

    def build(
        self, ordinal: int, values: Mapping[str, object]
    ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """The request body for one row, and ``(column, reason)`` for every bad cell."""
        body: dict[str, Any] = {}
        problems: list[tuple[str, str]] = []
        for column in self.columns:
            raw = values.get(column.name)
            if is_empty(raw):
                continue
            try:
                value = convert(raw, column.type, self.options.tz)
                if column.field is not None:
                    # Enum in PX's case (female -> FEMALE); 3.5 is not an int64.
                    value = rest_value(column.field, value)
            except (ValueProblem, ValueError) as exc:
                problems.append((column.name, str(exc)))
                continue
            _put(body, column.target, value)
        self._complete(ordinal, body, problems)
        if not problems:
            # The same judgement as the stand-in's (and PX's): nothing PX would refuse.
            for message in body_errors(self.schema.entity, body, create=self.options.create):
                problems.append((self._column_for(message.split(" ", 1)[0]), message))
        return body, problems

    def _complete(
        self, ordinal: int, body: dict[str, Any], problems: list[tuple[str, str]]
    ) -> None:
        schema, key = self.schema, self.schema.key
        required = (key, "identifyId") if schema.kind == "events" else (key,)
        for field in required:
            if field not in body and not any(c == field for c, _ in problems):
                problems.append((self._column_for(field), f"{field} is required"))
        if schema.kind != "events":
            if self.options.product_key:
                body["propertyKeys"] = [self.options.product_key]
            return
        body.setdefault("userType", "USER")  # rows without one are identified users
        if self.options.product_key:
            body["propertyKey"] = self.options.product_key
        if "eventId" not in body and not problems:
            # Stable across re-runs and resumes, so PX can recognise a re-sent event.
            canonical = json.dumps(body, sort_keys=True, separators=(",", ":"))
            body["eventId"] = str(uuid.uuid5(_EVENT_ID_NAMESPACE, f"{ordinal}|{canonical}"))

    def _column_for(self, field: str) -> str:
        return next((c.name for c in self.columns if c.path == field), "(not mapped)")


def _put(body: dict[str, Any], target: tuple[str, ...], value: object) -> None:
    node = body
    for part in target[:-1]:
        node = node.setdefault(part, {})
    node[target[-1]] = value


def build_plan(
    schema: Schema,
    header: Sequence[str],
    mapping: MappingFile | None,
    options: Options,
    remote_types: Mapping[str, AttrType] | None = None,
) -> Plan:
    """Resolve which column feeds which field with which type, or list every problem.

    ``remote_types`` comes from PX's attribute metadata (API name → type). PX's own
    fields have the model's types; a custom attribute takes the mapping file's
    ``[types]``, then PX's metadata, then text.
    """
    mapping = mapping or MappingFile()
    present = set(header)
    problems: list[str] = []
    warnings: list[str] = []
    targets: dict[str, str] = {}  # column -> field path

    for column, target in mapping.columns.items():
        if column not in present:
            near = difflib.get_close_matches(column, header, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            problems.append(f"mapped column {column!r} is not in the file{hint}")
        elif schema.default_type(target) is None:
            problems.append(
                f"column {column!r} maps to {target!r}, which is not a PX {schema.kind} field; "
                f"known: {schema.describe()}"
            )
        elif schema.read_only(target):
            problems.append(
                f"column {column!r} maps to {target!r}, which is read-only in PX: PX would "
                "ignore every value; map another field or list the column under ignore"
            )
        else:
            targets[column] = target
    for column in header:
        if column in mapping.columns or column in mapping.ignore:
            continue
        if schema.read_only(column):
            problems.append(
                f"column {column!r} is {column!r}, which is read-only in PX: PX would ignore "
                "every value; list the column under ignore"
            )
        elif schema.default_type(column) is not None:
            targets[column] = column
        elif column != ERROR_COLUMN:
            warnings.append(f"column {column!r} is not mapped to a PX field and is ignored")

    seen: dict[str, str] = {}
    for column, target in targets.items():
        if target in seen:
            problems.append(f"columns {seen[target]!r} and {column!r} both map to {target!r}")
        seen[target] = column
    for field in mapping.types:
        if schema.default_type(field) is None:
            problems.append(f"[types] names {field!r}, which is not a PX {schema.kind} field")
        elif field not in seen:
            warnings.append(f"[types] {field!r} has no column mapped to it")
    if schema.key not in seen:
        problems.append(
            f"no column maps to {schema.key!r}, the key of every {schema.kind[:-1]}; "
            f"name a column {schema.key!r} or map one in [columns]"
        )
    if not options.product_key:
        field = "propertyKey" if schema.kind == "events" else "propertyKeys"
        problems.append(
            f"PX needs a product key ({field}): set PX_PRODUCT_KEY or --product-key"
        )
    if problems:
        raise PlanError(problems)

    columns = tuple(
        Column(
            name,
            tuple(path.split(".")),
            _resolve_type(schema, path, mapping, remote_types),
            schema.field(path),
        )
        for name, path in targets.items()
    )
    return Plan(schema, columns, options, tuple(warnings))


def _resolve_type(
    schema: Schema,
    path: str,
    mapping: MappingFile,
    remote: Mapping[str, AttrType] | None,
) -> AttrType:
    default = schema.default_type(path)
    assert default is not None  # build_plan only resolves valid paths
    if schema.field(path) is not None:
        return default  # PX's own fields have PX's types, whatever else says
    if path in mapping.types:
        return mapping.types[path]
    name = path.partition(".")[2]
    if remote and name in remote:
        return remote[name]
    return default

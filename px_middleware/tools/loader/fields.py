"""The PX fields a row can fill, per object kind: a view of :mod:`px_middleware.core.pxmodel`.

Field paths are what a mapping file names as targets: a top-level REST field
(``email``), a custom attribute (``customAttributes.plan``), a location field
(``location.city``, ``location.coordinates.latitude``) or, for events, an event
attribute (``attributes.plan``). Types, enums and read-only flags all come from the
one PX model, so the loader judges a row exactly as the stand-in (and PX) does.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from px_middleware.core.pxmodel import CUSTOM, KEYS, EntityName, Field, scalar_fields
from px_middleware.tools.loader.values import AttrType

Kind = Literal["users", "accounts", "events"]
KINDS: tuple[Kind, ...] = ("users", "accounts", "events")


def attr_type(field: Field) -> AttrType:
    """How a cell for ``field`` is parsed (the metadata vocabulary of PX)."""
    if field.date:
        return "DATE_TIME"
    if field.type in ("int64", "int32", "number"):
        return "NUMBER"
    return "BOOLEAN" if field.type == "boolean" else "STRING"


@dataclasses.dataclass(frozen=True)
class Schema:
    kind: Kind
    entity: EntityName
    #: Every scalar field path (``location.*`` included), read-only ones too.
    fields: dict[str, Field]
    #: The field without which a row cannot be sent.
    key: str
    #: Prefix for free-form attributes (``customAttributes`` or ``attributes``).
    custom_prefix: str
    #: Which ``GET /admin/model/{entity}/attributes`` describes this kind, if any.
    metadata_entity: str | None

    def field(self, path: str) -> Field | None:
        return self.fields.get(path)

    def default_type(self, path: str) -> AttrType | None:
        """The built-in type of a field path, ``None`` if the path is not a PX field."""
        head, _, rest = path.partition(".")
        if head == self.custom_prefix and rest:
            return "STRING" if _valid_name(rest) else None
        field = self.fields.get(path)
        return None if field is None else attr_type(field)

    def read_only(self, path: str) -> bool:
        field = self.fields.get(path)
        return field is not None and field.read_only

    def describe(self) -> str:
        writable = [p for p, f in self.fields.items() if not f.read_only and "." not in p]
        extra = f"{self.custom_prefix}.<name>"
        if any(p.startswith("location.") for p in self.fields):
            extra += ", location.<field>"
        return ", ".join(writable) + ", " + extra


def _valid_name(name: str) -> bool:
    return bool(name) and "." not in name and name.strip() == name


def _schema(kind: Kind, entity: EntityName, metadata: str | None) -> Schema:
    return Schema(kind, entity, scalar_fields(entity), KEYS[entity], CUSTOM[entity], metadata)


SCHEMAS: dict[Kind, Schema] = {
    "users": _schema("users", "user", "USER"),
    "accounts": _schema("accounts", "account", "ACCOUNT"),
    "events": _schema("events", "event", None),
}

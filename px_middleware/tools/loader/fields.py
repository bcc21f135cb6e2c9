"""The PX fields a row can fill, per object kind, with their default types.

Field paths are what a mapping file names as targets: a top-level REST field
(``email``), a custom attribute (``customAttributes.plan``), a location field
(``location.city``) or, for events, an event attribute (``attributes.plan``).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from px_middleware.tools.loader.values import AttrType

Kind = Literal["users", "accounts", "events"]
KINDS: tuple[Kind, ...] = ("users", "accounts", "events")

_S: AttrType = "STRING"
_N: AttrType = "NUMBER"
_D: AttrType = "DATE_TIME"

USER_FIELDS: dict[str, AttrType] = {
    "identifyId": _S,
    "email": _S,
    "firstName": _S,
    "lastName": _S,
    "title": _S,
    "role": _S,
    "phone": _S,
    "gender": _S,
    "accountId": _S,
    "subscriptionId": _S,
    "score": _N,
    "numberOfVisits": _N,
    "signUpDate": _D,
    "firstVisitDate": _D,
    "lastSeenDate": _D,
}
ACCOUNT_FIELDS: dict[str, AttrType] = {
    "id": _S,
    "name": _S,
    "industry": _S,
    "plan": _S,
    "website": _S,
    "sfdcId": _S,
    "trackedSubscriptionId": _S,
    "dunsNumber": _S,
    "sicCode": _S,
    "naicsCode": _S,
    "numberOfEmployees": _N,
    "numberOfUsers": _N,
}
EVENT_FIELDS: dict[str, AttrType] = {
    "eventName": _S,
    "identifyId": _S,
    "accountId": _S,
    "date": _D,
    "userType": _S,
    "sessionId": _S,
    "url": _S,
    "referrer": _S,
    "eventId": _S,
}
#: PX's location object; coordinates nest one level deeper.
LOCATION_FIELDS: dict[str, AttrType] = {
    "countryName": _S,
    "countryCode": _S,
    "stateName": _S,
    "stateCode": _S,
    "city": _S,
    "street": _S,
    "postalCode": _S,
    "continent": _S,
    "regionName": _S,
    "timeZone": _S,
    "coordinates.latitude": _N,
    "coordinates.longitude": _N,
}
EVENT_USER_TYPES = frozenset({"USER", "LEAD", "VISITOR"})


@dataclasses.dataclass(frozen=True)
class Schema:
    kind: Kind
    #: Top-level fields and their default types.
    fields: dict[str, AttrType]
    #: The field without which a row cannot be sent.
    key: str
    #: Prefix for free-form attributes (``customAttributes`` or ``attributes``).
    custom_prefix: str
    has_location: bool
    #: Which ``GET /admin/model/{entity}/attributes`` describes this kind, if any.
    metadata_entity: str | None

    def default_type(self, path: str) -> AttrType | None:
        """The built-in type of a field path, ``None`` if the path is not a PX field."""
        head, _, rest = path.partition(".")
        if not rest:
            return self.fields.get(path)
        if head == self.custom_prefix:
            return _S if _valid_name(rest) else None
        if head == "location" and self.has_location:
            return LOCATION_FIELDS.get(rest)
        return None

    def describe(self) -> str:
        extra = f"{self.custom_prefix}.<name>" + (", location.<field>" if self.has_location else "")
        return ", ".join(self.fields) + ", " + extra


def _valid_name(name: str) -> bool:
    return bool(name) and "." not in name and name.strip() == name


SCHEMAS: dict[Kind, Schema] = {
    "users": Schema("users", USER_FIELDS, "identifyId", "customAttributes", True, "user"),
    "accounts": Schema("accounts", ACCOUNT_FIELDS, "id", "customAttributes", True, "account"),
    "events": Schema("events", EVENT_FIELDS, "eventName", "attributes", False, None),
}

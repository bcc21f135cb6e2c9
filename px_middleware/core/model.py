"""Who is on the page: ``User``, ``Account``, ``Identity`` and PX attribute typing.

PX wants numbers unquoted, booleans as booleans and dates as epoch milliseconds UTC.
Coercion happens once, when an identity is turned into PX attributes, and anything
PX cannot store is a ``TypeError``/``ValueError`` that names the attribute, so the
middleware can drop that one attribute (logged, counted) instead of the page.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import math
import operator
import sys
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

#: A value PX can store, after coercion.
PXValue = str | int | float | bool
#: An identity's attributes, coerced: the user's, and the account's (None without one).
Coerced = tuple[dict[str, PXValue], dict[str, PXValue] | None]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
#: Longest string attribute we send; PX truncates or rejects longer values.
MAX_STRING_LENGTH = 4096
_MAX_NUMBER = int(sys.float_info.max)


def to_epoch_ms(value: dt.datetime | dt.date) -> int:
    """Epoch milliseconds UTC. Naive datetimes are taken as UTC; dates as midnight UTC."""
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
    else:
        aware = dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    # Integer arithmetic on the timedelta avoids float rounding of microseconds.
    delta = aware - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _check_range(name: str, value: int | Decimal) -> None:
    """Refuse numbers JavaScript would read as Infinity (beyond the largest double)."""
    if not -_MAX_NUMBER <= value <= _MAX_NUMBER:
        raise ValueError(f"attribute {name!r}: number out of range (beyond ±1.8e308)")


def coerce(name: str, value: Any) -> PXValue | None:
    """Turn one Python value into a PX attribute value; ``None`` means "omit"."""
    if value is None:
        return None
    # Fast path for the exact built-in types most attributes are (every page pays it).
    kind = type(value)
    if (kind is str and len(value) <= MAX_STRING_LENGTH) or kind is bool:
        return value  # type: ignore[no-any-return]
    if isinstance(value, enum.Enum):
        return coerce(name, value.value)
    # bool before int: True is an int in Python but a BOOLEAN in PX.
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        _check_range(name, value)
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"attribute {name!r}: {value!r} is not a finite number")
        return value
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"attribute {name!r}: {value!r} is not a finite number")
        # Range first: float(Decimal("1e400")) is inf, which would fail the whole
        # snippet at render time instead of this one attribute here.
        _check_range(name, value)
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return to_epoch_ms(value)
    if isinstance(value, str):
        if len(value) > MAX_STRING_LENGTH:
            raise ValueError(
                f"attribute {name!r}: string of {len(value)} characters is longer than "
                f"{MAX_STRING_LENGTH}"
            )
        return value
    raise TypeError(
        f"attribute {name!r}: {type(value).__name__} is not a PX type "
        "(use str, int, float, bool, Decimal, date/datetime, Enum or None)"
    )


def _require_id(kind: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"{kind}.id must be a str or int, not {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise ValueError(f"{kind}.id must not be empty")
    return text


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


#: Per class: (Python field, PX API name) of the default attributes. Built once, as
#: ``dataclasses.fields`` and the camelCase conversion cost more than the page's JSON.
_FIELD_NAMES: dict[type, tuple[tuple[str, str], ...]] = {}


def _field_names(cls: type) -> tuple[tuple[str, str], ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = tuple(
            (f.name, _camel(f.name))
            for f in dataclasses.fields(cls)
            if f.name not in ("id", "custom")
        )
        _FIELD_NAMES[cls] = names
    return names


_GETTERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {}


def _getter(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    """Per class: the id and default fields out of an instance's ``__dict__`` at once."""
    getter = _GETTERS.get(cls)
    if getter is None:
        getter = _GETTERS[cls] = operator.itemgetter("id", *(f for f, _ in _field_names(cls)))
    return getter


_DEFAULT_NAMES: dict[type, frozenset[str]] = {}


def _default_names(cls: type) -> frozenset[str]:
    names = _DEFAULT_NAMES.get(cls)
    if names is None:
        names = _DEFAULT_NAMES[cls] = frozenset(api for _, api in _field_names(cls))
    return names


@dataclasses.dataclass(frozen=True)
class _Subject:
    """Shared by ``User`` and ``Account``: id, default fields, custom attributes."""

    id: str
    custom: Mapping[str, Any] = dataclasses.field(default_factory=dict, kw_only=True)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", _require_id(type(self).__name__, self.id))
        # A dict first: the ABC check costs more than the rest of the validation.
        if type(self.custom) is not dict and not isinstance(self.custom, Mapping):
            raise TypeError(f"{type(self).__name__}.custom must be a mapping")
        for key in self.custom:
            if not isinstance(key, str) or not key:
                raise TypeError(f"custom attribute names must be non-empty strings: {key!r}")

    @classmethod
    def default_names(cls) -> frozenset[str]:
        """The PX API names of the default (non-custom) attributes."""
        return _default_names(cls)

    def raw_values(self) -> tuple[Any, ...]:
        """What it was given, flat: its class, id, default fields, custom names, custom
        values. Equal raw values of the same types coerce to equal attributes."""
        custom = self.custom
        return (type(self), *_getter(type(self))(self.__dict__), *custom, *custom.values())

    def attributes(
        self, on_error: Callable[[str, Exception], None] | None = None
    ) -> dict[str, PXValue]:
        """PX API names to coerced values. Bad values raise, or go to ``on_error``."""
        result: dict[str, PXValue] = {"id": self.id}
        items: list[tuple[str, Any]] = [
            (api_name, raw)
            for field, api_name in _field_names(type(self))
            if (raw := getattr(self, field)) is not None  # None means "omit"
        ]
        items.extend(self.custom.items())
        for api_name, raw in items:
            try:
                value = coerce(api_name, raw)
            except (TypeError, ValueError) as exc:
                if on_error is None:
                    raise
                on_error(api_name, exc)
                continue
            if value is not None and api_name != "id":
                result[api_name] = value
        return result


@dataclasses.dataclass(frozen=True, kw_only=True)
class User(_Subject):
    """A PX user. Python names map to PX API names (``first_name`` -> ``firstName``).

    The fields and their PX types are in :mod:`px_middleware.core.pxmodel`. The browser
    SDK takes every one of them flat; the REST body nests the location fields under
    ``location`` and leaves out ``number_of_visits``, which is read-only there.
    """

    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    title: str | None = None
    role: str | None = None
    phone: str | None = None
    gender: str | None = None
    #: ``LEAD``, ``USER``, ``VISITOR`` or ``EMPTY_USER_TYPE`` (any case).
    type: str | None = None
    account_id: str | None = None
    subscription_id: str | None = None
    sfdc_contact_id: str | None = None
    score: float | None = None
    global_unsubscribe: bool | None = None
    #: Read-only in PX's REST API: sent to the browser SDK only.
    number_of_visits: int | None = None
    sign_up_date: dt.datetime | dt.date | None = None
    first_visit_date: dt.datetime | dt.date | None = None
    country_name: str | None = None
    country_code: str | None = None
    state_name: str | None = None
    state_code: str | None = None
    city: str | None = None
    street: str | None = None
    postal_code: str | None = None
    continent: str | None = None
    region_name: str | None = None
    time_zone: str | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Account(_Subject):
    """A PX account (company). ``number_of_employees`` -> ``numberOfEmployees``."""

    name: str | None = None
    industry: str | None = None
    plan: str | None = None
    website: str | None = None
    sfdc_id: str | None = None
    tracked_subscription_id: str | None = None
    duns_number: str | None = None
    sic_code: str | None = None
    naics_code: str | None = None
    parent_group_id: str | None = None
    gs_id: str | None = None
    csm: str | None = None
    number_of_employees: int | None = None
    health_score: int | None = None
    nps: float | None = None
    renewal_date: dt.datetime | dt.date | None = None
    last_seen_date: dt.datetime | dt.date | None = None
    #: Read-only in PX's REST API: sent to the browser SDK only.
    number_of_users: int | None = None
    country_name: str | None = None
    country_code: str | None = None
    state_name: str | None = None
    state_code: str | None = None
    city: str | None = None
    street: str | None = None
    postal_code: str | None = None
    continent: str | None = None
    region_name: str | None = None
    time_zone: str | None = None


class _Factory:
    """The default of ``custom`` in the signature: a new dict per instance."""

    def __repr__(self) -> str:
        return "<factory>"  # as the generated signature shows it


def _fast_init(cls: type[_Subject]) -> None:
    """Give a frozen ``_Subject`` dataclass an ``__init__`` with the generated one's
    signature that fills ``__dict__`` in one step.

    The generated one sets each field through ``object.__setattr__``, the frozen
    way: 29 calls for a ``User``, 4 of its 5 µs, and apps build a ``User`` and an
    ``Account`` for every page. Same parameters and defaults, then ``__post_init__``;
    the generated one stays as ``_dataclass_init`` (tests compare the two).
    """
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields if f.name not in ("id", "custom")]
    if [f.name for f in fields[:2]] != ["id", "custom"] or any(
        f.default is not None for f in fields[2:]
    ):
        raise TypeError(f"{cls.__name__}: fields must be id, custom, then defaults of None")
    source = (
        f"def __init__(self, id, *, custom=_DEFAULT, {', '.join(f'{n}=None' for n in names)}):\n"
        f"    self.__dict__.update(id=id, custom={{}} if custom is _DEFAULT else custom, "
        f"{', '.join(f'{n}={n}' for n in names)})\n"
        "    self.__post_init__()\n"
    )
    namespace: dict[str, Any] = {"_DEFAULT": _Factory()}
    exec(source, namespace)  # as dataclasses builds the one it replaces
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__, init.__annotations__ = cls.__init__.__doc__, cls.__init__.__annotations__
    cls._dataclass_init = cls.__init__  # type: ignore[attr-defined]
    setattr(cls, "__init__", init)  # noqa: B010 - mypy refuses assigning a method


_fast_init(User)
_fast_init(Account)


@dataclasses.dataclass(frozen=True)
class Identity:
    """What ``identify(request)`` returns for a logged-in visitor."""

    user: User
    account: Account | None = None

    def attributes(self, on_error: Callable[[str, Exception], None] | None = None) -> Coerced:
        """The user's and the account's ``attributes(on_error)``."""
        account = self.account
        return (self.user.attributes(on_error),
                None if account is None else account.attributes(on_error))

    def __post_init__(self) -> None:
        if not isinstance(self.user, User):
            raise TypeError(f"Identity.user must be a User, not {type(self.user).__name__}")
        if self.account is not None and not isinstance(self.account, Account):
            raise TypeError(
                f"Identity.account must be an Account, not {type(self.account).__name__}"
            )


def as_identity(value: object) -> Identity | None:
    """Accept what ``identify`` may return: ``Identity``, a bare ``User``, or ``None``."""
    if value is None or isinstance(value, Identity):
        return value
    if isinstance(value, User):
        return Identity(value)
    raise TypeError(
        f"identify() must return Identity, User or None, not {type(value).__name__}"
    )

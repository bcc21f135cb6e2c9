"""PX attribute typing: the coercion table, every rejection and its message, ids, identity.

Epoch values are worked out by hand (or with ``timedelta`` floor division, a different
route from the implementation's), never taken from ``to_epoch_ms`` itself.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import inspect
import json
import math
import re
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from px_middleware import Account, Identity, User
from px_middleware.core.model import MAX_STRING_LENGTH, as_identity, coerce, to_epoch_ms
from px_middleware.core.snippet import js_value

UTC = dt.timezone.utc
DAY_MS = 86_400_000
# 2024-01-02 is day 19724 since 1970-01-01 (54 years incl. 13 leap days, plus one day).
JAN_2_2024_MS = 19_724 * DAY_MS


class Plan(enum.Enum):
    PRO = "pro"


class Seats(enum.IntEnum):
    TEN = 10


class Flag(enum.Enum):
    ON = True


class Weird(enum.Enum):
    PAIR = (1, 2)


def test_epoch_constant_is_right() -> None:
    assert JAN_2_2024_MS == 1_704_153_600_000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text", "text"),
        ("", ""),
        ("é🎉", "é🎉"),
        ("x" * MAX_STRING_LENGTH, "x" * MAX_STRING_LENGTH),
        (0, 0),
        (-7, -7),
        (2**53 + 1, 2**53 + 1),
        (1.5, 1.5),
        (-0.0, -0.0),
        (True, True),
        (False, False),
        (Decimal("2"), 2),
        (Decimal("2.000"), 2),
        (Decimal("1.25"), 1.25),
        (Decimal("-1E+3"), -1000),
        (Plan.PRO, "pro"),
        (Seats.TEN, 10),
        (Flag.ON, True),
        (dt.date(2024, 1, 2), JAN_2_2024_MS),  # a date is midnight UTC
        (dt.datetime(2024, 1, 2, 0, 0, 0, 999, tzinfo=UTC), JAN_2_2024_MS),  # sub-ms dropped
        # Naive datetimes are taken as UTC (documented rule: servers should run in UTC;
        # guessing the local zone would differ between machines).
        (dt.datetime(2024, 1, 2, 3, 4, 5, 678_901), JAN_2_2024_MS + 11_045_678),
        # The same instant written in India Standard Time.
        (dt.datetime(2024, 1, 2, 5, 30, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
         JAN_2_2024_MS),
        (dt.datetime(2024, 1, 1, 19, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5))),
         JAN_2_2024_MS),
        (dt.date(1969, 7, 20), -165 * DAY_MS),  # before the epoch
        (dt.date(1970, 1, 1), 0),
    ],
)
def test_coercion_table(value: Any, expected: Any) -> None:
    result = coerce("attr", value)
    assert result == expected
    assert type(result) is type(expected)  # bool stays bool, int stays int, 2.0 never


def test_bool_and_int_stay_distinct() -> None:
    assert coerce("flag", True) is True
    assert type(coerce("n", 1)) is int
    assert js_value(coerce("flag", True)) == "true"
    assert js_value(coerce("n", 1)) == "1"


def test_none_means_omit() -> None:
    assert coerce("attr", None) is None
    user = User(id="u", email=None, custom={"plan": None, "seats": 0, "trial": False})
    assert user.attributes() == {"id": "u", "seats": 0, "trial": False}


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (float("nan"), ValueError, r"attribute 'attr': nan is not a finite number"),
        (float("inf"), ValueError, r"attribute 'attr': inf is not a finite number"),
        (-float("inf"), ValueError, r"attribute 'attr': -inf is not a finite number"),
        (Decimal("NaN"), ValueError, r"attribute 'attr': Decimal\('NaN'\) is not a finite"),
        (Decimal("sNaN"), ValueError, r"attribute 'attr': Decimal\('sNaN'\) is not a finite"),
        (Decimal("-Infinity"), ValueError, r"Decimal\('-Infinity'\) is not a finite number"),
        (Decimal("1.5E+400"), ValueError, r"attribute 'attr': number out of range"),
        (Decimal("1E+400"), ValueError, r"attribute 'attr': number out of range"),
        (10**400, ValueError, r"attribute 'attr': number out of range"),
        (-(10**309), ValueError, r"attribute 'attr': number out of range"),
        ("x" * (MAX_STRING_LENGTH + 1), ValueError,
         r"attribute 'attr': string of 4097 characters is longer than 4096"),
        ({"a": 1}, TypeError, r"attribute 'attr': dict is not a PX type"),
        ([1, 2], TypeError, r"attribute 'attr': list is not a PX type"),
        ((1, 2), TypeError, r"attribute 'attr': tuple is not a PX type"),
        ({1}, TypeError, r"attribute 'attr': set is not a PX type"),
        (b"bytes", TypeError, r"attribute 'attr': bytes is not a PX type"),
        (bytearray(b"x"), TypeError, r"attribute 'attr': bytearray is not a PX type"),
        (object(), TypeError, r"attribute 'attr': object is not a PX type"),
        (dt.time(12, 0), TypeError, r"attribute 'attr': time is not a PX type"),
        (dt.timedelta(1), TypeError, r"attribute 'attr': timedelta is not a PX type"),
        (1 + 2j, TypeError, r"attribute 'attr': complex is not a PX type"),
        (Weird.PAIR, TypeError, r"attribute 'attr': tuple is not a PX type"),
    ],
)
def test_rejections_name_the_attribute(value: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        coerce("attr", value)


def test_largest_finite_number_is_still_accepted() -> None:
    assert coerce("n", int(1.7976931348623157e308)) == int(1.7976931348623157e308)
    assert coerce("n", 1.7976931348623157e308) == 1.7976931348623157e308


# -- ids -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "expected"), [(42, "42"), (0, "0"), ("u-1", "u-1"),
                                               ("é 1", "é 1")])
def test_ids_are_strings_ints_become_strings(raw: Any, expected: str) -> None:
    assert User(id=raw).id == expected
    assert Account(id=raw).id == expected
    assert User(id=raw).attributes()["id"] == expected


@pytest.mark.parametrize(
    ("raw", "error", "message"),
    [
        ("", ValueError, r"User.id must not be empty"),
        ("  \t", ValueError, r"User.id must not be empty"),
        (True, TypeError, r"User.id must be a str or int, not bool"),
        (1.0, TypeError, r"User.id must be a str or int, not float"),
        (None, TypeError, r"User.id must be a str or int, not NoneType"),
        (b"u", TypeError, r"User.id must be a str or int, not bytes"),
    ],
)
def test_bad_ids_are_refused(raw: Any, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        User(id=raw)
    with pytest.raises(error, match=message.replace("User", "Account")):
        Account(id=raw)


def test_custom_attributes_must_be_a_mapping_with_string_names() -> None:
    with pytest.raises(TypeError, match=r"User\.custom must be a mapping"):
        User(id="u", custom=[("a", 1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="custom attribute names must be non-empty strings"):
        User(id="u", custom={1: "x"})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="custom attribute names must be non-empty strings"):
        Account(id="a", custom={"": "x"})


# -- attributes() -----------------------------------------------------------------------------

# -- construction: ours against the dataclass-generated __init__ ----------------------------
_ANY = st.one_of(st.none(), st.text(max_size=5), st.integers(), st.booleans(),
                 st.dates(), st.floats(allow_nan=False))


def _generated(cls: type[Any], *args: Any, **kwargs: Any) -> Any:
    obj = object.__new__(cls)
    cls._dataclass_init(obj, *args, **kwargs)
    return obj


@pytest.mark.parametrize("cls", [User, Account])
def test_construction_has_the_generated_signature(cls: type[Any]) -> None:
    ours, generated = inspect.signature(cls), inspect.signature(cls._dataclass_init)
    assert f"(self, {str(ours)[1:]}" == str(generated)


@settings(max_examples=200)
@given(st.sampled_from([User, Account]), st.data())
def test_construction_gives_what_the_generated_init_gives(cls: type[Any], data: Any) -> None:
    """Every field, its default, a fresh ``custom`` dict each time, and the same
    refusals (``__post_init__``) as the frozen dataclass's own ``__init__``."""
    names = [f.name for f in dataclasses.fields(cls)][2:]
    kwargs = data.draw(st.dictionaries(st.sampled_from(names), _ANY, max_size=6))
    if data.draw(st.booleans()):
        kwargs["custom"] = data.draw(st.one_of(
            st.dictionaries(st.text(max_size=3), _ANY, max_size=3), st.integers()))
    ident = data.draw(st.one_of(st.text(max_size=3), st.integers(), st.none()))
    try:
        expected = _generated(cls, ident, **kwargs)
    except (TypeError, ValueError) as exc:
        with pytest.raises(type(exc), match="^" + re.escape(str(exc)) + "$"):
            cls(ident, **kwargs)
        return
    got = cls(ident, **kwargs)
    assert got == expected and got.__dict__ == expected.__dict__
    assert cls(ident).custom is not cls(ident).custom
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.id = "other"


def test_default_fields_use_px_api_names() -> None:
    user = User(
        id="u", email="e@x.io", first_name="Ada", last_name="L", title="CTO", role="admin",
        phone="1", gender="f", account_id="a", subscription_id="s", score=1.5,
        number_of_visits=2, sign_up_date=dt.date(2024, 1, 2), first_visit_date=dt.date(1970, 1, 1),
        country_name="FR", state_name="IDF", city="Paris",
    )
    assert user.attributes() == {
        "id": "u", "email": "e@x.io", "firstName": "Ada", "lastName": "L", "title": "CTO",
        "role": "admin", "phone": "1", "gender": "f", "accountId": "a", "subscriptionId": "s",
        "score": 1.5, "numberOfVisits": 2, "signUpDate": JAN_2_2024_MS, "firstVisitDate": 0,
        "countryName": "FR", "stateName": "IDF", "city": "Paris",
    }
    account = Account(
        id="a", name="Acme", industry="Tools", plan="pro", website="https://acme.test",
        sfdc_id="0015", tracked_subscription_id="t", duns_number="d", sic_code="s",
        naics_code="n", number_of_employees=10, number_of_users=3, country_name="US",
        state_name="CA", city="SF",
    )
    assert account.attributes() == {
        "id": "a", "name": "Acme", "industry": "Tools", "plan": "pro",
        "website": "https://acme.test", "sfdcId": "0015", "trackedSubscriptionId": "t",
        "dunsNumber": "d", "sicCode": "s", "naicsCode": "n", "numberOfEmployees": 10,
        "numberOfUsers": 3, "countryName": "US", "stateName": "CA", "city": "SF",
    }


def test_custom_names_are_sent_as_given() -> None:
    user = User(id="u", custom={"plan_tier": "gold", "isBeta": True, "id": "ignored"})
    assert user.attributes() == {"id": "u", "plan_tier": "gold", "isBeta": True}


def test_bad_attribute_raises_without_a_callback() -> None:
    user = User(id="u", score=float("nan"))
    with pytest.raises(ValueError, match="attribute 'score'"):
        user.attributes()


def test_bad_attributes_go_to_the_callback_and_the_rest_is_kept() -> None:
    seen: list[tuple[str, str]] = []
    user = User(id="u", email="e@x.io", score=float("inf"),
                custom={"tags": ["a"], "ok": 1, "blob": b"x"})
    result = user.attributes(lambda name, exc: seen.append((name, type(exc).__name__)))
    assert result == {"id": "u", "email": "e@x.io", "ok": 1}
    assert seen == [("score", "ValueError"), ("tags", "TypeError"), ("blob", "TypeError")]


# -- Identity ---------------------------------------------------------------------------------

def test_identity_checks_its_parts() -> None:
    with pytest.raises(TypeError, match=r"Identity\.user must be a User, not Account"):
        Identity(Account(id="a"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Identity\.account must be an Account, not User"):
        Identity(User(id="u"), User(id="v"))  # type: ignore[arg-type]


def test_as_identity_accepts_what_identify_may_return() -> None:
    user = User(id="u")
    assert as_identity(None) is None
    assert as_identity(user) == Identity(user)
    identity = Identity(user, Account(id="a"))
    assert as_identity(identity) is identity
    with pytest.raises(TypeError, match="identify\\(\\) must return Identity, User or None"):
        as_identity({"id": "u"})


# -- round trips through the page ----------------------------------------------------------------

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
_ZONES = st.sampled_from([UTC, dt.timezone(dt.timedelta(hours=-11)),
                          dt.timezone(dt.timedelta(hours=13, minutes=45))])


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(
        st.booleans(),
        st.integers(-(2**63), 2**63),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=200),
        st.datetimes(timezones=_ZONES),
        st.datetimes(),
        st.dates(),
        st.decimals(allow_nan=False, allow_infinity=False, places=3,
                    min_value=-(10**12), max_value=10**12),
    )
)
def test_coerced_values_round_trip_through_the_page(value: Any) -> None:
    """What the browser's JSON.parse sees equals PX's reading of the Python value."""
    decoded = json.loads(js_value({"v": coerce("v", value)}))["v"]
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        assert decoded == (aware - _EPOCH) // dt.timedelta(milliseconds=1)
    elif isinstance(value, dt.date):
        assert decoded == (value - dt.date(1970, 1, 1)).days * DAY_MS
    elif isinstance(value, Decimal):
        assert math.isclose(decoded, float(value)) or decoded == float(value)
        assert isinstance(decoded, int) == (value == value.to_integral_value())
    else:
        assert decoded == value
        assert type(decoded) is type(value)


def test_to_epoch_ms_floors_sub_millisecond_instants_before_1970() -> None:
    # -0.5 ms is inside the millisecond that starts at -1 ms, as JavaScript's Date sees it.
    assert to_epoch_ms(dt.datetime(1969, 12, 31, 23, 59, 59, 999_500, tzinfo=UTC)) == -1
    assert to_epoch_ms(dt.datetime(1970, 1, 1, 0, 0, 0, 999, tzinfo=UTC)) == 0


# -- REST bodies from the one PX model ----------------------------------------------------------

def _bodies(identity: Identity) -> tuple[dict[str, Any], dict[str, Any] | None, list[str]]:
    from px_middleware.config import PXConfig
    from px_middleware.core.events import upsert_bodies

    dropped: list[str] = []
    config = PXConfig(product_key="AP-IDENTITY000-2", api_key="k")
    user, account = upsert_bodies(
        config, identity, on_error=lambda name, exc: dropped.append(f"{name}: {exc}")
    )
    return user, account, dropped


def test_rest_user_nests_location_and_keeps_custom_attributes_apart() -> None:
    user, _, dropped = _bodies(Identity(User(
        id="u", city="Paris", country_name="France", country_code="FR", time_zone="CET",
        email="e@x.io", custom={"city_tier": 1},
    )))
    assert dropped == []
    assert user == {
        "identifyId": "u", "propertyKeys": ["AP-IDENTITY000-2"], "email": "e@x.io",
        "location": {"countryName": "France", "countryCode": "FR", "city": "Paris",
                     "timeZone": "CET"},
        "customAttributes": {"city_tier": 1},
    }


@pytest.mark.parametrize(
    ("user", "field", "sent"),
    [
        (User(id="u", gender="female"), "gender", "FEMALE"),
        (User(id="u", gender="Other"), "gender", "OTHER"),
        (User(id="u", type="visitor"), "type", "VISITOR"),
        (User(id="u", score=3.0), "score", 3),  # an integral float is the integer
        (User(id="u", score=Decimal("4")), "score", 4),  # type: ignore[arg-type]
        (User(id="u", global_unsubscribe=True), "globalUnsubscribe", True),
    ],
)
def test_rest_values_are_sent_as_px_wants_them(user: User, field: str, sent: Any) -> None:
    body, _, dropped = _bodies(Identity(user))
    assert dropped == [] and body[field] == sent and type(body[field]) is type(sent)


@pytest.mark.parametrize(
    ("user", "message"),
    [
        (User(id="u", gender="f"), "gender must be one of MALE, FEMALE, OTHER, EMPTY_GENDER"),
        (User(id="u", type="admin"), "type must be one of"),
        (User(id="u", score=3.5), "score must be an integer"),
        (User(id="u", score=2.0**63), "score is out of range"),
        (User(id="u", number_of_visits=3), "numberOfVisits is read-only in PX"),
        (User(id="u", email=7), "email must be a string"),  # type: ignore[arg-type]
        (User(id="u", global_unsubscribe="no"), "globalUnsubscribe must be a boolean"),  # type: ignore[arg-type]
    ],
)
def test_values_px_would_refuse_or_ignore_are_dropped_one_by_one(user: User, message: str) -> None:
    body, _, dropped = _bodies(Identity(dataclasses.replace(user, first_name="Ada")))
    assert len(dropped) == 1 and message in dropped[0]
    assert body["firstName"] == "Ada"  # the rest of the user is still sent


def test_rest_account_drops_read_only_and_checks_integers() -> None:
    _, account, dropped = _bodies(Identity(User(id="u"), Account(
        id="a", name="A", number_of_users=4, number_of_employees=12.5,  # type: ignore[arg-type]
        health_score=80,
        nps=7.5, renewal_date=dt.date(2024, 1, 2), city="Oslo",
    )))
    assert account == {
        "id": "a", "propertyKeys": ["AP-IDENTITY000-2"], "name": "A", "healthScore": 80,
        "nps": 7.5, "renewalDate": JAN_2_2024_MS, "location": {"city": "Oslo"},
    }
    assert [d.split(":")[0] for d in dropped] == ["numberOfEmployees", "numberOfUsers"]


def test_the_snippet_still_gets_the_browser_sdks_flat_attributes() -> None:
    """The SDK's identify takes default attributes flat, numberOfVisits included."""
    user = User(id="u", city="Paris", number_of_visits=3, score=3.5)
    assert user.attributes() == {"id": "u", "city": "Paris", "numberOfVisits": 3, "score": 3.5}


def test_every_dataclass_field_is_in_the_px_model() -> None:
    from px_middleware.core.pxmodel import ACCOUNT_FIELDS, LOCATION_FIELDS, USER_FIELDS

    for cls, table in ((User, USER_FIELDS), (Account, ACCOUNT_FIELDS)):
        unknown = cls.default_names() - set(table) - set(LOCATION_FIELDS)
        assert unknown == set(), f"{cls.__name__}: {unknown}"

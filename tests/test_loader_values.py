"""Accepted and rejected cell values: the loader's parsing rules as tables."""

from __future__ import annotations

import datetime as dt

import pytest

from px_middleware.tools.loader.values import (
    ValueProblem,
    convert,
    is_empty,
    parse_bool,
    parse_date,
    parse_number,
    parse_string,
    timezone,
)

UTC = dt.timezone.utc
BERLIN = timezone("Europe/Berlin")
# 2024-03-01T09:30:00Z
T = 1_709_285_400_000


@pytest.mark.parametrize(
    ("value", "tz", "expected"),
    [
        ("2024-03-01T09:30:00Z", UTC, T),
        ("2024-03-01T09:30:00z", UTC, T),
        ("2024-03-01T09:30:00+00:00", UTC, T),
        ("2024-03-01T10:30:00+01:00", UTC, T),
        ("2024-03-01 09:30:00", UTC, T),
        ("2024-03-01T09:30:00.000", UTC, T),
        ("2024-03-01T09:30:00.123Z", UTC, T + 123),
        ("2024-03-01", UTC, T - (9 * 3600 + 30 * 60) * 1000),
        # Naive values are wall-clock time in --timezone (Berlin is UTC+1 in March)...
        ("2024-03-01T10:30:00", BERLIN, T),
        # ...but an explicit offset wins over --timezone.
        ("2024-03-01T09:30:00Z", BERLIN, T),
        ("2024-07-01T12:00:00", BERLIN, 1_719_828_000_000),  # summer time, UTC+2
        (" 2024-03-01T09:30:00Z ", UTC, T),
        # Epoch: exactly 10 digits are seconds, exactly 13 are milliseconds.
        ("1709285400", UTC, T),
        ("1709285400000", UTC, T),
        (1709285400, UTC, T),
        (1709285400123, UTC, T + 123),
        ("1709285400", BERLIN, T),  # epochs are absolute, the zone does not apply
    ],
)
def test_dates_accepted(value: object, tz: dt.tzinfo, expected: int) -> None:
    assert parse_date(value, tz) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("2024-13-01", "not a date"),
        ("2024-02-30", "not a date"),
        ("03/01/2024", "not a date"),
        ("1 March 2024", "not a date"),
        ("yesterday", "not a date"),
        ("20240301", "ambiguous"),  # ISO basic format or an epoch? refuse to guess
        ("170928540", "ambiguous"),  # 9 digits
        ("17092854000", "ambiguous"),  # 11 digits
        ("1709285400000000", "ambiguous"),  # microseconds
        (1709285400000000, "ambiguous"),
        ("-1709285400", "not a date"),
        (-1, "not a valid epoch"),
        ("1709285400.5", "not a date"),
        (1709285400.0, "not a date"),
        (True, "not a date"),
        ("2024-03-31T02:30:00", "does not exist"),  # skipped by the DST change in Berlin
    ],
)
def test_dates_rejected(value: object, reason: str) -> None:
    with pytest.raises(ValueProblem, match=reason):
        parse_date(value, BERLIN)


def test_ambiguous_fall_back_time_takes_the_first_occurrence() -> None:
    # 02:30 happens twice on 2024-10-27 in Berlin; fold=0 is the summer-time one.
    assert parse_date("2024-10-27T02:30:00", BERLIN) == parse_date("2024-10-27T00:30:00Z", UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("42", 42),
        ("-7", -7),
        ("+7", 7),
        ("3.5", 3.5),
        ("-0.25", -0.25),
        (".5", 0.5),
        ("5.", 5.0),
        ("1e3", 1000.0),
        ("2.5E-2", 0.025),
        (" 12 ", 12),
        ("12345678901234567890", 12345678901234567890),
        (12, 12),
        (1.5, 1.5),
    ],
)
def test_numbers_accepted(value: object, expected: float) -> None:
    result = parse_number(value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    "value",
    [
        "1,000",
        "1 000",
        "1_000",
        "NaN",
        "nan",
        "inf",
        "-Infinity",
        "0x10",
        "12abc",
        "€12",
        "12%",
        "\u0661\u0662",  # Arabic-Indic digits: int() would take them
        "1e999",
        "",
        "-",
        ".",
        True,
        float("nan"),
        float("inf"),
        [1],
    ],
)
def test_numbers_rejected(value: object) -> None:
    with pytest.raises(ValueProblem):
        parse_number(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("True", True),
        ("1", True),
        ("false", False),
        ("FALSE", False),
        ("0", False),
        (" false ", False),
        (True, True),
        (False, False),
        (1, True),
        (0, False),
    ],
)
def test_booleans_accepted(value: object, expected: bool) -> None:
    assert parse_bool(value) is expected


@pytest.mark.parametrize(
    "value", ["yes", "no", "y", "n", "t", "f", "on", "off", "2", "-1", "truee", "", 2, 1.0]
)
def test_booleans_rejected(value: object) -> None:
    with pytest.raises(ValueProblem, match="not a boolean"):
        parse_bool(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc", "abc"),
        (" padded ", " padded "),
        (42, "42"),
        (1.0, "1"),
        (1.5, "1.5"),
        (True, "true"),
    ],
)
def test_strings(value: object, expected: str) -> None:
    assert parse_string(value) == expected


def test_strings_reject_json_containers() -> None:
    with pytest.raises(ValueProblem, match="expected text"):
        parse_string({"a": 1})


@pytest.mark.parametrize(("value", "empty"), [("", True), ("  ", True), (None, True), ("0", False)])
def test_empty_cells_mean_omitted(value: object, empty: bool) -> None:
    assert is_empty(value) is empty


def test_convert_dispatches_on_type() -> None:
    assert convert("7", "NUMBER", UTC) == 7
    assert convert("7", "STRING", UTC) == "7"
    assert convert("1", "BOOLEAN", UTC) is True
    assert convert("1709285400", "DATE_TIME", UTC) == T


def test_unknown_timezone_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown time zone"):
        timezone("Mars/Olympus_Mons")
    assert timezone("utc") is UTC

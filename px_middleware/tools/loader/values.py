"""Strict conversion of cell values into the JSON types PX stores.

A bulk load that guesses wrong corrupts thousands of records at once, so every parser
here rejects anything it cannot read unambiguously (``"1,000"``, ``"NaN"``, ``"yes"``,
an 8-digit number as a date) and says why in a message meant for the person fixing
the file. Cells arrive as strings from CSV and as JSON scalars from JSONL.

Date rule (the README's "Bulk load" section states it for users):

* all digits, exactly 10 of them: epoch **seconds**; exactly 13: epoch **milliseconds**;
  any other all-digit value is rejected as ambiguous (``20240102``, ``1700000000000000``);
* anything else must be ISO-8601 (``2024-03-01``, ``2024-03-01T09:30:00``,
  ``2024-03-01 09:30:00+01:00``, ``...Z``); values without an offset are local time in
  the ``--timezone`` zone (default UTC), a date alone is midnight there;
* a local time that does not exist (skipped by a DST change) is rejected.

Dates go out as epoch milliseconds (JSON integers), which is what PX stores.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Literal
from zoneinfo import ZoneInfo

AttrType = Literal["STRING", "NUMBER", "BOOLEAN", "DATE_TIME"]
ATTR_TYPES: tuple[AttrType, ...] = ("STRING", "NUMBER", "BOOLEAN", "DATE_TIME")
#: What a converted value can be in the request body.
JSONScalar = str | int | float | bool

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MS = dt.timedelta(milliseconds=1)
# Plain decimal notation only: no thousands separators, no hex, no "_" (which int()
# and float() would both accept), no nan/inf.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
_TRUE = frozenset({"true", "1"})
_FALSE = frozenset({"false", "0"})


class ValueProblem(ValueError):
    """A cell that cannot be converted; the message is the reason shown to the user."""


def is_empty(value: object) -> bool:
    """Empty cells (and JSON nulls) mean "leave this attribute out", never "clear it"."""
    return value is None or (isinstance(value, str) and not value.strip())


def parse_string(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        # JSONL ids are often numbers; a float id like 1.0 would be a silent surprise.
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return repr(value)
    raise ValueProblem(f"expected text, got a JSON {type(value).__name__}")


def parse_number(value: object) -> int | float:
    if isinstance(value, bool):
        raise ValueProblem(f"expected a number, got the boolean {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueProblem(f"{value!r} is not a finite number")
        return value
    if not isinstance(value, str):
        raise ValueProblem(f"expected a number, got a JSON {type(value).__name__}")
    text = value.strip()
    if not _NUMBER.fullmatch(text):
        hint = " (no thousands separators)" if "," in text else ""
        raise ValueProblem(f"{value!r} is not a number{hint}")
    if _INTEGER.fullmatch(text):
        return int(text)
    number = float(text)
    if not math.isfinite(number):
        raise ValueProblem(f"{value!r} is out of range")
    return number


def parse_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValueProblem(f"{value!r} is not a boolean (use true/false or 1/0)")


def parse_date(value: object, tz: dt.tzinfo) -> int:
    """Epoch milliseconds (UTC) for an ISO-8601 string or an unambiguous epoch number."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueProblem(f"{value!r} is not a date (ISO-8601, or epoch seconds/milliseconds)")
    text = str(value).strip()
    if text.isdigit() and text.isascii():
        if len(text) == 10:
            return int(text) * 1000
        if len(text) == 13:
            return int(text)
        raise ValueProblem(
            f"{text!r} is ambiguous: epoch values must have 10 digits (seconds) or "
            "13 digits (milliseconds); write other dates as ISO-8601"
        )
    if isinstance(value, int):  # a negative JSON number
        raise ValueProblem(f"{value!r} is not a valid epoch timestamp")
    try:
        # Python 3.10's fromisoformat does not know "Z".
        parsed = dt.datetime.fromisoformat(
            text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
        )
    except ValueError:
        raise ValueProblem(
            f"{text!r} is not a date (ISO-8601 like 2024-03-01T09:30:00, "
            "or epoch seconds/milliseconds)"
        ) from None
    if parsed.tzinfo is None:
        parsed = _localize(parsed, tz, text)
    return (parsed - _EPOCH) // _MS


def _localize(naive: dt.datetime, tz: dt.tzinfo, text: str) -> dt.datetime:
    aware = naive.replace(tzinfo=tz)
    # A wall-clock time inside a DST gap maps to a different wall-clock time on the way
    # back; silently shifting it by an hour would be a wrong timestamp.
    roundtrip = aware.astimezone(dt.timezone.utc).astimezone(tz)
    if roundtrip.replace(tzinfo=None) != naive:
        raise ValueProblem(f"{text!r} does not exist in {tz} (skipped by a DST change)")
    return aware


def convert(value: object, attr_type: AttrType, tz: dt.tzinfo) -> JSONScalar:
    if attr_type == "NUMBER":
        return parse_number(value)
    if attr_type == "BOOLEAN":
        return parse_bool(value)
    if attr_type == "DATE_TIME":
        return parse_date(value, tz)
    return parse_string(value)


def timezone(name: str) -> dt.tzinfo:
    """``--timezone`` value to a tzinfo; "UTC" needs no tz database."""
    if name.upper() in ("UTC", "Z"):
        return dt.timezone.utc
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError) as exc:  # ZoneInfoNotFoundError is a KeyError
        raise ValueError(f"unknown time zone {name!r} (an IANA name like Europe/Berlin)") from exc

"""Stream records from a CSV or JSONL file, one at a time, in constant memory.

Each record carries a stable ``ordinal`` (its position among the file's records,
blank lines included) that ``--resume`` counts in, and a ``row`` that people see:
for CSV the spreadsheet row (the header is row 1, so the first record is row 2), for
JSONL the line number. JSONL objects are flattened to dotted keys
(``{"location": {"city": "Paris"}}`` becomes ``location.city``) so one mapping
works for both formats; the first object's keys stand in for a CSV header.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal

Format = Literal["csv", "jsonl"]
_JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")

# Very wide cells (long descriptions) are legal; the stdlib default of 128 KiB is not.
csv.field_size_limit(16 * 1024 * 1024)


class SourceError(ValueError):
    """The file cannot be read as a whole (missing, wrong encoding, no header)."""


@dataclasses.dataclass(frozen=True)
class Record:
    ordinal: int
    row: int
    values: dict[str, object]
    #: The original cells (CSV) or object (JSONL), written back to the errors file.
    raw: list[str] | dict[str, Any] | str
    #: Set when the record as a whole is unusable (bad JSON, too many cells).
    problem: str | None = None


def detect_format(path: str | Path) -> Format:
    return "jsonl" if str(path).lower().endswith(_JSONL_SUFFIXES) else "csv"


class Source:
    """An open input file. ``header`` is known right after construction."""

    def __init__(self, path: str | Path, fmt: Format | None = None) -> None:
        self.path = Path(path)
        self.format: Format = fmt or detect_format(path)
        try:
            self._binary: BinaryIO = open(self.path, "rb")  # noqa: SIM115 (closed in close())
        except OSError as exc:
            raise SourceError(f"cannot open {path}: {exc.strerror}") from None
        self.size = os.fstat(self._binary.fileno()).st_size
        self._text = io.TextIOWrapper(self._binary, encoding="utf-8-sig", newline="")
        self.header: list[str] = []
        self._first: dict[str, Any] | None = None
        self._blank_before_first = 0
        self._consumed = False
        try:
            self._read_header()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._text.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def position(self) -> float:
        """How far into the file reading has got, 0..1 (for progress and ETA)."""
        if self.size == 0 or self._binary.closed:
            return 1.0
        return min(self._binary.tell() / self.size, 1.0)

    def _read_header(self) -> None:
        if self.format == "csv":
            self._csv = csv.reader(self._text)
            try:
                self.header = next(self._csv)
            except StopIteration:
                raise SourceError(f"{self.path} is empty; expected a header row") from None
            except (UnicodeDecodeError, csv.Error) as exc:
                raise SourceError(f"{self.path}: cannot read the header: {exc}") from None
            if len(set(self.header)) != len(self.header):
                dupes = sorted({c for c in self.header if self.header.count(c) > 1})
                raise SourceError(f"{self.path}: duplicate column names {dupes}")
            return
        # JSONL: the first object's keys are the "header"; keep that object for records().
        for line in self._text:
            if line.strip():
                try:
                    first = json.loads(line)
                except ValueError as exc:
                    raise SourceError(f"{self.path}: line 1 is not JSON: {exc}") from None
                if not isinstance(first, dict):
                    raise SourceError(f"{self.path}: expected one JSON object per line")
                self._first = first
                self.header = list(flatten(first))
                return
            self._blank_before_first += 1
        raise SourceError(f"{self.path} has no records")

    def records(self, start: int = 0) -> Iterator[Record]:
        """Records with ``ordinal >= start``; earlier ones are skipped without parsing."""
        if self._consumed:
            raise RuntimeError("records() can be iterated once per Source")
        self._consumed = True
        try:
            if self.format == "csv":
                yield from self._csv_records(start)
            else:
                yield from self._jsonl_records(start)
        except UnicodeDecodeError as exc:
            raise SourceError(f"{self.path} is not UTF-8 text: {exc}") from None
        except csv.Error as exc:
            raise SourceError(f"{self.path}: CSV error: {exc}") from None

    def _csv_records(self, start: int) -> Iterator[Record]:
        header, width = self.header, len(self.header)
        for ordinal, cells in enumerate(self._csv):
            if ordinal < start or not cells:
                continue
            problem = None
            if len(cells) > width:
                problem = f"row has {len(cells)} cells but the header has {width}"
            # Fewer cells than columns: spreadsheets drop trailing empties; they are empty.
            values: dict[str, object] = dict(zip(header, cells, strict=False))
            yield Record(ordinal, ordinal + 2, values, cells, problem)

    def _jsonl_records(self, start: int) -> Iterator[Record]:
        ordinal = self._blank_before_first
        if self._first is not None:
            if ordinal >= start:
                yield Record(ordinal, ordinal + 1, flatten(self._first), self._first)
            ordinal += 1
        for line in self._text:
            current, ordinal = ordinal, ordinal + 1
            if current < start or not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                yield Record(current, current + 1, {}, line.rstrip("\r\n"), f"not JSON: {exc}")
                continue
            if not isinstance(obj, dict):
                yield Record(current, current + 1, {}, line.rstrip("\r\n"), "not a JSON object")
                continue
            yield Record(current, current + 1, flatten(obj), obj)


def flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out

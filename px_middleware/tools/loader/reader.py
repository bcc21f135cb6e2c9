"""Stream records from a CSV or JSONL file, one at a time, in constant memory.

Each record carries a stable ``ordinal`` (its position among the file's records,
blank lines included) that ``--resume`` counts in, and a ``row`` that people see:
for CSV the spreadsheet row (the header is row 1, so the first record is row 2), for
JSONL the line number. JSONL objects are flattened to dotted keys
(``{"location": {"city": "Paris"}}`` becomes ``location.city``) so one mapping
works for both formats; the union of every object's keys (one quick pass over the
file first) stands in for a CSV header, so a key that first appears on line 9,000
is still mapped.

Bytes are decoded line by line in ``encoding`` (ASCII-compatible ones only: utf-8,
cp1252, latin-1, ...). A line that does not decode makes its record a bad record
whose problem names the row and the file offset of the byte; the rest of the file
still loads.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
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

    def __init__(
        self, path: str | Path, fmt: Format | None = None, *, encoding: str = "utf-8"
    ) -> None:
        self.path = Path(path)
        self.format: Format = fmt or detect_format(path)
        try:
            info = codecs.lookup(encoding)
        except LookupError:
            raise SourceError(f"unknown encoding {encoding!r}") from None
        if "\n".encode(info.name) != b"\n":
            raise SourceError(f"encoding {encoding!r} is not ASCII-compatible (use utf-8)")
        self.encoding = info.name
        try:
            self._binary: BinaryIO = open(self.path, "rb")  # noqa: SIM115 (closed in close())
        except OSError as exc:
            raise SourceError(f"cannot open {path}: {exc.strerror}") from None
        self.size = os.fstat(self._binary.fileno()).st_size
        self.header: list[str] = []
        #: Decode failures of the lines read for the current record: (offset, byte).
        self._bad_bytes: list[tuple[int, int]] = []
        self._consumed = False
        try:
            self._read_header()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self._binary.close()

    def __enter__(self) -> Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def position(self) -> float:
        """How far into the file reading has got, 0..1 (for progress and ETA)."""
        if self.size == 0 or self._binary.closed:
            return 1.0
        return min(self._binary.tell() / self.size, 1.0)

    def _lines(self) -> Iterator[str]:
        """Decoded lines from where the binary file stands, line endings kept."""
        offset = self._binary.tell()
        for raw in self._binary:
            if offset == 0 and raw.startswith(codecs.BOM_UTF8) and self.encoding == "utf-8":
                raw, offset = raw[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
            try:
                line = raw.decode(self.encoding)
            except UnicodeDecodeError as exc:
                self._bad_bytes.append((offset + exc.start, raw[exc.start]))
                line = raw.decode(self.encoding, errors="replace")
            offset += len(raw)
            yield line

    def _decode_problem(self) -> str | None:
        if not self._bad_bytes:
            return None
        offset, byte = self._bad_bytes[0]
        self._bad_bytes.clear()
        return (
            f"byte 0x{byte:02x} at offset {offset} of {self.path.name} is not valid "
            f"{self.encoding}; pass --encoding (e.g. --encoding cp1252) if the file is not "
            f"{self.encoding}"
        )

    def _read_header(self) -> None:
        if self.format == "csv":
            self._csv = csv.reader(self._lines())
            try:
                self.header = next(self._csv)
            except StopIteration:
                raise SourceError(f"{self.path} is empty; expected a header row") from None
            except csv.Error as exc:
                raise SourceError(f"{self.path}: cannot read the header: {exc}") from None
            problem = self._decode_problem()
            if problem:
                raise SourceError(f"{self.path}: header row: {problem}")
            if len(set(self.header)) != len(self.header):
                dupes = sorted({c for c in self.header if self.header.count(c) > 1})
                raise SourceError(f"{self.path}: duplicate column names {dupes}")
            return
        # JSONL: one pass for the union of keys (in order of first appearance).
        keys: dict[str, None] = {}
        records = 0
        for line in self._lines():
            try:
                obj = json.loads(line) if line.strip() else None
            except ValueError:
                continue  # reported with its row by records()
            if isinstance(obj, dict):
                records += 1
                keys.update(dict.fromkeys(flatten(obj)))
        self._bad_bytes.clear()
        if not records:
            raise SourceError(f"{self.path} has no records (one JSON object per line)")
        self.header = list(keys)
        self._binary.seek(0)

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
        except csv.Error as exc:
            raise SourceError(f"{self.path}: CSV error: {exc}") from None

    def _csv_records(self, start: int) -> Iterator[Record]:
        header, width = self.header, len(self.header)
        for ordinal, cells in enumerate(self._csv):
            problem = self._decode_problem()
            if ordinal < start or not cells:
                continue
            if problem is None and len(cells) > width:
                problem = f"row has {len(cells)} cells but the header has {width}"
            # Fewer cells than columns: spreadsheets drop trailing empties; they are empty.
            values: dict[str, object] = dict(zip(header, cells, strict=False))
            yield Record(ordinal, ordinal + 2, values, cells, problem)

    def _jsonl_records(self, start: int) -> Iterator[Record]:
        for ordinal, line in enumerate(self._lines()):
            problem = self._decode_problem()
            if ordinal < start or not line.strip():
                continue
            text = line.rstrip("\r\n")
            if problem is not None:
                yield Record(ordinal, ordinal + 1, {}, text, problem)
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                yield Record(ordinal, ordinal + 1, {}, text, f"not JSON: {exc}")
                continue
            if not isinstance(obj, dict):
                yield Record(ordinal, ordinal + 1, {}, text, "not a JSON object")
                continue
            yield Record(ordinal, ordinal + 1, flatten(obj), obj)


def flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out

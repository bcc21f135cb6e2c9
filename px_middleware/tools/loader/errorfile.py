"""The errors file: every failed record as it was read, plus an ``error`` column.

It has the input's format and columns, so fixing the listed rows and loading this file
again is the whole retry workflow; the loader ignores an ``error`` column when mapping.
The file belongs to one run: a run that is not ``--resume`` removes the file an
earlier run left (so a clean run leaves none), and it is only created when a record
fails. Each line is flushed before the record counts as finished for ``--resume``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import IO

from px_middleware.tools.loader.mapping import ERROR_COLUMN
from px_middleware.tools.loader.reader import Format, Record


def default_path(source: Path, fmt: Format) -> Path:
    return source.with_name(f"{source.stem}.errors.{'csv' if fmt == 'csv' else 'jsonl'}")


class ErrorFile:
    def __init__(self, path: Path, fmt: Format, header: list[str], *, append: bool) -> None:
        self.path = path
        self.format = fmt
        self.count = 0
        self._append = append
        self._file: IO[str] | None = None
        self._writerow: Callable[[list[str]], object] | None = None
        # Re-loading an errors file must not grow a second error column.
        self._header = list(header)
        self._replaces = ERROR_COLUMN in self._header
        if not self._replaces:
            self._header.append(ERROR_COLUMN)
        self._error_index = self._header.index(ERROR_COLUMN)
        if not append:
            path.unlink(missing_ok=True)  # an earlier run's failures are not this run's

    def write(self, record: Record, message: str) -> None:
        f = self._open()
        if self.format == "csv":
            cells = list(record.raw) if isinstance(record.raw, list) else [str(record.raw)]
            index = self._error_index
            if self._replaces:  # the old message of a re-loaded errors file
                cells += [""] * (len(self._header) - len(cells))
                cells[index] = message
            else:  # cells beyond the header (a row too long) are kept after the message
                cells += [""] * (index - len(cells))
                cells.insert(index, message)
            assert self._writerow is not None
            self._writerow(cells)
        else:
            obj = dict(record.raw) if isinstance(record.raw, dict) else {"_raw": record.raw}
            obj[ERROR_COLUMN] = message
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
        f.flush()
        self.count += 1

    def _open(self) -> IO[str]:
        if self._file is None:
            mode = "a" if self._append else "w"
            self._file = open(self.path, mode, encoding="utf-8", newline="")  # noqa: SIM115
            fresh = self._file.tell() == 0
            if self.format == "csv":
                self._writerow = csv.writer(self._file).writerow
                if fresh:
                    self._writerow(self._header)
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

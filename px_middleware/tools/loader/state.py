"""``--resume`` bookkeeping: which records PX has acknowledged, saved atomically.

Requests run concurrently, so acknowledgements arrive out of order. The state keeps
the lowest record not yet finished (everything before it is done) plus the few
finished records above it, so a resumed run re-sends nothing that PX already has.
"Finished" means acknowledged by PX or written to the errors file.

The file is replaced atomically (write a temporary file, then ``os.replace``) after
every change, so a SIGKILL leaves either the old or the new state, never half of one.
No fsync: the goal is surviving a crashed or interrupted process, not a power cut.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
from pathlib import Path
from typing import Any

_VERSION = 1
_FINGERPRINT_BYTES = 64 * 1024


class StateError(ValueError):
    """The state file does not belong to this input (or cannot be read)."""


class AckTracker:
    """Records are issued in file order and finished in any order."""

    def __init__(self, start: int = 0, done: set[int] | frozenset[int] = frozenset()) -> None:
        self._issued: collections.deque[int] = collections.deque()
        self._done: set[int] = set(done)
        self._next = start  # one past the last issued ordinal

    def issue(self, ordinal: int) -> None:
        self._issued.append(ordinal)
        self._next = ordinal + 1

    def finish(self, ordinal: int) -> None:
        self._done.add(ordinal)
        issued, done = self._issued, self._done
        while issued and issued[0] in done:
            done.discard(issued.popleft())

    @property
    def resume_from(self) -> int:
        """Every record before this ordinal is finished."""
        return self._issued[0] if self._issued else self._next

    @property
    def done_above(self) -> list[int]:
        low = self.resume_from
        return sorted(o for o in self._done if o >= low)

    def already_done(self, ordinal: int) -> bool:
        return ordinal in self._done


def fingerprint(path: Path, length: int) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read(length)).hexdigest()


class StateFile:
    """Reads and writes ``<file>.px-load-state.json`` for one input file and kind."""

    def __init__(self, path: Path, source: Path, kind: str) -> None:
        self.path = path
        self.source = source
        self.kind = kind
        self._tmp = path.with_name(path.name + ".tmp")
        # A prefix of the input identifies it; appending rows to the file keeps it valid.
        self._length = min(source.stat().st_size, _FINGERPRINT_BYTES)
        self._fingerprint = fingerprint(source, self._length)

    def load(self) -> tuple[int, set[int]] | None:
        """``(resume_from, done_above)`` saved by an earlier run, or ``None`` if none."""
        try:
            data: Any = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read {self.path}: {exc}") from None
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            raise StateError(f"{self.path} is not a state file this version understands")
        if data.get("kind") != self.kind:
            raise StateError(
                f"{self.path} belongs to a load of {data.get('kind')}, not {self.kind}"
            )
        length = int(data.get("fingerprint_bytes", 0))
        if length > self.source.stat().st_size or fingerprint(self.source, length) != data.get(
            "fingerprint"
        ):
            raise StateError(
                f"{self.path} was written for a different version of {self.source.name}; "
                "delete it to start over"
            )
        return int(data["resume_from"]), {int(o) for o in data.get("done_above", [])}

    def save(self, tracker: AckTracker) -> None:
        payload = {
            "version": _VERSION,
            "kind": self.kind,
            "file": str(self.source),
            "fingerprint": self._fingerprint,
            "fingerprint_bytes": self._length,
            "resume_from": tracker.resume_from,
            "done_above": tracker.done_above,
        }
        with open(self._tmp, "w", encoding="utf-8") as f:
            json.dump(payload, f)
        os.replace(self._tmp, self.path)

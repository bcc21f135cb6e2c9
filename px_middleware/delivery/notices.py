"""Loud, not noisy: WARNING lines for drops and repeated failures, rate-limited.

The first occurrence of a reason is logged at once, with its detail. After that, at
most one summary line per reason per ``interval`` seconds says how many happened since
the last line, so a stuck outbox or a flood of refused events costs a line every 30 s,
not one per event. ``flush()`` writes what is pending (shutdown calls it).
"""

from __future__ import annotations

import logging
import threading
import time

INTERVAL = 30.0


class Notices:
    def __init__(self, log: logging.Logger, interval: float = INTERVAL) -> None:
        self._log = log
        self._interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}  # reason -> when a line was last written
        self._pending: dict[str, tuple[int, str]] = {}  # reason -> (count, last detail)

    def note(self, reason: str, count: int, detail: str) -> None:
        """``count`` things happened for ``reason`` (e.g. "overflow": events refused)."""
        if count <= 0:
            return
        now = time.monotonic()
        with self._lock:
            last = self._last.get(reason)
            pending, _ = self._pending.pop(reason, (0, ""))
            total = pending + count
            if last is not None and now - last < self._interval:
                self._pending[reason] = (total, detail)
                return
            self._last[reason] = now
        self._write(reason, total, detail, first=last is None)

    def flush(self, *, force: bool = False) -> None:
        """Write the summaries that are due (all of them with ``force``)."""
        now = time.monotonic()
        with self._lock:
            due = [
                (reason, count, detail)
                for reason, (count, detail) in self._pending.items()
                if force or now - self._last.get(reason, 0.0) >= self._interval
            ]
            for reason, _, _ in due:
                del self._pending[reason]
                self._last[reason] = now
        for reason, count, detail in due:
            self._write(reason, count, detail, first=False)

    def _write(self, reason: str, count: int, detail: str, *, first: bool) -> None:
        span = "" if first else f" in the last {self._interval:g}s"
        self._log.warning("px_middleware: %s: %d%s; %s", reason, count, span, detail)

"""Loud, not noisy: WARNING lines for drops and repeated failures, rate-limited.

The first occurrence of a reason is logged at once, with its detail. After that, at
most one summary line per reason per ``interval`` seconds says how many happened since
the last line, so a stuck outbox, a flood of refused events or one bad attribute on
every page costs a line every 30 s, not one per event. ``flush()`` writes what is
pending (delivery's dispatcher calls it; shutdown forces it).

No lock, because the core does no threading: every step is one atomic dict or
``itertools.count`` operation in CPython. Two threads may both write a reason's first
line, and a summary may miss an occurrence that races with it being written; the
counters (``Counters``), which are what code reads, never miss one.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable

INTERVAL = 30.0


def _value(counter: itertools.count[int]) -> int:
    return int(repr(counter)[6:-1])  # "count(n)": n increments of a count() from 0


class Notices:
    def __init__(
        self,
        log: logging.Logger,
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}  # reason -> when a line was last written
        self._pending: dict[str, itertools.count[int]] = {}  # reason -> count since then
        self._detail: dict[str, str] = {}  # reason -> the latest detail

    def note(self, reason: str, count: int, detail: str, *, exc_info: bool = False) -> None:
        """``count`` things happened for ``reason`` (e.g. "overflow": events refused).

        ``exc_info``: the first line of a reason carries the current traceback.
        """
        if count <= 0:
            return
        now = self._clock()
        if self._pending:  # other reasons' summaries that fell due meanwhile
            self.flush(now=now)
        last = self._last.get(reason)
        if last is not None and now - last < self._interval:
            counter = self._pending.get(reason) or self._pending.setdefault(
                reason, itertools.count()
            )
            for _ in range(count):
                next(counter)
            self._detail[reason] = detail
            return
        self._last[reason] = now
        pending = self._pending.pop(reason, None)
        total = count + (0 if pending is None else _value(pending))
        self._write(reason, total, detail, first=last is None,
                    exc_info=exc_info and last is None)

    def flush(self, *, force: bool = False, now: float | None = None) -> None:
        """Write the summaries that are due (all of them with ``force``)."""
        now = self._clock() if now is None else now
        for reason in list(self._pending):
            if not force and now - self._last.get(reason, 0.0) < self._interval:
                continue
            counter = self._pending.pop(reason, None)
            if counter is None:
                continue
            self._last[reason] = now
            self._write(reason, _value(counter), self._detail.get(reason, ""), first=False)

    def clear(self) -> None:
        """Forget every reason (tests start each case with a quiet log)."""
        self._last.clear()
        self._pending.clear()
        self._detail.clear()

    def _write(
        self, reason: str, count: int, detail: str, *, first: bool, exc_info: bool = False
    ) -> None:
        span = "" if first else f" in the last {self._interval:g}s"
        self._log.warning("px_middleware: %s: %d%s; %s", reason, count, span, detail,
                          exc_info=exc_info)


#: Request-time warnings of every middleware in the process (bad attributes, a raising
#: ``identify``): per reason, the first line at once, then a summary per interval.
REQUEST_NOTICES = Notices(logging.getLogger("px_middleware"))

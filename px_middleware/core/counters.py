"""``Counters``: what the middleware did and dropped, readable from code."""

from __future__ import annotations

import itertools


class Counters:
    """Named counters (``middleware.counters.snapshot()``), safe from any thread.

    No lock: the core does no threading, and in CPython ``next()`` on an
    ``itertools.count`` and ``dict.setdefault`` are each a single atomic step, so
    concurrent increments are never lost.
    """

    def __init__(self) -> None:
        self._counts: dict[str, itertools.count[int]] = {}

    def incr(self, name: str, amount: int = 1) -> None:
        counter = self._counts.get(name) or self._counts.setdefault(name, itertools.count(1))
        if amount == 1:
            next(counter)
            return
        for _ in range(amount):
            next(counter)

    def snapshot(self) -> dict[str, int]:
        # repr(count(n)) is "count(n)": n is one more than the increments so far.
        return {name: int(repr(c)[6:-1]) - 1 for name, c in list(self._counts.items())}

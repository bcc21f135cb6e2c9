"""``Counters``: what the middleware did and dropped, readable from code."""

from __future__ import annotations

import threading


class Counters:
    """Thread-safe named counters (``middleware.counters.snapshot()``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def incr(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)

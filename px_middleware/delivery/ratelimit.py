"""Request rate limiting for the sender, behind a one-method interface.

PX allows about 200 requests/second and 1,000,000 requests/day per subscription and
answers 429 above that. The sender asks its limiter before every request. The limiter
here is per process; a limiter shared by every process (Redis) will implement the same
:class:`RateLimiter` protocol.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol

DAY = 86_400.0


class RateLimiter(Protocol):
    def try_acquire(self) -> float:
        """Take one request slot: ``0.0`` when granted, else seconds to wait first.

        Never blocks, so the caller decides how to wait (interruptibly, with a deadline).
        """
        ...


class TokenBucket:
    """``rate`` requests/second with bursts up to ``burst``, plus an optional daily budget.

    The daily budget counts requests in consecutive 24-hour windows of ``clock``, which
    is how a per-process limiter can approximate PX's per-day quota. Thread-safe; the
    lock only guards arithmetic.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        daily_budget: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive (requests per second)")
        if daily_budget is not None and daily_budget < 1:
            raise ValueError("daily_budget must be at least 1 or None")
        self.rate = float(rate)
        # One second's worth by default: a short burst after idling is harmless to PX.
        self.burst = max(1.0, float(rate) if burst is None else float(burst))
        self.daily_budget = daily_budget
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = self.burst
        self._updated = clock()
        self._day_start = self._updated
        self._day_used = 0
        # A sender thread of the parent may hold the lock at fork(); the child needs its own.
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _new_lock(ref))

    def try_acquire(self) -> float:
        with self._lock:
            now = self._clock()
            if self.daily_budget is not None:
                if now - self._day_start >= DAY:
                    self._day_start += DAY * ((now - self._day_start) // DAY)
                    self._day_used = 0
                if self._day_used >= self.daily_budget:
                    return max(self._day_start + DAY - now, 1e-3)
            elapsed = max(now - self._updated, 0.0)
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._updated = now
            if self._tokens >= 1.0 - 1e-9:  # float sums of elapsed time fall just short
                self._tokens = max(self._tokens - 1.0, 0.0)
                self._day_used += 1
                return 0.0
            return (1.0 - self._tokens) / self.rate

    def acquire(self, timeout: float, sleep: Callable[[float], None] = time.sleep) -> bool:
        """Block until a slot is granted (``True``) or ``timeout`` seconds would pass."""
        waited = 0.0
        while True:
            wait = self.try_acquire()
            if wait == 0.0:
                return True
            if waited + wait > timeout:
                return False
            sleep(wait)
            waited += wait


def _new_lock(ref: weakref.ref[TokenBucket]) -> None:
    bucket = ref()
    if bucket is not None:
        bucket._lock = threading.Lock()

"""Retry policy for the sender: which outcomes to retry, and how long to wait.

Pure functions, no I/O, so the whole policy is tested with tables. There is one retry
layer in the package (the sender's); the REST client never retries by itself.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

from px_middleware.config import MAX_RETRY_WAIT

Outcome = Literal["ok", "retry", "drop"]



def classify(status: int | None) -> Outcome:
    """What to do after a request: ``None`` means the request never got an answer."""
    if status is None:
        return "retry"
    if 200 <= status < 300:
        return "ok"
    if status in (408, 429) or 500 <= status < 600:
        return "retry"
    # Other 4xx (and odd codes) will fail the same way again: retrying only hides bugs.
    return "drop"


def backoff(
    attempt: int,
    *,
    base: float = 0.5,
    cap: float = MAX_RETRY_WAIT,
    rng: Callable[[], float] = random.random,
) -> float:
    """Exponential backoff with full jitter for the ``attempt``-th retry (1-based).

    Full jitter (a uniform wait between 0 and the exponential ceiling) spreads the
    retries of many processes that failed together, so they do not hit PX in lockstep.
    """
    exponent = min(max(attempt - 1, 0), 62)  # keep 2**n finite for absurd attempt counts
    return rng() * min(cap, base * 2.0**exponent)


def retry_delay(
    attempt: int,
    retry_after: float | None = None,
    *,
    base: float = 0.5,
    cap: float = MAX_RETRY_WAIT,
    rng: Callable[[], float] = random.random,
) -> float:
    """The wait before retry number ``attempt``: ``Retry-After`` when given, else backoff.

    The server's ``Retry-After`` is honoured (never retried earlier) up to ``cap``; a
    longer request is cut to ``cap`` and the next answer says again how long to wait.
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    return backoff(attempt, base=base, cap=cap, rng=rng)

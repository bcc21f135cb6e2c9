"""The one retry layer of the package: which failures to retry, how long to wait, and
the process-wide pause after a 429.

:func:`call` runs a request callable until it succeeds, is rejected for good, runs out
of attempts, time or permission, and returns an :class:`Outcome` (it never raises for a
PX or network failure). Both the delivery exporter and the bulk loader use it, so the
rules below hold everywhere:

- retried: no answer (network error), 408, 429 and 5xx; other 4xx are final;
- waits: exponential backoff with full jitter, each at most ``cap`` seconds;
  a ``Retry-After`` is honoured up to ``cap`` (PX publishes none);
- a 429 pauses *every* caller in the process (``PAUSE``): the limit is per
  subscription, so the other threads would only collect 429s of their own. The pause
  doubles with each 429 in a row and resets on the next success;
- 429s do not use up ``attempts`` (being slowed down is not a failure of the item);
  ``patience`` bounds how long a caller keeps trying through nothing but 429s.

Thread-safe: call it from as many threads as you like; they share ``PAUSE``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

import httpx

from px_middleware.config import MAX_RETRY_WAIT
from px_middleware.delivery.ratelimit import RateLimiter
from px_middleware.rest import PXAPIError, PXRateLimited

log = logging.getLogger("px_middleware.delivery")

T = TypeVar("T")
Decision = Literal["ok", "retry", "drop"]
#: How a :func:`call` ended: PX accepted; PX refused for good (a 4xx); every allowed
#: attempt failed (or ``patience``/``deadline`` ran out); ``stop`` was set.
Status = Literal["ok", "rejected", "exhausted", "stopped"]


def classify(status: int | None) -> Decision:
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


class Pause:
    """ "PX said slow down": a deadline every caller waits for, shared by threads.

    Each 429 in a row doubles the pause (``base``, ``2 * base``, ... up to ``cap``,
    without jitter: one process pauses as a whole); a success resets it. A
    ``Retry-After`` replaces the doubling when the server sends one.
    """

    def __init__(self, base: float = 0.5, cap: float = MAX_RETRY_WAIT) -> None:
        self.base = base
        self.cap = cap
        self._lock = threading.Lock()
        self._until = 0.0
        self._streak = 0

    def hit(
        self,
        retry_after: float | None = None,
        *,
        base: float | None = None,
        cap: float | None = None,
    ) -> float:
        """Record a 429; returns the pause now in force, in seconds from now.
        ``base``/``cap`` override the pause's own for this caller's schedule."""
        with self._lock:
            self._streak += 1
            limit = self.cap if cap is None else cap
            if retry_after is not None:
                seconds = min(max(retry_after, 0.0), limit)
            else:
                start = self.base if base is None else base
                seconds = min(limit, start * 2.0 ** min(self._streak - 1, 62))
            self._until = max(self._until, time.monotonic() + seconds)
            return self._until - time.monotonic()

    def clear(self) -> None:
        """A request succeeded: the next 429 starts the doubling again."""
        self._streak = 0  # a racy reset is harmless: at worst one pause is shorter

    def remaining(self) -> float:
        return max(self._until - time.monotonic(), 0.0)

    def _reset(self) -> None:
        self._lock = threading.Lock()  # another thread may have held it at fork()
        self._until, self._streak = 0.0, 0


#: The process-wide pause every caller shares by default (reset in a forked child).
PAUSE = Pause()
os.register_at_fork(after_in_child=PAUSE._reset)


@dataclasses.dataclass(frozen=True)
class Outcome(Generic[T]):
    """How a :func:`call` ended, with the callable's return value when it succeeded,
    the last error otherwise, and how many requests were made."""

    status: Status
    value: T | None = None
    error: BaseException | None = None
    attempts: int = 0
    #: 429s among ``attempts`` (they never count against the ``attempts`` limit).
    throttled: int = 0

    @property
    def http_status(self) -> int | None:
        """The last error's HTTP status (``None``: no answer, or no error)."""
        return self.error.status if isinstance(self.error, PXAPIError) else None


def call(
    request: Callable[[float | None], T],
    *,
    attempts: int | None = None,
    deadline: float | None = None,
    stop: threading.Event | None = None,
    hurry: threading.Event | None = None,
    patience: float | None = None,
    limiter: RateLimiter | None = None,
    pause: Pause = PAUSE,
    timeout: float | None = None,
    base: float = 0.5,
    cap: float = MAX_RETRY_WAIT,
) -> Outcome[T]:
    """Run ``request(timeout)`` until it returns, and say how that went.

    ``request`` gets the per-request timeout in seconds (``timeout``, cut to what is
    left before ``deadline``; ``None`` when neither is set) and signals failure by
    raising :class:`~px_middleware.rest.PXAPIError` (PX answered) or
    ``httpx.HTTPError`` (no answer). Any other exception is a bug and propagates.

    - ``attempts``: at most this many failed requests other than 429s (``None``: no limit).
    - ``deadline``: a ``time.monotonic()`` value; no request starts or waits past it.
    - ``stop``: when set, end at once, before or between requests (``"stopped"``).
    - ``hurry``: when set, stop waiting (backoff, pause, rate limit) and make one more
      request right away; if that fails too, end as ``"exhausted"``. Shutdown uses it.
    - ``patience``: give up (``"exhausted"``) after this many seconds of 429s.
    - ``limiter``: take one slot before each request.
    - ``pause``: the shared 429 pause (``PAUSE``, unless a test isolates one).
    """
    failures = made = throttled = 0
    first_throttle: float | None = None
    error: BaseException | None = None

    def waited(seconds: float) -> bool:
        """Wait ``seconds`` (or less, when hurried or out of time); False: stop now."""
        end = time.monotonic() + seconds
        if deadline is not None:
            end = min(end, deadline)
        while (left := end - time.monotonic()) > 0:
            if hurry is not None and hurry.is_set():
                return True
            if stop is not None:
                if stop.wait(min(left, 0.05 if hurry is not None else left)):
                    return False
            elif hurry is not None:
                hurry.wait(left)
            else:
                time.sleep(left)
        return not (stop is not None and stop.is_set())

    def hurried() -> bool:
        return hurry is not None and hurry.is_set()

    last_try = False
    while True:
        if stop is not None and stop.is_set():
            return Outcome("stopped", None, error, made, throttled)
        last_try = last_try or hurried()
        if not last_try:
            if (paused := pause.remaining()) > 0 and not waited(paused):
                return Outcome("stopped", None, error, made, throttled)
            while limiter is not None and not hurried():
                wait = limiter.try_acquire()
                if wait <= 0:
                    break
                if not waited(wait):
                    return Outcome("stopped", None, error, made, throttled)
        per_request = timeout
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0.01:
                return Outcome("exhausted", None, error, made, throttled)
            per_request = left if per_request is None else min(per_request, left)
        retry_after: float | None = None
        made += 1
        try:
            value = request(per_request)
        except PXAPIError as exc:
            status: int | None = exc.status
            error = exc
            if isinstance(exc, PXRateLimited):
                retry_after = exc.retry_after
        except httpx.HTTPError as exc:
            status, error = None, exc
        else:
            pause.clear()
            return Outcome("ok", value, None, made, throttled)
        decision = classify(status)
        if decision == "drop":
            return Outcome("rejected", None, error, made, throttled)
        if last_try:
            return Outcome("exhausted", None, error, made, throttled)
        if status == 429:
            throttled += 1
            now = time.monotonic()
            first_throttle = now if first_throttle is None else first_throttle
            delay = pause.hit(retry_after, base=base, cap=cap)  # others hold back too
            if patience is not None and now - first_throttle >= patience:
                return Outcome("exhausted", None, error, made, throttled)
        else:
            failures += 1
            if attempts is not None and failures >= attempts:
                return Outcome("exhausted", None, error, made, throttled)
            delay = retry_delay(failures, retry_after, base=base, cap=cap)
        log.debug("px_middleware: retry in %.2fs after %s", delay, status or repr(error))
        if deadline is not None and time.monotonic() + delay >= deadline and not hurried():
            return Outcome("exhausted", None, error, made, throttled)
        if not waited(delay):
            return Outcome("stopped", None, error, made, throttled)

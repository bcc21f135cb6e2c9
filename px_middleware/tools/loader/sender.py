"""Send one unit of work (a row, or a batch of rows) to PX with the sender's policies.

Rate limiting and retries are the delivery package's, not a second copy: every HTTP
request takes a slot from the :class:`~px_middleware.delivery.ratelimit.RateLimiter`
(in the transport, so an upsert's PUT and POST each count), and failures are judged
by :func:`~px_middleware.delivery.retry.classify` with waits from
:func:`~px_middleware.delivery.retry.retry_delay` (``Retry-After`` honoured).

A 429 pauses every worker, not only the one that got it: the limit is per
subscription, so the other workers would only collect 429s of their own. Rate
limiting never fails a row by itself (only after ``RATE_LIMIT_PATIENCE`` seconds of
nothing but 429s); other retryable failures give up after ``MAX_RETRIES`` retries and
the row goes to the errors file.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import httpx

from px_middleware.delivery.ratelimit import RateLimiter
from px_middleware.delivery.retry import classify, retry_delay
from px_middleware.rest import (
    PXAPIError,
    PXAuthError,
    PXNotFound,
    PXRateLimited,
    PXRestClient,
)

T = TypeVar("T")
Result = Literal["created", "updated", "skipped", "failed"]
Mode = Literal["upsert", "update"]

MAX_RETRIES = 8
RATE_LIMIT_PATIENCE = 600.0


class Stopped(Exception):
    """The load is being interrupted; the unit stays unacknowledged (resume re-sends it)."""


class Fatal(Exception):
    """A failure no row can get past (a rejected API key): stop the whole load."""


@dataclasses.dataclass(frozen=True)
class Outcome:
    result: Result
    message: str = ""


class LimitedTransport(httpx.BaseTransport):
    """Takes a rate-limiter slot before each request, waiting interruptibly."""

    def __init__(self, inner: httpx.BaseTransport, limiter: RateLimiter, gate: Gate) -> None:
        self._inner = inner
        self._limiter = limiter
        self.gate = gate

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.gate.wait_turn()
        while (wait := self._limiter.try_acquire()) > 0.0:
            self.gate.sleep(wait)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


class Gate:
    """Shared between workers: the stop signal and the "PX said slow down" pause."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._paused_until = 0.0

    def sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Stopped

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    def wait_turn(self) -> None:
        if self.stop.is_set():
            raise Stopped
        while (left := self._paused_until - time.monotonic()) > 0:
            self.sleep(left)


def describe(exc: BaseException) -> str:
    if isinstance(exc, PXAPIError):
        return str(exc)
    return f"network error: {type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class UnitSender:
    """The operations of a load, each wrapped in the retry policy."""

    def __init__(self, client: PXRestClient, kind: str, mode: Mode, gate: Gate) -> None:
        self.client = client
        self._client = client
        self._kind = kind
        self._mode = mode
        self.gate = gate

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` until it succeeds, cannot succeed (raises), or we give up (raises)."""
        retries = 0
        first = time.monotonic()
        while True:
            try:
                return fn()
            except PXAuthError as exc:
                raise Fatal(f"PX rejected the API key ({exc})") from None
            except PXRateLimited as exc:
                status: int | None = 429
                retry_after: float | None = exc.retry_after
                error: Exception = exc
            except PXAPIError as exc:
                status, retry_after, error = exc.status, None, exc
            except httpx.TransportError as exc:
                status, retry_after, error = None, None, exc
            if classify(status) != "retry":
                raise error
            if status == 429:
                if time.monotonic() - first > RATE_LIMIT_PATIENCE:
                    raise error
                delay = retry_delay(min(retries + 1, 8), retry_after)
                self.gate.pause(delay)
            else:
                retries += 1
                if retries > MAX_RETRIES:
                    raise error
                delay = retry_delay(retries)
            self.gate.sleep(delay)

    # -- units ------------------------------------------------------------------------
    def send_one(self, body: dict[str, Any]) -> Outcome:
        """One user or account: upsert (PUT, then POST on 404) or update only."""
        try:
            if self._mode == "update":
                return self._update(body)
            client = self._client
            upsert = client.upsert_user if self._kind == "users" else client.upsert_account
            return Outcome(self.call(lambda: upsert(body)))
        except (PXAPIError, httpx.TransportError) as exc:
            return Outcome("failed", describe(exc))

    def _update(self, body: dict[str, Any]) -> Outcome:
        users = self._kind == "users"
        key = str(body["identifyId" if users else "id"])
        update: Callable[[str, Mapping[str, Any]], object] = (
            self._client.update_user if users else self._client.update_account
        )
        try:
            self.call(lambda: update(key, body))
        except PXNotFound:
            return Outcome("skipped", "not in PX (--update-only)")
        return Outcome("updated")

    def create_many(self, bodies: Sequence[dict[str, Any]]) -> list[Outcome]:
        """Fast path for new records: one POST with a list, which PX applies all or
        nothing; if it is refused (some already exist, one is invalid), upsert each."""
        path = f"/{self._kind}"
        try:
            self.call(lambda: self._client.request("POST", path, json=list(bodies)))
        except (PXAPIError, httpx.TransportError) as exc:
            if not _refused(exc):  # PX is down, not the batch: its rows fail together
                return [Outcome("failed", describe(exc))] * len(bodies)
            return [self.send_one(body) for body in bodies]
        return [Outcome("created")] * len(bodies)

    def send_events(self, events: Sequence[dict[str, Any]]) -> list[Outcome]:
        """A batch of events in one POST; a refused batch is re-sent one by one, so only
        the bad events fail and each gets PX's message for it."""
        try:
            self.call(lambda: self._client.send_events(list(events)))
        except (PXAPIError, httpx.TransportError) as exc:
            if len(events) == 1 or not _refused(exc):
                return [Outcome("failed", describe(exc))] * len(events)
            return [self.send_events([event])[0] for event in events]
        return [Outcome("created")] * len(events)


def _refused(exc: Exception) -> bool:
    """PX looked at the request and said no (a 4xx other than 429): its content is bad."""
    return isinstance(exc, PXAPIError) and classify(exc.status) == "drop"

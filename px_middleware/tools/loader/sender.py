"""Send one unit of work (a row, or a batch of rows) to PX with the package's policies.

Retries, backoff and the shared 429 pause are :func:`px_middleware.delivery.retry.call`,
the one retry loop the middleware's delivery uses too. Rate limiting is the delivery
package's token bucket, taken in the transport so that an upsert's PUT and POST each
count. A 429 pauses every worker, not only the one that got it (``retry.PAUSE``).
Rate limiting never fails a row by itself (only after ``RATE_LIMIT_PATIENCE`` seconds
of nothing but 429s); other retryable failures give up after ``MAX_RETRIES`` retries
and the row goes to the errors file.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import httpx

from px_middleware.delivery import retry
from px_middleware.delivery.ratelimit import RateLimiter
from px_middleware.rest import PXAPIError, PXAuthError, PXNotFound, PXRestClient

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


class Gate:
    """Shared between workers and the transport: the signal that the load is stopping."""

    def __init__(self) -> None:
        self.stop = threading.Event()

    def sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Stopped


class LimitedTransport(httpx.BaseTransport):
    """Takes a rate-limiter slot before each request, waiting interruptibly."""

    def __init__(self, inner: httpx.BaseTransport, limiter: RateLimiter, gate: Gate) -> None:
        self._inner = inner
        self._limiter = limiter
        self.gate = gate

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.gate.stop.is_set():
            raise Stopped
        while (wait := self._limiter.try_acquire()) > 0.0:
            self.gate.sleep(wait)
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def describe(exc: BaseException | None) -> str:
    if exc is None or isinstance(exc, PXAPIError):
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
        """Run ``fn`` through the shared retry loop; its value, or raise why not."""
        outcome = retry.call(
            lambda timeout: fn(),
            attempts=MAX_RETRIES + 1,
            stop=self.gate.stop,
            patience=RATE_LIMIT_PATIENCE,
        )
        if outcome.status == "ok":
            return outcome.value  # type: ignore[return-value]
        if outcome.status == "stopped":
            raise Stopped
        if isinstance(outcome.error, PXAuthError):
            raise Fatal(f"PX rejected the API key ({outcome.error})")
        assert outcome.error is not None
        raise outcome.error

    # -- units ------------------------------------------------------------------------
    def send_one(self, body: dict[str, Any]) -> Outcome:
        """One user or account: upsert (PUT, then POST on 404) or update only."""
        try:
            if self._mode == "update":
                return self._update(body)
            client = self._client
            upsert = client.upsert_user if self._kind == "users" else client.upsert_account
            return Outcome(self.call(lambda: upsert(body)))
        except (PXAPIError, httpx.HTTPError) as exc:
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
        except (PXAPIError, httpx.HTTPError) as exc:
            if not _refused(exc):  # PX is down, not the batch: its rows fail together
                return [Outcome("failed", describe(exc))] * len(bodies)
            return [self.send_one(body) for body in bodies]
        return [Outcome("created")] * len(bodies)

    def send_events(self, events: Sequence[dict[str, Any]]) -> list[Outcome]:
        """A batch of events in one POST; a refused batch is re-sent one by one, so only
        the bad events fail and each gets PX's message for it."""
        try:
            self.call(lambda: self._client.send_events(list(events)))
        except (PXAPIError, httpx.HTTPError) as exc:
            if len(events) == 1 or not _refused(exc):
                return [Outcome("failed", describe(exc))] * len(events)
            return [self.send_events([event])[0] for event in events]
        return [Outcome("created")] * len(events)


def _refused(exc: Exception) -> bool:
    """PX looked at the request and said no (a 4xx other than 429): its content is bad."""
    return isinstance(exc, PXAPIError) and retry.classify(exc.status) == "drop"

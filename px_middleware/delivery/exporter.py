"""The exporter: turns claimed items into PX requests, through the one retry loop.

It knows PX and nothing of queues or storage (the worker's job): an event is a
``POST /events/custom``, a user or account an upsert (PUT, then POST on 404). It is
given one key's items at a time, in order, and sends them in that order: after an item
that could not be sent, the rest of the key is left unsent, so nothing overtakes it.

List bodies: PX documents one event per request, so each event is its own request
unless ``PXConfig.batch_events`` is on. Then consecutive events of a key go as one list;
a list refused with a 4xx is resent one event at a time (so only a bad event is lost),
and when every event then succeeds one by one, PX refused the list shape itself: lists
are off for the rest of the process.

The HTTP client (and its SSL context) is built on the first export, after the worker
has stored what was captured (durable first).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Literal, NamedTuple

from px_middleware.config import MAX_RETRY_WAIT, PXConfig
from px_middleware.delivery import retry
from px_middleware.delivery.outbox import Item
from px_middleware.delivery.ratelimit import RateLimiter
from px_middleware.rest import PXAPIError, PXAuthError, PXRestClient

log = logging.getLogger("px_middleware.delivery")

#: Events per list body, and a cap on the request size (with ``batch_events``).
BATCH_SIZE = 100
BATCH_BYTES = 512 * 1024
#: Failed requests per item before the worker parks it and the lane moves on.
ROUND_ATTEMPTS = 3

Status = Literal["sent", "rejected", "auth", "failed", "unsent"]


class Result(NamedTuple):
    """What became of one item: ``failed`` made ``failures`` more failed requests
    (``error`` the last); ``unsent`` was not tried (an earlier item of its key failed,
    or the worker is stopping)."""

    item: Item
    status: Status
    error: str = ""
    failures: int = 0


class Exporter:
    def __init__(
        self,
        config: PXConfig,
        *,
        limiter: RateLimiter,
        pause: retry.Pause = retry.PAUSE,
        retry_base: float = 0.5,
        retry_cap: float = MAX_RETRY_WAIT,
        count: Callable[[str, int], None] = lambda name, n: None,
    ) -> None:
        self.config = config
        self._limiter = limiter
        self._pause = pause
        self._base = retry_base
        self._cap = retry_cap
        self._count = count
        self.lists = config.batch_events
        self._client: PXRestClient | None = None
        self._client_lock = threading.Lock()

    @property
    def client(self) -> PXRestClient:
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = PXRestClient(
                        self.config.rest_url,
                        self.config.api_key or "",
                        timeout=self.config.request_timeout,
                        max_connections=self.config.concurrency,
                    )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def export(
        self,
        items: list[Item],
        *,
        stop: threading.Event,
        hurry: threading.Event,
        deadline: Callable[[], float | None],
    ) -> list[Result]:
        """Send one key's ``items`` in order; one :class:`Result` per item."""
        results: list[Result] = []
        index = 0
        while index < len(items):
            if stop.is_set():
                break
            batch = self._batch(items, index)
            done = self._send(batch, stop, hurry, deadline())
            results.extend(done)
            index += len(batch)
            if any(r.status in ("failed", "unsent") for r in done):
                break  # nothing of this key may overtake it
        results.extend(Result(item, "unsent") for item in items[len(results) :])
        return results

    def _batch(self, items: list[Item], start: int) -> list[Item]:
        first = items[start]
        if first.kind != "event" or not self.lists:
            return [first]
        batch, size = [first], len(first.data)
        for item in items[start + 1 :]:
            size += len(item.data)
            if item.kind != "event" or len(batch) >= BATCH_SIZE or size > BATCH_BYTES:
                break
            batch.append(item)
        return batch

    def _send(
        self,
        batch: list[Item],
        stop: threading.Event,
        hurry: threading.Event,
        deadline: float | None,
    ) -> list[Result]:
        first = batch[0]
        if first.kind == "event":
            payload = (
                first.data if len(batch) == 1 else b"[" + b",".join(i.data for i in batch) + b"]"
            )

            def request(timeout: float | None) -> object:
                return self.client.request(
                    "POST", "/events/custom", content=payload, timeout=timeout
                )
        else:
            obj = json.loads(first.data)
            client = self.client
            upsert = client.upsert_user if first.kind == "user" else client.upsert_account

            def request(timeout: float | None) -> object:
                return upsert(obj, timeout=timeout)

        made = 0

        def counted(timeout: float | None) -> object:
            nonlocal made
            made += 1
            self._count("requests", 1)
            if made > 1 or first.attempts:  # a parked item's first request is a retry too
                self._count("retried", 1)
            return request(timeout)

        # Exactly max_attempts requests before the dead letter, a round at a time.
        left = self.config.max_attempts - first.attempts
        outcome = retry.call(
            counted,
            attempts=min(ROUND_ATTEMPTS, left) if left > 0 else ROUND_ATTEMPTS,
            deadline=deadline,
            stop=stop,
            hurry=hurry,
            limiter=self._limiter,
            pause=self._pause,
            timeout=self.config.request_timeout,
            base=self._base,
            cap=self._cap,
        )
        if outcome.status == "ok":
            return [Result(item, "sent") for item in batch]
        error = _describe_error(outcome.error)
        if outcome.status == "rejected":
            if isinstance(outcome.error, PXAuthError):
                return [Result(item, "auth", error) for item in batch]
            if len(batch) > 1:
                return self._split(batch, stop, hurry, deadline)
            return [Result(first, "rejected", error)]
        if outcome.status == "stopped":
            return [Result(item, "unsent") for item in batch]
        failures = outcome.attempts - outcome.throttled
        return [Result(first, "failed", error, failures)] + [
            Result(item, "unsent") for item in batch[1:]
        ]

    def _split(
        self,
        batch: list[Item],
        stop: threading.Event,
        hurry: threading.Event,
        deadline: float | None,
    ) -> list[Result]:
        """A refused list: send its events one by one, in order."""
        results: list[Result] = []
        for item in batch:
            if results and results[-1].status in ("failed", "unsent"):
                results.append(Result(item, "unsent"))
                continue
            results.extend(self._send([item], stop, hurry, deadline))
        if self.lists and all(r.status == "sent" for r in results):
            self.lists = False
            log.warning(
                "px_middleware: PX refused a list of events but took each of them alone; "
                "sending one event per request from now on (batch_events has no effect)"
            )
        return results


def _describe_error(error: BaseException | None) -> str:
    if error is None:
        return "gave up"
    if isinstance(error, PXAPIError):
        return str(error)
    text = str(error)
    return f"network error: {type(error).__name__}" + (f": {text}" if text else "")

"""``Delivery``: the per-process pipeline from ``capture()`` to PX.

The request path only appends ``(kind, body)`` to a deque (no JSON, no I/O, no lock).
Behind it, one *dispatcher* thread encodes what was captured, stores it in the outbox
in batches, claims stored items and hands them to ``concurrency`` *lane* threads. Each
lane sends its items in order: consecutive events as one batch request, each user or
account as an upsert. Items with the same route (session, user, account) always go to
the same lane, and a lane retries an item before sending anything after it, so per
route order survives retries, while lanes run in parallel over keep-alive connections.

Items leave the outbox only when PX has acknowledged them or they were dropped for
good (a non-retryable 4xx), so delivery is at-least-once, deduplicable by ``eventId``.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any, Literal

from px_middleware.config import MAX_RETRY_WAIT, SHUTDOWN_TIMEOUT, PXConfig
from px_middleware.delivery import retry
from px_middleware.delivery.outbox import Entry, Item, MemoryOutbox, Outbox, SQLiteOutbox
from px_middleware.delivery.ratelimit import RateLimiter, TokenBucket
from px_middleware.rest import PXAPIError, PXAuthError, PXRestClient

log = logging.getLogger("px_middleware.delivery")

KINDS = frozenset({"event", "user", "account"})
#: Events per ``POST /events/custom`` request, and a cap on the request size.
BATCH_SIZE = 100
BATCH_BYTES = 512 * 1024
#: How often the dispatcher looks for new captures when nobody wakes it.
POLL_INTERVAL = 0.05
LOG_INTERVAL = 30.0
RENEW_INTERVAL = 10.0
DROP_REASONS = ("overflow", "rejected", "auth", "invalid", "closed", "shutdown")


_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class _Marker:
    """Put in the capture deque by ``flush()``: everything ahead of it was captured before."""

    __slots__ = ("round",)

    def __init__(self) -> None:
        self.round: int | None = None  # the last outbox round holding earlier items


@dataclasses.dataclass
class _Round:
    """The items one ``put_many`` stored for this process (ids ``lo..hi``, contiguous)."""

    lo: int
    hi: int
    remaining: int


class _Lane:
    """One sending thread's FIFO of claimed items."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.queue: collections.deque[Item] = collections.deque()

    def put(self, item: Item) -> None:
        with self.cond:
            self.queue.append(item)
            self.cond.notify()

    def take(self, timeout: float) -> list[Item]:
        """The next batch: one upsert, or consecutive events up to the batch limits."""
        with self.cond:
            if not self.queue:
                self.cond.wait(timeout)
            if not self.queue:
                return []
            batch = [self.queue.popleft()]
            if batch[0].kind == "event":
                size = len(batch[0].data)
                while self.queue and len(batch) < BATCH_SIZE and self.queue[0].kind == "event":
                    size += len(self.queue[0].data)
                    if size > BATCH_BYTES:
                        break
                    batch.append(self.queue.popleft())
            return batch

    def drain(self) -> list[Item]:
        with self.cond:
            items = list(self.queue)
            self.queue.clear()
            return items


class Delivery:
    """Captures PX items on the request path and delivers them from background threads.

    One per process and configuration (see :func:`px_middleware.delivery.get_delivery`).
    ``outbox`` defaults to a :class:`SQLiteOutbox` at ``config.outbox_path``, else a
    bounded :class:`MemoryOutbox`; ``limiter`` to a :class:`TokenBucket` of
    ``config.rate_limit`` requests/s (and ``config.daily_budget``) on ``clock`` (which
    only that default limiter reads: ``flush``/``shutdown`` deadlines are real time).
    ``retry_base``/``retry_cap`` shape the backoff (each wait is at most ``retry_cap``).

    Without ``config.outbox_path`` items live in memory only: a crash or ``kill -9``
    loses what was not yet sent, and ``shutdown`` counts what it could not send.
    """

    def __init__(
        self,
        config: PXConfig,
        *,
        outbox: Outbox | None = None,
        limiter: RateLimiter | None = None,
        clock: Callable[[], float] | None = None,
        retry_base: float = 0.5,
        retry_cap: float = MAX_RETRY_WAIT,
    ) -> None:
        if config.api_key is None:
            raise ValueError("PXConfig.api_key is required to deliver events to PX")
        self.config = config
        self._clock = clock or time.monotonic
        self._limiter = limiter or TokenBucket(
            config.rate_limit, daily_budget=config.daily_budget, clock=self._clock
        )
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._lanes_count = config.concurrency
        self._claim_cap = config.concurrency * BATCH_SIZE * 2
        self._max_events = config.max_queue_events
        self._outbox_given = outbox
        self._fork_of: Outbox | None = None
        self._init_state()
        os.register_at_fork(after_in_child=_fork_hook(self))

    def _init_state(self) -> None:
        """Everything a process owns alone: rebuilt from scratch in a forked child."""
        self._pid = os.getpid()
        self._buffer: collections.deque[tuple[str, Any]] = collections.deque()
        self._start_lock = threading.Lock()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._started = False
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._lanes = [_Lane() for _ in range(self._lanes_count)]
        self._outbox: Outbox | None = None
        self._client: PXRestClient | None = None
        self._counts: dict[str, int] = dict.fromkeys(
            ["sent", "retried", "requests", *(f"dropped_{r}" for r in DROP_REASONS)], 0
        )
        self._popped = 0  # items taken off the capture deque (markers excluded)
        self._unsaved: list[Entry | _Marker] = []  # taken off the deque, not stored yet
        self._rounds: list[_Round] = []  # this process's stored, unsettled items
        self._round_lo: list[int] = []
        self._rounds_base = 0  # round number of self._rounds[0]
        self._in_transit = 0  # taken off the deque, not yet stored or dropped
        self._own_pending = 0  # stored in the outbox, not yet settled
        self._backlog = 0  # counted against max_queue_events at capture (memory mode)
        self._claimed = 0
        self._memory = False  # the outbox is a MemoryOutbox: its items count at capture
        self._pause = retry.PAUSE
        self._deadline: float | None = None  # set by shutdown(): requests must end by then

    # -- request path ---------------------------------------------------------------------
    def capture(self, kind: str, body: dict[str, Any]) -> bool:
        """Queue an item for PX; ``False`` if it was dropped. Never blocks, never raises.

        ``kind``: ``"event"`` (a custom event body with ``eventId`` and ``date``),
        ``"user"`` (a REST user object with ``identifyId``) or ``"account"`` (with
        ``id``). The body is encoded later on a background thread: do not mutate it.
        """
        try:
            if self._pid != os.getpid():
                self._after_fork()
            if kind not in KINDS:
                self._drop_now("invalid")
                return False
            if self._closed:
                self._drop_now("closed")
                return False
            if len(self._buffer) + self._backlog >= self._max_events:
                self._drop_now("overflow")
                return False
            self._buffer.append((kind, body))
            if not self._started:
                self._start()
            return True
        except Exception:  # never break the host app
            return False

    def _drop_now(self, reason: str) -> None:
        # Only the (rare) drop path takes the lock: += on a dict item is not atomic.
        with self._lock:
            self._counts["dropped_" + reason] += 1

    def start(self) -> None:
        """Start the background threads now rather than on the first capture, e.g. so a
        restarted process sends what a SQLite outbox kept before any new traffic."""
        try:
            if self._pid != os.getpid():
                self._after_fork()
            self._start()
        except Exception:
            log.exception("px_middleware: delivery could not start")

    def _start(self) -> None:
        with self._start_lock:
            if self._started or self._closed:
                return
            self._threads = [
                threading.Thread(target=self._dispatch_loop, name="px-delivery", daemon=True)
            ] + [
                threading.Thread(
                    target=self._lane_loop, args=(lane,), name=f"px-delivery-{n}", daemon=True
                )
                for n, lane in enumerate(self._lanes)
            ]
            # Daemon threads, joined only with a timeout: a stuck request can never keep
            # the process alive (concurrent.futures pools are joined at exit, unbounded).
            for thread in self._threads:
                thread.start()
            self._started = True

    # -- flush, shutdown, counters ---------------------------------------------------------
    def flush(self, timeout: float) -> bool:
        """Wait until everything captured so far was acknowledged by PX or dropped.

        Returns ``False`` when ``timeout`` seconds passed first; never waits longer. With
        a SQLite outbox, unsent items are in the file by then (or within a poll interval).
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        try:
            if self._pid != os.getpid():
                self._after_fork()
            if not self._started or self._stop.is_set():  # nobody left to do the work
                with self._lock:
                    return not self._buffer and not self._in_transit and not self._own_pending
            marker = _Marker()
            self._buffer.append(("", marker))
            self._wake.set()
            with self._cond:
                while not self._flushed(marker):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            return True
        except Exception:
            log.exception("px_middleware: flush failed")
            return False

    def _flushed(self, marker: _Marker) -> bool:
        if marker.round is None:
            return False
        self._trim_rounds()
        return not self._rounds or self._rounds_base > marker.round

    def _trim_rounds(self) -> None:
        """Forget fully settled rounds at the front (call with the lock held)."""
        done = 0
        while done < len(self._rounds) and self._rounds[done].remaining == 0:
            done += 1
        if done:
            del self._rounds[:done], self._round_lo[:done]
            self._rounds_base += done

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Send what can be sent within ``timeout`` seconds, then stop the threads.

        Always returns within ``timeout`` (requests get at most the time left). Unsent
        items stay in a SQLite outbox for the next process; from a memory outbox they
        are lost and counted as ``dropped_shutdown``. Later captures are refused.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        try:
            if self._pid != os.getpid():
                self._after_fork()
            with self._start_lock:
                if self._closed:
                    return
                self._closed = True
                started = self._started
            if started:
                margin = min(0.1 * timeout, 0.5)  # time kept for stopping and releasing
                self._deadline = deadline - margin
                self.flush(self._deadline - time.monotonic())
                self._stop.set()
                self._wake.set()
                for lane in self._lanes:
                    with lane.cond:
                        lane.cond.notify_all()
                for thread in self._threads:
                    thread.join(max(deadline - time.monotonic(), 0.0))
                if not self._threads[0].is_alive():
                    # The dispatcher may have handed items to a lane that had already
                    # left; give them back so the next process need not wait for a lease.
                    for lane in self._lanes:
                        self._release(lane.drain())
                if any(thread.is_alive() for thread in self._threads):
                    log.warning("px_middleware: delivery threads still busy after shutdown")
                    return  # they are daemons; closing under them would only add errors
            self._close_resources()
        except Exception:
            log.exception("px_middleware: shutdown failed")

    def _close_resources(self) -> None:
        with self._lock:  # what no outbox holds for a next process is lost: count it
            lost = len(self._buffer) + self._in_transit
            if self._memory:
                lost += self._own_pending
            self._counts["dropped_shutdown"] += lost
        if self._outbox is not None:
            self._outbox.close()
        if self._client is not None:
            self._client.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def counters(self) -> dict[str, int]:
        """``captured``, ``sent``, ``retried``, ``requests``, ``dropped_<reason>``,
        ``queue_depth`` (captured, not yet acknowledged or dropped) and ``outbox_size``
        (every item in the outbox, including other processes' and earlier runs')."""
        with self._lock:
            buffered = len(self._buffer)
            counts = dict(self._counts)
            counts["captured"] = self._popped + buffered
            counts["queue_depth"] = buffered + self._in_transit + self._own_pending
        outbox = self._outbox
        try:
            counts["outbox_size"] = outbox.size() if outbox is not None else 0
        except Exception:
            counts["outbox_size"] = -1
        return counts

    # -- fork -----------------------------------------------------------------------------
    def _after_fork(self) -> None:
        """In a forked child: forget the parent's queue and threads (the parent sends
        them) and reopen the outbox lazily (a SQLite connection must not cross fork)."""
        if self._pid == os.getpid():
            return
        inherited = next(
            (o for o in (self._outbox, self._outbox_given, self._fork_of) if o is not None), None
        )
        self._init_state()
        self._outbox_given = None
        self._fork_of = inherited

    # -- dispatcher thread ------------------------------------------------------------------
    def _open(self) -> None:
        self._client = PXRestClient(
            self.config.rest_url,
            self.config.api_key or "",
            timeout=self.config.request_timeout,
            max_connections=self._lanes_count,
        )
        outbox: Outbox | None = None
        try:
            if self._outbox_given is not None:
                outbox = self._outbox_given
            elif self._fork_of is not None:
                outbox = self._fork_of.fork()
            elif self.config.outbox_path:
                outbox = SQLiteOutbox(self.config.outbox_path)
        except Exception:
            log.exception("px_middleware: cannot open the outbox; keeping events in memory")
        if outbox is None:
            outbox = MemoryOutbox(self.config.max_queue_events, self.config.max_queue_bytes)
        self._outbox = outbox
        self._memory = isinstance(outbox, MemoryOutbox)

    def _dispatch_loop(self) -> None:
        try:
            self._open()
        except Exception:
            log.exception("px_middleware: delivery could not start")
            return
        next_renew = next_log = time.monotonic()
        while True:
            stopping = self._stop.is_set()
            try:
                self._store_captured()
                if stopping:
                    return
                self._claim()
                now = time.monotonic()
                if now >= next_renew:
                    next_renew = now + RENEW_INTERVAL
                    assert self._outbox is not None
                    self._outbox.renew()
                if now >= next_log:
                    next_log = now + LOG_INTERVAL
                    if log.isEnabledFor(logging.DEBUG):
                        log.debug("px_middleware delivery counters: %s", self.counters())
            except Exception:
                log.exception("px_middleware: delivery dispatcher error; continuing")
                if self._stop.wait(1.0):
                    continue
            self._wake.wait(POLL_INTERVAL)
            self._wake.clear()

    def _store_captured(self) -> None:
        """Encode what was captured and store it in the outbox in one write."""
        buffer = self._buffer
        with self._lock:  # so counters() sees each item either queued or in transit
            chunk = [buffer.popleft() for _ in range(min(len(buffer), 10_000))]
            fresh = sum(1 for _, body in chunk if not isinstance(body, _Marker))
            self._popped += fresh
            self._in_transit += fresh
        taken = self._unsaved  # what an earlier failed write left, in order
        invalid = 0
        for kind, body in chunk:
            if isinstance(body, _Marker):
                taken.append(body)
                continue
            try:
                taken.append(_encode(kind, body))
            except Exception as exc:
                invalid += 1
                log.warning("px_middleware: dropped an invalid %s item: %s", kind, exc)
        entries = [e for e in taken if not isinstance(e, _Marker)]
        assert self._outbox is not None
        try:
            ids = self._outbox.put_many(entries) if entries else []
        except Exception:
            # Keep them (still bounded by max_queue_events at capture) and try again.
            self._unsaved = taken
            with self._lock:
                self._in_transit -= invalid
                self._counts["dropped_invalid"] += invalid
                self._backlog = (self._own_pending if self._memory else 0) + self._in_transit
            log.exception("px_middleware: could not write to the outbox; will retry")
            return
        stored = [i for i in ids if i is not None]
        with self._cond:
            self._unsaved = []
            self._in_transit -= invalid + len(entries)
            self._counts["dropped_invalid"] += invalid
            self._counts["dropped_overflow"] += len(ids) - len(stored)
            if stored:
                self._rounds.append(_Round(stored[0], stored[-1], len(stored)))
                self._round_lo.append(stored[0])
                self._own_pending += len(stored)
            last_round = self._rounds_base + len(self._rounds) - 1
            for marker in taken:
                if isinstance(marker, _Marker):
                    marker.round = last_round
            self._backlog = self._own_pending if self._memory else 0
            self._cond.notify_all()

    def _claim(self) -> None:
        room = self._claim_cap - self._claimed
        if room <= 0:
            return
        assert self._outbox is not None
        items = self._outbox.claim(room)
        if not items:
            return
        with self._lock:
            self._claimed += len(items)
        for item in items:
            self._lanes[hash(item.route) % len(self._lanes)].put(item)

    # -- lane threads -----------------------------------------------------------------------
    def _lane_loop(self, lane: _Lane) -> None:
        while not self._stop.is_set():
            batch = lane.take(POLL_INTERVAL * 4)
            if not batch:
                continue
            try:
                self._deliver(batch)
            except Exception:  # a bug here must not kill the lane
                log.exception("px_middleware: delivery error; items kept for a retry")
                self._release(batch)
                self._stop.wait(1.0)
            self._wake.set()  # room to claim more
        self._release(lane.drain())

    def _deliver(self, batch: list[Item]) -> None:
        if batch[0].kind == "event":
            self._deliver_events(batch)
            return
        item = batch[0]
        obj = json.loads(item.data)
        assert self._client is not None
        upsert = self._client.upsert_user if item.kind == "user" else self._client.upsert_account
        result = self._attempt(lambda timeout: upsert(obj, timeout=timeout))
        self._conclude(batch, result)

    def _deliver_events(self, items: list[Item]) -> None:
        client = self._client
        assert client is not None
        if len(items) == 1:
            payload = items[0].data
        else:
            payload = b"[" + b",".join(item.data for item in items) + b"]"
        result = self._attempt(
            lambda timeout: client.request(
                "POST", "/events/custom", content=payload, timeout=timeout
            )
        )
        if (
            isinstance(result, PXAPIError)
            and len(items) > 1
            and not isinstance(result, PXAuthError)
        ):
            # One bad event fails the whole batch: resend one by one so only it is lost.
            for item in items:
                self._deliver_events([item])
            return
        self._conclude(items, result)

    def _conclude(self, items: list[Item], result: PXAPIError | Literal["ok", "stop"]) -> None:
        if result == "ok":
            self._settle(items, "sent")
        elif result == "stop":
            self._release(items)
        else:
            assert isinstance(result, PXAPIError)
            reason = "auth" if isinstance(result, PXAuthError) else "rejected"
            for item in items:
                log.warning(
                    "px_middleware: PX rejected %s %s; dropped: %s",
                    item.kind,
                    _describe(item),
                    result,
                )
            self._settle(items, "dropped_" + reason)

    def _attempt(
        self, send: Callable[[float | None], object]
    ) -> PXAPIError | Literal["ok", "stop"]:
        """Send until PX accepts, rejects for good (the error), or we must stop."""
        outcome = retry.call(
            send,
            stop=self._stop,
            limiter=self._limiter,
            deadline=self._deadline,
            timeout=self.config.request_timeout,
            pause=self._pause,
            base=self._retry_base,
            cap=self._retry_cap,
        )
        with self._lock:
            self._counts["requests"] += outcome.attempts
            self._counts["retried"] += max(outcome.attempts - 1, 0)
        if outcome.status == "ok":
            return "ok"
        if outcome.status == "rejected":
            assert isinstance(outcome.error, PXAPIError)
            return outcome.error
        return "stop"

    def _settle(self, items: list[Item], counter: str) -> None:
        """Items are done (sent or dropped for good): delete them from the outbox."""
        ids = [item.id for item in items]
        assert self._outbox is not None
        try:
            self._outbox.ack(ids)
        except Exception:
            log.exception("px_middleware: outbox ack failed; items may be sent again")
        with self._cond:
            self._counts[counter] += len(items)
            self._claimed -= len(items)
            for item_id in ids:
                index = bisect.bisect_right(self._round_lo, item_id) - 1
                if index >= 0 and item_id <= self._rounds[index].hi:
                    self._rounds[index].remaining -= 1
                    self._own_pending -= 1
            self._trim_rounds()
            if self._memory:
                self._backlog = self._own_pending
            self._cond.notify_all()

    def _release(self, items: list[Item]) -> None:
        if not items:
            return
        assert self._outbox is not None
        try:
            self._outbox.release([item.id for item in items])
        except Exception:
            log.exception("px_middleware: outbox release failed")
        with self._lock:
            self._claimed -= len(items)


def _encode(kind: str, body: Any) -> Entry:
    if not isinstance(body, dict):
        raise TypeError(f"body must be a dict, not {type(body).__name__}")
    if kind == "event":
        if not body.get("eventId"):
            # Fixed here, before the outbox, so every retry carries the same id.
            body = {**body, "eventId": str(uuid.uuid4())}
        route = body.get("sessionId") or body.get("identifyId") or body["eventId"]
    else:
        field = "identifyId" if kind == "user" else "id"
        ident = body.get(field)
        if isinstance(ident, bool) or not isinstance(ident, (str, int)) or ident == "":
            raise ValueError(f"a PX {kind} needs a non-empty {field}")
        route = f"{kind}:{ident}"
    return Entry(kind, str(route), _encode_json(body).encode())


def _describe(item: Item) -> str:
    try:
        body = json.loads(item.data)
    except ValueError:
        return f"#{item.id}"
    if item.kind == "event":
        return f"{body.get('eventName')!r} (eventId {body.get('eventId')})"
    return repr(body.get("identifyId" if item.kind == "user" else "id"))


def _fork_hook(delivery: Delivery) -> Callable[[], None]:
    ref = weakref.ref(delivery)

    def after_in_child() -> None:
        target = ref()
        if target is not None:
            with contextlib.suppress(Exception):  # a fork hook must never raise
                target._after_fork()

    return after_in_child

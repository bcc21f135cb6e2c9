"""``Delivery``, the worker: queue, dispatcher, lanes, flush, shutdown and fork.

The request path only appends ``(kind, body)`` to a deque (no JSON, no I/O, no lock).
Behind it one *dispatcher* thread opens the outbox first (durable first: captured
items are stored before any HTTP client exists), encodes and stores what was captured
in one write per pass, claims stored items and hands each key's items to one of
``concurrency`` *lane* threads. A lane gives a key's items to the :class:`Exporter`,
which sends them in order through the one retry loop, and settles each by its result:

- sent, or refused for good: ``ack`` (deleted), counted, a refusal logged;
- failed: ``release`` with the failure counted and the key parked for a backoff, so
  the lane goes on with other keys; after ``max_attempts`` failures over at least
  ``dead_letter_after`` seconds: ``bury`` (the dead letter), logged at WARNING;
- not tried (behind a failure, or stopping): ``release``.

The outbox decides who may send a key (one sender at a time, across processes), so
the worker keeps no per-item bookkeeping of its own: ``flush`` waits until what this
process captured is stored (a durable outbox) or gone from the memory outbox.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from px_middleware.config import MAX_RETRY_WAIT, SHUTDOWN_TIMEOUT, PXConfig
from px_middleware.core.notices import Notices
from px_middleware.delivery import retry
from px_middleware.delivery.exporter import Exporter, Result
from px_middleware.delivery.outbox import Entry, Item, MemoryOutbox, Outbox, SQLiteOutbox
from px_middleware.delivery.ratelimit import RateLimiter, TokenBucket

log = logging.getLogger("px_middleware.delivery")

KINDS = frozenset({"event", "user", "account"})
#: How often the dispatcher looks for new captures when nobody wakes it.
POLL_INTERVAL = 0.05
LOG_INTERVAL = 30.0
RENEW_INTERVAL = 10.0
#: Seconds a stored item waits before it may be sent, so that an earlier item of its
#: key that another process stores a little later still goes first. See ``outbox``.
SETTLE = 2.0
#: Seconds to keep trying to open the outbox (another process may hold it locked).
OPEN_PATIENCE = 15.0
DROP_REASONS = ("overflow", "rejected", "auth", "invalid", "closed", "shutdown", "dead")

_encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


class _Marker:
    """Put in the capture deque by ``flush()``: everything ahead of it was captured before."""

    __slots__ = ("last_id", "stored")

    def __init__(self) -> None:
        self.stored = False  # the dispatcher stored everything ahead of it
        self.last_id: int | None = None  # the highest id stored by then


class _Lane:
    """One sending thread's FIFO of keys' item groups."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.queue: collections.deque[list[Item]] = collections.deque()

    def put(self, group: list[Item]) -> None:
        with self.cond:
            self.queue.append(group)
            self.cond.notify()

    def take(self, timeout: float) -> list[Item]:
        with self.cond:
            if not self.queue:
                self.cond.wait(timeout)
            return self.queue.popleft() if self.queue else []

    def drain(self) -> list[Item]:
        with self.cond:
            items = [item for group in self.queue for item in group]
            self.queue.clear()
            return items


class Delivery:
    """Captures PX items on the request path and delivers them from background threads.

    One per process and configuration (see :func:`px_middleware.delivery.get_delivery`).
    ``outbox`` defaults to a :class:`SQLiteOutbox` at ``config.outbox_path``, else a
    bounded :class:`MemoryOutbox`; ``limiter`` to a :class:`TokenBucket` of
    ``config.rate_limit`` requests/s (and ``config.daily_budget``) on ``clock``.
    ``retry_base``/``retry_cap`` shape the backoff (each wait is at most ``retry_cap``).

    With an outbox path, the threads start at construction, so a backlog left by an
    earlier process drains without waiting for traffic. Without one, items live in
    memory only: a crash or ``kill -9`` loses what was not yet sent, and ``shutdown``
    counts and logs what it could not send.
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
        self._pause = retry.PAUSE
        if limiter is None and config.redis_url:  # one budget for every process and host
            from px_middleware.delivery.redis_budget import budget_for

            limiter = budget = budget_for(config)
            self._pause = budget.pause
        self._limiter = limiter or TokenBucket(
            config.rate_limit, daily_budget=config.daily_budget, clock=self._clock
        )
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._lanes_count = config.concurrency
        self._claim_cap = config.concurrency * 200
        self._max_events = config.max_queue_events
        self._outbox_given = outbox
        self._fork_of: Outbox | None = None
        self._init_state()
        os.register_at_fork(after_in_child=_fork_hook(self))
        if config.outbox_path or config.redis_url or (outbox is not None and outbox.durable):
            self.start()  # drain on start: a backlog must not wait for traffic

    def _init_state(self) -> None:
        """Everything a process owns alone: rebuilt from scratch in a forked child."""
        self._pid = os.getpid()
        # Its lock too: a parent's thread may hold it at fork(), and a child that waits
        # for it would never store or send anything.
        self._notices = Notices(log)
        self._buffer: collections.deque[tuple[str, Any, float]] = collections.deque()
        self._start_lock = threading.Lock()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._hurry = threading.Event()  # shutdown: no more waiting, one last try each
        self._opened = threading.Event()
        self._started = False
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._lanes = [_Lane() for _ in range(self._lanes_count)]
        self._outbox: Outbox | None = None
        self._exporter = Exporter(
            self.config,
            limiter=self._limiter,
            pause=self._pause,
            retry_base=self._retry_base,
            retry_cap=self._retry_cap,
            count=self._add,
        )
        self._counts: dict[str, int] = dict.fromkeys(
            ["sent", "retried", "requests", *(f"dropped_{r}" for r in DROP_REASONS)], 0
        )
        self._popped = 0  # items taken off the capture deque (markers excluded)
        self._unsaved: list[Entry | _Marker] = []  # taken off the deque, not stored yet
        self._in_transit = 0  # taken off the deque, not yet stored or dropped
        self._last_id: int | None = None  # the highest id this process stored
        self._claimed = 0
        self._deadline: float | None = None  # set by shutdown(): requests must end by then
        self._last_error = ""
        self._drained = False  # shutting down, and nothing is left that we could send
        self._memory_size = 0  # MemoryOutbox.size(), kept by the threads for capture()

    def _add(self, name: str, n: int) -> None:
        if n:
            with self._lock:
                self._counts[name] += n

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
                self._drop("invalid", 1, f"unknown kind {kind!r}")
                return False
            if self._closed:
                self._drop("closed", 1, "captured after shutdown")
                return False
            if len(self._buffer) + self._backlog() >= self._max_events:
                self._drop("overflow", 1, f"the queue holds max_queue_events={self._max_events}")
                return False
            self._buffer.append((kind, body, time.time()))  # capture order across processes
            if not self._started:
                self._start()
            return True
        except Exception:  # never break the host app
            return False

    def _backlog(self) -> int:
        """Items counted against ``max_queue_events`` besides the capture deque."""
        outbox = self._outbox
        if outbox is None or outbox.durable:
            return self._in_transit
        return self._in_transit + self._memory_size

    def _drop(self, reason: str, count: int, detail: str) -> None:
        if count <= 0:
            return
        with self._lock:
            self._counts["dropped_" + reason] += count
        self._notices.note(f"dropped ({reason})", count, detail)

    def start(self) -> None:
        """Start the background threads now rather than on the first capture."""
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
        """Wait until everything captured so far is durable (stored in a durable outbox)
        or, without one, acknowledged by PX or dropped.

        Returns ``False`` when ``timeout`` seconds passed first; never waits longer.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        try:
            if self._pid != os.getpid():
                self._after_fork()
            if not self._started or self._stop.is_set():  # nobody left to do the work
                with self._lock:
                    return not self._buffer and not self._in_transit and self._settled(None)
            marker = _Marker()
            self._buffer.append(("", marker, 0.0))
            self._wake.set()
            with self._cond:
                while not (marker.stored and self._settled(marker.last_id)):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._cond.wait(min(remaining, 0.5))
            return True
        except Exception:
            log.exception("px_middleware: flush failed")
            return False

    def _settled(self, last_id: int | None) -> bool:
        outbox = self._outbox
        if outbox is None or outbox.durable or last_id is None:
            return True
        oldest = outbox.oldest()
        return oldest is None or oldest > last_id

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT) -> None:
        """Send what can be sent within ``timeout`` seconds, then stop the threads.

        Every lane stops waiting out backoff and tries once more right away. Always
        returns within ``timeout``. Unsent items stay in a durable outbox for the next
        process; from memory they are lost, counted as ``dropped_shutdown`` and logged
        at WARNING with the last error. Later captures are refused.
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
                self._hurry.set()
                if isinstance(self._outbox, MemoryOutbox):
                    self._outbox.unpark()
                self._wake.set()
                self.flush(self._deadline - time.monotonic())
                if self._outbox is not None and self._outbox.durable:
                    # Stored is not sent: use the time left to send what can be sent
                    # (ours or not), until nobody holds anything that we could send.
                    with self._cond:
                        while not self._drained and (left := self._deadline - time.monotonic()) > 0:
                            self._cond.wait(min(left, 0.5))
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
                    self._report_left()
                    return  # they are daemons; closing under them would only add errors
            self._report_left()
            if self._outbox is not None:
                self._outbox.close()
            self._exporter.close()
        except Exception:
            log.exception("px_middleware: shutdown failed")

    def _report_left(self) -> None:
        """Count and log, at WARNING, what this process could not deliver."""
        with self._lock:
            lost = len(self._buffer) + self._in_transit
        outbox = self._outbox
        kept = 0
        if outbox is not None:
            try:
                held = outbox.size()
            except Exception:
                held = 0
            if outbox.durable:
                kept = held
            else:
                lost += held
        reason = self._last_error or "no time left before the shutdown deadline"
        if lost:
            self._drop("shutdown", lost, f"not delivered before exit (last error: {reason})")
        if kept:
            log.warning(
                "px_middleware: %d items left in the outbox %s for the next process "
                "(last error: %s)",
                kept,
                self.config.outbox_path,
                reason,
            )
        self._notices.flush(force=True)

    @property
    def closed(self) -> bool:
        return self._closed

    def counters(self) -> dict[str, int]:
        """``captured``, ``sent``, ``retried``, ``requests``, ``dropped_<reason>``,
        ``queue_depth`` (captured by this process and not yet durable in an outbox,
        or, without one, not yet acknowledged or dropped) and ``outbox_size`` (every
        item in the outbox, including other processes' and earlier runs')."""
        outbox = self._outbox
        try:
            size = outbox.size() if outbox is not None else 0
        except Exception:
            size = -1
        with self._lock:
            buffered = len(self._buffer)
            counts = dict(self._counts)
            counts["captured"] = self._popped + buffered
            depth = buffered + self._in_transit
            if outbox is not None and not outbox.durable:
                depth += max(size, 0)
            counts["queue_depth"] = depth
        counts["outbox_size"] = size
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
        outbox: Outbox | None = None
        give_up = time.monotonic() + OPEN_PATIENCE
        while outbox is None:
            try:
                if self._outbox_given is not None:
                    outbox = self._outbox_given
                elif self._fork_of is not None:
                    outbox = self._fork_of.fork()
                elif self.config.redis_url:
                    from px_middleware.delivery.redis_outbox import outbox_for

                    outbox = outbox_for(self.config, settle=SETTLE)
                elif self.config.outbox_path:
                    outbox = SQLiteOutbox(self.config.outbox_path, settle=SETTLE)
                break
            except Exception:
                # Captures wait in the deque meanwhile (bounded by max_queue_events).
                if time.monotonic() < give_up and not self._stop.wait(0.5):
                    continue
                log.exception("px_middleware: cannot open the outbox; keeping events in memory")
                break
        if outbox is None:
            outbox = MemoryOutbox(self.config.max_queue_events, self.config.max_queue_bytes)
        self._outbox = outbox
        self._opened.set()

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
                claimed = self._claim()
                if self._hurry.is_set() and not claimed and self._quiet():
                    with self._cond:
                        self._drained = True
                        self._cond.notify_all()
                now = time.monotonic()
                if now >= next_renew:
                    next_renew = now + RENEW_INTERVAL
                    assert self._outbox is not None
                    self._outbox.renew()
                if now >= next_log:
                    next_log = now + LOG_INTERVAL
                    if log.isEnabledFor(logging.DEBUG):
                        log.debug("px_middleware delivery counters: %s", self.counters())
                self._notices.flush()
            except Exception as exc:
                self._notices.note("delivery error", 1, f"{type(exc).__name__}: {exc}")
                if self._stop.wait(1.0):
                    continue
            self._wake.wait(POLL_INTERVAL)
            self._wake.clear()

    def _store_captured(self) -> None:
        """Encode what was captured and store it in the outbox in one write."""
        buffer = self._buffer
        with self._lock:  # so counters() sees each item either queued or in transit
            chunk = [buffer.popleft() for _ in range(min(len(buffer), 10_000))]
            fresh = sum(1 for _, body, _ in chunk if not isinstance(body, _Marker))
            self._popped += fresh
            self._in_transit += fresh
        taken = self._unsaved  # what an earlier failed write left, in order
        invalid = 0
        for kind, body, at in chunk:
            if isinstance(body, _Marker):
                taken.append(body)
                continue
            try:
                taken.append(_encode(kind, body, at))
            except Exception as exc:
                invalid += 1
                self._drop("invalid", 1, f"an invalid {kind} item: {exc}")
        entries = [e for e in taken if not isinstance(e, _Marker)]
        assert self._outbox is not None
        try:
            ids = self._outbox.put_many(entries) if entries else []
        except Exception as exc:
            # Keep them (still bounded by max_queue_events at capture) and try again.
            self._unsaved = taken
            with self._lock:
                self._in_transit -= invalid
            self._notices.note(
                "outbox write failed (items kept in memory, retrying)",
                1,
                f"{type(exc).__name__}: {exc}",
            )
            return
        stored = [i for i in ids if i is not None]
        with self._cond:
            self._unsaved = []
            self._in_transit -= invalid + len(entries)
            if stored:
                self._last_id = max(stored[-1], self._last_id or 0)
            for marker in taken:
                if isinstance(marker, _Marker):
                    marker.stored = True
                    marker.last_id = self._last_id
            self._memory_size = 0 if self._outbox.durable else self._outbox.size()
            self._cond.notify_all()
        self._drop("overflow", len(ids) - len(stored), "the outbox is full (max_queue_events rows)")

    def _quiet(self) -> bool:
        """Shutting down: nothing of ours in flight, and nobody holds what we could send."""
        with self._lock:
            if self._buffer or self._in_transit or self._unsaved or self._claimed:
                return False
        outbox = self._outbox
        assert outbox is not None
        if not outbox.durable:
            return True
        stats = outbox.stats()  # anyone's item in flight, or too new to send yet: wait
        return stats["claimed"] == 0 and stats["settling"] == 0

    def _claim(self) -> int:
        room = self._claim_cap - self._claimed
        if room <= 0:
            return 0
        assert self._outbox is not None
        items = self._outbox.claim(room)
        if not items:
            return 0
        with self._lock:
            self._claimed += len(items)
        groups: dict[str, list[Item]] = {}
        for item in items:
            groups.setdefault(item.key, []).append(item)
        for key, group in groups.items():
            self._lanes[hash(key) % len(self._lanes)].put(group)
        return len(items)

    # -- lane threads -----------------------------------------------------------------------
    def _lane_loop(self, lane: _Lane) -> None:
        self._opened.wait()
        while not self._stop.is_set():
            group = lane.take(POLL_INTERVAL * 4)
            if not group:
                continue
            try:
                results = self._exporter.export(
                    group, stop=self._stop, hurry=self._hurry, deadline=lambda: self._deadline
                )
                self._conclude(results)
            except Exception as exc:  # a bug here must not kill the lane
                self._notices.note("delivery error", 1, f"{type(exc).__name__}: {exc}")
                self._release(group)
                self._stop.wait(1.0)
            self._wake.set()  # room to claim more
        self._release(lane.drain())

    def _conclude(self, results: list[Result]) -> None:
        outbox = self._outbox
        assert outbox is not None
        done: list[int] = []
        sent = 0
        unsent: list[Item] = []
        for result in results:
            item = result.item
            if result.status == "sent":
                done.append(item.id)
                sent += 1
            elif result.status in ("rejected", "auth"):
                done.append(item.id)
                self._drop(
                    result.status, 1, f"PX refused {item.kind} {_describe(item)}: {result.error}"
                )
            elif result.status == "failed":
                self._failed(item, result)
            else:
                unsent.append(item)
        try:
            outbox.ack(done)
        except Exception as exc:
            self._notices.note("outbox ack failed (items may be sent again)", 1, str(exc))
        self._release(unsent)
        with self._cond:
            self._counts["sent"] += sent
            self._claimed -= len(done)
            self._memory_size = 0 if outbox.durable else outbox.size()
            self._cond.notify_all()

    def _failed(self, item: Item, result: Result) -> None:
        """An item PX did not take in this round: park it for a backoff, or bury it."""
        outbox = self._outbox
        assert outbox is not None
        self._last_error = result.error
        attempts = item.attempts + max(result.failures, 1)
        now = time.time()
        first = item.first_failure or now
        try:
            if (
                attempts >= self.config.max_attempts
                and now - first >= self.config.dead_letter_after
                and not self._hurry.is_set()
            ):
                outbox.bury([item.id], result.error, failed=max(result.failures, 1))
                self._drop(
                    "dead",
                    1,
                    f"{item.kind} {_describe(item)} moved to the dead letter after "
                    f"{attempts} attempts: {result.error}",
                )
            else:
                delay = retry.backoff(attempts, base=self._retry_base, cap=self._retry_cap)
                outbox.release(
                    [item.id],
                    failed=max(result.failures, 1),
                    error=result.error,
                    retry_at=now + delay,
                )
        except Exception as exc:
            self._notices.note("outbox update failed", 1, f"{type(exc).__name__}: {exc}")
        with self._cond:
            self._claimed -= 1
            self._cond.notify_all()

    def _release(self, items: list[Item]) -> None:
        if not items:
            return
        assert self._outbox is not None
        try:
            self._outbox.release([item.id for item in items])
        except Exception as exc:
            self._notices.note("outbox release failed", 1, f"{type(exc).__name__}: {exc}")
        with self._lock:
            self._claimed -= len(items)


def _encode(kind: str, body: Any, at: float) -> Entry:
    if not isinstance(body, dict):
        raise TypeError(f"body must be a dict, not {type(body).__name__}")
    if kind == "event":
        if not body.get("eventId"):
            # Fixed here, before the outbox, so every retry carries the same id.
            body = {**body, "eventId": str(uuid.uuid4())}
        key = body.get("sessionId") or body.get("identifyId") or body["eventId"]
        date = body.get("date")
        if isinstance(date, (int, float)) and not isinstance(date, bool):
            # The event's own time (the request's start), not when it was captured: a
            # page view is captured when its response ends, after the browser may
            # already have asked another worker for the next page.
            at = date / 1000.0
    else:
        field = "identifyId" if kind == "user" else "id"
        ident = body.get(field)
        if isinstance(ident, bool) or not isinstance(ident, (str, int)) or ident == "":
            raise ValueError(f"a PX {kind} needs a non-empty {field}")
        key = f"{kind}:{ident}"
    return Entry(kind, str(key), _encode_json(body).encode(), at)


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

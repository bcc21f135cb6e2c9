"""One PX request budget for every process on every host, kept in Redis.

PX allows about 200 requests/s and 1,000,000 requests/day *per subscription* and sends
no ``Retry-After``. A per-process token bucket cannot know how many processes share
the key, so with ``PXConfig.redis_url`` every sender asks this limiter instead.

Everything lives in one Redis hash per subscription (``px:<key digest>:budget``) and
changes only inside Lua scripts, which Redis runs atomically:

- **Rate: GCRA** (the generic cell rate algorithm). ``tat`` is the theoretical arrival
  time of the next request; a request may go at ``tat - tolerance``, where the tolerance
  lets ``burst`` requests through back to back. Time is Redis ``TIME``, so the hosts'
  clocks never matter. The script *reserves* the slot: it answers "go in 12 ms" and
  moves ``tat`` on, so the sender waits locally and sends without asking again, which
  makes it one round trip per PX request, and no thundering herd of retries. A
  reservation never reaches further than ``horizon`` ahead.
- **Day: a counter per UTC day** (PX does not say which day it means; the calendar day
  is the cautious reading for a quota that resets). When it is spent the script refuses,
  counts the refusal in the hash, and the sender logs it at WARNING; items wait in the
  outbox until the next UTC day. Nothing is dropped.
- **Pause after a 429**: ``rate_limited()`` sets ``pause_until`` for everybody. Each
  429 that arrives after the previous pause ended doubles the pause (``base``, 2x, 4x,
  up to ``cap``); 429s from requests already in flight during a pause do not escalate
  it; a quiet ``reset`` period starts again at ``base``.

Fail open: if Redis cannot be reached the limiter falls back to this process's own
:class:`TokenBucket` at the configured rate (the behaviour without Redis), logs a
WARNING at most every 30 s, counts ``redis_errors`` and tries Redis again a second
later. A slow or dead Redis can delay a background sender, never a web request.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from px_middleware.config import MAX_RETRY_WAIT, PXConfig
from px_middleware.core.notices import Notices
from px_middleware.delivery.ratelimit import TokenBucket
from px_middleware.delivery.retry import Pause

if TYPE_CHECKING:
    import redis

log = logging.getLogger("px_middleware.delivery")

#: PX's published daily quota per subscription.
PX_DAILY_BUDGET = 1_000_000
#: Seconds between two WARNING lines about the same trouble.
#: A reserved slot is used at most this many seconds late (a stall), else taken again:
#: later, it would add to a burst; a tighter margin wastes slots on a busy machine.
MAX_LATE = 0.05
#: After a Redis error, the local bucket decides for this long before Redis is tried again.
RETRY_REDIS_AFTER = 1.0

# KEYS[1] = budget hash. ARGV: interval_us, tolerance_us, daily_budget (0: none), horizon_us.
# Answers {code, wait_us}: 0 = granted (wait, then send), 1 = paused, 2 = day spent,
# 3 = too far ahead (ask again after wait).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local s = redis.call('HMGET', KEYS[1], 'tat', 'day', 'used', 'pause_until')
local pause_until = tonumber(s[4]) or 0
if now < pause_until then return {1, pause_until - now} end
local day = math.floor(tonumber(t[1]) / 86400)
local used = tonumber(s[3]) or 0
if tonumber(s[2]) ~= day then used = 0 end
local budget = tonumber(ARGV[3])
if budget > 0 and used >= budget then
  redis.call('HINCRBY', KEYS[1], 'refused_daily', 1)
  redis.call('HSET', KEYS[1], 'day', day, 'used', used)
  return {2, (day + 1) * 86400000000 - now}
end
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = math.max(tonumber(s[1]) or now, now)
local go = math.max(tat - tolerance, now)
if go - now > tonumber(ARGV[4]) then return {3, go - now - tonumber(ARGV[4])} end
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat + interval),
           'day', day, 'used', used + 1)
redis.call('HINCRBY', KEYS[1], 'granted', 1)
redis.call('PEXPIRE', KEYS[1], 172800000)
return {0, go - now}
"""

# KEYS[1] = budget hash. ARGV: base_us, cap_us, reset_us, retry_after_us (-1: none; PX
# sends none, the stand-in may). Answers {level, pause_us}.
_RATE_LIMITED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local s = redis.call('HMGET', KEYS[1], 'pause_until', 'pause_level')
local pause_until = tonumber(s[1]) or 0
local level = tonumber(s[2]) or 0
redis.call('HINCRBY', KEYS[1], 'rate_limited', 1)
if now < pause_until then return {level, pause_until - now} end
if now - pause_until > tonumber(ARGV[3]) then level = 0 end
level = level + 1
local pause = math.min(tonumber(ARGV[2]), tonumber(ARGV[1]) * 2 ^ (level - 1))
if tonumber(ARGV[4]) >= 0 then pause = math.min(tonumber(ARGV[2]), tonumber(ARGV[4])) end
redis.call('HSET', KEYS[1], 'pause_until', string.format('%.0f', now + pause),
           'pause_level', level)
redis.call('HINCRBY', KEYS[1], 'pauses', 1)
redis.call('PEXPIRE', KEYS[1], 172800000)
return {level, pause}
"""


def key_prefix(api_key: str) -> str:
    """``px:<digest>``: one namespace per PX subscription, without the key in clear."""
    return "px:" + hashlib.sha256(api_key.encode()).hexdigest()[:16]


class RedisBudget:
    """The :class:`~px_middleware.delivery.ratelimit.RateLimiter` shared through Redis.

    ``rate`` requests/s with bursts of ``burst`` (default: a tenth of a second's worth,
    so no 1-second window holds more than ``rate + burst``), ``daily_budget`` requests
    per UTC day (``None``: PX's 1,000,000). Thread-safe; fork-safe as long as the
    ``redis`` client is (redis-py reconnects in a child process).
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        rate: float,
        burst: float | None = None,
        daily_budget: int | None = None,
        horizon: float = 1.0,
        pause_base: float = 1.0,
        pause_cap: float = 30.0,
        pause_reset: float = 60.0,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive (requests per second)")
        self.key = prefix + ":budget"
        self.rate = float(rate)
        self.burst = max(1.0, rate / 10 if burst is None else float(burst))
        self.daily_budget = PX_DAILY_BUDGET if daily_budget is None else daily_budget
        interval = 1e6 / self.rate
        self._acquire_args = (
            round(interval),
            round((self.burst - 1) * interval),
            self.daily_budget,
            round(horizon * 1e6),
        )
        self.pause_base, self.pause_cap = pause_base, pause_cap
        self._pause_args = [round(s * 1e6) for s in (pause_base, pause_cap, pause_reset)]
        self._client = client
        self._acquire = client.register_script(_ACQUIRE)
        self._rate_limited = client.register_script(_RATE_LIMITED)
        self._local = threading.local()  # this thread's reserved slot (monotonic time)
        self._fallback = TokenBucket(rate)
        self._lock = threading.Lock()
        self._hold_until = 0.0  # paused or day spent: no need to ask Redis before then
        self._redis_down_until = 0.0
        self._notices = Notices(log)
        self.counts: dict[str, int] = dict.fromkeys(
            ["granted", "late", "paused", "refused_daily", "redis_errors", "fallback_grants"], 0
        )
        #: The 429 pause to give the exporter: shared through this budget.
        self.pause = SharedPause(self)
        ref = weakref.ref(self)  # a sender thread may hold the lock at fork()
        os.register_at_fork(after_in_child=lambda: _after_fork(ref))

    # -- RateLimiter ---------------------------------------------------------------------
    def try_acquire(self) -> float:
        """``0.0``: send now. Else seconds to wait; calling again after that wait sends
        on the slot reserved by the first call (no second round trip)."""
        now = time.monotonic()
        slot: float | None = getattr(self._local, "slot", None)
        if slot is not None:
            if now < slot:
                return slot - now
            self._local.slot = None
            if now - slot <= MAX_LATE:
                return 0.0
            # Woken this late (a stalled process), the slot would add to a burst of
            # others sent on time: give it up and queue again.
            self._count("late")
        if now < self._hold_until:
            return self._hold_until - now
        if now < self._redis_down_until:
            return self._fallback_acquire()
        try:
            code, wait_us = self._acquire(keys=[self.key], args=self._acquire_args)
        except Exception as exc:
            self._redis_failed(exc)
            return self._fallback_acquire()
        wait = int(wait_us) / 1e6
        if code == 0:
            self._count("granted")
            if wait <= 0:
                return 0.0
            self._local.slot = now + wait
            return wait
        if code == 1:
            self._count("paused")
            self._hold(now + wait)
        elif code == 2:
            self._count("refused_daily")
            self._notices.note(
                f"the daily PX budget of {self.daily_budget} requests is spent", 1,
                "items wait in the outbox until 00:00 UTC",
            )
            self._hold(now + min(wait, 5.0))  # look again soon: the budget may be raised
        return wait

    def rate_limited(self, retry_after: float | None = None) -> float | None:
        """PX answered 429: pause every sender that shares this budget. Returns the pause
        in seconds, ``None`` when Redis could not be told (the caller pauses alone)."""
        after = -1 if retry_after is None else round(max(retry_after, 0.0) * 1e6)
        try:
            _level, pause_us = self._rate_limited(
                keys=[self.key], args=[*self._pause_args, after]
            )
        except Exception as exc:
            self._redis_failed(exc)
            return None
        pause = int(pause_us) / 1e6
        self._hold(time.monotonic() + pause)
        return pause

    def held(self) -> float:
        """Seconds this process knows it must still wait (a pause, a spent day)."""
        return max(self._hold_until - time.monotonic(), 0.0)

    # -- reporting -----------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """The shared state as ``outbox stats`` prints it (one HGETALL)."""
        raw = self._client.hgetall(self.key)
        fields = {_text(k): _text(v) for k, v in raw.items()}
        (seconds, micros) = self._client.time()
        now = seconds * 1_000_000 + micros
        today = now // 86_400_000_000
        used = int(fields.get("used", 0)) if int(fields.get("day", -1)) == today else 0
        return {
            "rate_limit": self.rate,
            "burst": self.burst,
            "daily_budget": self.daily_budget,
            "used_today": used,
            "refused_daily": int(fields.get("refused_daily", 0)),
            "granted_total": int(fields.get("granted", 0)),
            "rate_limited_total": int(fields.get("rate_limited", 0)),
            "pauses_total": int(fields.get("pauses", 0)),
            "paused_for_s": max(int(float(fields.get("pause_until", 0))) - now, 0) / 1e6,
        }

    # -- internals -----------------------------------------------------------------------
    def _fallback_acquire(self) -> float:
        wait = self._fallback.try_acquire()
        if wait == 0.0:
            self._count("fallback_grants")
        return wait

    def _redis_failed(self, exc: Exception) -> None:
        self._count("redis_errors")
        self._redis_down_until = time.monotonic() + RETRY_REDIS_AFTER
        self._notices.note(
            "Redis budget unreachable", 1,
            f"{exc}; this process limits itself to {self.rate:g} requests/s until it is back",
        )

    def _hold(self, until: float) -> None:
        with self._lock:
            self._hold_until = max(self._hold_until, until)

    def _count(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1


class SharedPause(Pause):
    """``retry.Pause`` for every process that shares a :class:`RedisBudget`.

    ``hit`` (a 429) sets the shared pause in Redis; ``remaining`` is what this process
    learnt from its last round trip (a paused acquire or its own ``hit``), so asking
    costs nothing. When Redis cannot be told, the process pauses alone, as without Redis.
    """

    def __init__(self, budget: RedisBudget) -> None:
        super().__init__(budget.pause_base, budget.pause_cap)
        self._budget = budget

    def hit(
        self,
        retry_after: float | None = None,
        *,
        base: float | None = None,
        cap: float | None = None,
    ) -> float:
        shared = self._budget.rate_limited(retry_after)
        if shared is None:
            return super().hit(retry_after, base=base, cap=cap)
        return shared

    def remaining(self) -> float:
        return max(super().remaining(), self._budget.held())


def budget_for(config: PXConfig) -> RedisBudget:
    """The shared budget for ``config.redis_url``: ``rate_limit`` requests/s for all
    processes together and ``daily_budget`` (PX's 1,000,000 when unset) per UTC day."""
    from px_middleware.delivery.redis_connect import connect

    assert config.redis_url and config.api_key
    return RedisBudget(
        connect(config.redis_url),
        key_prefix(config.api_key),
        rate=config.rate_limit,
        daily_budget=config.daily_budget,
        pause_cap=MAX_RETRY_WAIT,
    )


def _after_fork(ref: weakref.ref[RedisBudget]) -> None:
    budget = ref()
    if budget is not None:
        budget._lock = threading.Lock()
        budget._local = threading.local()
        budget.pause._reset()
        budget._hold_until = 0.0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

"""The shared PX budget's Lua scripts, run by a real Redis (fakeredis cannot run Lua).

Time inside the scripts is Redis ``TIME``; where a test needs time to have passed (a
pause that ended, a new day), it rewrites the stored timestamps instead of sleeping.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Iterator

import pytest
import redis

from px_middleware.delivery.redis_budget import RedisBudget, key_prefix
from px_middleware.delivery.redis_connect import connect
from tests.support.servers import free_port

PREFIX = key_prefix("test-api-key")


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def budget(client: redis.Redis, **options: float) -> RedisBudget:
    rate = options.pop("rate", 1.0)
    return RedisBudget(client, PREFIX, rate=rate, **options)  # type: ignore[arg-type]


def acquire_raw(b: RedisBudget) -> tuple[int, float]:
    """One script call, bypassing the per-thread reservation (as a new process would)."""
    code, wait_us = b._acquire(keys=[b.key], args=b._acquire_args)
    return int(code), int(wait_us) / 1e6


def test_burst_then_refusal_beyond_the_horizon(client: redis.Redis) -> None:
    b = budget(client, rate=1.0, burst=5, horizon=0.0)
    grants = [acquire_raw(b) for _ in range(5)]
    assert grants == [(0, 0.0)] * 5
    code, wait = acquire_raw(b)
    assert code == 3 and 0.0 < wait <= 1.0  # the 6th must wait for the next second


def test_reservations_are_spaced_by_the_interval(client: redis.Redis) -> None:
    b = budget(client, rate=2.0, burst=1, horizon=10.0)
    waits = [acquire_raw(b) for _ in range(4)]
    assert [code for code, _ in waits] == [0, 0, 0, 0]
    assert waits[0][1] == 0.0
    gaps = [later[1] - earlier[1] for earlier, later in itertools.pairwise(waits)]
    # Each reservation is one interval (0.5 s) after the previous, less the time the
    # calls themselves took: never more, and never much less on any sane machine.
    assert all(0.25 < gap <= 0.5 for gap in gaps), gaps
    assert int(client.hget(b.key, "granted") or 0) == 4


def test_a_reserved_slot_is_sent_without_a_second_round_trip(client: redis.Redis) -> None:
    b = budget(client, rate=4.0, burst=1, horizon=10.0)
    assert b.try_acquire() == 0.0
    wait = b.try_acquire()
    assert 0.0 < wait <= 0.25
    threading.Event().wait(wait)  # the caller's own wait, as the sender does it
    assert b.try_acquire() == 0.0
    assert int(client.hget(b.key, "granted") or 0) == 2  # the third call was the slot


def test_reservations_stop_at_the_horizon(client: redis.Redis) -> None:
    b = budget(client, rate=10.0, burst=1, horizon=0.5)
    codes = [acquire_raw(b)[0] for _ in range(20)]
    # 0.5 s ahead at 10/s: the first grant plus about five reservations, then refusals.
    assert 4 <= codes.count(0) <= 7 and codes[-1] == 3


def test_daily_budget_refuses_counts_and_logs(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    b = budget(client, rate=1000.0, daily_budget=3, horizon=10.0)
    other_host = budget(client, rate=1000.0, daily_budget=3, horizon=10.0)
    assert [acquire_raw(b)[0] for _ in range(2)] == [0, 0]
    assert acquire_raw(other_host)[0] == 0  # one budget for both
    with caplog.at_level(logging.WARNING, logger="px_middleware"):
        wait = b.try_acquire()
        assert b.try_acquire() > 0  # held locally: no second refusal round trip
    assert 0 < wait <= 86_400
    assert b.counts["refused_daily"] == 1
    assert b.stats()["refused_daily"] == 1 and b.stats()["used_today"] == 3
    assert [r for r in caplog.records if "daily PX budget of 3" in r.getMessage()]


def test_a_new_utc_day_starts_a_new_count(client: redis.Redis) -> None:
    b = budget(client, rate=1000.0, daily_budget=1, horizon=10.0)
    assert acquire_raw(b)[0] == 0
    assert acquire_raw(b)[0] == 2
    client.hincrby(b.key, "day", -1)  # as if that count was yesterday's
    assert acquire_raw(b)[0] == 0


def test_a_429_pauses_every_host_and_escalates_only_after_the_pause(
    client: redis.Redis,
) -> None:
    host_a = budget(client, rate=100.0, pause_base=1.0, pause_cap=4.0)
    host_b = budget(client, rate=100.0, pause_base=1.0, pause_cap=4.0)
    assert 0.9 < host_a.pause.hit() <= 1.0
    code, wait = acquire_raw(host_b)
    assert code == 1 and 0.5 < wait <= 1.0  # the other host pauses too
    host_b.pause.hit()  # a request in flight during the pause: no escalation
    assert client.hget(host_a.key, "pause_level") == b"1"

    def end_pause() -> None:  # as if the pause had run out a moment ago
        (seconds, micros) = client.time()
        client.hset(host_a.key, "pause_until", (seconds * 1_000_000 + micros) - 1000)

    pauses = []
    for _ in range(4):
        end_pause()
        pauses.append(host_b.pause.hit())
    assert [round(p) for p in pauses] == [2, 4, 4, 4]  # doubling, capped
    assert int(client.hget(host_a.key, "pauses") or 0) == 5


def test_a_quiet_period_resets_the_pause(client: redis.Redis) -> None:
    b = budget(client, rate=100.0, pause_base=1.0, pause_reset=60.0)
    b.pause.hit()
    (seconds, micros) = client.time()
    client.hset(b.key, "pause_until", (seconds - 61) * 1_000_000 + micros)
    assert round(b.pause.hit()) == 1
    assert client.hget(b.key, "pause_level") == b"1"


def test_redis_unreachable_falls_back_to_the_local_bucket(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dead = connect(f"redis://127.0.0.1:{free_port()}/0")
    b = RedisBudget(dead, PREFIX, rate=5.0, burst=2)
    with caplog.at_level(logging.WARNING, logger="px_middleware"):
        waits = [b.try_acquire() for _ in range(6)]
        assert b.rate_limited() is None  # not shared: the caller pauses alone
    assert waits[0] == 0.0  # never raises, never blocks on Redis
    assert 2 <= waits.count(0.0) < 6  # the local bucket still limits
    assert b.counts["redis_errors"] >= 1 and b.counts["fallback_grants"] >= 2
    warnings = [r for r in caplog.records if "Redis budget unreachable" in r.getMessage()]
    assert len(warnings) == 1  # rate-limited: one line, the count in the counters


def test_the_shared_pause_is_what_the_retry_loop_waits_for(client: redis.Redis) -> None:
    host_a = budget(client, rate=100.0, pause_base=1.0)
    host_b = budget(client, rate=100.0, pause_base=1.0)
    assert 0.9 < host_a.pause.hit() <= 1.0
    assert host_b.pause.remaining() == 0.0  # B has not asked Redis yet: no round trip
    assert host_b.try_acquire() > 0.5  # its next acquire learns of the pause...
    assert 0.5 < host_b.pause.remaining() <= 1.0  # ...which the retry loop then honours
    assert 0.9 < host_b.pause.hit(retry_after=1.0) <= 1.0  # in flight: no escalation


def test_a_pause_when_redis_is_gone_is_this_processes_own() -> None:
    dead = connect(f"redis://127.0.0.1:{free_port()}/0")
    b = RedisBudget(dead, PREFIX, rate=5.0, pause_base=0.5)
    assert 0.4 < b.pause.hit() <= 0.5 and 0.0 < b.pause.remaining() <= 0.5

"""``RedisOutbox`` against a real Redis: the outbox protocol's promises across handles.

Two handles on one Redis stand for two hosts. Lease rounds are forced with
``renew()``; where a lease must lapse, the test waits for that condition with a
deadline (the lease is made short), never for a fixed time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from px_middleware.delivery.outbox import Entry, Item
from px_middleware.delivery.redis_connect import connect
from px_middleware.delivery.redis_outbox import (
    RedisOutbox,
    decode_id,
    encode_id,
    shard_of,
)
from tests.support.redis_server import RedisServer

PREFIX = "px:test"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = connect(redis_url)
    yield connection
    connection.close()


def handle(client: redis.Redis, **options: float) -> RedisOutbox:
    return RedisOutbox(client, PREFIX, **options)  # type: ignore[arg-type]


def event(key: str, n: int) -> Entry:
    return Entry("event", key, json.dumps({"eventId": f"{key}-{n}", "n": n}).encode())


def upsert(user: str, **attributes: object) -> Entry:
    body = {"identifyId": user, "customAttributes": attributes}
    return Entry("user", f"user:{user}", json.dumps(body).encode())


def claim_all(outbox: RedisOutbox, rounds: int = 8) -> list[Item]:
    """Claim until nothing more comes, forcing lease rounds in between."""
    items: list[Item] = []
    for _ in range(rounds):
        outbox.renew()
        got = outbox.claim(10_000)
        items += got
        if not got and items:
            break
    return items


def wait_for(predicate: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_ids_round_trip_and_keep_stream_order() -> None:
    assert decode_id(encode_id(b"1764633600123-7", 5)) == (5, "1764633600123-7")
    assert encode_id("1764633600123-8", 0) > encode_id("1764633600123-7", 15)
    assert encode_id("1764633600124-0", 0) > encode_id("1764633600123-999", 15)
    assert encode_id("3900000000000-65535", 62) < 2**63  # an int64 until 2093


def test_items_come_back_in_order_and_ack_deletes_them(client: redis.Redis) -> None:
    outbox = handle(client, shards=4)
    entries = [event(f"s{n % 3}", n) for n in range(30)]
    ids = outbox.put_many(entries)
    assert all(i is not None and i > 0 for i in ids)
    items = claim_all(outbox)
    assert sorted(i.data for i in items) == sorted(e.data for e in entries)
    for key in ("s0", "s1", "s2"):
        mine = [json.loads(i.data)["n"] for i in items if i.key == key]
        assert mine == sorted(mine) and len(mine) == 10
    assert outbox.stats()["pending"] == 30
    outbox.ack([i.id for i in items])
    assert outbox.size() == 0 and outbox.stats()["pending"] == 0
    assert sum(client.xlen(f"{PREFIX}:outbox:{n}") for n in range(4)) == 0


def test_one_holder_per_shard_and_a_fair_share_each(client: redis.Redis) -> None:
    a, b = handle(client, shards=8), handle(client, shards=8)
    a.put_many([event(f"s{n}", 0) for n in range(64)])
    first = claim_all(a)
    assert len(first) == 64  # alone, A takes every shard over a few rounds
    a.ack([i.id for i in first])
    b.renew()  # B registers; A sees two handles and sheds its idle extra shards
    a.renew()
    for _ in range(4):
        b.renew()
        a.renew()
    assert a.stats()["shards_held"] == 4 and b.stats()["shards_held"] == 4
    a.put_many([event(f"s{n}", 1) for n in range(64)])
    got_a, got_b = a.claim(1000), b.claim(1000)
    shards_a = {shard_of(i.key, 8) for i in got_a}
    shards_b = {shard_of(i.key, 8) for i in got_b}
    assert len(got_a) + len(got_b) == 64 and not shards_a & shards_b


def test_a_key_is_handed_out_again_only_once_settled(client: redis.Redis) -> None:
    outbox = handle(client, shards=2)
    outbox.put_many([event("s1", 0), event("s1", 1)])
    first = claim_all(outbox)
    assert [json.loads(i.data)["n"] for i in first] == [0, 1]
    outbox.put_many([event("s1", 2)])
    outbox.renew()
    assert outbox.claim(10) == []  # s1 is in flight: its next item waits
    outbox.ack([first[0].id])
    assert outbox.claim(10) == []
    outbox.ack([first[1].id])
    outbox.renew()
    assert [json.loads(i.data)["n"] for i in outbox.claim(10)] == [2]


def test_waiting_upserts_merge_into_the_latest_and_one_ack_settles_all(
    client: redis.Redis,
) -> None:
    outbox = handle(client, shards=2)
    outbox.put_many([upsert("u1", plan="a", seats=1)])
    (in_flight,) = claim_all(outbox)
    outbox.put_many([upsert("u1", plan="b"), upsert("u1", plan="c")])
    outbox.renew()
    assert outbox.claim(10) == []  # never overtakes the one in flight
    outbox.ack([in_flight.id])
    (merged,) = claim_all(outbox)
    body = json.loads(merged.data)
    assert body["customAttributes"] == {"plan": "c"}
    outbox.ack([merged.id])
    assert outbox.size() == 0  # the merged item stood for both stream entries


def test_release_parks_the_key_and_attempts_survive_a_takeover(client: redis.Redis) -> None:
    a = handle(client, shards=1, lease=0.5)
    a.put_many([event("s1", 0)])
    (item,) = claim_all(a)
    a.release([item.id], failed=1, error="HTTP 503", retry_at=time.time() + 60)
    a.renew()
    assert a.claim(10) == [] and a.stats()["parked"] == 1
    b = handle(client, shards=1, lease=0.5)  # a dies here: it never renews again

    def b_took_it() -> list[Item]:
        b.renew()
        return b.claim(10)

    got: list[Item] = []

    def taken() -> bool:
        got.extend(b_took_it())
        return bool(got)

    wait_for(taken)
    assert [i.id for i in got] == [item.id] and got[0].attempts == 1


def test_a_dead_holders_items_go_first_in_order(client: redis.Redis) -> None:
    a = handle(client, shards=1, lease=0.5)
    a.put_many([event("s1", n) for n in range(3)])
    held = claim_all(a)
    assert len(held) == 3
    a.put_many([event("s1", n) for n in range(3, 5)])  # newer, not yet read by anyone
    b = handle(client, shards=1, lease=0.5)
    got: list[Item] = []

    def b_claims() -> bool:
        b.renew()
        got.extend(b.claim(10))
        return len(got) >= 5

    wait_for(b_claims)
    assert [json.loads(i.data)["n"] for i in got] == [0, 1, 2, 3, 4]
    assert b.stats()["taken_over"] == 3


def test_an_item_that_kills_every_holder_goes_to_the_dead_letter(client: redis.Redis) -> None:
    options = {"shards": 1, "lease": 60.0, "max_deliveries": 2}
    first = handle(client, **options)
    first.put_many([event("poison", 0)])
    for _ in range(2):  # two holders read it and die without an ack
        victim = handle(client, **options)
        assert claim_all(victim)
        client.delete(f"{PREFIX}:lease:0")  # as if its lease had lapsed
    last = handle(client, **options)  # its takeover is the third delivery
    last.put_many([event("ok", 0)])
    assert [i.key for i in claim_all(last)] == ["ok"]  # the poison no longer blocks
    dead = last.dead()
    assert [d.key for d in dead] == ["poison"]
    assert "delivered more than 2 times" in dead[0].error
    assert last.stats()["dead"] == 1 and last.stats()["buried_deliveries"] == 1
    assert last.revive([dead[0].id]) == 1 and last.stats()["dead"] == 0
    (revived,) = claim_all(last)
    assert revived.key == "poison"
    last.bury([revived.id], "operator gave up")
    assert last.purge() == 1 and last.dead() == []


def test_the_length_cap_refuses_the_newest_and_never_trims(client: redis.Redis) -> None:
    outbox = handle(client, shards=1, max_events=4)
    ids = outbox.put_many([event("s1", n) for n in range(6)])
    assert [i is not None for i in ids] == [True] * 4 + [False] * 2
    assert client.xlen(f"{PREFIX}:outbox:0") == 4
    assert [json.loads(i.data)["n"] for i in claim_all(outbox)] == [0, 1, 2, 3]


def test_redis_down_spills_locally_and_moves_back_when_it_returns(
    client: redis.Redis, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = handle(client, shards=2)
    outbox.put_many([event("s1", 0)])
    redis_server.stop()
    try:
        with caplog.at_level("WARNING", logger="px_middleware"):
            ids = outbox.put_many([event("s1", 1), event("s2", 0)])
            assert outbox.claim(10) == []  # never raises while Redis is gone
        assert all(i is not None and i < 0 for i in ids)
        assert outbox.stats()["spilled"] == 2 and outbox.stats()["spilled_now"] == 2
        assert any("kept in the local outbox" in r.getMessage() for r in caplog.records)
    finally:
        redis_server.start()
    items: list[Item] = []

    def drained() -> bool:
        outbox.renew()
        items.extend(outbox.claim(100))
        return len(items) >= 3

    wait_for(drained)
    by_key = {key: [json.loads(i.data)["n"] for i in items if i.key == key] for key in ("s1", "s2")}
    assert by_key == {"s1": [0, 1], "s2": [0]}  # the spilled item after the stored one
    assert outbox.stats()["moved_back"] == 2 and outbox.stats()["spilled_now"] == 0


def test_close_hands_the_shards_over_at_once(client: redis.Redis) -> None:
    a = handle(client, shards=2, lease=60.0)
    a.put_many([event("s1", 0)])
    (item,) = claim_all(a)
    a.close()  # unacked: stays pending for the next holder, no 60 s wait
    b = handle(client, shards=2, lease=60.0)
    assert [i.id for i in claim_all(b)] == [item.id]


def test_outbox_stats_reports_streams_pending_dead_and_budget(
    client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from px_middleware.delivery.redis_budget import RedisBudget, key_prefix
    from px_middleware.tools.outbox import main

    prefix = key_prefix("cli-key")
    outbox = RedisOutbox(client, prefix, shards=2)
    outbox.put_many([event("s1", 0), event("s2", 0), event("s3", 0)])
    items = claim_all(outbox)
    outbox.bury([items[0].id], "HTTP 400: bad")
    RedisBudget(client, prefix, rate=10.0).try_acquire()
    assert main(["--redis-url", redis_url, "--api-key", "cli-key", "stats"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert (stats["stored"], stats["pending"], stats["dead"]) == (2, 2, 1)
    assert stats["budget"]["used_today"] == 1 and stats["budget"]["granted_total"] == 1
    assert main(["--redis-url", redis_url, "--api-key", "cli-key", "dead"]) == 0
    assert "HTTP 400: bad" in capsys.readouterr().out
    assert main(["--redis-url", redis_url, "--api-key", "cli-key", "purge", "--all"]) == 0
    assert outbox.stats()["dead"] == 0


def test_a_slower_writers_earlier_capture_still_goes_first(client: redis.Redis) -> None:
    writer_a, writer_b = handle(client, shards=2), handle(client, shards=2)
    holder = handle(client, shards=2, settle=0.5)
    now = time.time()
    later, earlier = event("s1", 2), event("s1", 1)
    writer_a.put_many([later._replace(at=now)])  # stored first...
    writer_b.put_many([earlier._replace(at=now - 0.01)])  # ...captured first
    holder.renew()
    assert holder.claim(10) == []  # both were captured less than settle ago
    got: list[Item] = []

    def claimed() -> bool:
        # The earlier one may become claimable 10 ms before the later: then the key's
        # next item comes once the first is acknowledged (one sender per key).
        holder.renew()
        batch = holder.claim(10)
        got.extend(batch)
        if batch:
            holder.ack([i.id for i in batch])
        return len(got) >= 2

    wait_for(claimed)
    assert [json.loads(i.data)["n"] for i in got] == [1, 2]

"""The outbox for many hosts: Redis Streams, sharded by ordering key, one holder per shard.

Layout (``px:<key digest>`` is one PX subscription, see ``redis_budget.key_prefix``):

- ``…:outbox:<n>`` for ``n`` in ``0..shards-1``: a stream with a consumer group ``px``.
  An item goes to shard ``crc32(key) % shards``, so every item of one ordering key
  (a session, ``user:<id>``, ``account:<id>``) is in one stream, in ``XADD`` order.
- ``…:lease:<n>``: the shard's holder (``host/pid/token``), a key with an expiry that
  only its holder renews (compare-and-``PEXPIRE`` in Lua). Only the holder reads the
  shard (``XREADGROUP … >``); it acknowledges with ``XACK`` + ``XDEL`` once PX answered.
- ``…:handles``: live handles (a sorted set scored by Redis ``TIME``), so each takes a
  fair share (``ceil(shards / handles)``) and sheds shards it holds beyond that while
  nothing of theirs is in flight.
- ``…:dead``: the dead-letter stream; ``…:attempts``: failed attempts per entry.

Why this keeps order per key and latest-wins upserts across hosts: a key lives in one
shard; a shard has one holder at a time (the lease); the holder reads the stream in
order and hands a key's items to one sender at a time, in order (the same rules as
``MemoryOutbox``), and several upserts of one entity waiting together are merged into
one (newer attributes win) that stands in for all of them. A newer upsert can
therefore never be sent before an older one, on any host. Processes append what they
captured a few milliseconds later, each on its own: so, as in ``SQLiteOutbox``, an item
is handed out only ``settle`` seconds after its capture time (stored with it), and a
key's items go in capture-time order. Across hosts that order is as good as their
clocks (NTP keeps them within milliseconds; a person's next click takes longer).

Takeover: when a lease lapses (its holder died, or lost Redis for longer than the
lease: by default twice the request timeout), the next holder first takes every pending
entry of the shard with ``XAUTOCLAIM`` (from ``0-0``, so in stream order, ahead of
anything new) and only then reads new entries. The lease *is* the claim timeout, so
``XAUTOCLAIM`` runs with ``min-idle 0``: a minimum idle time would skip entries that
were read just before their holder died and send their successors first. A holder
hands out nothing more once half the lease has passed since its last renewal, so a
request it started (at most the request timeout, half the lease) has ended before
Redis lets anybody else take the shard; only a holder frozen for longer than the lease
(a suspended VM) can break that. An entry delivered more than ``max_deliveries`` times
without an acknowledgement killed or lost every holder it had: it goes to the dead
letter. After a Redis error, a holder also takes back what is pending for it and it
never saw (a reply lost as the connection broke).

Bounded: each shard holds at most ``ceil(max_events / shards)`` entries; ``XADD`` past
that is refused (``put_many`` answers ``None``, the worker counts and logs it), never
trimmed.

Fail open: every Redis call is short (see ``redis_connect``) and no Redis error leaves
this class. While Redis cannot be reached, ``put_many`` stores into ``spill``, a local
outbox (``MemoryOutbox``, or ``SQLiteOutbox`` when ``outbox_path`` is set), with a
WARNING and the ``spilled`` counter; once Redis answers again the spilled items are
moved into their streams in capture order and delivery resumes from there. Nothing is
sent from the spill directly: sending it beside the streams would break per-key order.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from px_middleware.config import PXConfig
from px_middleware.core.notices import Notices
from px_middleware.delivery.outbox import (
    UPSERT_KINDS,
    DeadItem,
    Entry,
    Item,
    MemoryOutbox,
    Outbox,
    SQLiteOutbox,
    coalesce,
)

if TYPE_CHECKING:
    import redis

log = logging.getLogger("px_middleware.delivery")

GROUP = "px"
SHARDS = 16
#: Entries read per shard at a time, and kept read-ahead before reading again.
READ_BATCH = 200
#: Seconds between lease rounds (renew, take free shards, shed extra ones).
LEASE_ROUND = 0.5
#: At most this many new shards per lease round, so a first process does not take all.
TAKE_PER_ROUND = 2
# Ids: (ms since 2024 << 22) | (sequence << 6) | shard: 41 + 16 + 6 bits, an int64 for
# 69 years. A sequence is per stream and millisecond: Redis cannot append 65,536 in one.
_EPOCH_MS = 1_704_067_200_000
_DEAD_SHARD = 63

_ADD = """
local room = tonumber(ARGV[1]) - redis.call('XLEN', KEYS[1])
local out = {}
local n = (#ARGV - 1) / 4
for i = 0, n - 1 do
  if i < room then
    out[i + 1] = redis.call('XADD', KEYS[1], '*', 'k', ARGV[2 + 4 * i],
                            'q', ARGV[3 + 4 * i], 'd', ARGV[4 + 4 * i], 't', ARGV[5 + 4 * i])
  else
    out[i + 1] = false
  end
end
return out
"""

# KEYS: handles, lease 0..n-1. ARGV: owner, lease_ms, first shard to try, take at most.
# Answers {held shards..., -1, newly taken shards..., -1, fair share}.
_LEASES = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - lease)
redis.call('PEXPIRE', KEYS[1], lease * 10)
local shards = #KEYS - 1
local fair = math.ceil(shards / redis.call('ZCARD', KEYS[1]))
local held, taken = {}, {}
for i = 0, shards - 1 do
  if redis.call('GET', KEYS[i + 2]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i + 2], lease)
    held[#held + 1] = i
  end
end
local take = math.min(fair - #held, tonumber(ARGV[4]))
local start = tonumber(ARGV[3])
for j = 0, shards - 1 do
  if take <= 0 then break end
  local i = (start + j) % shards
  if redis.call('SET', KEYS[i + 2], ARGV[1], 'NX', 'PX', lease) then
    taken[#taken + 1] = i
    take = take - 1
  end
end
local out = {}
for _, i in ipairs(held) do out[#out + 1] = i end
out[#out + 1] = -1
for _, i in ipairs(taken) do out[#out + 1] = i end
out[#out + 1] = -1
out[#out + 1] = fair
return out
"""

_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def shard_of(key: str, shards: int) -> int:
    """The shard of an ordering key: the same on every host and Python version."""
    return zlib.crc32(key.encode("utf-8")) % shards


def encode_id(stream_id: bytes | str, shard: int) -> int:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    return ((int(ms) - _EPOCH_MS) << 22) | (int(seq) << 6) | shard


def decode_id(item_id: int) -> tuple[int, str]:
    """``(shard, stream id)`` of an id made by :func:`encode_id`."""
    shard = item_id & 63
    seq = (item_id >> 6) & 0xFFFF
    return shard, f"{(item_id >> 22) + _EPOCH_MS}-{seq}"


class RedisOutbox:
    """An :class:`~px_middleware.delivery.outbox.Outbox` on Redis Streams (see above).

    ``client`` should come from ``redis_connect.connect`` (short timeouts, no long
    retries); ``lease`` is the claim timeout in seconds; ``spill`` keeps items while
    Redis is unreachable (default: a ``MemoryOutbox``). Thread-safe: the worker's
    dispatcher calls ``claim``/``renew``, its senders ``ack``/``release``/``bury``.
    """

    durable = True

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        shards: int = SHARDS,
        max_events: int = 1_000_000,
        lease: float = 20.0,
        max_deliveries: int = 5,
        settle: float = 0.0,
        spill: Outbox | None = None,
    ) -> None:
        if not 1 <= shards <= _DEAD_SHARD:
            raise ValueError(f"shards must be between 1 and {_DEAD_SHARD}")
        self.prefix = prefix
        self.shards = shards
        self.max_events = max_events
        self.lease = lease
        self.max_deliveries = max_deliveries
        self.settle = settle
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:12]}"
        # redis-py's reply types are unions of everything a reply can be: the shapes used
        # here are fixed by the commands, so the client is used untyped.
        self._client: Any = client
        self._spill: Outbox = spill if spill is not None else MemoryOutbox(max_events)
        self._streams = [f"{prefix}:outbox:{n}" for n in range(shards)]
        self._leases = [f"{prefix}:lease:{n}" for n in range(shards)]
        self._handles = f"{prefix}:handles"
        self._dead_key = f"{prefix}:dead"
        self._attempts_key = f"{prefix}:attempts"
        self._per_shard = math.ceil(max_events / shards)
        self._add = client.register_script(_ADD)
        self._lease_script = client.register_script(_LEASES)
        self._release_script = client.register_script(_RELEASE_LEASE)
        self._start_shard = zlib.crc32(self.owner.encode()) % shards
        self._lock = threading.Lock()  # the local view below
        self._claim_lock = threading.Lock()  # one claimer (and lease round) at a time
        self._valid: dict[int, float] = {}  # held shard -> monotonic time its lease ends
        self._pending: dict[str, collections.deque[Item]] = {}  # read, not handed out
        self._ready: collections.deque[str] = collections.deque()
        self._busy: dict[str, int] = {}  # key -> items handed out, not settled
        self._parked: dict[str, float] = {}  # key -> retry_at (wall clock)
        self._claimed: dict[int, Item] = {}
        self._at: dict[int, float] = {}  # capture time of items read and not settled
        self._absorbed: dict[int, list[int]] = {}  # merged upsert -> the ids it stands for
        self._unacked: list[int] = []  # acks Redis did not get yet
        self._failed_ids: set[int] = set()  # ids with attempts recorded in Redis
        self._next_round = 0.0
        self._groups_ready = False
        self._down_until = 0.0
        self._was_down = False
        self._resync = False  # after a Redis error: look for entries whose reply was lost
        self._notices = Notices(log)
        self.counts: dict[str, int] = dict.fromkeys(
            ["redis_errors", "spilled", "moved_back", "taken_over", "buried_deliveries"], 0
        )

    # -- writes ------------------------------------------------------------------------
    def put_many(self, entries: Sequence[Entry]) -> list[int | None]:
        if not entries:
            return []
        if self._usable():
            try:
                return self._put_redis(entries)
            except Exception as exc:
                self._failed(exc)
        ids = self._spill.put_many(entries)
        stored = sum(1 for i in ids if i is not None)
        with self._lock:
            self.counts["spilled"] += stored
        self._notices.note(
            "Redis unreachable; items kept in the local outbox until it is back", stored,
            f"{self.counts['spilled']} so far",
        )
        return [None if i is None else -i for i in ids]  # negative: never a stream id

    def _put_redis(self, entries: Sequence[Entry]) -> list[int | None]:
        self._ensure_groups()
        by_shard: dict[int, list[int]] = {}
        for index, entry in enumerate(entries):
            by_shard.setdefault(shard_of(entry.key, self.shards), []).append(index)
        pipe = self._client.pipeline(transaction=False)
        for shard, indexes in by_shard.items():
            args: list[Any] = [self._per_shard]
            for index in indexes:
                kind, key, data, at = entries[index]
                args += [kind, key, data, repr(at)]
            self._add(keys=[self._streams[shard]], args=args, client=pipe)
        replies = pipe.execute()
        ids: list[int | None] = [None] * len(entries)
        for (shard, indexes), reply in zip(by_shard.items(), replies, strict=True):
            for index, stream_id in zip(indexes, reply, strict=True):
                ids[index] = encode_id(stream_id, shard) if stream_id else None
        return ids

    # -- claiming ----------------------------------------------------------------------
    def claim(self, n: int) -> list[Item]:
        if n <= 0:
            return []
        with self._claim_lock:
            if self._usable():
                try:
                    self._flush_acks()
                    self._maintain()
                    self._refill()
                except Exception as exc:
                    self._failed(exc)
            return self._hand_out(n)

    def _hand_out(self, n: int) -> list[Item]:
        items: list[Item] = []
        now_wall = time.time()
        now = time.monotonic()
        cutoff = now_wall - self.settle
        with self._lock:
            for key in [k for k, at in self._parked.items() if at <= now_wall]:
                del self._parked[key]
                if self._pending.get(key) and key not in self._busy:
                    self._ready.append(key)
            skipped: list[str] = []
            while self._ready and len(items) < n:
                key = self._ready.popleft()
                queue = self._pending.get(key)
                if not queue or key in self._busy or key in self._parked:
                    continue
                if self._valid.get(shard_of(key, self.shards), 0.0) <= now:
                    skipped.append(key)  # the lease may be gone: hand out nothing more
                    continue
                taken = 0
                while queue and len(items) < n and self._at.get(queue[0].id, 0.0) <= cutoff:
                    item = queue.popleft()
                    if item.kind in UPSERT_KINDS:
                        item = self._merge_upserts(item, queue, cutoff)
                    self._claimed[item.id] = item
                    items.append(item)
                    taken += 1
                if not taken:
                    skipped.append(key)  # captured too recently: see ``settle``
                    continue
                self._busy[key] = taken
                if not queue:
                    del self._pending[key]
            self._ready.extend(skipped)
        return items

    def _merge_upserts(
        self, first: Item, queue: collections.deque[Item], cutoff: float
    ) -> Item:
        """One upsert for the consecutive waiting upserts of one entity (newest wins)."""
        group = [first]
        while queue and queue[0].kind == first.kind and self._at.get(queue[0].id, 0.0) <= cutoff:
            group.append(queue.popleft())
        if len(group) == 1:
            return first
        newest = group[-1]
        ids = [i for item in group for i in self._absorbed.pop(item.id, [item.id])]
        merged = newest._replace(
            data=coalesce([item.data for item in group[:-1]], newest.data),
            attempts=max(item.attempts for item in group),
        )
        self._absorbed[newest.id] = ids
        return merged

    def _maintain(self) -> None:
        """Leases, takeovers, the move back from the spill and late acks, at most every
        ``LEASE_ROUND`` seconds (and at once after a lease round was missed)."""
        now = time.monotonic()
        if now < self._next_round:
            return
        self._next_round = now + LEASE_ROUND
        self._ensure_groups()
        started = time.monotonic()
        reply = self._lease_script(
            keys=[self._handles, *self._leases],
            args=[self.owner, int(self.lease * 1000), self._start_shard, TAKE_PER_ROUND],
        )
        values = [int(v) for v in reply]
        split = values.index(-1)
        held, rest = values[:split], values[split + 1 :]
        taken, fair = rest[: rest.index(-1)], rest[-1]
        # Half the lease: an item handed out just before then is sent (one request of at
        # most half the lease, the request timeout) before Redis lets anybody else in.
        valid_until = started + self.lease / 2
        with self._lock:
            for shard in list(self._valid):
                if shard not in held:
                    self._drop_shard(shard)  # lost it (a long stall): its new holder sends
            for shard in [*held, *taken]:
                self._valid[shard] = valid_until
            extra = len(self._valid) - fair
            idle = [s for s in held if not self._in_flight(s)] if extra > 0 else []
        for shard in idle[: max(extra, 0)]:
            self._shed(shard)
        for shard in taken:
            self._take_over(shard)
        if self._resync:
            for shard in held:
                self._take_over(shard, resync=True)
            self._resync = False
        if self._was_down:
            self._move_back()

    def _in_flight(self, shard: int) -> bool:
        return any(shard_of(key, self.shards) == shard for key in self._busy)

    def _drop_shard(self, shard: int) -> None:
        """Forget what this handle read from ``shard`` (call with the lock held)."""
        self._valid.pop(shard, None)
        for key in [k for k in self._pending if shard_of(k, self.shards) == shard]:
            for item in self._pending.pop(key):
                self._at.pop(item.id, None)

    def _shed(self, shard: int) -> None:
        with self._lock:
            if self._in_flight(shard):
                return
            self._drop_shard(shard)  # still pending in the group: the next holder takes them
        self._release_script(keys=[self._leases[shard]], args=[self.owner])

    def _take_over(self, shard: int, *, resync: bool = False) -> None:
        """Take every pending entry of a newly held shard, oldest first, before new ones.

        ``resync``: after a Redis error, a shard held all along. A reply lost on the way
        (an ``XREADGROUP`` that Redis served as the connection broke) leaves entries
        pending for this handle that it never saw: take those, and only those."""
        stream = self._streams[shard]
        entries: list[tuple[bytes, dict[bytes, bytes]]] = []
        cursor: bytes | str = "0-0"
        while True:
            next_cursor, claimed, *_deleted = self._client.xautoclaim(
                stream, GROUP, self.owner, 0, start_id=cursor, count=500
            )
            entries += [(sid, fields) for sid, fields in claimed if fields]
            cursor = next_cursor
            if cursor in (b"0-0", "0-0"):
                break
        if not entries:
            return
        entries.sort(key=lambda e: tuple(int(p) for p in e[0].split(b"-")))
        delivered = {
            _text(p["message_id"]): int(p["times_delivered"])
            for p in self._client.xpending_range(stream, GROUP, "-", "+", len(entries) + 100)
        }
        attempts = self._client.hmget(self._attempts_key, [sid for sid, _ in entries])
        with self._lock:
            known = {*self._claimed, *self._unacked}
            known.update(i for ids in self._absorbed.values() for i in ids)
            known.update(item.id for queue in self._pending.values() for item in queue)
        poison: list[Item] = []
        items: list[Item] = []
        for (sid, fields), failed in zip(entries, attempts, strict=True):
            if encode_id(sid, shard) in known:
                continue  # in flight, waiting or settled here: not lost
            item = self._item(sid, fields, shard, failed)
            if not resync and delivered.get(_text(sid), 0) > self.max_deliveries:
                poison.append(item)
            else:
                items.append(item)
        with self._lock:
            self.counts["taken_over"] += len(items) + len(poison)
            self.counts["buried_deliveries"] += len(poison)
            self._enqueue(items)
            for item in poison:
                self._claimed[item.id] = item
                self._busy[item.key] = self._busy.get(item.key, 0) + 1
        if poison:
            self.bury(
                [item.id for item in poison],
                f"delivered more than {self.max_deliveries} times without an acknowledgement "
                "(its senders died or lost Redis while holding it)",
            )

    def _refill(self) -> None:
        with self._lock:
            counts = collections.Counter(
                shard_of(key, self.shards) for key, queue in self._pending.items() for _ in queue
            )
            wanted = [s for s in self._valid if counts[s] < READ_BATCH]
        if not wanted:
            return
        reply = self._client.xreadgroup(
            GROUP, self.owner, {self._streams[s]: ">" for s in wanted}, count=READ_BATCH
        )
        items: list[Item] = []
        for stream, entries in reply or []:
            shard = int(_text(stream).rsplit(":", 1)[1])
            items += [self._item(sid, fields, shard, None) for sid, fields in entries if fields]
        with self._lock:
            self._enqueue([i for i in items if shard_of(i.key, self.shards) in self._valid])

    def _enqueue(self, items: list[Item]) -> None:
        """Add items read from Redis to their keys' queues (call with the lock held)."""
        by_key: dict[str, list[Item]] = {}
        for item in items:
            by_key.setdefault(item.key, []).append(item)
        for key, group in by_key.items():
            queue = self._pending.get(key)
            if queue is None:
                queue = self._pending[key] = collections.deque()
            for item in group:  # in capture order: a slower writer's item may come later
                queue.append(item)
                position = len(queue) - 1
                while position > 0 and self._order(queue[position - 1]) > self._order(item):
                    queue[position] = queue[position - 1]
                    position -= 1
                queue[position] = item
            if key not in self._busy and key not in self._parked:
                self._ready.append(key)

    def _order(self, item: Item) -> tuple[float, int]:
        return self._at.get(item.id, 0.0), item.id

    def _item(
        self, sid: bytes, fields: dict[bytes, bytes], shard: int, failed: bytes | None
    ) -> Item:
        attempts, first_failure = 0, 0.0
        item_id = encode_id(sid, shard)
        self._at[item_id] = float(fields.get(b"t", 0.0))
        if failed:
            count, _, since = failed.decode().partition("|")
            attempts, first_failure = int(count), float(since or 0)
            self._failed_ids.add(item_id)
        return Item(
            item_id,
            fields[b"k"].decode(),
            fields[b"q"].decode(),
            fields[b"d"],
            attempts,
            first_failure,
        )

    def _move_back(self) -> None:
        """Redis answers again: move what was spilled into the streams, oldest first."""
        moved = 0
        while True:
            batch = self._spill.claim(1000)
            if not batch:
                break
            try:
                # Capture times stay behind in the spill; now is later than all of them.
                now = time.time()
                ids = self._put_redis([Entry(i.kind, i.key, i.data, now) for i in batch])
            except Exception:
                self._spill.release([i.id for i in batch])
                raise
            self._spill.ack([i.id for i, new in zip(batch, ids, strict=True) if new is not None])
            refused = [i.id for i, new in zip(batch, ids, strict=True) if new is None]
            moved += len(batch) - len(refused)
            if refused:  # the streams are full: keep the rest local and try again later
                self._spill.release(refused)
                break
        self._was_down = bool(self._spill.size())
        with self._lock:
            self.counts["moved_back"] += moved
        if moved:
            log.warning(
                "px_middleware: Redis is back; moved %d locally kept items into it", moved
            )

    # -- settling ----------------------------------------------------------------------
    def ack(self, ids: Collection[int]) -> None:
        """Settled here at once; Redis gets the acks in one pipeline with the next
        ``claim`` (within the worker's poll interval), not one round trip per item.
        A crash before then sends those items again (at-least-once, same eventId)."""
        stream_ids = self._settle(ids)
        if stream_ids:
            with self._lock:
                self._unacked += stream_ids

    def _flush_acks(self) -> None:
        with self._lock:
            ids, self._unacked = self._unacked, []
            retried = [i for i in ids if i in self._failed_ids]
            self._failed_ids.difference_update(retried)
        if not ids:
            return
        try:
            pipe = self._client.pipeline(transaction=False)
            for shard, sids in _by_shard(ids).items():
                pipe.xack(self._streams[shard], GROUP, *sids)
                pipe.xdel(self._streams[shard], *sids)
            if retried:
                pipe.hdel(self._attempts_key, *[decode_id(i)[1] for i in retried])
            pipe.execute()
        except Exception:
            with self._lock:
                self._unacked = ids + self._unacked  # sent again at worst, never lost
                self._failed_ids.update(retried)
            raise

    def _settle(self, ids: Collection[int]) -> list[int]:
        """Forget handed-out items locally; the stream ids they stand for."""
        out: list[int] = []
        with self._lock:
            for item_id in ids:
                if item_id < 0:
                    continue
                item = self._claimed.pop(item_id, None)
                if item is None:
                    continue
                stream_ids = self._absorbed.pop(item_id, [item_id])
                for stream_id in stream_ids:
                    self._at.pop(stream_id, None)
                out += stream_ids
                self._unbusy(item.key)
        return out

    def _unbusy(self, key: str) -> None:
        left = self._busy.get(key, 0) - 1
        if left > 0:
            self._busy[key] = left
            return
        self._busy.pop(key, None)
        if self._pending.get(key) and key not in self._parked:
            self._ready.appendleft(key)

    def release(
        self,
        ids: Collection[int],
        *,
        failed: int = 0,
        error: str = "",
        retry_at: float = 0.0,
    ) -> None:
        now = time.time()
        with self._lock:
            items = sorted(self._claimed.pop(i) for i in ids if i in self._claimed)
            kept: list[Item] = []
            for item in items:
                if failed:
                    item = item._replace(
                        attempts=item.attempts + failed, first_failure=item.first_failure or now
                    )
                if shard_of(item.key, self.shards) in self._valid:
                    kept.append(item)
                else:  # no longer ours: the shard's holder takes it over from the group
                    for stream_id in self._absorbed.pop(item.id, [item.id]):
                        self._at.pop(stream_id, None)
            for item in reversed(kept):
                self._pending.setdefault(item.key, collections.deque()).appendleft(item)
            for item in items:
                if retry_at > now:
                    self._parked[item.key] = max(self._parked.get(item.key, 0.0), retry_at)
                self._unbusy(item.key)
        if failed and kept:
            marks = {
                decode_id(i)[1]: f"{item.attempts}|{item.first_failure}"
                for item in kept
                for i in self._absorbed.get(item.id, [item.id])
            }
            try:
                self._client.hset(self._attempts_key, mapping=marks)
            except Exception as exc:
                self._failed(exc)
                return
            with self._lock:
                self._failed_ids.update(
                    i for item in kept for i in self._absorbed.get(item.id, [item.id])
                )

    def bury(self, ids: Collection[int], error: str, *, failed: int = 0) -> None:
        now = time.time()
        with self._lock:
            items = [self._claimed[i] for i in ids if i in self._claimed]
            absorbed = {item.id: self._absorbed.get(item.id, [item.id]) for item in items}
        try:
            pipe = self._client.pipeline(transaction=True)
            for item in items:
                shard, sid = decode_id(item.id)
                fields = {
                    "k": item.kind, "q": item.key, "d": item.data, "a": item.attempts + failed,
                    "e": error[:2000], "b": now, "s": sid,
                }  # fmt: skip
                pipe.xadd(self._dead_key, fields)
                sids = [decode_id(i)[1] for i in absorbed[item.id]]
                pipe.xack(self._streams[shard], GROUP, *sids)
                pipe.xdel(self._streams[shard], *sids)
                pipe.hdel(self._attempts_key, *sids)
            if items:
                pipe.execute()
        except Exception as exc:
            self._failed(exc)
            self.release([item.id for item in items], retry_at=now + 5.0)  # bury it later
            return
        self._settle([item.id for item in items])

    def renew(self) -> None:
        """Leases are renewed by ``claim``'s lease round; this only forces one now."""
        with self._claim_lock:
            self._next_round = 0.0
            if self._usable():
                try:
                    self._flush_acks()
                    self._maintain()
                except Exception as exc:
                    self._failed(exc)

    # -- reads ---------------------------------------------------------------------------
    def size(self) -> int:
        try:
            self._flush_acks()
            pipe = self._client.pipeline(transaction=False)
            for stream in self._streams:
                pipe.xlen(stream)
            stored = sum(int(n) for n in pipe.execute())
        except Exception as exc:
            self._failed(exc)
            stored = 0
        return stored + self._spill.size()

    def oldest(self) -> int | None:
        try:
            pipe = self._client.pipeline(transaction=False)
            for stream in self._streams:
                pipe.xrange(stream, "-", "+", count=1)
            firsts = [
                encode_id(entries[0][0], shard)
                for shard, entries in enumerate(pipe.execute())
                if entries
            ]
        except Exception as exc:
            self._failed(exc)
            firsts = []
        return min(firsts) if firsts else None

    def stats(self) -> dict[str, int]:
        """``stored`` (in the streams), ``pending`` (read by some holder, not acked),
        ``claimed``/``parked``/``settling`` (this handle's view), ``dead``,
        ``spilled_now`` (kept locally), ``shards_held`` and this handle's counters; ``-1``
        where Redis did not answer."""
        out = {"stored": -1, "pending": -1, "dead": -1}
        try:
            self._flush_acks()
            pipe = self._client.pipeline(transaction=False)
            for stream in self._streams:
                pipe.xlen(stream)
            pipe.xlen(self._dead_key)
            lengths = pipe.execute()
            pipe = self._client.pipeline(transaction=False)
            for stream in self._streams:
                pipe.xpending(stream, GROUP)
            pending = 0
            for reply in pipe.execute(raise_on_error=False):
                pending += int(reply["pending"]) if isinstance(reply, dict) else 0
            out = {"stored": sum(lengths[:-1]), "pending": pending, "dead": int(lengths[-1])}
        except Exception as exc:
            self._failed(exc)
        cutoff = time.time() - self.settle
        with self._lock:
            out.update(
                claimed=len(self._claimed),
                parked=len(self._parked),
                settling=sum(
                    1
                    for queue in self._pending.values()
                    for item in queue
                    if self._at.get(item.id, 0.0) > cutoff
                ),
                shards_held=len(self._valid),
                **self.counts,
            )
        out["spilled_now"] = self._spill.size()
        return out

    def dead(self, limit: int = 100) -> list[DeadItem]:
        entries = self._client.xrange(self._dead_key, "-", "+", count=limit)
        return [_dead_item(sid, fields) for sid, fields in entries]

    def revive(self, ids: Collection[int] | None = None) -> int:
        chosen = self._chosen_dead(ids)
        for sid, fields in chosen:
            entry = Entry(fields[b"k"].decode(), fields[b"q"].decode(), fields[b"d"], time.time())
            self.put_many([entry])
            self._client.xdel(self._dead_key, sid)
        return len(chosen)

    def purge(self, ids: Collection[int] | None = None) -> int:
        chosen = self._chosen_dead(ids)
        if chosen:
            self._client.xdel(self._dead_key, *[sid for sid, _ in chosen])
        return len(chosen)

    def _chosen_dead(self, ids: Collection[int] | None) -> list[tuple[bytes, dict[bytes, bytes]]]:
        if ids is None:
            return list(self._client.xrange(self._dead_key, "-", "+"))
        out: list[tuple[bytes, dict[bytes, bytes]]] = []
        for item_id in ids:
            sid = decode_id(item_id)[1]
            out += self._client.xrange(self._dead_key, sid, sid)
        return out

    # -- lifecycle -----------------------------------------------------------------------
    def fork(self) -> RedisOutbox:
        """A new handle (owner, leases) for a forked child; the parent keeps its own.
        redis-py notices the new pid and opens fresh connections."""
        return RedisOutbox(
            self._client,
            self.prefix,
            shards=self.shards,
            max_events=self.max_events,
            lease=self.lease,
            max_deliveries=self.max_deliveries,
            settle=self.settle,
            spill=self._spill.fork(),
        )

    def close(self) -> None:
        """Give the leases back, so the next holder need not wait for them to lapse;
        what this handle read and did not settle stays pending for it."""
        with self._lock:
            shards = list(self._valid)
            self._valid.clear()
        try:
            self._flush_acks()
            pipe = self._client.pipeline(transaction=False)
            for shard in shards:
                self._release_script(
                    keys=[self._leases[shard]], args=[self.owner], client=pipe
                )
            pipe.zrem(self._handles, self.owner)
            pipe.execute()
        except Exception as exc:
            self._failed(exc)
        self._spill.close()

    # -- health --------------------------------------------------------------------------
    def _ensure_groups(self) -> None:
        if self._groups_ready:
            return
        pipe = self._client.pipeline(transaction=False)
        for stream in self._streams:
            pipe.xgroup_create(stream, GROUP, id="0", mkstream=True)
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception) and "BUSYGROUP" not in str(reply):
                raise reply
        self._groups_ready = True

    def _usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def _failed(self, exc: Exception) -> None:
        with self._lock:
            self.counts["redis_errors"] += 1
        self._down_until = time.monotonic() + 1.0
        self._was_down = True
        self._resync = True
        self._groups_ready = False  # a restarted Redis without its AOF has no groups
        self._next_round = 0.0
        self._notices.note("Redis outbox error", 1, f"{exc}; trying again in 1s")


def outbox_for(config: PXConfig, *, settle: float = 0.0) -> RedisOutbox:
    """The outbox for ``config.redis_url``; it spills into the SQLite file at
    ``outbox_path`` when one is set, else into memory. The lease (the claim timeout) is
    twice the request timeout: a holder that stopped renewing it is gone for good."""
    from px_middleware.delivery.redis_budget import key_prefix
    from px_middleware.delivery.redis_connect import connect

    assert config.redis_url and config.api_key
    spill: Outbox
    if config.outbox_path:
        spill = SQLiteOutbox(config.outbox_path)
    else:
        spill = MemoryOutbox(config.max_queue_events, config.max_queue_bytes)
    return RedisOutbox(
        connect(config.redis_url),
        key_prefix(config.api_key),
        lease=max(2 * config.request_timeout, 2.0),
        settle=settle,
        spill=spill,
    )


def _by_shard(ids: list[int]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for item_id in ids:
        shard, sid = decode_id(item_id)
        out.setdefault(shard, []).append(sid)
    return out


def _dead_item(sid: bytes, fields: dict[bytes, bytes]) -> DeadItem:
    return DeadItem(
        encode_id(sid, _DEAD_SHARD),
        fields[b"k"].decode(),
        fields[b"q"].decode(),
        fields[b"d"],
        int(fields[b"a"]),
        fields[b"e"].decode(errors="replace"),
        float(fields[b"b"]),
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value

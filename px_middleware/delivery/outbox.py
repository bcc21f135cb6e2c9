"""Where captured items wait until PX has acknowledged them: the outbox protocol.

Every item has an *ordering key* (the session id for events, ``user:<id>`` or
``account:<id>`` for upserts). An :class:`Outbox` promises, for every handle that
shares it (threads, processes, hosts):

1. **One sender per key.** ``claim`` hands out a key's items only when no handle holds
   any item of that key, and all of a key's claimed items go to the one caller, in
   capture order (``Entry.at``, then id). A key stays held until each claimed item is
   acked, released or buried, or its lease lapses (a crashed holder). Processes store
   what they captured a few milliseconds later, each on its own, so a shared outbox
   holds an item back ``settle`` seconds after its capture: a slower writer's earlier
   item of the same key is stored by then and goes first.
2. **Latest wins for upserts.** ``put_many`` of a ``user``/``account`` entry merges any
   unclaimed older upsert of the same key into it (newer attributes win) and stores
   the result as the key's newest item; one already claimed (in flight) stays, so the
   newer one is sent after it, never overtaken.
3. **At-least-once.** Items are deleted only by ``ack`` (PX answered) or moved by
   ``bury`` (the dead letter); ``release`` gives them back, optionally counting a
   failed attempt and keeping the key parked until ``retry_at`` (wall-clock seconds).
4. **Bounded.** ``put_many`` refuses the newest entries past ``max_events`` items
   stored (rows, not an id range).

Implementations: :class:`MemoryOutbox` (this process only, lost with it) and
:class:`SQLiteOutbox` (a WAL-mode file shared by the processes of one host). A Redis
outbox implements the same protocol for many hosts. The worker uses nothing else.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import socket
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import Any, NamedTuple, Protocol

UPSERT_KINDS = frozenset({"user", "account"})


class Entry(NamedTuple):
    """An item to store: what it is, its ordering key, and its JSON body (encoded once)."""

    kind: str
    #: Items with the same key are sent one at a time, in order (a session, a user).
    key: str
    data: bytes
    #: Capture time (``time.time()``): the order of a key's items across processes.
    at: float = 0.0


class Item(NamedTuple):
    """A stored item; ids grow in capture order within a key."""

    id: int
    kind: str
    key: str
    data: bytes
    #: Failed attempts so far, and when the first of them happened (wall clock, 0: none).
    attempts: int = 0
    first_failure: float = 0.0


class DeadItem(NamedTuple):
    """An item in the dead letter: it failed ``attempts`` times; ``error`` was the last."""

    id: int
    kind: str
    key: str
    data: bytes
    attempts: int
    error: str
    buried: float


class Outbox(Protocol):
    """Storage for items between capture and PX's acknowledgement. Thread-safe."""

    #: Whether stored items outlive the process (``flush`` then waits for storage only).
    durable: bool

    def put_many(self, entries: Sequence[Entry]) -> list[int | None]:
        """Store entries in order; returns their ids, ``None`` for each one refused
        because the outbox is full (the newest are refused). Upserts coalesce (2.)."""
        ...

    def claim(self, n: int) -> list[Item]:
        """Lease up to ``n`` items of keys nobody holds, oldest first (1.)."""
        ...

    def ack(self, ids: Collection[int]) -> None:
        """Delete claimed items: PX acknowledged them, or rejected them for good."""
        ...

    def release(
        self,
        ids: Collection[int],
        *,
        failed: int = 0,
        error: str = "",
        retry_at: float = 0.0,
    ) -> None:
        """Give claimed items back unsent. ``failed`` attempts are added to each (with
        ``error`` as the last error), and their keys are not claimable before
        ``retry_at`` (``time.time()`` seconds)."""
        ...

    def bury(self, ids: Collection[int], error: str, *, failed: int = 0) -> None:
        """Move claimed items to the dead letter (with ``failed`` more attempts counted);
        their keys' later items go on."""
        ...

    def renew(self) -> None:
        """Extend the leases this handle holds (call well within the lease time)."""
        ...

    def size(self) -> int:
        """Items stored (claimed or not), dead letter excluded."""
        ...

    def oldest(self) -> int | None:
        """The lowest id still stored, or ``None`` when empty."""
        ...

    def stats(self) -> dict[str, int]:
        """``stored``, ``claimed``, ``parked`` (waiting for ``retry_at``), ``settling``
        (too new to claim yet, see 1.) and ``dead``."""
        ...

    def dead(self, limit: int = 100) -> list[DeadItem]:
        """The dead letter, oldest first."""
        ...

    def revive(self, ids: Collection[int] | None = None) -> int:
        """Put dead items (all when ``None``) back to be sent again; returns how many."""
        ...

    def purge(self, ids: Collection[int] | None = None) -> int:
        """Delete dead items (all when ``None``) for good; returns how many."""
        ...

    def fork(self) -> Outbox:
        """A handle for a forked child process (see the implementations)."""
        ...

    def close(self) -> None: ...


def coalesce(older: Iterable[bytes], newest: bytes) -> bytes:
    """One upsert body from several of the same entity: later attributes win."""
    merged: dict[str, object] = {}
    for data in (*older, newest):
        body = json.loads(data)
        for field, value in body.items():
            old = merged.get(field)
            if isinstance(old, dict) and isinstance(value, dict):
                value = {**old, **value}  # customAttributes: keep the older other keys
            merged[field] = value
    return json.dumps(merged, ensure_ascii=False, separators=(",", ":")).encode()


class MemoryOutbox:
    """An in-process outbox bounded by ``max_events`` items and ``max_bytes`` of JSON.

    Overflow policy: refuse the newest entries (the ones being put), keep what is queued,
    so a burst cannot push out events that have waited longest.
    """

    durable = False

    def __init__(self, max_events: int = 10_000, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._pending: dict[str, collections.deque[Item]] = {}  # key -> unclaimed items
        self._ready: collections.deque[str] = collections.deque()  # keys free to claim
        self._held: dict[str, int] = {}  # key -> items claimed and not settled
        self._parked: dict[str, float] = {}  # key -> retry_at
        self._claimed: dict[int, Item] = {}
        self._live: dict[int, None] = {}  # every stored id, ascending (insertion order)
        self._dead: collections.deque[DeadItem] = collections.deque(maxlen=1000)
        self._bytes = 0
        self._next_id = 1

    def put_many(self, entries: Sequence[Entry]) -> list[int | None]:
        ids: list[int | None] = []
        with self._lock:
            for kind, key, data, _ in entries:  # one process: arrival order is capture order
                queue = self._pending.get(key)
                if kind in UPSERT_KINDS and queue:
                    older = [item for item in queue if item.kind == kind]
                    if older:
                        data = coalesce([item.data for item in older], data)
                        for item in older:
                            queue.remove(item)
                            self._forget(item)
                if len(self._live) >= self.max_events or self._bytes + len(data) > self.max_bytes:
                    ids.append(None)
                    continue
                item = Item(self._next_id, kind, key, data)
                self._next_id += 1
                self._live[item.id] = None
                self._bytes += len(data)
                if queue is None:
                    queue = self._pending[key] = collections.deque()
                if not queue and key not in self._held and key not in self._parked:
                    self._ready.append(key)
                queue.append(item)
                ids.append(item.id)
        return ids

    def _forget(self, item: Item) -> None:
        self._live.pop(item.id, None)
        self._bytes -= len(item.data)

    def claim(self, n: int) -> list[Item]:
        items: list[Item] = []
        with self._lock:
            if self._parked:
                now = time.time()
                for key in [k for k, at in self._parked.items() if at <= now]:
                    del self._parked[key]
                    if self._pending.get(key) and key not in self._held:
                        self._ready.append(key)
            while self._ready and len(items) < n:
                key = self._ready.popleft()
                queue = self._pending.get(key)
                if not queue or key in self._held or key in self._parked:
                    continue
                take = min(n - len(items), len(queue))
                for _ in range(take):
                    item = queue.popleft()
                    self._claimed[item.id] = item
                    items.append(item)
                self._held[key] = take
                if not queue:
                    del self._pending[key]
        items.sort()
        return items

    def _settle(self, key: str, count: int) -> None:
        left = self._held.get(key, 0) - count
        if left > 0:
            self._held[key] = left
            return
        self._held.pop(key, None)
        if self._pending.get(key) and key not in self._parked:
            self._ready.appendleft(key)  # it has waited longest

    def ack(self, ids: Collection[int]) -> None:
        with self._lock:
            for item_id in ids:
                item = self._claimed.pop(item_id, None)
                if item is not None:
                    self._forget(item)
                    self._settle(item.key, 1)

    def release(
        self,
        ids: Collection[int],
        *,
        failed: int = 0,
        error: str = "",
        retry_at: float = 0.0,
    ) -> None:
        with self._lock:
            items = sorted(self._claimed.pop(i) for i in ids if i in self._claimed)
            now = time.time()
            for item in reversed(items):  # back at the front of their keys, oldest first
                if failed:
                    item = item._replace(
                        attempts=item.attempts + failed, first_failure=item.first_failure or now
                    )
                self._pending.setdefault(item.key, collections.deque()).appendleft(item)
            for item in items:
                if retry_at > now:
                    self._parked[item.key] = max(self._parked.get(item.key, 0.0), retry_at)
                self._settle(item.key, 1)

    def bury(self, ids: Collection[int], error: str, *, failed: int = 0) -> None:
        with self._lock:
            for item_id in ids:
                item = self._claimed.pop(item_id, None)
                if item is None:
                    continue
                self._forget(item)
                self._dead.append(
                    DeadItem(
                        item.id,
                        item.kind,
                        item.key,
                        item.data,
                        item.attempts + failed,
                        error,
                        time.time(),
                    )
                )
                self._settle(item.key, 1)

    def unpark(self) -> None:
        """Make parked keys claimable now (shutdown: one last try before they are lost)."""
        with self._lock:
            for key in self._parked:
                if self._pending.get(key) and key not in self._held:
                    self._ready.append(key)
            self._parked.clear()

    def renew(self) -> None:
        """Nothing to do: only this process sees these items."""

    def size(self) -> int:
        with self._lock:
            return len(self._live)

    def oldest(self) -> int | None:
        with self._lock:
            return next(iter(self._live), None)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "stored": len(self._live),
                "claimed": len(self._claimed),
                "parked": len(self._parked),
                "settling": 0,
                "dead": len(self._dead),
            }

    def dead(self, limit: int = 100) -> list[DeadItem]:
        with self._lock:
            return list(self._dead)[:limit]

    def revive(self, ids: Collection[int] | None = None) -> int:
        with self._lock:
            chosen = [d for d in self._dead if ids is None or d.id in ids]
            for d in chosen:
                self._dead.remove(d)
        self.put_many([Entry(d.kind, d.key, d.data, time.time()) for d in chosen])
        return len(chosen)

    def purge(self, ids: Collection[int] | None = None) -> int:
        with self._lock:
            chosen = [d for d in self._dead if ids is None or d.id in ids]
            for d in chosen:
                self._dead.remove(d)
        return len(chosen)

    def fork(self) -> MemoryOutbox:
        """An empty outbox: the parent process still owns and sends what it holds."""
        return MemoryOutbox(self.max_events, self.max_bytes)

    def close(self) -> None:
        """Nothing to release; unsent items go with the process."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS px_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    route TEXT NOT NULL,
    data BLOB NOT NULL,
    created REAL NOT NULL,
    owner TEXT,
    lease_until REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS px_dead (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    route TEXT NOT NULL,
    data BLOB NOT NULL,
    attempts INTEGER NOT NULL,
    error TEXT NOT NULL,
    buried REAL NOT NULL
);
-- Per user/account: the capture time of the newest upsert PX acknowledged. An older
-- one stored late by a slow process is superseded, never sent after it.
CREATE TABLE IF NOT EXISTS px_latest (
    route TEXT PRIMARY KEY,
    created REAL NOT NULL
);
"""
_UPSERT_SQL = ", ".join(f"'{kind}'" for kind in sorted(UPSERT_KINDS))
#: How long a high-water mark in ``px_latest`` is kept (far beyond any store delay).
_LATEST_KEPT = 3600.0
# Columns added after the first release: an older file is migrated in place.
_COLUMNS = {
    "attempts": "INTEGER NOT NULL DEFAULT 0",
    "first_failure": "REAL NOT NULL DEFAULT 0",
    "retry_at": "REAL NOT NULL DEFAULT 0",
    "last_error": "TEXT",
}
_INDEXES = """
CREATE INDEX IF NOT EXISTS px_outbox_owner ON px_outbox(owner) WHERE owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS px_outbox_route ON px_outbox(route, id);
CREATE INDEX IF NOT EXISTS px_outbox_lease ON px_outbox(lease_until);
CREATE INDEX IF NOT EXISTS px_outbox_retry ON px_outbox(retry_at);
CREATE INDEX IF NOT EXISTS px_outbox_created ON px_outbox(created, id);
"""
_ITEM_COLUMNS = "id, kind, route, data, attempts, first_failure"

# Every SQLiteOutbox of this process, so that fork() can close their connections first.
_boxes: weakref.WeakSet[SQLiteOutbox] = weakref.WeakSet()
_boxes_lock = threading.Lock()
_held: list[SQLiteOutbox] = []  # boxes whose lock the forking thread holds


class SQLiteOutbox:
    """A durable outbox in one SQLite file, shareable by the processes of one host.

    WAL mode lets readers and one writer proceed together; ``busy_timeout`` makes a
    writer wait for another process instead of failing. A claim writes this handle's
    owner (``host/pid/token``) and a lease expiry on the rows; no handle claims a row
    whose key has a live lease or a ``retry_at`` in the future, which is the "one
    sender per key" rule across processes. Leases are renewed while held; a crashed
    process's rows come back when its lease expires or, sooner, when another process on
    the same host sees that its pid is gone. AUTOINCREMENT ids are never reused, so a
    late ack cannot delete a newer row. Dead items live in the ``px_dead`` table.
    """

    durable = True

    def __init__(
        self,
        path: str,
        *,
        max_events: int = 1_000_000,
        lease: float = 30.0,
        busy_timeout: float = 5.0,
        settle: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.max_events = max_events
        self.lease = lease
        self.settle = settle
        self.busy_timeout = busy_timeout
        self._clock = clock  # wall clock: leases are compared across processes
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self.owner = f"{self._host}/{self._pid}/{uuid.uuid4().hex[:12]}"
        self._lock = threading.Lock()  # held for every SQLite call, connecting included
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        with _boxes_lock:  # before the first SQLite call: a fork() from now on waits for it
            _boxes.add(self)
        # Several workers open one file at once: switching to WAL and creating the
        # schema take locks that busy_timeout does not always wait for, so retry.
        give_up = time.monotonic() + busy_timeout
        try:
            while True:
                try:
                    self._set_up()
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > give_up:
                        raise
                    time.sleep(0.02)
            self._reap_dead_owners()
        except BaseException:
            self.close()
            raise

    @property
    def _db(self) -> sqlite3.Connection:
        """This process's connection, opened on first use, and again after a fork()
        closed it (see ``_before_fork``). Callers hold ``_lock``."""
        db = self._conn
        if db is not None:
            return db
        if self._closed:
            raise sqlite3.ProgrammingError("Cannot operate on a closed database.")
        if os.getpid() != self._pid:
            # Its owner is the parent's: claims and acks made here would be mixed up.
            raise RuntimeError("this SQLiteOutbox belongs to the parent process; use fork()")
        db = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout,
            isolation_level=None,  # autocommit; write transactions are explicit
            check_same_thread=False,  # one connection, serialised by self._lock
        )
        db.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        # NORMAL in WAL mode survives a process crash (kill -9); only an OS crash or
        # power loss can lose the last commits, which is not worth an fsync per batch.
        db.execute("PRAGMA synchronous = NORMAL")  # per connection, unlike journal_mode
        self._conn = db
        return db

    def _set_up(self) -> None:
        with self._lock:
            (mode,) = self._db.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                self._db.execute("PRAGMA journal_mode = WAL")
            self._db.executescript(_SCHEMA)
            have = {row[1] for row in self._db.execute("PRAGMA table_info(px_outbox)")}
            for name, decl in _COLUMNS.items():
                if name not in have:
                    self._db.execute(f"ALTER TABLE px_outbox ADD COLUMN {name} {decl}")
            self._db.executescript(_INDEXES)

    def _write(self, work: Callable[[sqlite3.Connection], None]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                work(self._db)
                self._db.execute("COMMIT")
            except BaseException:
                # A failed COMMIT ("database is locked") can leave the transaction open,
                # and with it this connection's write lock: every process would stall.
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise

    # -- writes ---------------------------------------------------------------------
    def put_many(self, entries: Sequence[Entry]) -> list[int | None]:
        if not entries:
            return []
        now = self._clock()
        ids: list[int | None] = []

        def work(db: sqlite3.Connection) -> None:
            (stored,) = db.execute("SELECT COUNT(*) FROM px_outbox").fetchone()
            room = self.max_events - int(stored)
            for kind, key, data, at in entries:
                at = at or now
                if kind in UPSERT_KINDS:
                    older = db.execute(
                        "SELECT id, data, created FROM px_outbox WHERE route = ? AND kind = ?"
                        " AND lease_until <= ? ORDER BY id",
                        (key, kind, now),
                    ).fetchall()
                    if older:
                        # In capture order, not store order: another process may have
                        # stored a newer upsert of this entity before this one.
                        bodies = sorted(
                            [(float(row[2]), bytes(row[1])) for row in older] + [(at, data)],
                            key=lambda body: body[0],
                        )
                        data = coalesce([body for _, body in bodies[:-1]], bodies[-1][1])
                        at = bodies[-1][0]
                        db.executemany(
                            "DELETE FROM px_outbox WHERE id = ?", [(row[0],) for row in older]
                        )
                        room += len(older)
                if room <= 0:
                    ids.append(None)
                    continue
                cursor = db.execute(
                    "INSERT INTO px_outbox (kind, route, data, created) VALUES (?, ?, ?, ?)",
                    (kind, key, data, at),
                )
                ids.append(cursor.lastrowid)
                room -= 1

        self._write(work)
        return ids

    def claim(self, n: int) -> list[Item]:
        if n <= 0:
            return []
        now = self._clock()
        claimable = (
            " SELECT id FROM px_outbox WHERE lease_until <= ?3 AND retry_at <= ?3"
            " AND created <= ?5"
            " AND route NOT IN (SELECT route FROM px_outbox WHERE lease_until > ?3"
            "  UNION ALL SELECT route FROM px_outbox WHERE retry_at > ?3)"
            " ORDER BY created, id LIMIT ?4"
        )
        params = (self.owner, now + self.lease, now, n, now - self.settle)
        with self._lock:
            # A read first: in WAL mode it takes no write lock. Every process polls
            # several times a second, and an UPDATE that claims nothing still takes the
            # write lock, which starved the writers that store captured items.
            if self._db.execute(claimable, params).fetchone() is None:
                return []
            self._db.execute(
                f"DELETE FROM px_outbox WHERE kind IN ({_UPSERT_SQL}) AND lease_until <= ?"
                " AND created <= (SELECT created FROM px_latest"
                " WHERE px_latest.route = px_outbox.route)",
                (now,),
            )
            rows = self._db.execute(
                f"UPDATE px_outbox SET owner = ?1, lease_until = ?2 WHERE id IN ({claimable})"
                f" RETURNING {_ITEM_COLUMNS}, created",
                params,
            ).fetchall()
        rows.sort(key=lambda row: (row[-1], row[0]))  # capture order
        return [_item(row[:-1]) for row in rows]

    def ack(self, ids: Collection[int]) -> None:
        self._by_ids(
            "INSERT INTO px_latest (route, created) SELECT route, created FROM px_outbox"
            f" WHERE id IN ({{}}) AND kind IN ({_UPSERT_SQL}) AND true"
            " ON CONFLICT (route) DO UPDATE SET created = max(created, excluded.created)",
            ids,
            (),
            then="DELETE FROM px_outbox WHERE id IN ({})",
        )

    def release(
        self,
        ids: Collection[int],
        *,
        failed: int = 0,
        error: str = "",
        retry_at: float = 0.0,
    ) -> None:
        if failed:
            self._by_ids(
                "UPDATE px_outbox SET owner = NULL, lease_until = 0, attempts = attempts + ?,"
                " last_error = ?, retry_at = ?,"
                " first_failure = CASE first_failure WHEN 0 THEN ? ELSE first_failure END"
                " WHERE owner = ? AND id IN ({})",
                ids,
                (failed, error, retry_at, self._clock(), self.owner),
            )
            return
        self._by_ids(
            "UPDATE px_outbox SET owner = NULL, lease_until = 0, retry_at = ?"
            " WHERE owner = ? AND id IN ({})",
            ids,
            (retry_at, self.owner),
        )

    def bury(self, ids: Collection[int], error: str, *, failed: int = 0) -> None:
        now = self._clock()
        self._by_ids(
            "INSERT OR REPLACE INTO px_dead (id, kind, route, data, attempts, error, buried)"
            " SELECT id, kind, route, data, attempts + ?, ?, ? FROM px_outbox"
            " WHERE owner = ? AND id IN ({})",
            ids,
            (failed, error, now, self.owner),
            then="DELETE FROM px_outbox WHERE owner = ? AND id IN ({})",
            then_params=(self.owner,),
        )

    def renew(self) -> None:
        now = self._clock()
        with self._lock:
            self._db.execute(
                "UPDATE px_outbox SET lease_until = ? WHERE owner = ? AND lease_until > 0",
                (now + self.lease, self.owner),
            )
            self._db.execute("DELETE FROM px_latest WHERE created < ?", (now - _LATEST_KEPT,))
        self._reap_dead_owners()

    def _by_ids(
        self,
        sql: str,
        ids: Collection[int],
        params: tuple[object, ...],
        *,
        then: str | None = None,
        then_params: tuple[object, ...] = (),
    ) -> None:
        id_list = list(ids)
        if not id_list:
            return

        def work(db: sqlite3.Connection) -> None:
            for start in range(0, len(id_list), 500):
                chunk = id_list[start : start + 500]
                marks = ",".join("?" * len(chunk))
                db.execute(sql.format(marks), (*params, *chunk))
                if then is not None:
                    db.execute(then.format(marks), (*then_params, *chunk))

        self._write(work)

    def _reap_dead_owners(self) -> None:
        """Release leases of processes on this host that no longer exist."""
        with self._lock:
            owners = [
                row[0]
                for row in self._db.execute(
                    "SELECT DISTINCT owner FROM px_outbox WHERE owner IS NOT NULL"
                )
            ]
            for owner in owners:
                host, _, rest = owner.partition("/")
                pid_text = rest.partition("/")[0]
                if host != self._host or not pid_text.isdigit() or int(pid_text) == self._pid:
                    continue
                if not _pid_alive(int(pid_text)):
                    self._db.execute(
                        "UPDATE px_outbox SET owner = NULL, lease_until = 0 WHERE owner = ?",
                        (owner,),
                    )

    # -- reads, the dead letter and lifecycle -------------------------------------------
    def size(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM px_outbox").fetchone()
        return int(count)

    def oldest(self) -> int | None:
        with self._lock:
            (lowest,) = self._db.execute("SELECT MIN(id) FROM px_outbox").fetchone()
        return None if lowest is None else int(lowest)

    def stats(self) -> dict[str, int]:
        now = self._clock()
        with self._lock:
            stored, claimed, parked, settling = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(lease_until > ?), 0),"
                " COALESCE(SUM(retry_at > ?), 0), COALESCE(SUM(created > ?), 0) FROM px_outbox",
                (now, now, now - self.settle),
            ).fetchone()
            (dead,) = self._db.execute("SELECT COUNT(*) FROM px_dead").fetchone()
        return {
            "stored": stored,
            "claimed": claimed,
            "parked": parked,
            "settling": settling,
            "dead": dead,
        }

    def dead(self, limit: int = 100) -> list[DeadItem]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, route, data, attempts, error, buried FROM px_dead"
                " ORDER BY id LIMIT ?",
                (limit,),
            ).fetchall()
        return [DeadItem(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6]) for r in rows]

    def revive(self, ids: Collection[int] | None = None) -> int:
        return self._from_dead(
            "INSERT INTO px_outbox (kind, route, data, created)"
            " SELECT kind, route, data, ? FROM px_dead",
            ids,
            (self._clock(),),
        )

    def purge(self, ids: Collection[int] | None = None) -> int:
        return self._from_dead(None, ids, ())

    def _from_dead(
        self, copy: str | None, ids: Collection[int] | None, params: tuple[object, ...]
    ) -> int:
        where, chosen = (
            ("", ())
            if ids is None
            else (
                " WHERE id IN ({})".format(",".join("?" * len(ids))),
                tuple(ids),
            )
        )
        moved = 0

        def work(db: sqlite3.Connection) -> None:
            nonlocal moved
            if copy is not None:
                db.execute(copy + where + " ORDER BY id", (*params, *chosen))
            moved = db.execute("DELETE FROM px_dead" + where, chosen).rowcount

        if ids is not None and not ids:
            return 0
        self._write(work)
        return moved

    def fork(self) -> SQLiteOutbox:
        """A handle with its own owner for a forked child (the parent's claims stay the
        parent's); the inherited handle has no connection and refuses to open one."""
        return SQLiteOutbox(
            self.path,
            max_events=self.max_events,
            lease=self.lease,
            busy_timeout=self.busy_timeout,
            settle=self.settle,
            clock=self._clock,
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            db, self._conn = self._conn, None
            if db is not None:
                db.close()
        with _boxes_lock:  # not under self._lock: _before_fork takes them in this order
            _boxes.discard(self)


def _before_fork() -> None:
    """Close every outbox connection of this process before ``fork()`` (a gunicorn
    ``--preload`` master drains the outbox, then forks its workers).

    No SQLite connection may cross a fork (https://www.sqlite.org/howtocorrupt.html,
    2.6): the child inherits SQLite's per-process state for the file, which says that
    it holds the parent's locks when it holds none. A connection the child then opens
    to the file can fail with "database is locked" for good, or write to a WAL that
    another process deletes (its commits lost). A thread inside SQLite at the fork
    (opening the file, say) may hold a SQLite mutex, and the child hangs on its first
    SQLite call. Holding every handle's lock means no thread is inside SQLite; the
    parent reopens on its next call, the child through ``fork()``.
    """
    _boxes_lock.acquire()
    for box in list(_boxes):
        box._lock.acquire()
        _held.append(box)
        db, box._conn = box._conn, None
        if db is not None:
            with contextlib.suppress(Exception):  # a fork hook must never raise
                db.close()


def _after_fork() -> None:
    """In the parent and in the child: the forking thread lets go of every lock."""
    for box in _held:
        box._lock.release()
    _held.clear()
    _boxes_lock.release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)


def _item(row: Any) -> Item:
    ident, kind, key, data, attempts, first_failure = row
    return Item(int(ident), kind, key, bytes(data), int(attempts), float(first_failure))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True

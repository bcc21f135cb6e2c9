"""Where captured items wait until PX has acknowledged them.

An :class:`Outbox` holds encoded items in arrival order. The sender *claims* items
before sending them and *acks* them once PX answered (or they were dropped for good);
only then are they deleted, so a crash between send and ack resends rather than loses
(at-least-once; every event carries a fixed ``eventId``).

- :class:`MemoryOutbox`: bounded in events and bytes, lost with the process.
- :class:`SQLiteOutbox`: a WAL-mode SQLite file that survives a PX outage and a process
  restart, shared safely by several worker processes through leases.
"""

from __future__ import annotations

import collections
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from typing import NamedTuple, Protocol


class Entry(NamedTuple):
    """An item to store: what it is, its ordering key, and its JSON body (encoded once)."""

    kind: str
    #: Items with the same route are sent in order (a session, a user, an account).
    route: str
    data: bytes


class Item(NamedTuple):
    """A stored item, identified by the outbox; ids grow in arrival order."""

    id: int
    kind: str
    route: str
    data: bytes


class Outbox(Protocol):
    """Storage for items between capture and PX's acknowledgement. Thread-safe."""

    def put_many(self, entries: Sequence[Entry]) -> list[int | None]:
        """Store entries in order; returns their ids, ``None`` for each one refused
        because the outbox is full (the newest entries are the ones refused)."""
        ...

    def claim(self, n: int) -> list[Item]:
        """Lease up to ``n`` of the oldest unclaimed items to this outbox handle."""
        ...

    def ack(self, ids: Collection[int]) -> None:
        """Delete items: PX acknowledged them, or they were dropped for good."""
        ...

    def release(self, ids: Collection[int]) -> None:
        """Give claimed items back unsent, so they are claimed again first."""
        ...

    def renew(self) -> None:
        """Extend the leases this handle holds (call well within the lease time)."""
        ...

    def size(self) -> int:
        """Items stored, claimed or not."""
        ...

    def fork(self) -> Outbox:
        """A handle for a forked child process (see the implementations)."""
        ...

    def close(self) -> None: ...


class MemoryOutbox:
    """An in-process outbox bounded by ``max_events`` items and ``max_bytes`` of JSON.

    Overflow policy: refuse the newest entries (the ones being put), keep what is queued,
    so a burst cannot push out events that have waited longest.
    """

    def __init__(self, max_events: int = 10_000, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._pending: collections.deque[Item] = collections.deque()
        self._claimed: dict[int, Item] = {}
        self._bytes = 0
        self._next_id = 1

    def put_many(self, entries: Sequence[Entry]) -> list[int | None]:
        ids: list[int | None] = []
        with self._lock:
            for kind, route, data in entries:
                count = len(self._pending) + len(self._claimed)
                if count >= self.max_events or self._bytes + len(data) > self.max_bytes:
                    ids.append(None)
                    continue
                item = Item(self._next_id, kind, route, data)
                self._next_id += 1
                self._pending.append(item)
                self._bytes += len(data)
                ids.append(item.id)
        return ids

    def claim(self, n: int) -> list[Item]:
        with self._lock:
            items = [self._pending.popleft() for _ in range(min(n, len(self._pending)))]
            for item in items:
                self._claimed[item.id] = item
        return items

    def ack(self, ids: Collection[int]) -> None:
        with self._lock:
            for item_id in ids:
                item = self._claimed.pop(item_id, None)
                if item is not None:
                    self._bytes -= len(item.data)

    def release(self, ids: Collection[int]) -> None:
        with self._lock:
            items = sorted((self._claimed.pop(i) for i in ids if i in self._claimed), reverse=True)
            self._pending.extendleft(items)  # back at the front, oldest first

    def renew(self) -> None:
        """Nothing to do: only this process sees these items."""

    def size(self) -> int:
        with self._lock:
            return len(self._pending) + len(self._claimed)

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
CREATE INDEX IF NOT EXISTS px_outbox_owner ON px_outbox(owner) WHERE owner IS NOT NULL;
"""

# Connections inherited through fork() must never be used or closed by the child (closing
# could checkpoint the WAL under the parent's feet), so the child parks them here.
_inherited: list[sqlite3.Connection] = []


class SQLiteOutbox:
    """A durable outbox in one SQLite file, shareable by the processes of one host.

    WAL mode lets readers and one writer proceed together; ``busy_timeout`` makes a
    writer wait for another process instead of failing. A claim writes this handle's
    owner (``host/pid/token``) and a lease expiry on the rows; other handles skip leased
    rows, so two processes never send the same row at the same time. Leases are renewed
    while held; a crashed process's rows come back when its lease expires or, sooner,
    when another process on the same host sees that its pid is gone. AUTOINCREMENT ids
    are never reused, so a late ack cannot delete a newer row.

    Overflow: at ``max_events`` rows (an upper bound computed from the id range, cheap on
    any table size), the newest entries are refused.
    """

    def __init__(
        self,
        path: str,
        *,
        max_events: int = 1_000_000,
        lease: float = 30.0,
        busy_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.max_events = max_events
        self.lease = lease
        self.busy_timeout = busy_timeout
        self._clock = clock  # wall clock: leases are compared across processes
        self._host = socket.gethostname()
        self._pid = os.getpid()
        self.owner = f"{self._host}/{self._pid}/{uuid.uuid4().hex[:12]}"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            path,
            timeout=busy_timeout,
            isolation_level=None,  # autocommit; write transactions are explicit
            check_same_thread=False,  # one connection, serialised by self._lock
        )
        with self._lock:
            self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode survives a process crash (kill -9); only an OS crash or
            # power loss can lose the last commits, which is not worth an fsync per batch.
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.executescript(_SCHEMA)
        self._reap_dead_owners()

    # -- writes ---------------------------------------------------------------------
    def put_many(self, entries: Sequence[Entry]) -> list[int | None]:
        if not entries:
            return []
        now = self._clock()
        ids: list[int | None] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                (used,) = self._db.execute(
                    "SELECT COALESCE(MAX(id) - MIN(id) + 1, 0) FROM px_outbox"
                ).fetchone()
                room = max(self.max_events - int(used), 0)
                for kind, route, data in entries[:room]:
                    cursor = self._db.execute(
                        "INSERT INTO px_outbox (kind, route, data, created) VALUES (?, ?, ?, ?)",
                        (kind, route, data, now),
                    )
                    ids.append(cursor.lastrowid)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        ids.extend([None] * (len(entries) - len(ids)))
        return ids

    def claim(self, n: int) -> list[Item]:
        if n <= 0:
            return []
        now = self._clock()
        with self._lock:
            rows = self._db.execute(
                "UPDATE px_outbox SET owner = ?, lease_until = ? WHERE id IN ("
                " SELECT id FROM px_outbox WHERE lease_until <= ? ORDER BY id LIMIT ?"
                ") RETURNING id, kind, route, data",
                (self.owner, now + self.lease, now, n),
            ).fetchall()
        return sorted(Item(int(r[0]), r[1], r[2], bytes(r[3])) for r in rows)

    def ack(self, ids: Collection[int]) -> None:
        self._by_ids("DELETE FROM px_outbox WHERE id IN ({})", ids, ())

    def release(self, ids: Collection[int]) -> None:
        self._by_ids(
            "UPDATE px_outbox SET owner = NULL, lease_until = 0 WHERE owner = ? AND id IN ({})",
            ids,
            (self.owner,),
        )

    def renew(self) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE px_outbox SET lease_until = ? WHERE owner = ?",
                (self._clock() + self.lease, self.owner),
            )
        self._reap_dead_owners()

    def _by_ids(self, sql: str, ids: Collection[int], params: tuple[str, ...]) -> None:
        id_list = list(ids)
        if not id_list:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(id_list), 500):
                    chunk = id_list[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    self._db.execute(sql.format(marks), (*params, *chunk))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

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

    # -- reads and lifecycle ----------------------------------------------------------
    def size(self) -> int:
        with self._lock:
            (count,) = self._db.execute("SELECT COUNT(*) FROM px_outbox").fetchone()
        return int(count)

    def fork(self) -> SQLiteOutbox:
        """A new connection and owner for a forked child; the inherited one is parked."""
        _inherited.append(self._db)
        return SQLiteOutbox(
            self.path,
            max_events=self.max_events,
            lease=self.lease,
            busy_timeout=self.busy_timeout,
            clock=self._clock,
        )

    def close(self) -> None:
        if os.getpid() != self._pid:
            _inherited.append(self._db)
            return
        with self._lock:
            self._db.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True

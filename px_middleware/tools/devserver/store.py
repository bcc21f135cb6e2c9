"""SQLite storage for everything the stand-in receives.

One connection guarded by a lock: the app's handlers run on the event loop and in
Starlette's thread pool, and SQLite connections must not be used concurrently.
WAL mode lets a test (or ``sqlite3`` in a shell) read the file while the server
writes. Multi-row writes are one transaction, so a rejected request stores nothing.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from px_middleware.tools.devserver.schema import Record, merge_record

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,            -- 'user' or 'account'
    key TEXT NOT NULL,             -- identifyId or account id
    data TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    UNIQUE (kind, key)
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_name TEXT, identify_id TEXT, session_id TEXT, account_id TEXT, event_id TEXT,
    data TEXT NOT NULL,
    received_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_session ON events (session_id);
CREATE INDEX IF NOT EXISTS events_event_id ON events (event_id);
CREATE TABLE IF NOT EXISTS sdk_calls (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    method TEXT, args TEXT NOT NULL, product_key TEXT, url TEXT,
    hash_valid INTEGER,            -- NULL: no userHash sent (or not an identify)
    ts INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    method TEXT NOT NULL, path TEXT NOT NULL, query TEXT NOT NULL,
    status INTEGER,                -- NULL: the connection was closed without a response
    reason TEXT,                   -- why the stand-in refused it (its error messages)
    ts INTEGER NOT NULL
);
"""
_TABLES = ("records", "events", "sdk_calls", "requests")

#: Query filters on ``events`` and the columns they read.
EVENT_FILTERS = {
    "eventName": "event_name",
    "identifyId": "identify_id",
    "sessionId": "session_id",
    "accountId": "account_id",
    "eventId": "event_id",
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class StoredEvent(NamedTuple):
    received_ms: int
    event: Record


class Store:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- users and accounts ---------------------------------------------------------
    def get_record(self, kind: str, key: str) -> Record | None:
        rows = self._query("SELECT data FROM records WHERE kind = ? AND key = ?", (kind, key))
        return json.loads(rows[0][0]) if rows else None

    def list_records(self, kind: str) -> list[Record]:
        rows = self._query("SELECT data FROM records WHERE kind = ? ORDER BY seq", (kind,))
        return [json.loads(data) for (data,) in rows]

    def create_records(self, kind: str, records: Sequence[tuple[str, Record]]) -> list[str]:
        """Insert all or nothing; returns the keys that already exist (or repeat)."""
        ts = now_ms()
        with self._transaction() as db:
            seen: set[str] = set()
            conflicts = []
            for key, _ in records:
                exists = db.execute(
                    "SELECT 1 FROM records WHERE kind = ? AND key = ?", (kind, key)
                ).fetchone()
                if exists or key in seen:
                    conflicts.append(key)
                seen.add(key)
            if not conflicts:
                db.executemany(
                    "INSERT INTO records (kind, key, data, created_ms, updated_ms)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(kind, key, json.dumps(record), ts, ts) for key, record in records],
                )
            return conflicts

    def update_records(self, kind: str, patches: Sequence[tuple[str, Record]]) -> list[str]:
        """Merge all or nothing; returns the keys that do not exist."""
        ts = now_ms()
        with self._transaction() as db:
            merged: dict[str, Record] = {}
            missing = []
            for key, patch in patches:
                if key in merged:
                    merged[key] = merge_record(merged[key], patch)
                    continue
                row = db.execute(
                    "SELECT data FROM records WHERE kind = ? AND key = ?", (kind, key)
                ).fetchone()
                if row is None:
                    missing.append(key)
                else:
                    merged[key] = merge_record(json.loads(row[0]), patch)
            if not missing:
                db.executemany(
                    "UPDATE records SET data = ?, updated_ms = ? WHERE kind = ? AND key = ?",
                    [(json.dumps(record), ts, kind, key) for key, record in merged.items()],
                )
            return missing

    def delete_record(self, kind: str, key: str) -> bool:
        with self._transaction() as db:
            cursor = db.execute("DELETE FROM records WHERE kind = ? AND key = ?", (kind, key))
            return cursor.rowcount > 0

    # -- custom events --------------------------------------------------------------
    def add_events(self, events: Sequence[Record]) -> None:
        ts = now_ms()
        rows = [
            (
                *(_text(event.get(field)) for field in EVENT_FILTERS),
                json.dumps(event),
                ts,
            )
            for event in events
        ]
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO events (event_name, identify_id, session_id, account_id, event_id,"
                " data, received_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def list_events(self, filters: Mapping[str, str] | None = None) -> list[StoredEvent]:
        """Events in arrival order, duplicates included, filtered by exact field values."""
        where, params = [], []
        for name, value in (filters or {}).items():
            if name not in EVENT_FILTERS:
                raise KeyError(name)
            where.append(f"{EVENT_FILTERS[name]} = ?")
            params.append(value)
        sql = "SELECT received_ms, data FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._query(sql + " ORDER BY seq", params)
        return [StoredEvent(received, json.loads(data)) for received, data in rows]

    # -- SDK calls ------------------------------------------------------------------
    def add_sdk_call(
        self,
        method: str | None,
        args: Sequence[Any],
        product_key: str | None,
        url: str | None,
        hash_valid: bool | None,
    ) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO sdk_calls (method, args, product_key, url, hash_valid, ts)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (method, json.dumps(list(args)), product_key, url, hash_valid, now_ms()),
            )

    def list_sdk_calls(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Recorded calls, oldest first; ``limit`` keeps the newest ones."""
        rows = self._query(
            "SELECT * FROM (SELECT seq, method, args, product_key, url, hash_valid, ts"
            " FROM sdk_calls ORDER BY seq DESC LIMIT ?) ORDER BY seq",
            (-1 if limit is None else limit,),
        )
        return [
            {
                "id": seq,
                "method": method,
                "args": json.loads(args),
                "product_key": product_key,
                "url": url,
                "hash_valid": None if hash_valid is None else bool(hash_valid),
                "ts": ts,
            }
            for seq, method, args, product_key, url, hash_valid, ts in rows
        ]

    # -- REST request log -----------------------------------------------------------
    def log_request(
        self, method: str, path: str, query: str, status: int | None, reason: str | None = None
    ) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO requests (method, path, query, status, reason, ts)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (method, path, query, status, reason, now_ms()),
            )

    def list_requests(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Logged REST calls, oldest first; ``limit`` keeps the newest ones."""
        rows = self._query(
            "SELECT * FROM (SELECT seq, method, path, query, status, reason, ts FROM requests"
            " ORDER BY seq DESC LIMIT ?) ORDER BY seq",
            (-1 if limit is None else limit,),
        )
        return [
            {
                "method": method,
                "path": path,
                "query": query,
                "status": status,
                "reason": reason,
                "ts": ts,
            }
            for _, method, path, query, status, reason, ts in rows
        ]

    def reset(self) -> None:
        with self._transaction() as db:
            for table in _TABLES:
                db.execute(f"DELETE FROM {table}")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None

"""SQLite for the example: one connection per request, schema and seed on first use.

The database file is ``FLASK_APP_DB`` when set, else ``flask_app.sqlite3`` in the
instance folder. It is created and seeded the first time a request needs it, so
importing the app (gunicorn, ``flask run``, tests) has no side effects.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
from pathlib import Path

from flask import current_app, g
from flask_login import UserMixin
from werkzeug.security import generate_password_hash

SCHEMA = Path(__file__).with_name("schema.sql")

#: Seed rows. Passwords are the user's first name in lower case (see the README).
ACCOUNTS = [
    ("acme", "Acme Corporation", "Enterprise", "Manufacturing", 50, "2027-03-31"),
    ("globex", "Globex", "Growth", "Energy", 12, "2026-12-31"),
]
USERS = [
    ("alice@acme.test", "alice", "Alice", "Anders", "Admin", "2024-02-12", "acme"),
    ("carol@acme.test", "carol", "Carol", "Chen", "Analyst", "2025-06-01", "acme"),
    ("bob@globex.test", "bob", "Bob", "Brown", "Owner", "2025-01-20", "globex"),
]


@dataclasses.dataclass(frozen=True)
class AccountRow:
    id: str
    name: str
    plan: str
    industry: str
    seats: int
    contract_end: dt.date


@dataclasses.dataclass(frozen=True)
class AppUser(UserMixin):  # type: ignore[misc]  # flask_login ships no types
    id: int
    email: str
    first_name: str
    last_name: str
    role: str
    signed_up: dt.date
    account: AccountRow

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}"


def get_db() -> sqlite3.Connection:
    if "db" not in g:
        g.db = connect(current_app.config["DATABASE"])
    db: sqlite3.Connection = g.db
    return db


def close_db(_error: BaseException | None = None) -> None:
    db = g.pop("db", None)
    if db is not None:
        db.close()


def connect(path: str) -> sqlite3.Connection:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=10)
    db.row_factory = sqlite3.Row
    ensure_seeded(db)
    return db


def ensure_seeded(db: sqlite3.Connection) -> None:
    """Create and seed the tables once; safe when several workers start together."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'user'").fetchone():
        return
    db.execute("BEGIN IMMEDIATE")  # one worker seeds, the others wait and see the rows
    try:
        for statement in SCHEMA.read_text().split(";"):
            if statement.strip():
                db.execute(statement)
        db.executemany("INSERT OR IGNORE INTO account VALUES (?, ?, ?, ?, ?, ?)", ACCOUNTS)
        db.executemany(
            "INSERT OR IGNORE INTO user (email, password_hash, first_name, last_name, role,"
            " signed_up, account_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(email, generate_password_hash(password), *rest)
             for email, password, *rest in USERS],
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def _user(row: sqlite3.Row) -> AppUser:
    account = AccountRow(
        row["account_id"], row["account_name"], row["plan"], row["industry"], row["seats"],
        dt.date.fromisoformat(row["contract_end"]),
    )
    return AppUser(
        row["id"], row["email"], row["first_name"], row["last_name"], row["role"],
        dt.date.fromisoformat(row["signed_up"]), account,
    )


_SELECT_USER = (
    "SELECT user.*, account.name AS account_name, account.plan, account.industry,"
    " account.seats, account.contract_end FROM user JOIN account ON account.id = user.account_id"
)


def user_by_id(user_id: str) -> AppUser | None:
    if not user_id.isdigit():
        return None
    row = get_db().execute(_SELECT_USER + " WHERE user.id = ?", (int(user_id),)).fetchone()
    return _user(row) if row else None


def user_by_email(email: str) -> tuple[AppUser, str] | None:
    """The user and their password hash."""
    row = get_db().execute(
        _SELECT_USER + " WHERE user.email = ?", (email.strip().lower(),)
    ).fetchone()
    return (_user(row), row["password_hash"]) if row else None


def teammates(account_id: str) -> list[AppUser]:
    rows = get_db().execute(
        _SELECT_USER + " WHERE user.account_id = ? ORDER BY user.first_name", (account_id,)
    )
    return [_user(row) for row in rows]

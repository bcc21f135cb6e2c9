-- The example's data: accounts (companies) and the users who belong to them.
-- Created on first use (examples/flask_app/db.py holds the seed rows).
-- No semicolons in comments: db.py splits this file on them.

CREATE TABLE IF NOT EXISTS account (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    plan TEXT NOT NULL,
    industry TEXT NOT NULL,
    seats INTEGER NOT NULL,            -- custom NUMBER attribute "seats"
    contract_end TEXT NOT NULL         -- custom DATE_TIME attribute "contractEnd" (ISO date)
);

CREATE TABLE IF NOT EXISTS user (
    id INTEGER PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    role TEXT NOT NULL,
    signed_up TEXT NOT NULL,           -- default DATE_TIME attribute "signUpDate"
    account_id TEXT NOT NULL REFERENCES account (id)
);

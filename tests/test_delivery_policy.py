"""Delivery policies and storage on their own: retry tables, token bucket, outboxes."""

from __future__ import annotations

import email.utils
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from px_middleware.core.notices import Notices
from px_middleware.delivery import retry
from px_middleware.delivery.outbox import Entry, Item, MemoryOutbox, Outbox, SQLiteOutbox
from px_middleware.delivery.ratelimit import DAY, TokenBucket
from px_middleware.delivery.retry import backoff, classify, retry_delay
from px_middleware.rest import PXAPIError, PXRateLimited, parse_retry_after


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- retry ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (None, "retry"),
        (200, "ok"),
        (201, "ok"),
        (204, "ok"),
        (301, "drop"),
        (400, "drop"),
        (401, "drop"),
        (403, "drop"),
        (404, "drop"),
        (408, "retry"),
        (409, "drop"),
        (413, "drop"),
        (422, "drop"),
        (429, "retry"),
        (500, "retry"),
        (502, "retry"),
        (503, "retry"),
        (504, "retry"),
        (599, "retry"),
    ],
)
def test_classify(status: int | None, outcome: str) -> None:
    assert classify(status) == outcome


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (6, 16.0), (7, 30.0), (50, 30.0), (10**6, 30.0)],
)
def test_backoff_is_exponential_full_jitter_capped(attempt: int, ceiling: float) -> None:
    assert backoff(attempt, rng=lambda: 1.0) == ceiling
    assert backoff(attempt, rng=lambda: 0.5) == ceiling / 2
    assert backoff(attempt, rng=lambda: 0.0) == 0.0


def test_backoff_custom_base_and_cap() -> None:
    assert backoff(3, base=0.1, cap=0.25, rng=lambda: 1.0) == 0.25
    assert backoff(2, base=0.1, cap=5, rng=lambda: 1.0) == pytest.approx(0.2)


NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("0", 0.0),
        ("1", 1.0),
        ("120", 120.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        (email.utils.formatdate(NOW + 42, usegmt=True), 42.0),
        (email.utils.formatdate(NOW - 42, usegmt=True), 0.0),
        ("Wed, 21 Oct 2015 07:28:00", None),  # no zone: not an HTTP-date
    ],
)
def test_parse_retry_after(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header, now=NOW) == seconds


@pytest.mark.parametrize(
    ("attempt", "retry_after", "expected"),
    [
        (1, None, 0.5),  # backoff (rng fixed at 1.0)
        (1, 3.0, 3.0),  # the server's wait wins, even above the backoff
        (9, 1.0, 1.0),  # ...and below it
        (1, 0.0, 0.0),
        (1, 120.0, 30.0),  # capped per attempt
    ],
)
def test_retry_delay(attempt: int, retry_after: float | None, expected: float) -> None:
    assert retry_delay(attempt, retry_after, rng=lambda: 1.0) == expected


# -- token bucket -----------------------------------------------------------------------------
def test_token_bucket_rate_and_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, burst=3, clock=clock)
    assert [bucket.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_acquire() == pytest.approx(0.1)
    clock.advance(0.05)
    assert bucket.try_acquire() == pytest.approx(0.05)
    clock.advance(0.05)
    assert bucket.try_acquire() == 0.0
    clock.advance(100)  # idle time refills up to the burst only
    assert [bucket.try_acquire() == 0.0 for _ in range(4)] == [True, True, True, False]


def test_token_bucket_sustained_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(200, clock=clock)
    granted = 0
    for _ in range(10_000):  # 10 simulated seconds in 1 ms steps
        while bucket.try_acquire() == 0.0:
            granted += 1
        clock.advance(0.001)
    assert 200 * 10 <= granted <= 200 * 10 + 200  # the rate, plus the initial burst


def test_token_bucket_daily_budget() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, daily_budget=5, clock=clock)
    assert [bucket.try_acquire() for _ in range(5)] == [0.0] * 5
    assert bucket.try_acquire() == pytest.approx(DAY)
    clock.advance(DAY - 10)
    assert bucket.try_acquire() == pytest.approx(10)
    clock.advance(10)
    assert bucket.try_acquire() == 0.0  # a new day


def test_token_bucket_acquire_with_fake_sleep() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2, burst=1, clock=clock)
    assert bucket.acquire(0, sleep=clock.advance)
    assert not bucket.acquire(0.1, sleep=clock.advance)
    assert bucket.acquire(1.0, sleep=clock.advance)
    assert clock.now == pytest.approx(1000.5)


def test_token_bucket_is_thread_safe() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1, burst=1000, clock=clock)
    granted: list[int] = []

    def worker() -> None:
        granted.append(sum(bucket.try_acquire() == 0.0 for _ in range(500)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 1000


def test_token_bucket_validates() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)
    with pytest.raises(ValueError):
        TokenBucket(1, daily_budget=0)


# -- memory outbox ----------------------------------------------------------------------------
def entries(n: int, size: int = 10, start: int = 0) -> list[Entry]:
    return [Entry("event", f"s{i % 3}", b"x" * size) for i in range(start, start + n)]


def test_memory_outbox_claim_ack_release() -> None:
    box = MemoryOutbox()
    ids = box.put_many(entries(5))  # keys s0 s1 s2 s0 s1
    assert ids == [1, 2, 3, 4, 5]
    first = box.claim(2)
    assert [i.id for i in first] == [1, 4]  # a key's items go together, in order
    assert [i.id for i in box.claim(2)] == [2, 5]
    box.ack([1])
    box.release([2, 5])
    assert box.size() == 4
    assert [i.id for i in box.claim(10)] == [2, 3, 5]  # s0 is still held (4)
    box.ack([2, 3, 4, 5])
    assert box.size() == 0
    assert box.claim(1) == []


def test_memory_outbox_overflow_drops_newest() -> None:
    box = MemoryOutbox(max_events=3, max_bytes=1024)
    assert box.put_many(entries(5)) == [1, 2, 3, None, None]
    box.ack([i.id for i in box.claim(1)])
    assert box.put_many(entries(2)) == [4, None]
    by_bytes = MemoryOutbox(max_events=100, max_bytes=1024)
    assert by_bytes.put_many(entries(3, size=400)) == [1, 2, None]
    assert by_bytes.put_many(entries(1, size=200)) == [3]  # smaller ones still fit


def test_memory_outbox_fork_is_empty() -> None:
    box = MemoryOutbox(7, 2048)
    box.put_many(entries(3))
    child = box.fork()
    assert child.size() == 0
    assert (child.max_events, child.max_bytes) == (7, 2048)


# -- SQLite outbox ----------------------------------------------------------------------------
def test_sqlite_outbox_roundtrip_and_persistence(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.sqlite3")
    box = SQLiteOutbox(path)
    ids = box.put_many([Entry("user", "user:u1", b'{"identifyId":"u1"}'), *entries(3)])
    assert ids == [1, 2, 3, 4]
    claimed = box.claim(2)
    assert claimed[0].kind == "user" and claimed[0].data == b'{"identifyId":"u1"}'
    box.ack([claimed[0].id])
    box.release([claimed[1].id])
    box.close()
    again = SQLiteOutbox(path)  # a restarted process
    assert again.size() == 3
    assert [i.id for i in again.claim(10)] == [2, 3, 4]
    row = again._db.execute("PRAGMA journal_mode").fetchone()
    assert row[0] == "wal"
    again.close()


def test_sqlite_outbox_claims_are_exclusive_per_key(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.sqlite3")
    a, b = SQLiteOutbox(path), SQLiteOutbox(path)
    a.put_many(entries(10))  # keys s0 s1 s2 s0 s1 s2 ...
    got_a = a.claim(4)
    assert [i.id for i in got_a] == [1, 2, 3, 4]
    assert b.claim(100) == []  # every key has an item leased by a: none for b
    a.ack([1, 4])  # s0 is free again, and nothing else
    assert [(i.id, i.key) for i in b.claim(100)] == [(7, "s0"), (10, "s0")]
    a.release([2, 3])
    b.release([1])  # not b's claim: ignored
    assert [i.id for i in b.claim(100)] == [2, 3, 5, 6, 8, 9]
    a.close()
    b.close()


def test_sqlite_outbox_lease_expires_and_renews(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.sqlite3")
    clock = FakeClock(NOW)
    a = SQLiteOutbox(path, lease=30, clock=clock)
    b = SQLiteOutbox(path, lease=30, clock=clock)
    a.put_many(entries(2))
    assert len(a.claim(1)) == 1
    clock.advance(20)
    a.renew()
    clock.advance(20)  # 40 s after the claim, 20 s after the renewal
    assert [i.id for i in b.claim(10)] == [2]  # the other key
    clock.advance(11)  # a's lease has lapsed (a crashed without releasing)
    assert [i.id for i in b.claim(10)] == [1]
    a.close()
    b.close()


def test_sqlite_outbox_reaps_claims_of_dead_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.sqlite3")
    box = SQLiteOutbox(path)
    box.put_many(entries(3))
    box.close()
    # Another process claims everything and dies without releasing (lease: one hour).
    script = (
        "import sys; from px_middleware.delivery.outbox import SQLiteOutbox\n"
        "box = SQLiteOutbox(sys.argv[1], lease=3600)\n"
        "assert len(box.claim(10)) == 3\n"
        "import os; os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, path], check=True, timeout=30)
    restarted = SQLiteOutbox(path, lease=3600)
    assert [i.id for i in restarted.claim(10)] == [1, 2, 3]
    restarted.close()


def test_sqlite_outbox_overflow_drops_newest(tmp_path: Path) -> None:
    box = SQLiteOutbox(str(tmp_path / "o.sqlite3"), max_events=3)
    assert box.put_many(entries(5)) == [1, 2, 3, None, None]
    box.ack([i.id for i in box.claim(2)])
    assert box.put_many(entries(3)) == [4, 5, None]
    box.close()


def test_sqlite_outbox_ids_are_never_reused(tmp_path: Path) -> None:
    box = SQLiteOutbox(str(tmp_path / "o.sqlite3"))
    box.put_many(entries(2))
    box.ack([1, 2])
    assert box.put_many(entries(1)) == [3]
    box.close()


def test_sqlite_outbox_concurrent_claimers_never_share(tmp_path: Path) -> None:
    path = str(tmp_path / "o.sqlite3")
    SQLiteOutbox(path).put_many(entries(600))
    boxes = [SQLiteOutbox(path) for _ in range(3)]
    seen: list[list[int]] = [[] for _ in boxes]

    def drain(n: int) -> None:
        while items := boxes[n].claim(7):
            seen[n].extend(i.id for i in items)
            boxes[n].ack([i.id for i in items])

    threads = [threading.Thread(target=drain, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [i for ids in seen for i in ids]
    assert sorted(flat) == list(range(1, 601))
    assert boxes[0].size() == 0


# -- SQLite outbox across fork() (gunicorn --preload) -----------------------------------------
def _in_child(work: Callable[[], None]) -> int:
    """Fork; the child runs ``work`` and exits 0, 2 if it raised, or dies of SIGALRM if
    it hangs (a healthy child takes milliseconds). The parent gets the pid."""
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            signal.alarm(30)
            work()
            code = 0
        finally:
            os._exit(code)
    return pid


def _exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_sqlite_outbox_forked_while_a_thread_opens_it(tmp_path: Path) -> None:
    """A --preload master opens the outbox on a thread (drain on start) while its main
    thread forks the workers. A child forked while that thread was inside SQLite
    inherited SQLite's mutexes and lock bookkeeping mid-change: its first SQLite call
    hung for good, or every write failed with "database is locked"."""
    path = str(tmp_path / "o.sqlite3")
    master = SQLiteOutbox(path)  # open across every fork below, as in the master
    stop = threading.Event()

    def churn() -> None:  # opens and uses a handle again and again, as at start
        while not stop.is_set():
            box = SQLiteOutbox(path)
            box.claim(10)
            box.close()

    def child_work() -> None:
        child = master.fork()
        assert child.put_many(entries(1)) != [None]
        child.close()

    thread = threading.Thread(target=churn)
    thread.start()
    codes: list[int] = []
    try:
        while len(codes) < 40 and not any(codes):
            codes.append(_exit_code(_in_child(child_work)))
    finally:
        stop.set()
        thread.join()
    assert codes == [0] * 40  # -14: hung (SIGALRM), 2: raised
    assert master.size() == 40
    master.close()


def test_sqlite_outbox_writes_of_a_forked_child_outlive_the_parent_connection(
    tmp_path: Path,
) -> None:
    """No connection may cross fork() (sqlite.org/howtocorrupt.html, 2.6). A child that
    inherited one believed it held the parent's locks: once the parent closed its
    handle, another process (the outbox CLI, say) could delete the WAL while the child
    went on committing into it, and those items were lost."""
    path = str(tmp_path / "o.sqlite3")
    parent = SQLiteOutbox(path)
    parent.put_many(entries(1))
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()

    def child_work() -> None:
        child = parent.fork()
        child.put_many(entries(1, start=1))
        os.write(ready_w, b"1")
        assert os.read(go_r, 1) == b"1"
        child.put_many(entries(1, start=2))
        child.close()

    pid = _in_child(child_work)
    os.close(ready_w)  # the child's end only: EOF if it dies before it is ready
    os.close(go_r)
    try:
        assert os.read(ready_r, 1) == b"1"
        assert parent.size() == 2  # the parent's handle works on after the fork
        parent.close()
        script = (  # opens the file, reads it, closes: the last one out checkpoints the WAL
            "import sqlite3, sys; db = sqlite3.connect(sys.argv[1])\n"
            "db.execute('SELECT COUNT(*) FROM px_outbox').fetchone(); db.close()"
        )
        subprocess.run([sys.executable, "-c", script, path], check=True, timeout=30)
        os.write(go_w, b"1")
    finally:
        os.close(go_w)
        os.close(ready_r)
        code = _exit_code(pid)
    assert code == 0
    again = SQLiteOutbox(path)
    assert again.size() == 3
    again.close()


def test_sqlite_outbox_inherited_by_a_forked_child_refuses_to_reconnect(tmp_path: Path) -> None:
    parent = SQLiteOutbox(str(tmp_path / "o.sqlite3"))

    def child_work() -> None:
        with pytest.raises(RuntimeError, match="use fork"):  # its owner is the parent's
            parent.size()
        parent.close()  # a no-op in the child: there is no connection to close

    assert _exit_code(_in_child(child_work)) == 0
    assert parent.size() == 0
    parent.close()


# -- retry.call: the one retry loop ----------------------------------------------------------
def _failing(*statuses: int | None) -> tuple[list[float | None], Callable[[float | None], str]]:
    """A request that fails with ``statuses`` in turn (None: no answer), then succeeds."""
    seen: list[float | None] = []
    queue = list(statuses)

    def request(timeout: float | None) -> str:
        seen.append(timeout)
        if queue:
            status = queue.pop(0)
            if status is None:
                raise httpx.ConnectError("refused")
            if status == 429:
                raise PXRateLimited(429, ["slow down"])
            raise PXAPIError(status, ["no"])
        return "done"

    return seen, request


def test_call_retries_until_success_and_counts_requests() -> None:
    seen, request = _failing(503, None, 500)
    outcome = retry.call(request, timeout=2.0, base=0.001, cap=0.01, pause=retry.Pause())
    assert (outcome.status, outcome.value, outcome.attempts) == ("ok", "done", 4)
    assert seen == [2.0] * 4


def test_call_gives_up_after_attempts_but_429s_do_not_count() -> None:
    _, request = _failing(429, 429, 503, 503, 503)
    outcome = retry.call(request, attempts=3, base=0.001, cap=0.01, pause=retry.Pause())
    assert (outcome.status, outcome.attempts, outcome.throttled) == ("exhausted", 5, 2)
    assert outcome.http_status == 503


def test_call_rejected_4xx_is_final() -> None:
    _, request = _failing(400, 503)
    outcome = retry.call(request, base=0.001, pause=retry.Pause())
    assert (outcome.status, outcome.attempts, outcome.http_status) == ("rejected", 1, 400)


def test_a_429_pauses_other_callers_of_the_same_pause() -> None:
    pause = retry.Pause()
    _, throttled = _failing(429)
    stop = threading.Event()
    stop.set()  # the first caller stops while paused; its 429 still set the pause
    assert (
        retry.call(
            throttled, pause=pause, base=30.0, stop=None, attempts=1, deadline=None, patience=0.0
        ).status
        == "exhausted"
    )
    assert pause.remaining() > 25.0
    _, healthy = _failing()
    outcome = retry.call(healthy, pause=pause, stop=stop)
    assert (outcome.status, outcome.attempts) == ("stopped", 0)  # waited, never sent


def test_pause_doubles_per_429_in_a_row_and_resets_on_success() -> None:
    pause = retry.Pause(base=1.0, cap=5.0)
    assert [round(pause.hit()) for _ in range(4)] == [1, 2, 4, 5]
    pause.clear()
    pause._until = 0.0
    assert round(pause.hit()) == 1


def test_hurry_ends_the_backoff_with_one_more_try_at_once() -> None:
    hurry = threading.Event()
    calls: list[float] = []

    def request(timeout: float | None) -> str:
        calls.append(time.monotonic())
        hurry.set()  # shutdown begins while the first attempt is in flight
        raise PXAPIError(503, ["down"])

    outcome = retry.call(request, hurry=hurry, base=1000.0, cap=1000.0, pause=retry.Pause())
    assert (outcome.status, outcome.attempts) == ("exhausted", 2)


def test_deadline_bounds_the_request_timeout() -> None:
    seen, request = _failing()
    retry.call(request, timeout=60.0, deadline=time.monotonic() + 5.0, pause=retry.Pause())
    assert seen[0] is not None and seen[0] <= 5.0


# -- the outbox protocol, for every implementation ------------------------------------------
@pytest.fixture(params=["memory", "sqlite"])
def box(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outbox]:
    outbox: Outbox = (
        MemoryOutbox(max_events=100)
        if request.param == "memory"
        else SQLiteOutbox(str(tmp_path / "o.sqlite3"), max_events=100)
    )
    yield outbox
    outbox.close()


def user(ident: str, **attrs: object) -> Entry:
    return Entry("user", f"user:{ident}", json.dumps({"identifyId": ident, **attrs}).encode())


def test_upserts_coalesce_to_the_latest_and_never_overtake(box: Outbox) -> None:
    box.put_many([user("u1", plan="a", email="x@example.com")])
    in_flight = box.claim(10)
    assert [json.loads(i.data)["plan"] for i in in_flight] == ["a"]
    box.put_many([user("u1", plan="b"), user("u1", plan="c", customAttributes={"k": 1})])
    box.put_many([user("u1", customAttributes={"j": 2})])
    assert box.claim(10) == []  # "a" is in flight: the newer one waits behind it
    box.ack([in_flight[0].id])
    (latest,) = box.claim(10)
    assert json.loads(latest.data) == {
        "identifyId": "u1",
        "plan": "c",
        "customAttributes": {"k": 1, "j": 2},
    }
    assert box.size() == 1


def test_release_with_failure_parks_the_key_and_counts(box: Outbox) -> None:
    box.put_many(
        [Entry("event", "s", b"{}"), Entry("event", "s", b"{}"), Entry("event", "t", b"{}")]
    )
    first = box.claim(10)
    assert [i.id for i in first] == [1, 2, 3]
    box.release([1, 2], failed=1, error="PX API 503", retry_at=time.time() + 60)
    box.ack([3])
    assert box.claim(10) == []  # parked: nothing of key s before retry_at
    assert box.stats()["parked"] >= 1
    box.release([], failed=0)
    if isinstance(box, SQLiteOutbox):
        box._db.execute("UPDATE px_outbox SET retry_at = 0")
    else:
        assert isinstance(box, MemoryOutbox)
        box.unpark()
    again = box.claim(10)
    assert [(i.id, i.attempts) for i in again][:1] == [(1, 1)]
    assert again[0].first_failure > 0


def test_bury_moves_to_the_dead_letter_and_unblocks_the_key(box: Outbox) -> None:
    box.put_many([Entry("event", "s", b'{"n":1}'), Entry("event", "s", b'{"n":2}')])
    poison, after = box.claim(10)
    box.bury([poison.id], "PX API 500: always")
    box.release([after.id])
    assert [i.id for i in box.claim(10)] == [after.id]
    (dead,) = box.dead()
    assert (dead.id, dead.error, dead.data) == (poison.id, "PX API 500: always", b'{"n":1}')
    assert box.stats()["dead"] == 1
    assert box.revive() == 1
    assert box.dead() == [] and box.size() == 2
    box.put_many([Entry("event", "z", b"{}")])
    (z,) = [i for i in box.claim(10) if i.key == "z"]
    box.bury([z.id], "again")
    assert box.purge() == 1 and box.dead() == []


def test_size_bound_counts_rows_not_the_id_range(box: Outbox) -> None:
    box.put_many([Entry("event", "old", b"{}")])  # one old row that never leaves
    for _ in range(5):
        ids = box.put_many([Entry("event", "s", b"{}") for _ in range(50)])
        assert None not in ids
        box.ack([i.id for i in box.claim(1000) if i.key == "s"])
    assert box.size() == 1
    assert box.put_many([Entry("event", "s", b"{}")] * 100).count(None) == 1  # 100 rows


def test_oldest_is_the_lowest_stored_id(box: Outbox) -> None:
    assert box.oldest() is None
    box.put_many(entries(3))
    box.ack([i.id for i in box.claim(10) if i.id == 1])
    assert box.oldest() == 2


# -- notices: loud, not noisy ------------------------------------------------------------------
def test_notices_log_the_first_then_one_summary_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    notices = Notices(logging.getLogger("px_middleware.delivery"), interval=0.2)
    with caplog.at_level(logging.WARNING, logger="px_middleware.delivery"):
        for _ in range(50):  # e.g. an outbox that turned read-only: 50 failed writes
            notices.note("outbox write failed", 1, "attempt to write a readonly database")
        notices.note("dropped (overflow)", 3, "the queue is full")
        assert [r.getMessage() for r in caplog.records] == [
            "px_middleware: outbox write failed: 1; attempt to write a readonly database",
            "px_middleware: dropped (overflow): 3; the queue is full",
        ]
        caplog.clear()
        notices.flush()  # not due yet: nothing
        assert caplog.records == []
        deadline = time.monotonic() + 5
        while not caplog.records and time.monotonic() < deadline:
            notices.flush()  # due after the interval: one line with the count
            time.sleep(0.01)
    assert [r.getMessage() for r in caplog.records] == [
        "px_middleware: outbox write failed: 49 in the last 0.2s; "
        "attempt to write a readonly database"
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


def _role(item: Item) -> object:
    return json.loads(item.data)["role"]


def test_sqlite_upserts_stored_late_by_another_process_never_win(tmp_path: Path) -> None:
    """Latest by capture time, whatever order two processes stored the upserts in."""
    path = str(tmp_path / "outbox.sqlite3")
    clock = FakeClock(NOW)
    fast, slow = SQLiteOutbox(path, clock=clock), SQLiteOutbox(path, clock=clock)
    r6 = Entry("user", "user:u1", b'{"identifyId":"u1","role":"r6"}', NOW - 2)
    r7 = Entry("user", "user:u1", b'{"identifyId":"u1","role":"r7"}', NOW - 1)
    # Stored out of capture order, before anything was sent: one body, r7's values.
    fast.put_many([r7])
    slow.put_many([r6])
    (merged,) = fast.claim(10)
    assert _role(merged) == "r7"
    fast.ack([merged.id])
    # r7 reached PX; r6 is stored only now, by a process that was slow: never sent.
    slow.put_many([r6])
    assert fast.claim(10) == [] and slow.claim(10) == []
    assert fast.size() == 0
    # A newer change after that is sent as usual.
    fast.put_many([Entry("user", "user:u1", b'{"identifyId":"u1","role":"r8"}', NOW)])
    assert [_role(i) for i in slow.claim(10)] == ["r8"]
    fast.close()
    slow.close()

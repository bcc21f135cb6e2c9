"""``Delivery`` against a real HTTP server on 127.0.0.1 (the ``StubPX`` of test_rest).

No mocks and no sleeps standing in for synchronisation: tests wait with ``flush`` or
poll with deadlines. Backoff is shortened (``retry_cap``) except where the wait itself
is what is tested.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from px_middleware.config import PXConfig
from px_middleware.delivery import Delivery, SQLiteOutbox, get_delivery, shutdown_all
from tests.support.devserver import DevServer
from tests.test_rest import API_KEY, Fault, StubPX, px_error

PRODUCT_KEY = "AP-TESTTESTTEST-2"
FAST: dict[str, Any] = {"retry_base": 0.02, "retry_cap": 0.2}


def make_config(url: str, **overrides: Any) -> PXConfig:
    overrides.setdefault("api_key", API_KEY)
    return PXConfig(product_key=PRODUCT_KEY, api_url=url, **overrides)


def event(n: int = 0, session: str | None = "s1", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "eventName": "test_event",
        "identifyId": "u1",
        "propertyKey": PRODUCT_KEY,
        "eventId": str(uuid.uuid4()),
        "date": 1_700_000_000_000 + n,
        "attributes": {"seq": n},
        **extra,
    }
    if session is not None:
        body["sessionId"] = session
    return body


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens there now: connections are refused at once


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def stub() -> Iterator[StubPX]:
    server = StubPX().start()
    yield server
    server.gate.set()
    server.stop()


@pytest.fixture
def make_delivery() -> Iterator[Callable[..., Delivery]]:
    created: list[Delivery] = []

    def factory(config: PXConfig, **kwargs: Any) -> Delivery:
        for key, value in FAST.items():
            kwargs.setdefault(key, value)
        delivery = Delivery(config, **kwargs)
        created.append(delivery)
        return delivery

    yield factory
    for delivery in created:
        delivery.shutdown(1.0)


def seq_by_session(events: list[dict[str, Any]]) -> dict[str, list[int]]:
    order: dict[str, list[int]] = {}
    for e in events:
        order.setdefault(e.get("sessionId", ""), []).append(e["attributes"]["seq"])
    return order


# -- the happy path -------------------------------------------------------------------------
@pytest.mark.parametrize("lists", [False, True])
def test_events_arrive_exactly_once_in_order_single_or_in_lists(
    stub: StubPX, make_delivery: Callable[..., Delivery], lists: bool
) -> None:
    delivery = make_delivery(make_config(stub.url, batch_events=lists))
    sent = [event(n, session=f"s{n % 5}") for n in range(450)]
    sent += [event(450 + n, session=None) for n in range(50)]
    assert all(delivery.capture("event", body) for body in sent)
    assert delivery.flush(10.0)
    ids = [e["eventId"] for e in stub.events]
    assert sorted(ids) == sorted(b["eventId"] for b in sent)  # all, and each once
    for session, seqs in seq_by_session(stub.events).items():
        if session:
            assert seqs == sorted(seqs), session
    batches = [r.body for r in stub.received]
    if lists:
        assert max(len(b) if isinstance(b, list) else 1 for b in batches) > 1
        assert all(len(b) <= 100 for b in batches if isinstance(b, list))
    else:  # PX documents one event per request: the default sends nothing else
        assert not any(isinstance(b, list) for b in batches)
        assert len(batches) == 500
    counts = delivery.counters()
    assert counts["captured"] == counts["sent"] == 500
    assert counts["queue_depth"] == 0
    assert counts["requests"] == len(stub.received)


def test_upserts_users_and_accounts(stub: StubPX, make_delivery: Callable[..., Delivery]) -> None:
    delivery = make_delivery(make_config(stub.url))
    delivery.capture("user", {"identifyId": "u1", "email": "a@example.com"})
    delivery.capture("account", {"id": "acme", "name": "Acme"})
    delivery.capture("user", {"identifyId": "u1", "firstName": "Ada"})  # after the first
    delivery.capture("user", {"identifyId": "team/7", "role": "x"})  # unsafe id
    assert delivery.flush(10.0)
    assert stub.users["u1"] == {"identifyId": "u1", "email": "a@example.com", "firstName": "Ada"}
    assert stub.users["team/7"] == {"identifyId": "team/7", "role": "x"}
    assert stub.accounts["acme"] == {"id": "acme", "name": "Acme"}
    assert delivery.counters()["sent"] == 4


def test_event_without_event_id_gets_one(
    stub: StubPX, make_delivery: Callable[..., Delivery]
) -> None:
    delivery = make_delivery(make_config(stub.url))
    body = event()
    del body["eventId"]
    delivery.capture("event", body)
    assert delivery.flush(5.0)
    assert uuid.UUID(stub.events[0]["eventId"])


# -- retries --------------------------------------------------------------------------------
def test_server_errors_are_retried(stub: StubPX, make_delivery: Callable[..., Delivery]) -> None:
    stub.fail_next(2, Fault(500, body=px_error(500, "boom")))
    stub.fail_next(1, Fault(close=True))  # a dropped connection: no answer at all
    delivery = make_delivery(make_config(stub.url))
    body = event()
    delivery.capture("event", body)
    assert delivery.flush(10.0)
    assert [e["eventId"] for e in stub.events] == [body["eventId"]]
    assert [r.status for r in stub.received] == [500, 500, 201]
    counts = delivery.counters()
    assert counts["retried"] == 3
    assert counts["sent"] == 1


def test_429_retry_after_is_honoured(stub: StubPX, make_delivery: Callable[..., Delivery]) -> None:
    stub.fail_next(1, Fault(429, headers={"Retry-After": "1"}, body=px_error(429, "slow down")))
    # The default cap (30 s): the server's wait must not be cut short.
    delivery = make_delivery(make_config(stub.url), retry_base=0.5, retry_cap=30.0)
    delivery.capture("event", event())
    assert delivery.flush(10.0)
    first, second = stub.received
    assert (first.status, second.status) == (429, 201)
    # Arrival times at the server: the retry came at least the asked second later.
    assert second.at - first.at >= 1.0
    assert len(stub.events) == 1


def test_429_pauses_every_lane(stub: StubPX, make_delivery: Callable[..., Delivery]) -> None:
    stub.fail_next(1, Fault(429, headers={"Retry-After": "1"}))
    delivery = make_delivery(make_config(stub.url, concurrency=4), retry_cap=30.0)
    delivery.capture("event", event(0, session="a"))
    wait_until(lambda: delivery.counters()["retried"] == 1)
    for n in range(1, 40):  # other sessions, so other lanes: they hold back too
        delivery.capture("event", event(n, session=f"s{n}"))
    assert delivery.flush(10.0)
    rejected = stub.received[0]
    assert rejected.status == 429
    assert all(r.at - rejected.at >= 1.0 for r in stub.received[1:])
    assert len(stub.events) == 40


# -- rejections -----------------------------------------------------------------------------
def test_bad_event_is_dropped_and_its_batch_mates_arrive(
    stub: StubPX, make_delivery: Callable[..., Delivery], caplog: pytest.LogCaptureFixture
) -> None:
    stub.gate.clear()
    delivery = make_delivery(make_config(stub.url, concurrency=1, batch_events=True))
    delivery.capture("event", event(0))
    wait_until(lambda: not delivery._buffer and delivery.counters()["queue_depth"] == 1)
    bodies = [event(n) for n in range(1, 11)]
    del bodies[4]["eventName"]
    for body in bodies:
        delivery.capture("event", body)
    with caplog.at_level(logging.WARNING, logger="px_middleware.delivery"):
        stub.gate.set()
        assert delivery.flush(10.0)
    assert sorted(e["attributes"]["seq"] for e in stub.events) == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert len(stub.events) == 10  # each once
    batch = stub.received[1]
    assert batch.status == 400 and isinstance(batch.body, list) and len(batch.body) == 10
    counts = delivery.counters()
    assert counts["dropped_rejected"] == 1
    assert counts["sent"] == 10
    assert bodies[4]["eventId"] in caplog.text
    assert "PX API 400: eventName is required" in caplog.text


def test_wrong_api_key_drops_without_splitting(
    stub: StubPX, make_delivery: Callable[..., Delivery]
) -> None:
    stub.gate.clear()
    delivery = make_delivery(
        make_config(stub.url, api_key="wrong", concurrency=1, batch_events=True)
    )
    delivery.capture("event", event(0))
    wait_until(lambda: not delivery._buffer and delivery.counters()["queue_depth"] == 1)
    for n in range(1, 6):
        delivery.capture("event", event(n))
    stub.gate.set()
    assert delivery.flush(10.0)
    assert [r.status for r in stub.received] == [401, 401]
    assert delivery.counters()["dropped_auth"] == 6


def test_invalid_items_are_dropped_and_counted(
    stub: StubPX, make_delivery: Callable[..., Delivery]
) -> None:
    delivery = make_delivery(make_config(stub.url))
    assert not delivery.capture("page", {})
    assert delivery.capture("event", event(1, attributes={"x": object()}))  # not JSON
    assert delivery.capture("event", event(2, attributes={"x": math.nan}))  # not JSON either
    assert delivery.capture("user", {"email": "no-id@example.com"})
    assert delivery.capture("event", "not a dict")  # type: ignore[arg-type]
    assert delivery.capture("event", event(3))
    assert delivery.flush(5.0)
    counts = delivery.counters()
    assert counts["dropped_invalid"] == 5
    assert counts["sent"] == 1


# -- bounds ---------------------------------------------------------------------------------
def test_overflow_drops_newest_and_counts(
    stub: StubPX, make_delivery: Callable[..., Delivery]
) -> None:
    stub.gate.clear()
    delivery = make_delivery(make_config(stub.url, max_queue_events=10))
    accepted = [delivery.capture("event", event(n)) for n in range(50)]
    counts = delivery.counters()
    assert accepted[:10] == [True] * 10
    assert counts["captured"] == sum(accepted)
    stub.gate.set()
    assert delivery.flush(10.0)
    counts = delivery.counters()
    assert 10 <= counts["sent"] <= 20  # a racing capture may slip in; the outbox still bounds it
    assert counts["sent"] + counts["dropped_overflow"] == 50
    assert len(stub.events) == counts["sent"]
    # Drop newest: what arrived are the first ones captured.
    assert sorted(e["attributes"]["seq"] for e in stub.events) == list(range(counts["sent"]))


# -- deadlines ------------------------------------------------------------------------------
def test_flush_and_shutdown_keep_their_deadline_when_px_is_unreachable(
    make_delivery: Callable[..., Delivery],
) -> None:
    delivery = make_delivery(make_config(f"http://127.0.0.1:{closed_port()}/v1"))
    for n in range(5):
        delivery.capture("event", event(n))
    started = time.monotonic()
    assert delivery.flush(0.5) is False
    assert time.monotonic() - started < 2.5
    started = time.monotonic()
    delivery.shutdown(1.0)
    assert time.monotonic() - started < 3.0
    counts = delivery.counters()
    assert counts["retried"] > 0
    assert counts["dropped_shutdown"] == 5  # memory only: lost, but counted
    assert not delivery.capture("event", event(9))
    assert delivery.counters()["dropped_closed"] == 1


def test_shutdown_keeps_its_deadline_when_px_hangs(
    stub: StubPX, make_delivery: Callable[..., Delivery]
) -> None:
    stub.gate.clear()  # accepts connections, never answers
    delivery = make_delivery(make_config(stub.url, request_timeout=30.0))
    delivery.capture("event", event())
    wait_until(lambda: delivery.counters()["queue_depth"] == 1 and not delivery._buffer)
    started = time.monotonic()
    delivery.shutdown(1.0)
    assert time.monotonic() - started < 3.0


def test_flush_without_captures_is_immediate(make_delivery: Callable[..., Delivery]) -> None:
    delivery = make_delivery(make_config(f"http://127.0.0.1:{closed_port()}/v1"))
    assert delivery.flush(0.0)
    delivery.shutdown(0.0)


# -- durable outbox ---------------------------------------------------------------------------
def test_sqlite_outbox_keeps_unsent_events_for_the_next_process(
    stub: StubPX, make_delivery: Callable[..., Delivery], tmp_path: Path
) -> None:
    path = str(tmp_path / "outbox.sqlite3")
    down = make_delivery(make_config(f"http://127.0.0.1:{closed_port()}/v1", outbox_path=path))
    bodies = [event(n) for n in range(20)]
    for body in bodies:
        down.capture("event", body)
    assert down.flush(5.0)  # durable: on disk, though PX is unreachable
    assert down.counters()["queue_depth"] == 0
    down.shutdown(1.0)
    assert down.counters()["dropped_shutdown"] == 0
    assert SQLiteOutbox(path).size() == 20  # released, ready for the next process
    up = make_delivery(make_config(stub.url, outbox_path=path))
    up.capture("event", event(20))
    assert up.flush(10.0)
    wait_until(lambda: len(stub.events) >= 21)
    assert sorted(e["attributes"]["seq"] for e in stub.events) == list(range(21))
    wait_until(lambda: up.counters()["outbox_size"] == 0)  # acked after PX answered


# -- fork -----------------------------------------------------------------------------------
def test_forked_child_sends_its_own_events_only(
    stub: StubPX, make_delivery: Callable[..., Delivery]
) -> None:
    delivery = make_delivery(make_config(stub.url))
    delivery.capture("event", event(0, session="parent"))
    assert delivery.flush(5.0)
    stub.gate.clear()  # the parent's next event is in flight during the fork
    delivery.capture("event", event(1, session="parent"))
    wait_until(lambda: delivery.counters()["queue_depth"] == 1 and not delivery._buffer)
    pid = os.fork()
    if pid == 0:  # the child: uses the inherited object, as a gunicorn worker would
        code = 1
        try:
            ok = all(delivery.capture("event", event(n, session="child")) for n in range(2, 7))
            code = 0 if ok and delivery.flush(10.0) else 1
        finally:
            os._exit(code)
    stub.gate.set()  # the server runs in this process's threads
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert delivery.flush(10.0)
    assert sorted(e["attributes"]["seq"] for e in stub.events) == list(range(7))


# -- the per-process registry -------------------------------------------------------------------
def test_get_delivery_is_one_per_config(stub: StubPX) -> None:
    config = make_config(stub.url)
    first = get_delivery(config)
    try:
        assert get_delivery(make_config(stub.url)) is first
        other = get_delivery(make_config(stub.url, api_key="another"))
        assert other is not first
        first.capture("event", event())
        shutdown_all(2.0)
        assert first.closed and other.closed
        assert len(stub.events) == 1
        assert get_delivery(config) is not first  # a closed one is replaced
    finally:
        shutdown_all(1.0)


def test_counters_have_stable_names(make_delivery: Callable[..., Delivery]) -> None:
    delivery = make_delivery(make_config(f"http://127.0.0.1:{closed_port()}/v1"))
    assert set(delivery.counters()) == {
        "captured",
        "sent",
        "retried",
        "requests",
        "dropped_overflow",
        "dropped_rejected",
        "dropped_auth",
        "dropped_invalid",
        "dropped_closed",
        "dropped_shutdown",
        "dropped_dead",
        "queue_depth",
        "outbox_size",
    }


# -- issue 12: poison, shutdown, latest-wins, list bodies ----------------------------------------
def test_a_poison_event_goes_to_the_dead_letter_and_its_session_goes_on(
    stub: StubPX,
    make_delivery: Callable[..., Delivery],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = str(tmp_path / "outbox.sqlite3")
    bodies = [event(n, session=f"s{n % 3}") for n in range(30)]
    poison = bodies[4]  # session s1: its later events must not wait for it forever
    stub.poison.add(poison["eventId"])
    config = make_config(stub.url, outbox_path=path, max_attempts=4, dead_letter_after=0.0)
    delivery = make_delivery(config)
    with caplog.at_level(logging.WARNING, logger="px_middleware.delivery"):
        for body in bodies:
            delivery.capture("event", body)
        wait_until(lambda: delivery.counters()["dropped_dead"] == 1)
        wait_until(lambda: len(stub.events) == 29)
    assert poison["eventId"] not in {e["eventId"] for e in stub.events}
    for session, seqs in seq_by_session(stub.events).items():
        assert seqs == sorted(seqs), session
    assert "moved to the dead letter after 4 attempts" in caplog.text
    assert poison["eventId"] in caplog.text
    poisoned = [r for r in stub.received if isinstance(r.body, dict)
                and r.body.get("eventId") == poison["eventId"]]  # fmt: skip
    assert len(poisoned) == 4  # max_attempts requests, then no more
    # The operator's view and actions, through the real command line.
    cli = [sys.executable, "-m", "px_middleware", "outbox", "--path", path]
    dead = subprocess.run([*cli, "dead", "--json"], capture_output=True, text=True, check=True)
    (row,) = [json.loads(line) for line in dead.stdout.splitlines()]
    assert row["data"]["eventId"] == poison["eventId"]
    assert "PX API 500" in row["error"] and row["attempts"] == 4
    stats = subprocess.run([*cli, "stats"], capture_output=True, text=True, check=True)
    assert json.loads(stats.stdout)["dead"] == 1
    stub.poison.clear()  # fixed on PX's side: the operator sends it again
    revived = subprocess.run([*cli, "retry", "--all"], capture_output=True, text=True, check=True)
    assert revived.stdout.startswith("1 dead items")
    wait_until(lambda: len(stub.events) == 30)
    purge = subprocess.run([*cli, "purge", "--all"], capture_output=True, text=True, check=True)
    assert purge.stdout.startswith("0 dead items")


def test_shutdown_after_an_outage_tries_once_more_and_logs_what_is_lost(
    stub: StubPX, make_delivery: Callable[..., Delivery], caplog: pytest.LogCaptureFixture
) -> None:
    stub.fail_next(10_000, Fault(503, body=px_error(503, "down")))
    # Long backoff: without the last try at shutdown, nothing would be sent again.
    config = make_config(stub.url, concurrency=1)
    delivery = make_delivery(config, retry_base=20.0, retry_cap=30.0)
    for n in range(6):
        delivery.capture("event", event(n, session=f"s{n}"))
    wait_until(lambda: delivery.counters()["requests"] >= 1)  # then a long backoff
    before = delivery.counters()["requests"]
    with caplog.at_level(logging.WARNING, logger="px_middleware.delivery"):
        started = time.monotonic()
        delivery.shutdown(2.0)
    assert time.monotonic() - started < 4.0
    counts = delivery.counters()
    assert counts["requests"] >= before + 6  # every lane tried once more, at once
    assert counts["dropped_shutdown"] == 6
    assert "dropped (shutdown): 6" in caplog.text
    assert "PX API 503: down" in caplog.text


def test_shutdown_after_recovery_sends_what_was_backing_off(
    stub: StubPX, make_delivery: Callable[..., Delivery]
) -> None:
    stub.fail_next(1, Fault(503))
    config = make_config(stub.url, concurrency=1)
    delivery = make_delivery(config, retry_base=20.0, retry_cap=30.0)
    for n in range(6):
        delivery.capture("event", event(n, session=f"s{n}"))
    wait_until(lambda: delivery.counters()["requests"] >= 1)  # failed, backing off
    delivery.shutdown(3.0)  # PX is back: the last try delivers everything
    assert len(stub.events) == 6
    assert delivery.counters()["dropped_shutdown"] == 0


def test_rapid_attribute_changes_end_with_the_latest(
    stub: StubPX, make_delivery: Callable[..., Delivery]
) -> None:
    delivery = make_delivery(make_config(stub.url, concurrency=4))
    for round_ in range(8):
        for n in range(6):
            delivery.capture("user", {"identifyId": f"u{n}", "role": f"r{round_}"})
    assert delivery.flush(10.0)
    assert {u: body["role"] for u, body in stub.users.items()} == {f"u{n}": "r7" for n in range(6)}
    puts = [r for r in stub.received if r.method in ("PUT", "POST")]
    assert len(puts) < 8 * 6  # coalesced: not one request per change


def test_list_bodies_fall_back_to_single_events_when_px_refuses_lists(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with DevServer(tmp_path / "px.sqlite3", accept_event_lists=False) as server:
        config = PXConfig(
            product_key=PRODUCT_KEY,
            api_key=server.api_key,
            api_url=server.api_url,
            batch_events=True,
            concurrency=1,
        )
        delivery = Delivery(config, **FAST)
        try:
            server.faults(latency_ms=200)  # so several events queue up behind the first
            bodies = [event(n) for n in range(12)]
            with caplog.at_level(logging.WARNING, logger="px_middleware.delivery"):
                for body in bodies:
                    delivery.capture("event", body)
                assert delivery.flush(20.0)
            server.faults()
            delivery.capture("event", event(12))
            assert delivery.flush(10.0)
        finally:
            delivery.shutdown(1.0)
        got = [e["attributes"]["seq"] for e in server.events()]
    assert got == list(range(13))  # every event, in order, each once
    assert "sending one event per request from now on" in caplog.text
    assert delivery.counters()["dropped_rejected"] == 0

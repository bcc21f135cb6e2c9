"""Many workers on many "hosts", one Redis, one stand-in: the promises of the README's
"Running many workers and hosts" section, under real servers and real faults.

Two gunicorn masters (``-w 4 --preload``) and one uvicorn (``--workers 2``) stand for
three hosts. A session's page views go round-robin to all of them, so every session
is captured by several processes. A session's next page view is requested once its
previous one is stored (in a stream or already at the stand-in), as a person's next
click comes after the page arrived; that makes "capture order" well defined across
processes without a single sleep.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from px_middleware.delivery.redis_budget import key_prefix
from tests.support.devserver import DevServer
from tests.support.redis_server import RedisServer
from tests.support.servers import Server, gunicorn, uvicorn

PRODUCT_KEY = "AP-REDISREDIS1-2"
STANDIN_RATE = 200.0
BUDGET = 60.0  # requests/s for all processes together: well under what the load offers
GUNICORN_ARGS = ("-c", "python:tests.support.redis_apps", "--preload", "--workers", "4")
WSGI_APP = "tests.support.redis_apps:wsgi"
ASGI_APP = "tests.support.redis_apps:asgi"


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[DevServer]:
    with DevServer(tmp_path / "px.sqlite3", rate_limit=STANDIN_RATE) as server:
        yield server


def env_for(standin: DevServer, redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "PX_PRODUCT_KEY": PRODUCT_KEY,
        "PX_API_KEY": standin.api_key,
        "PX_API_URL": standin.api_url,
        "PX_REDIS_URL": redis_url,
        "PX_RATE_LIMIT": str(BUDGET),
        **extra,
    }


def get(client: httpx.Client, server: Server, event_id: str, session: str, seq: int) -> int:
    response = client.get(f"{server.url}/", params={"id": event_id, "s": session, "seq": seq})
    assert response.text.endswith("True"), response.text
    return response.status_code


def stored_ids(r: Any, standin: DevServer) -> set[str]:
    """eventIds in any stream of the outbox or already received by the stand-in."""
    prefix = key_prefix(standin.api_key)
    ids = {e["eventId"] for e in standin.events()}
    for stream in r.scan_iter(f"{prefix}:outbox:*"):
        for _, fields in r.xrange(stream):
            body = fields[b"d"]
            ids.add(body.split(b'"eventId":"', 1)[1].split(b'"', 1)[0].decode())
    return ids


def wait_delivered(
    standin: DevServer, ids: set[str], servers: list[Server], timeout: float, r: Any = None
) -> None:
    """Wait until every eventId is at the stand-in; else fail saying where things are."""
    try:
        standin.wait_for(lambda: ids <= {e["eventId"] for e in standin.events()}, timeout)
    except AssertionError:
        missing = ids - {e["eventId"] for e in standin.events()}
        in_redis = missing & stored_ids(r, standin) if r is not None else set()
        logs = "\n".join(server.log()[-4000:] for server in servers)
        raise AssertionError(
            f"{len(missing)} of {len(ids)} never arrived ({len(in_redis)} still in Redis: "
            f"{sorted(missing)}); logs:\n{logs}"
        ) from None


def max_per_second(timestamps_ms: list[int]) -> int:
    """The most requests in any 1-second window (sliding, not aligned to seconds)."""
    stamps = sorted(timestamps_ms)
    best = start = 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] >= 1000:
            start += 1
        best = max(best, end - start + 1)
    return best


def check_delivery(standin: DevServer, expected: dict[str, list[str]]) -> None:
    """Every eventId exactly once, and each session's in order of its sequence."""
    events = standin.events(eventName="page_view")
    counts = collections.Counter(e["eventId"] for e in events)
    wanted = {i for ids in expected.values() for i in ids}
    lost = wanted - set(counts)
    duplicated = {i: n for i, n in counts.items() if n > 1}
    assert not lost and not duplicated, f"lost {len(lost)}, duplicated {len(duplicated)}"
    for session, ids in expected.items():
        arrived = [e["eventId"] for e in events if e["sessionId"] == session]
        assert arrived == ids, f"session {session} out of order"


def test_two_hosts_share_one_budget_one_outbox_and_keep_order(
    standin: DevServer, redis_url: str
) -> None:
    env = env_for(standin, redis_url)
    sessions = [f"s{n}" for n in range(24)]
    rounds = 15
    expected: dict[str, list[str]] = {s: [] for s in sessions}
    r: Any = redis.Redis.from_url(redis_url)
    with contextlib.ExitStack() as stack:
        hosts = [
            stack.enter_context(gunicorn(WSGI_APP, *GUNICORN_ARGS, env=env)),
            stack.enter_context(gunicorn(WSGI_APP, *GUNICORN_ARGS, env=env)),
            stack.enter_context(uvicorn(ASGI_APP, "--workers", "2", env=env)),
        ]
        clients = [stack.enter_context(httpx.Client(timeout=30)) for _ in range(8)]
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(8))
        statuses: list[int] = []
        for seq in range(rounds):
            batch = []
            for n, session in enumerate(sessions):
                event_id = str(uuid.uuid4())
                expected[session].append(event_id)
                host = hosts[(n + seq) % len(hosts)]
                batch.append((clients[n % len(clients)], host, event_id, session, seq))
            statuses += pool.map(lambda a: get(*a), batch)
            round_ids = {b[2] for b in batch}
            standin.wait_for(lambda ids=round_ids: ids <= stored_ids(r, standin), 30)  # type: ignore[misc]
        wait_delivered(standin, {i for ids in expected.values() for i in ids}, hosts, 60)
        logs = "".join(h.log() for h in hosts)
    r.close()
    assert statuses == [200] * len(sessions) * rounds
    requests = [q for q in standin.requests() if q["path"] == "/v1/events/custom"]
    peak = max_per_second([q["ts"] for q in requests])
    statuses_px = collections.Counter(q["status"] for q in requests)
    print(f"peak {peak} requests in a 1 s window (budget {BUDGET:g}/s); statuses {statuses_px}")
    assert statuses_px[429] == 0, statuses_px
    # The limiter grants at most rate + burst (a tenth of a second) in any second. The
    # stand-in stamps a request when it answers, on the machine every process of this
    # test shares, so a stall can squeeze up to a quarter second more into a window.
    # With a limiter per process instead, this test measures about 140.
    assert peak <= BUDGET * 1.1 * 1.25, f"{peak} requests in one second"
    check_delivery(standin, expected)
    assert "Traceback" not in logs, logs


def lease_holders(r: Any, prefix: str) -> dict[int, int]:
    """shard -> pid of the process holding its lease."""
    holders = {}
    for key in r.scan_iter(f"{prefix}:lease:*"):
        owner = r.get(key)
        if owner:
            holders[int(key.rsplit(b":", 1)[1])] = int(owner.split(b"/")[1])
    return holders


def test_kill_9_of_a_holder_hands_its_claimed_items_to_another_worker(
    standin: DevServer, redis_url: str
) -> None:
    env = env_for(standin, redis_url, PX_REQUEST_TIMEOUT="1")  # a 2 s claim timeout
    prefix = key_prefix(standin.api_key)
    r: Any = redis.Redis.from_url(redis_url)
    standin.faults(fail_next=1_000_000, status=503)  # nothing is accepted: items stay claimed
    sessions = [f"k{n}" for n in range(12)]
    ids = {s: [str(uuid.uuid4()) for _ in range(3)] for s in sessions}
    with gunicorn(WSGI_APP, *GUNICORN_ARGS[:3], "--workers", "3", env=env) as server, httpx.Client(
        timeout=30
    ) as client:
        for seq in range(3):
            for session in sessions:
                assert get(client, server, ids[session][seq], session, seq) == 200
        every = {i for v in ids.values() for i in v}
        # The promise covers what is in Redis: a kill -9 within milliseconds of a capture
        # loses what the writer had not stored yet.
        standin.wait_for(lambda: every <= stored_ids(r, standin), 20)

        def victim_with_claims() -> tuple[int, set[str]] | None:
            for stream in r.scan_iter(f"{prefix}:outbox:*"):
                for entry in r.xpending_range(stream, "px", "-", "+", 100):
                    pid = int(entry["consumer"].split(b"/")[1])
                    if pid != server.process.pid:
                        return pid, claimed_by(r, prefix, entry["consumer"])
            return None

        victim = standin.wait_for(victim_with_claims, 20)
        assert victim is not None
        pid, claimed = victim
        assert claimed
        os.kill(pid, signal.SIGKILL)
        standin.faults()  # PX is healthy again; only the dead worker's claims are stuck
        wait_delivered(standin, every, [server], 30)
        assert pid not in lease_holders(r, prefix).values()
    r.close()
    received = collections.Counter(e["eventId"] for e in standin.events())
    assert claimed <= set(received)  # the dead worker's items, sent by another
    duplicates = sum(n - 1 for n in received.values() if n > 1)
    print(f"kill -9: {len(claimed)} claimed items recovered; {duplicates} duplicates")


def claimed_by(r: Any, prefix: str, consumer: bytes) -> set[str]:
    out = set()
    for stream in r.scan_iter(f"{prefix}:outbox:*"):
        for entry in r.xpending_range(stream, "px", "-", "+", 1000, consumername=consumer):
            for _, fields in r.xrange(stream, entry["message_id"], entry["message_id"]):
                out.add(fields[b"d"].split(b'"eventId":"', 1)[1].split(b'"', 1)[0].decode())
    return out


def steady_load_through(
    server: Server, during: Any, count: int = 120
) -> tuple[list[int], list[str]]:
    """``count`` sequential page views; ``during()`` runs in between (at a third)."""
    statuses, sent = [], []
    with httpx.Client(timeout=30) as client:
        for n in range(count):
            if n == count // 3:
                during()
            event_id = str(uuid.uuid4())
            sent.append(event_id)
            statuses.append(get(client, server, event_id, f"r{n % 6}", n))
    return statuses, sent


def test_a_redis_restart_loses_nothing_and_pages_keep_answering(
    standin: DevServer, redis_url: str, redis_server: RedisServer
) -> None:
    env = env_for(standin, redis_url)
    with gunicorn(WSGI_APP, *GUNICORN_ARGS, env=env) as server:
        statuses, sent = steady_load_through(server, redis_server.restart)
        wait_delivered(standin, set(sent), [server], 30)
    assert statuses == [200] * len(sent)


def test_redis_down_keeps_items_locally_and_delivers_them_afterwards(
    standin: DevServer, redis_url: str, redis_server: RedisServer
) -> None:
    env = env_for(standin, redis_url)
    with gunicorn(WSGI_APP, *GUNICORN_ARGS, env=env) as server:
        sent_before: list[str] = []

        def outage() -> None:
            redis_server.stop()
            with httpx.Client(timeout=30) as client:
                # Redis is down for every one of these page views: 60 requests take
                # several seconds, enough for every worker to notice and spill.
                for n in range(60):
                    event_id = str(uuid.uuid4())
                    sent_before.append(event_id)
                    assert get(client, server, event_id, f"d{n % 6}", n) == 200
            assert {e["eventId"] for e in standin.events()}.isdisjoint(sent_before)
            redis_server.start()

        statuses, sent = steady_load_through(server, outage, count=30)
        r: Any = redis.Redis.from_url(redis_url)
        try:
            wait_delivered(standin, set(sent) | set(sent_before), [server], 30, r)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nduring the outage: {sorted(sent_before)}") from None
        r.close()
        log = server.log()
    assert statuses == [200] * len(sent)
    assert "Redis unreachable" in log and "kept in the local outbox" in log
    assert "Redis is back; moved" in log

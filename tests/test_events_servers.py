"""Events under real servers: gunicorn --preload with 4 workers, uvicorn, and kill -9.

Every page view the middleware accepted must reach the PX stand-in exactly once,
whichever worker served it, across a graceful shutdown, and across a crash when an
outbox is configured.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from px_middleware.config import SHUTDOWN_TIMEOUT
from tests.support.devserver import DevServer
from tests.support.servers import Server, gunicorn, uvicorn

BROWSER = {"user-agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0 Safari/537.36"}
KEY = "AP-SERVERS00001-2"


def px_env(devserver: DevServer, **extra: str) -> dict[str, str]:
    return {
        "PX_PRODUCT_KEY": KEY,
        "PX_API_KEY": devserver.api_key,
        "PX_API_URL": devserver.api_url,
        "PX_HMAC_SECRET": "hmac-secret",
        **extra,
    }


def visit(base_url: str, count: int) -> None:
    """``count`` page loads, each by a new visitor (no cookie jar)."""
    for i in range(count):
        response = httpx.get(f"{base_url}/?u=user{i}", headers=BROWSER, timeout=10)
        assert response.status_code == 200 and b'"identify"' in response.content


def page_views(devserver: DevServer, at_least: int, timeout: float = 30) -> list[dict[str, Any]]:
    def enough() -> list[dict[str, Any]]:
        views = devserver.events(eventName="page_view")
        return views if len(views) >= at_least else []

    return devserver.wait_for(enough, timeout=timeout)


def assert_page_views_arrived(devserver: DevServer, count: int) -> None:
    views = page_views(devserver, count)
    assert sorted(v["identifyId"] for v in views) == sorted(f"user{i}" for i in range(count))
    assert len({v["eventId"] for v in views}) == count  # exactly once each


def test_gunicorn_preload_four_workers_lose_no_page_view(devserver: DevServer) -> None:
    env = px_env(devserver)
    with gunicorn(
        "tests.support.tracked_apps:wsgi",
        "--preload",
        "--workers",
        "4",
        "-c",
        "python:tests.support.tracked_apps",
        env=env,
    ) as server:
        visit(server.url, 80)
    # The server is stopped (SIGTERM): each worker delivered before exiting.
    assert_page_views_arrived(devserver, 80)
    starts = devserver.events(eventName="session_start")
    assert len(starts) == 80


def test_uvicorn_flushes_on_lifespan_shutdown(devserver: DevServer) -> None:
    with uvicorn("tests.support.tracked_apps:asgi", env=px_env(devserver)) as server:
        visit(server.url, 40)
    assert_page_views_arrived(devserver, 40)


def test_kill_9_with_an_outbox_loses_nothing(devserver: DevServer, tmp_path: Path) -> None:
    outbox = tmp_path / "outbox.sqlite3"
    env = px_env(devserver, PX_OUTBOX_PATH=str(outbox))
    devserver.stop()  # PX is down: everything waits in the outbox
    with gunicorn("tests.support.tracked_apps:wsgi", env=env) as server:
        visit(server.url, 30)

        def stored() -> int:
            if not outbox.exists():
                return 0
            with sqlite3.connect(outbox) as db:
                (count,) = db.execute("SELECT COUNT(*) FROM px_outbox").fetchone()
            return int(count)

        # session_start + page_view + user upsert per visitor, all written durably.
        devserver.wait_for(lambda: stored() >= 90, timeout=30)
        os.killpg(server.process.pid, signal.SIGKILL)  # no goodbye, no flush
        server.process.wait()
    devserver.start()
    with gunicorn("tests.support.tracked_apps:wsgi", env=env):
        # No request: opening the outbox starts the drain of what is left.
        views = page_views(devserver, 30, timeout=60)
    identified = sorted(v["identifyId"] for v in views if v["userType"] == "USER")
    assert identified == sorted(f"user{i}" for i in range(30))
    assert len({v["eventId"] for v in views}) == len(views) == 30


# -- issue 12: order, latest attributes, shutdown and drain across worker processes ---------------
def _seq(event: dict[str, Any]) -> int:
    return int(parse_qs(urlsplit(event["url"]).query)["n"][0])


def _first_arrivals(devserver: DevServer) -> list[dict[str, Any]]:
    """Every event in arrival order, a resent duplicate counted at its first arrival."""
    seen: set[str] = set()
    events = []
    for e in devserver.events():
        if e["eventId"] not in seen:
            seen.add(e["eventId"])
            events.append(e)
    return events


def _browse(base_url: str, sessions: int, pages: int, **params: str) -> None:
    """``sessions`` visitors in parallel, each with its cookie jar, ``pages`` pages each."""

    def one(s: int) -> None:
        with httpx.Client(headers=BROWSER, timeout=10) as visitor:
            for n in range(pages):
                query = {"u": f"user{s}", "n": str(n), **params}
                assert visitor.get(f"{base_url}/", params=query).status_code == 200

    with concurrent.futures.ThreadPoolExecutor(sessions) as pool:
        list(pool.map(one, range(sessions)))


def _stop_in_time(server: Server) -> float:
    """SIGTERM the server's process group; seconds until it exited."""
    started = time.monotonic()
    os.killpg(server.process.pid, signal.SIGTERM)
    server.process.wait(timeout=30)
    return time.monotonic() - started


SERVERS = {
    "gunicorn-w4-preload": lambda env: gunicorn(
        "tests.support.tracked_apps:wsgi",
        "--preload",
        "--workers",
        "4",
        "-c",
        "python:tests.support.tracked_apps",
        env=env,
    ),
    "uvicorn-workers-2": lambda env: uvicorn(
        "tests.support.tracked_apps:asgi", "--workers", "2", env=env
    ),
}


@pytest.mark.parametrize("serve", list(SERVERS.values()), ids=list(SERVERS))
def test_per_session_order_through_an_outage_then_a_quick_sigterm(
    devserver: DevServer, tmp_path: Path, serve: Callable[[dict[str, str]], Any]
) -> None:
    env = px_env(devserver, PX_OUTBOX_PATH=str(tmp_path / "outbox.sqlite3"))
    sessions, pages = 6, 8
    with serve(env) as server:
        devserver.faults(fail_next=24, status=503)  # PX is down for the first 24 requests
        _browse(server.url, sessions, pages)
        try:
            devserver.wait_for(
                lambda: len(_first_arrivals(devserver)) >= sessions * (pages + 1), timeout=120
            )
        except AssertionError:
            with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
                rows = db.execute("SELECT * FROM px_outbox").fetchall()
            raise AssertionError(
                f"{len(_first_arrivals(devserver))} arrived; outbox {rows}; log {server.log()}"
            ) from None
        # Everything is delivered: shutting down has nothing to wait for.
        assert _stop_in_time(server) < SHUTDOWN_TIMEOUT
    events = _first_arrivals(devserver)
    assert len(events) == sessions * (pages + 1)  # no more arrived after the stop
    failed = [r for r in devserver.requests() if r.get("status") == 503]
    assert failed, "the outage was not seen"
    for s in range(sessions):
        mine = [e for e in events if e["identifyId"] == f"user{s}"]
        assert mine[0]["eventName"] == "session_start", mine[0]
        assert [_seq(e) for e in mine[1:]] == list(range(pages)), f"user{s}"
        assert len({e["sessionId"] for e in mine}) == 1


def test_rapid_attribute_changes_end_with_the_latest_for_every_user(
    devserver: DevServer, tmp_path: Path
) -> None:
    env = px_env(devserver, PX_OUTBOX_PATH=str(tmp_path / "outbox.sqlite3"))
    users, changes = 4, 8
    with SERVERS["gunicorn-w4-preload"](env) as server:
        devserver.faults(latency_ms=150)  # slow PX: upserts overlap in flight

        def change(u: int) -> None:
            # No cookie jar: each request may go to another worker, as after a re-login.
            for n in range(changes):
                r = httpx.get(
                    f"{server.url}/",
                    params={"u": f"user{u}", "role": f"r{n}"},
                    headers=BROWSER,
                    timeout=10,
                )
                assert r.status_code == 200

        with concurrent.futures.ThreadPoolExecutor(users) as pool:
            list(pool.map(change, range(users)))
        try:
            devserver.wait_for(
                lambda: (
                    all(u.get("role") == f"r{changes - 1}" for u in devserver.users())
                    and len(devserver.users()) == users
                ),
                timeout=60,
            )
        except AssertionError:
            with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
                rows = db.execute("SELECT id, route, created, owner, lease_until, retry_at,"
                                  " attempts, last_error FROM px_outbox").fetchall()
            roles = {u["identifyId"]: u.get("role") for u in devserver.users()}
            raise AssertionError(f"roles {roles}; outbox {rows}; log {server.log()}") from None
        devserver.faults()
    # Stopped: nothing still in flight can overwrite the latest any more.
    assert {u["identifyId"]: u["role"] for u in devserver.users()} == {
        f"user{u}": f"r{changes - 1}" for u in range(users)
    }


def test_shutdown_during_an_outage_logs_what_it_could_not_send(devserver: DevServer) -> None:
    env = px_env(devserver)  # memory only: what is not sent at exit is lost, and said so
    with SERVERS["gunicorn-w4-preload"](env) as server:
        devserver.faults(fail_next=100_000, status=503)
        visit(server.url, 8)
        devserver.wait_for(lambda: len(devserver.requests()) >= 4, timeout=30)
        assert _stop_in_time(server) < SHUTDOWN_TIMEOUT + 5  # gunicorn's own stop, too
        log = server.log()
    lost = [int(m) for m in re.findall(r"dropped \(shutdown\): (\d+)", log)]
    assert sum(lost) >= 8, log  # every page view at least, counted by the workers
    assert "PX API 503" in log

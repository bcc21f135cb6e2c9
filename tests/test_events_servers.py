"""Events under real servers: gunicorn --preload with 4 workers, uvicorn, and kill -9.

Every page view the middleware accepted must reach the PX stand-in exactly once,
whichever worker served it, across a graceful shutdown, and across a crash when an
outbox is configured.
"""

from __future__ import annotations

import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import httpx

from tests.support.devserver import DevServer
from tests.support.servers import gunicorn, uvicorn

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
        "--preload", "--workers", "4", "-c", "python:tests.support.tracked_apps",
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
    with gunicorn("tests.support.tracked_apps:wsgi", env=env) as server:
        # Any request wakes the new process's sender, which resends what is left.
        httpx.get(f"{server.url}/", headers=BROWSER, timeout=10)
        views = page_views(devserver, 31, timeout=60)
    identified = sorted(v["identifyId"] for v in views if v["userType"] == "USER")
    assert identified == sorted(f"user{i}" for i in range(30))
    assert len({v["eventId"] for v in views}) == len(views) == 31

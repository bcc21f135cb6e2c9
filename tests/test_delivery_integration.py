"""Delivery end to end against the PX devserver: outage, restart after kill -9, fork.

The devserver runs as a separate process (tests/support/devserver.py), so "PX is
down" is a stopped process and "back up" is the same port serving again.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from px_middleware.config import PXConfig
from px_middleware.delivery import Delivery, SQLiteOutbox
from tests.support.devserver import DevServer, devserver  # noqa: F401
from tests.test_delivery import FAST, PRODUCT_KEY, event, seq_by_session

REPO = Path(__file__).resolve().parents[1]


def config_for(server: DevServer, **overrides: Any) -> PXConfig:
    return PXConfig(
        product_key=PRODUCT_KEY, api_key=server.api_key, api_url=server.api_url, **overrides
    )


@pytest.fixture
def delivery_to(devserver: DevServer) -> Iterator[list[Delivery]]:  # noqa: F811
    created: list[Delivery] = []
    yield created
    for delivery in created:
        delivery.shutdown(1.0)


def exactly_once(events: list[dict[str, Any]], expected_ids: list[str]) -> None:
    got = [e["eventId"] for e in events]
    assert len(got) == len(set(got)), "duplicates"
    assert sorted(got) == sorted(expected_ids)


def test_outage_then_recovery_delivers_everything_once_in_order(
    devserver: DevServer,  # noqa: F811
    delivery_to: list[Delivery],
) -> None:
    delivery = Delivery(config_for(devserver), **FAST)
    delivery_to.append(delivery)
    devserver.stop()
    bodies = [event(n, session=f"s{n % 6}") for n in range(300)]
    for body in bodies:
        assert delivery.capture("event", body)
    devserver.wait_for(lambda: delivery.counters()["retried"] >= 3)
    devserver.start()  # same port, same database
    assert delivery.flush(30.0)
    events = devserver.events()
    exactly_once(events, [b["eventId"] for b in bodies])
    for session, seqs in seq_by_session(events).items():
        assert seqs == sorted(seqs), session
    assert delivery.counters()["sent"] == 300


def test_retry_after_from_devserver_is_honoured(
    devserver: DevServer,  # noqa: F811
    delivery_to: list[Delivery],
) -> None:
    devserver.faults(fail_next=1, status=429, retry_after=1)
    delivery = Delivery(config_for(devserver))
    delivery_to.append(delivery)
    body = event()
    delivery.capture("event", body)
    assert delivery.flush(15.0)
    calls = [r for r in devserver.requests() if r["path"] == "/v1/events/custom"]
    assert [c["status"] for c in calls] == [429, 201]
    assert calls[1]["ts"] - calls[0]["ts"] >= 1000 - 1  # epoch ms; 1 ms for rounding
    exactly_once(devserver.events(), [body["eventId"]])


CHILD = textwrap.dedent(
    """
    import json, sys, time
    from px_middleware.config import PXConfig
    from px_middleware.delivery import Delivery, SQLiteOutbox

    api_url, outbox, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    config = PXConfig(product_key="AP-TESTTESTTEST-2", api_key="test-api-key",
                      api_url=api_url, outbox_path=outbox)
    delivery = Delivery(config, retry_base=0.02, retry_cap=0.2)
    ids = []
    for n in range(count):
        body = json.loads(sys.stdin.readline())
        ids.append(body["eventId"])
        delivery.capture("event", body)
    delivery.flush(0.3)  # PX is down: not acknowledged, but written to the outbox
    deadline = time.monotonic() + 20
    while delivery.counters()["outbox_size"] < count and time.monotonic() < deadline:
        time.sleep(0.01)
    print("STORED", delivery.counters()["outbox_size"], flush=True)
    time.sleep(600)  # until kill -9
    """
)


def test_restart_after_kill_9_resends_from_the_outbox_once(
    devserver: DevServer,  # noqa: F811
    delivery_to: list[Delivery],
    tmp_path: Path,
) -> None:
    outbox = str(tmp_path / "outbox.sqlite3")
    api_url = devserver.api_url
    devserver.stop()
    bodies = [event(n, session=f"s{n % 3}") for n in range(120)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, api_url, outbox, str(len(bodies))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("".join(json.dumps(b) + "\n" for b in bodies))
        child.stdin.flush()
        assert child.stdout.readline().split() == ["STORED", str(len(bodies))]
    finally:
        child.kill()  # SIGKILL: no atexit, no shutdown, leases left behind
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    devserver.start()
    restarted = Delivery(config_for(devserver, outbox_path=outbox), **FAST)
    delivery_to.append(restarted)
    restarted.start()  # nothing new captured: it must still send what the file holds
    devserver.wait_for(lambda: len(devserver.events()) >= len(bodies), timeout=20)
    devserver.wait_for(lambda: restarted.counters()["outbox_size"] == 0)
    events = devserver.events()
    exactly_once(events, [b["eventId"] for b in bodies])
    for session, seqs in seq_by_session(events).items():
        assert seqs == sorted(seqs), session


@pytest.mark.parametrize("shared_outbox", [False, True], ids=["memory", "sqlite"])
def test_gunicorn_preload_workers_deliver_every_event(
    devserver: DevServer,  # noqa: F811
    tmp_path: Path,
    shared_outbox: bool,
) -> None:
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        PX_PRODUCT_KEY=PRODUCT_KEY,
        PX_API_KEY=devserver.api_key,
        PX_API_URL=devserver.api_url,
        # Lists: 200 events in 8 sessions, one sender per session, must all go out
        # within the shutdown deadline also on a loaded CI machine.
        PX_BATCH_EVENTS="true",
    )
    if shared_outbox:  # four workers, one SQLite file: leases keep their sends apart
        env["PX_OUTBOX_PATH"] = str(tmp_path / "outbox.sqlite3")
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    argv = [
        gunicorn, "--preload", "-w", "4", "-b", "127.0.0.1:0",
        "-c", "python:tests.delivery_app", "tests.delivery_app:app",
    ]  # fmt: skip
    server = subprocess.Popen(
        argv,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        port = None
        for line in server.stderr:  # "Listening at: http://127.0.0.1:PORT (pid)"
            if "Listening at:" in line:
                port = int(line.split("Listening at:")[1].split()[0].rsplit(":", 1)[1])
                break
        assert port is not None, "gunicorn did not start"
        ids = [str(uuid.uuid4()) for _ in range(200)]

        def hit(n: int) -> str:
            params = {"id": ids[n], "s": f"s{n % 8}", "seq": str(n)}
            for _ in range(50):  # workers may still be booting
                try:
                    r = http.get(f"http://127.0.0.1:{port}/", params=params)
                    r.raise_for_status()
                    return r.text
                except httpx.TransportError:
                    time.sleep(0.05)
            raise AssertionError("gunicorn did not answer")

        # One client: httpx.get() would build a new client (and SSL context) per call.
        with httpx.Client(timeout=10) as http, concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(hit, range(len(ids))))
        assert all(a.endswith("True") for a in answers)
        assert len({a.split()[0] for a in answers}) > 1  # several workers served
        server.send_signal(signal.SIGTERM)  # workers run worker_exit, then exit
        server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    if shared_outbox:
        # What the 5 s shutdown could not send on a loaded machine stays in the outbox
        # (that is the promise, not delivery within the deadline): the next process
        # that opens it drains it, with no traffic.
        left = SQLiteOutbox(env["PX_OUTBOX_PATH"]).size()
        assert len({e["eventId"] for e in devserver.events()}) + left == len(ids)
        if left:
            restarted = Delivery(
                config_for(devserver, outbox_path=env["PX_OUTBOX_PATH"], batch_events=True)
            )
            try:
                devserver.wait_for(lambda: len(devserver.events()) >= len(ids), timeout=60)
            finally:
                restarted.shutdown(5.0)
        assert SQLiteOutbox(env["PX_OUTBOX_PATH"]).size() == 0
    exactly_once(devserver.events(), ids)

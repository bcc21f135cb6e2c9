"""Delivery through real worker processes, to the real stand-in.

Run with ``.venv/bin/python -m benchmarks.bench_workers``. Prints, never asserts.

1. Events/s through ``gunicorn -w 4 --preload`` to the stand-in (``devserver``):
   from the first request until the stand-in has stored every event, one event per
   request body (the default) and with ``batch_events`` (lists).
2. RSS of the four workers before and after 100k events (lists; memory must be flat).
3. Capture -> durable with a SQLite outbox: the time ``flush()`` takes to see one
   captured event on disk (PX unreachable, so nothing is sent meanwhile), p50/p99 of
   many samples, and the first capture of a cold process (opening the outbox).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from px_middleware.config import PXConfig
from px_middleware.delivery import Delivery

REPO = Path(__file__).resolve().parents[1]
KEY = "AP-BENCHWORKER1-2"
API_KEY = "bench-api-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")


def stored_events(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=10) as conn:
            (count,) = conn.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(count)
    except sqlite3.Error:
        return 0


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


def workers_of(master: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True, text=True
    ).stdout
    return [int(p) for p in out.split()]


def through_workers(events: int, per_request: int, lists: bool, measure_rss: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "px.sqlite3"
        px_port, app_port = free_port(), free_port()
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        devserver = subprocess.Popen(
            [sys.executable, "-m", "px_middleware", "devserver", "--port", str(px_port),
             "--db", str(db), "--api-key", API_KEY, "--rate-limit", "1000000"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        env.update(
            PX_PRODUCT_KEY=KEY,
            PX_API_KEY=API_KEY,
            PX_API_URL=f"http://127.0.0.1:{px_port}/v1",
            PX_RATE_LIMIT="100000",
            PX_MAX_QUEUE_EVENTS="200000",
            PX_MAX_QUEUE_BYTES="268435456",
            PX_BATCH_EVENTS="true" if lists else "false",
        )
        gunicorn = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--preload", "-w", "4", "-b",
             f"127.0.0.1:{app_port}", "--log-level", "warning",
             "-c", "python:tests.delivery_app", "tests.delivery_app:app"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_port(px_port, devserver)
            wait_port(app_port, gunicorn)
            with httpx.Client(timeout=30) as http:
                url = f"http://127.0.0.1:{app_port}/"
                warm = 1000
                for k in range(warm // per_request or 1):  # warm-up: threads, connections
                    http.get(url, params={"id": uuid.uuid4().hex, "n": per_request, "s": f"w{k}"})
                while stored_events(db) < warm:
                    time.sleep(0.05)
                before = rss_kib(workers_of(gunicorn.pid))
                rss = []
                started = time.perf_counter()
                sent = 0
                for _half in (1, 2):  # RSS after each half: flat means no growth per event
                    for k in range(events // per_request // 2):
                        params: dict[str, str | int] = {
                            "id": uuid.uuid4().hex, "n": per_request, "s": f"s{k % 64}"
                        }  # fmt: skip
                        http.get(url, params=params)
                    sent += events // 2
                    while stored_events(db) < warm + sent:
                        time.sleep(0.05)
                    rss.append(rss_kib(workers_of(gunicorn.pid)))
                elapsed = time.perf_counter() - started
        finally:
            gunicorn.terminate()
            gunicorn.wait(30)
            devserver.terminate()
            devserver.wait(30)
    shape = "lists (batch_events)" if lists else "one event per request"
    print(f"  {shape:24} {events:>7} events in {elapsed:6.1f} s: {events / elapsed:8.0f} events/s")
    if measure_rss:
        first, second = rss
        print(
            f"  RSS of 4 workers: {before / 1024:.1f} MiB before, {first / 1024:.1f} MiB after "
            f"{events // 2}, {second / 1024:.1f} MiB after {events} events "
            f"(second half: {(second - first) / 1024:+.1f} MiB)"
        )


def capture_to_durable(samples: int = 300) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = PXConfig(
            product_key=KEY,
            api_key=API_KEY,
            api_url=f"http://127.0.0.1:{free_port()}/v1",  # nobody listens: nothing is sent
            outbox_path=str(Path(tmp) / "outbox.sqlite3"),
        )
        body = {"eventName": "bench", "identifyId": "u", "propertyKey": KEY, "date": 0}
        started = time.perf_counter()
        delivery = Delivery(config)  # a cold process: the outbox is opened here
        delivery.capture("event", {**body, "eventId": uuid.uuid4().hex, "sessionId": "cold"})
        delivery.flush(10.0)
        cold = time.perf_counter() - started
        times = []
        for n in range(samples):
            started = time.perf_counter()
            delivery.capture("event", {**body, "eventId": uuid.uuid4().hex, "sessionId": f"s{n}"})
            delivery.flush(10.0)
            times.append(time.perf_counter() - started)
        delivery.shutdown(0.5)
    q = statistics.quantiles(times, n=100)
    print(
        f"  capture -> durable (SQLite outbox): p50 {q[49] * 1000:.1f} ms, "
        f"p99 {q[98] * 1000:.1f} ms over {samples}; cold first capture {cold * 1000:.1f} ms"
    )


def main() -> None:
    print("Through gunicorn -w 4 --preload to the stand-in (devserver, SQLite store):")
    through_workers(4_000, per_request=20, lists=False, measure_rss=False)
    through_workers(100_000, per_request=500, lists=True, measure_rss=True)
    capture_to_durable()


if __name__ == "__main__":
    main()

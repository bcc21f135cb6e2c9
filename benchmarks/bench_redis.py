"""Many workers through Redis: throughput, and the shared budget held at the stand-in.

Run with ``.venv/bin/python -m benchmarks.bench_redis``. Prints, never asserts.

1. Throughput: page views per second from the first request until the last event is
   at the stand-in, through ``gunicorn -w 8`` (each request captures one event), with
   the outbox in Redis and, side by side in the same run, in one SQLite file; the
   budget is raised out of the way for this part.
2. Budget: the same 8 workers with ``PX_RATE_LIMIT`` at the default 150/s, against a
   stand-in that allows PX's 200/s: the most requests the stand-in saw in any 1-second
   window, against the configured budget, and how many 429s it answered.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx

from tests.support.devserver import DevServer
from tests.support.redis_server import RedisServer
from tests.support.servers import Server, gunicorn

PRODUCT_KEY = "AP-BENCHREDIS1-2"
WORKERS = 8
THREADS = 16
THROUGHPUT_EVENTS = 3000
BUDGET_EVENTS = 1500
BUDGET = 150.0
APP = "tests.support.redis_apps:wsgi"


@contextlib.contextmanager
def workers(standin: DevServer, **env: str) -> Iterator[Server]:
    environment = {
        "PX_PRODUCT_KEY": PRODUCT_KEY,
        "PX_API_KEY": standin.api_key,
        "PX_API_URL": standin.api_url,
        **env,
    }
    args = ("-c", "python:tests.support.redis_apps", "--preload", "--workers", str(WORKERS))
    with gunicorn(APP, *args, env=environment) as server:
        yield server


def drive(server: Server, standin: DevServer, count: int) -> float:
    """Send ``count`` page views from ``THREADS`` threads; seconds until all arrived."""
    ids = [str(uuid.uuid4()) for _ in range(count)]
    local = threading.local()

    def one(n: int) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=30)
        params: dict[str, str | int] = {"id": ids[n], "s": f"b{n % 200}", "seq": n}
        client.get(f"{server.url}/", params=params).raise_for_status()

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, range(count)))
    wanted = set(ids)
    standin.wait_for(lambda: wanted <= {e["eventId"] for e in standin.events()}, 300)
    return time.perf_counter() - start


def max_per_second(stamps_ms: list[int]) -> int:
    stamps = sorted(stamps_ms)
    best = start = 0
    for end, stamp in enumerate(stamps):
        while stamp - stamps[start] >= 1000:
            start += 1
        best = max(best, end - start + 1)
    return best


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        redis_server = RedisServer(folder)
        redis_server.start()
        try:
            with DevServer(folder / "px.sqlite3", rate_limit=1_000_000) as standin:
                fast = {"PX_RATE_LIMIT": "100000", "PX_CONCURRENCY": "4"}
                results = {}
                for name, env in (
                    ("redis", {"PX_REDIS_URL": redis_server.url}),
                    ("sqlite", {"PX_OUTBOX_PATH": str(folder / "outbox.sqlite3")}),
                ):
                    standin.reset()
                    with workers(standin, **fast, **env) as server:
                        drive(server, standin, 200)  # warm: imports, connections, leases
                        standin.reset()
                        seconds = drive(server, standin, THROUGHPUT_EVENTS)
                        results[name] = THROUGHPUT_EVENTS / seconds
                print(f"throughput, {WORKERS} workers, {THROUGHPUT_EVENTS} page views:")
                for name, rate in results.items():
                    print(f"  outbox {name:7s} {rate:8.0f} events/s")
                print(f"  redis / sqlite: {results['redis'] / results['sqlite']:.2f}x")
            with DevServer(folder / "px2.sqlite3", rate_limit=200) as standin:
                env = {"PX_REDIS_URL": redis_server.url, "PX_RATE_LIMIT": str(BUDGET)}
                with workers(standin, **env) as server:
                    seconds = drive(server, standin, BUDGET_EVENTS)
                requests = [q for q in standin.requests() if q["path"] == "/v1/events/custom"]
                peak = max_per_second([q["ts"] for q in requests])
                refused = sum(1 for q in requests if q["status"] == 429)
                print(f"budget {BUDGET:g}/s shared by {WORKERS} workers, stand-in at 200/s:")
                rate = BUDGET_EVENTS / seconds
                print(f"  {BUDGET_EVENTS} events in {seconds:.1f} s = {rate:.0f}/s")
                print(f"  max requests in any 1 s window: {peak} ({peak / BUDGET:.2f}x budget)")
                print(f"  429 answered: {refused}")
        finally:
            redis_server.stop()


if __name__ == "__main__":
    main()

"""Delivery benchmarks: capture cost against PostHog and Segment, and send throughput.

Run with ``.venv/bin/python -m benchmarks.bench_delivery``. Prints, never asserts.

1. Capture cost: microseconds per call on the request path, measured side by side in
   one run for ``Delivery.capture``, PostHog's ``capture()`` and Segment's ``track()``,
   each client pointed at a local sink so nothing leaves the machine. Each sample runs
   for about the same wall time (so every library's background sender is busy during
   it, competing for the GIL as it would in an app); rounds are interleaved and the
   median reported, so machine noise hits all of them alike.
2. Throughput: events per second one process delivers to a local server that answers
   at once, with the rate limiter raised (memory and SQLite outbox; one event per
   request, the default, and lists with ``batch_events``), until the server has all.

The peers are installed into the running environment if missing.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from px_middleware.config import PXConfig
from px_middleware.delivery import Delivery, TokenBucket

PRODUCT_KEY = "AP-BENCHBENCH01-2"
SAMPLE_SECONDS = 0.3
ROUNDS = 5
THROUGHPUT_EVENTS = 50_000
#: One request per event (the default body shape) is slower: fewer events.
SINGLE_EVENTS = 10_000


def ensure_peers() -> None:
    missing = [
        package
        for module, package in (("posthog", "posthog"), ("segment", "segment-analytics-python"))
        if importlib.util.find_spec(module) is None
    ]
    if missing:
        print(f"installing {' '.join(missing)} ...", flush=True)
        subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", *missing])


class Sink:
    """Answers every request at once (200, ``{}``) and counts events in PX bodies."""

    def __init__(self) -> None:
        self.events = 0
        self.requests = 0
        self.lock = threading.Lock()
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with sink.lock:
                    sink.requests += 1
                    sink.events += body.count(b'"eventId"')
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_PUT = do_POST

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self.lock:
            self.events = self.requests = 0

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- capture cost ---------------------------------------------------------------------------
Runner = Callable[[int], float]  # runs n calls, returns seconds spent in them


def px_runner(sink: Sink, *, build_body: bool) -> Runner:
    def run(n: int) -> float:
        config = PXConfig(
            product_key=PRODUCT_KEY,
            api_key="bench",
            api_url=sink.url + "/v1",
            max_queue_events=n + 10,
            max_queue_bytes=1 << 30,  # measure the call, not the overflow path
            rate_limit=10_000,
        )
        delivery = Delivery(config)
        body = {"eventName": "page_view", "identifyId": "u1", "propertyKey": PRODUCT_KEY}
        capture = delivery.capture
        try:
            if build_body:  # what the middleware pays: a fresh body with id and date
                start = time.perf_counter()
                for _ in range(n):
                    capture(
                        "event",
                        {
                            **body,
                            "eventId": str(uuid.uuid4()),
                            "date": int(time.time() * 1000),
                            "attributes": {"path": "/x"},
                        },
                    )
                return time.perf_counter() - start
            event = {**body, "eventId": "e", "date": 0, "attributes": {"path": "/x"}}
            start = time.perf_counter()
            for _ in range(n):
                capture("event", event)
            return time.perf_counter() - start
        finally:
            delivery.shutdown(10.0)

    return run


def posthog_runner(sink: Sink) -> Runner:
    from posthog import Posthog

    def run(n: int) -> float:
        client: Any = Posthog("phc_bench", host=sink.url, max_queue_size=n + 10)
        try:
            start = time.perf_counter()
            for _ in range(n):
                client.capture("page_view", distinct_id="u1", properties={"path": "/x"})
            return time.perf_counter() - start
        finally:
            client.shutdown()

    return run


def segment_runner(sink: Sink) -> Runner:
    from segment.analytics import Client

    def run(n: int) -> float:
        client: Any = Client("bench", host=sink.url, max_queue_size=n + 10)
        try:
            start = time.perf_counter()
            for _ in range(n):
                client.track("u1", "page_view", {"path": "/x"})
            return time.perf_counter() - start
        finally:
            client.flush()
            client.join()

    return run


def capture_cost(sink: Sink) -> None:
    runners: dict[str, Runner] = {
        "px_middleware capture()": px_runner(sink, build_body=False),
        "px_middleware body+capture()": px_runner(sink, build_body=True),
        "posthog capture()": posthog_runner(sink),
        "segment track()": segment_runner(sink),
    }
    calls: dict[str, int] = {}
    for name, run in runners.items():  # warm up, and size samples to SAMPLE_SECONDS
        n = 2000
        for _ in range(2):  # the first pass also pays for imports and thread start
            n = max(2000, int(SAMPLE_SECONDS / (run(n) / n)))
        calls[name] = n
    samples: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(ROUNDS):
        for name, run in runners.items():
            samples[name].append(run(calls[name]) / calls[name] * 1e6)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"\nCapture cost per call ({ROUNDS} interleaved rounds of ~{SAMPLE_SECONDS} s, median):")
    for name, value in medians.items():
        spread = f"{min(samples[name]):.2f}-{max(samples[name]):.2f}"
        print(f"  {name:30s} {value:8.2f} us  (range {spread}, {calls[name]} calls/round)")
    ours = medians["px_middleware capture()"]
    ours_built = medians["px_middleware body+capture()"]
    for peer in ("posthog capture()", "segment track()"):
        print(
            f"  {peer:30s} costs {medians[peer] / ours:6.1f}x our capture(), "
            f"{medians[peer] / ours_built:5.1f}x our body+capture()"
        )


# -- throughput -----------------------------------------------------------------------------
@contextlib.contextmanager
def temporary_outbox() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as directory:
        yield str(Path(directory) / "outbox.sqlite3")


def throughput(sink: Sink, outbox_path: str | None, *, lists: bool, events: int) -> None:
    config = PXConfig(
        product_key=PRODUCT_KEY,
        api_key="bench",
        api_url=sink.url + "/v1",
        max_queue_events=events + 10,
        outbox_path=outbox_path,
        batch_events=lists,
    )
    delivery = Delivery(config, limiter=TokenBucket(100_000))  # raised: PX's is ~200 req/s
    bodies = [
        {
            "eventName": "page_view",
            "identifyId": f"u{n % 50}",
            "propertyKey": PRODUCT_KEY,
            "eventId": str(uuid.uuid4()),
            "date": 1_700_000_000_000 + n,
            "sessionId": f"s{n % 50}",
            "attributes": {"path": f"/page/{n % 20}", "status": 200},
        }
        for n in range(events)
    ]
    sink.reset()
    start = time.perf_counter()
    for body in bodies:
        delivery.capture("event", body)
    deadline = time.monotonic() + 120.0
    # flush() means "durable" with an outbox: wait for the server to have them all.
    while sink.events < events and time.monotonic() < deadline:
        time.sleep(0.01)
    done = sink.events >= events
    elapsed = time.perf_counter() - start
    counts = delivery.counters()
    delivery.shutdown(10.0)
    label = ("SQLite" if outbox_path else "memory") + (", lists" if lists else ", single")
    print(
        f"  {label:16s} {events / elapsed:10,.0f} events/s "
        f"({events} events in {elapsed:.2f} s, {counts['requests']} requests, "
        f"{events / max(counts['requests'], 1):.0f} events/request, "
        f"received {sink.events}, all={done})"
    )


def main() -> None:
    ensure_peers()
    sink = Sink()
    try:
        capture_cost(sink)
        print("\nDelivery throughput, one process, local server answering at once:")
        for lists, events in ((False, SINGLE_EVENTS), (True, THROUGHPUT_EVENTS)):
            throughput(sink, None, lists=lists, events=events)
            with temporary_outbox() as path:
                throughput(sink, path, lists=lists, events=events)
    finally:
        sink.close()


if __name__ == "__main__":
    main()

"""Throughput under a real server, shared by ``bench_wsgi`` (gunicorn) and ``bench_asgi``
(uvicorn): load from ``wrk``, variants in alternating rounds, per-round ratios.

Three variants of one example page: ``bare`` (no middleware), ``floor`` (the 20-line
injector of ``bench_overhead`` where the middleware goes) and ``wrapped`` (ours). Each
round runs every variant once, in an order that rotates from round to round, so a
burst of load elsewhere hits all three of a round. The servers run on one CPU and
the load generator on the other when the machine has two, so they do not take turns
on one core and the kernel does not move them about.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import statistics
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator

_CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
SERVER_CPU, LOAD_CPU = (_CPUS[0], _CPUS[1]) if len(_CPUS) >= 2 else (None, None)


@contextlib.contextmanager
def servers_pinned() -> Iterator[None]:
    """Processes started inside run on ``SERVER_CPU`` (they inherit this affinity)."""
    if SERVER_CPU is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {SERVER_CPU})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def ensure_wrk() -> str | None:
    """``wrk``, installed from Debian when missing and running as root; else None."""
    wrk = shutil.which("wrk")
    if wrk is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk from Debian (apt-get install wrk) ...")
        install = ["apt-get", "install", "-y", "-q", "wrk"]
        if subprocess.run(install, capture_output=True).returncode:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            subprocess.run(install, capture_output=True)
        wrk = shutil.which("wrk")
    return wrk


def _on_load_cpu() -> None:
    if LOAD_CPU is not None:
        os.sched_setaffinity(0, {LOAD_CPU})


def wrk_rate(wrk: str, url: str, cookie: str, duration: float, connections: int) -> float:
    output = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{duration:g}s", "-H", f"Cookie: {cookie}", url],
        capture_output=True, text=True, check=True, preexec_fn=_on_load_cpu,
    ).stdout
    if "Non-2xx" in output or "Socket errors" in output:
        print("  wrk reported errors:\n" + output)
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    return float(match.group(1)) if match else 0.0


def threaded_rate(url: str, cookie: str, duration: float, connections: int) -> float:
    """Without wrk: ``connections`` threads, each GET after GET (a connection each,
    which gunicorn's sync worker wants anyway) until the deadline."""
    parts = urllib.parse.urlsplit(url)
    deadline = time.perf_counter() + duration
    counts = [0] * connections

    def worker(index: int) -> None:
        while time.perf_counter() < deadline:
            connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
            connection.request("GET", parts.path, headers={"Cookie": cookie})
            response = connection.getresponse()
            response.read()
            connection.close()
            if response.status == 200:
                counts[index] += 1

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - start)


def alternating_rounds(urls: dict[str, str], cookies: dict[str, str], rounds: int,
                       duration: float, connections: int) -> dict[str, list[float]]:
    """Requests per second of each variant's page, per round (after a warm-up)."""
    wrk = ensure_wrk()
    pinned = f"servers on CPU {SERVER_CPU}, load on CPU {LOAD_CPU}" if LOAD_CPU is not None \
        else "not pinned (one CPU)"
    print(f"load: {wrk or 'threaded http.client loop (no wrk)'}, {connections} connections, "
          f"{rounds} rounds x {duration:g} s per variant, order rotating; {pinned}")
    measure: Callable[[str, float], float] = (
        (lambda name, seconds: wrk_rate(wrk, urls[name], cookies[name], seconds, connections))
        if wrk else
        (lambda name, seconds: threaded_rate(urls[name], cookies[name], seconds, connections))
    )
    for name in urls:  # warm-up, not counted
        measure(name, 1)
    names = list(urls)
    results: dict[str, list[float]] = {name: [] for name in names}
    for n in range(rounds):
        order = names[n % len(names):] + names[:n % len(names)]
        for name in order if n % 2 == 0 else reversed(order):
            results[name].append(measure(name, duration))
        print(f"  round {n + 1}: " + ", ".join(f"{name} {results[name][-1]:8.1f}"
                                                for name in names) + " req/s")
    return results


def summary(results: dict[str, list[float]], target: float = 0.97) -> None:
    """Medians of the per-round ratios, with their spread."""
    def ratio(top: str, bottom: str) -> list[float]:
        return [t / b for t, b in zip(results[top], results[bottom], strict=True) if b]

    medians = ", ".join(f"{name} {statistics.median(values):.1f}"
                        for name, values in results.items())
    print(f"  median req/s: {medians}")
    for top, bottom in (("wrapped", "bare"), ("floor", "bare"), ("wrapped", "floor")):
        pairs = ratio(top, bottom)
        median = statistics.median(pairs)
        verdict = (f" (target >= {target}: {'met' if median >= target else 'missed'})"
                   if (top, bottom) == ("wrapped", "bare") else "")
        print(f"  {top}/{bottom}: median of {len(pairs)} rounds {median:.3f}, spread "
              f"{min(pairs):.3f}-{max(pairs):.3f}{verdict}; per round "
              + ", ".join(f"{r:.3f}" for r in pairs))

"""Bulk loader throughput and memory: generated users files against the local stand-in.

Runs ``python -m px_middleware load users FILE`` as a subprocess against a devserver
with the rate limit raised, for two file sizes, and prints rows/s and the loader's
peak RSS: flat memory means the file is streamed. Prints, never asserts.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.devserver import DevServer

SIZES = (5_000, 20_000)


def write_users(path: Path, count: int) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["identifyId", "email", "firstName", "signUpDate", "score",
                         "customAttributes.plan"])
        for i in range(count):
            writer.writerow([f"user-{i}", f"user{i}@acme.test", "Ada", "2024-03-01T09:30:00",
                             str(i % 100), "gold"])


def run(devserver: DevServer, path: Path) -> tuple[float, int]:
    """Seconds and peak RSS (KiB) of one loader run (a fresh child each time)."""
    env = {**os.environ, "PX_API_KEY": devserver.api_key, "PX_PRODUCT_KEY": "AP-BENCH0000001-2"}
    argv = [sys.executable, "-c",
            "import resource, sys; from px_middleware.tools.loader import main;"
            " code = main(sys.argv[1:]);"
            " print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr);"
            " sys.exit(code)",
            "users", str(path), "--api-url", devserver.api_url, "--rate", "100000"]
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=path.parent)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    return elapsed, int(result.stderr.strip().splitlines()[-1])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with DevServer(folder / "px.sqlite3", rate_limit=1_000_000) as devserver:
            for size in SIZES:
                path = folder / f"users-{size}.csv"
                write_users(path, size)
                devserver.reset()
                seconds, rss = run(devserver, path)
                print(f"{size:>7} rows (new users: PUT 404 + POST each): {size / seconds:7.0f} "
                      f"rows/s, {seconds:6.1f} s, loader peak RSS {rss / 1024:6.1f} MiB")
                seconds, rss = run(devserver, path)
                print(f"{size:>7} rows (existing users: one PUT each):   {size / seconds:7.0f} "
                      f"rows/s, {seconds:6.1f} s, loader peak RSS {rss / 1024:6.1f} MiB")
    print("(target >= 1,500 rows/s; the local stand-in is one uvicorn process with SQLite,"
          " so it is part of what is measured)")


if __name__ == "__main__":
    main()

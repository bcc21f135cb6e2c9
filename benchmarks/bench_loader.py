"""Bulk loader throughput and memory, side by side with a minimal reference loader.

Both loaders run as fresh subprocesses against the same instant-answer server (a tiny
asyncio HTTP/1.1 server in its own process that answers PUT 404, POST 201 and the
attribute metadata at once), so what is measured is the loader, not the stand-in's
SQLite. The reference is what anyone would write in twenty lines: httpx with
keep-alive, the same number of threads, PUT then POST on 404. Prints rows/s, the ratio
and peak RSS for two file sizes (flat RSS means the file is streamed), and the CPU
seconds each spent: on a shared machine the wall clock is noisy, so the two loaders run
alternately, several rounds on the small file, and the best round of each counts.
Never asserts.
"""

from __future__ import annotations

import asyncio
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Rows, and rounds of (ours, reference) for that size.
SIZES = ((3_000, 3), (30_000, 1))
THREADS = 4
PRODUCT_KEY = "AP-BENCH0000001-2"

REFERENCE = r"""
import csv, datetime as dt, json, resource, sys
from concurrent.futures import ThreadPoolExecutor
import httpx

path, base, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
limits = httpx.Limits(max_connections=threads, max_keepalive_connections=threads)
client = httpx.Client(base_url=base, limits=limits, headers={"X-APTRINSIC-API-KEY": "k"})
epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

def body(row):
    signed = dt.datetime.fromisoformat(row["signUpDate"]).replace(tzinfo=dt.timezone.utc)
    return {"identifyId": row["identifyId"], "email": row["email"],
            "firstName": row["firstName"], "score": int(row["score"]),
            "signUpDate": (signed - epoch) // dt.timedelta(milliseconds=1),
            "customAttributes": {"plan": row["customAttributes.plan"]},
            "propertyKeys": [sys.argv[4]]}

def upsert(row):
    data = json.dumps(body(row)).encode()
    headers = {"Content-Type": "application/json"}
    r = client.put("/users/" + row["identifyId"], content=data, headers=headers)
    if r.status_code == 404:
        r = client.post("/users", content=data, headers=headers)
    return r.status_code

with open(path, newline="") as f, ThreadPoolExecutor(threads) as pool:
    ok = sum(1 for status in pool.map(upsert, csv.DictReader(f)) if status < 300)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(ok, usage.ru_maxrss, usage.ru_utime + usage.ru_stime, file=sys.stderr)
"""

OURS = (
    "import resource, sys; from px_middleware.tools.loader import main;"
    " code = main(sys.argv[1:]);"
    " usage = resource.getrusage(resource.RUSAGE_SELF);"
    " print(0, usage.ru_maxrss, usage.ru_utime + usage.ru_stime, file=sys.stderr);"
    " sys.exit(code)"
)


# -- the instant-answer server ---------------------------------------------------------------

class _Instant(asyncio.Protocol):
    """HTTP/1.1 keep-alive, answers each request as soon as its body is in."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            self.buffer = self.buffer[end:]
            method, path = head.split(" ", 2)[:2]
            self.transport.write(_answer(method, path))


def _answer(method: str, path: str) -> bytes:
    if method == "GET":
        status, body = "200 OK", b"[]"
    elif method == "PUT":
        status, body = "404 Not Found", b'{"externalapierror":{"status":"NOT_FOUND"}}'
    else:
        status, body = "201 Created", b"{}"
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def serve() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Instant, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


# -- the measurement -------------------------------------------------------------------------

def write_users(path: Path, count: int) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["identifyId", "email", "firstName", "signUpDate", "score",
                         "customAttributes.plan"])
        for i in range(count):
            writer.writerow([f"user-{i}", f"user{i}@acme.test", "Ada", "2024-03-01T09:30:00",
                             str(i % 100), "gold"])


def timed(argv: list[str], cwd: Path) -> tuple[float, int, float]:
    """Seconds, peak RSS (KiB) and CPU seconds of one fresh child."""
    env = {**os.environ, "PX_API_KEY": "k", "PX_PRODUCT_KEY": PRODUCT_KEY}
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=cwd)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-2000:])
    _, rss, cpu = result.stderr.strip().splitlines()[-1].split()
    return elapsed, int(rss), float(cpu)


def main() -> None:
    server = subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert server.stdout is not None
        base = f"http://127.0.0.1:{int(server.stdout.readline())}/v1"
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            for size, rounds in SIZES:
                path = folder / f"users-{size}.csv"
                write_users(path, size)
                ours = [sys.executable, "-c", OURS, "users", str(path), "--api-url", base,
                        "--rate", "1000000", "--workers", str(THREADS)]
                reference = [sys.executable, "-c", REFERENCE, str(path), base, str(THREADS),
                             PRODUCT_KEY]
                runs = [(timed(ours, folder), timed(reference, folder)) for _ in range(rounds)]
                o_s, o_rss, o_cpu = min(run[0] for run in runs)
                r_s, r_rss, r_cpu = min(run[1] for run in runs)
                print(
                    f"{size:>6} new users, {THREADS} threads, PUT 404 + POST, best of {rounds}: "
                    f"px load {size / o_s:5.0f} rows/s ({o_cpu:5.1f} CPU s, peak RSS "
                    f"{o_rss / 1024:5.1f} MiB), reference {size / r_s:5.0f} rows/s "
                    f"({r_cpu:5.1f} CPU s, peak RSS {r_rss / 1024:5.1f} MiB): "
                    f"ratio {r_s / o_s:4.2f}x"
                )
    finally:
        server.terminate()
        server.wait()
    print("(target: ratio >= 0.95x; peak RSS flat from 3k to 30k rows)")


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        serve()
    else:
        main()

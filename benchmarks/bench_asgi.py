"""What ``PXAsgiMiddleware`` costs: the Starlette example's account page, bare vs wrapped.

    python -m benchmarks.bench_asgi [--rounds 7] [--duration 3] [--connections 16]

1. In process: the page through direct ASGI calls (no server, no sockets), as
   microseconds per request, so the middleware's own overhead is visible.
2. Under uvicorn (1 worker each, h11), logged in as alice with a real session
   cookie: throughput of the bare and the wrapped app, measured in alternating
   rounds in one run so both see the same machine. The load generator is ``wrk``
   (installed from Debian when missing and running as root) or, failing that, a
   small asyncio keep-alive client.

It prints the median of the per-round ratios and their spread, never asserts; the
target is a throughput ratio >= 0.97.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
from starlette.types import ASGIApp, Message

from benchmarks.bench_wsgi import summary

ROOT = Path(__file__).resolve().parents[1]
PATH = "/account"
LOGIN = {"email": "alice@acme.test", "password": "alice"}
ENV = {"PX_HMAC_SECRET": "bench-secret"}


# -- in process ------------------------------------------------------------------------------------
async def _login_cookie(app: ASGIApp) -> str:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        response = await client.post("/login", data=LOGIN)
        return f"demo_session={response.cookies['demo_session']}"


async def _call(app: ASGIApp, cookie: str) -> int:
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1", "method": "GET", "scheme": "http", "path": PATH,
        "raw_path": PATH.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"bench"), (b"cookie", cookie.encode())],
        "client": ("127.0.0.1", 9), "server": ("bench", 80), "state": {},
    }
    size = 0

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        nonlocal size
        size += len(message.get("body", b""))

    await app(scope, receive, send)
    return size


async def _in_process(rounds: int, requests: int) -> dict[str, Any]:
    os.environ.update(ENV)
    from examples.starlette_app import create_app

    apps = {"bare": create_app(px=False), "wrapped": create_app()}
    cookie = await _login_cookie(apps["wrapped"])
    sizes = {name: await _call(app, cookie) for name, app in apps.items()}
    for app in apps.values():  # warm up
        for _ in range(200):
            await _call(app, cookie)
    per_request: dict[str, list[float]] = {"bare": [], "wrapped": []}
    for _ in range(rounds):
        for name, app in apps.items():
            start = time.perf_counter()
            for _ in range(requests):
                await _call(app, cookie)
            per_request[name].append((time.perf_counter() - start) / requests * 1e6)
    return {"sizes": sizes, "us": {k: statistics.median(v) for k, v in per_request.items()}}


# -- under uvicorn ---------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_for(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)  # a server starting up, not a measurement
    raise RuntimeError(f"uvicorn on port {port} did not start")


@contextmanager
def _uvicorn(target: str) -> Iterator[str]:
    # --host/--port rather than a passed socket: uvicorn's --fd socket is labelled
    # AF_UNIX, so asyncio skips TCP_NODELAY and small writes stall on delayed ACKs.
    port = _free_port()
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", target, "--host", "127.0.0.1",
             "--port", str(port), "--http", "h11", "--no-access-log", "--log-level", "warning"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, **ENV},
        )
        try:
            _wait_for(port, process)
            yield f"http://127.0.0.1:{port}"
        finally:
            process.terminate()
            process.wait(timeout=30)
            stderr.seek(0)
            log = stderr.read().decode(errors="replace").strip()
            if log:
                print(f"  [{target} stderr]\n{log}")


def _ensure_wrk() -> str | None:
    wrk = shutil.which("wrk")
    if wrk is None and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        print("installing wrk from Debian (apt-get install wrk) ...")
        install = ["apt-get", "install", "-y", "-q", "wrk"]
        if subprocess.run(install, capture_output=True).returncode:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True)
            subprocess.run(install, capture_output=True)
        wrk = shutil.which("wrk")
    return wrk


def _wrk(wrk: str, url: str, cookie: str, duration: float, connections: int) -> tuple[float, str]:
    output = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{duration}s", "-H", f"Cookie: {cookie}", url],
        capture_output=True, text=True, check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", output)
    return (float(match.group(1)) if match else 0.0), (errors.group(0) if errors else "")


async def _python_load(url: str, cookie: str, duration: float, connections: int) -> float:
    """A keep-alive HTTP/1.1 client: ``connections`` loops of GET, read to Content-Length."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (f"GET {parts.path} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n"
               ).encode()
    deadline = time.perf_counter() + duration
    done = 0

    async def worker() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(host, port)
        while time.perf_counter() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length: (\d+)", head)
            assert length is not None, head
            await reader.readexactly(int(length.group(1)))
            done += 1
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return done / (time.perf_counter() - start)


def _under_uvicorn(rounds: int, duration: float, connections: int) -> None:
    wrk = _ensure_wrk()
    print(f"load generator: {wrk or 'python asyncio client (wrk not available)'}; "
          f"{connections} connections, {rounds} x {duration:g} s per variant, alternating")
    targets = {"bare": "examples.starlette_app:bare_app", "wrapped": "examples.starlette_app:app"}
    with ExitStack() as stack:
        urls = {name: stack.enter_context(_uvicorn(t)) for name, t in targets.items()}
        cookies = {}
        for name, url in urls.items():
            with httpx.Client(base_url=url, timeout=60) as client:
                client.post("/login", data=LOGIN)
                page = client.get(PATH)
                assert page.status_code == 200, page.status_code
                cookies[name] = f"demo_session={client.cookies['demo_session']}"
                snippet = "aptrinsic(\"identify\"" in page.text
                print(f"  {name:8} {url}{PATH}: {len(page.content)} bytes, identify: {snippet}")
        # Warm-up, not measured.
        for name, url in urls.items():
            _measure(wrk, url + PATH, cookies[name], 1, connections)
        results: dict[str, list[float]] = {"bare": [], "wrapped": []}
        for n in range(rounds):
            order = ["bare", "wrapped"] if n % 2 == 0 else ["wrapped", "bare"]
            for name in order:
                rate, note = _measure(wrk, urls[name] + PATH, cookies[name], duration,
                                      connections)
                results[name].append(rate)
                print(f"  round {n + 1} {name:8} {rate:9.1f} req/s {note}")
    print("uvicorn throughput:")
    summary(results)


def _measure(wrk: str | None, url: str, cookie: str, duration: float,
             connections: int) -> tuple[float, str]:
    if wrk:
        return _wrk(wrk, url, cookie, duration, connections)
    return asyncio.run(_python_load(url, cookie, duration, connections)), ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=int, default=3, help="seconds per round (wrk: whole)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--requests", type=int, default=2000,
                        help="in-process requests per round")
    parser.add_argument("--skip-server", action="store_true")
    args = parser.parse_args(argv)

    print(f"PXAsgiMiddleware benchmark: the Starlette example's {PATH} page, logged in as alice")
    result = asyncio.run(_in_process(args.rounds, args.requests))
    us = result["us"]
    print(f"in process (direct ASGI calls, median of {args.rounds} rounds x {args.requests}):")
    print(f"  bare    {us['bare']:8.1f} us/request  ({result['sizes']['bare']} bytes)")
    print(f"  wrapped {us['wrapped']:8.1f} us/request  ({result['sizes']['wrapped']} bytes)")
    print(f"  middleware overhead {us['wrapped'] - us['bare']:.1f} us/request; "
          f"in-process ratio bare/wrapped {us['bare'] / us['wrapped']:.3f}")
    if not args.skip_server:
        _under_uvicorn(args.rounds, args.duration, args.connections)


if __name__ == "__main__":
    main()

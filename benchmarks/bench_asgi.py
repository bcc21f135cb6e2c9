"""What ``PXAsgiMiddleware`` costs: the Starlette example's account page, bare vs wrapped.

    python -m benchmarks.bench_asgi [--rounds 7] [--duration 3] [--connections 16]

1. In process: the page through direct ASGI calls (no server, no sockets), as
   microseconds per request, so the middleware's own overhead is visible.
2. Under uvicorn (1 worker each, h11), logged in as alice with a real session
   cookie: throughput of the bare app, of the app with the 20-line floor injector
   in PX's place and of the wrapped app, in rounds run in one go
   (``benchmarks/load.py``), so all three see the same machine.

It prints the medians of the per-round ratios and their spread, never asserts; the
target is a throughput ratio wrapped/bare >= 0.97. floor/bare is what the least any
identify injector must do already costs this page.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from contextlib import ExitStack
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message

from benchmarks import load
from px_middleware.asgi import PXAsgiMiddleware
from tests.support.servers import uvicorn

PATH = "/account"
LOGIN = {"email": "alice@acme.test", "password": "alice"}
ENV = {"PX_HMAC_SECRET": "bench-secret"}


def floor_app() -> Starlette:
    """The example app with ``bench_overhead``'s 20-line floor injector where PX was:
    what the least an identify injector must do costs this page."""
    from benchmarks.bench_overhead import floor_asgi
    from examples.starlette_app import create_app

    app = create_app()
    for index, entry in enumerate(app.user_middleware):
        if getattr(entry, "cls", None) is PXAsgiMiddleware:
            app.user_middleware[index] = Middleware(floor_asgi)
    return app


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
def _under_uvicorn(rounds: int, duration: float, connections: int) -> None:
    print("under uvicorn (1 worker each, h11)")
    targets = {"bare": "examples.starlette_app:bare_app",
               "floor": "benchmarks.bench_asgi:floor_app", "wrapped": "examples.starlette_app:app"}
    with ExitStack() as stack:
        with load.servers_pinned():
            urls = {name: stack.enter_context(
                        uvicorn(target, "--http", "h11", "--no-access-log",
                                *(["--factory"] if name == "floor" else []), env=ENV)).url
                    for name, target in targets.items()}
        cookies = {}
        for name, url in urls.items():
            with httpx.Client(base_url=url, timeout=60) as client:
                client.post("/login", data=LOGIN)
                page = client.get(PATH)
                assert page.status_code == 200, page.status_code
                cookies[name] = f"demo_session={client.cookies['demo_session']}"
                snippet = "aptrinsic(\"identify\"" in page.text
                print(f"  {name:8} {url}{PATH}: {len(page.content)} bytes, identify: {snippet}")
        results = load.alternating_rounds({name: url + PATH for name, url in urls.items()},
                                          cookies, rounds, duration, connections)
    print("uvicorn throughput:")
    load.summary(results)


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

"""What ``PX(app)`` costs a Flask app: the example's dashboard, bare vs wrapped.

    python -m benchmarks.bench_wsgi [--rounds 7] [--duration 3] [--connections 2]

1. In process: direct WSGI calls (no server, no sockets) of the dashboard as alice
   (identified: Flask-Login loads her, PX renders identify with her account) and of
   the JSON API (passes through), in microseconds per request, so the middleware's
   own cost is visible next to the app's.
2. Under gunicorn (one sync worker each), logged in through the real login form:
   throughput of the bare app, of the app with the 20-line floor injector and of
   the wrapped app, in rounds run in one go (``benchmarks/load.py``), so all three
   see the same machine.

It prints the medians of the per-round ratios and their spread, never asserts; the
target is a throughput ratio wrapped/bare >= 0.97. floor/bare is what the least any
identify injector must do already costs this page.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from flask import Flask
from werkzeug.test import EnvironBuilder

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import load  # noqa: E402
from tests.support.servers import gunicorn  # noqa: E402

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

PAGE = "/dashboard"
LOGIN = {"email": "alice@acme.test", "password": "alice"}
ENV = {"PX_HMAC_SECRET": "bench-hmac-secret", "PX_PRODUCT_KEY": "AP-DEMO00000000-2"}


def bare_app() -> Flask:
    """The example app with the middleware unwrapped (gunicorn factory target)."""
    from examples.flask_app import create_app

    app = create_app()
    app.wsgi_app = app.wsgi_app.app  # type: ignore[attr-defined,method-assign]
    return app


def floor_app() -> Flask:
    """The example app with ``bench_overhead``'s 20-line floor injector where PX was:
    what the least an identify injector must do costs this page."""
    from benchmarks.bench_overhead import floor_wsgi

    app = bare_app()
    app.wsgi_app = floor_wsgi(app.wsgi_app)  # type: ignore[method-assign]
    return app


# -- in process ------------------------------------------------------------------------------
def _call(app: WSGIApplication, environ: dict[str, Any]) -> int:
    def start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], Any]:
        return lambda data: None

    result = app(dict(environ), start_response)
    try:
        return sum(len(chunk) for chunk in result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()


def _login_cookie(app: Flask) -> str:
    client = app.test_client()
    response = client.post("/login", data=LOGIN)
    assert response.status_code == 302, response.status_code
    cookie = client.get_cookie("session")
    assert cookie is not None
    return f"session={cookie.value}"


def _in_process(rounds: int, requests: int) -> None:
    from examples.flask_app import create_app

    wrapped = create_app()
    bare = Flask.wsgi_app.__get__(wrapped)  # the same app, called without the middleware
    cookie = _login_cookie(wrapped)
    apps: dict[str, WSGIApplication] = {"bare": bare, "wrapped": wrapped.wsgi_app}
    print(f"in process: {requests} direct WSGI calls per round, {rounds} rounds, median")
    for path in (PAGE, "/api/me"):
        environ = EnvironBuilder(path=path, headers=[("Cookie", cookie)]).get_environ()
        sizes = {name: _call(app, environ) for name, app in apps.items()}
        for app in apps.values():  # warm-up
            for _ in range(200):
                _call(app, environ)
        timings: dict[str, list[float]] = {"bare": [], "wrapped": []}
        for _ in range(rounds):
            for name, app in apps.items():
                start = time.perf_counter()
                for _ in range(requests):
                    _call(app, environ)
                timings[name].append((time.perf_counter() - start) / requests * 1e6)
        us = {name: statistics.median(values) for name, values in timings.items()}
        print(f"  GET {path:11} bare {us['bare']:8.1f} us ({sizes['bare']} B)   "
              f"wrapped {us['wrapped']:8.1f} us ({sizes['wrapped']} B)   "
              f"overhead {us['wrapped'] - us['bare']:+7.1f} us/request")


# -- under gunicorn ------------------------------------------------------------------------------
def _login_over_http(port: int) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("POST", "/login", body=urlencode(LOGIN),
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    response = connection.getresponse()
    response.read()
    connection.close()
    header = response.getheader("Set-Cookie") or ""
    assert response.status == 302 and header.startswith("session="), (response.status, header)
    return header.split(";", 1)[0]


def _page(port: int, cookie: str) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", PAGE, headers={"Cookie": cookie})
    body = connection.getresponse().read()
    connection.close()
    return body


def _under_gunicorn(rounds: int, duration: float, connections: int) -> None:
    print("\nunder gunicorn (1 sync worker each)")
    targets = {"bare": "benchmarks.bench_wsgi:bare_app()",
               "floor": "benchmarks.bench_wsgi:floor_app()", "wrapped": "examples.flask_app:app"}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        env = {**ENV, "FLASK_APP_DB": str(Path(tmp) / "bench.sqlite3")}
        with load.servers_pinned():
            ports = {name: stack.enter_context(gunicorn(target, env=env)).port
                     for name, target in targets.items()}
        cookies = {name: _login_over_http(port) for name, port in ports.items()}
        for name, port in ports.items():
            body = _page(port, cookies[name])
            identified = b'aptrinsic("identify"' in body
            print(f"  {name:8} {PAGE}: {len(body)} bytes, identify: {identified}")
        urls = {name: f"http://127.0.0.1:{port}{PAGE}" for name, port in ports.items()}
        results = load.alternating_rounds(urls, cookies, rounds, duration, connections)
    load.summary(results)


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=2)
    parser.add_argument("--requests", type=int, default=2000, help="in-process calls per round")
    args = parser.parse_args(list(argv) if argv is not None else None)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(ENV)
        os.environ["FLASK_APP_DB"] = str(Path(tmp) / "in-process.sqlite3")
        _in_process(args.rounds, args.requests)
    _under_gunicorn(args.rounds, args.duration, args.connections)


if __name__ == "__main__":
    main()

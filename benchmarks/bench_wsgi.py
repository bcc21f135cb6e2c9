"""What ``PX(app)`` costs a Flask app: the example's dashboard, bare vs wrapped.

    python -m benchmarks.bench_wsgi [--rounds 7] [--duration 3] [--connections 2]

1. In process: direct WSGI calls (no server, no sockets) of the dashboard as alice
   (identified: Flask-Login loads her, PX renders identify with her account) and of
   the JSON API (passes through), in microseconds per request, so the middleware's
   own cost is visible next to the app's.
2. Under gunicorn (one sync worker each), logged in through the real login form:
   throughput of the bare and the wrapped app in alternating rounds (bare, wrapped,
   bare, wrapped, ...; the order flips every round) in one run, so both see the same
   machine. Load comes from ``wrk`` (installed from Debian when missing and running
   as root), else from a small threaded ``http.client`` loop.

It prints the median of the per-round ratios and their spread, never asserts; the
target is a throughput ratio >= 0.97.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
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


def _wrk(wrk: str, port: int, cookie: str, duration: float, connections: int) -> float:
    url = f"http://127.0.0.1:{port}{PAGE}"
    output = subprocess.run(
        [wrk, "-t1", f"-c{connections}", f"-d{duration:g}s", "-H", f"Cookie: {cookie}", url],
        capture_output=True, text=True, check=True,
    ).stdout
    if "Non-2xx" in output or "Socket errors" in output:
        print("  wrk reported errors:\n" + output)
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    return float(match.group(1)) if match else 0.0


def _threaded_load(port: int, cookie: str, duration: float, connections: int) -> float:
    """Fallback load: ``connections`` threads, each GET after GET until the deadline."""
    deadline = time.perf_counter() + duration
    counts = [0] * connections

    def worker(index: int) -> None:
        while time.perf_counter() < deadline:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("GET", PAGE, headers={"Cookie": cookie})
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
    wrk = _ensure_wrk()
    print(f"\nunder gunicorn (1 sync worker each); load: {wrk or 'threaded http.client loop'}, "
          f"{connections} connections, {rounds} x {duration:g} s per variant, alternating")
    targets = {"bare": "benchmarks.bench_wsgi:bare_app()", "wrapped": "examples.flask_app:app"}
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        env = {**ENV, "FLASK_APP_DB": str(Path(tmp) / "bench.sqlite3")}
        ports = {name: stack.enter_context(gunicorn(target, env=env)).port
                 for name, target in targets.items()}
        cookies = {name: _login_over_http(port) for name, port in ports.items()}
        for name, port in ports.items():
            body = _page(port, cookies[name])
            identified = b'aptrinsic("identify"' in body
            print(f"  {name:8} {PAGE}: {len(body)} bytes, identify: {identified}")

        def measure(name: str, seconds: float) -> float:
            if wrk:
                return _wrk(wrk, ports[name], cookies[name], seconds, connections)
            return _threaded_load(ports[name], cookies[name], seconds, connections)

        for name in ports:  # warm-up, not counted
            measure(name, 1)
        results: dict[str, list[float]] = {"bare": [], "wrapped": []}
        for n in range(rounds):
            order = ("bare", "wrapped") if n % 2 == 0 else ("wrapped", "bare")
            for name in order:
                results[name].append(measure(name, duration))
                print(f"  round {n + 1} {name:8} {results[name][-1]:9.1f} req/s")
        summary(results)


def summary(results: dict[str, list[float]], target: float = 0.97) -> None:
    """The median of per-round ratios: a burst of load elsewhere hits both of a round."""
    pairs = [w / b for b, w in zip(results["bare"], results["wrapped"], strict=True) if b]
    bare, wrapped = statistics.median(results["bare"]), statistics.median(results["wrapped"])
    median = statistics.median(pairs)
    print(f"  median: bare {bare:.1f} req/s, wrapped {wrapped:.1f} req/s")
    print(f"  throughput ratio wrapped/bare: median of {len(pairs)} rounds {median:.3f}, "
          f"spread {min(pairs):.3f}-{max(pairs):.3f} (target >= {target}: "
          f"{'met' if median >= target else 'missed'})")
    print(f"  per round: {', '.join(f'{r:.3f}' for r in pairs)}")


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

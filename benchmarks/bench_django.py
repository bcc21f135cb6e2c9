"""What ``PXMiddleware`` costs a Django app: the example project, bare vs wrapped.

    python -m benchmarks.bench_django [--rounds 5] [--requests 300]

In process, through Django's own WSGI handler (no server, no sockets): alice's page
(identified: the session and user are loaded, PX renders identify with her account
and hash) and the JSON API (passes through untouched), in microseconds per request.
Bare and wrapped handlers are built from the same settings and timed in alternating
rounds in one run, so both see the same machine. It prints numbers, never asserts.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    state = tempfile.mkdtemp(prefix="bench-django-")
    os.environ.update(DJANGO_SETTINGS_MODULE="examples.django_app.settings",
                      DJANGO_APP_DB=os.path.join(state, "app.sqlite3"),
                      PX_HMAC_SECRET="bench-hmac-secret")
    from django.conf import settings
    from django.core.handlers.wsgi import WSGIHandler
    from django.test import Client, override_settings

    import examples.django_app.wsgi  # noqa: F401  (creates and seeds the database)

    client = Client()
    client.post("/login/", {"username": "alice@acme.test", "password": "alice"})
    cookie = "; ".join(f"{k}={v.value}" for k, v in client.cookies.items())
    wrapped = WSGIHandler()
    bare_middleware = [m for m in settings.MIDDLEWARE if not m.startswith("px_middleware")]
    with override_settings(MIDDLEWARE=bare_middleware):
        bare = WSGIHandler()

    def environ(path: str) -> dict[str, Any]:
        return {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "",
                "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "HTTP_HOST": "127.0.0.1",
                "HTTP_COOKIE": cookie, "HTTP_ACCEPT": "text/html", "wsgi.url_scheme": "http",
                "wsgi.input": io.BytesIO(), "wsgi.errors": sys.stderr}

    def run(handler: WSGIHandler, path: str) -> float:
        start = time.perf_counter()
        for _ in range(args.requests):
            response = handler(environ(path), lambda status, headers, exc=None: None)
            b"".join(response)
            response.close()
        return float((time.perf_counter() - start) / args.requests * 1e6)

    page = b"".join(wrapped(environ("/u/1/"), lambda status, headers, exc=None: None))
    assert b"data-px-middleware" in page and b'"id":"1"' in page  # identified, really
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'page':<22}{'bare µs':>10}{'wrapped µs':>12}{'ratio':>8}")
    for label, path in (("alice's page (HTML)", "/u/1/"), ("JSON API", "/api/me")):
        run(bare, path), run(wrapped, path)  # warm up
        bare_times, wrapped_times = [], []
        for _ in range(args.rounds):
            bare_times.append(run(bare, path))
            wrapped_times.append(run(wrapped, path))
        b, w = statistics.median(bare_times), statistics.median(wrapped_times)
        print(f"{label:<22}{b:>10.0f}{w:>12.0f}{b / w:>8.2f}")
    print("ratio = bare / wrapped requests per second (1.00 = free); median of rounds")


if __name__ == "__main__":
    main()

"""Per-request overhead of the middleware, in units of the least any injector must do.

    python -m benchmarks.bench_overhead [--rounds 9] [--requests 2000] [--only WSGI]

The floor is a minimal identify injector written here (``floor_wsgi``/``floor_asgi``):
build the identify JSON for the user and account, compute the HMAC, find ``<head>``,
splice, rewrite ``Content-Length``. Its cost over the bare app is one unit. In one
process, in alternating rounds (every variant once per round), with medians:

* the bare app (a 30 KB page with a 1 KB head, ``Content-Length`` set);
* the floor;
* ours, identified, events off;
* ours, identified, events on (session cookie kept like a browser, session and
  page-view events, the upsert digest); ``capture`` is a bounded deque append, what
  delivery's ``capture`` does on the request path (sending is off the request path);
* a JSON response that passes through untouched, events on;
* ours, events off, on a page whose head differs on every request (a CSRF token), so
  the injector cannot take a known head's decision and reads it in full.

Both WSGI and ASGI. Then the injector alone on a head streamed in 1-byte chunks, as
cost per byte at 4 KB and at 64 KB (linear work: a ratio near 1). Prints, never asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import hmac
import itertools
import json
import statistics
import time
from collections.abc import Callable, Iterable
from typing import Any

from starlette.types import Receive, Scope, Send

from px_middleware import Account, Identity, PXAsgiMiddleware, PXConfig, PXWsgiMiddleware, User
from px_middleware.core.injector import Injector, KnownHeads
from px_middleware.core.tracking import Tracker

KEY = "AP-BENCH0000001-2"
SECRET = "bench-hmac-secret"
HEAD = (
    b"<!doctype html><html lang=en><head><meta charset=utf-8><title>Dashboard</title>"
    + b'<link rel="stylesheet" href="/static/app.css?v=1234567890">' * 14
    + b"</head>"
)
PAGE = HEAD + b"<body>" + b"<p>a row of the dashboard</p>" * 1040 + b"</body></html>"
JSON_BODY = json.dumps({"items": list(range(200))}).encode()
IDENTITY = Identity(
    User("u-42", email="ada@acme.test", first_name="Ada", custom={"seats": 5}),
    Account("acme", name="Acme", number_of_employees=50),
)
KNOWN = KnownHeads()
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36"


# -- the apps ---------------------------------------------------------------------------------
_TOKENS = itertools.count()


def _body(path: str) -> bytes:
    if path == "/api":
        return JSON_BODY
    if path == "/fresh":  # a head that differs on every request (a CSRF token, a nonce)
        return PAGE.replace(b"<title>", b'<meta name="csrf" content="%d"><title>'
                            % next(_TOKENS), 1)
    return PAGE


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = _body(environ["PATH_INFO"])
    kind = "application/json" if body is JSON_BODY else "text/html; charset=utf-8"
    start_response("200 OK", [("Content-Type", kind), ("Content-Length", str(len(body)))])
    return [body]


async def asgi_app(scope: Scope, receive: Receive, send: Send) -> None:
    body = _body(scope["path"])
    kind = b"application/json" if body is JSON_BODY else b"text/html; charset=utf-8"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# -- the floor: the least an identify injector must do, by hand -------------------------------
def _floor_snippet(identity: Identity) -> bytes:
    user = {"id": identity.user.id, "email": identity.user.email,
            "firstName": identity.user.first_name, **identity.user.custom}
    user["userHash"] = hmac.new(SECRET.encode(), user["id"].encode(), hashlib.sha256).hexdigest()
    assert identity.account is not None
    account = {"id": identity.account.id, "name": identity.account.name,
               "numberOfEmployees": identity.account.number_of_employees}
    call = f'aptrinsic("identify",{json.dumps(user)},{json.dumps(account)});'
    return f"<script>{call}</script>".encode()


def _splice(body: bytes, snippet: bytes) -> bytes:
    at = body.find(b"<head>")
    return body if at < 0 else body[: at + 6] + snippet + body[at + 6 :]


def floor_wsgi(app: Callable[..., Iterable[bytes]]) -> Callable[..., Iterable[bytes]]:
    def middleware(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        held: list[Any] = []
        body = b"".join(app(environ, lambda status, headers, exc=None: held.extend((status,
                                                                                  headers))))
        body = _splice(body, _floor_snippet(IDENTITY))
        headers = [(n, str(len(body)) if n == "Content-Length" else v) for n, v in held[1]]
        start_response(held[0], headers)
        return [body]

    return middleware


def floor_asgi(app: Any) -> Any:
    async def middleware(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan, under a real server
            await app(scope, receive, send)
            return
        messages: list[dict[str, Any]] = []

        async def hold(message: dict[str, Any]) -> None:
            messages.append(message)

        await app(scope, receive, hold)
        body = _splice(messages[1]["body"], _floor_snippet(IDENTITY))
        headers = [(n, str(len(body)).encode() if n == b"content-length" else v)
                   for n, v in messages[0]["headers"]]
        await send({**messages[0], "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return middleware


# -- ours ---------------------------------------------------------------------------------------
def _configs() -> tuple[PXConfig, PXConfig]:
    off = PXConfig(KEY, hmac_secret=SECRET)
    on = PXConfig(KEY, hmac_secret=SECRET, api_key="bench", api_url="http://127.0.0.1:9/v1")
    return off, on


def _deque_tracker(middleware: Any, config: PXConfig) -> None:
    """Events on, with delivery's request-path part only: a bounded append."""
    buffer: collections.deque[tuple[str, dict[str, Any]]] = collections.deque(maxlen=10_000)

    def capture(kind: str, body: dict[str, Any]) -> bool:
        buffer.append((kind, body))
        return True

    middleware.tracker = Tracker(config, middleware.counters, capture)


def wsgi_variants() -> dict[str, tuple[Any, str]]:
    off, on = _configs()
    ours_off = PXWsgiMiddleware(wsgi_app, off, identify=lambda request: IDENTITY)
    ours_on = PXWsgiMiddleware(wsgi_app, on, identify=lambda request: IDENTITY)
    _deque_tracker(ours_on, on)
    return {
        "bare": (wsgi_app, "/"),
        "floor": (floor_wsgi(wsgi_app), "/"),
        "ours, events off": (ours_off, "/"),
        "ours, events on": (ours_on, "/"),
        "bare, fresh head": (wsgi_app, "/fresh"),
        "ours, fresh head": (ours_off, "/fresh"),
        "bare JSON": (wsgi_app, "/api"),
        "ours JSON, events on": (ours_on, "/api"),
    }


async def async_identify(request: Any) -> Identity:
    return IDENTITY


def asgi_variants() -> dict[str, tuple[Any, str]]:
    """An ``async def`` identify: a plain ``def`` one runs in a worker thread (its own
    line), which costs a thread hop per page, as Starlette's sync endpoints do."""
    off, on = _configs()
    ours_off = PXAsgiMiddleware(asgi_app, off, identify=async_identify)
    ours_on = PXAsgiMiddleware(asgi_app, on, identify=async_identify)
    ours_sync = PXAsgiMiddleware(asgi_app, off, identify=lambda request: IDENTITY)
    _deque_tracker(ours_on, on)
    return {
        "bare": (asgi_app, "/"),
        "floor": (floor_asgi(asgi_app), "/"),
        "ours, events off": (ours_off, "/"),
        "ours, events on": (ours_on, "/"),
        "ours, sync identify": (ours_sync, "/"),
        "bare, fresh head": (asgi_app, "/fresh"),
        "ours, fresh head": (ours_off, "/fresh"),
        "bare JSON": (asgi_app, "/api"),
        "ours JSON, events on": (ours_on, "/api"),
    }


# -- one round of one variant ---------------------------------------------------------------
class _Cookie:
    """The session cookie, kept between requests like a browser keeps it."""

    def __init__(self) -> None:
        self.value = ""

    def take(self, headers: Iterable[tuple[Any, Any]]) -> None:
        for name, value in headers:
            if isinstance(name, bytes):
                name, value = name.decode("latin-1"), value.decode("latin-1")
            if name.lower() == "set-cookie":
                self.value = value.split(";", 1)[0]


def wsgi_round(app: Any, path: str, requests: int) -> float:
    cookie = _Cookie()

    def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
        cookie.take(headers)
        return None

    base = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "",
            "SERVER_NAME": "app.test", "SERVER_PORT": "80", "wsgi.url_scheme": "https",
            "HTTP_HOST": "app.test", "REMOTE_ADDR": "127.0.0.1", "HTTP_USER_AGENT": BROWSER,
            "HTTP_ACCEPT": "text/html", "HTTP_SEC_FETCH_DEST": "document",
            "HTTP_SEC_FETCH_MODE": "navigate"}
    started = time.perf_counter_ns()
    for _ in range(requests):
        environ = dict(base)
        if cookie.value:
            environ["HTTP_COOKIE"] = cookie.value
        result = app(environ, start_response)
        b"".join(result)
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return (time.perf_counter_ns() - started) / requests / 1000


async def asgi_round(app: Any, path: str, requests: int) -> float:
    cookie = _Cookie()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            cookie.take(message["headers"])

    headers = [(b"host", b"app.test"), (b"user-agent", BROWSER.encode()),
               (b"accept", b"text/html"), (b"sec-fetch-dest", b"document"),
               (b"sec-fetch-mode", b"navigate")]
    started = time.perf_counter_ns()
    for _ in range(requests):
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "https", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "client": ("127.0.0.1", 5000),
                 "server": ("app.test", 443), "state": {},
                 "headers": headers + ([(b"cookie", cookie.value.encode())] if cookie.value
                                       else [])}
        await app(scope, receive, send)
    return (time.perf_counter_ns() - started) / requests / 1000


def injector_round(requests: int, known: KnownHeads | None) -> float:
    snippet = b'<script data-px-middleware="1">aptrinsic("identify",{});</script>'
    started = time.perf_counter_ns()
    for _ in range(requests):
        injector = Injector(snippet, known=known)
        injector.feed(PAGE)
        injector.close()
    return (time.perf_counter_ns() - started) / requests / 1000


def measure(kind: str, rounds: int, requests: int) -> None:
    variants = wsgi_variants() if kind == "WSGI" else asgi_variants()

    def one(app: Any, path: str, n: int) -> float:
        if app is None:
            return injector_round(n, KNOWN if path == "known" else None)
        if kind == "WSGI":
            return wsgi_round(app, path, n)
        return asyncio.run(asgi_round(app, path, n))

    # Not variants: our injector alone on the page, to show its share, with the head
    # known (as in the middleware after the first page) and read in full.
    variants["  of which injector"] = (None, "known")
    variants["  injector, head unknown"] = (None, "cold")
    for app, path in variants.values():  # warm-up: caches, first-use imports
        one(app, path, 200)
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (app, path) in variants.items():
            timings[name].append(one(app, path, requests))
    # Per round, so a burst of load from elsewhere hits every variant of that round.
    units: dict[str, list[float]] = {name: [] for name in variants}
    for i in range(rounds):
        bare, floor = timings["bare"][i], timings["floor"][i]
        unit = floor - bare
        for name in variants:
            base = bare
            if "JSON" in name:
                base = timings["bare JSON"][i]
            elif "fresh" in name:
                base = timings["bare, fresh head"][i]
            elif "injector" in name:
                base = 0.0
            units[name].append((timings[name][i] - base) / unit if unit > 0 else float("nan"))
    print(f"{kind}: {rounds} alternating rounds x {requests} requests, medians "
          f"(page {len(PAGE)} B, head {len(HEAD)} B)")
    targets = {"ours, events off": 1.5, "ours, events on": 3.0, "ours JSON, events on": 0.3}
    for name in variants:
        us = statistics.median(timings[name])
        line = f"  {name:22} {us:8.2f} us/request"
        if not name.startswith("bare"):
            ratio = statistics.median(units[name])
            spread = f"{min(units[name]):.2f}-{max(units[name]):.2f}"
            line += f"   overhead {ratio:6.2f} floor units (rounds {spread})"
            if name in targets:
                verdict = "met" if ratio <= targets[name] else "missed"
                line += f"   target <= {targets[name]} {verdict}"
        print(line)


def injector_linearity() -> None:
    """The injector alone, a head of N bytes fed 1 byte at a time: cost per byte."""
    documents = {}
    for size in (4 * 1024, 64 * 1024):
        comment = b"<!--" + b"x" * (size - 64) + b"-->"
        document = b"<!doctype html><html><head>" + comment + b"</head><body>x</body></html>"
        documents[size] = [document[i : i + 1] for i in range(len(document))]
    per_byte = dict.fromkeys(documents, float("inf"))
    for _ in range(5):  # alternating, the least of five: one pass is at a busy core's mercy
        for size, chunks in documents.items():
            started = time.perf_counter_ns()
            injector = Injector(b"<script>s</script>")
            for chunk in chunks:
                injector.feed(chunk)
            injector.close()
            per_byte[size] = min(per_byte[size], (time.perf_counter_ns() - started) / len(chunks))
    print("injector, head in 1-byte chunks: "
          f"{per_byte[4096]:.0f} ns/byte at 4 KB, {per_byte[65536]:.0f} ns/byte at 64 KB, "
          f"ratio 64 KB/4 KB {per_byte[65536] / per_byte[4096]:.2f} (linear: ~1)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--only", choices=("WSGI", "ASGI", "linearity"))
    args = parser.parse_args(argv)
    if args.only in (None, "WSGI"):
        measure("WSGI", args.rounds, args.requests)
    if args.only in (None, "ASGI"):
        measure("ASGI", args.rounds, args.requests)
    if args.only in (None, "linearity"):
        injector_linearity()


if __name__ == "__main__":
    main()

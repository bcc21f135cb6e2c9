"""Request overhead of server-side events: the same wrapped WSGI page, events off vs on.

In-process (no server, no network on the request path): a WSGI call loop through
``PXWsgiMiddleware`` with a logged-in user, side by side in one run, alternating
rounds. "On" captures session_start/page_view events and upserts into the delivery
queue and sets the session cookie; the sender ships them to a local sink in the
background. Prints, never asserts.
"""

from __future__ import annotations

import http.server
import statistics
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from px_middleware import Account, Identity, PXConfig, PXWsgiMiddleware, User
from px_middleware.delivery import get_delivery

PAGE = (
    b"<!doctype html><html><head><meta charset=utf-8><title>Dashboard</title>"
    + b'<link rel="stylesheet" href="/static/app.css">' * 6
    + b"</head><body>"
    + b"<p>row</p>" * 3000
    + b"</body></html>"
)
IDENTITY = Identity(
    User("42", email="ada@acme.test", first_name="Ada", custom={"seats": 5}),
    Account("acme", name="Acme", number_of_employees=50),
)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/html"), ("Content-Length", str(len(PAGE)))])
    return [PAGE]


class _Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(201)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_POST

    def log_message(self, *args: Any) -> None:
        pass


def _environ(cookie: str | None) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET", "PATH_INFO": "/dashboard", "QUERY_STRING": "",
        "SERVER_NAME": "app.test", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
        "HTTP_HOST": "app.test", "REMOTE_ADDR": "127.0.0.1",
        "HTTP_USER_AGENT": "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0",
    }
    if cookie:
        environ["HTTP_COOKIE"] = cookie
    return environ


def _round(middleware: PXWsgiMiddleware, requests: int) -> float:
    """Microseconds per request; one visitor keeping its cookie, like a browser."""
    cookie: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
        for name, value in headers:
            if name == "Set-Cookie":
                cookie[:] = [value.split(";", 1)[0]]
        return lambda data: None

    started = time.perf_counter_ns()
    for _ in range(requests):
        body = middleware(_environ(cookie[0] if cookie else None), start_response)
        b"".join(body)
        getattr(body, "close", lambda: None)()
    return (time.perf_counter_ns() - started) / requests / 1000


def main() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    common: dict[str, Any] = {"product_key": "AP-BENCH0000001-2", "hmac_secret": "s"}
    off = PXWsgiMiddleware(app, PXConfig(**common), identify=lambda r: IDENTITY)
    events_config = PXConfig(**common, api_key="k", api_url=api_url, rate_limit=100_000)
    on = PXWsgiMiddleware(app, events_config, identify=lambda r: IDENTITY)
    bare_ns: list[float] = []
    off_us: list[float] = []
    on_us: list[float] = []
    for _ in range(7):
        started = time.perf_counter_ns()
        for _ in range(2000):
            b"".join(app(_environ(None), lambda *a: None))
        bare_ns.append((time.perf_counter_ns() - started) / 2000 / 1000)
        off_us.append(_round(off, 2000))
        on_us.append(_round(on, 2000))
    delivered = get_delivery(events_config).flush(10)
    bare, events_off, events_on = (statistics.median(x) for x in (bare_ns, off_us, on_us))
    print(f"bare app                 {bare:8.1f} µs/request")
    print(f"wrapped, events off      {events_off:8.1f} µs/request "
          f"(+{events_off - bare:.1f} µs over bare)")
    print(f"wrapped, events on       {events_on:8.1f} µs/request "
          f"(+{events_on - events_off:.1f} µs for sessions, events and upserts)")
    print(f"events on / events off   {events_on / events_off:8.2f}x time per request")
    counters = get_delivery(events_config).counters()
    print(f"delivered to the local sink: {counters.get('sent', 0)} items "
          f"(all flushed: {delivered})")
    server.shutdown()


if __name__ == "__main__":
    main()

"""Server-side sessions, events and upserts through both adapters to a real PX stand-in.

The app is real (a WSGI and an ASGI app serving the same page), the middleware is
real, delivery goes over real HTTP to the devserver, and what the devserver stored
is what we assert on. Time is not faked here (see test_tracking.py for the clock).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from px_middleware import Account, Identity, PXAsgiMiddleware, PXConfig, PXWsgiMiddleware, User
from px_middleware.delivery import get_delivery
from tests.support.devserver import DevServer

PAGE = b"<!doctype html><html><head><title>t</title></head><body>page</body></html>"
KEY = "AP-EVENTS000001-2"
#: httpx's own user agent matches the default bot pattern, which skips tracking.
BROWSER = {"user-agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0 Safari/537.36"}


def identity_for(user: str | None) -> Identity | None:
    if not user:
        return None
    return Identity(
        User(user, email=f"{user}@acme.test", sign_up_date=dt.date(2024, 5, 1),
             custom={"seats": 7}),
        Account("acme", name="Acme", number_of_employees=12),
    )


#: Werkzeug's redirect body, an HTML 404 page and a fragment for the page's own fetch().
REDIRECT = (b'<!doctype html>\n<html lang=en>\n<title>Redirecting...</title>\n'
            b'<h1>Redirecting...</h1>\n<p>You should be redirected to <a href="/">/</a>.')
NOT_FOUND = b"<!doctype html><html><head><title>404</title></head><body>Not Found</body></html>"
FRAGMENT = b'<li class="row">one more row</li>'
#: path -> (status, body) the apps answer with, as text/html.
HTML_ROUTES = {"/redirect": (302, REDIRECT), "/missing": (404, NOT_FOUND),
               "/fragment": (200, FRAGMENT)}


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    if environ["PATH_INFO"] == "/api":
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b"{}"]
    status, body = HTML_ROUTES.get(environ["PATH_INFO"], (200, PAGE))
    headers = [("Content-Type", "text/html"), ("Content-Length", str(len(body)))]
    if status == 302:
        headers.append(("Location", "/"))
    start_response(f"{status} {HTTPStatus(status).phrase}", headers)
    return [body]


async def page(request: Request) -> HTMLResponse:
    status, body = HTML_ROUTES.get(request.url.path, (200, PAGE))
    headers = {"Location": "/"} if status == 302 else None
    return HTMLResponse(body, status_code=status, headers=headers)


async def api(request: Request) -> JSONResponse:
    return JSONResponse({})


def asgi_app() -> Any:
    from starlette.applications import Starlette

    return Starlette(routes=[Route("/api", api), Route("/{path:path}", page)])


class Client:
    """One browser's cookie jar against the wrapped app, WSGI or ASGI alike."""

    def __init__(self, kind: str, config: PXConfig) -> None:
        self.kind = kind
        if kind == "wsgi":
            self.middleware: Any = PXWsgiMiddleware(
                wsgi_app, config, identify=lambda r: identity_for(r.args.get("u"))
            )
            self.sync = httpx.Client(
                transport=httpx.WSGITransport(app=self.middleware),
                base_url="http://app.test",
                headers=BROWSER,
            )
        else:
            self.middleware = PXAsgiMiddleware(
                asgi_app(), config, identify=lambda r: identity_for(r.query_params.get("u"))
            )
            self.cookies = httpx.Cookies()

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        if self.kind == "wsgi":
            return self.sync.get(path, headers=headers)

        async def go() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.middleware)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://app.test", cookies=self.cookies,
                headers=BROWSER,
            ) as client:
                response = await client.get(path, headers=headers)
                self.cookies = client.cookies
                return response

        return asyncio.run(go())


@pytest.fixture(params=["wsgi", "asgi"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def config_for(devserver: DevServer, **overrides: Any) -> PXConfig:
    return PXConfig(
        product_key=KEY,
        hmac_secret="hmac-secret",
        api_key=devserver.api_key,
        api_url=devserver.api_url,
        **overrides,
    )


def test_login_browse_logout_reaches_px(devserver: DevServer, kind: str) -> None:
    config = config_for(devserver)
    client = Client(kind, config)

    first = client.get("/?u=alice")
    assert b'"identify"' in first.content and "px_session" in first.headers["set-cookie"]
    client.get("/other?u=alice&token=hunter2")
    client.get("/api?u=alice")  # not a page: no page view by default
    logout = client.get("/")
    assert logout.content.count(b'aptrinsic("reset")') == 1
    again = client.get("/")
    assert b"reset" not in again.content

    assert get_delivery(config).flush(15)
    events = devserver.events()
    # Order is kept per session (sessions may be delivered by different senders).
    sessions: dict[str, list[tuple[str, str]]] = {}
    for event in events:
        sessions.setdefault(event["sessionId"], []).append(
            (event["eventName"], event["identifyId"])
        )
    visitor = next(e["identifyId"] for e in events if e["userType"] == "VISITOR")
    # Alice's session ends at logout, but the cookie names her by digest only, so that
    # session_end cannot carry her identifyId: counted, not sent under a wrong id.
    assert sorted(sessions.values()) == sorted([
        [("session_start", "alice"), ("page_view", "alice"), ("page_view", "alice")],
        [("session_start", visitor), ("page_view", visitor), ("page_view", visitor)],
    ])
    assert client.middleware.counters.snapshot()["session_end_unattributed"] == 1
    alice_views = [
        e for e in events if e["eventName"] == "page_view" and e["identifyId"] == "alice"
    ]
    assert len({e["sessionId"] for e in alice_views}) == 1
    assert alice_views[0]["accountId"] == "acme" and alice_views[0]["propertyKey"] == KEY
    assert "hunter2" not in alice_views[1]["url"] and "token=" in alice_views[1]["url"]
    assert len({e["eventId"] for e in events}) == len(events)  # each exactly once

    users = {u["identifyId"]: u for u in devserver.users()}
    assert users["alice"]["email"] == "alice@acme.test"
    assert users["alice"]["signUpDate"] == 1714521600000  # 2024-05-01T00:00:00Z
    assert users["alice"]["customAttributes"] == {"seats": 7}
    accounts = {a["id"]: a for a in devserver.accounts()}
    assert accounts["acme"]["numberOfEmployees"] == 12
    assert client.middleware.counters.snapshot().get("errors", 0) == 0


def test_api_calls_are_recorded_when_asked(devserver: DevServer, kind: str) -> None:
    config = config_for(devserver, track_all_responses=True)
    client = Client(kind, config)
    response = client.get("/api?u=bob")
    assert response.content == b"{}"  # the body is never touched
    assert "px_session" in response.headers["set-cookie"]
    assert get_delivery(config).flush(15)
    views = devserver.events(eventName="page_view")
    assert [(v["identifyId"], v["attributes"]["path"]) for v in views] == [("bob", "/api")]


def test_px_outage_never_touches_the_page(tmp_path: Any, kind: str) -> None:
    # Nothing listens on this API URL: pages must be exactly as fast and whole as ever.
    config = PXConfig(product_key=KEY, api_key="k", api_url="http://127.0.0.1:9/v1",
                      request_timeout=0.5)
    client = Client(kind, config)
    for _ in range(3):
        response = client.get("/?u=carol")
        assert response.status_code == 200 and b'"identify"' in response.content
    assert not get_delivery(config).flush(0.5)  # still queued, not lost
    assert get_delivery(config).counters()["captured"] >= 6



def test_bad_input_gets_a_page_and_loses_nothing(devserver: DevServer, kind: str) -> None:
    config = config_for(devserver)
    client = Client(kind, config)
    client.get("/?u=alice")  # captured before the bad requests; must still arrive
    bad_cookies = ["px_session=garbage", "px_session=eyJ4IjoxfQ.forged.sig", 'px_session="\\xff']
    for cookie in bad_cookies:
        response = client.get("/", headers={"cookie": cookie})
        assert response.status_code == 200 and b"<title>t</title>" in response.content
    # (httpx's WSGITransport puts non-latin-1 text in PATH_INFO for %FF paths, which no
    # PEP 3333 server does, so invalid UTF-8 is exercised in the query string here.)
    for path in ("/%C3%A9t%C3%A9?q=%FF%FE", "/?u=%C3%28", "/?" + "x=" + "y" * 5000):
        response = client.get(path)
        assert response.status_code == 200
    assert get_delivery(config).flush(15)
    views = devserver.events(eventName="page_view")
    assert "alice" in {v["identifyId"] for v in views}
    assert len(views) >= 5 and len({v["eventId"] for v in views}) == len(views)
    assert client.middleware.counters.snapshot().get("errors", 0) == 0


#: What a browser sends for a page's own fetch() and for a navigation.
FETCH = {"Sec-Fetch-Dest": "empty", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin"}
NAVIGATE = {"Sec-Fetch-Dest": "document", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-User": "?1"}


def test_only_pages_a_person_navigated_to_are_page_views(devserver: DevServer, kind: str) -> None:
    config = config_for(devserver)
    client = Client(kind, config)
    not_page_views = [
        ("/redirect", NAVIGATE),  # a logout or login redirect, with an HTML body
        ("/missing", NAVIGATE),  # an error page
        ("/fragment", FETCH),  # the page's own fetch() of a fragment
        ("/fragment", {}),  # the same without Sec-Fetch-* (older browsers): a fragment
        ("/", FETCH),  # a whole page, but fetched by script
        ("/", {"X-Requested-With": "XMLHttpRequest"}),  # an XHR
    ]
    for path, headers in not_page_views:
        response = client.get(f"{path}?u=alice", headers=headers)
        assert response.status_code in (200, 302, 404)
        assert "set-cookie" not in response.headers, (path, headers)
    page_views = [
        ("/", NAVIGATE),  # a normal navigation
        ("/boosted", {**FETCH, "HX-Request": "true", "HX-Boosted": "true"}),  # htmx boost
        ("/turbo", {**FETCH, "X-Turbo-Request-Id": "7d2b4e3c-1b8f-4a4e-9c57-3f7bb6b2c0de",
                    "Accept": "text/vnd.turbo-stream.html, text/html"}),  # Turbo Drive
    ]
    for path, headers in page_views:
        response = client.get(f"{path}?u=alice", headers=headers)
        assert response.status_code == 200
        assert "px_session=" in response.headers.get("set-cookie", ""), (path, headers)
    assert get_delivery(config).flush(15)
    views = devserver.events(eventName="page_view")
    assert sorted(v["attributes"]["path"] for v in views) == ["/", "/boosted", "/turbo"]
    assert len(devserver.events(eventName="session_start")) == 1

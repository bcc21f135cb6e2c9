"""``PXAsgiMiddleware`` in a Starlette app: what gets the snippet, and what stays byte-identical.

Responses that must not change are compared message for message with the same app
without the middleware; pages are read through httpx's ``ASGITransport``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message

from px_middleware import Account, Identity, PXConfig, User
from px_middleware.asgi import PXAsgiMiddleware, _header_getter
from px_middleware.core.snippet import MARKER

SECRET = "test-hmac-secret"
CONFIG = PXConfig(product_key="AP-TEST00000000-2", hmac_secret=SECRET)
STATIC = Path(__file__).resolve().parents[1] / "examples" / "starlette_app" / "static"

pytestmark = pytest.mark.anyio

PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Dashboard \u2013 \u00fcn\u00efcode</title>
</head>
<body><h1>Dashboard</h1><p>{filler}</p></body>
</html>
"""


# -- helpers shared with the other ASGI test modules ----------------------------------------------
def px_calls(html: str) -> list[list[Any]]:
    """The ``aptrinsic(...)`` calls in our snippet, arguments JSON-decoded (loader excluded)."""
    match = re.search(r"<script " + re.escape(MARKER) + r"[^>]*>(.*?)</script>", html, re.S)
    if match is None:
        return []
    script, calls = match.group(1), []
    decoder = json.JSONDecoder()
    for found in re.finditer(r"aptrinsic\(", script):
        pos, args = found.end(), []
        while script[pos] != ")":
            value, pos = decoder.raw_decode(script, pos)
            args.append(value)
            pos += script[pos] == ","
        calls.append(args)
    return calls


def expected_hash(user_id: str, secret: str = SECRET) -> str:
    """The userHash PX will check, computed here independently of px_middleware."""
    return hmac.new(secret.encode(), user_id.encode(), hashlib.sha256).hexdigest()


def loader_count(html: str) -> int:
    return html.count("aptrinsic.js")


def client(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


async def capture(app: ASGIApp, method: str = "GET", path: str = "/",
                  headers: dict[str, str] | None = None) -> list[Message]:
    """Every message ``app`` sends for one request, as a server would receive them."""
    sent: list[Message] = []
    done = asyncio.Event()
    requested = False

    async def receive() -> Message:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()  # like a server: a disconnect only once the response is over
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    raw_headers = [(b"host", b"testserver")]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    path, _, query = path.partition("?")
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": query.encode(), "headers": raw_headers,
        "client": ("127.0.0.1", 5000), "server": ("testserver", 80), "state": {},
    }
    await app(scope, receive, send)
    return sent


# -- the app under test ---------------------------------------------------------------------------
def identify(request: Request) -> Identity | None:
    user_id = request.headers.get("x-user")
    if not user_id:
        return None
    return Identity(
        User(id=user_id, email=f"{user_id}@acme.test", sign_up_date=dt.date(2024, 1, 2)),
        Account(id="acme", name="Acme Inc.",
                custom={"seats": 50, "contractEnd": dt.date(2026, 12, 31)}),
    )


async def page(request: Request) -> Response:
    size = int(request.query_params.get("size", "10"))
    return HTMLResponse(PAGE.format(filler="x" * size))


async def events() -> AsyncIterator[bytes]:
    for n in range(3):
        yield f"id: {n}\ndata: <html><head>\n\n".encode()


async def chunks() -> AsyncIterator[bytes]:
    text = PAGE.format(filler="streamed").encode()
    for i in range(0, len(text), 7):
        yield text[i : i + 7]


ROUTES = [
    Route("/page", page),
    Route("/stream", lambda r: StreamingResponse(chunks(), media_type="text/html")),
    Route("/json", lambda r: JSONResponse({"html": "<html><head></head></html>"})),
    Route("/redirect", lambda r: RedirectResponse("/page", status_code=302)),
    Route("/not-modified", lambda r: Response(status_code=304, headers={"etag": '"v1"'})),
    Route("/attachment", lambda r: HTMLResponse(
        PAGE.format(filler="report"),
        headers={"content-disposition": 'attachment; filename="r.html"'})),
    Route("/sse", lambda r: StreamingResponse(events(), media_type="text/event-stream")),
    Route("/css", lambda r: FileResponse(STATIC / "style.css")),
    Route("/html-file", lambda r: FileResponse(HTML_FILE[0])),
    Route("/public", lambda r: HTMLResponse(PAGE.format(filler="p"),
                                            headers={"cache-control": "public, max-age=60"})),
    Route("/no-transform", lambda r: HTMLResponse(PAGE.format(filler="n"),
                                                  headers={"cache-control": "no-transform"})),
    Route("/fragment", lambda r: HTMLResponse("<li>one</li><li>two</li>")),
    Route("/text", lambda r: PlainTextResponse("<html><head></head></html>")),
    Route("/error-page", lambda r: HTMLResponse(PAGE.format(filler="oops"), status_code=500)),
    Mount("/static", StaticFiles(directory=STATIC)),
]


def make_app(*, px: bool = True, gzip_at: str | None = None, **px_kwargs: Any) -> Starlette:
    """``gzip_at``: "outside" or "inside" our middleware (or no GZipMiddleware)."""
    middleware = []
    if gzip_at == "outside":
        middleware.append(Middleware(GZipMiddleware, minimum_size=10))
    if px:
        px_kwargs.setdefault("identify", identify)
        middleware.append(Middleware(PXAsgiMiddleware, config=CONFIG, **px_kwargs))
    if gzip_at == "inside":
        middleware.append(Middleware(GZipMiddleware, minimum_size=10))
    return Starlette(routes=ROUTES, middleware=middleware)


HTML_FILE: list[Path] = []


@pytest.fixture(scope="module", autouse=True)
def html_file(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("asgi") / "page.html"
    # Bigger than FileResponse's 64 KiB chunk, so the body arrives in several messages.
    path.write_text(PAGE.format(filler="f" * 100_000), encoding="utf-8")
    HTML_FILE[:] = [path]


# -- pages that get the snippet -------------------------------------------------------------------
async def test_identified_page_has_one_loader_and_a_verified_identify() -> None:
    async with client(make_app()) as c:
        response = await c.get("/page", headers={"x-user": "alice"})
    html = response.text
    assert response.status_code == 200
    assert loader_count(html) == 1
    assert html.count(MARKER) == 1
    calls = px_calls(html)
    assert calls == [[
        "identify",
        {"id": "alice", "email": "alice@acme.test", "signUpDate": 1704153600000,
         "userHash": expected_hash("alice")},
        {"id": "acme", "name": "Acme Inc.", "seats": 50, "contractEnd": 1798675200000},
    ]]
    assert SECRET not in html
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.headers["cache-control"] == "private"
    # Right after <meta charset>, and the non-ASCII title is intact.
    assert re.search(r'<meta charset="utf-8"><script ' + re.escape(MARKER), html)
    assert "<title>Dashboard \u2013 \u00fcn\u00efcode</title>" in html


async def test_anonymous_page_gets_the_loader_only() -> None:
    async with client(make_app()) as c:
        response = await c.get("/page")
    assert loader_count(response.text) == 1
    assert px_calls(response.text) == []
    assert "cache-control" not in response.headers
    assert int(response.headers["content-length"]) == len(response.content)


async def test_plain_wrapper_around_any_asgi_app() -> None:
    app = PXAsgiMiddleware(Starlette(routes=ROUTES), CONFIG, identify=identify)
    async with client(app) as c:
        response = await c.get("/page", headers={"x-user": "bob"})
    assert px_calls(response.text)[0][1]["userHash"] == expected_hash("bob")
    assert app.counters.snapshot() == {"injected": 1, "identified": 1}


async def test_streamed_page_is_injected_once() -> None:
    async with client(make_app()) as c:
        response = await c.get("/stream", headers={"x-user": "alice"})
    assert response.text.count(MARKER) == 1
    assert "content-length" not in response.headers
    assert response.text.replace(
        re.search(r"<script data-px.*?</script>", response.text, re.S).group(0), ""  # type: ignore[union-attr]
    ) == PAGE.format(filler="streamed")


async def test_html_file_response_is_injected_with_a_consistent_length() -> None:
    async with client(make_app()) as c:
        response = await c.get("/html-file", headers={"x-user": "alice"})
    assert response.text.count(MARKER) == 1
    assert int(response.headers["content-length"]) == len(response.content)
    assert response.headers["etag"].startswith('W/"')


async def test_gzip_outside_ours_compresses_the_injected_page() -> None:
    app = make_app(gzip_at="outside")
    async with client(app) as c:
        headers = {"x-user": "alice", "accept-encoding": "gzip"}
        async with c.stream("GET", "/page?size=2000", headers=headers) as response:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
    assert response.headers["content-encoding"] == "gzip"
    assert int(response.headers["content-length"]) == len(raw)
    html = gzip.decompress(raw).decode()
    assert html.count(MARKER) == 1
    assert px_calls(html)[0][1]["id"] == "alice"


# -- responses that must come back byte-identical -------------------------------------------------
IDENTICAL = [
    ("GET", "/json", {}),
    ("GET", "/redirect", {}),
    ("GET", "/not-modified", {}),
    ("HEAD", "/page", {}),
    ("POST", "/page", {}),
    ("GET", "/attachment", {}),
    ("GET", "/sse", {}),
    ("GET", "/css", {}),
    ("GET", "/static/style.css", {}),
    ("GET", "/no-transform", {}),
    ("GET", "/text", {}),
    ("GET", "/error-page", {}),
    ("GET", "/missing", {}),
    ("GET", "/page", {"x-requested-with": "XMLHttpRequest"}),
    ("GET", "/page", {"hx-request": "true"}),
    ("GET", "/page", {"sec-purpose": "prefetch"}),
    ("GET", "/html-file", {"range": "bytes=0-99"}),
]


@pytest.mark.parametrize(("method", "path", "headers"), IDENTICAL,
                         ids=[f"{m} {p} {h}" for m, p, h in IDENTICAL])
@pytest.mark.parametrize("user", ["alice", None])
async def test_response_is_byte_identical_to_the_bare_app(
    method: str, path: str, headers: dict[str, str], user: str | None
) -> None:
    headers = {**headers, **({"x-user": user} if user else {})}
    bare = await capture(make_app(px=False), method, path, headers)
    wrapped = await capture(make_app(), method, path, headers)
    assert wrapped == bare
    assert b"aptrinsic" not in b"".join(m.get("body", b"") for m in wrapped)


async def test_public_page_is_not_identified() -> None:
    """An identified page must not land in a shared cache: no snippet at all."""
    headers = {"x-user": "alice"}
    bare = await capture(make_app(px=False), "GET", "/public", headers)
    assert await capture(make_app(), "GET", "/public", headers) == bare
    async with client(make_app()) as c:  # anonymous: the loader is the same for everyone
        assert loader_count((await c.get("/public")).text) == 1


async def test_static_304_is_byte_identical() -> None:
    first = await capture(make_app(px=False), "GET", "/static/style.css")
    etag = dict(first[0]["headers"])[b"etag"].decode()
    bare = await capture(make_app(px=False), "GET", "/static/style.css", {"if-none-match": etag})
    wrapped = await capture(make_app(), "GET", "/static/style.css", {"if-none-match": etag})
    assert bare[0]["status"] == 304
    assert wrapped == bare


@pytest.mark.parametrize("path", ["/page?size=2000", "/stream", "/sse", "/json"])
async def test_gzip_inside_ours_passes_the_compressed_body_through(path: str) -> None:
    headers = {"accept-encoding": "gzip", "x-user": "alice"}
    bare = await capture(make_app(px=False, gzip_at="inside"), "GET", path, headers)
    wrapped = await capture(make_app(gzip_at="inside"), "GET", path, headers)
    assert wrapped == bare


async def test_html_fragment_for_an_identified_user_is_byte_identical() -> None:
    headers = {"x-user": "alice"}
    bare = await capture(make_app(px=False), "GET", "/fragment", headers)
    wrapped = await capture(make_app(), "GET", "/fragment", headers)
    assert wrapped == bare


async def test_html_fragment_for_an_anonymous_visitor_is_byte_identical() -> None:
    bare = await capture(make_app(px=False), "GET", "/fragment")
    wrapped = await capture(make_app(), "GET", "/fragment")
    assert wrapped == bare


# -- where identify and csp_nonce run -------------------------------------------------------------
async def page_only(scope: Any, receive: Any, send: Any) -> None:
    await HTMLResponse(PAGE.format(filler="x"))(scope, receive, send)


async def test_a_sync_identify_and_csp_nonce_run_off_the_event_loop_thread() -> None:
    import threading

    loop_thread = threading.get_ident()
    seen: dict[str, int] = {}

    def sync_identify(request: Request) -> User:
        seen["identify"] = threading.get_ident()
        return User("alice")

    def sync_nonce(request: Request) -> str:
        seen["nonce"] = threading.get_ident()
        return "n0nce"

    app = PXAsgiMiddleware(page_only, CONFIG, identify=sync_identify, csp_nonce=sync_nonce)
    async with client(app) as c:
        response = await c.get("/")
    assert px_calls(response.text)[0][1]["id"] == "alice" and 'nonce="n0nce"' in response.text
    assert set(seen) == {"identify", "nonce"}
    assert loop_thread not in seen.values()  # a blocking lookup never stalls the loop


async def test_an_async_identify_is_awaited_on_the_event_loop() -> None:
    import functools
    import threading

    loop_thread = threading.get_ident()
    seen: list[int] = []

    async def async_identify(request: Request, user_id: str) -> User:
        seen.append(threading.get_ident())
        await asyncio.sleep(0)  # a real await: this is a coroutine, run on the loop
        return User(user_id)

    class Finder:
        async def __call__(self, request: Request) -> User:
            seen.append(threading.get_ident())
            return User("bob")

    for hook, user in ((functools.partial(async_identify, user_id="alice"), "alice"),
                       (Finder(), "bob")):
        app = PXAsgiMiddleware(page_only, CONFIG, identify=hook)
        async with client(app) as c:
            response = await c.get("/")
        assert px_calls(response.text)[0][1]["id"] == user
    assert seen == [loop_thread, loop_thread]


async def test_a_scope_we_cannot_read_goes_to_the_app_untouched() -> None:
    """Fail open: a scope without ``query_string`` bytes (a str here) is the app's to
    handle; ours logs and counts the error and stays out of the way."""
    middleware = PXAsgiMiddleware(page_only, CONFIG, identify=identify)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "path": "/", "raw_path": b"/", "query_string": "u=1",
             "root_path": "", "headers": [], "scheme": "http", "server": ("t", 80)}
    await middleware(scope, receive, send)
    assert sent[0]["status"] == 200 and MARKER.encode() not in sent[-1]["body"]
    assert middleware.counters.snapshot()["errors"] == 1


_NAMES = st.sampled_from([b"cookie", b"user-agent", b"sec-fetch-dest", b"x-requested-with",
                          b"hx-request", b"host", b"referer"])


@given(st.lists(st.tuples(_NAMES, st.binary(max_size=8)), max_size=8),
       st.sampled_from(["cookie", "User-Agent", "SEC-FETCH-DEST", "hx-request", "dnt"]))
def test_the_core_reads_request_headers_as_starlette_does(
    raw: list[tuple[bytes, bytes]], name: str
) -> None:
    """The first of duplicates, any case asked for, the value latin-1 (starlette's
    ``Headers.get``); names the server sent in capitals are found all the same."""
    expected = Headers(scope={"headers": raw}).get(name)
    assert _header_getter({"headers": raw})(name) == expected
    shouted = [(key.upper(), value) for key, value in raw]
    assert _header_getter({"headers": shouted})(name) == expected

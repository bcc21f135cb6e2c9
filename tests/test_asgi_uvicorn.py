"""``PXAsgiMiddleware`` under a real uvicorn (h11), over real sockets.

The servers are subprocesses started with ``tests.support.servers``. This module is
also the served app: ``tests.test_asgi_uvicorn:app`` picks the bare
or the wrapped variant from the ``X-Variant`` request header, so one server shows
both side by side. A streamed page is held open by an ``asyncio.Event`` that the
test sets with a second request after it has read the first chunk.

After each server's tests, its log must show no traceback and no h11
"Too much data for declared Content-Length" / "too little data" error.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
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
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from px_middleware.asgi import PXAsgiMiddleware
from px_middleware.core.snippet import MARKER
from tests.support import servers
from tests.test_asgi import CONFIG, PAGE, expected_hash, identify, loader_count, px_calls

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "starlette_app"
FIRST_CHUNK = (b"<!doctype html><html><head><meta charset=utf-8><title>Live</title></head>"
               b"<body><h1>first</h1>")
REST = b"<p>second</p></body></html>"
BIG = PAGE.format(filler="b" * 200_000).encode()

# -- the served app -------------------------------------------------------------------------------
_gates: dict[str, asyncio.Event] = {}


def gate(token: str) -> asyncio.Event:
    return _gates.setdefault(token, asyncio.Event())


async def gated_page(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield FIRST_CHUNK
        await gate(request.path_params["token"]).wait()
        yield REST

    return StreamingResponse(body(), media_type="text/html; charset=utf-8")


async def gated_events(request: Request) -> Response:
    async def body() -> AsyncIterator[bytes]:
        yield b"data: <html><head>first\n\n"
        await gate(request.path_params["token"]).wait()
        yield b"data: second\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


async def release(request: Request) -> Response:
    gate(request.path_params["token"]).set()
    return PlainTextResponse("released")


async def big_with_length(request: Request) -> Response:
    """A page streamed in many chunks with a declared Content-Length."""

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(BIG), 4096):
            yield BIG[i : i + 4096]

    return StreamingResponse(body(), media_type="text/html",
                             headers={"content-length": str(len(BIG))})


ROUTES = [
    Route("/page", lambda r: HTMLResponse(PAGE.format(filler="x" * 3000))),
    Route("/big", big_with_length),
    Route("/gated/{token}", gated_page),
    Route("/events/{token}", gated_events),
    Route("/release/{token}", release, methods=["POST"]),
    Route("/json", lambda r: JSONResponse({"ok": True, "html": "<head></head>"})),
    Route("/redirect", lambda r: RedirectResponse("/page", status_code=307)),
    Route("/not-modified", lambda r: Response(status_code=304, headers={"etag": '"1"'})),
    Route("/attachment", lambda r: HTMLResponse(
        PAGE.format(filler="a"), headers={"content-disposition": "attachment; filename=a.html"})),
    Route("/css", lambda r: FileResponse(EXAMPLE / "static" / "style.css")),
    Route("/html-file", lambda r: FileResponse(EXAMPLE / "templates" / "base.html",
                                               media_type="text/html")),
]


def _variant(px: bool, gzip_at: str | None) -> Starlette:
    middleware = [Middleware(GZipMiddleware, minimum_size=100)] if gzip_at == "outside" else []
    if px:
        middleware.append(Middleware(PXAsgiMiddleware, config=CONFIG, identify=identify))
    if gzip_at == "inside":
        middleware.append(Middleware(GZipMiddleware, minimum_size=100))
    return Starlette(routes=ROUTES, middleware=middleware)


VARIANTS = {
    "bare": _variant(False, None),
    "px": _variant(True, None),
    "bare-gzip": _variant(False, "inside"),
    "px-gzip-inside": _variant(True, "inside"),
    "px-gzip-outside": _variant(True, "outside"),
}


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    variant = "px"
    for name, value in scope.get("headers", []):
        if name == b"x-variant":
            variant = value.decode()
    await VARIANTS[variant](scope, receive, send)


# -- the server ------------------------------------------------------------------------------------
@contextmanager
def uvicorn(target: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """Run ``uvicorn target`` (h11, one worker); yield its URL; then check what it logged."""
    with servers.uvicorn(target, "--http", "h11", "--no-access-log", "--log-level", "info",
                         env=env) as server:
        yield server.url
        log = server.log()  # read before the server stops and its log file goes
    assert "Application startup complete" in log, log
    for problem in ("Traceback", "Exception in ASGI application", "LocalProtocolError",
                    "Content-Length", "too little data", "Too much data", "ERROR"):
        assert problem not in log, log


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with uvicorn("tests.test_asgi_uvicorn:app") as url:
        yield url


def http(base: str) -> httpx.Client:
    # The timeout only turns a hang (a held chunk) into a failure; nothing is timed.
    return httpx.Client(base_url=base, timeout=30)


def raw_response(c: httpx.Client, path: str, variant: str,
                 headers: dict[str, str] | None = None,
                 method: str = "GET") -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    request_headers = {"x-variant": variant, "accept-encoding": "identity", **(headers or {})}
    with c.stream(method, path, headers=request_headers) as response:
        body = b"".join(response.iter_raw())
    # Date is the only header that may differ between two responses of one app.
    raw = [(k, v) for k, v in response.headers.raw if k.lower() != b"date"]
    return response.status_code, raw, body


# -- identified and anonymous pages ---------------------------------------------------------------
def test_identified_page_over_http(server: str) -> None:
    with http(server) as c:
        response = c.get("/page", headers={"x-user": "alice"})
    assert response.status_code == 200
    assert loader_count(response.text) == 1 and response.text.count(MARKER) == 1
    identify_call = px_calls(response.text)[0]
    assert identify_call[1]["id"] == "alice"
    assert identify_call[1]["userHash"] == expected_hash("alice")
    assert identify_call[2]["id"] == "acme"
    assert int(response.headers["content-length"]) == len(response.content)


def test_anonymous_page_over_http(server: str) -> None:
    with http(server) as c:
        response = c.get("/page")
    assert loader_count(response.text) == 1
    assert px_calls(response.text) == []


@pytest.mark.parametrize("path", ["/big", "/html-file"])
def test_content_length_is_consistent_over_many_chunks(server: str, path: str) -> None:
    with http(server) as c:
        status, headers, body = raw_response(c, path, "px", {"x-user": "alice"})
    assert status == 200
    assert int(dict(headers)[b"content-length"]) == len(body)
    assert body.count(MARKER.encode()) == 1


def test_gzip_outside_ours_over_http(server: str) -> None:
    with http(server) as c:
        status, headers, body = raw_response(c, "/page", "px-gzip-outside",
                                             {"x-user": "bob", "accept-encoding": "gzip"})
    assert status == 200
    assert dict(headers)[b"content-encoding"] == b"gzip"
    html = gzip.decompress(body).decode()
    assert px_calls(html)[0][1]["userHash"] == expected_hash("bob")


# -- byte-identical responses ---------------------------------------------------------------------
CASES: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/json", {}),
    ("GET", "/redirect", {}),
    ("GET", "/not-modified", {}),
    ("HEAD", "/page", {}),
    ("GET", "/attachment", {}),
    ("GET", "/css", {}),
    ("GET", "/html-file", {"range": "bytes=0-20"}),
    ("GET", "/page", {"x-requested-with": "XMLHttpRequest"}),
]


@pytest.mark.parametrize(("method", "path", "headers"), CASES,
                         ids=[f"{m} {p} {h}" for m, p, h in CASES])
def test_byte_identical_over_http(server: str, method: str, path: str,
                                  headers: dict[str, str]) -> None:
    headers = {**headers, "x-user": "alice"}
    with http(server) as c:
        bare = raw_response(c, path, "bare", headers, method)
        wrapped = raw_response(c, path, "px", headers, method)
    assert wrapped == bare


@pytest.mark.parametrize("path", ["/page", "/big"])
def test_gzip_inside_ours_is_byte_identical_over_http(server: str, path: str) -> None:
    headers = {"x-user": "alice", "accept-encoding": "gzip"}
    with http(server) as c:
        bare = raw_response(c, path, "bare-gzip", headers)
        wrapped = raw_response(c, path, "px-gzip-inside", headers)
    assert dict(bare[1])[b"content-encoding"] == b"gzip"
    assert wrapped == bare


# -- streaming ------------------------------------------------------------------------------------
def read_first_chunk_then_release(c: httpx.Client, path: str, token: str, marker: bytes,
                                  headers: dict[str, str]) -> tuple[bytes, bytes, Any]:
    """Read until ``marker`` arrived (the app is still blocked), then let the app finish."""
    with c.stream("GET", f"{path}/{token}", headers=headers) as response:
        chunks = response.iter_raw()
        early = b""
        while marker not in early:
            early += next(chunks)
        assert c.post(f"/release/{token}").text == "released"
        rest = b"".join(chunks)
    return early, rest, response


@pytest.mark.parametrize("variant", ["bare", "px"])
def test_streamed_page_arrives_chunk_by_chunk(server: str, variant: str) -> None:
    with http(server) as c:
        early, rest, response = read_first_chunk_then_release(
            c, "/gated", f"page-{variant}", b"<h1>first</h1>",
            {"x-variant": variant, "x-user": "alice"})
    assert b"second" not in early  # read before the app was allowed to go on
    assert "content-length" not in response.headers
    body = early + rest
    assert body.endswith(REST)
    if variant == "px":
        assert early.count(MARKER.encode()) == 1  # the snippet went out with the first chunk
        assert px_calls(body.decode())[0][1]["id"] == "alice"
    else:
        assert body == FIRST_CHUNK + REST


def test_event_stream_is_forwarded_as_it_comes(server: str) -> None:
    with http(server) as c:
        early, rest, response = read_first_chunk_then_release(
            c, "/events", "sse", b"first", {"x-user": "alice"})
    assert response.headers["content-type"].startswith("text/event-stream")
    assert early + rest == b"data: <html><head>first\n\ndata: second\n\n"


# -- the example app under uvicorn ----------------------------------------------------------------
@pytest.mark.parametrize("example", ["starlette_app", "fastapi_app"])
def test_example_login_under_uvicorn(example: str) -> None:
    env = {"PX_HMAC_SECRET": "uvicorn-secret", "PX_PRODUCT_KEY": "AP-UVICORN0000-2"}
    with uvicorn(f"examples.{example}:app", env) as url, http(url) as c:
        login = c.post("/login", data={"email": "alice@acme.test", "password": "alice"})
        account = c.get("/account")
        activity = c.get("/activity")
        css = c.get("/static/style.css")
    assert login.status_code == 303
    calls = px_calls(account.text)
    assert calls[0][1]["id"] == "1"
    assert calls[0][1]["userHash"] == expected_hash("1", "uvicorn-secret")
    assert calls[0][2]["id"] == "acme" and calls[0][2]["seats"] == 50
    assert "AP-UVICORN0000-2" in account.text
    assert activity.text.count(MARKER) == 1 and activity.text.count("<li>") == 5
    assert css.status_code == 200 and MARKER not in css.text

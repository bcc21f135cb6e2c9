"""One behavioural table, run through both adapters: WSGI and ASGI must agree.

The same tiny raw apps serve a given status, headers and body chunks on each side:
a bare PEP 3333 app under ``werkzeug.test.Client`` and a bare ASGI app under
``httpx.ASGITransport``. For every case both adapters must give the same status, body
bytes and ``Content-Length``/``Cache-Control``/``ETag``; injected bodies must be the
page with the snippet at the place the case names, and every pass-through case must be
byte-identical (status, headers, body) to the same app without the middleware.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from werkzeug.test import Client

from px_middleware import Account, Identity, PXAsgiMiddleware, PXConfig, PXWsgiMiddleware, User
from px_middleware.core.snippet import render

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from starlette.types import ASGIApp, Receive, Scope, Send

CONFIG = PXConfig("AP-TESTKEY12345-2", hmac_secret="s3cret", exclude_paths=("/static/*",))
ADA = Identity(
    User(id="u-1", email="ada@example.com", first_name="Ada"),
    Account(id="acme", name="Acme Ltd", number_of_employees=12),
)
HEAD_OPEN = b'<!DOCTYPE html>\n<html lang="en"><HEAD class="h"><meta charset="utf-8">'
PAGE = HEAD_OPEN + (
    b"<title>Caf\xc3\xa9</title><script>var s = \"</body>\";</script></HEAD>"
    b"<body><p>Hello</p></body></html>"
)
AT = len(HEAD_OPEN)  # after <head ...> and the charset meta
HTML = ("Content-Type", "text/html; charset=utf-8")
CACHING = (("ETag", '"v1"'), ("Cache-Control", "max-age=60"))
RELEVANT = ("content-length", "cache-control", "etag")


@dataclass(frozen=True)
class Case:
    """What the app answers, what the client asks, and where the snippet belongs."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = (HTML, *CACHING)
    chunks: tuple[bytes, ...] = (PAGE[:40], PAGE[40:])
    content_length: bool = True
    method: str = "GET"
    path: str = "/page"
    request_headers: dict[str, str] = field(default_factory=dict)
    user: bool = True
    #: Offset in the app's body where the snippet goes; None: the response passes through.
    insert_at: int | None = None

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def app_headers(self) -> list[tuple[str, str]]:
        headers = list(self.headers)
        if self.content_length:
            headers.append(("Content-Length", str(len(self.body))))
        return headers


def _streamed(case: Case) -> Case:
    return Case(**{**case.__dict__, "content_length": False})


_INJECT = Case(insert_at=AT)
_FRAGMENT = b"<div><p>partial</p></div>"
_LOADER = (
    b"<html><head><script async src=\"https://web-sdk.aptrinsic.com/api/aptrinsic.js?a=AP-X-2\">"
    b"</script></head><body></body></html>"
)
_SSE = (b"data: <html><head>\n\n", b"data: second\n\n")
_REDIRECT = b"<html><head></head><body>Redirecting</body></html>"

CASES: dict[str, Case] = {
    "html identified": _INJECT,
    "html identified streamed": _streamed(_INJECT),
    "anonymous": Case(insert_at=AT, user=False),
    "anonymous streamed": Case(insert_at=AT, user=False, content_length=False),
    "json": Case(headers=(("Content-Type", "application/json"),), chunks=(b'{"h": "<head>"}',)),
    "redirect 302": Case(status=302, headers=(HTML, ("Location", "/login")), chunks=(_REDIRECT,)),
    "not modified 304": Case(status=304, headers=CACHING, chunks=(), content_length=False),
    "HEAD": Case(method="HEAD"),
    "gzip": Case(headers=(HTML, ("Content-Encoding", "gzip"), *CACHING),
                 chunks=(gzip.compress(PAGE, mtime=0),)),
    "attachment": Case(headers=(HTML, ("Content-Disposition", 'attachment; filename="a.html"'))),
    "event-stream": Case(headers=(("Content-Type", "text/event-stream"),), chunks=_SSE,
                         content_length=False),
    "XHR": Case(request_headers={"X-Requested-With": "XMLHttpRequest"}),
    "excluded path": Case(path="/static/page.html"),
    "public with identity": Case(headers=(HTML, ("Cache-Control", "public, max-age=60"))),
    "no-transform": Case(headers=(HTML, ("Cache-Control", "no-transform"))),
    "fragment": Case(chunks=(_FRAGMENT,), user=False),
    "fragment streamed": Case(chunks=(_FRAGMENT,), user=False, content_length=False),
    "fragment identified": Case(chunks=(_FRAGMENT,)),
    "fragment identified streamed": Case(chunks=(_FRAGMENT,), content_length=False),
    "head split across chunks": Case(
        insert_at=AT, chunks=(*(PAGE[i : i + 1] for i in range(AT + 8)), PAGE[AT + 8 :])
    ),
    "head split across chunks streamed": Case(
        insert_at=AT, content_length=False,
        chunks=(PAGE[:47], PAGE[47:60], PAGE[60:AT - 3], PAGE[AT - 3 :]),
    ),
    "already has loader": Case(chunks=(_LOADER,), user=False),
    "already has loader streamed": Case(chunks=(_LOADER,), user=False, content_length=False),
}


# -- the raw apps ---------------------------------------------------------------------------

def identify(request: Any) -> Identity | None:
    """Werkzeug and Starlette requests both have case-insensitive ``headers.get``."""
    return ADA if request.headers.get("x-test-user") else None


def wsgi_app(case: Case) -> WSGIApplication:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        phrase = HTTPStatus(case.status).phrase
        start_response(f"{case.status} {phrase}", case.app_headers())
        chunks = () if environ["REQUEST_METHOD"] == "HEAD" else case.chunks

        def body() -> Iterator[bytes]:
            yield from chunks  # a generator: the body really streams

        return body()

    return app


def asgi_app(case: Case) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raw = [(n.lower().encode("latin-1"), v.encode("latin-1")) for n, v in case.app_headers()]
        await send({"type": "http.response.start", "status": case.status, "headers": raw})
        chunks = [] if scope["method"] == "HEAD" else list(case.chunks)
        for chunk in chunks[:-1]:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        # The last message leaves "more_body" out: absent means False.
        await send({"type": "http.response.body", "body": chunks[-1] if chunks else b""})

    return app


@dataclass
class Result:
    status: int
    body: bytes
    headers: list[tuple[str, str]]  # lower-case names, in order, duplicates kept

    def relevant(self) -> dict[str, list[str]]:
        return {name: [v for n, v in self.headers if n == name] for name in RELEVANT}


def request_headers(case: Case) -> dict[str, str]:
    return {**case.request_headers, **({"X-Test-User": "1"} if case.user else {})}


def run_wsgi(case: Case, wrapped: bool) -> Result:
    app = wsgi_app(case)
    if wrapped:
        app = PXWsgiMiddleware(app, CONFIG, identify=identify)
    response = Client(app).open(case.path, method=case.method, headers=request_headers(case))
    headers = [(name.lower(), value) for name, value in response.headers.to_wsgi_list()]
    return Result(response.status_code, response.get_data(), headers)


def run_asgi(case: Case, wrapped: bool) -> Result:
    app = asgi_app(case)
    if wrapped:
        app = PXAsgiMiddleware(app, CONFIG, identify=identify)

    async def fetch() -> Result:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            request = client.build_request(case.method, case.path, headers=request_headers(case))
            response = await client.send(request, stream=True)
            body = b"".join([chunk async for chunk in response.aiter_raw()])  # no decoding
            await response.aclose()
        headers = [(n.decode("latin-1").lower(), v.decode("latin-1"))
                   for n, v in response.headers.raw]
        return Result(response.status_code, body, headers)

    return asyncio.run(fetch())


def expected_injected(case: Case) -> tuple[bytes, dict[str, list[str]]]:
    """Body and relevant headers worked out from the case, not from either adapter."""
    assert case.insert_at is not None
    snippet = render(CONFIG, ADA if case.user else None)
    body = case.body[: case.insert_at] + snippet + case.body[case.insert_at :]
    return body, {
        "content-length": [str(len(body))] if case.content_length else [],
        "cache-control": ["private, max-age=60" if case.user else "max-age=60"],
        "etag": ['W/"v1"'],
    }


@pytest.mark.parametrize("case", [pytest.param(c, id=name) for name, c in CASES.items()])
def test_both_adapters_agree(case: Case) -> None:
    wsgi, asgi = run_wsgi(case, wrapped=True), run_asgi(case, wrapped=True)
    assert (wsgi.status, wsgi.body, wsgi.relevant()) == (asgi.status, asgi.body, asgi.relevant())
    assert wsgi.status == case.status
    if case.insert_at is None:
        # Pass-through: exactly what the app sends without the middleware.
        for result, bare in ((wsgi, run_wsgi(case, False)), (asgi, run_asgi(case, False))):
            assert (result.status, result.headers, result.body) == (
                bare.status, bare.headers, bare.body
            )
        assert wsgi.body == (b"" if case.method == "HEAD" else case.body)
    else:
        body, relevant = expected_injected(case)
        assert wsgi.body == body
        assert wsgi.relevant() == relevant
        assert asgi.relevant() == relevant


def test_the_table_exercises_both_outcomes() -> None:
    injected = [name for name, case in CASES.items() if case.insert_at is not None]
    assert len(injected) >= 4 and len(CASES) - len(injected) >= 10


@pytest.mark.parametrize("run", [run_wsgi, run_asgi])
@pytest.mark.parametrize(
    ("case", "reason"),
    [
        (Case(headers=(("Content-Type", "application/json"),), chunks=(b"{}",)),
         "media type 'application/json' is not HTML"),
        (Case(headers=(), chunks=(b"x",)), "media type 'missing' is not HTML"),
        (Case(status=404), "status 404"),
        (Case(method="POST"), "method POST"),
    ],
)
def test_every_response_left_alone_says_why_in_the_debug_log(
    run: Any, case: Case, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The troubleshooting section's promise: turn on the debug log, and a response
    that passed through untouched names its reason, whichever path it took."""
    with caplog.at_level("DEBUG", logger="px_middleware"):
        run(case, True)
    assert f"px_middleware: not injected: {reason}" in [
        r.getMessage()[: len("px_middleware: not injected: ") + len(reason)]
        for r in caplog.records
    ]

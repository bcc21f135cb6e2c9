"""Starlette conveniences: zero-code identification, per-request switches, ordering, the example."""

from __future__ import annotations

import calendar
import datetime as dt
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    SimpleUser,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket

from px_middleware import Account, Identity, PXConfig, User
from px_middleware.asgi import PXAsgiMiddleware
from px_middleware.core.snippet import MARKER
from px_middleware.starlette import (
    default_identify,
    exempt,
    find_middleware,
    set_identity,
    set_user,
)
from tests.test_asgi import (
    CONFIG,
    PAGE,
    capture,
    client,
    expected_hash,
    loader_count,
    px_calls,
)

pytestmark = pytest.mark.anyio

HTML = PAGE.format(filler="hello")


# -- a configurable app ---------------------------------------------------------------------------
class EmailUser(BaseUser):
    """A user whose ``identity`` is left abstract, as in starlette's ``BaseUser``."""

    def __init__(self, name: str, email: str) -> None:
        self.name, self.email = name, email
        self.first_name = name.split()[0]

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.name


class RichUser(SimpleUser):
    """An app user that knows its PX identity, account included."""

    def px_identity(self) -> Identity:
        return Identity(User(id=self.username, first_name="Rich"),
                        Account(id="globex", custom={"seats": 12}))


USERS: dict[str, BaseUser] = {
    "simple": SimpleUser("carol"),
    "email": EmailUser("Dora Display", "dora@acme.test"),
    "rich": RichUser("rich"),
}


class HeaderBackend(AuthenticationBackend):
    """``X-Login: simple`` logs in ``USERS["simple"]``; stands in for a real backend."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        user = USERS.get(conn.headers.get("x-login", ""))
        return None if user is None else (AuthCredentials(["authenticated"]), user)


async def page(request: Request) -> Response:
    return HTMLResponse(HTML)


async def login(request: Request) -> Response:
    request.session["user_id"] = request.query_params["id"]
    return PlainTextResponse("ok")


async def state_identity(request: Request) -> Response:
    set_identity(request, Identity(User(id="from-state"), Account(id="acme")))
    return HTMLResponse(HTML)


async def state_anonymous(request: Request) -> Response:
    set_identity(request, None)
    return HTMLResponse(HTML)


async def with_set_user(request: Request) -> Response:
    set_user(request, plan="pro", seats=3)
    set_user(request, renewal=dt.date(2026, 1, 1), blob=object())
    return HTMLResponse(HTML)


async def with_nonce(request: Request) -> Response:
    request.state.csp_nonce = request.query_params.get("nonce", "r4nd0m+Nonce/=")
    return HTMLResponse(HTML)


async def exempted(request: Request) -> Response:
    exempt(request)
    return HTMLResponse(HTML)


async def bad_attribute(request: Request) -> Response:
    set_identity(request, Identity(User(id="u1", custom={"blob": object(), "ok": 1},
                                        score=float("nan"))))
    return HTMLResponse(HTML)


async def websocket_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("echo: " + await websocket.receive_text())
    await websocket.close()


ROUTES = [
    Route("/page", page),
    Route("/login", login),
    Route("/state", state_identity),
    Route("/state-anonymous", state_anonymous),
    Route("/set-user", with_set_user),
    Route("/nonce", with_nonce),
    Route("/exempt", exempted),
    Route("/bad-attribute", bad_attribute),
    WebSocketRoute("/ws", websocket_echo),
]

SESSION = Middleware(SessionMiddleware, secret_key="test-session-secret")
AUTH = Middleware(AuthenticationMiddleware, backend=HeaderBackend())


def px(**kwargs: Any) -> Middleware:
    return Middleware(PXAsgiMiddleware, config=kwargs.pop("config", CONFIG), **kwargs)


def make_app(*middleware: Middleware, routes: list[Any] = ROUTES, **kwargs: Any) -> Starlette:
    return Starlette(routes=routes, middleware=list(middleware or (px(), SESSION, AUTH)),
                     **kwargs)


def find_px(app: ASGIApp) -> PXAsgiMiddleware:
    middleware = find_middleware(app)
    assert middleware is not None
    return middleware


def test_find_middleware() -> None:
    app = make_app()
    assert find_middleware(app) is None  # the stack is built on the first request
    assert find_middleware(make_app(SESSION)) is None
    wrapper = PXAsgiMiddleware(make_app(SESSION), CONFIG)
    assert find_middleware(wrapper) is wrapper


async def get(app: ASGIApp, path: str, **headers: str) -> httpx.Response:
    async with client(app) as c:
        return await c.get(path, headers={k.replace("_", "-"): v for k, v in headers.items()})


def identify_user(response: httpx.Response) -> dict[str, Any]:
    calls = px_calls(response.text)
    assert [c[0] for c in calls][:1] == ["identify"], calls
    user: dict[str, Any] = calls[0][1]
    return user


# -- zero-code identification -----------------------------------------------------------------
async def test_authenticated_simple_user() -> None:
    user = identify_user(await get(make_app(), "/page", x_login="simple"))
    assert user == {"id": "carol", "userHash": expected_hash("carol")}


async def test_user_without_identity_falls_back_to_display_name_and_has_email() -> None:
    user = identify_user(await get(make_app(), "/page", x_login="email"))
    assert user == {"id": "Dora Display", "email": "dora@acme.test", "firstName": "Dora",
                    "userHash": expected_hash("Dora Display")}


async def test_user_object_with_px_identity_gives_the_account() -> None:
    calls = px_calls((await get(make_app(), "/page", x_login="rich")).text)
    assert calls == [["identify",
                      {"id": "rich", "firstName": "Rich", "userHash": expected_hash("rich")},
                      {"id": "globex", "seats": 12}]]


async def test_unauthenticated_user_is_anonymous() -> None:
    response = await get(make_app(), "/page")
    assert loader_count(response.text) == 1
    assert px_calls(response.text) == []


async def test_session_user_id() -> None:
    app = make_app(px(), SESSION)  # no AuthenticationMiddleware: scope["user"] is absent
    async with client(app) as c:
        assert (await c.get("/page")).text.count(MARKER) == 1
        assert px_calls((await c.get("/page")).text) == []
        await c.get("/login?id=u-42")
        response = await c.get("/page")
    assert identify_user(response) == {"id": "u-42", "userHash": expected_hash("u-42")}


async def test_session_is_not_marked_accessed_by_identification() -> None:
    """Reading the session for PX must not add ``Vary: Cookie`` to every page."""
    app = make_app(SESSION, px())  # ours inside: runs before SessionMiddleware's send
    async with client(app) as c:
        await c.get("/login?id=u-42")
        response = await c.get("/page")
    assert identify_user(response)["id"] == "u-42"
    assert "vary" not in response.headers


async def test_state_identity_wins_over_the_authenticated_user() -> None:
    response = await get(make_app(), "/state", x_login="simple")
    assert px_calls(response.text)[0][1:] == [
        {"id": "from-state", "userHash": expected_hash("from-state")}, {"id": "acme"}]


async def test_state_identity_none_means_anonymous() -> None:
    response = await get(make_app(), "/state-anonymous", x_login="simple")
    assert loader_count(response.text) == 1
    assert px_calls(response.text) == []


def test_default_identify_reads_without_side_effects() -> None:
    scope: dict[str, Any] = {"type": "http", "headers": []}
    assert default_identify(Request(scope)) is None
    assert "state" not in scope  # Request.state would have created it


async def test_async_identify() -> None:
    async def identify(request: Request) -> User:
        return User(id="async-" + request.url.path.strip("/"))

    response = await get(make_app(px(identify=identify)), "/page")
    assert identify_user(response)["id"] == "async-page"


async def test_identify_raising_leaves_the_page_unchanged() -> None:
    def identify(request: Request) -> User:
        raise RuntimeError("directory service down")

    app = make_app(px(identify=identify))
    wrapped = await capture(app, "GET", "/page")
    bare = await capture(make_app(SESSION), "GET", "/page")
    assert wrapped == bare
    assert wrapped[0]["status"] == 200
    assert find_px(app).counters.snapshot()["identify_errors"] == 1


async def test_identify_cannot_read_the_request_body() -> None:
    """The body belongs to the app: reading it in identify fails, the page is left alone."""
    async def identify(request: Request) -> User:
        return User(id=(await request.body()).decode())

    async def echo(request: Request) -> Response:
        return HTMLResponse(PAGE.format(filler=(await request.body()).decode()))

    app = Starlette(routes=[Route("/echo", echo, methods=["GET"])],
                    middleware=[px(identify=identify)])
    async with client(app) as c:
        response = await c.request("GET", "/echo", content=b"app-body")
    assert response.text == PAGE.format(filler="app-body")
    assert find_px(app).counters.snapshot()["identify_errors"] == 1


# -- set_user, nonce, opt-out, bad attributes --------------------------------------------------
async def test_set_user_adds_a_typed_set_call_and_drops_what_px_cannot_store() -> None:
    app = make_app()
    response = await get(app, "/set-user", x_login="simple")
    assert response.status_code == 200
    calls = px_calls(response.text)
    assert calls[1] == ["set", "user", {"plan": "pro", "seats": 3, "renewal": 1767225600000}]
    assert find_px(app).counters.snapshot()["attributes_dropped"] == 1


async def test_set_user_is_ignored_for_anonymous_visitors() -> None:
    assert px_calls((await get(make_app(), "/set-user")).text) == []


async def test_nonce_from_request_state() -> None:
    response = await get(make_app(), "/nonce")
    assert f'<script {MARKER} nonce="r4nd0m+Nonce/=">' in response.text


async def test_invalid_nonce_in_state_leaves_the_page_alone() -> None:
    bare = await capture(make_app(SESSION), "GET", '/nonce?nonce="><script>')
    assert await capture(make_app(), "GET", '/nonce?nonce="><script>') == bare


async def test_configured_nonce_callable_missing_nonce_fails_closed() -> None:
    app = make_app(px(csp_nonce=lambda request: None))
    assert await capture(app, "GET", "/page") == await capture(make_app(SESSION), "GET", "/page")


async def test_optional_nonce_callable_returning_none_still_injects() -> None:
    app = make_app(px(csp_nonce=lambda request: None, nonce_required=False))
    response = await get(app, "/page")
    assert f"<script {MARKER}>" in response.text


async def test_configured_nonce_callable() -> None:
    app = make_app(px(csp_nonce=lambda request: "ZmFrZQ=="))
    assert f'<script {MARKER} nonce="ZmFrZQ==">' in (await get(app, "/page")).text


async def test_exempt_route_is_untouched() -> None:
    bare = await capture(make_app(SESSION, AUTH), "GET", "/exempt", {"x-login": "simple"})
    assert await capture(make_app(), "GET", "/exempt", {"x-login": "simple"}) == bare


async def test_excluded_path_is_untouched() -> None:
    config = PXConfig(product_key=CONFIG.product_key, exclude_paths=("/pa*",))
    bare = await capture(make_app(SESSION), "GET", "/page")
    assert await capture(make_app(px(config=config)), "GET", "/page") == bare


async def test_bad_attribute_is_dropped_and_counted_never_a_500() -> None:
    app = make_app()
    response = await get(app, "/bad-attribute")
    assert response.status_code == 200
    assert identify_user(response) == {"id": "u1", "ok": 1, "userHash": expected_hash("u1")}
    assert find_px(app).counters.snapshot()["attributes_dropped"] == 2


async def test_identity_of_the_wrong_type_leaves_the_page_alone() -> None:
    async def wrong(request: Request) -> Response:
        set_identity(request, {"id": "dict-is-not-an-identity"})  # type: ignore[arg-type]
        return HTMLResponse(HTML)

    app = make_app(px(), routes=[Route("/wrong", wrong)])
    response = await get(app, "/wrong")
    assert response.status_code == 200
    assert response.text == HTML
    assert find_px(app).counters.snapshot()["identify_errors"] == 1


# -- structure: nesting, websocket, lifespan ---------------------------------------------------
async def test_nested_mount_with_two_middlewares_injects_once() -> None:
    inner = Starlette(routes=ROUTES, middleware=[px(), AUTH])
    outer = Starlette(routes=[Mount("/sub", inner)], middleware=[px(), SESSION, AUTH])
    response = await get(outer, "/sub/page", x_login="simple")
    assert response.text.count(MARKER) == 1
    assert loader_count(response.text) == 1
    assert identify_user(response)["id"] == "carol"
    assert find_px(outer).counters.snapshot()["injected"] == 1
    assert find_px(inner).counters.snapshot() == {}


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")
def test_websocket_and_lifespan_pass_through() -> None:
    from starlette.testclient import TestClient

    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        yield {"db": "connected"}
        events.append("shutdown")

    async def uses_state(request: Request) -> Response:
        return HTMLResponse(PAGE.format(filler=request.state.db))

    routes = [*ROUTES, Route("/state-db", uses_state)]
    app = make_app(px(), SESSION, AUTH, routes=routes, lifespan=lifespan)
    with TestClient(app) as c:
        assert events == ["startup"]
        with c.websocket_connect("/ws", headers={"x-login": "simple"}) as ws:
            ws.send_text("hi")
            assert ws.receive_text() == "echo: hi"
        page = c.get("/state-db", headers={"x-login": "simple"})
        assert "<p>connected</p>" in page.text
        assert page.text.count(MARKER) == 1
    assert events == ["startup", "shutdown"]


# -- middleware ordering (docs/starlette.md) -----------------------------------------------------
ORDERS: dict[str, Callable[[], list[Middleware]]] = {
    "px-outside-session-and-auth": lambda: [px(), SESSION, AUTH],
    "px-between": lambda: [SESSION, px(), AUTH],
    "px-inside-session-and-auth": lambda: [SESSION, AUTH, px()],
}


@pytest.mark.parametrize("order", ORDERS)
async def test_user_and_session_are_visible_wherever_px_sits(order: str) -> None:
    """identify() runs lazily at response start, so scope["user"]/["session"] are set."""
    app = make_app(*ORDERS[order]())
    async with client(app) as c:
        by_auth = await c.get("/page", headers={"x-login": "simple"})
        await c.get("/login?id=u-7")
        by_session = await c.get("/page")
    assert identify_user(by_auth)["id"] == "carol"
    assert identify_user(by_session)["id"] == "u-7"


async def test_px_outside_auth_also_sees_the_responses_auth_makes() -> None:
    def on_error(conn: HTTPConnection, exc: Exception) -> Response:
        return HTMLResponse(PAGE.format(filler="please log in again"))

    class Failing(AuthenticationBackend):
        async def authenticate(self, conn: HTTPConnection) -> None:
            from starlette.authentication import AuthenticationError

            raise AuthenticationError("expired")

    auth = Middleware(AuthenticationMiddleware, backend=Failing(), on_error=on_error)
    outside = await get(make_app(px(), SESSION, auth), "/page")
    inside = await get(make_app(SESSION, auth, px()), "/page")
    assert loader_count(outside.text) == 1
    assert loader_count(inside.text) == 0


# -- the example app ---------------------------------------------------------------------------
def epoch_ms(year: int, month: int, day: int) -> int:
    """Midnight UTC in epoch milliseconds, computed without px_middleware."""
    return calendar.timegm((year, month, day, 0, 0, 0)) * 1000


def test_demo_users_are_the_flask_examples() -> None:
    """The same person is the same PX user and account in every example."""
    from examples.flask_app.db import ACCOUNTS, USERS, AccountRow, AppUser
    from examples.flask_app.px_setup import identity_of
    from examples.starlette_app.users import USERS as STARLETTE_USERS
    from examples.starlette_app.users import authenticate

    accounts = {row[0]: AccountRow(*row[:5], dt.date.fromisoformat(row[5])) for row in ACCOUNTS}
    for number, (email, password, first, last, role, signed_up, account) in enumerate(USERS, 1):
        flask_user = AppUser(number, email, first, last, role, dt.date.fromisoformat(signed_up),
                             accounts[account])
        ours = authenticate(email, password)
        assert ours is not None and ours is STARLETTE_USERS[str(number)]
        assert ours.px_identity() == identity_of(flask_user)
    assert len(STARLETTE_USERS) == len(USERS)
    assert authenticate("alice@acme.test", "bob") is None
@pytest.fixture
def example_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PX_HMAC_SECRET", "example-secret")
    monkeypatch.setenv("PX_PRODUCT_KEY", "AP-EXAMPLE0000-2")
    return "example-secret"


async def test_example_login_identifies_alice_with_her_account(example_env: str) -> None:
    from examples.starlette_app import create_app

    async with client(create_app()) as c:
        anonymous = await c.get("/")
        failed = await c.post("/login", data={"email": "alice@acme.test", "password": "nope"})
        login = await c.post("/login", data={"email": "alice@acme.test", "password": "alice"})
        account = await c.get("/account")
        home = await c.get("/")
        await c.post("/logout")
        after = await c.get("/")
    assert loader_count(anonymous.text) == 1 and px_calls(anonymous.text) == []
    assert failed.status_code == 401 and "Wrong email or password" in failed.text
    assert login.status_code == 303 and login.headers["location"].endswith("/account")
    assert "AP-EXAMPLE0000-2" in account.text
    calls = px_calls(account.text)
    assert calls[0] == [
        "identify",
        {"id": "1", "email": "alice@acme.test", "firstName": "Alice", "lastName": "Anders",
         "role": "Admin", "accountId": "acme", "signUpDate": epoch_ms(2024, 2, 12),
         "userHash": expected_hash("1", example_env)},
        {"id": "acme", "name": "Acme Corporation", "industry": "Manufacturing",
         "plan": "Enterprise", "contractEnd": epoch_ms(2027, 3, 31), "seats": 50},
    ]
    assert calls[1][:2] == ["set", "user"] and isinstance(calls[1][2]["lastAccountView"], int)
    assert identify_user(home)["id"] == "1"
    assert px_calls(after.text) == []


async def test_example_non_pages_are_byte_identical(example_env: str) -> None:
    from examples.starlette_app import create_app

    for path, headers in [("/api/me", {}), ("/price-list.csv", {}), ("/static/style.css", {}),
                          ("/", {"accept-encoding": "gzip"}), ("/account", {})]:
        bare = await capture(create_app(px=False), "GET", path, headers)
        wrapped = await capture(create_app(), "GET", path, headers)
        if path == "/":  # GZip is outside PX: the page is injected, then compressed
            assert wrapped[0]["status"] == 200
            assert dict(wrapped[0]["headers"])[b"content-encoding"] == b"gzip"
            continue
        assert wrapped == bare, path


async def test_example_activity_page_streams_with_the_snippet(
    example_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import examples.starlette_app.site as site
    from examples.starlette_app import create_app

    monkeypatch.setattr(site, "ACTIVITY_DELAY", 0)
    monkeypatch.setattr(site.activity_stream, "__defaults__", (0,))
    sent = await capture(create_app(), "GET", "/activity")
    bodies = [m["body"] for m in sent[1:]]
    assert len(bodies) > 5  # streamed, one message per row
    assert MARKER.encode() in bodies[0]
    html = b"".join(bodies).decode()
    assert html.count(MARKER) == 1 and len(re.findall("<li>", html)) == 5

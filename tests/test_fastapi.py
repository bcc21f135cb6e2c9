"""FastAPI: the PX identity from a ``Depends``, per-route switches, and the example app."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse

from px_middleware import Account, Identity, User
from px_middleware.asgi import PXAsgiMiddleware
from px_middleware.core.snippet import MARKER
from px_middleware.starlette import exempt, px_identity_dependency, set_user
from tests.test_asgi import CONFIG, PAGE, capture, client, expected_hash, loader_count, px_calls
from tests.test_starlette import epoch_ms

pytestmark = pytest.mark.anyio

HTML = PAGE.format(filler="fastapi")
DB = {"t-1": ("alice", "acme"), "t-2": ("bob", "globex")}


def current_user(request: Request) -> tuple[str, str] | None:
    """The app's own optional-user dependency (a token header stands in for auth)."""
    return DB.get(request.headers.get("x-token", ""))


async def px_identity(
    user: Annotated[tuple[str, str] | None, Depends(current_user)],
) -> Identity | None:
    if user is None:
        return None
    user_id, account_id = user
    return Identity(User(id=user_id, sign_up_date=dt.date(2024, 5, 1)),
                    Account(id=account_id, custom={"seats": 5}))


def make_app(*, px: bool = True) -> FastAPI:
    app = FastAPI(dependencies=[Depends(px_identity_dependency(px_identity))])

    @app.get("/page", response_class=HTMLResponse)
    def page() -> str:
        return HTML

    @app.get("/exempt", response_class=HTMLResponse, dependencies=[Depends(exempt)])
    def exempted() -> str:
        return HTML

    @app.get("/plan", response_class=HTMLResponse)
    async def plan(request: Request) -> str:
        set_user(request, plan="pro", trialEnds=dt.date(2026, 2, 1))
        return HTML

    @app.get("/who")
    def who(identity: Annotated[Identity | None, Depends(px_identity)]) -> dict[str, Any]:
        return {"id": None if identity is None else identity.user.id}

    @app.get("/bad", response_class=HTMLResponse)
    def bad(request: Request) -> str:
        request.state.px_identity = Identity(User(id="u9", custom={"when": dt.timedelta(1)}))
        return HTML

    if px:
        app.add_middleware(PXAsgiMiddleware, config=CONFIG)
    return app


async def test_identity_from_an_app_level_dependency() -> None:
    async with client(make_app()) as c:
        response = await c.get("/page", headers={"x-token": "t-1"})
    assert response.text.count(MARKER) == 1
    assert px_calls(response.text) == [[
        "identify",
        {"id": "alice", "signUpDate": 1714521600000, "userHash": expected_hash("alice")},
        {"id": "acme", "seats": 5},
    ]]


async def test_anonymous_when_the_dependency_returns_none() -> None:
    async with client(make_app()) as c:
        response = await c.get("/page")
    assert loader_count(response.text) == 1
    assert px_calls(response.text) == []


async def test_dependency_value_is_usable_by_routes_and_json_is_untouched() -> None:
    headers = {"x-token": "t-2"}
    assert await capture(make_app(), "GET", "/who", headers) == await capture(
        make_app(px=False), "GET", "/who", headers)
    async with client(make_app()) as c:
        assert (await c.get("/who", headers=headers)).json() == {"id": "bob"}


async def test_exempt_as_a_route_dependency() -> None:
    headers = {"x-token": "t-1"}
    bare = await capture(make_app(px=False), "GET", "/exempt", headers)
    assert await capture(make_app(), "GET", "/exempt", headers) == bare


async def test_set_user_from_a_route() -> None:
    async with client(make_app()) as c:
        response = await c.get("/plan", headers={"x-token": "t-1"})
    assert px_calls(response.text)[1] == ["set", "user",
                                          {"plan": "pro", "trialEnds": 1769904000000}]


async def test_bad_attribute_is_dropped_never_a_500() -> None:
    async with client(make_app()) as c:
        response = await c.get("/bad")
    assert response.status_code == 200
    assert px_calls(response.text)[0][1] == {"id": "u9", "userHash": expected_hash("u9")}


# -- the example app ---------------------------------------------------------------------------
async def test_example_identity_comes_from_the_dependency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PX_HMAC_SECRET", "fastapi-secret")
    from examples.fastapi_app import create_app

    async with client(create_app()) as c:
        anonymous = await c.get("/")
        login = await c.post("/login", data={"email": "bob@globex.test", "password": "bob"})
        account = await c.get("/account")
        me = await c.get("/api/me")
        await c.post("/logout")
        after = await c.get("/account", follow_redirects=True)
    assert loader_count(anonymous.text) == 1 and px_calls(anonymous.text) == []
    assert login.status_code == 303
    calls = px_calls(account.text)
    assert calls[0] == [
        "identify",
        {"id": "3", "email": "bob@globex.test", "firstName": "Bob", "lastName": "Brown",
         "role": "Owner", "accountId": "globex", "signUpDate": epoch_ms(2025, 1, 20),
         "userHash": expected_hash("3", "fastapi-secret")},
        {"id": "globex", "name": "Globex", "industry": "Energy", "plan": "Growth",
         "contractEnd": epoch_ms(2026, 12, 31), "seats": 12},
    ]
    assert calls[1][:2] == ["set", "user"]
    assert me.json() == {"authenticated": True, "id": "3", "email": "bob@globex.test",
                         "account": "globex"}
    assert "Log in" in after.text and px_calls(after.text) == []


async def test_example_json_and_file_are_byte_identical() -> None:
    from examples.fastapi_app import create_app

    for path in ("/api/me", "/price-list.csv", "/static/style.css", "/openapi.json"):
        bare = await capture(create_app(px=False), "GET", path)
        assert await capture(create_app(), "GET", path) == bare, path

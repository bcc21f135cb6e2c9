"""The Starlette example: sessions, AuthenticationMiddleware, and PX with zero code.

    uvicorn examples.starlette_app:app

``PXAsgiMiddleware`` is given no ``identify``: ``default_identify`` finds the
logged-in ``DemoUser`` in ``scope["user"]`` and uses its ``px_identity()``.
"""

from __future__ import annotations

import datetime as dt

from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from examples.starlette_app.site import (
    PRICE_LIST,
    SESSION_SECRET,
    STATIC_DIR,
    activity_stream,
    px_config,
    templates,
)
from examples.starlette_app.users import USERS, DemoUser, authenticate
from px_middleware.asgi import PXAsgiMiddleware
from px_middleware.starlette import set_user


class SessionBackend(AuthenticationBackend):
    """The user whose id the login view stored in the session."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        user = USERS.get(conn.session.get("user_id", ""))
        if user is None:
            return None
        return AuthCredentials(["authenticated"]), user


def current_user(request: Request) -> DemoUser | None:
    user = request.user
    return user if isinstance(user, DemoUser) else None


def render(request: Request, name: str, status_code: int = 200, **context: object) -> Response:
    context.update(user=current_user(request), framework="Starlette")
    return templates.TemplateResponse(request, name, context, status_code=status_code)


async def home(request: Request) -> Response:
    return render(request, "index.html")


async def login(request: Request) -> Response:
    if request.method == "GET":
        return render(request, "login.html")
    form = await request.form()
    email, password = str(form.get("email", "")), str(form.get("password", ""))
    user = authenticate(email, password)
    if user is None:
        return render(request, "login.html", 401, error="Wrong email or password.", email=email)
    request.session["user_id"] = user.id
    return RedirectResponse(request.url_for("account"), status_code=303)


async def logout(request: Request) -> Response:
    request.session.clear()
    return RedirectResponse(request.url_for("home"), status_code=303)


async def account(request: Request) -> Response:
    if current_user(request) is None:
        return RedirectResponse(request.url_for("login"), status_code=303)
    # Adds aptrinsic("set", "user", {...}) after the identify on this page only.
    set_user(request, lastAccountView=dt.datetime.now(dt.timezone.utc))
    return render(request, "account.html")


async def activity(request: Request) -> Response:
    page = templates.get_template("activity.html").render(
        request=request, user=current_user(request), framework="Starlette"
    )
    return StreamingResponse(activity_stream(page), media_type="text/html; charset=utf-8")


async def me(request: Request) -> Response:
    user = current_user(request)
    if user is None:
        return JSONResponse({"authenticated": False})
    return JSONResponse(
        {"authenticated": True, "id": user.id, "email": user.email, "account": user.account.id}
    )


async def export(request: Request) -> Response:
    return FileResponse(PRICE_LIST, media_type="text/csv", filename="price-list.csv")


routes = [
    Route("/", home, name="home"),
    Route("/login", login, methods=["GET", "POST"], name="login"),
    Route("/logout", logout, methods=["POST"], name="logout"),
    Route("/account", account, name="account"),
    Route("/activity", activity, name="activity"),
    Route("/api/me", me, name="me"),
    Route("/price-list.csv", export, name="export"),
    Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
]


def create_app(*, px: bool = True) -> Starlette:
    """The example app; ``px=False`` is the same app without PX (tests, benchmark)."""
    # First in the list is outermost. GZip outside PX, so PX sees plain HTML; PX
    # outside Session/Authentication, so it sees every response they produce (the
    # user is looked up lazily, at response start, when scope["user"] is set).
    middleware = [Middleware(GZipMiddleware, minimum_size=1000)]
    if px:
        middleware.append(Middleware(PXAsgiMiddleware, config=px_config()))
    middleware += [
        Middleware(SessionMiddleware, secret_key=SESSION_SECRET, session_cookie="demo_session"),
        Middleware(AuthenticationMiddleware, backend=SessionBackend()),
    ]
    return Starlette(routes=routes, middleware=middleware)


app = create_app()
#: The same app without PX, for side-by-side tests and the benchmark.
bare_app = create_app(px=False)

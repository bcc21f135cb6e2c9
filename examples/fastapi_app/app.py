"""The FastAPI example: the PX identity comes from a dependency.

    uvicorn examples.fastapi_app:app

``current_user`` is the app's own dependency; ``px_identity`` turns its result into
a PX ``Identity``; ``px_identity_dependency`` stores that for the middleware. Declared
once on the app, it runs for every route.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.middleware.gzip import GZipMiddleware
from starlette.middleware.sessions import SessionMiddleware
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
from px_middleware import Identity
from px_middleware.asgi import PXAsgiMiddleware
from px_middleware.starlette import px_identity_dependency, set_user


def current_user(request: Request) -> DemoUser | None:
    """The app's own notion of the logged-in user (here: an id in the session)."""
    return USERS.get(request.session.get("uid", ""))


def px_identity(user: Annotated[DemoUser | None, Depends(current_user)]) -> Identity | None:
    return None if user is None else user.px_identity()


CurrentUser = Annotated[DemoUser | None, Depends(current_user)]


def render(request: Request, name: str, user: DemoUser | None, status_code: int = 200,
           **context: object) -> Response:
    context.update(user=user, framework="FastAPI")
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def create_app(*, px: bool = True) -> FastAPI:
    """The example app; ``px=False`` leaves out the middleware (tests, benchmark)."""
    app = FastAPI(
        title="PX middleware FastAPI demo",
        dependencies=[Depends(px_identity_dependency(px_identity))],
    )

    @app.get("/", response_class=HTMLResponse, name="home")
    def home(request: Request, user: CurrentUser) -> Response:
        return render(request, "index.html", user)

    @app.get("/login", response_class=HTMLResponse, name="login")
    def login_page(request: Request, user: CurrentUser) -> Response:
        return render(request, "login.html", user)

    @app.post("/login", response_class=HTMLResponse)
    def login(request: Request, email: Annotated[str, Form()],
              password: Annotated[str, Form()]) -> Response:
        user = authenticate(email, password)
        if user is None:
            return render(request, "login.html", None, 401, error="Wrong email or password.",
                          email=email)
        request.session["uid"] = user.id
        return RedirectResponse(request.url_for("account"), status_code=303)

    @app.post("/logout", name="logout")
    def logout(request: Request) -> Response:
        request.session.clear()
        return RedirectResponse(request.url_for("home"), status_code=303)

    @app.get("/account", response_class=HTMLResponse, name="account")
    def account(request: Request, user: CurrentUser) -> Response:
        if user is None:
            return RedirectResponse(request.url_for("login"), status_code=303)
        set_user(request, lastAccountView=dt.datetime.now(dt.timezone.utc))
        return render(request, "account.html", user)

    @app.get("/activity", response_class=StreamingResponse, name="activity")
    def activity(request: Request, user: CurrentUser) -> Response:
        page = templates.get_template("activity.html").render(
            request=request, user=user, framework="FastAPI"
        )
        return StreamingResponse(activity_stream(page), media_type="text/html; charset=utf-8")

    @app.get("/api/me", name="me")
    def me(user: CurrentUser) -> JSONResponse:
        if user is None:
            return JSONResponse({"authenticated": False})
        return JSONResponse(
            {"authenticated": True, "id": user.id, "email": user.email,
             "account": user.account.id}
        )

    @app.get("/price-list.csv", name="export")
    def export() -> FileResponse:
        return FileResponse(PRICE_LIST, media_type="text/csv", filename="price-list.csv")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # add_middleware puts each new one outside the previous: GZip ends up outermost,
    # then PX, then the session (read lazily by the dependency, at request time).
    app.add_middleware(SessionMiddleware, secret_key=SESSION_SECRET,
                       session_cookie="demo_session")
    if px:
        app.add_middleware(PXAsgiMiddleware, config=px_config())
    app.add_middleware(GZipMiddleware, minimum_size=1000)
    return app


app = create_app()
#: The same app without the middleware, for side-by-side tests and the benchmark.
bare_app = create_app(px=False)

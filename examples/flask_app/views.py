"""The example's pages: HTML through Jinja, one streamed page, one JSON route."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_login import current_user, login_required, login_user, logout_user
from werkzeug.security import check_password_hash
from werkzeug.wrappers import Response as BaseResponse

from examples.flask_app import db
from examples.flask_app.px_setup import identity_of, px

bp = Blueprint("main", __name__)


@bp.get("/")
def index() -> str:
    return render_template("index.html")


@bp.route("/login", methods=["GET", "POST"])
def login() -> str | BaseResponse:
    if request.method == "POST":
        found = db.user_by_email(request.form.get("email", ""))
        if found and check_password_hash(found[1], request.form.get("password", "")):
            login_user(found[0])
            target = request.args.get("next", "")
            # Only local paths: an open redirect is a login page's classic bug.
            parts = urlsplit(target)
            if not target.startswith("/") or parts.netloc or parts.scheme:
                target = url_for("main.dashboard")
            return redirect(target)
        flash("Unknown email or wrong password.", "error")
    return render_template("login.html")


@bp.post("/logout")
def logout() -> BaseResponse:
    logout_user()
    flash("You are signed out.", "info")
    return redirect(url_for("main.index"))


@bp.get("/dashboard")
@login_required  # type: ignore[untyped-decorator]
def dashboard() -> str:
    px.set_user(lastDashboardVisit=dt.datetime.now(dt.timezone.utc))
    user: db.AppUser = current_user
    identity = identity_of(user)
    return render_template(
        "dashboard.html",
        teammates=db.teammates(user.account.id),
        days_left=(user.account.contract_end - dt.date.today()).days,
        px_user=identity.user.attributes(),
        px_account=identity.account.attributes() if identity.account else {},
    )


@bp.get("/reports")
@login_required  # type: ignore[untyped-decorator]
def reports() -> Response:
    """A streamed page: the head goes out before the rows are computed."""
    user: db.AppUser = current_user
    template = current_app.jinja_env.get_template("reports.html")
    stream = template.stream(
        current_user=user,
        rows=_usage_rows(user.account),
        # Flashes are popped from the session, which is already sent once streaming.
        get_flashed_messages=lambda **_: [],
    )
    stream.enable_buffering(8)
    # stream_with_context keeps the request (g.db, current_user) alive while it streams.
    return Response(stream_with_context(iter(stream)), mimetype="text/html")


def _usage_rows(account: db.AccountRow) -> Iterator[dict[str, Any]]:
    today = dt.date.today().replace(day=1)
    for back in range(6):
        month = (today.replace(day=15) - dt.timedelta(days=30 * back)).replace(day=1)
        active = max(1, account.seats - back * 3 - len(account.id))
        yield {"month": month.strftime("%B %Y"), "active": active,
               "seats": account.seats, "share": round(100 * active / account.seats)}


@bp.get("/api/me")
def api_me() -> BaseResponse:
    """JSON: the middleware must leave it byte for byte alone."""
    if not current_user.is_authenticated:
        return jsonify(authenticated=False)
    user: db.AppUser = current_user
    return jsonify(
        authenticated=True, id=user.id, email=user.email, name=user.name,
        account={"id": user.account.id, "name": user.account.name,
                 "seats": user.account.seats,
                 "contractEnd": user.account.contract_end.isoformat()},
    )

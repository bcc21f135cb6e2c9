"""``px_middleware.flask``: ``PX(app)`` with Flask-Login, the session, ``@px.identify``,
``set_user``, nonces, opt-outs, ``session_identify`` and the example app.

Every test drives a real Flask app through its test client; the page is checked
for the snippet and the exact ``identify`` arguments it carries.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, Response, g, request, session, stream_with_context
from flask.sessions import SecureCookieSessionInterface, SessionInterface
from flask.testing import FlaskClient
from flask_login import LoginManager, UserMixin, login_user, logout_user
from werkzeug.test import TestResponse

from px_middleware import Account, Identity, PXConfig, User, user_hash
from px_middleware.flask import PX, px_exempt, session_identify
from px_middleware.wsgi import PXWsgiMiddleware

KEY = "AP-FLASKTEST001-2"
SECRET = "flask-hmac-secret"
SNIPPET = re.compile(rb'<script data-px-middleware="1"[^>]*>.*?</script>', re.DOTALL)
IDENTIFY = re.compile(rb'aptrinsic\("identify",(\{[^{}]*\})(?:,(\{[^{}]*\}))?\);')
SET_USER = re.compile(rb'aptrinsic\("set","user",(\{[^{}]*\})\);')
PAGE = "<!doctype html><html><head><title>{0}</title></head><body>{0}</body></html>"


def make_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="test-secret-key", PX_PRODUCT_KEY=KEY, PX_HMAC_SECRET=SECRET)
    app.config.update(config)

    @app.get("/")
    def index() -> str:
        return PAGE.format("home")

    @app.get("/api")
    def api() -> dict[str, Any]:
        return {"ok": True}

    return app


def get(client: FlaskClient, path: str = "/", **kwargs: Any) -> tuple[TestResponse, bytes]:
    response = client.get(path, **kwargs)
    body = response.get_data()
    response.close()
    return response, body


def identify_args(body: bytes) -> tuple[dict[str, Any], dict[str, Any] | None]:
    (match,) = IDENTIFY.finditer(body)
    account = json.loads(match.group(2)) if match.group(2) else None
    return json.loads(match.group(1)), account


def assert_loader_only(body: bytes) -> None:
    assert len(SNIPPET.findall(body)) == 1
    assert b'"identify"' not in body


def assert_untouched(body: bytes, page: str) -> None:
    assert body == page.encode()


# -- Flask-Login ---------------------------------------------------------------------------
class Member(UserMixin):  # type: ignore[misc]  # flask_login ships no types
    def __init__(self, id: str, email: Any = None, first_name: str | None = None,
                 last_name: str | None = None) -> None:
        self.id = id
        if email is not None:
            self.email = email
        if first_name is not None:
            self.first_name = first_name
        if last_name is not None:
            self.last_name = last_name


MEMBERS = {
    "7": Member("7", "grace@example.test", "Grace", "Hopper"),
    "8": Member("8"),  # no email, no names
    "9": Member("9", email=["not", "a", "string"]),  # a bad type: dropped, never a 500
}


def login_app(**config: Any) -> tuple[Flask, PX]:
    app = make_app(**config)
    manager = LoginManager(app)
    manager.user_loader(MEMBERS.get)

    @app.get("/login/<user_id>")
    def login(user_id: str) -> Response:
        login_user(MEMBERS[user_id])
        return Response(status=204)

    @app.get("/logout")
    def logout() -> Response:
        logout_user()
        return Response(status=204)

    return app, PX(app)


def test_flask_login_current_user_is_identified_with_no_code() -> None:
    app, _ = login_app()
    client = app.test_client()
    assert_loader_only(get(client)[1])
    client.get("/login/7")
    response, body = get(client)
    user, account = identify_args(body)
    assert user == {"id": "7", "email": "grace@example.test", "firstName": "Grace",
                    "lastName": "Hopper", "userHash": user_hash("7", SECRET)}
    assert account is None
    assert response.headers["Cache-Control"] == "private"
    client.get("/logout")
    assert_loader_only(get(client)[1])


def test_flask_login_user_without_optional_fields() -> None:
    app, _ = login_app()
    client = app.test_client()
    client.get("/login/8")
    user, _ = identify_args(get(client)[1])
    assert user == {"id": "8", "userHash": user_hash("8", SECRET)}


def test_bad_attribute_type_is_dropped_and_counted_never_a_500() -> None:
    app, px = login_app()
    client = app.test_client()
    client.get("/login/9")
    response, body = get(client)
    assert response.status_code == 200
    user, _ = identify_args(body)
    assert user == {"id": "9", "userHash": user_hash("9", SECRET)}
    with app.app_context():
        assert px.counters["attributes_dropped"] == 1


# -- the Flask tutorial: session["user_id"] --------------------------------------------------
def tutorial_app(key: str = "user_id") -> Flask:
    """The login/logout shape of Flask's own tutorial (flaskr's auth blueprint)."""
    app = make_app()

    @app.before_request
    def load_logged_in_user() -> None:
        g.user = session.get(key)

    @app.post("/auth/login")
    def login() -> Response:
        session.clear()
        session[key] = int(request.form["id"])
        return Response(status=302, headers={"Location": "/"})

    @app.get("/auth/logout")
    def logout() -> Response:
        session.clear()
        return Response(status=302, headers={"Location": "/"})

    PX(app)
    return app


@pytest.mark.parametrize("key", ["user_id", "_user_id"])
def test_tutorial_session_user_is_identified_with_only_px_app(key: str) -> None:
    app = tutorial_app(key)
    client = app.test_client()
    assert_loader_only(get(client)[1])
    login = client.post("/auth/login", data={"id": "42"})
    assert login.status_code == 302 and b"data-px-middleware" not in login.get_data()
    user, _ = identify_args(get(client)[1])
    assert user == {"id": "42", "userHash": user_hash("42", SECRET)}
    client.get("/auth/logout")
    assert_loader_only(get(client)[1])


# -- @px.identify, set_user, opt-outs ---------------------------------------------------------
def full_app(**config: Any) -> tuple[Flask, PX]:
    app = make_app(**config)
    px = PX(app)

    @px.identify
    def who() -> Identity | None:
        # Runs while the request context is live: g, request and session all work.
        if "uid" not in request.args:
            return None
        return Identity(
            User(request.args["uid"], email="ada@example.test",
                 sign_up_date=dt.date(2024, 2, 12), custom={"theme": g.get("theme", "none")}),
            Account("acme", name="Acme", custom={"seats": 50,
                                                  "contractEnd": dt.date(2027, 3, 31)}),
        )

    @app.get("/themed")
    def themed() -> str:
        g.theme = "dark"
        px.set_user(plan="gold", lastSeen=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
        px.set_user(seats=3)
        return PAGE.format("themed")

    @app.get("/exempt")
    @px.exempt
    def exempt_view() -> str:
        return PAGE.format("exempt")

    @app.get("/exempt-too")
    @px_exempt
    def exempt_too() -> str:
        return PAGE.format("exempt-too")

    @app.get("/flagged")
    def flagged() -> str:
        g.px_skip = True
        return PAGE.format("flagged")

    @app.get("/skipped")
    def skipped() -> str:
        px.skip()
        return PAGE.format("skipped")

    @app.get("/admin/users")
    def admin() -> str:
        return PAGE.format("admin")

    @app.get("/stream")
    def stream() -> Response:
        def body() -> Iterator[str]:
            yield "<!doctype html><html><head><title>s</title></head><body>"
            yield f"<p>{request.args['uid']}</p>"  # needs the context: stream_with_context
            yield "</body></html>"

        return Response(stream_with_context(body()), mimetype="text/html")

    return app, px


def test_identify_decorator_with_account_and_typed_attributes() -> None:
    app, _ = full_app()
    user, account = identify_args(get(app.test_client(), "/themed?uid=u-1")[1])
    assert user == {"id": "u-1", "email": "ada@example.test", "signUpDate": 1707696000000,
                    "theme": "dark", "userHash": user_hash("u-1", SECRET)}
    assert account == {"id": "acme", "name": "Acme", "seats": 50, "contractEnd": 1806451200000}


def test_set_user_queues_a_set_call_for_this_response_only() -> None:
    app, _ = full_app()
    client = app.test_client()
    (match,) = SET_USER.finditer(get(client, "/themed?uid=u-1")[1])
    assert json.loads(match.group(1)) == {"plan": "gold", "lastSeen": 1767225600000, "seats": 3}
    assert not SET_USER.search(get(client, "/?uid=u-1")[1])


def test_set_user_outside_a_request_is_an_error() -> None:
    _, px = full_app()
    with pytest.raises(RuntimeError, match="request"):
        px.set_user(plan="gold")


@pytest.mark.parametrize("path", ["/exempt", "/exempt-too", "/flagged", "/skipped",
                                  "/admin/users"])
def test_per_view_opt_outs_and_excluded_paths(path: str) -> None:
    app, _ = full_app(PX_EXCLUDE_PATHS=["/admin/*"])
    client = app.test_client()
    response, body = get(client, f"{path}?uid=u-1")
    assert response.status_code == 200
    assert_untouched(body, PAGE.format(path.strip("/").split("/")[-1]
                                       if path != "/admin/users" else "admin"))
    assert len(SNIPPET.findall(get(client, "/?uid=u-1")[1])) == 1  # others still get it


def test_streamed_view_is_identified_while_streaming() -> None:
    app, _ = full_app()
    with app.test_client() as client:
        response = client.get("/stream?uid=u-9")
        assert response.is_streamed
        chunks = [bytes(chunk) for chunk in response.iter_encoded()]
        response.close()
    assert len(SNIPPET.findall(chunks[0])) == 1  # the first chunk carries the snippet
    assert identify_args(chunks[0])[0]["id"] == "u-9"
    assert b"".join(chunks).endswith(b"<p>u-9</p></body></html>")
    assert "Content-Length" not in response.headers


def test_json_is_untouched() -> None:
    app, _ = full_app()
    response, body = get(app.test_client(), "/api?uid=u-1")
    assert body == b'{"ok":true}\n'
    assert "Cache-Control" not in response.headers


def test_config_comes_from_app_config() -> None:
    app, px = full_app(PX_INJECT_ANONYMOUS=False, PX_DATA_CENTER="EU")
    client = app.test_client()
    assert_untouched(get(client, "/")[1], PAGE.format("home"))
    body = get(client, "/?uid=u-1")[1]
    assert b"web-sdk-eu.aptrinsic.com" in body
    assert px.middleware(app).config.data_center == "EU"


def test_unknown_px_setting_fails_at_init() -> None:
    app = make_app(PX_PRODCUT_KEY="typo")
    with pytest.raises(ValueError, match="PX_PRODCUT_KEY"):
        PX(app)


# -- nonces ------------------------------------------------------------------------------
def nonce_app(*, talisman: str | None, csp: str | None) -> Flask:
    app = make_app()

    @app.before_request
    def like_talisman() -> None:
        if talisman is not None:
            request.csp_nonce = talisman  # type: ignore[attr-defined]

    @app.after_request
    def policy(response: Response) -> Response:
        if csp is not None:
            response.headers["Content-Security-Policy"] = csp
        return response

    PX(app)
    return app


def test_talisman_nonce_is_used() -> None:
    body = get(nonce_app(talisman="TalismanN0nce", csp=None).test_client())[1]
    assert b'<script data-px-middleware="1" nonce="TalismanN0nce">' in body


def test_nonce_from_the_csp_header_is_used_without_talisman() -> None:
    body = get(nonce_app(talisman=None, csp="script-src 'self' 'nonce-Hdr123'").test_client())[1]
    assert b'<script data-px-middleware="1" nonce="Hdr123">' in body


def test_no_nonce_at_all_still_injects_when_the_policy_allows() -> None:
    assert_loader_only(get(nonce_app(talisman=None, csp=None).test_client())[1])


def test_csp_that_needs_a_nonce_we_lack_fails_closed() -> None:
    body = get(nonce_app(talisman=None, csp="script-src 'self'").test_client())[1]
    assert_untouched(body, PAGE.format("home"))


# -- failing open, several apps ------------------------------------------------------------
def test_identify_that_raises_serves_the_page_unchanged() -> None:
    app = make_app()
    px = PX(app)

    @px.identify
    def who() -> Identity:
        raise LookupError("the user table is gone")

    response, body = get(app.test_client())
    assert response.status_code == 200
    assert_untouched(body, PAGE.format("home"))
    assert px.middleware(app).counters.snapshot()["identify_errors"] == 1


def test_several_apps_keep_their_own_settings_and_counters() -> None:
    first = make_app(PX_PRODUCT_KEY="AP-FIRSTAPP0001-2")
    second = make_app(PX_PRODUCT_KEY="AP-SECONDAPP002-2", PX_INJECT_ANONYMOUS=False)
    px = PX()
    px.init_app(first)
    px.init_app(second)
    assert first.extensions["px"] is px and second.extensions["px"] is px
    assert b"AP-FIRSTAPP0001-2" in get(first.test_client())[1]
    assert_untouched(get(second.test_client())[1], PAGE.format("home"))
    assert px.middleware(first).counters.snapshot() == {"injected": 1}
    assert px.middleware(second).counters.snapshot() == {"skipped": 1}
    with pytest.raises(RuntimeError, match="already"):
        px.init_app(first)


def test_explicit_config_wins_over_app_config() -> None:
    app = make_app()
    px = PX(app, config=PXConfig(product_key="AP-EXPLICIT0001-2"))
    assert b"AP-EXPLICIT0001-2" in get(app.test_client())[1]
    assert px.middleware(app).config.hmac_secret is None


# -- session_identify for hand-wrapped apps ------------------------------------------------
def wrapped_by_hand(**kwargs: Any) -> Flask:
    app = make_app()

    @app.get("/login/<user_id>")
    def login(user_id: str) -> str:
        session["user_id"] = user_id
        return "ok"

    config = PXConfig(product_key=KEY, hmac_secret=SECRET)
    app.wsgi_app = PXWsgiMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, config, identify=session_identify(app, **kwargs)
    )
    return app


def test_session_identify_reads_the_signed_cookie() -> None:
    app = wrapped_by_hand()
    client = app.test_client()
    assert_loader_only(get(client)[1])
    client.get("/login/u-5")
    user, _ = identify_args(get(client)[1])
    assert user == {"id": "u-5", "userHash": user_hash("u-5", SECRET)}


def test_session_identify_refuses_a_forged_cookie() -> None:
    app = wrapped_by_hand()
    forger = SecureCookieSessionInterface().get_signing_serializer(make_app(SECRET_KEY="x" * 16))
    assert forger is not None
    client = app.test_client()
    client.set_cookie("session", forger.dumps({"user_id": "admin"}))
    assert_loader_only(get(client)[1])


def test_session_identify_with_a_custom_key() -> None:
    app = wrapped_by_hand(key="account_user")
    client = app.test_client()
    client.get("/login/u-5")  # stores user_id, not account_user
    assert_loader_only(get(client)[1])


def test_session_identify_needs_cookie_sessions() -> None:
    app = make_app()
    app.session_interface = SessionInterface()
    with pytest.raises(TypeError, match="signed-cookie"):
        session_identify(app)


# -- the example app ---------------------------------------------------------------------
@pytest.fixture
def example(tmp_path: Path) -> Flask:
    from examples.flask_app import create_app

    return create_app({"DATABASE": str(tmp_path / "example.sqlite3"), "TESTING": True,
                       "PX_HMAC_SECRET": SECRET})


def test_example_app_identifies_alice_with_account_attributes(example: Flask) -> None:
    client = example.test_client()
    assert_loader_only(get(client, "/")[1])
    login = client.post("/login", data={"email": "alice@acme.test", "password": "alice"})
    assert login.status_code == 302
    response, body = get(client, "/dashboard")
    assert response.status_code == 200
    user, account = identify_args(body)
    assert user["email"] == "alice@acme.test" and user["firstName"] == "Alice"
    assert user["signUpDate"] == 1707696000000
    assert user["userHash"] == user_hash(user["id"], SECRET)
    assert account == {"id": "acme", "name": "Acme Corporation", "industry": "Manufacturing",
                       "plan": "Enterprise", "seats": 50, "contractEnd": 1806451200000}
    assert SET_USER.search(body)
    # The streamed report carries the same identify; the JSON API stays untouched.
    report = client.get("/reports")
    assert report.is_streamed and identify_args(report.get_data())[0] == user
    report.close()
    api = client.get("/api/me")
    assert api.json is not None and api.json["email"] == "alice@acme.test"
    assert b"aptrinsic" not in api.get_data()
    client.post("/logout")
    assert_loader_only(get(client, "/")[1])


def test_example_app_rejects_a_wrong_password(example: Flask) -> None:
    client = example.test_client()
    response = client.post("/login", data={"email": "bob@globex.test", "password": "alice"})
    assert response.status_code == 200 and b"wrong password" in response.get_data()
    assert get(client, "/dashboard")[0].status_code == 302

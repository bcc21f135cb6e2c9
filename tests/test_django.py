"""Django end to end: the example project under gunicorn (WSGI) and uvicorn (ASGI),
Debian's Chromium through Playwright, the PX stand-in over real HTTP.

Bare and wrapped servers run the same settings (``tests/support/django_settings.py``),
with and without ``PXMiddleware``; whatever PX must not touch is compared byte for byte.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.devserver import DevServer
from tests.support.django_pages import PAGE, chunks
from tests.support.servers import RawResponse, Server, gunicorn, raw_request, uvicorn

CHROMIUM = "/usr/bin/chromium"
KEY = "AP-DJANGO000001-2"
# Headless Chromium says "HeadlessChrome", which the default bot_pattern does not track.
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]
SNIPPET = re.compile(rb'<script data-px-middleware="1"[^>]*>.*?</script>', re.S)
CSRF = re.compile(rb'name="csrfmiddlewaretoken" value="[^"]+"')
SIGN_UP = 1707696000000  # alice joined 2024-02-12 (examples/django_app/database.py)

SERVERS: dict[str, Callable[[dict[str, str]], AbstractContextManager[Server]]] = {
    # gthread: Chromium's idle preconnected sockets would hold a sync worker's shutdown.
    "gunicorn": lambda env: gunicorn("examples.django_app.wsgi", "--worker-class", "gthread",
                                     "--threads", "4", "--graceful-timeout", "1", env=env),
    "uvicorn": lambda env: uvicorn("examples.django_app.asgi:application", env=env),
}


@pytest.fixture(scope="session", autouse=True)
def _template_db(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Migrate and seed one database; every server starts from a copy of it."""
    global TEMPLATE_DB
    path = tmp_path_factory.mktemp("django-template") / "app.sqlite3"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.support.django_settings",
           "DJANGO_APP_DB": str(path), "PX_PRODUCT_KEY": KEY}
    subprocess.run([sys.executable, "-c", "import examples.django_app.wsgi"], env=env,
                   check=True, timeout=120)
    TEMPLATE_DB = path


TEMPLATE_DB: Path | None = None


def django_env(devserver: DevServer, db: Path, **extra: str) -> dict[str, str]:
    """The server's settings; its database ``db`` starts as a copy of the template."""
    assert TEMPLATE_DB is not None
    shutil.copyfile(TEMPLATE_DB, db)
    return {
        "DJANGO_SETTINGS_MODULE": "tests.support.django_settings",
        "DJANGO_APP_DB": str(db),
        "PX_PRODUCT_KEY": KEY,
        "PX_DATA_CENTER": "local",
        "PX_LOCAL_URL": devserver.base_url,
        "PX_HMAC_SECRET": devserver.hmac_secret,
        "PX_API_KEY": devserver.api_key,
        **extra,
    }


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        message = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=ARGS, user_agent=USER_AGENT,
        )
        yield context
        context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    browser.clear_cookies()
    page = browser.new_page()
    yield page
    page.close()


def calls(devserver: DevServer, method: str) -> list[dict[str, Any]]:
    return [c for c in devserver.sdk_calls() if c["method"] == method]


def log_in(page: Any, server: Server, email: str = "alice@acme.test",
           password: str = "alice") -> None:
    page.goto(server.url + "/login/")
    page.fill("input[name=username]", email)
    page.fill("input[name=password]", password)
    page.click("form[method=post] button[type=submit]")
    page.wait_for_load_state()


# -- the browser: login, identify, events -------------------------------------------------

@pytest.mark.browser
@pytest.mark.parametrize("server_name", sorted(SERVERS))
def test_login_form_identify_with_verified_hash_and_events(
    server_name: str, page: Any, devserver: DevServer, tmp_path: Path
) -> None:
    with SERVERS[server_name](django_env(devserver, tmp_path / "app.sqlite3")) as server:
        page.goto(server.url + "/")
        page.wait_for_function("Array.isArray(window.__pxCalls)")  # the stand-in SDK ran
        assert calls(devserver, "identify") == []  # anonymous: loader only

        log_in(page, server)
        assert page.url == server.url + "/u/1/"  # /me/ redirected to alice's own page
        identify = devserver.wait_for(lambda: calls(devserver, "identify"))[0]
        user, account = identify["args"]
        assert identify["hash_valid"] is True
        assert user["userHash"] == hmac.new(devserver.hmac_secret.encode(), b"1",
                                            hashlib.sha256).hexdigest()
        assert {k: v for k, v in user.items() if k != "userHash"} == {
            "id": "1", "email": "alice@acme.test", "firstName": "Alice", "lastName": "Anders",
            "signUpDate": SIGN_UP,
        }
        assert account == {"id": "acme", "name": "Acme Corporation", "plan": "Enterprise",
                           "industry": "Manufacturing"}

        page.goto(server.url + "/")
        page.wait_for_function("Array.isArray(window.__pxCalls)")

        def two_page_views() -> list[dict[str, Any]]:
            views = devserver.events(eventName="page_view", identifyId="1")
            return views if len(views) >= 2 else []

        views = devserver.wait_for(two_page_views, timeout=20)
        assert {v["url"].rsplit(":", 1)[1].split("/", 1)[1] for v in views} >= {"u/1/", ""}
        assert all(v["accountId"] == "acme" and v["userType"] == "USER" for v in views)
        starts = devserver.events(eventName="session_start", identifyId="1")
        assert len(starts) == 1 and starts[0]["sessionId"] == views[-1]["sessionId"]
        # Only alice was on the site: nothing for bob.
        assert devserver.events(identifyId="2") == []


# -- what PX must not touch: byte for byte against a bare server ----------------------------

@pytest.fixture(scope="module")
def bare_and_wrapped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    """A bare and a wrapped server (events on), shared by the comparisons below."""
    tmp = tmp_path_factory.mktemp("django")
    with DevServer(tmp / "px.sqlite3") as devserver:
        wrapped_env = django_env(devserver, tmp / "wrapped.sqlite3")
        bare_env = django_env(devserver, tmp / "bare.sqlite3", DJANGO_BARE="1")
        with gunicorn("examples.django_app.wsgi", env=bare_env) as bare, \
                gunicorn("examples.django_app.wsgi", env=wrapped_env) as wrapped:
            yield bare, wrapped


BROWSER_HEADERS = {"User-Agent": USER_AGENT, "Accept": "text/html", "Sec-Fetch-Dest": "document",
                   "Sec-Fetch-Mode": "navigate"}


@pytest.mark.parametrize("target", [
    "/static/style.css", "/static/admin/css/base.css", "/api/me", "/t/exempt",
    "/t/exempt-here", "/me/", "/admin/",
])
def test_static_json_redirects_and_files_are_byte_identical_to_bare(
    bare_and_wrapped: tuple[Server, Server], target: str
) -> None:
    bare, wrapped = bare_and_wrapped
    expected = raw_request(bare.port, target, headers=BROWSER_HEADERS)
    got = raw_request(wrapped.port, target, headers=BROWSER_HEADERS)
    assert expected.status in (200, 302)
    assert got.normalized() == expected.normalized()
    # The control: an HTML page from the same server does get the snippet.
    assert SNIPPET.search(raw_request(wrapped.port, "/", headers=BROWSER_HEADERS).body)


def test_the_admin_works_as_it_does_bare(bare_and_wrapped: tuple[Server, Server]) -> None:
    pages = []
    for server in bare_and_wrapped:
        with httpx.Client(base_url=server.url, headers={"User-Agent": USER_AGENT},
                          timeout=30) as client:
            login = client.get("/admin/login/?next=/admin/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
            assert token is not None
            done = client.post("/admin/login/?next=/admin/", data={
                "csrfmiddlewaretoken": token.group(1), "username": "alice@acme.test",
                "password": "alice", "next": "/admin/"}, follow_redirects=True)
            assert done.status_code == 200 and str(done.url).endswith("/admin/")
            users = client.get("/admin/auth/user/")
            edit = client.get("/admin/auth/user/2/change/")  # shows a salted password hash
            assert edit.status_code == 200 and b"<title>bob@globex.test | Change" in edit.content
            pages.append([(r.status_code, CSRF.sub(b"", SNIPPET.sub(b"", r.content)))
                          for r in (login, done, users)])
            if server is bare_and_wrapped[1]:
                assert all(SNIPPET.search(r.content) for r in (login, done, users, edit))
                assert b'"id":"1"' in SNIPPET.search(users.content).group(0)  # type: ignore[union-attr]
    bare_pages, wrapped_pages = pages
    assert wrapped_pages == bare_pages
    assert b"bob@globex.test" in wrapped_pages[2][1]


def test_a_file_response_is_never_injected(bare_and_wrapped: tuple[Server, Server]) -> None:
    bare, wrapped = bare_and_wrapped
    expected = raw_request(bare.port, "/t/file", headers=BROWSER_HEADERS)
    got = raw_request(wrapped.port, "/t/file", headers=BROWSER_HEADERS)
    assert got.body == expected.body == PAGE  # an HTML file, sent as is
    # Its head is the bare one, plus the session cookie of a tracked HTML page view.
    def head(response: RawResponse) -> list[tuple[str, str]]:
        return [h for h in response.headers if h[0] not in ("Date", "Set-Cookie")]

    assert head(got) == head(expected)
    assert [c.split("=")[0] for c in got.header_all("set-cookie")] == ["px_session"]
    assert expected.header_all("set-cookie") == []


# -- streaming under both servers --------------------------------------------------------

@pytest.fixture(scope="module")
def asgi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("django-asgi")
    with DevServer(tmp / "px.sqlite3") as devserver, \
            SERVERS["uvicorn"](django_env(devserver, tmp / "app.sqlite3")) as server:
        yield server


@pytest.mark.parametrize(("server_name", "target"),
                         [("gunicorn", "/t/stream"), ("uvicorn", "/t/stream"),
                          ("uvicorn", "/t/astream")])
def test_streamed_pages_get_the_snippet_once_and_keep_every_byte(
    server_name: str, target: str, bare_and_wrapped: tuple[Server, Server], asgi_server: Server
) -> None:
    server = bare_and_wrapped[1] if server_name == "gunicorn" else asgi_server
    response = raw_request(server.port, target, headers=BROWSER_HEADERS)
    assert response.status == 200
    assert response.header("content-length") is None
    assert len(SNIPPET.findall(response.body)) == 1
    assert SNIPPET.sub(b"", response.body) == b"".join(chunks())
    assert response.body.index(b"data-px-middleware") < response.body.index(b"<body>")


# -- django-csp: a nonce policy, Chromium as the oracle ------------------------------------

VIOLATIONS = (
    "window.__violations = [];"
    "document.addEventListener('securitypolicyviolation',"
    " e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
)


@pytest.fixture(scope="module")
def csp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, DevServer]]:
    tmp = tmp_path_factory.mktemp("django-csp")
    with DevServer(tmp / "px.sqlite3") as devserver:
        env = django_env(devserver, tmp / "app.sqlite3", DJANGO_CSP="1")
        with SERVERS["gunicorn"](env) as server:
            yield server, devserver


@pytest.mark.browser
@pytest.mark.parametrize("target", [
    "/t/csp-host",  # script-src: the nonce and the stand-in's origin
    "/t/csp",  # script-src: the nonce only (the loader gives it to the SDK script too)
])
def test_django_csp_nonce_policy_loads_the_sdk_without_violations(
    target: str, page: Any, csp_server: tuple[Server, DevServer]
) -> None:
    server, devserver = csp_server
    devserver.reset()
    home = httpx.get(server.url + "/", headers={"User-Agent": USER_AGENT}, timeout=30)
    nonce = re.search(r"'nonce-([^']+)'", home.headers["content-security-policy"])
    assert nonce is not None  # the home page never asked django-csp for one: we did
    assert f'data-px-middleware="1" nonce="{nonce.group(1)}"' in home.text

    log_in(page, server)  # the login page has the nonce-only policy too
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.add_init_script(VIOLATIONS)
    page.goto(server.url + target)
    page.wait_for_function("() => window.appScriptRan === true")  # the page's own nonce'd script
    page.wait_for_function("() => Array.isArray(window.__pxCalls) && window.__pxCalls.length > 0",
                           timeout=8_000)
    assert page.evaluate("window.__violations") == []
    assert not [m for m in console if "Content Security Policy" in m]
    identify = devserver.wait_for(lambda: calls(devserver, "identify"))[-1]
    assert identify["args"][0]["id"] == "1" and identify["hash_valid"] is True


# -- delivery at shutdown: atexit under gunicorn, with_lifespan under uvicorn -----------------

@pytest.mark.parametrize("server_name", sorted(SERVERS))
def test_events_still_in_flight_are_delivered_when_the_server_stops(
    server_name: str, devserver: DevServer, tmp_path: Path
) -> None:
    devserver.faults(latency_ms=250)  # every delivery is slow: some are pending at SIGTERM
    env = django_env(devserver, tmp_path / "app.sqlite3")
    start = (gunicorn("examples.django_app.wsgi", env=env) if server_name == "gunicorn"
             else SERVERS[server_name](env))
    with start as server:
        cookies: dict[str, str] = {}
        for _ in range(3):
            response = httpx.get(server.url + "/", headers=BROWSER_HEADERS, cookies=cookies,
                                 timeout=30)
            assert SNIPPET.search(response.content)
            cookies = dict(response.cookies) or cookies
    # The server has exited (SIGTERM, then waited for): what it captured is at the stand-in.
    views = devserver.events(eventName="page_view")
    assert len(views) == 3 and len({v["sessionId"] for v in views}) == 1
    assert len(devserver.events(eventName="session_start")) == 1

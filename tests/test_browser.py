"""Real-browser end-to-end tests: Debian's Chromium, driven by Playwright's Python API.

Both example apps run under real servers (gunicorn, uvicorn) against the local PX
stand-in; the stand-in SDK records every ``aptrinsic(...)`` call the browser makes and
verifies ``userHash``. Nothing is mocked: what the devserver stored is what the
browser executed and what the server delivered. Never downloads a browser: without
/usr/bin/chromium these tests skip locally and fail in CI (``CI=true``).
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.devserver import DevServer
from tests.support.hostile_app import HOSTILE, HOSTILE_NAME
from tests.support.servers import Server, gunicorn, uvicorn

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
KEY = "AP-BROWSER00001-2"
# Headless Chromium says "HeadlessChrome", which the default bot_pattern does not track.
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/156.0 Safari/537.36"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]


def epoch_ms(year: int, month: int, day: int) -> int:
    return calendar.timegm((year, month, day, 0, 0, 0)) * 1000


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
            profile, executable_path=CHROMIUM, headless=True, args=ARGS,
            user_agent=USER_AGENT,
        )
        yield context
        context.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    browser.clear_cookies()
    page = browser.new_page()
    yield page
    page.close()


def px_env(devserver: DevServer, tmp_path: Path) -> dict[str, str]:
    return {
        "PX_PRODUCT_KEY": KEY,
        "PX_DATA_CENTER": "local",
        "PX_LOCAL_URL": devserver.base_url,
        "PX_HMAC_SECRET": devserver.hmac_secret,
        "PX_API_KEY": devserver.api_key,
        "FLASK_APP_DB": str(tmp_path / "flask_app.sqlite3"),
    }


EXAMPLES: dict[str, Callable[[dict[str, str]], AbstractContextManager[Server]]] = {
    "flask": lambda env: gunicorn("examples.flask_app:app", "--workers", "2", env=env),
    "starlette": lambda env: uvicorn("examples.starlette_app:app", env=env),
}


def calls(devserver: DevServer, method: str) -> list[dict[str, Any]]:
    return [c for c in devserver.sdk_calls() if c["method"] == method]


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_login_identify_events_and_logout(
    example: str, page: Any, devserver: DevServer, tmp_path: Path
) -> None:
    with EXAMPLES[example](px_env(devserver, tmp_path)) as server:
        # Anonymous: the loader runs (the stand-in SDK replaced the stub), no identify.
        page.goto(server.url + "/")
        page.wait_for_function("Array.isArray(window.__pxCalls)")
        assert page.evaluate("window.__pxCalls.length") == 0
        assert calls(devserver, "identify") == []

        page.goto(server.url + "/login")
        page.fill("input[name=email]", "alice@acme.test")
        page.fill("input[name=password]", "alice")
        page.click("form[method=post] button[type=submit], form[method=post] button")
        page.wait_for_load_state()

        identify = devserver.wait_for(lambda: calls(devserver, "identify"))[0]
        user, account = identify["args"]
        expected_hash = hmac.new(devserver.hmac_secret.encode(), user["id"].encode(),
                                 hashlib.sha256).hexdigest()
        assert identify["hash_valid"] is True and user["userHash"] == expected_hash
        assert {k: v for k, v in user.items() if k != "userHash"} == {
            "id": user["id"], "email": "alice@acme.test", "firstName": "Alice",
            "lastName": "Anders", "role": "Admin", "accountId": "acme",
            "signUpDate": epoch_ms(2024, 2, 12),
        }
        assert account == {
            "id": "acme", "name": "Acme Corporation", "plan": "Enterprise",
            "industry": "Manufacturing", "seats": 50, "contractEnd": epoch_ms(2027, 3, 31),
        }
        assert isinstance(account["seats"], int)  # a number, never a quoted string

        page.goto(server.url + "/")  # navigate: the server records it too
        page.wait_for_function("Array.isArray(window.__pxCalls)")
        def two_page_views() -> list[dict[str, Any]]:
            views = devserver.events(eventName="page_view", identifyId=user["id"])
            return views if len(views) >= 2 else []

        views = devserver.wait_for(two_page_views, timeout=20)
        assert all(v["accountId"] == "acme" and v["userType"] == "USER" for v in views)
        starts = devserver.events(eventName="session_start", identifyId=user["id"])
        assert len(starts) == 1 and starts[0]["sessionId"] == views[0]["sessionId"]
        upserted = devserver.wait_for(
            lambda: [u for u in devserver.users() if u["identifyId"] == user["id"]]
        )[0]
        assert upserted["signUpDate"] == epoch_ms(2024, 2, 12)

        page.click("form[action$='/logout'] button")
        page.wait_for_load_state()
        devserver.wait_for(lambda: calls(devserver, "reset"))
        page.goto(server.url + "/")
        page.wait_for_function("Array.isArray(window.__pxCalls)")
        assert page.evaluate("window.__pxCalls.length") == 0
        assert len(calls(devserver, "reset")) == 1
        assert len(calls(devserver, "identify")) >= 1  # and none after the logout
        last_identify = max(c["id"] for c in calls(devserver, "identify"))
        assert last_identify < calls(devserver, "reset")[0]["id"]


@pytest.fixture
def hostile_server(devserver: DevServer, tmp_path: Path) -> Iterator[Server]:
    with uvicorn("tests.support.hostile_app:create_app", "--factory",
                 env=px_env(devserver, tmp_path)) as server:
        yield server


def test_hostile_attributes_cannot_escape_the_script(
    page: Any, devserver: DevServer, hostile_server: Server
) -> None:
    page.goto(hostile_server.url + "/")
    page.wait_for_function("Array.isArray(window.__pxCalls) && window.__pxCalls.length > 0")
    assert page.evaluate("typeof window.pwned") == "undefined"
    assert page.inner_text("h1") == "hostile"
    recorded = devserver.wait_for(lambda: calls(devserver, "identify"))[0]
    user, account = recorded["args"]
    assert user["firstName"] == HOSTILE_NAME and user["lastName"] == HOSTILE
    assert user["note"] == HOSTILE and user["comment"] == "<!--" and user["sep"] == "a\u2028b"
    assert account["name"] == HOSTILE and account["motto"] == "' onload='window.pwned=2"
    assert recorded["hash_valid"] is True


def test_strict_csp_with_a_nonce_runs_identify_without_violations(
    page: Any, devserver: DevServer, hostile_server: Server
) -> None:
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.add_init_script(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
    )
    page.goto(hostile_server.url + "/csp")
    page.wait_for_function("Array.isArray(window.__pxCalls) && window.__pxCalls.length > 0")
    assert page.evaluate("window.appScriptRan") is True
    assert page.evaluate("window.__violations") == []
    assert not [m for m in console if "Content Security Policy" in m]
    assert devserver.wait_for(lambda: calls(devserver, "identify"))


def test_csp_that_blocks_inline_scripts_gets_no_snippet(
    page: Any, devserver: DevServer, hostile_server: Server
) -> None:
    html = httpx.get(hostile_server.url + "/csp-without-nonce").text
    assert "data-px-middleware" not in html  # fail closed: nothing the browser would block
    console: list[str] = []
    page.on("console", lambda message: console.append(message.text))
    page.goto(hostile_server.url + "/csp-without-nonce")
    assert page.inner_text("h1") == "no nonce"
    assert not [m for m in console if "Content Security Policy" in m]
    assert calls(devserver, "identify") == []


# -- real CSP set-ups (Flask-Talisman), Chromium as the oracle ------------------------------

VIOLATIONS = (
    "window.__violations = [];"
    "document.addEventListener('securitypolicyviolation',"
    " e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
)


@pytest.fixture(scope="module")
def csp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, DevServer]]:
    # A devserver of its own: the module-scoped app needs its URL in its environment.
    scratch = tmp_path_factory.mktemp("csp")
    with DevServer(scratch / "px-devserver.sqlite3") as devserver, gunicorn(
        # Threads: Chromium's idle preconnect socket would hold a lone sync worker.
        "tests.support.csp_app:create_app()", "--threads", "4", env=px_env(devserver, scratch)
    ) as server:
        yield server, devserver


def load(page: Any, url: str) -> list[str]:
    """Open ``url`` and wait for its load event (the async SDK delays it); violations."""
    page.add_init_script(VIOLATIONS)
    page.goto(url, wait_until="load")
    violations: list[str] = page.evaluate("window.__violations")
    return violations


@pytest.mark.parametrize("path", ["/talisman", "/strict-dynamic"])
def test_nonce_policies_load_the_sdk_and_identify_with_zero_violations(
    path: str, page: Any, csp_server: tuple[Server, DevServer]
) -> None:
    server, devserver = csp_server
    html = httpx.get(server.url + path).text
    policy = httpx.get(server.url + path).headers["content-security-policy"]
    assert "data-px-middleware" in html and "'nonce-" in policy
    assert "aptrinsic.js" not in policy and devserver.base_url not in policy.split("connect-src")[0]
    before = len(calls(devserver, "identify"))
    violations = load(page, server.url + path)
    page.wait_for_function("Array.isArray(window.__pxCalls)")  # the SDK itself ran
    assert page.evaluate("window.appScriptRan") is True
    identify = devserver.wait_for(lambda: calls(devserver, "identify")[before:])[0]
    assert identify["args"][0]["id"] == "csp-user-1" and identify["hash_valid"] is True
    assert violations == [] and page.evaluate("window.__violations") == []


@pytest.mark.parametrize("path", ["/two-policies", "/hash-unsafe-inline"])
def test_policies_that_block_our_inline_script_get_no_snippet_and_no_violation(
    path: str, page: Any, csp_server: tuple[Server, DevServer]
) -> None:
    server, _ = csp_server
    assert "data-px-middleware" not in httpx.get(server.url + path).text
    violations = load(page, server.url + path)
    assert page.evaluate("window.appScriptRan") is True  # the app's own script, by hash
    assert violations == []
    assert page.evaluate("typeof window.aptrinsic") == "undefined"


def _oracle_policies(dev: str) -> list[tuple[str, list[tuple[str, str]]]]:
    n = "'nonce-n0nceOracle1'"
    port = dev.rsplit(":", 1)[1]
    enforce, report = "Content-Security-Policy", "Content-Security-Policy-Report-Only"
    rows = {
        "nonce only": [f"script-src {n}"],
        "another nonce": ["script-src 'nonce-other'"],
        "unsafe-inline and the SDK host": [f"script-src 'unsafe-inline' {dev}"],
        "unsafe-inline without the SDK host": ["script-src 'unsafe-inline'"],
        "hash switches unsafe-inline off": [f"script-src 'sha256-AAAA' 'unsafe-inline' {dev}"],
        "strict-dynamic": [f"script-src {n} 'strict-dynamic'"],
        "http: scheme": ["script-src 'unsafe-inline' http:"],
        "https: scheme only": ["script-src 'unsafe-inline' https:"],
        "any port": ["script-src 'unsafe-inline' http://127.0.0.1:*"],
        "wrong port": [f"script-src 'unsafe-inline' http://127.0.0.1:{int(port) + 1}"],
        "path prefix": [f"script-src 'unsafe-inline' {dev}/api/"],
        "other path": [f"script-src 'unsafe-inline' {dev}/static/"],
        "default-src fallback": [f"default-src {n}"],
        "script-src-elem wins": [f"script-src-elem 'self'; script-src {n}"],
        "first duplicate wins": [f"script-src {n}; script-src 'none'"],
        "none": ["script-src 'none'"],
        "second header forbids inline": [f"script-src 'unsafe-inline' {dev}", f"script-src {dev}"],
        "comma-joined": [f"script-src 'unsafe-inline' {dev}, script-src {dev}"],
    }
    table = [(name, [(enforce, p) for p in policies]) for name, policies in rows.items()]
    table.append(("report-only", [(report, "script-src 'none'")]))
    return table


def test_csp_verdicts_match_what_chromium_runs(
    page: Any, csp_server: tuple[Server, DevServer]
) -> None:
    """For each policy: csp.check's verdict against whether Chromium ran our inline
    loader and then the SDK it created (the stand-in SDK defines ``__pxCalls``)."""
    from px_middleware.core import csp
    from tests.support.csp_app import ORACLE_NONCE

    server, devserver = csp_server
    sdk = devserver.base_url + "/api/aptrinsic.js"
    disagreements = []
    for name, headers in _oracle_policies(devserver.base_url):
        url = httpx.URL(server.url + "/oracle", params=[(k.title(), v) for k, v in headers])
        page.goto(str(url), wait_until="load")
        ran = page.evaluate("typeof window.aptrinsic === 'function'"
                            " && Array.isArray(window.__pxCalls)")
        verdict = csp.check(headers, ORACLE_NONCE, sdk, server.url)
        if verdict.allowed != ran:
            disagreements.append((name, verdict.allowed, ran, verdict.reason))
    assert disagreements == []


# -- Chromium as the HTML5 oracle where html5lib has no support: <template> ---------------

DOM_CHECK = """([original, injected]) => {
  const parse = (html) => new DOMParser().parseFromString(html, "text/html");
  const doc = parse(injected);
  const markers = doc.querySelectorAll("script[data-px-mark]");
  if (markers.length !== 1) return "markers: " + markers.length;
  const marker = markers[0];
  if (marker.parentNode !== doc.head) return "not in head: " + doc.documentElement.outerHTML;
  for (let node = marker.nextSibling; node; node = node.nextSibling) {
    if (node.nodeName === "META" && /charset|x-ua-compatible/i.test(node.outerHTML))
      return "charset meta after the snippet";
  }
  marker.remove();
  const same = doc.documentElement.outerHTML === parse(original).documentElement.outerHTML;
  return same ? "" : "the page's own tree changed";
}"""


def test_generated_documents_with_templates_land_in_chromiums_head(page: Any) -> None:
    """The injector's position on pages with templates (nested, with comments, with raw
    text inside) against Chromium's own parser (DOMParser), 300 seeded documents."""
    import random

    from px_middleware.core.injector import Injector
    from tests.html5_documents import MARKER, generate

    rnd = random.Random(1105)
    failures = []
    checked = 0
    for _ in range(300):
        doc = generate(rnd, templates=True)
        injector = Injector(MARKER)
        out = injector.feed(doc.data) + injector.close()
        if doc.kind != "document" or not injector.inserted:
            continue  # fragments and loader pages: tests/test_injector_html5.py
        checked += 1
        # A string has no byte-order mark to strip: DOMParser would read it as text.
        verdict = page.evaluate(DOM_CHECK, [doc.data.decode("utf-8-sig"), out.decode("utf-8-sig")])
        if verdict:
            failures.append((doc.data, verdict))
    assert checked > 150
    assert [v for _, v in failures] == [], failures[:3]

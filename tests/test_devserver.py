"""The PX stand-in, over real HTTP against its subprocess: statuses, bodies, faults."""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from px_middleware.core.signing import user_hash
from tests.support.devserver import DevServer, devserver  # noqa: F401

PRODUCT_KEY = "AP-DEVSERVERTEST-2"
SIGN_UP = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
HOSTILE = "</script><script>alert(1)</script>"


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    # One process for the tests that only need default settings; reset between tests.
    with DevServer(tmp_path_factory.mktemp("devserver") / "px.sqlite3") as server:
        yield server


@pytest.fixture
def server(shared_server: DevServer) -> DevServer:
    shared_server.reset()
    return shared_server


@pytest.fixture
def api(server: DevServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.api_url, headers=server.api_headers, trust_env=False, timeout=10
    ) as client:
        yield client


def messages(response: httpx.Response) -> list[str]:
    """The messages of a PX error body, asserting its shape on the way."""
    body = response.json()
    assert set(body) == {"externalapierror"}
    error = body["externalapierror"]
    assert set(error) == {"status", "message", "subErrors"}
    # PX sends the status name, written out independently of http.HTTPStatus here.
    names = {400: "BAD_REQUEST", 401: "UNAUTHORIZED", 404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED",
             429: "TOO_MANY_REQUESTS", 500: "INTERNAL_SERVER_ERROR", 503: "SERVICE_UNAVAILABLE"}
    assert error["status"] == names[response.status_code]
    subs = [sub["message"] for sub in error["subErrors"]]
    assert error["message"] and all(sub in error["message"] for sub in subs)
    return subs


def event(**fields: Any) -> dict[str, Any]:
    return {"eventName": "signup", "identifyId": "u1", "propertyKey": PRODUCT_KEY,
            "userType": "USER", **fields}


def new_user(identify_id: str, **fields: Any) -> dict[str, Any]:
    return {"identifyId": identify_id, "propertyKeys": [PRODUCT_KEY], **fields}


# -- API key --------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"X-APTRINSIC-API-KEY": "wrong"}])
def test_api_key_is_required(server: DevServer, headers: dict[str, str]) -> None:
    with httpx.Client(base_url=server.api_url, headers=headers, trust_env=False) as client:
        response = client.post("/users", json={"identifyId": "u1"})
        assert response.status_code == 401
        assert "X-APTRINSIC-API-KEY" in messages(response)[0]
        assert client.get("/events/custom").status_code == 401
    assert server.users() == []


def test_unknown_api_route_answers_px_error_shape(api: httpx.Client) -> None:
    response = api.get("/nothing-here")
    assert response.status_code == 404
    assert messages(response)


# -- users and accounts -------------------------------------------------------------------


def test_user_lifecycle(server: DevServer, api: httpx.Client) -> None:
    user = {
        "identifyId": "u1",
        "email": "ada@example.com",
        "signUpDate": SIGN_UP,
        "score": 4,
        "propertyKeys": [PRODUCT_KEY],
        "customAttributes": {"plan": "pro", "seats": 3},
    }
    created = api.post("/users", json=user)
    assert created.status_code == 201
    assert created.json() == user
    assert api.get("/users/u1").json() == user

    duplicate = api.post("/users", json=new_user("u1"))
    assert duplicate.status_code == 400
    assert "u1" in messages(duplicate)[0]

    patch = {"firstName": "Ada", "customAttributes": {"seats": 5}}
    assert api.put("/users/u1", json=patch).status_code == 204
    merged = api.get("/users/u1").json()
    assert merged["firstName"] == "Ada"
    assert merged["email"] == "ada@example.com"
    assert merged["customAttributes"] == {"plan": "pro", "seats": 5}

    assert api.put("/users/update", json={"identifyId": "u1", "score": 9}).status_code == 204
    assert api.get("/users/u1").json()["score"] == 9
    assert server.users() == [api.get("/users/u1").json()]
    listed = api.get("/users").json()
    assert listed["totalHits"] == 1
    assert listed["users"][0]["identifyId"] == "u1"

    assert api.delete("/users/u1").status_code == 204
    assert api.delete("/users/u1").status_code == 404
    missing = api.get("/users/u1")
    assert missing.status_code == 404
    assert "u1" in messages(missing)[0]


def test_user_updates_of_missing_users_are_404(api: httpx.Client) -> None:
    assert api.put("/users/ghost", json={"firstName": "x"}).status_code == 404
    response = api.put("/users/update", json={"identifyId": "ghost", "firstName": "x"})
    assert response.status_code == 404
    assert "ghost" in messages(response)[0]


def test_ids_with_special_characters(api: httpx.Client) -> None:
    assert api.post("/users", json=new_user("a/b c?d")).status_code == 201
    assert api.get("/users/a%2Fb%20c%3Fd").json() == new_user("a/b c?d")
    assert api.put("/users/update", json={"identifyId": "a/b c?d", "role": "x"}).status_code == 204


def test_bulk_create_is_all_or_nothing(server: DevServer, api: httpx.Client) -> None:
    assert api.post("/users", json=new_user("u1")).status_code == 201
    response = api.post("/users", json=[new_user("u2"), new_user("u1")])
    assert response.status_code == 400
    assert [user["identifyId"] for user in server.users()] == ["u1"]
    assert api.post("/users", json=[new_user("u2"), new_user("u3")]).status_code == 201
    assert len(server.users()) == 3


@pytest.mark.parametrize(
    ("user", "field"),
    [
        ({"identifyId": None, "email": "no-id@example.com"}, "identifyId"),
        ({"identifyId": None, "id": "u1"}, "identifyId"),  # the SDK's name, not REST's
        ({"identifyId": ""}, "identifyId"),
        ({"identifyId": 42}, "identifyId"),
        ({"signUpDate": "2024-01-01"}, "signUpDate"),
        ({"signUpDate": 1_700_000_000}, "signUpDate"),  # seconds
        ({"firstVisitDate": 1.7e12}, "firstVisitDate"),
        ({"score": "5"}, "score"),
        ({"email": 7}, "email"),
        ({"propertyKeys": PRODUCT_KEY}, "propertyKeys"),
        ({"customAttributes": {"nested": {"a": 1}}}, "nested"),
    ],
)
def test_user_fields_are_type_checked(
    server: DevServer, api: httpx.Client, user: dict[str, Any], field: str
) -> None:
    body = {k: v for k, v in {**new_user("u1"), **user}.items() if v is not None}
    response = api.post("/users", json=body)
    assert response.status_code == 400
    assert any(field in message for message in messages(response))
    assert server.users() == []


def test_account_lifecycle(server: DevServer, api: httpx.Client) -> None:
    account = {"id": "acme", "name": "Acme", "numberOfEmployees": 50,
               "propertyKeys": [PRODUCT_KEY]}
    assert api.post("/accounts", json=account).status_code == 201
    assert api.post("/accounts", json={**account, "name": "again"}).status_code == 400
    assert api.put("/accounts/acme", json={"plan": "gold"}).status_code == 204
    assert api.put("/accounts/nope", json={"plan": "gold"}).status_code == 404
    assert api.put("/accounts/update", json={"id": "acme", "nps": 7.5}).status_code == 204
    assert api.put("/accounts/update", json={"id": "nope"}).status_code == 404
    assert server.accounts() == [{**account, "plan": "gold", "nps": 7.5}]
    assert api.get("/accounts").json()["accounts"] == server.accounts()

    bad = api.put("/accounts/acme", json={"numberOfEmployees": "50"})
    assert bad.status_code == 400
    assert "numberOfEmployees" in messages(bad)[0]
    assert api.post("/accounts", json={"name": "no id"}).status_code == 400

    assert api.delete("/accounts/acme").status_code == 204
    assert api.get("/accounts/acme").status_code == 404


# -- custom events ------------------------------------------------------------------------


def test_events_are_stored_in_arrival_order_with_duplicates(
    server: DevServer, api: httpx.Client
) -> None:
    first = event(eventId="e1", sessionId="s1", date=SIGN_UP, attributes={"path": "/"})
    assert api.post("/events/custom", json=first).status_code == 201
    batch = [event(eventId="e2", sessionId="s2"), event(eventName="other", eventId="e1")]
    assert api.post("/events/custom", json=batch).status_code == 201

    assert server.events() == [first, *batch]
    assert [e["eventId"] for e in server.events(eventName="signup")] == ["e1", "e2"]
    assert server.events(sessionId="s2") == [batch[0]]
    assert len(server.events(eventId="e1")) == 2  # a resent event is visible as such
    assert server.events(identifyId="nobody") == []


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"eventName": None}, "eventName"),
        ({"identifyId": None}, "identifyId"),
        ({"propertyKey": None}, "propertyKey"),
        ({"eventName": 3}, "eventName"),
        ({"userType": "ADMIN"}, "userType"),
        ({"date": "2024-01-01T00:00:00Z"}, "date"),
        ({"date": 1_700_000_000}, "date"),
        ({"eventId": 12}, "eventId"),
        ({"sessionId": 12}, "sessionId"),
        ({"attributes": ["a"]}, "attributes"),
        ({"globalContext": "x"}, "globalContext"),
    ],
)
def test_invalid_events_reject_the_whole_request(
    server: DevServer, api: httpx.Client, fields: dict[str, Any], field: str
) -> None:
    bad = {key: value for key, value in event(**fields).items() if value is not None}
    response = api.post("/events/custom", json=[event(), bad])
    assert response.status_code == 400
    assert any(f"[1].{field}" in message for message in messages(response))
    assert server.events() == []


def test_event_body_must_be_json_object_or_list(server: DevServer, api: httpx.Client) -> None:
    not_json = api.post("/events/custom", content=b"{nope")
    assert not_json.status_code == 400
    assert "JSON" in messages(not_json)[0]
    assert api.post("/events/custom", json="signup").status_code == 400
    assert api.post("/events/custom", json=[]).status_code == 400
    assert server.events() == []


def test_request_log(server: DevServer, api: httpx.Client) -> None:
    api.post("/events/custom", json=event())
    api.get("/users/ghost", params={"x": "1"})
    server.events()  # control calls are not logged
    logged = [(r["method"], r["path"], r["query"], r["status"]) for r in server.requests()]
    assert logged == [
        ("POST", "/v1/events/custom", "", 201),
        ("GET", "/v1/users/ghost", "x=1", 404),
    ]


# -- rate limit and faults ----------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    with (
        DevServer(tmp_path / "px.sqlite3", rate_limit=5) as server,
        httpx.Client(
            base_url=server.api_url, headers=server.api_headers, trust_env=False
        ) as client,
    ):
        responses = [client.post("/events/custom", json=event()) for _ in range(30)]
        limited = [r for r in responses if r.status_code == 429]
        accepted = [r for r in responses if r.status_code == 201]
        assert len(limited) + len(accepted) == 30
        assert limited, "30 requests at once must exceed 5 requests/second"
        assert accepted
        assert limited[0].headers["Retry-After"] == "1"
        assert "rate limit" in messages(limited[0])[0]
        assert len(server.events()) == len(accepted)
        assert [r["status"] for r in server.requests()].count(429) == len(limited)


def test_fail_next(server: DevServer, api: httpx.Client) -> None:
    server.faults(fail_next=2, status=503, retry_after=7)
    failed = [api.post("/events/custom", json=event(eventId=str(i))) for i in range(2)]
    for response in failed:
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "7"
        assert messages(response)
    assert api.post("/events/custom", json=event(eventId="2")).status_code == 201
    assert [e["eventId"] for e in server.events()] == ["2"]
    assert [r["status"] for r in server.requests()] == [503, 503, 201]


def test_fail_next_without_retry_after(server: DevServer, api: httpx.Client) -> None:
    server.faults(fail_next=1, status=429)
    response = api.get("/users")
    assert response.status_code == 429
    assert "Retry-After" not in response.headers


def test_close_next_drops_the_connection_without_a_response(
    server: DevServer, api: httpx.Client
) -> None:
    assert api.get("/users").status_code == 200  # leaves a pooled keep-alive connection
    server.faults(close_next=2)
    for eventId in ("reused-connection", "new-connection"):
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            api.post("/events/custom", json=event(eventId=eventId))
    assert api.post("/events/custom", json=event(eventId="ok")).status_code == 201
    assert [e["eventId"] for e in server.events()] == ["ok"]
    assert [r["status"] for r in server.requests()] == [200, None, None, 201]


def test_close_next_sends_not_a_single_byte(server: DevServer) -> None:
    server.faults(close_next=1)
    assert server.port is not None
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(
            b"GET /v1/users HTTP/1.1\r\nHost: x\r\nX-APTRINSIC-API-KEY: "
            + server.api_key.encode()
            + b"\r\n\r\n"
        )
        assert sock.recv(1024) == b""  # orderly close, no status line


def test_latency_applies_until_cleared(server: DevServer, api: httpx.Client) -> None:
    server.faults(latency_ms=300)
    for _ in range(2):
        started = time.monotonic()
        assert api.get("/users").status_code == 200
        assert time.monotonic() - started >= 0.3
    server.faults()
    assert server.client.get("/_control/faults").json()["latency_ms"] == 0


def test_fault_plan_is_validated(server: DevServer) -> None:
    assert server.client.post("/_control/faults", json={"fail_nxt": 1}).status_code == 400
    assert server.client.post("/_control/faults", json={"status": 99}).status_code == 400
    assert server.client.post("/_control/faults", json={"close_next": -1}).status_code == 400


def test_reset_wipes_data_and_faults(server: DevServer, api: httpx.Client) -> None:
    api.post("/users", json=new_user("u1"))
    api.post("/events/custom", json=event())
    server.faults(fail_next=5)
    server.reset()
    assert server.users() == [] and server.events() == [] and server.requests() == []
    assert api.get("/users").status_code == 200


# -- web SDK ------------------------------------------------------------------------------


def test_sdk_script(server: DevServer) -> None:
    response = server.client.get("/api/aptrinsic.js", params={"a": PRODUCT_KEY})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/javascript")
    assert "aptrinsic.q" in response.text
    assert "/sdk/calls" in response.text and "__pxCalls" in response.text


def post_calls(server: DevServer, calls: Any) -> httpx.Response:
    # As the script sends them: text/plain, so the browser skips the CORS preflight.
    return server.client.post(
        "/sdk/calls",
        content=json.dumps(calls),
        headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": "http://app.test"},
    )


def identify(user: dict[str, Any]) -> dict[str, Any]:
    return {
        "method": "identify",
        "args": [user, {"id": "acme"}],
        "productKey": PRODUCT_KEY,
        "url": "http://app.test/",
    }


def test_sdk_calls_verify_the_user_hash(server: DevServer) -> None:
    good = user_hash("u1", server.hmac_secret)
    response = post_calls(
        server,
        [
            identify({"id": "u1", "userHash": good}),
            identify({"id": "u1", "userHash": user_hash("u1", "another-secret")}),
            identify({"id": "u2", "userHash": good}),
            identify({"id": "u1"}),
        ],
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    post_calls(server, {"method": "track", "args": ["clicked", {}], "productKey": PRODUCT_KEY})

    calls = server.sdk_calls()
    assert [(c["method"], c["hash_valid"]) for c in calls] == [
        ("identify", True),
        ("identify", False),
        ("identify", False),
        ("identify", None),
        ("track", None),
    ]
    assert calls[0]["args"] == [{"id": "u1", "userHash": good}, {"id": "acme"}]
    assert calls[0]["product_key"] == PRODUCT_KEY
    assert calls[0]["url"] == "http://app.test/"


def test_sdk_calls_answer_cors_preflight_and_reject_garbage(server: DevServer) -> None:
    preflight = server.client.options(
        "/sdk/calls",
        headers={"Origin": "http://app.test", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "*"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    bad = post_calls(server, {"args": []})
    assert bad.status_code == 400
    assert bad.headers["Access-Control-Allow-Origin"] == "*"
    assert server.sdk_calls() == []


def test_user_hash_of_email_in_base64(tmp_path: Path) -> None:
    with DevServer(tmp_path / "px.sqlite3", hash_field="email", hash_encoding="base64") as server:
        good = user_hash("ada@example.com", server.hmac_secret, "base64")
        hex_digest = user_hash("ada@example.com", server.hmac_secret)
        post_calls(
            server,
            [
                identify({"id": "u1", "email": "ada@example.com", "userHash": good}),
                identify({"id": "u1", "email": "ada@example.com", "userHash": hex_digest}),
                identify({"id": "u1", "userHash": good}),  # no email to check against
            ],
        )
        assert [c["hash_valid"] for c in server.sdk_calls()] == [True, False, False]


# -- dashboard ----------------------------------------------------------------------------


def test_dashboard_shows_everything_escaped(server: DevServer, api: httpx.Client) -> None:
    api.post(
        "/users",
        json=new_user("u1", signUpDate=SIGN_UP, customAttributes={"bio": HOSTILE}),
    ).raise_for_status()
    api.post(
        "/accounts", json={"id": "acme", "name": HOSTILE, "propertyKeys": [PRODUCT_KEY]}
    ).raise_for_status()
    rejected = api.post("/users", json={"identifyId": "u2", "gender": HOSTILE})
    assert rejected.status_code == 400
    api.post(
        "/events/custom",
        json=[
            event(eventName="page_view", sessionId="s-1", attributes={"path": HOSTILE}),
            event(eventName="page_view", sessionId="s-1", attributes={"path": "/pricing"}),
        ],
    )
    post_calls(server, identify({"id": HOSTILE, "userHash": "x"}))

    page = server.client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    body = page.text
    assert '<meta http-equiv="refresh" content="3">' in body
    assert "<script>alert" not in body and "</script>" not in body
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in body
    assert "2023-11-14 22:13:20 UTC" in body and str(SIGN_UP) in body
    for expected in ("acme", "s-1", "/pricing", "/v1/events/custom", "✗"):
        assert expected in body
    # The rejected request is listed with the stand-in's reason for it.
    assert "propertyKeys is required" in body and "gender must be one of" in body


# -- process ------------------------------------------------------------------------------


def test_restart_keeps_port_and_data(tmp_path: Path) -> None:
    server = DevServer(tmp_path / "px.sqlite3")
    with server:
        port = server.port
        server.client.post(
            "/v1/users", json=new_user("u1"), headers=server.api_headers
        ).raise_for_status()
        server.kill()
        assert server.returncode is not None and server.returncode < 0
        server.start()
        assert server.port == port
        assert server.users() == [new_user("u1")]
        server.restart()
        assert server.port == port
        assert server.users() == [new_user("u1")]
    assert server.returncode == 0  # SIGTERM is a clean stop


def test_in_memory_database(tmp_path: Path) -> None:
    with DevServer(":memory:") as server:
        account = {"id": "a1", "name": "A1", "propertyKeys": [PRODUCT_KEY]}
        server.client.post("/v1/accounts", json=account, headers=server.api_headers
                           ).raise_for_status()
        assert server.accounts() == [account]


def test_devserver_fixture(devserver: DevServer) -> None:  # noqa: F811
    assert devserver.client.get("/healthz").text == "ok"
    assert devserver.api_url == devserver.base_url + "/v1"
    with pytest.raises(AssertionError, match="last value: \\[\\]"):
        devserver.wait_for(devserver.events, timeout=0.2)


# -- the SDK in a real browser ------------------------------------------------------------

LOADER_PAGE = """<!doctype html><html><head><script>
(function(n,t,a,e,co){var i="aptrinsic";n[i]=n[i]||function(){(n[i].q=n[i].q||[]).push(arguments)
},n[i].p=e;n[i].c=co;var r=t.createElement("script");r.async=!0,r.src=a+"?a="+e;
var c=t.getElementsByTagName("script")[0];c.parentNode.insertBefore(r,c)
})(window,document,"SDK_URL","PRODUCT_KEY");
aptrinsic("identify", {"id": "u1", "userHash": "USER_HASH"}, {"id": "acme"});
aptrinsic("set", "globalContext", {"plan": "pro"});
</script></head><body>app page</body></html>"""


def calls_received(server: DevServer, count: int) -> list[dict[str, Any]]:
    calls = server.sdk_calls()
    return calls if len(calls) >= count else []


@pytest.mark.browser
def test_sdk_records_calls_from_a_real_page(server: DevServer) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which("chromium") and not Path("/usr/bin/chromium").exists():
        pytest.skip("needs the Debian chromium package")
    page_html = (
        LOADER_PAGE.replace("SDK_URL", server.sdk_url)
        .replace("PRODUCT_KEY", PRODUCT_KEY)
        .replace("USER_HASH", user_hash("u1", server.hmac_secret))
        .encode()
    )

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page_html)))
            self.end_headers()
            self.wfile.write(page_html)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    app = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)  # another origin
    threading.Thread(target=app.serve_forever, daemon=True).start()
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium")
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{app.server_address[1]}/")
                page.wait_for_function("window.__pxCalls && window.__pxCalls.length === 2")
                # The queued calls arrive as one batch; wait for it so that the next
                # call cannot overtake it.
                server.wait_for(lambda: calls_received(server, 2))
                page.evaluate("aptrinsic('track', 'clicked', {button: 'buy'})")
                in_page = page.evaluate("window.__pxCalls.map(c => c.method)")
                assert in_page == ["identify", "set", "track"]
                calls = server.wait_for(lambda: calls_received(server, 3))
            finally:
                browser.close()
    finally:
        app.shutdown()
        app.server_close()
    assert [c["method"] for c in calls] == ["identify", "set", "track"]
    assert calls[0]["hash_valid"] is True
    assert calls[0]["args"][1] == {"id": "acme"}
    assert calls[0]["product_key"] == PRODUCT_KEY
    assert calls[0]["url"].startswith("http://127.0.0.1:")
    assert calls[2]["args"] == ["clicked", {"button": "buy"}]

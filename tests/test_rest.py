"""PXRestClient against a real HTTP server on 127.0.0.1.

``StubPX`` is a tiny PX stand-in (threading ``http.server``) that the delivery tests
reuse for unit-level checks: it records every request with its arrival time, keeps
users, accounts and events, and can be scripted to answer the next requests with
faults (status, headers, a dropped connection).
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
import pytest

from px_middleware.rest import (
    PXAPIError,
    PXAuthError,
    PXNotFound,
    PXRateLimited,
    PXRestClient,
    error_for,
    path_safe,
)

API_KEY = "stub-key"


@dataclasses.dataclass
class Received:
    method: str
    path: str  # decoded, without the /v1 prefix
    body: Any
    status: int
    at: float  # time.monotonic() on arrival


@dataclasses.dataclass
class Fault:
    status: int = 503
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: Any = None
    close: bool = False  # drop the connection without answering


def px_error(status: int, *messages: str) -> dict[str, Any]:
    return {"externalapierror": {"status": status, "subErrors": [{"message": m} for m in messages]}}


class StubPX:
    """A minimal PX REST stand-in; ``port`` lets a restarted stub reuse an address."""

    def __init__(self, port: int = 0, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.events: list[dict[str, Any]] = []
        self.users: dict[str, dict[str, Any]] = {}
        self.accounts: dict[str, dict[str, Any]] = {}
        self.faults: list[Fault] = []
        #: eventIds answered 500 every time (a poison event), whatever else is sent.
        self.poison: set[str] = set()
        #: Cleared, it holds every request until set again (a server that hangs).
        self.gate = threading.Event()
        self.gate.set()
        self._port = port
        self._server: http.server.ThreadingHTTPServer | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> StubPX:
        handler = type("Handler", (_Handler,), {"stub": self})
        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self._port), handler)
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}/v1"

    def fail_next(self, n: int, fault: Fault | None = None) -> None:
        with self.lock:
            self.faults.extend([fault or Fault()] * n)

    def wait_for_events(self, count: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.events) >= count:
                    return list(self.events)
            time.sleep(0.01)
        with self.lock:
            return list(self.events)

    # -- request handling -------------------------------------------------------------------
    def handle(
        self, method: str, raw_path: str, headers: Any, body: Any
    ) -> tuple[int, Any, dict[str, str]]:
        with self.lock:
            if self.faults:
                fault = self.faults.pop(0)
                return fault.status, fault, fault.headers
        if headers.get("X-APTRINSIC-API-KEY") != self.api_key:
            return 401, px_error(401, "Invalid API key"), {}
        path = urlsplit(raw_path).path.removeprefix("/v1")
        parts = [unquote(p) for p in path.strip("/").split("/")]
        with self.lock:
            if parts == ["events", "custom"] and method == "POST":
                events = body if isinstance(body, list) else [body]
                bad = [e for e in events if not isinstance(e, dict) or not e.get("eventName")]
                if any(e.get("eventId") in self.poison for e in events if isinstance(e, dict)):
                    return 500, px_error(500, "internal error"), {}
                if bad:
                    return 400, px_error(400, "eventName is required"), {}
                self.events.extend(events)
                return 201, None, {}
            if parts and parts[0] in ("users", "accounts"):
                return self._entity(method, parts, body)
        return 404, px_error(404, f"no route {method} {path}"), {}

    def _entity(self, method: str, parts: list[str], body: Any) -> tuple[int, Any, dict[str, str]]:
        store, field = (self.users, "identifyId") if parts[0] == "users" else (self.accounts, "id")
        if len(parts) == 1 and method == "POST":
            if not isinstance(body, dict) or not body.get(field):
                return 400, px_error(400, f"{field} is required"), {}
            if body[field] in store:
                return 400, px_error(400, f"{parts[0][:-1]} already exists"), {}
            store[body[field]] = body
            return 201, body, {}
        if len(parts) != 2:
            return 404, px_error(404, "not found"), {}
        key = parts[1]
        if key == "update" and method == "PUT":
            key = str(body.get(field)) if isinstance(body, dict) else ""
        if key not in store:
            return 404, px_error(404, f"{key} not found"), {}
        if method == "GET":
            return 200, store[key], {}
        if method == "PUT":
            store[key] = {**store[key], **body}
            return 204, None, {}
        if method == "DELETE":
            del store[key]
            return 204, None, {}
        return 405, px_error(405, "method not allowed"), {}


class _Handler(http.server.BaseHTTPRequestHandler):
    stub: StubPX
    protocol_version = "HTTP/1.1"  # keep-alive, like PX
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        self.stub.gate.wait()
        arrived = time.monotonic()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        status, payload, headers = self.stub.handle(self.command, self.path, self.headers, body)
        if isinstance(payload, Fault):
            if payload.close:
                self.close_connection = True
                self.connection.close()
                return
            payload = payload.body
        record = Received(self.command, unquote(urlsplit(self.path).path), body, status, arrived)
        with self.stub.lock:
            self.stub.received.append(record)
        data = (
            b""
            if payload is None
            else (payload.encode() if isinstance(payload, str) else json.dumps(payload).encode())
        )
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if data:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (a test's shutdown deadline): not our story
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = _serve


@pytest.fixture
def stub() -> Iterator[StubPX]:
    server = StubPX().start()
    yield server
    server.stop()


@pytest.fixture
def client(stub: StubPX) -> Iterator[PXRestClient]:
    with PXRestClient(stub.url, API_KEY, timeout=5.0) as c:
        yield c


# -- users and accounts ---------------------------------------------------------------------
def test_user_crud(client: PXRestClient, stub: StubPX) -> None:
    assert client.get_user("u1") is None
    client.create_user({"identifyId": "u1", "email": "a@example.com"})
    assert client.get_user("u1") == {"identifyId": "u1", "email": "a@example.com"}
    client.update_user("u1", {"firstName": "Ada"})
    assert stub.users["u1"]["firstName"] == "Ada"
    client.delete_user("u1")
    assert client.get_user("u1") is None
    assert [r.method for r in stub.received] == ["GET", "POST", "GET", "PUT", "DELETE", "GET"]


def test_account_crud(client: PXRestClient, stub: StubPX) -> None:
    client.create_account({"id": "acme", "name": "Acme"})
    assert client.get_account("acme") == {"id": "acme", "name": "Acme"}
    client.update_account("acme", {"plan": "gold"})
    assert stub.accounts["acme"]["plan"] == "gold"
    client.delete_account("acme")
    assert client.get_account("acme") is None


def test_upsert_puts_then_posts_on_404(client: PXRestClient, stub: StubPX) -> None:
    assert client.upsert_user({"identifyId": "u2", "email": "b@example.com"}) == "created"
    assert [(r.method, r.path, r.status) for r in stub.received] == [
        ("PUT", "/v1/users/u2", 404),
        ("POST", "/v1/users", 201),
    ]
    assert client.upsert_user({"identifyId": "u2", "firstName": "Bo"}) == "updated"
    assert stub.users["u2"] == {"identifyId": "u2", "email": "b@example.com", "firstName": "Bo"}
    assert client.upsert_account({"id": "acme", "name": "Acme"}) == "created"
    assert client.upsert_account({"id": "acme", "plan": "gold"}) == "updated"


@pytest.mark.parametrize("ident", ["a/b", "q?x", "h#1", "50%", "with space", "tab\tx", "ünï", ".."])
def test_unsafe_ids_use_update_endpoint(client: PXRestClient, stub: StubPX, ident: str) -> None:
    assert not path_safe(ident)
    assert client.upsert_user({"identifyId": ident}) == "created"
    assert client.upsert_user({"identifyId": ident, "role": "admin"}) == "updated"
    assert [(r.method, r.path) for r in stub.received] == [
        ("PUT", "/v1/users/update"),
        ("POST", "/v1/users"),
        ("PUT", "/v1/users/update"),
    ]
    assert stub.users[ident]["role"] == "admin"
    # GET and DELETE have no body variant: the id is percent-encoded as one segment.
    assert client.get_user(ident) == {"identifyId": ident, "role": "admin"}
    client.delete_user(ident)
    assert ident not in stub.users


def test_safe_id_punctuation_stays_in_path(client: PXRestClient, stub: StubPX) -> None:
    ident = "user+tag@example.com"
    assert path_safe(ident)
    client.upsert_user({"identifyId": ident})
    assert stub.received[0].path == f"/v1/users/{ident}"


def test_upsert_race_post_duplicate_then_put(client: PXRestClient, stub: StubPX) -> None:
    # PUT says 404, but another worker creates the user before our POST.
    stub.fail_next(1, Fault(404, body=px_error(404, "not found")))
    stub.users["u3"] = {"identifyId": "u3"}
    assert client.upsert_user({"identifyId": "u3", "role": "x"}) == "updated"
    assert [r.status for r in stub.received] == [404, 400, 204]


def test_upsert_requires_id(client: PXRestClient) -> None:
    with pytest.raises(ValueError, match="identifyId is required"):
        client.upsert_user({"email": "x@example.com"})
    with pytest.raises(ValueError, match="id is required"):
        client.upsert_account({"name": "no id"})


# -- events ---------------------------------------------------------------------------------
def test_send_events_single_and_list(client: PXRestClient, stub: StubPX) -> None:
    client.send_events({"eventName": "a", "eventId": "1"})
    client.send_events([{"eventName": "b", "eventId": "2"}, {"eventName": "c", "eventId": "3"}])
    assert [e["eventId"] for e in stub.events] == ["1", "2", "3"]
    assert stub.received[0].body == {"eventName": "a", "eventId": "1"}


def test_raw_request_with_encoded_content(client: PXRestClient, stub: StubPX) -> None:
    response = client.request("POST", "/events/custom", content=b'[{"eventName":"raw"}]')
    assert response.status_code == 201
    assert stub.events == [{"eventName": "raw"}]


# -- errors ---------------------------------------------------------------------------------
def test_px_error_body_becomes_message(client: PXRestClient) -> None:
    with pytest.raises(PXAPIError) as info:
        client.send_events({"identifyId": "u"})
    assert info.value.status == 400
    assert info.value.messages == ["eventName is required"]
    assert str(info.value) == "PX API 400: eventName is required"
    assert info.value.body == px_error(400, "eventName is required")


def test_several_sub_errors_are_joined(client: PXRestClient, stub: StubPX) -> None:
    stub.fail_next(1, Fault(400, body=px_error(400, "identifyId is required", "bad date")))
    with pytest.raises(PXAPIError, match=r"^PX API 400: identifyId is required; bad date$"):
        client.create_user({})


def test_auth_error(stub: StubPX) -> None:
    with PXRestClient(stub.url, "wrong-key") as bad, pytest.raises(PXAuthError) as info:
        bad.get_user("u1")
    assert str(info.value) == "PX API 401: Invalid API key"


def test_not_found_is_a_px_error(client: PXRestClient) -> None:
    with pytest.raises(PXNotFound) as info:
        client.update_user("ghost", {"role": "x"})
    assert isinstance(info.value, PXAPIError)
    assert info.value.status == 404


def test_rate_limited_carries_retry_after(client: PXRestClient, stub: StubPX) -> None:
    stub.fail_next(1, Fault(429, headers={"Retry-After": "7"}, body=px_error(429, "slow down")))
    with pytest.raises(PXRateLimited) as info:
        client.send_events({"eventName": "x"})
    assert info.value.retry_after == 7.0
    assert str(info.value) == "PX API 429: slow down"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "<html><body>Bad   gateway</body></html>",
            "PX API 502: <html><body>Bad gateway</body></html>",
        ),
        ({"message": "upstream timeout"}, "PX API 502: upstream timeout"),
        ({"externalapierror": {"status": 502, "message": "overloaded"}}, "PX API 502: overloaded"),
        (None, "PX API 502: Bad Gateway"),
    ],
)
def test_non_px_error_bodies_still_read_well(
    client: PXRestClient, stub: StubPX, body: Any, expected: str
) -> None:
    stub.fail_next(1, Fault(502, body=body))
    with pytest.raises(PXAPIError) as info:
        client.send_events({"eventName": "x"})
    assert str(info.value) == expected


def test_no_retry_inside_the_client(client: PXRestClient, stub: StubPX) -> None:
    stub.fail_next(1, Fault(503))
    with pytest.raises(PXAPIError):
        client.send_events({"eventName": "x"})
    assert len(stub.received) == 1


def test_network_errors_propagate_as_httpx_errors(stub: StubPX) -> None:
    port = stub.port
    stub.stop()
    with (
        PXRestClient(f"http://127.0.0.1:{port}/v1", API_KEY, timeout=2.0) as c,
        pytest.raises(httpx.ConnectError),
    ):
        c.send_events({"eventName": "x"})


def test_error_for_success_is_none() -> None:
    assert error_for(httpx.Response(201)) is None
    assert isinstance(error_for(httpx.Response(403)), PXAuthError)

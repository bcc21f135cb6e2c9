"""Every body the library can send, through the strict stand-in; every departure refused.

The stand-in validates against ``PX-REST-MODEL.md`` (via the one table in
``core/pxmodel.py``). The bodies here are built by the library's own code paths (the
tracker for events, ``upsert_bodies`` for users and accounts, the loader's plan), so a
body that PX would refuse or mangle fails here first. The departure table is written
from the model document, not from the implementation.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from px_middleware import Account, Identity, PXConfig, User
from px_middleware.core.counters import Counters
from px_middleware.core.events import upsert_bodies
from px_middleware.core.exchange import Exchange
from px_middleware.core.tracking import Tracker
from px_middleware.delivery import Delivery
from px_middleware.rest import PXAPIError, PXRestClient
from px_middleware.tools.loader.fields import SCHEMAS
from px_middleware.tools.loader.mapping import Options, build_plan
from tests.support.devserver import DevServer

KEY = "AP-CONFORMANCE-2"
SIGN_UP = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
SIGN_UP_MS = 1_714_521_600_000


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    with DevServer(tmp_path_factory.mktemp("px") / "px.sqlite3") as server:
        yield server


@pytest.fixture
def server(shared: DevServer) -> DevServer:
    shared.reset()
    return shared


@pytest.fixture
def api(server: DevServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.api_url, headers=server.api_headers, trust_env=False, timeout=10
    ) as client:
        yield client


def config(server: DevServer, **overrides: Any) -> PXConfig:
    return PXConfig(product_key=KEY, api_key=server.api_key, api_url=server.api_url,
                    **overrides)


def px_error(response: httpx.Response) -> list[str]:
    """The sub-error messages of a 400 in PX's shape (status NAME, message, subErrors)."""
    assert response.status_code == 400, response.text
    error = response.json()["externalapierror"]
    assert error["status"] == "BAD_REQUEST"
    assert isinstance(error["message"], str) and error["message"]
    return [sub["message"] for sub in error["subErrors"]]


FULL_USER = User(
    id="u1", email="ada@acme.test", first_name="Ada", last_name="Lovelace", title="CTO",
    role="admin", phone="+44", gender="female", type="lead", account_id="acme",
    subscription_id="sub-1", sfdc_contact_id="003", score=7, global_unsubscribe=False,
    number_of_visits=12, sign_up_date=SIGN_UP, first_visit_date=SIGN_UP.date(),
    country_name="France", country_code="FR", state_name="Ile-de-France", state_code="IDF",
    city="Paris", street="1 rue de Rivoli", postal_code="75001", continent="Europe",
    region_name="West", time_zone="Europe/Paris",
    custom={"seats": 3, "beta": True, "since": SIGN_UP, "tier": "gold"},
)
FULL_ACCOUNT = Account(
    id="acme", name="Acme", industry="Tools", plan="pro", website="https://acme.test",
    sfdc_id="001", tracked_subscription_id="t-1", duns_number="123", sic_code="7372",
    naics_code="511210", parent_group_id="group", gs_id="gs-1", csm="Grace",
    number_of_employees=50, health_score=80, nps=42.5, renewal_date=SIGN_UP,
    last_seen_date=SIGN_UP, number_of_users=9, country_name="France", city="Paris",
    custom={"arr": 12000.5},
)


# -- what the library sends is accepted ---------------------------------------------------

def test_every_field_of_user_and_account_upserts_is_accepted(
    server: DevServer, api: httpx.Client
) -> None:
    dropped: list[str] = []
    user, account = upsert_bodies(config(server), Identity(FULL_USER, FULL_ACCOUNT),
                                  on_error=lambda name, exc: dropped.append(name))
    # Read-only in PX: counted, not sent (the snippet still gives them to the browser SDK).
    assert dropped == ["numberOfVisits", "numberOfUsers"]
    assert account is not None
    with PXRestClient(server.api_url, server.api_key) as client:
        assert client.upsert_user(user) == "created"
        assert client.upsert_account(account) == "created"
        assert client.upsert_user(user) == "updated"
        assert client.upsert_account(account) == "updated"
    stored = server.users()[0]
    assert stored["gender"] == "FEMALE" and stored["type"] == "LEAD"
    assert stored["signUpDate"] == SIGN_UP_MS
    assert stored["location"] == {
        "countryName": "France", "countryCode": "FR", "stateName": "Ile-de-France",
        "stateCode": "IDF", "city": "Paris", "street": "1 rue de Rivoli", "postalCode": "75001",
        "continent": "Europe", "regionName": "West", "timeZone": "Europe/Paris",
    }
    assert stored["customAttributes"] == {"seats": 3, "beta": True, "since": SIGN_UP_MS,
                                          "tier": "gold"}
    assert not {"city", "countryName", "numberOfVisits"} & set(stored)
    assert server.accounts()[0]["healthScore"] == 80 and server.accounts()[0]["nps"] == 42.5


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


PAGE = b"<!doctype html><html><head><title>t</title></head><body>hi</body></html>"


def visit(tracker: Tracker, headers: dict[str, str], identity: Identity | None,
          status: int = 200) -> str | None:
    """One page through the core ``Exchange`` as a driver runs it; the cookie it set."""
    exchange = Exchange(
        tracker.config, tracker.counters, method="GET", path="/pricing",
        header=lambda name: headers.get(name.lower()), path_allowed=lambda path: True,
        query="a=1", scheme="https", host="app.test", client="10.0.0.1", tracker=tracker,
    )
    assert exchange.active
    assert exchange.accepts(status, [("Content-Type", "text/html")])
    if exchange.begin(identity):
        exchange.feed(PAGE)
        exchange.close()
    cookies = [v for n, v in exchange.headers() if n.lower() == "set-cookie"]
    exchange.finish()
    return cookies[0].split(";")[0] if cookies else None


def test_every_event_the_middleware_emits_is_accepted(
    server: DevServer, api: httpx.Client
) -> None:
    captured: list[tuple[str, dict[str, Any]]] = []

    def capture(kind: str, body: dict[str, Any]) -> bool:
        captured.append((kind, body))
        return True

    cfg = config(server, send_remote_host=True, track_anonymous=True)
    clock = Clock(1_714_521_600.0)
    tracker = Tracker(cfg, Counters(), capture, clock=clock)
    headers = {"user-agent": "Mozilla/5.0", "referer": "https://ref.test/?q=1"}
    identity = Identity(FULL_USER, FULL_ACCOUNT)
    cookie = visit(tracker, headers, identity)
    assert cookie is not None
    # An hour later, the same user: the old session ends (timeout), a new one starts.
    clock.now += 3600
    visit(tracker, dict(headers, cookie=cookie), identity)
    # A new browser, anonymous: a visitor's session.
    visit(tracker, headers, None)
    events = [body for kind, body in captured if kind == "event"]
    names = [e["eventName"] for e in events]
    assert names == [cfg.session_start_event, cfg.page_view_event, cfg.session_end_event,
                     cfg.session_start_event, cfg.page_view_event,
                     cfg.session_start_event, cfg.page_view_event]
    for event in events:
        assert api.post("/events/custom", json=event).status_code == 201, event
    upserts = [body for kind, body in captured if kind in ("user", "account")]
    assert len(upserts) == 2
    assert len(server.events()) == 7
    assert {e["userType"] for e in server.events()} == {"USER", "VISITOR"}


def test_the_middlewares_upsert_lands_under_location(server: DevServer) -> None:
    delivery = Delivery(config(server))
    try:
        user, account = upsert_bodies(
            config(server),
            Identity(User("u9", city="Lyon", country_name="France"), Account("a9", name="A9")),
        )
        assert delivery.capture("user", user) and account is not None
        assert delivery.capture("account", account)
        server.wait_for(lambda: server.users() and server.accounts())
    finally:
        delivery.shutdown()
    assert server.users()[0]["location"] == {"city": "Lyon", "countryName": "France"}
    assert server.users()[0]["accountId"] == "a9"


def test_loader_bodies_with_every_writable_field_are_accepted(
    server: DevServer, api: httpx.Client
) -> None:
    values = {
        "string": "x", "NUMBER": "7", "DATE_TIME": "2024-05-01", "BOOLEAN": "true",
    }
    for schema, path in ((SCHEMAS["users"], "/users"), (SCHEMAS["accounts"], "/accounts")):
        header = [p for p, f in schema.fields.items() if not f.read_only]
        header.append(f"{schema.custom_prefix}.note")
        plan = build_plan(schema, header, None, Options(dt.timezone.utc, KEY))
        row = {}
        for column in plan.columns:
            field = column.field
            row[column.name] = (field.enum[0] if field is not None and field.enum
                                else values.get(column.type, "x"))
        body, problems = plan.build(0, row)
        assert problems == []
        assert api.post(path, json=body).status_code == 201, body
    events = SCHEMAS["events"]
    header = [p for p in events.fields if p not in ("propertyKey",)] + ["attributes.n"]
    plan = build_plan(events, header, None, Options(dt.timezone.utc, KEY))
    row = {c.name: (c.field.enum[0] if c.field is not None and c.field.enum
                    else values.get(c.type, "x")) for c in plan.columns}
    body, problems = plan.build(0, row)
    assert problems == [] and {"remoteHost", "eventType", "userType"} <= set(body)
    assert api.post("/events/custom", json=body).status_code == 201, body


# -- departures are refused in PX's error shape --------------------------------------------

USER = {"identifyId": "u1", "propertyKeys": [KEY]}
ACCOUNT = {"id": "a1", "name": "A1", "propertyKeys": [KEY]}
EVENT = {"eventName": "e", "identifyId": "u1", "propertyKey": KEY, "userType": "USER"}


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        # location fields belong under location, never at the top level
        ("/users", {**USER, "city": "Paris"}, "city is not a field"),
        ("/users", {**USER, "countryName": "FR"}, "countryName is not a field"),
        ("/users", {**USER, "nickname": "x"}, "nickname is not a field"),
        ("/users", {**USER, "location": {"planet": "Mars"}}, "location.planet"),
        ("/users", {**USER, "location": {"coordinates": {"latitude": "48"}}}, "latitude"),
        ("/users", {**USER, "location": "Paris"}, "location must be an object"),
        ("/users", {**USER, "gender": "female"}, "gender must be one of"),
        ("/users", {**USER, "gender": "F"}, "gender must be one of"),
        ("/users", {**USER, "type": "ADMIN"}, "type must be one of"),
        ("/users", {**USER, "score": 3.5}, "score must be an integer"),
        ("/users", {**USER, "globalUnsubscribe": "false"}, "globalUnsubscribe must be a bool"),
        ("/users", {**USER, "numberOfVisits": 3}, "numberOfVisits is read-only"),
        ("/users", {**USER, "lastSeenDate": 1_714_521_600_000}, "lastSeenDate is read-only"),
        ("/users", {"identifyId": "u1"}, "propertyKeys is required"),
        ("/users", {"propertyKeys": [KEY]}, "identifyId is required"),
        ("/accounts", {**ACCOUNT, "numberOfEmployees": 12.5}, "numberOfEmployees must be an"),
        ("/accounts", {**ACCOUNT, "healthScore": 2**31}, "out of range"),
        ("/accounts", {**ACCOUNT, "numberOfUsers": 3}, "numberOfUsers is read-only"),
        ("/accounts", {"id": "a1", "propertyKeys": [KEY]}, "name is required"),
        ("/events/custom", {k: v for k, v in EVENT.items() if k != "userType"},
         "userType is required"),
        ("/events/custom", {**EVENT, "userType": "user"}, "userType must be one of"),
        ("/events/custom", {**EVENT, "eventName": "x" * 2001}, "longer than 2000"),
        ("/events/custom", {**EVENT, "attributes": {str(i): i for i in range(51)}}, "at most 50"),
        ("/events/custom", {**EVENT, "colour": "red"}, "colour is not a field"),
    ],
)
def test_departures_from_the_model_are_400_in_pxs_shape(
    server: DevServer, api: httpx.Client, path: str, body: dict[str, Any], needle: str
) -> None:
    messages = px_error(api.post(path, json=body))
    assert any(needle in message for message in messages), messages
    assert server.users() == [] and server.accounts() == [] and server.events() == []


def test_pxs_writable_fields_that_used_to_be_refused_are_accepted(api: httpx.Client) -> None:
    user = {**USER, "type": "LEAD", "globalUnsubscribe": True, "sfdcContactId": "003"}
    assert api.post("/users", json=user).status_code == 201
    account = {**ACCOUNT, "parentGroupId": "g", "renewalDate": SIGN_UP_MS, "healthScore": 3,
               "gsId": "x", "nps": 9.5, "csm": "c", "lastSeenDate": SIGN_UP_MS}
    assert api.post("/accounts", json=account).status_code == 201
    event = {**EVENT, "remoteHost": "10.0.0.1", "globalContext": {"plan": "pro"},
             "eventType": "custom"}
    assert api.post("/events/custom", json=event).status_code == 201


def test_an_account_without_name_is_updated_but_never_created(server: DevServer) -> None:
    """PX requires ``name`` on create: the upsert's PUT updates, its POST is refused."""
    body = upsert_bodies(config(server), Identity(User("u"), Account("nameless")))[1]
    assert body is not None and "name" not in body
    with PXRestClient(server.api_url, server.api_key) as client:
        with pytest.raises(PXAPIError, match="name is required"):
            client.upsert_account(body)
        assert server.accounts() == []
        client.create_account({**body, "name": "Named"})
        assert client.upsert_account({**body, "plan": "gold"}) == "updated"
    assert server.accounts()[0]["plan"] == "gold"


def test_the_middleware_counts_and_logs_an_account_it_cannot_create(
    server: DevServer, caplog: pytest.LogCaptureFixture
) -> None:
    delivery = Delivery(config(server))
    try:
        body = upsert_bodies(config(server), Identity(User("u"), Account("nameless")))[1]
        assert body is not None
        with caplog.at_level(logging.WARNING, logger="px_middleware"):
            assert delivery.capture("account", body)
            server.wait_for(lambda: delivery.counters()["dropped_rejected"] == 1)
    finally:
        delivery.shutdown()
    assert server.accounts() == []
    assert "name is required" in caplog.text


def test_read_only_and_off_model_values_are_logged_counted_drops(
    server: DevServer, caplog: pytest.LogCaptureFixture
) -> None:
    counters = Counters()
    tracker = Tracker(config(server), counters, lambda kind, body: True)
    user = User("u", number_of_visits=3, score=3.5, gender="robot", email="e@x.io")
    with caplog.at_level(logging.WARNING, logger="px_middleware"):
        visit(tracker, {"user-agent": "Mozilla/5.0"}, Identity(user))
    assert counters.snapshot()["attributes_dropped"] == 3
    text = caplog.text
    assert "numberOfVisits" in text and "read-only" in text
    assert "score" in text and "gender" in text


# -- paging, event reads and attribute metadata -------------------------------------------

def test_lists_page_with_scroll_id_and_the_last_page_has_none(api: httpx.Client) -> None:
    assert api.post("/users", json=[{**USER, "identifyId": f"u{i}"} for i in range(5)]
                    ).status_code == 201
    seen, pages, params = [], 0, {"pageSize": "2"}
    while True:
        page = api.get("/users", params=params).json()
        pages += 1
        assert page["totalHits"] == 5
        seen += [u["identifyId"] for u in page["users"]]
        if "scrollId" not in page:
            break
        params = {"pageSize": "2", "scrollId": page["scrollId"]}
        assert pages < 10, "a pager following scrollId must stop"
    assert (pages, seen) == (3, [f"u{i}" for i in range(5)])
    assert api.get("/users", params={"pageSize": "0"}).status_code == 400
    assert api.get("/users", params={"scrollId": "nonsense!"}).status_code == 400


def test_event_reads_have_the_published_shape_and_parameters(api: httpx.Client) -> None:
    events = [{**EVENT, "eventName": name, "date": SIGN_UP_MS + n, "identifyId": who}
              for n, (name, who) in enumerate([("a", "u1"), ("b", "u2"), ("a", "u2"),
                                               ("a", "u1")])]
    for event in events:
        assert api.post("/events/custom", json=event).status_code == 201
    body = api.get("/events/custom").json()
    assert set(body) == {"customEvents", "totalHits"} and body["totalHits"] == 4
    page = api.get("/events/custom", params={"filter": "eventName==a", "pageSize": "2",
                                             "sort": "-date"}).json()
    assert page["totalHits"] == 3 and "scrollId" in page
    assert [e["date"] for e in page["customEvents"]] == [SIGN_UP_MS + 3, SIGN_UP_MS + 2]
    rest = api.get("/events/custom", params={"filter": "eventName==a", "pageSize": "2",
                                             "sort": "-date", "scrollId": page["scrollId"]})
    assert [e["date"] for e in rest.json()["customEvents"]] == [SIGN_UP_MS]
    assert "scrollId" not in rest.json()
    ranged = api.get("/events/custom", params={
        "filter": "eventName==a;identifyId==u2",
        "dateRange": f"{SIGN_UP_MS + 1},{SIGN_UP_MS + 2}"}).json()
    assert [e["date"] for e in ranged["customEvents"]] == [SIGN_UP_MS + 2]
    for bad in ({"filter": "colour==red"}, {"sort": "name"}, {"dateRange": "x"}, {"who": "1"}):
        px_error(api.get("/events/custom", params=bad))


def test_attribute_metadata_lists_built_ins_and_declared_custom_attributes(
    server: DevServer, api: httpx.Client
) -> None:
    server.declare_attributes(USER={"seats": "NUMBER", "vip": "boolean"})
    users = {a["apiName"]: a["type"] for a in api.get("/admin/model/USER/attributes").json()}
    assert users["seats"] == "NUMBER" and users["vip"] == "BOOLEAN"
    assert users["signUpDate"] == "DATE_TIME" and users["score"] == "NUMBER"
    assert users["email"] == "STRING" and users["globalUnsubscribe"] == "BOOLEAN"
    accounts = {a["apiName"] for a in api.get("/admin/model/ACCOUNT/attributes").json()}
    assert "seats" not in accounts and "healthScore" in accounts
    assert api.get("/admin/model/EVENT/attributes").status_code == 404
    bad = server.client.post("/_control/attributes", json={"USER": {"x": "INTEGER"}})
    assert bad.status_code == 400


def test_attributes_can_be_declared_on_the_command_line(tmp_path: Any) -> None:
    with DevServer(tmp_path / "px.sqlite3", extra_args=["--attribute", "ACCOUNT:arr=NUMBER"]
                   ) as server:
        body = server.client.get("/v1/admin/model/ACCOUNT/attributes",
                                 headers=server.api_headers).json()
        assert {"apiName": "arr", "type": "NUMBER", "custom": True} in body

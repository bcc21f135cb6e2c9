"""Server-side sessions and events through the core ``Exchange``, driven by a clock.

These are sans-IO tests: a request is a set of headers, a response is a status and
headers, and ``capture`` appends to a list (what the delivery layer receives). The
30-minute rule is driven by an injected clock, never by sleeping.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from uuid import uuid4

import pytest

from px_middleware import Account, Identity, PXConfig, User
from px_middleware.core.counters import Counters
from px_middleware.core.events import client_ip, filter_query
from px_middleware.core.exchange import Exchange
from px_middleware.core.session import SessionCookie, SessionState, advance
from px_middleware.core.tracking import Tracker

KEY = "AP-TESTKEY12345-2"
HTML = [("Content-Type", "text/html; charset=utf-8")]
PAGE = b"<!doctype html><html><head><title>t</title></head><body>hi</body></html>"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += minutes * 60


class Browser:
    """Keeps the session cookie between requests, like a browser would."""

    def __init__(self, tracker: Tracker, config: PXConfig) -> None:
        self.tracker = tracker
        self.config = config
        self.cookie: str | None = None
        self.headers: dict[str, str] = {"user-agent": "Mozilla/5.0 (X11; Linux) Firefox/140"}

    def get(
        self,
        identity: Identity | None,
        path: str = "/",
        *,
        query: str = "",
        response_headers: list[tuple[str, str]] | None = None,
        client: str | None = "203.0.113.9",
    ) -> tuple[bytes, list[tuple[str, str]]]:
        headers = dict(self.headers)
        if self.cookie:
            headers["cookie"] = f"other=1; {self.config.cookie_name}={self.cookie}"
        exchange = Exchange(
            self.config,
            self.tracker.counters,
            method="GET",
            path=path,
            header=lambda name: headers.get(name.lower()),
            path_allowed=self.config.path_allowed(),
            query=query,
            scheme="https",
            host="app.example",
            client=client,
            tracker=self.tracker,
        )
        response_headers = response_headers or list(HTML)
        body = PAGE
        if exchange.active and exchange.accepts(200, response_headers):
            if exchange.begin(identity):
                body = exchange.feed(PAGE) + exchange.close()
            response_headers = exchange.headers()
            exchange.finish()
        for name, value in response_headers:
            if name.lower() == "set-cookie" and value.startswith(self.config.cookie_name + "="):
                self.cookie = value.split(";", 1)[0].split("=", 1)[1]
        return body, response_headers


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sent() -> list[tuple[str, dict[str, Any]]]:
    return []


def make(
    clock: Clock, sent: list[tuple[str, dict[str, Any]]], **overrides: Any
) -> tuple[Browser, PXConfig]:
    config = PXConfig(product_key=KEY, hmac_secret="hmac", api_key="api", **overrides)

    def capture(kind: str, body: dict[str, Any]) -> bool:
        sent.append((kind, body))
        return True

    tracker = Tracker(config, Counters(), capture, clock=clock)
    return Browser(tracker, config), config


ALICE = Identity(
    User("u-1", email="alice@acme.test", sign_up_date=dt.date(2024, 1, 2),
         custom={"seats": 5}),
    Account("acme", name="Acme", number_of_employees=50),
)


def events(sent: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [body for kind, body in sent if kind == "event"]


def names(sent: list[tuple[str, dict[str, Any]]]) -> list[str]:
    return [event["eventName"] for event in events(sent)]


class TickingClock(Clock):
    """Each reading is a second after the last: a request's start and end differ."""

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_a_page_view_is_dated_when_its_request_started(sent: list[Any]) -> None:
    # Workers order a session's events by date: the next page can start (on another
    # worker) before this response is over, never before this request started.
    clock = TickingClock()
    browser, _ = make(clock, sent)
    browser.get(ALICE)
    start, view = events(sent)
    assert view["date"] == start["date"] == int((clock.now - 1.0) * 1000)
    assert view["attributes"]["duration_ms"] == 1000


def test_first_page_starts_a_session_and_upserts(clock: Clock, sent: list[Any]) -> None:
    browser, _ = make(clock, sent)
    body, headers = browser.get(ALICE, query="tab=1&token=s3cr3t")
    assert names(sent) == ["session_start", "page_view"]
    start, view = events(sent)
    assert start["sessionId"] == view["sessionId"]
    # A per-process random prefix and a counter (events.py): unique, and cheap.
    assert re.fullmatch(r"[0-9a-f]{20}-[0-9]+", start["eventId"])
    assert start["eventId"] != view["eventId"]
    assert view["identifyId"] == "u-1" and view["userType"] == "USER"
    assert view["accountId"] == "acme" and view["propertyKey"] == KEY
    assert view["date"] == int(clock.now * 1000)
    assert view["url"] == "https://app.example/?tab=1&token=%5Bredacted%5D"
    assert view["attributes"]["status"] == 200 and view["attributes"]["path"] == "/"
    assert "remoteHost" not in view  # IP only when the app opts in
    kinds = {kind: body for kind, body in sent if kind != "event"}
    assert kinds["user"] == {
        "identifyId": "u-1",
        "propertyKeys": [KEY],
        "email": "alice@acme.test",
        "signUpDate": 1704153600000,  # 2024-01-02T00:00:00Z
        "accountId": "acme",
        "customAttributes": {"seats": 5},
    }
    assert kinds["account"] == {
        "id": "acme", "propertyKeys": [KEY], "name": "Acme", "numberOfEmployees": 50
    }
    cookie = next(v for n, v in headers if n == "Set-Cookie")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie
    assert b'aptrinsic("identify"' in body


def test_session_continues_then_times_out_after_30_minutes(
    clock: Clock, sent: list[Any]
) -> None:
    browser, _ = make(clock, sent)
    browser.get(ALICE)
    first_session = events(sent)[0]["sessionId"]
    clock.advance(29)
    browser.get(ALICE, "/two")
    assert names(sent) == ["session_start", "page_view", "page_view"]
    assert events(sent)[-1]["sessionId"] == first_session
    upserts = [kind for kind, _ in sent if kind != "event"]
    assert upserts == ["user", "account"]  # unchanged attributes are not sent again

    clock.advance(30.5)
    sent.clear()
    browser.get(ALICE, "/three")
    assert names(sent) == ["session_end", "session_start", "page_view"]
    end, start, view = events(sent)
    assert end["sessionId"] == first_session
    assert end["attributes"] == {"duration_ms": 29 * 60 * 1000, "pages": 2, "reason": "timeout"}
    assert end["date"] == int((clock.now - 30.5 * 60) * 1000)  # when activity stopped
    assert start["sessionId"] == view["sessionId"] != first_session
    assert [kind for kind, _ in sent if kind != "event"] == []


def test_logout_rotates_the_session_and_resets_once(clock: Clock, sent: list[Any]) -> None:
    browser, _ = make(clock, sent)
    browser.get(ALICE)
    visitor_cookie_before = browser.cookie
    sent.clear()
    body, _ = browser.get(None)
    # The cookie names the user by digest only, so the ended session cannot be given
    # the identifyId PX needs: it is counted, not sent under a wrong id.
    assert names(sent) == ["session_start", "page_view"]
    assert browser.tracker.counters.snapshot()["session_end_unattributed"] == 1
    start, view = events(sent)
    assert start["userType"] == "VISITOR" and start["identifyId"] == view["identifyId"]
    assert body.count(b'aptrinsic("reset")') == 1
    assert b'"identify"' not in body
    body, _ = browser.get(None)
    assert b"reset" not in body
    assert browser.cookie != visitor_cookie_before


def test_an_anonymous_session_that_ends_at_login_is_sent(clock: Clock, sent: list[Any]) -> None:
    browser, _ = make(clock, sent)
    browser.get(None)
    visitor = events(sent)[0]["identifyId"]
    sent.clear()
    browser.get(ALICE)
    assert names(sent) == ["session_end", "session_start", "page_view"]
    end = events(sent)[0]
    assert (end["identifyId"], end["userType"]) == (visitor, "VISITOR")
    assert "accountId" not in end  # the ended session was nobody's account
    assert end["attributes"]["reason"] == "user_change"


def test_switching_user_resets_before_identify(clock: Clock, sent: list[Any]) -> None:
    browser, _ = make(clock, sent)
    browser.get(ALICE)
    bob = Identity(User("u-2"), Account("globex"))
    body, _ = browser.get(bob)
    assert body.index(b'"reset"') < body.index(b'"identify"')
    assert events(sent)[-1]["identifyId"] == "u-2"


def test_anonymous_visitors_can_be_left_out(clock: Clock, sent: list[Any]) -> None:
    browser, _ = make(clock, sent, track_anonymous=False)
    browser.get(None)
    assert sent == []
    browser.get(ALICE)
    assert names(sent) == ["session_start", "page_view"]


def test_privacy_signals_bots_and_public_pages_are_not_tracked(
    clock: Clock, sent: list[Any]
) -> None:
    browser, _ = make(clock, sent, honor_privacy_signals=True)
    browser.headers["sec-gpc"] = "1"
    _, headers = browser.get(ALICE)
    assert sent == [] and not any(n == "Set-Cookie" for n, _ in headers)

    bot, _ = make(clock, sent)
    bot.headers["user-agent"] = "Googlebot/2.1 (+http://www.google.com/bot.html)"
    bot.get(None)
    assert sent == []

    browser, _ = make(clock, sent)
    _, headers = browser.get(None, response_headers=[*HTML, ("Cache-Control", "public")])
    assert sent == [] and not any(n == "Set-Cookie" for n, _ in headers)


def test_forged_or_garbled_cookie_is_a_new_visitor(clock: Clock, sent: list[Any]) -> None:
    browser, config = make(clock, sent)
    browser.get(ALICE)
    good = browser.cookie
    assert good
    for bad in (good[:-2] + "xx", "garbage", "a.b.c", "%00\u00e9", ""):
        sent.clear()
        browser.cookie = bad
        body, _ = browser.get(ALICE)
        assert names(sent) == ["session_start", "page_view"]
        assert b'"identify"' in body
    forged = SessionCookie("someone-else").dump(
        SessionState("v", "s", clock.now, clock.now, 1, "admin")
    )
    assert SessionCookie(config.session_signing_secret or "").load(forged) is None


def test_remote_host_only_from_trusted_proxies() -> None:
    assert client_ip("10.0.0.2", "198.51.100.7", ()) == "10.0.0.2"
    assert client_ip("10.0.0.2", "198.51.100.7", ("10.0.0.0/8",)) == "198.51.100.7"
    # A client cannot slip a fake address in front of the real chain.
    assert client_ip("10.0.0.2", "1.2.3.4, 198.51.100.7, 10.0.0.5", ("10.0.0.0/8",)) == (
        "198.51.100.7"
    )
    assert client_ip(None, "1.2.3.4", ("10.0.0.0/8",)) is None


def test_remote_host_is_opt_in(clock: Clock, sent: list[Any]) -> None:
    browser, _ = make(clock, sent, send_remote_host=True)
    browser.get(ALICE)
    assert events(sent)[-1]["remoteHost"] == "203.0.113.9"


def test_filter_query_keeps_order_and_redacts_case_insensitively() -> None:
    assert filter_query("a=1&Token=x&b=&a=2", ("token",)) == "a=1&Token=%5Bredacted%5D&b=&a=2"


def test_advance_rules() -> None:
    first = advance(None, now=0.0, user_id=None, user_key=None, timeout=1800).state
    same = advance(first, now=1800.0, user_id=None, user_key=None, timeout=1800)
    assert not same.started and same.state.pages == 2
    later = advance(same.state, now=3600.5, user_id=None, user_key=None, timeout=1800)
    assert later.started and later.end_reason == "timeout"
    assert later.state.visitor_id == first.visitor_id
    login = advance(later.state, now=3601.0, user_id="u", user_key="k", timeout=1800)
    assert login.end_reason == "user_change" and not login.state.reset_pending
    cookie = SessionCookie("secret")
    stored = cookie.load(cookie.dump(login.state))  # what the next request reads
    assert stored is not None and stored.user_id is None and stored.user_key == "k"
    logout = advance(stored, now=3602.0, user_id=None, user_key=None, timeout=1800)
    assert logout.state.reset_pending
    assert logout.ended is not None and logout.ended.user_id is None  # not named
    again = advance(stored, now=9000.0, user_id="u", user_key="k", timeout=1800)
    assert again.ended is not None and again.ended.user_id == "u"  # same user: named


def test_the_cookie_stays_small_and_keeps_the_session_for_a_10000_character_id(
    clock: Clock, sent: list[Any]
) -> None:
    browser, _ = make(clock, sent)
    long_id = "u" * 9_990 + "-".join("0123456789")[:10]
    user = Identity(User(long_id, email="long@acme.test"), Account("acme"))
    _, headers = browser.get(user)
    cookie = next(v for n, v in headers if n == "Set-Cookie")
    assert len(cookie.encode()) < 1024
    assert long_id not in cookie
    clock.advance(1)
    browser.get(user, "/two")
    assert names(sent) == ["session_start", "page_view", "page_view"]  # same session
    assert {e["identifyId"] for e in events(sent)} == {long_id}  # from the identity
    other = Identity(User(long_id[:-1] + "x"), Account("acme"))
    browser.get(other, "/three")  # a different user whose id differs in one character
    assert names(sent)[-2:] == ["session_start", "page_view"]
    assert events(sent)[-1]["identifyId"] == long_id[:-1] + "x"


def test_a_cookie_in_the_older_layout_is_a_new_visitor(clock: Clock, sent: list[Any]) -> None:
    import base64
    import json

    from itsdangerous import TimestampSigner

    browser, config = make(clock, sent)
    # The layout before the user id became a digest: itsdangerous-signed, eight
    # fields with the raw id in them.
    old = [str(uuid4()), str(uuid4()), clock.now - 60, clock.now - 60, 3, "u-1", None, 0]
    payload = base64.urlsafe_b64encode(json.dumps(old).encode()).rstrip(b"=")
    signer = TimestampSigner(config.session_signing_secret or "", salt="px_middleware.session")
    browser.cookie = signer.sign(payload).decode()
    body, _ = browser.get(ALICE)
    assert b'"identify"' in body
    assert names(sent) == ["session_start", "page_view"]  # a new visitor, no crash


def test_a_bad_attribute_is_counted_once_for_snippet_and_upsert(
    clock: Clock, sent: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    browser, _ = make(clock, sent)
    identity = Identity(User("u-1", custom={"tags": ["a", "b"], "seats": 3}), Account("acme"))
    with caplog.at_level("WARNING", logger="px_middleware"):
        body, _ = browser.get(identity)
    assert b'"seats":3' in body and b'"tags"' not in body
    user = next(b for kind, b in sent if kind == "user")
    assert user["customAttributes"] == {"seats": 3}  # dropped from the upsert too
    assert browser.tracker.counters.snapshot()["attributes_dropped"] == 1
    assert [r.getMessage() for r in caplog.records if "tags" in r.getMessage()] == [
        "px_middleware: attribute 'tags' dropped: 1; "
        "attribute 'tags': list is not a PX type (use str, int, float, bool, Decimal, "
        "date/datetime, Enum or None)"
    ]


def test_a_bad_attribute_on_every_page_is_counted_each_time_and_logged_once(
    clock: Clock, sent: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Loud, not noisy: the counter has every drop, the log a line per 30 s."""
    browser, _ = make(clock, sent)
    identity = Identity(User("u-1", custom={"tags": ["a"]}))
    with caplog.at_level("WARNING", logger="px_middleware"):
        for _ in range(20):
            browser.get(identity)
    assert browser.tracker.counters.snapshot()["attributes_dropped"] == 20
    assert len([r for r in caplog.records if "tags" in r.getMessage()]) == 1


def test_cached_snippets_tell_equal_values_of_different_types_apart(
    clock: Clock, sent: list[Any]
) -> None:
    """1, 1.0 and True are equal (and hash alike) in Python, but not in JSON."""
    browser, _ = make(clock, sent)
    bodies = [browser.get(Identity(User("u-1", custom={"flag": value})))[0]
              for value in (1, True, 1.0, 1)]
    flags = [re.search(rb'"flag":([^,}]*)', body) for body in bodies]
    assert [m.group(1) if m else None for m in flags] == [b"1", b"true", b"1.0", b"1"]


def test_event_ids_are_unique_and_a_forked_child_gets_a_new_prefix() -> None:
    import os

    from px_middleware.core.events import event_ids

    first, second = event_ids.next(), event_ids.next()
    assert first != second and first.rsplit("-", 1)[0] == second.rsplit("-", 1)[0]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its first id, then leave without cleanup
        os.close(read)
        os.write(write, event_ids.next().encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    assert child and child.rsplit("-", 1)[0] != first.rsplit("-", 1)[0]
    assert child not in (first, second, event_ids.next())


def test_a_cookie_idle_for_more_than_a_year_is_a_new_visitor() -> None:
    cookie = SessionCookie("secret")
    state = SessionState("v-1", "s-1", 1_000.0, 1_000.0, 3, None)
    value = cookie.dump(state)
    assert cookie.load(value, now=1_000.0 + 364 * 86_400) == state
    assert cookie.load(value, now=1_000.0 + 366 * 86_400) is None
    assert cookie.load(value[:-1] + ("A" if value[-1] != "A" else "B"), now=1_000.0) is None


def test_a_cookie_from_another_process_is_verified_and_read_alike() -> None:
    """Values this process issued are remembered; another worker checks the MAC."""
    mine, other = SessionCookie("secret"), SessionCookie("secret")
    state = SessionState("v-1", "s-1", 1_000.0, 1_060.0, 2, "k" * 32, "d" * 16, True, "u-1")
    value = mine.dump(state)
    read_here, read_there = mine.load(value, now=1_100.0), other.load(value, now=1_100.0)
    assert read_here == read_there == state._replace(user_id=None)  # the id is never stored
    assert SessionCookie("another secret").load(value, now=1_100.0) is None

"""``Exchange``: the per-response decisions both adapters share (nonce, attributes, heads)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any

import pytest

from px_middleware import Account, Identity, PXConfig, User
from px_middleware.core.counters import Counters
from px_middleware.core.exchange import Exchange, Snippets
from px_middleware.core.snippet import MARKER

KEY = "AP-TESTKEY12345-2"
PAGE = b"<!doctype html><html><head><title>t</title></head><body>hi</body></html>"
AT = len(b"<!doctype html><html><head>")
HTML = ("Content-Type", "text/html; charset=utf-8")
ADA = Identity(User(id="u-1", email="ada@example.com"), Account(id="acme"))


def make(config: PXConfig | None = None, method: str = "GET",
         request_headers: dict[str, str] | None = None) -> tuple[Exchange, Counters]:
    counters = Counters()
    lowered = {k.lower(): v for k, v in (request_headers or {}).items()}
    exchange = Exchange(
        config or PXConfig(KEY),
        counters,
        method=method,
        path="/page",
        header=lambda name: lowered.get(name.lower()),
        path_allowed=lambda path: True,
    )
    return exchange, counters


def serve(exchange: Exchange, chunks: list[bytes]) -> bytes:
    return b"".join([exchange.feed(c) for c in chunks] + [exchange.close()])


def injected(headers: list[tuple[str, str]], identity: Identity | None = ADA,
             **begin: Any) -> tuple[Exchange, Counters, bytes | None]:
    """Run one page through; the body, or None when the exchange declined."""
    exchange, counters = make()
    assert exchange.accepts(200, headers)
    if not exchange.begin(identity, **begin):
        return exchange, counters, None
    return exchange, counters, serve(exchange, [PAGE])


def script_of(body: bytes) -> bytes:
    start = body.index(b"<script data-px-middleware")
    return body[start : body.index(b"</script>", start) + len(b"</script>")]


def call_args(script: bytes, name: str) -> list[Any]:
    text = script.decode()
    pos = text.index(f'aptrinsic("{name}"') + len(f'aptrinsic("{name}"')
    args, decoder = [], json.JSONDecoder()
    while text[pos] == ",":
        value, pos = decoder.raw_decode(text, pos + 1)
        args.append(value)
    return args


# -- CSP ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "policy",
    [
        "default-src 'self'; script-src 'self' 'nonce-r4nd0m+/=='",
        "script-src 'nonce-r4nd0m+/==' 'strict-dynamic'; object-src 'none'",
        "default-src 'self' 'nonce-r4nd0m+/=='",
        "script-src 'unsafe-inline'; script-src-elem 'nonce-r4nd0m+/=='",
    ],
)
def test_csp_nonce_is_taken_from_the_response_header(policy: str) -> None:
    _, _, body = injected([HTML, ("Content-Security-Policy", policy)])
    assert body is not None
    assert script_of(body).startswith(b'<script data-px-middleware="1" nonce="r4nd0m+/==">')


@pytest.mark.parametrize(
    "policy",
    ["default-src 'self'", "script-src 'self' https://cdn.example.com",
     "script-src 'strict-dynamic' 'sha256-abc='", "script-src-elem 'self'"],
)
def test_csp_that_blocks_inline_scripts_without_a_nonce_means_skip(policy: str) -> None:
    exchange, counters, body = injected([HTML, ("Content-Security-Policy", policy)])
    assert body is None
    assert exchange.skip_reason is not None
    assert "blocks our inline script" in exchange.skip_reason
    assert counters.snapshot()["skipped"] == 1


@pytest.mark.parametrize(
    "headers",
    [
        # The SDK is a script too: its host must be allowed as well as the inline one.
        [HTML, ("Content-Security-Policy",
                "script-src 'self' 'unsafe-inline' https://web-sdk.aptrinsic.com")],
        [HTML, ("Content-Security-Policy", "img-src 'self'")],  # scripts unrestricted
        [HTML, ("Content-Security-Policy-Report-Only", "script-src 'none'")],  # reports only
        [HTML],
    ],
)
def test_csp_that_allows_inline_scripts_needs_no_nonce(headers: list[tuple[str, str]]) -> None:
    _, _, body = injected(headers)
    assert body is not None
    assert script_of(body).startswith(b'<script data-px-middleware="1">')


def test_every_csp_header_is_enforced() -> None:
    # Two policies: the second blocks inline scripts, so the page needs its nonce.
    _, _, body = injected([
        HTML,
        ("Content-Security-Policy", "script-src 'unsafe-inline' https:"),
        ("content-security-policy", "default-src 'self' 'nonce-abc'"),
    ])
    assert body is not None and b' nonce="abc">' in body


def test_an_app_nonce_the_policy_does_not_list_fails_closed() -> None:
    """A browser blocks a script whose nonce the policy does not list; the app's nonce
    used to win over the header's, and the snippet went in only to be blocked."""
    exchange, _, body = injected(
        [HTML, ("Content-Security-Policy", "script-src 'nonce-fromheader'")], nonce="fromapp"
    )
    assert body is None and exchange.skip_reason is not None
    assert "'fromapp' not listed" in exchange.skip_reason


def test_nonce_required_and_missing_fails_closed() -> None:
    exchange, _, body = injected([HTML], nonce=None, nonce_required=True)
    assert body is None
    assert exchange.skip_reason == "a CSP nonce is required but none was found (fail closed)"
    assert exchange.injector is None


def test_nonce_required_and_given_injects() -> None:
    _, _, body = injected([HTML], nonce="abc123", nonce_required=True)
    assert body is not None and b' nonce="abc123">' in body


@pytest.mark.parametrize("nonce", ['abc" onload="alert(1)', "a b", "<x>", "é"])
def test_a_nonce_with_bad_characters_means_skip(nonce: str) -> None:
    exchange, _, body = injected([HTML], nonce=nonce)
    assert body is None
    assert exchange.skip_reason == (
        "snippet not rendered: CSP nonce must be 1-256 base64 characters"
    )


# -- attributes -------------------------------------------------------------------------------

def test_a_bad_attribute_is_dropped_and_counted_and_the_rest_is_sent() -> None:
    identity = Identity(
        User(id="u-1", first_name="Ada", custom={"tags": ["a", "b"], "seats": 3}),
        Account(id="acme", custom={"founded": float("nan"), "plan": "pro"}),
    )
    _, counters, body = injected([HTML], identity)
    assert body is not None
    assert call_args(script_of(body), "identify") == [
        {"id": "u-1", "firstName": "Ada", "seats": 3},
        {"id": "acme", "plan": "pro"},
    ]
    assert counters.snapshot()["attributes_dropped"] == 2
    assert counters.snapshot()["injected"] == 1


def _shared_page(snippets: Snippets, identity: Identity,
                 **begin: Any) -> tuple[bytes, dict[str, int]]:
    """One page through an exchange that shares its caches, as a middleware's do."""
    counters = Counters()
    exchange = Exchange(PXConfig(KEY), counters, method="GET", path="/page",
                        header=lambda name: None, path_allowed=lambda path: True,
                        snippets=snippets)
    assert exchange.accepts(200, [HTML]) and exchange.begin(identity, **begin)
    return serve(exchange, [PAGE]), counters.snapshot()


def test_each_request_gets_its_own_nonce_from_a_cached_snippet() -> None:
    snippets = Snippets()
    nonces = ("first+/=", "second_-", "third")
    for nonce in nonces:
        script = script_of(_shared_page(snippets, ADA, nonce=nonce)[0])
        assert script.startswith(f'<script {MARKER} nonce="{nonce}">'.encode())
        assert f'r.nonce="{nonce}";'.encode() in script
        assert [other for other in nonces if other.encode() in script] == [nonce]


def test_set_user_values_change_per_request_under_a_cached_identify() -> None:
    snippets = Snippets()
    for visit in range(3):
        script = script_of(_shared_page(snippets, ADA, set_user={"visit": visit})[0])
        assert call_args(script, "set") == ["user", {"visit": visit}]
        assert call_args(script, "identify")[0]["id"] == "u-1"
        assert script.index(b'"identify"') < script.index(b'"set"')
    assert call_args(script_of(_shared_page(snippets, ADA)[0]), "identify")[0]["id"] == "u-1"
    assert b'"set"' not in _shared_page(snippets, ADA)[0]


def test_cached_attributes_report_their_bad_values_on_every_request() -> None:
    snippets = Snippets()
    for _ in range(3):  # the first coerces, the next two come from the cache
        identity = Identity(User("u-1", custom={"big": float("inf"), "seats": 3}),
                            Account("acme", custom={"founded": dt.date(2001, 2, 3)}))
        body, counts = _shared_page(snippets, identity)
        assert call_args(script_of(body), "identify") == [
            {"id": "u-1", "seats": 3}, {"id": "acme", "founded": 981158400000}
        ]
        assert counts["attributes_dropped"] == 1


class _CountingMapping(Mapping[str, Any]):
    """Custom attributes that count how often they are read whole."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data
        self.reads = 0

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def items(self) -> Any:
        self.reads += 1
        return self._data.items()


def test_an_identity_with_an_unhashable_value_is_worked_out_once() -> None:
    """The cache compares values, it does not hash them: a list (refused, counted on
    every request) does not keep the identity from being coerced only once."""
    snippets = Snippets()
    customs = [_CountingMapping({"tags": ["a"], "seats": 3}) for _ in range(3)]
    for custom in customs:
        body, counts = _shared_page(snippets, Identity(User("u-1", custom=custom)))
        assert call_args(script_of(body), "identify") == [{"id": "u-1", "seats": 3}]
        assert counts["attributes_dropped"] == 1
    assert [custom.reads for custom in customs] == [1, 0, 0]  # coerced reads items()


class _Undecidable:
    """A value that cannot be compared (as a NumPy array cannot)."""

    def __eq__(self, other: object) -> bool:
        raise ValueError("the truth value is ambiguous")

    __hash__ = object.__hash__


def test_a_value_that_cannot_be_compared_is_worked_out_every_time() -> None:
    snippets = Snippets()
    for _ in range(2):
        identity = Identity(User("u-1", email="a@b.test", custom={"v": _Undecidable()}))
        body, counts = _shared_page(snippets, identity)
        assert call_args(script_of(body), "identify") == [{"id": "u-1", "email": "a@b.test"}]
        assert counts["attributes_dropped"] == 1 and counts["injected"] == 1


#: One user's values as they change from one request to the next, in value and in
#: type: through a shared cache, each page's identify must be what a fresh render gives.
_CHANGES: list[Identity] = [
    Identity(User("u-1", email="a@b.test", score=1), Account("acme", nps=1)),
    Identity(User("u-1", email="a@b.test", score=1.0), Account("acme", nps=1)),
    Identity(User("u-1", email="a@b.test", score=True), Account("acme", nps=1)),
    Identity(User("u-1", email="a@b.test", score=1), Account("acme", nps=1.0)),
    Identity(User("u-1", email="c@d.test", score=1), Account("acme", nps=1.0)),
    Identity(User("u-1", email="c@d.test", score=1), Account("acme", nps=1.0,
                                                              custom={"n": 1})),
    Identity(User("u-1", email="c@d.test", score=1), Account("acme", nps=1.0,
                                                              custom={"n": True})),
    Identity(User("u-1", email="c@d.test", score=1), Account("other", nps=1.0)),
    Identity(User("u-1", email="c@d.test", score=1), None),
    Identity(User("u-1", email="c@d.test", sign_up_date=dt.date(2020, 1, 2))),
    Identity(User("u-1", email="c@d.test",
                  sign_up_date=dt.datetime(2020, 1, 2, tzinfo=dt.timezone.utc))),
    Identity(User("u-1", email="c@d.test", custom={"email": "x@y.test"})),
    Identity(User("u-1", email="c@d.test", custom={"x": "email"})),
]


def test_cached_identify_follows_every_change_of_value_and_type() -> None:
    snippets = Snippets()
    for _ in range(2):
        for identity in _CHANGES:
            cached = call_args(script_of(_shared_page(snippets, identity)[0]), "identify")
            fresh = call_args(script_of(_shared_page(Snippets(), identity)[0]), "identify")
            assert cached == fresh and [list(map(type, c.values())) for c in cached] == [
                list(map(type, f.values())) for f in fresh
            ], identity


@pytest.mark.parametrize("values", [(1, 1.0, True, Decimal("1")), ("1", 1, 1.5, Decimal("1.5"))])
def test_cached_attributes_tell_equal_values_of_different_types_apart(
    values: tuple[Any, ...]
) -> None:
    snippets = Snippets()
    for _ in range(2):
        for value in values:
            expected = value if not isinstance(value, Decimal) else json.loads(str(value))
            body, _ = _shared_page(snippets, Identity(User("u-1", custom={"n": value})))
            (user,) = call_args(script_of(body), "identify")
            assert user["n"] == expected and type(user["n"]) is type(expected)


def test_set_user_values_are_coerced_and_bad_ones_dropped() -> None:
    _, counters, body = injected(
        [HTML],
        set_user={
            "trialEnds": dt.date(2024, 1, 2),
            "seats": Decimal("3"),
            "ratio": Decimal("0.25"),
            "beta": True,
            "gone": None,
            "bad": float("inf"),
            "nested": {"a": 1},
        },
    )
    assert body is not None
    assert call_args(script_of(body), "set") == [
        "user", {"trialEnds": 1_704_153_600_000, "seats": 3, "ratio": 0.25, "beta": True}
    ]
    assert counters.snapshot()["attributes_dropped"] == 2


def test_user_hash_that_cannot_be_computed_means_skip() -> None:
    exchange, _ = make(PXConfig(KEY, hmac_secret="s", hash_field="email"))
    assert exchange.accepts(200, [HTML])
    assert not exchange.begin(Identity(User(id="u-1")))
    assert exchange.skip_reason == (
        "snippet not rendered: cannot compute userHash: user has no 'email'"
    )


# -- decisions and heads ----------------------------------------------------------------------

def test_identified_page_with_content_length() -> None:
    headers = [HTML, ("Content-Length", str(len(PAGE))), ("ETag", '"v1"')]
    exchange, counters = make()
    assert exchange.accepts(200, headers)
    assert exchange.begin(ADA)
    with pytest.raises(RuntimeError, match="the head is known only once the injector decided"):
        exchange.headers()  # undecided: the length is not known yet
    body = serve(exchange, [PAGE[:10], PAGE[10:]])
    snippet = script_of(body)
    assert body == PAGE[:AT] + snippet + PAGE[AT:]
    assert exchange.headers() == [
        HTML, ("Content-Length", str(len(body))), ("ETag", 'W/"v1"'), ("Cache-Control", "private"),
    ]
    assert counters.snapshot() == {"injected": 1, "identified": 1}


def test_anonymous_page_keeps_its_cache_control() -> None:
    headers = [HTML, ("Cache-Control", "public, max-age=60")]
    exchange, counters, body = injected(headers, None)
    assert body is not None and b'aptrinsic("identify"' not in body
    assert exchange.headers() == headers  # no Content-Length, no ETag: nothing to change
    assert counters.snapshot() == {"injected": 1}


def test_public_page_with_identity_is_skipped() -> None:
    exchange, _, body = injected([HTML, ("Cache-Control", "public, max-age=60")])
    assert body is None
    assert exchange.skip_reason == "Cache-Control says public; an identified page must stay private"


def test_inject_anonymous_false() -> None:
    exchange, _ = make(PXConfig(KEY, inject_anonymous=False))
    assert exchange.accepts(200, [HTML])
    assert not exchange.begin(None)
    assert exchange.skip_reason == "anonymous visitor and inject_anonymous=False"


def test_inject_false_skips_at_the_request() -> None:
    exchange, _ = make(PXConfig(KEY, inject=False))
    assert exchange.skip_reason == "injection disabled (inject=False)"


def test_request_and_response_reasons_are_the_policy_ones() -> None:
    exchange, _ = make(request_headers={"X-Requested-With": "XMLHttpRequest"})
    assert exchange.skip_reason == "XHR request (X-Requested-With)"
    exchange, counters = make()
    assert not exchange.accepts(200, [("Content-Type", "application/json")])
    assert exchange.skip_reason == "media type 'application/json' is not HTML"
    assert counters.snapshot() == {"skipped": 1}


def test_a_fragment_is_passed_through_and_counted_as_skipped() -> None:
    fragment = b"<div>partial</div>"
    headers = [HTML, ("Content-Length", str(len(fragment))), ("ETag", '"v1"')]
    exchange, counters = make()
    assert exchange.accepts(200, headers)
    assert exchange.begin(None)
    assert serve(exchange, [fragment]) == fragment
    assert exchange.headers() == headers
    assert counters.snapshot() == {"skipped": 1}
    assert exchange.skip_reason == "<div> before <head>/<body>: not a document"


def test_identified_fragment_with_content_length_keeps_the_apps_head() -> None:
    fragment = b"<div>partial</div>"
    headers = [HTML, ("Content-Length", str(len(fragment))), ("ETag", '"v1"')]
    exchange, _ = make()
    assert exchange.accepts(200, headers)
    assert exchange.begin(ADA)
    assert serve(exchange, [fragment]) == fragment
    # The body is the app's, byte for byte, and the length is known: nothing to change.
    assert exchange.headers() == headers

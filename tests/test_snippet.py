"""The rendered ``<script>``: loader, identify, escaping, nonce.

Values are checked by decoding what was rendered (JSON, and where Node.js is present,
by running the script against a stand-in ``window``/``document``), never by comparing
with strings the renderer produced.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import re
import shutil
import subprocess
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from px_middleware import Account, Identity, PXConfig, User
from px_middleware.core.snippet import (
    MARKER,
    NONCE_SLOT,
    identify_call,
    js_value,
    render,
    valid_nonce,
    with_nonce,
)

KEY = "AP-TESTKEY12345-2"
SECRET = "tenant-secret"


def config(**kwargs: Any) -> PXConfig:
    return PXConfig(KEY, **kwargs)


def hmac_hex(value: str, secret: str = SECRET) -> str:
    return hmac.new(secret.encode(), value.encode(), hashlib.sha256).hexdigest()


def calls(script: bytes, name: str) -> list[list[Any]]:
    """The JSON arguments of every ``aptrinsic("<name>", ...)`` call in ``script``."""
    text = script.decode("ascii")
    decoder = json.JSONDecoder()
    found = []
    prefix = f"aptrinsic({json.dumps(name)}"
    start = text.find(prefix)
    while start >= 0:
        pos = start + len(prefix)
        args: list[Any] = [name]
        while text[pos] == ",":
            value, pos = decoder.raw_decode(text, pos + 1)
            args.append(value)
        assert text[pos : pos + 2] == ");", text[pos:]
        found.append(args)
        start = text.find(prefix, pos)
    return found


# -- js_value ------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("</script>", '"\\u003c/script\\u003e"'),
        ("<!--", '"\\u003c!--"'),
        ("a & b", '"a \\u0026 b"'),
        ("it's", '"it\\u0027s"'),
        ("\u2028\u2029", '"\\u2028\\u2029"'),
        ("é🎉", '"\\u00e9\\ud83c\\udf89"'),
        ({"a": [1, 2.5, True, None]}, '{"a":[1,2.5,true,null]}'),
    ],
)
def test_js_value_escapes_what_could_end_a_script(value: Any, expected: str) -> None:
    assert js_value(value) == expected


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_js_value_refuses_non_finite_numbers(value: float) -> None:
    with pytest.raises(ValueError):
        js_value(value)


# -- nonce -----------------------------------------------------------------------------------

@pytest.mark.parametrize("nonce", ["abc", "rAnd0m+/Base64==", "url-safe_nonce", "x" * 256])
def test_valid_nonces_are_accepted(nonce: str) -> None:
    assert valid_nonce(nonce) == nonce
    assert f' nonce="{nonce}">'.encode() in render(config(), nonce=nonce)


@pytest.mark.parametrize(
    "nonce", ["", 'a"b', "a b", "a>b", "<script>", "x" * 257, "n\n", "é", "a'b", "a;b"]
)
def test_bad_nonces_are_refused(nonce: str) -> None:
    with pytest.raises(ValueError, match="CSP nonce"):
        valid_nonce(nonce)
    with pytest.raises(ValueError, match="CSP nonce"):
        render(config(), nonce=nonce)


# -- structure ---------------------------------------------------------------------------------

def test_anonymous_snippet_is_the_loader_only() -> None:
    script = render(config())
    assert script.startswith(f"<script {MARKER}>".encode())
    assert script.endswith(b"</script>")
    assert (
        b'})(window,document,"https://web-sdk.aptrinsic.com/api/aptrinsic.js",'
        b'"AP-TESTKEY12345-2");' in script
    )
    assert calls(script, "identify") == []
    assert calls(script, "reset") == []


@pytest.mark.parametrize(
    ("kwargs", "url"),
    [
        ({"data_center": "EU"}, "https://web-sdk-eu.aptrinsic.com/api/aptrinsic.js"),
        ({"data_center": "local"}, "http://127.0.0.1:8787/api/aptrinsic.js"),
        ({"sdk_url": "https://px.example.com/sdk.js"}, "https://px.example.com/sdk.js"),
    ],
)
def test_loader_url_follows_the_config(kwargs: dict[str, Any], url: str) -> None:
    assert f"(window,document,{json.dumps(url)},".encode() in render(config(**kwargs))


def test_sdk_config_is_the_fifth_loader_argument() -> None:
    script = render(config(sdk_config={"usePOST": True, "excludeUrls": ["/admin<x>"]}))
    tail = script.split(b"(window,document,", 1)[1].split(b");", 1)[0].decode()
    url, key, sdk = json.loads(f"[{tail}]")
    assert (url, key) == ("https://web-sdk.aptrinsic.com/api/aptrinsic.js", KEY)
    assert sdk == {"usePOST": True, "excludeUrls": ["/admin<x>"]}


def test_identify_carries_typed_attributes_and_a_hex_user_hash() -> None:
    identity = Identity(
        User(
            id=42,  # type: ignore[arg-type]  # ints are accepted at run time
            email="ada@example.com",
            first_name="Ada",
            score=9.5,
            number_of_visits=3,
            sign_up_date=dt.date(2024, 1, 2),
            custom={"isAdmin": True, "plan": None},
        ),
        Account(id="acme", name="Acme", number_of_employees=12),
    )
    script = render(config(hmac_secret=SECRET), identity)
    assert calls(script, "identify") == [
        [
            "identify",
            {
                "id": "42",
                "email": "ada@example.com",
                "firstName": "Ada",
                "score": 9.5,
                "numberOfVisits": 3,
                "signUpDate": 1704153600000,  # 2024-01-02T00:00:00Z
                "isAdmin": True,
                "userHash": hmac_hex("42"),
            },
            {"id": "acme", "name": "Acme", "numberOfEmployees": 12},
        ]
    ]


def test_without_secret_there_is_no_user_hash_and_no_account_argument() -> None:
    script = render(config(), Identity(User(id="u1")))
    assert calls(script, "identify") == [["identify", {"id": "u1"}]]


def test_user_hash_over_email_in_base64() -> None:
    cfg = config(hmac_secret=SECRET, hash_field="email", hash_encoding="base64")
    script = render(cfg, Identity(User(id="u1", email="ada@example.com")))
    digest = hmac.new(SECRET.encode(), b"ada@example.com", hashlib.sha256).digest()
    user = calls(script, "identify")[0][1]
    assert user["userHash"] == base64.b64encode(digest).decode()


def test_user_hash_over_a_missing_email_refuses_to_render() -> None:
    cfg = config(hmac_secret=SECRET, hash_field="email")
    with pytest.raises(ValueError, match="no 'email'"):
        identify_call(cfg, Identity(User(id="u1")))


def test_the_secret_never_reaches_the_page() -> None:
    script = render(config(hmac_secret=SECRET, api_key="rest-key"), Identity(User(id="u1")))
    assert SECRET.encode() not in script
    assert b"rest-key" not in script


def test_reset_identify_and_set_come_in_that_order_after_the_loader() -> None:
    script = render(
        config(), Identity(User(id="u1")), reset=True, set_user={"plan": "pro", "seats": 3}
    ).decode()
    loader_end = script.index('"AP-TESTKEY12345-2");') + len('"AP-TESTKEY12345-2");')
    order = [script.index(p) for p in ('aptrinsic("reset")', 'aptrinsic("identify"',
                                       'aptrinsic("set","user",')]
    assert loader_end <= order[0] < order[1] < order[2]
    assert calls(render(config(), Identity(User(id="u1")), set_user={"plan": "pro"}),
                 "set") == [["set", "user", {"plan": "pro"}]]


def test_set_user_without_identity_is_not_rendered() -> None:
    assert calls(render(config(), None, set_user={"plan": "pro"}), "set") == []


def test_attribute_errors_go_to_the_callback_and_the_rest_is_sent() -> None:
    dropped: list[str] = []
    script = render(
        config(),
        Identity(User(id="u1", custom={"bad": float("nan"), "good": 1}),
                 Account(id="a", custom={"worse": object()})),
        on_attribute_error=lambda name, exc: dropped.append(name),
    )
    assert dropped == ["bad", "worse"]
    assert calls(script, "identify") == [["identify", {"id": "u1", "good": 1}, {"id": "a"}]]


# -- no breakout -------------------------------------------------------------------------------

_NASTY = st.one_of(
    st.text(),
    st.sampled_from(["</script>", "</SCRIPT >", "<!--", "-->", "\u2028", "\u2029", '"', "'",
                     "&", "&amp;", "\\", "</", "]]>", "<script>", "\x00", "\ud7ff\ue000"]),
    st.lists(st.sampled_from(["</script>", "<!--", "\u2028", "'", '"', "&", "é"]))
    .map("".join),
)
_ATTRS = st.dictionaries(st.text(min_size=1).map(lambda k: "c_" + k), _NASTY, max_size=4)


@settings(max_examples=250, deadline=None)
@given(
    user_id=_NASTY.filter(lambda s: s.strip() != "" and len(s) <= 4096),
    email=_NASTY.filter(lambda s: len(s) <= 4096),
    user_attrs=_ATTRS,
    account_attrs=_ATTRS,
    set_attrs=_ATTRS,
    product_config=st.sampled_from([None, {"excludeUrls": ["</script><!--"]}]),
)
def test_no_attribute_value_can_break_out_of_the_script(
    user_id: str,
    email: str,
    user_attrs: dict[str, str],
    account_attrs: dict[str, str],
    set_attrs: dict[str, str],
    product_config: dict[str, Any] | None,
) -> None:
    cfg = config(hmac_secret=SECRET, sdk_config=product_config)
    identity = Identity(
        User(id=user_id, email=email, custom=user_attrs),
        Account(id="acct", name=email, custom=account_attrs),
    )
    script = render(cfg, identity, set_user=set_attrs)
    script.decode("ascii")  # pure ASCII: the injector splices bytes without decoding
    assert script.count(b"<") == 2  # <script ...> and </script>, nothing in between
    assert script.count(b"</") == 1 and script.endswith(b"</script>")
    assert b"<!--" not in script
    body = script[script.index(b">") + 1 : -len(b"</script>")]
    for forbidden in (b">", b"&", b"'"):  # nothing XHTML or an attribute context minds
        assert forbidden not in body
    user = {"id": user_id, "email": email, **user_attrs, "userHash": hmac_hex(user_id)}
    account = {"id": "acct", "name": email, **account_attrs}
    assert calls(script, "identify") == [["identify", user, account]]
    assert calls(script, "set") == ([["set", "user", set_attrs]] if set_attrs else [])


# -- the script really runs ---------------------------------------------------------------------

_NODE_HARNESS = r"""
const vm = require("vm");
const sources = JSON.parse(require("fs").readFileSync(0, "utf8"));
const results = sources.map((src) => {
  const created = [];
  const inserted = [];
  const document = {
    createElement: (tag) => { const el = {tag}; created.push(el); return el; },
    getElementsByTagName: () => [{parentNode: {insertBefore: (el) => inserted.push(el)}}],
  };
  const ctx = vm.createContext({document});
  ctx.window = ctx;
  vm.runInContext(src, ctx);
  return {
    queue: (ctx.aptrinsic.q || []).map((args) => Array.from(args)),
    key: ctx.aptrinsic.p,
    config: ctx.aptrinsic.c === undefined ? null : ctx.aptrinsic.c,
    scripts: inserted.map((el) => ({src: el.src, async: el.async,
                                    nonce: el.nonce === undefined ? null : el.nonce})),
  };
});
process.stdout.write(JSON.stringify(results));
"""


def run_in_node(scripts: list[bytes]) -> list[dict[str, Any]]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    sources = [re.sub(rb"^<script[^>]*>|</script>$", b"", s).decode() for s in scripts]
    done = subprocess.run(
        [node, "-e", _NODE_HARNESS], input=json.dumps(sources), capture_output=True,
        text=True, timeout=30, check=True,
    )
    result: list[dict[str, Any]] = json.loads(done.stdout)
    return result


def test_the_rendered_script_runs_and_queues_the_calls() -> None:
    nasty = "</script><!-- \u2028 \u2029 ' \" & é 🎉 \\"
    identity = Identity(
        User(id="u-1", email="ada@example.com", custom={"note": nasty, "n": 1.5}),
        Account(id="acme", name=nasty),
    )
    cfg = config(hmac_secret=SECRET, sdk_config={"usePOST": True})
    scripts = [
        render(cfg, identity, reset=True, set_user={"plan": nasty}, nonce="abc"),
        render(config(data_center="EU")),
    ]
    identified, anonymous = run_in_node(scripts)
    assert identified == {
        "queue": [
            ["reset"],
            ["identify",
             {"id": "u-1", "email": "ada@example.com", "note": nasty, "n": 1.5,
              "userHash": hmac_hex("u-1")},
             {"id": "acme", "name": nasty}],
            ["set", "user", {"plan": nasty}],
        ],
        "key": KEY,
        "config": {"usePOST": True},
        "scripts": [
            # The SDK element carries the nonce too, or a nonce-only CSP blocks it.
            {"src": f"https://web-sdk.aptrinsic.com/api/aptrinsic.js?a={KEY}", "async": True,
             "nonce": "abc"}
        ],
    }
    assert anonymous == {
        "queue": [],
        "key": KEY,
        "config": None,
        "scripts": [
            {"src": f"https://web-sdk-eu.aptrinsic.com/api/aptrinsic.js?a={KEY}", "async": True,
             "nonce": None}
        ],
    }


@given(nonce=st.from_regex(r"[A-Za-z0-9+/_=-]{1,64}", fullmatch=True))
def test_the_nonce_on_the_sdk_element_keeps_the_script_ascii_and_xhtml_safe(nonce: str) -> None:
    script = render(config(), nonce=nonce)
    script.decode("ascii")
    body = script[script.index(b">") + 1 : -len(b"</script>")]
    for forbidden in (b"<", b">", b"&", b"'"):
        assert forbidden not in body
    assert f'r.nonce="{nonce}";'.encode() in body


@given(nonce=st.from_regex(r"[A-Za-z0-9+/_=-]{1,256}", fullmatch=True), reset=st.booleans())
def test_a_snippet_rendered_with_the_nonce_slot_takes_any_nonce_as_if_rendered_with_it(
    nonce: str, reset: bool
) -> None:
    identity = Identity(User("u-1", email="ada@acme.test"), Account("acme", name="Acme"))
    cached = render(config(), identity, nonce=NONCE_SLOT, reset=reset)
    assert with_nonce(cached, nonce) == render(config(), identity, nonce=nonce, reset=reset)


def test_a_bad_nonce_is_refused_by_the_slot_too() -> None:
    with pytest.raises(ValueError, match="nonce"):
        with_nonce(render(config(), nonce=NONCE_SLOT), 'x" onload="alert(1)')

"""CSP decisions: a table of real policies, each with the verdict a browser reaches.

Every row says why a browser (CSP3, as Chromium implements it) runs or blocks our two
scripts: the inline loader (with the nonce, when there is one) and the SDK element it
creates from ``SDK`` (with the same nonce). tests/test_browser.py checks a sample of
these rows against Chromium itself.
"""

from __future__ import annotations

import pytest

from px_middleware.core import csp

SDK = "https://web-sdk.aptrinsic.com/api/aptrinsic.js"
PAGE = "https://app.example.com"
ENFORCE, REPORT = "Content-Security-Policy", "Content-Security-Policy-Report-Only"

# (headers, the app's nonce, allowed, the nonce used)
TABLE: list[tuple[str, list[tuple[str, str]], str | None, bool, str | None]] = [
    ("no policy", [], None, True, None),
    ("scripts unrestricted", [(ENFORCE, "img-src 'self'")], None, True, None),
    ("nonce only: the SDK is allowed by the nonce it carries",
     [(ENFORCE, "script-src 'nonce-abc'")], "abc", True, "abc"),
    ("nonce taken from the policy", [(ENFORCE, "script-src 'nonce-abc'")], None, True, "abc"),
    ("keywords in any case", [(ENFORCE, "Script-Src 'NONCE-AbC' 'Strict-Dynamic'")], "AbC",
     True, "AbC"),
    ("nonce values are case-sensitive", [(ENFORCE, "script-src 'nonce-AbC'")], "abc", False,
     None),
    ("app nonce not listed", [(ENFORCE, "script-src 'nonce-abc'")], "xyz", False, None),
    ("strict-dynamic lets the loader create the SDK",
     [(ENFORCE, "script-src 'nonce-n1' 'strict-dynamic' https: 'unsafe-inline'")], "n1",
     True, "n1"),
    ("unsafe-inline switched off by a hash",
     [(ENFORCE, "script-src 'sha256-AAAA' 'unsafe-inline' https:")], None, False, None),
    ("unsafe-inline switched off by a nonce the app does not give",
     [(ENFORCE, "script-src 'nonce-other' 'unsafe-inline' https:")], "mine", False, None),
    ("unsafe-inline switched off by strict-dynamic",
     [(ENFORCE, "script-src 'strict-dynamic' 'unsafe-inline' https:")], None, False, None),
    ("unsafe-inline and a wildcard host", [(ENFORCE, "script-src 'unsafe-inline' *.aptrinsic.com")],
     None, True, None),
    ("unsafe-inline, the SDK host not allowed", [(ENFORCE, "script-src 'unsafe-inline' 'self'")],
     None, False, None),
    ("unsafe-inline, https: scheme source", [(ENFORCE, "default-src 'unsafe-inline' https:")],
     None, True, None),
    ("unsafe-inline, http: source upgrades to https",
     [(ENFORCE, "default-src 'unsafe-inline' http:")], None, True, None),
    ("unsafe-inline, wrong scheme", [(ENFORCE, "default-src 'unsafe-inline' wss:")],
     None, False, None),
    ("host with a matching path prefix",
     [(ENFORCE, "script-src 'unsafe-inline' https://web-sdk.aptrinsic.com/api/")], None, True,
     None),
    ("host with another path", [(ENFORCE, "script-src 'unsafe-inline' web-sdk.aptrinsic.com/x/")],
     None, False, None),
    ("host with an exact file path",
     [(ENFORCE, "script-src 'unsafe-inline' web-sdk.aptrinsic.com/api/aptrinsic.js")], None,
     True, None),
    ("host with the wrong port",
     [(ENFORCE, "script-src 'unsafe-inline' web-sdk.aptrinsic.com:8443")], None, False, None),
    ("host with any port", [(ENFORCE, "script-src 'unsafe-inline' web-sdk.aptrinsic.com:*")],
     None, True, None),
    ("a wildcard does not match the bare domain",
     [(ENFORCE, "script-src 'unsafe-inline' *.web-sdk.aptrinsic.com")], None, False, None),
    ("star allows any http(s) host", [(ENFORCE, "script-src 'unsafe-inline' *")], None, True,
     None),
    ("'none' allows nothing", [(ENFORCE, "script-src 'none'")], "abc", False, None),
    ("script-src-elem wins over script-src",
     [(ENFORCE, "script-src 'nonce-abc'; script-src-elem 'self'")], "abc", False, None),
    ("script-src wins over default-src",
     [(ENFORCE, "default-src 'none'; script-src 'nonce-abc'")], "abc", True, "abc"),
    ("the first duplicate directive wins",
     [(ENFORCE, "script-src 'nonce-abc'; script-src 'unsafe-inline' *")], None, True, "abc"),
    ("the first duplicate directive wins, blocking",
     [(ENFORCE, "script-src 'self'; script-src 'unsafe-inline' *")], None, False, None),
    ("two headers: the second forbids inline",
     [(ENFORCE, "script-src 'unsafe-inline' https:"), (ENFORCE, "script-src https:")], None,
     False, None),
    ("two comma-joined policies: the second forbids inline",
     [(ENFORCE, "script-src 'unsafe-inline' https:, script-src https:")], None, False, None),
    ("two policies with the same nonce",
     [(ENFORCE, "script-src 'nonce-abc'"), (ENFORCE.lower(), "default-src 'nonce-abc'")],
     None, True, "abc"),
    ("two policies with different nonces: no single nonce satisfies both",
     [(ENFORCE, "script-src 'nonce-a1'"), (ENFORCE, "script-src 'nonce-b2'")], None, False,
     None),
    ("report-only never blocks", [(REPORT, "script-src 'none'")], None, True, None),
    ("report-only still gives its nonce", [(REPORT, "script-src 'nonce-rep'")], None, True, "rep"),
    ("'self' is the page's origin, not the SDK's",
     [(ENFORCE, "script-src 'unsafe-inline' 'self'")], None, False, None),
]


@pytest.mark.parametrize(
    ("headers", "nonce", "allowed", "used"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_policy_table(
    headers: list[tuple[str, str]], nonce: str | None, allowed: bool, used: str | None
) -> None:
    verdict = csp.check(headers, nonce, SDK, PAGE)
    assert verdict.allowed is allowed, verdict.reason
    if allowed:
        assert verdict.nonce == used
    else:
        assert "fail closed" in verdict.reason


def test_self_matches_when_the_sdk_is_served_by_the_page_origin() -> None:
    local = "http://127.0.0.1:8000/api/aptrinsic.js"
    policy = [(ENFORCE, "script-src 'unsafe-inline' 'self'")]
    assert csp.check(policy, None, local, "http://127.0.0.1:8000").allowed
    assert not csp.check(policy, None, local, "http://127.0.0.1:9000").allowed


def test_reasons_name_the_policy_and_what_it_blocks() -> None:
    verdict = csp.check([(ENFORCE, "script-src 'nonce-a'"), (ENFORCE, "script-src 'self'")],
                        "a", SDK, PAGE)
    assert not verdict.allowed
    assert verdict.reason.startswith("CSP policy 2 of 2 blocks our inline script")
    verdict = csp.check([(ENFORCE, "script-src 'unsafe-inline' https://cdn.example.com")],
                        None, SDK, PAGE)
    assert "blocks the PX SDK at https://web-sdk.aptrinsic.com" in verdict.reason

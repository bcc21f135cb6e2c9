"""Whether a request/response may get the snippet, and how its headers change."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from px_middleware import PXConfig
from px_middleware.asgi import _content_type
from px_middleware.core.policy import (
    ResponseHead,
    content_type,
    media_type,
    public_cache_reason,
    request_skip_reason,
    response_skip_reason,
    rewrite_headers,
)

OK = frozenset({200})


def headers_getter(headers: dict[str, str]) -> Callable[[str], str | None]:
    lowered = {k.lower(): v for k, v in headers.items()}
    return lambda name: lowered.get(name.lower())


def request_reason(
    method: str = "GET", path: str = "/", headers: dict[str, str] | None = None,
    config: PXConfig | None = None,
) -> str | None:
    allowed = (config or PXConfig("AP-TESTKEY12345-2")).path_allowed()
    return request_skip_reason(method, path, headers_getter(headers or {}), allowed(path))


# -- request -----------------------------------------------------------------------------

def test_a_plain_page_request_is_accepted() -> None:
    assert request_reason() is None
    assert request_reason(headers={"Accept": "text/html", "HX-Boosted": "true"}) is None


@pytest.mark.parametrize("method", ["HEAD", "POST", "PUT", "OPTIONS", "get"])
def test_only_get(method: str) -> None:
    assert request_reason(method) == f"method {method} (only GET pages get the snippet)"


@pytest.mark.parametrize("value", ["XMLHttpRequest", "xmlhttprequest"])
def test_xhr(value: str) -> None:
    assert request_reason(headers={"X-Requested-With": value}) == "XHR request (X-Requested-With)"


def test_htmx_partial_is_skipped_but_a_boosted_page_is_not() -> None:
    assert request_reason(headers={"HX-Request": "true"}) == "htmx partial request (HX-Request)"
    assert request_reason(headers={"HX-Request": "true", "HX-Boosted": "true"}) is None


def test_turbo_frame() -> None:
    assert request_reason(headers={"Turbo-Frame": "modal"}) == "Turbo Frame request"


@pytest.mark.parametrize(
    "headers",
    [{"Sec-Purpose": "prefetch"}, {"Sec-Purpose": "prefetch;prerender"},
     {"Purpose": "prefetch"}, {"Sec-Purpose": "Prefetch"}],
)
def test_prefetch(headers: dict[str, str]) -> None:
    assert request_reason(headers=headers) == "prefetch request (Sec-Purpose/Purpose)"


def test_path_include_and_exclude_globs() -> None:
    config = PXConfig("AP-TESTKEY12345-2", include_paths=("/app/*",),
                      exclude_paths=("/app/api/*", "*.json"))
    assert request_reason(path="/app/home", config=config) is None
    assert request_reason(path="/app/api/users", config=config) == (
        "path '/app/api/users' excluded by include_paths/exclude_paths"
    )
    assert request_reason(path="/app/x.json", config=config) is not None
    assert request_reason(path="/blog", config=config) is not None


# -- response -------------------------------------------------------------------------------

HTML = ("Content-Type", "text/html; charset=utf-8")


@pytest.mark.parametrize(
    "content_type",
    ["text/html", "TEXT/HTML", "Text/Html; Charset=UTF-8", " text/html ;charset=utf-8",
     "application/xhtml+xml", "application/XHTML+XML; charset=utf-8"],
)
def test_html_media_types_case_and_parameters_ignored(content_type: str) -> None:
    assert response_skip_reason(200, [("content-type", content_type)], OK) is None


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [("application/json", "application/json"), ("text/plain", "text/plain"),
     ("text/event-stream", "text/event-stream"), ("TEXT/EVENT-STREAM; x=1", "text/event-stream"),
     ("text/htmlx", "text/htmlx"), ("application/xml", "application/xml"), ("", "missing")],
)
def test_other_media_types(content_type: str, kind: str) -> None:
    assert response_skip_reason(200, [("Content-Type", content_type)], OK) == (
        f"media type {kind!r} is not HTML"
    )


def test_missing_content_type() -> None:
    assert response_skip_reason(200, [], OK) == "media type 'missing' is not HTML"


@pytest.mark.parametrize("status", [201, 204, 301, 302, 304, 404, 500])
def test_status(status: int) -> None:
    assert response_skip_reason(status, [HTML], OK) == f"status {status}"
    assert response_skip_reason(status, [HTML], frozenset({status})) is None


@pytest.mark.parametrize("encoding", ["gzip", "br", "GZIP", "deflate, gzip", "zstd"])
def test_any_content_encoding_is_never_touched(encoding: str) -> None:
    assert response_skip_reason(200, [HTML, ("content-encoding", encoding)], OK) == (
        f"Content-Encoding {encoding} (never decompressed)"
    )


def test_identity_content_encoding_is_no_encoding() -> None:
    assert response_skip_reason(200, [HTML, ("Content-Encoding", "identity")], OK) is None


@pytest.mark.parametrize(
    "value", ["attachment", 'attachment; filename="page.html"', "Attachment;filename=a.html"]
)
def test_attachment(value: str) -> None:
    assert response_skip_reason(200, [HTML, ("Content-Disposition", value)], OK) == (
        "Content-Disposition: attachment"
    )
    assert response_skip_reason(200, [HTML, ("Content-Disposition", "inline")], OK) is None


@pytest.mark.parametrize(
    "value", ["no-transform", "public, No-Transform", "max-age=0,no-transform"]
)
def test_no_transform(value: str) -> None:
    assert response_skip_reason(200, [HTML, ("Cache-Control", value)], OK) == (
        "Cache-Control: no-transform"
    )


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", "12 34", "\u00b2", "\u0661\u0662"])
def test_invalid_content_length(value: str) -> None:
    assert response_skip_reason(200, [HTML, ("Content-Length", value)], OK) == (
        f"invalid Content-Length {value!r}"
    )


def test_valid_content_length() -> None:
    assert response_skip_reason(200, [HTML, ("Content-Length", " 1234 ")], OK) is None


def test_media_type() -> None:
    assert media_type(None) == ""
    assert media_type("") == ""
    assert media_type("Text/HTML ; charset=x") == "text/html"


@given(st.lists(st.tuples(
    st.sampled_from(["Content-Type", "content-type", "CONTENT-TYPE", "Content-Types",
                     "X-Content-Type", "Content-Length"]),
    st.sampled_from(["text/html", "application/json", "Text/HTML; charset=x", ""]),
), max_size=5))
def test_the_pass_through_check_reads_the_content_type_the_head_reads(
    headers: list[tuple[str, str]]
) -> None:
    """Before an exchange, the drivers read only the Content-Type (ASGI's from the raw
    headers); the response head read later must see the same one, the last."""
    ours = content_type(headers)
    expected = [v for n, v in headers if n.lower() == "content-type"]
    assert ours == (expected[-1] if expected else None)
    assert media_type(ours) == ResponseHead(headers).media_type
    raw = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in headers]
    assert _content_type(raw) == ours


# -- public caches ----------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["public", "PUBLIC, max-age=60", "max-age=60, s-maxage=300"])
def test_public_pages_refuse_an_identified_snippet(value: str) -> None:
    assert public_cache_reason([HTML, ("cache-control", value)]) == (
        "Cache-Control says public; an identified page must stay private"
    )


@pytest.mark.parametrize("value", ["private", "no-cache", "max-age=60", "no-store"])
def test_other_caching_is_fine(value: str) -> None:
    assert public_cache_reason([("Cache-Control", value)]) is None
    assert public_cache_reason([]) is None


# -- rewrite_headers ------------------------------------------------------------------------

def test_rewrite_keeps_order_and_duplicates_and_recomputes_length() -> None:
    headers = [
        ("Content-Type", "text/html"),
        ("Set-Cookie", "a=1"),
        ("Content-Length", "100"),
        ("Set-Cookie", "b=2"),
        ("ETag", '"abc"'),
        ("X-Other", "x"),
    ]
    assert rewrite_headers(headers, identified=False, length_delta=50) == [
        ("Content-Type", "text/html"),
        ("Set-Cookie", "a=1"),
        ("Content-Length", "150"),
        ("Set-Cookie", "b=2"),
        ("ETag", 'W/"abc"'),
        ("X-Other", "x"),
    ]
    assert headers[2] == ("Content-Length", "100")  # the input list is not modified


def test_rewrite_matches_names_case_insensitively() -> None:
    headers = [("content-length", "10"), ("etag", '"x"'), ("CACHE-CONTROL", "max-age=5")]
    assert rewrite_headers(headers, identified=True, length_delta=5) == [
        ("content-length", "15"), ("etag", 'W/"x"'), ("CACHE-CONTROL", "private, max-age=5"),
    ]


def test_weak_etag_stays_as_it_is() -> None:
    assert rewrite_headers([("ETag", 'W/"x"')], identified=False, length_delta=5) == [
        ("ETag", 'W/"x"')
    ]


def test_nothing_changes_without_a_length_change_for_anonymous_pages() -> None:
    headers = [("Content-Length", "10"), ("ETag", '"x"'), ("Cache-Control", "max-age=5")]
    assert rewrite_headers(headers, identified=False, length_delta=0) == headers


def test_identified_page_without_cache_control_gets_private() -> None:
    assert rewrite_headers([("Content-Type", "text/html")], identified=True, length_delta=3) == [
        ("Content-Type", "text/html"), ("Cache-Control", "private"),
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("max-age=60", "private, max-age=60"),
        ("no-cache", "private, no-cache"),
        ("private", "private"),
        ("Private, max-age=5", "Private, max-age=5"),
        ("no-store", "no-store"),
        ("max-age=0,  must-revalidate", "private, max-age=0, must-revalidate"),
    ],
)
def test_identified_page_cache_control_is_at_least_private(value: str, expected: str) -> None:
    assert rewrite_headers([("Cache-Control", value)], identified=True, length_delta=1) == [
        ("Cache-Control", expected)
    ]

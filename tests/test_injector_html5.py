"""The injector against an implementation of the HTML5 spec (html5lib) as the oracle.

For generated documents (tests/html5_documents.py) the injector inserts a unique
marker element; html5lib then parses the result. The marker must be a child of the
``<head>`` the parser built, after every charset/X-UA-Compatible meta in it, and the
rest of the tree must be exactly the tree of the page without the marker (nothing of
the page moved). A fragment, and a page whose head already holds a PX loader, must
come out byte for byte as they went in. Then: any chunking gives the same bytes, and
the scanner's work is linear however the body is chunked (an operation count).
"""

from __future__ import annotations

import itertools
import random
import xml.etree.ElementTree as ET

import html5lib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from px_middleware.core.injector import LIMIT, Injector, KnownHeads
from tests.html5_documents import MARKER, Generated, generate


def parse(data: bytes) -> ET.Element:
    # scripting=True: a browser with JavaScript on reads <noscript> as raw text.
    root: ET.Element = html5lib.parse(
        data, treebuilder="etree", namespaceHTMLElements=False, scripting=True
    )
    return root


def inject(data: bytes, chunks: list[bytes] | None = None) -> tuple[bytes, Injector]:
    injector = Injector(MARKER)
    out = [injector.feed(chunk) for chunk in (chunks if chunks is not None else [data])]
    out.append(injector.close())
    return b"".join(out), injector


def head_of(root: ET.Element) -> ET.Element:
    head = root.find("head")
    assert head is not None
    return head


def has_loader_in_head(root: ET.Element) -> bool:
    return any("aptrinsic" in (script.text or "") for script in head_of(root).iter("script"))


def is_marker(node: ET.Element) -> bool:
    return node.tag == "script" and node.get("data-px-mark") == "1"


def charsetish(node: ET.Element) -> bool:
    if node.tag != "meta":
        return False
    text = " ".join(f"{k}={v}" for k, v in node.attrib.items()).lower()
    return "charset" in text or "x-ua-compatible" in text


def check_against_html5lib(doc: Generated) -> None:
    out, injector = inject(doc.data)
    if doc.kind == "fragment":
        assert out == doc.data and injector.inserted is False, injector.reason
        return
    original = parse(doc.data)
    if has_loader_in_head(original):
        assert out == doc.data and "loader" in injector.reason
        return
    assert injector.inserted, injector.reason
    assert out.count(MARKER) == 1 and out.replace(MARKER, b"", 1) == doc.data
    tree = parse(out)
    assert len([n for n in tree.iter("script") if is_marker(n)]) == 1
    head = head_of(tree)
    children = list(head)
    markers = [i for i, node in enumerate(children) if is_marker(node)]
    assert markers, "the snippet is not a child of <head>: " + ET.tostring(tree).decode()
    assert not [n for n in children[markers[0] + 1 :] if charsetish(n)], "charset meta after it"
    marker = children[markers[0]]
    if marker.tail:  # etree keeps the text after an element on it: give it back
        if markers[0]:
            previous = children[markers[0] - 1]
            previous.tail = (previous.tail or "") + marker.tail
        else:
            head.text = (head.text or "") + marker.tail
    head.remove(marker)
    assert ET.tostring(tree) == ET.tostring(original), "the page's own tree changed"


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rnd=st.randoms(use_true_random=False))
def test_generated_documents_land_where_html5lib_puts_the_head(rnd: random.Random) -> None:
    check_against_html5lib(generate(rnd))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rnd=st.randoms(use_true_random=False), data=st.data())
def test_generated_documents_are_chunking_invariant(
    rnd: random.Random, data: st.DataObject
) -> None:
    doc = generate(rnd)
    whole, _ = inject(doc.data)
    one_byte = [doc.data[i : i + 1] for i in range(len(doc.data))]
    assert inject(doc.data, one_byte)[0] == whole
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(doc.data)), max_size=10))))
    points = [0, *cuts, len(doc.data)]
    assert inject(doc.data, [doc.data[a:b] for a, b in itertools.pairwise(points)])[0] == whole


@pytest.mark.parametrize(
    "page",
    [
        # Flask's tutorial (flaskr) base template, rendered: no <head>, no <body>.
        b"<!doctype html>\n<title>Log In - Flaskr</title>\n"
        b'<link rel="stylesheet" href="/static/style.css">\n<nav>\n  <h1>Flaskr</h1>\n',
        b"<!doctype html><meta charset=utf-8><title>t</title><p>hi",
        b"<!DOCTYPE html><script><!--<script>x='</script>'--></script><p>",
        b"<html><head><template><meta charset=x><template><p></template><!-- </template> -->"
        b"</template><title>t</title></head><body>",
    ],
)
def test_known_pages_against_html5lib(page: bytes) -> None:
    check_against_html5lib(Generated(page, "document"))


def test_template_contents_are_not_the_head() -> None:
    """html5lib 1.1 has no <template> support, so the oracle for templates is the spec:
    a meta inside a template is template content, and a nested template's end tag does
    not end the outer one (Chromium agrees: see test_browser's template check)."""
    before = b"<!doctype html><html><head><meta charset=utf-8>"
    after = (
        b"<template><meta charset=latin-1><template><div>x</div></template>"
        b"<!-- </template><meta charset=y> --><p>still template</p></template>"
        b"<title>t</title></head><body>"
    )
    assert inject(before + after)[0] == before + MARKER + after


@pytest.mark.parametrize(
    ("page", "reason"),
    [
        (b"<title>t</title><link rel=x><nav>x</nav>", "fragment"),
        (b'<?xml version="1.0"?><feed><head><title>t</title></head></feed>', "not a document"),
        (b"<html><head/><body>x</body></html>", "<head/>"),
        (b"<!doctype html><head><script>//<![CDATA[\nx='</script>';//]]></script>", "CDATA"),
    ],
)
def test_pages_left_alone(page: bytes, reason: str) -> None:
    out, injector = inject(page)
    assert out == page and injector.inserted is False
    assert reason in injector.reason


# -- linear work -----------------------------------------------------------------------------

def _heads() -> dict[str, bytes]:
    size = LIMIT - 1024
    return {
        "one comment": b"<!doctype html><head><!--" + b"x-" * (size // 2) + b"-->",
        "one script": b"<!doctype html><head><script>" + b"a<b-- <!-x " * (size // 11)
        + b"</script>",
        "escaped script": b"<!doctype html><head><script><!--<script>" + b"-<x " * (size // 4)
        + b"</script>--></script>",
        "one title": b"<!doctype html><head><title>" + b"<a> " * (size // 4) + b"</title>",
        "many tags": b"<!doctype html><head>" + b'<meta name="a" content="b>c">' * (size // 30),
        "many comments": b"<!doctype html><head>" + b"<!-- c -->" * (size // 10),
        "long attribute": b'<!doctype html><head><meta content="' + b"x>" * (size // 4)
        + b'">',
    }


def _scanned(page: bytes, chunk: int) -> int:
    injector = Injector(MARKER)
    for start in range(0, len(page), chunk):
        injector.feed(page[start : start + chunk])
    injector.close()
    return injector.scanned


@pytest.mark.parametrize("name", sorted(_heads()))
def test_one_byte_chunks_scan_each_byte_a_bounded_number_of_times(name: str) -> None:
    """``scanned`` counts the bytes each search or match was handed (a failed search
    counts its whole window), so re-reading an open comment on every chunk would show
    up here as a count that grows with the square of the head."""
    page = _heads()[name] + b"</head><body>"
    whole = _scanned(page, len(page))
    assert whole <= 4 * len(page)
    one_byte = _scanned(page, 1)
    # The "long attribute" head re-reads its one tag at every ">" (a tag is re-read
    # only once a ">" arrived): that is the quadratic case this bound would catch.
    assert one_byte <= 40 * len(page), (one_byte, len(page))
    small = page[: 4096] if name != "long attribute" else page
    per_byte_small = _scanned(small, 1) / len(small)
    assert one_byte / len(page) <= 2 * per_byte_small + 40


# -- known heads: a remembered decision is the decision the scanner would make ------------

def _cold(data: bytes) -> tuple[bytes, bool | None, bool, str]:
    out, injector = inject(data)
    return out, injector.inserted, injector.document, injector.reason


def _known(data: bytes, known: KnownHeads) -> tuple[bytes, bool | None, bool, str]:
    injector = Injector(MARKER, known=known)
    out = injector.feed(data) + injector.close()
    return out, injector.inserted, injector.document, injector.reason


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rnd=st.randoms(use_true_random=False), data=st.data())
def test_a_known_head_decides_every_body_that_starts_with_it_as_a_cold_scan_does(
    rnd: random.Random, data: st.DataObject
) -> None:
    """Warm the cache on one document, then inject documents that share a prefix of
    every length with it (the rest from another document): each must come out as the
    plain injector makes it. Small windows, so the remembered prefixes are cut short
    of the decision point as often as past it."""
    first, second = generate(rnd), generate(rnd)
    known = KnownHeads(window=data.draw(st.sampled_from([1, 3, 8, 64])))
    assert _known(first.data, known) == _cold(first.data)
    assert _known(first.data, known) == _cold(first.data)  # now from the cache
    for cut in sorted(set(data.draw(st.lists(st.integers(0, len(first.data)), max_size=6)))):
        mixed = first.data[:cut] + second.data[min(cut, len(second.data)) :]
        assert _known(mixed, known) == _cold(mixed), (cut, mixed)


def test_a_known_head_is_taken_without_scanning_and_a_changed_one_is_not() -> None:
    head = b"<!doctype html><html><head><meta charset=utf-8><title>t</title>"
    page = head + b"<link rel=stylesheet href=/a.css>" * 20 + b"</head><body>" + b"x" * 9000
    known = KnownHeads()
    first = Injector(MARKER, known=known)
    assert first.feed(page) == _cold(page)[0] and first.scanned > len(head)
    assert len(known.new) == 1 and len(known.new[0][0]) < 2048
    again = Injector(MARKER, known=known)
    assert again.feed(page[:-5] + b"other") == _cold(page[:-5] + b"other")[0]
    assert again.scanned == len(known.seen[0][0])  # one comparison, no tokenizing
    changed = page.replace(b"charset=utf-8>", b"charset=utf-8><meta charset=x>")
    assert _known(changed, known) == _cold(changed)
    assert (len(known.seen), len(known.new)) == (1, 1)


def test_heads_that_never_repeat_do_not_push_out_one_that_does() -> None:
    known = KnownHeads(size=4)
    page = b"<!doctype html><head><title>t</title></head><body>x"
    for _ in range(2):
        _known(page, known)
    for token in range(20):  # a CSRF token in every head
        fresh = page.replace(b"<title>", b"<meta name=csrf content=%d><title>" % token)
        assert _known(fresh, known) == _cold(fresh)
    assert [entry[0] for entry in known.seen] == [page[: len(known.seen[0][0])]]
    assert len(known.new) == 4
    injector = Injector(MARKER, known=known)
    injector.feed(page)
    assert injector.scanned == len(known.seen[0][0])


def test_a_decision_forced_by_the_limit_or_the_end_is_not_remembered() -> None:
    known = KnownHeads()
    for page in (b"<!doctype html>" + b" " * LIMIT, b"<!doctype html><head><title>t</title>"):
        assert _known(page, known) == _cold(page)
    assert known.seen == known.new == ()

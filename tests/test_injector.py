"""The streaming injector: where the snippet goes, and that chunking never matters.

Expected outputs are built from how each document was put together (the test records
the byte offset of the insertion point while it assembles the page), never by asking
the injector.
"""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from px_middleware.core.injector import LIMIT, Injector

SNIPPET = b'<script data-px-middleware="1">aptrinsic("identify",{"id":"u"});</script>'
BOM = b"\xef\xbb\xbf"


def run(doc: bytes, chunks: Iterable[bytes] | None = None, limit: int = LIMIT) -> bytes:
    """Stream ``doc`` (or the given chunks of it) through a fresh injector."""
    injector = Injector(SNIPPET, limit)
    parts = [injector.feed(chunk) for chunk in (chunks if chunks is not None else [doc])]
    parts.append(injector.close())
    return b"".join(parts)


def split(doc: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(doc)]
    return [doc[a:b] for a, b in itertools.pairwise(points)]


def with_snippet(doc: bytes, at: int) -> bytes:
    return doc[:at] + SNIPPET + doc[at:]


# -- generated documents ------------------------------------------------------------------

@dataclass
class Doc:
    """A page and where the snippet belongs (``None``: it must pass untouched)."""

    data: bytes
    insert_at: int | None
    kind: str


class Builder:
    """Appends parts and remembers byte offsets, so the expected position is exact."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, part: str | bytes) -> int:
        raw = part.encode() if isinstance(part, str) else part
        self.parts.append(raw)
        self.size += len(raw)
        return self.size

    def bytes(self) -> bytes:
        return b"".join(self.parts)


# Text that may appear in comments, titles, attributes: non-ASCII on purpose, including
# characters whose case folding changes length (İ, ß, ﬃ) to catch lowercase-and-index.
_SAFE_TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from("abc XYZ09 éü日本語İßﬃ🎉\u2028\u00a0=;:/."),
        st.characters(exclude_categories=("Cs", "Cc"), exclude_characters="<>&\"'-`"),
    ),
    max_size=30,
).filter(lambda t: "charset" not in t.lower() and "x-ua-compatible" not in t.lower())


def _case(draw: st.DrawFn, word: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.upper() if up else c for c, up in zip(word, flips, strict=True))


def _ws(draw: st.DrawFn) -> str:
    return draw(st.sampled_from(["", "\n", "  ", "\r\n\t"]))


def _attrs(draw: st.DrawFn, extra: list[str]) -> str:
    chosen = draw(st.lists(st.sampled_from(extra), max_size=3))
    text = draw(_SAFE_TEXT)
    quoted = draw(st.sampled_from([f' data-t="{text}"', f" data-t='{text}'", ""]))
    return "".join(" " + a for a in chosen) + quoted


def _comment(draw: st.DrawFn) -> str:
    body = draw(
        st.sampled_from(
            [" <head> ", ' <body class="x"> ', " <script>x</script> ", " -- ",
             " <HEAD><meta charset=utf-8> "]
        )
    )
    return f"<!--{body}{draw(_SAFE_TEXT)}-->"


_CHARSET_METAS = [
    '<meta charset="utf-8">',
    "<META CHARSET=UTF-8>",
    '<meta charset="utf-8" />',
    '<meta http-equiv="Content-Type" content="text/html; charset=utf-8">',
    '<meta http-equiv="X-UA-Compatible" content="IE=edge">',
    "<meta http-equiv='x-ua-compatible' content='ie=edge'>",
]
_SCRIPTS = [
    '<script>var s = "</body>"; document.write("<head>");</script>',
    "<SCRIPT type=\"text/javascript\">if (a < b && c > d) { x = '<body>'; }</SCRIPT>",
    '<script src="/app.js" defer></script>',
    '<script>var t = "<\\/script>"; // <!-- not a comment here</script >',
    '<script type="module">import x from "/x.js";</script\t>',
]
_STYLES = ["<style>body > p { color: red } /* <head> </body> */</style>"]


def _head_item(draw: st.DrawFn) -> tuple[str, bool]:
    """One element allowed in a head; True when it is a charset/X-UA-Compatible meta."""
    kind = draw(st.sampled_from(["charset", "meta", "title", "script", "style", "link",
                                 "comment", "base", "noscript"]))
    if kind == "charset":
        return draw(st.sampled_from(_CHARSET_METAS)), True
    if kind == "meta":
        text = draw(_SAFE_TEXT)
        return draw(st.sampled_from([f'<meta name="description" content="{text}">',
                                     "<meta name=author content=O'Brien>"])), False
    if kind == "title":
        title = _case(draw, "title")
        return f"<{title}>{draw(_SAFE_TEXT)} &lt;head&gt; <body></{title}>", False
    if kind == "script":
        return draw(st.sampled_from(_SCRIPTS)), False
    if kind == "style":
        return draw(st.sampled_from(_STYLES)), False
    if kind == "link":
        return '<link rel="stylesheet" href="/s.css?a=1&amp;b=2">', False
    if kind == "base":
        return '<base href="/">', False
    if kind == "noscript":
        return '<noscript><link rel="stylesheet" href="/noscript.css"></noscript>', False
    return _comment(draw), False


def _preamble(draw: st.DrawFn, b: Builder, doctype: bool = True) -> None:
    if draw(st.booleans()):
        b.add(BOM)
    if doctype and draw(st.booleans()):
        b.add(draw(st.sampled_from(["<!DOCTYPE html>", "<!doctype html>", "<!DocType HTML>"])))
    for _ in range(draw(st.integers(0, 2))):
        b.add(_ws(draw))
        b.add(_comment(draw))
    b.add(_ws(draw))


def _body(draw: st.DrawFn, b: Builder) -> int:
    """Append ``<body ...>`` and content; return the offset of ``<body``."""
    at = b.size
    attrs = _attrs(draw, ['class="home"', 'onload="go()"'])
    b.add(f"<{_case(draw, 'body')}{attrs}>")
    b.add(f"<p>{draw(_SAFE_TEXT)}</p><script>var h = '<head>';</script>{_ws(draw)}")
    if draw(st.booleans()):
        b.add("</body></html>\n")
    return at


@st.composite
def documents(draw: st.DrawFn) -> Doc:
    kind = draw(st.sampled_from(["head", "head", "head", "body", "fragment", "xml", "loader"]))
    b = Builder()
    if kind == "xml":
        if draw(st.booleans()):
            b.add(BOM)
        b.add('<?xml version="1.0" encoding="utf-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom">')
        b.add(f"<head><title>{draw(_SAFE_TEXT)}</title></head><body>x</body></feed>")
        return Doc(b.bytes(), None, kind)
    # A doctype makes whatever follows a document (with an empty, implied head).
    _preamble(draw, b, doctype=kind != "fragment")
    if kind == "fragment":
        start = draw(st.sampled_from(["<div>", "<p class=x>", "Hello ", "<section>", "<header>",
                                      "</div>", "<textarea>"]))
        b.add(f"{start}{draw(_SAFE_TEXT)}<head><meta charset=utf-8></head><body>x</body>")
        return Doc(b.bytes(), None, kind)
    if draw(st.booleans()):
        attrs = _attrs(draw, ['lang="en"', 'data-x="a>b"', "class=no-js"])
        b.add(f"<{_case(draw, 'html')}{attrs}>")
        b.add(_ws(draw))
    if kind == "body":
        # No <head>: head elements before <body> make up an implied head, which opens at
        # the first of them (comments before it stay outside), or at <body> itself.
        at: int | None = None
        for _ in range(draw(st.integers(0, 3))):
            item, moves = _head_item(draw)
            item_at = b.size
            item_end = b.add(item)
            if at is None and not item.startswith("<!--"):
                at = item_at
            if moves:
                at = item_end
            b.add(_ws(draw))
        body_at = _body(draw, b)
        return Doc(b.bytes(), body_at if at is None else at, kind)
    attrs = _attrs(draw, ['profile="x>y"', 'data-a=">"', "class=h"])
    insert_at = b.add(f"<{_case(draw, 'head')}{attrs}>")
    if kind == "loader":
        b.add(draw(st.sampled_from(_CHARSET_METAS)))
        b.add('<script>(function(n,t){var i="aptrinsic";n[i]=n[i]||function(){}})'
              "(window,document);</script>")
        b.add("</head>")
        _body(draw, b)
        return Doc(b.bytes(), None, kind)
    for _ in range(draw(st.integers(0, 6))):
        b.add(_ws(draw))
        item, moves = _head_item(draw)
        end = b.add(item)
        if moves:
            insert_at = end
    b.add(_ws(draw))
    ending = draw(st.sampled_from(["close-head", "implicit", "eof"]))
    if ending == "close-head":
        b.add(f"</{_case(draw, 'head')}>{_ws(draw)}")
        _body(draw, b)
    elif ending == "implicit":
        _body(draw, b)  # <body> closes the head implicitly
    return Doc(b.bytes(), insert_at, kind)


def expected(doc: Doc) -> bytes:
    return doc.data if doc.insert_at is None else with_snippet(doc.data, doc.insert_at)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=documents(), data=st.data())
def test_any_chunking_gives_the_single_chunk_output(doc: Doc, data: st.DataObject) -> None:
    want = expected(doc)
    assert run(doc.data) == want
    if len(doc.data) > 1:
        cuts = data.draw(st.lists(st.integers(1, len(doc.data) - 1), max_size=12))
        assert run(doc.data, split(doc.data, cuts)) == want
    one_byte = [doc.data[i : i + 1] for i in range(len(doc.data))]
    assert run(doc.data, one_byte) == want
    # With empty chunks mixed in nothing changes either.
    assert run(doc.data, [b"", *one_byte[:3], b"", doc.data[3:], b""]) == want


@settings(max_examples=150, deadline=None)
@given(doc=documents(), limit=st.integers(8, 600), data=st.data())
def test_small_limits_are_chunking_invariant_too(
    doc: Doc, limit: int, data: st.DataObject
) -> None:
    """With a limit cut anywhere, the result depends on the first ``limit`` bytes only."""
    single = run(doc.data, limit=limit)
    assert single == doc.data or (
        single.count(SNIPPET) == 1 and single.replace(SNIPPET, b"", 1) == doc.data
    )
    if doc.kind in ("fragment", "xml"):  # a loader cut off by the limit is not seen
        assert single == doc.data
    cuts = data.draw(st.lists(st.integers(0, len(doc.data)), max_size=8))
    assert run(doc.data, split(doc.data, cuts), limit=limit) == single


# -- real-world pages -------------------------------------------------------------------------

def test_upper_case_head_with_attributes_including_a_quoted_gt() -> None:
    before = b'<!DOCTYPE html>\n<HTML LANG="en">\n<HEAD data-x="a>b" class=\'c>d\'>'
    after = b"<TITLE>t</TITLE></HEAD><BODY>hi</BODY></HTML>"
    assert run(before + after) == before + SNIPPET + after


def test_byte_order_mark_is_kept_in_front() -> None:
    before = BOM + b"<!doctype html><html><head>"
    after = b"<title>t</title></head><body></body></html>"
    assert run(before + after) == before + SNIPPET + after
    assert run(before + after, [BOM[:1], BOM[1:], before[3:], after]) == before + SNIPPET + after


def test_snippet_goes_after_charset_and_x_ua_compatible_metas() -> None:
    before = (
        b'<html><head><meta name="viewport" content="width=device-width">'
        b'<meta charset="utf-8"><meta http-equiv="X-UA-Compatible" content="IE=edge">'
    )
    after = b"<title>t</title></head><body></body></html>"
    assert run(before + after) == before + SNIPPET + after


def test_charset_meta_after_one_kib_still_moves_the_insertion_point() -> None:
    """Browsers only honour a charset meta in the first 1024 bytes; we still go after
    one that comes later, so a page that relies on it is never worse off."""
    filler = b"".join(b'<meta name="k%d" content="%s">' % (i, b"v" * 40) for i in range(30))
    before = b"<!doctype html><html><head>" + filler + b'<meta charset="utf-8">'
    assert len(before) > 1024
    after = b"<title>late</title></head><body></body></html>"
    assert run(before + after) == before + SNIPPET + after


def test_comments_containing_head_and_body_are_skipped() -> None:
    before = (
        b"<!-- <head><body> --><!doctype html><!--[if IE]><html class=ie><![endif]-->"
        b"<html><!-- <HEAD> --><head>"
    )
    after = b"<!-- <body> --><title>t</title></head><body></body></html>"
    assert run(before + after) == before + SNIPPET + after


def test_script_and_style_contents_are_opaque() -> None:
    before = b"<html><head><meta charset=utf-8>"
    after = (
        b'<script>var s = "</body>", h = "<head>"; if (a<b) {}</script>'
        b"<style>/* <body> */ p > a {}</style></head><body></body></html>"
    )
    assert run(before + after) == before + SNIPPET + after


def test_without_head_the_snippet_goes_at_the_start_of_the_implied_head() -> None:
    before = b"<!DOCTYPE html><html>"
    after = b'<title>no head</title><body class="x"><p>hi</p></body></html>'
    assert run(before + after) == before + SNIPPET + after


def test_without_any_head_element_the_snippet_goes_right_before_body() -> None:
    before = b"<!DOCTYPE html><html>"
    after = b'<body class="x"><p>hi</p></body></html>'
    assert run(before + after) == before + SNIPPET + after


@pytest.mark.parametrize(
    "page",
    [
        b"<div>a fragment</div>",
        b"<p>partial</p><head></head><body></body>",
        b"Just some text with <head> and <body> in it",
        b"<tr><td>1</td></tr>",
        b"",
        b"   \n",
    ],
)
def test_fragments_pass_untouched(page: bytes) -> None:
    injector = Injector(SNIPPET)
    assert injector.feed(page) + injector.close() == page
    assert injector.inserted is False
    assert injector.reason


@pytest.mark.parametrize(
    "before",
    [
        "<!-- Überschrift: Grüße, 日本語, İstanbul, ß, ﬃ --><html><head>",
        "<html><head><title>Café İİİİ ﬃ 🎉</title><meta charset=utf-8>",
    ],
)
def test_non_ascii_before_the_insertion_point_is_not_corrupted(before: str) -> None:
    after = "<title>Ünïcödé</title></head><body>Grüße</body></html>"
    page = (before + after).encode()
    out = run(page)
    assert out.decode("utf-8") == before + SNIPPET.decode() + after
    # The same bytes cut inside every multi-byte character.
    assert run(page, [page[i : i + 1] for i in range(len(page))]) == out


def _stream(injector: Injector, page: bytes, size: int) -> tuple[bytes, int]:
    """Feed ``page`` in ``size`` chunks; return the output and the most bytes held."""
    out: list[bytes] = []
    fed = returned = most_held = 0
    for start in range(0, len(page), size):
        chunk = page[start : start + size]
        fed += len(chunk)
        piece = injector.feed(chunk)
        out.append(piece)
        returned += len(piece)
        held = fed - (returned - (len(SNIPPET) if injector.inserted else 0))
        most_held = max(most_held, held)
    out.append(injector.close())
    return b"".join(out), most_held


def test_five_megabyte_page_is_buffered_at_most_64_kib_plus_one_chunk() -> None:
    # The head never ends within 64 KiB (a huge inline script), so the injector must
    # stop looking at the limit: it inserts after <head> and streams the rest.
    before = b"<!doctype html><html><head>"
    after = b"<script>" + b"var x = 1;\n" * 500_000 + b"</script></head><body>b</body></html>"
    page = before + after
    assert len(page) > 5_000_000
    injector = Injector(SNIPPET)
    out, most_held = _stream(injector, page, 4096)
    assert out == before + SNIPPET + after
    assert most_held <= LIMIT + 4096


def test_five_megabyte_page_without_markup_passes_through_after_64_kib() -> None:
    page = b" " * 5_000_000 + b"<html><head></head></html>"
    injector = Injector(SNIPPET)
    out, most_held = _stream(injector, page, 4096)
    assert out == page
    assert injector.inserted is False
    assert most_held <= LIMIT + 4096


def test_large_page_with_an_early_head_streams_at_once() -> None:
    page = b"<html><head><title>t</title></head><body>" + b"<p>x</p>" * 600_000 + b"</body>"
    injector = Injector(SNIPPET)
    out, most_held = _stream(injector, page, 4096)
    assert out == with_snippet(page, len(b"<html><head>"))
    assert most_held <= 4096


def test_xml_with_a_head_element_is_untouched() -> None:
    page = (
        b'<?xml version="1.0" encoding="utf-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom">'
        b"<head><title>t</title></head><entry><body>x</body></entry></feed>"
    )
    assert run(page) == page


@pytest.mark.parametrize(
    "loader",
    [
        b'<script>(function(n,t,a,e){var i="aptrinsic";n[i]=n[i]||function(){}})'
        b'(window,document,"https://web-sdk.aptrinsic.com/api/aptrinsic.js","AP-X-2");</script>',
        b'<script async src="https://web-sdk.aptrinsic.com/api/aptrinsic.js?a=AP-X-2"></script>',
    ],
)
def test_page_that_already_has_a_px_loader_is_untouched(loader: bytes) -> None:
    page = b"<html><head><meta charset=utf-8>" + loader + b"</head><body></body></html>"
    injector = Injector(SNIPPET)
    assert injector.feed(page) + injector.close() == page
    assert injector.inserted is False
    assert "loader" in injector.reason


def test_xhtml_gets_the_snippet_and_stays_well_formed_xml() -> None:
    before = (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        b'<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
        b'"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\n'
        b'<html xmlns="http://www.w3.org/1999/xhtml"><head>'
        b'<meta http-equiv="Content-Type" content="application/xhtml+xml; charset=utf-8" />'
    )
    after = b"<title>x</title></head><body><p>x</p></body></html>"
    out = run(before + after)
    assert out == before + SNIPPET + after
    ET.fromstring(out)  # raises if the splice broke well-formedness


def test_head_without_end_inserts_when_the_document_ends() -> None:
    before = b"<html><head><meta charset=utf-8>"
    after = b"<title>t</title>"
    assert run(before + after) == before + SNIPPET + after


def test_body_element_in_head_closes_it() -> None:
    before = b"<html><head><meta charset=utf-8>"
    after = b"<div>content</div><meta charset=latin-1>"
    assert run(before + after) == before + SNIPPET + after


# -- state machine contract --------------------------------------------------------------------

def test_decision_is_announced_once_and_later_chunks_pass_through() -> None:
    injector = Injector(SNIPPET)
    assert injector.inserted is None and not injector.decided
    assert injector.feed(b"<html><he") == b""  # held: the tag is incomplete
    assert not injector.decided
    assert injector.feed(b"ad><title>t</title></head>") == (
        b"<html><head>" + SNIPPET + b"<title>t</title></head>"
    )
    assert injector.inserted is True and injector.decided
    later = b"<body>" + b"x" * 100
    assert injector.feed(later) is later  # no copy once decided
    assert injector.close() == b""
    assert injector.close() == b""


@pytest.mark.parametrize(
    ("page", "document"),
    [
        (b"<title>t</title><div>a fragment with head elements</div>", False),
        (b"<div>a plain fragment</div>", False),
        (b"just text", False),
        (b"<!doctype html><p>implied head and body</p>", True),
        (b"<html><head><script>aptrinsic('x')</script></head><body>", True),
    ],
)
def test_the_verdict_tells_a_fragment_from_a_document(page: bytes, document: bool) -> None:
    """What the exchange reads to decide that a response is not a page view."""
    injector = Injector(SNIPPET)
    injector.feed(page)
    injector.close()
    assert injector.decided
    assert injector.document is document


def test_truncated_document_at_close_uses_what_was_seen() -> None:
    assert run(b"<html><head><title>unfinished") == with_snippet(
        b"<html><head><title>unfinished", len(b"<html><head>")
    )
    assert run(b"<html><!-- unterminated comment <head>") == (
        b"<html><!-- unterminated comment <head>"
    )


def test_the_snippet_never_lands_inside_a_tag_with_quoted_angle_brackets() -> None:
    before = b'<html><head data-a="<x>"><meta charset=\'u>f\'>'
    after = b'<link href="a>b"></head><body>'
    assert run(before + after) == before + SNIPPET + after


def test_apostrophe_in_an_unquoted_attribute_value_does_not_swallow_the_head() -> None:
    """``content=O'Brien`` is an unquoted value; reading the ``'`` as a quote once made
    the meta tag run on into the script and the snippet landed inside the JavaScript."""
    before = (
        b"<html><head><meta name=author content=O'Brien>"
        b'<meta http-equiv="X-UA-Compatible" content="IE=edge">'
    )
    after = b"<script>var a = 'b'; // don't\nif (x > 1) {}</script></head><body></body></html>"
    assert run(before + after) == before + SNIPPET + after


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # Quoted values may hold ">" and the other quote; "=" may have spaces around it.
        (b"""<html><head data-a = "x>'y" data-b='"<>'><meta charset = "utf-8">""",
         b"</head><body>"),
        # Valueless attributes, a stray solidus, an unquoted value ending in "/".
        (b"<html><head hidden / ><meta charset=utf-8/>", b"<title>t</title></head><body>"),
    ],
)
def test_start_tags_are_read_like_the_html_tokenizer(before: bytes, after: bytes) -> None:
    assert run(before + after) == before + SNIPPET + after


@pytest.mark.parametrize("comment", [b"<!-->", b"<!--->", b"<!---->", b"<!-- -- -->"])
def test_short_comments_end_where_the_browser_ends_them(comment: bytes) -> None:
    """``<!-->`` is a whole comment for a browser; reading on to the next ``-->`` would
    put the scanner inside whatever follows (here: into a script)."""
    before = comment + b"<html><head>"
    after = b'<script>if (i-->0) {"<head>"}</script></head><body>'
    assert run(before + after) == before + SNIPPET + after


def test_a_mutable_first_chunk_is_copied_not_appended_to() -> None:
    first = bytearray(b"<html><head><title>t")
    injector = Injector(SNIPPET)
    assert injector.feed(first) == b""  # type: ignore[arg-type]
    out = injector.feed(b"</title></head>")
    assert first == bytearray(b"<html><head><title>t")
    assert out == b"<html><head>" + SNIPPET + b"<title>t</title></head>"


def test_a_loader_mention_outside_a_script_does_not_hide_a_charset_meta_before_it() -> None:
    before = b'<html><head><meta charset="utf-8">'
    after = b'<meta name="x" content="aptrinsic"><title>t</title></head><body>'
    assert run(before + after) == before + SNIPPET + after

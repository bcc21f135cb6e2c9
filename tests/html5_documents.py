"""Generated HTML documents for checking the injector against real HTML5 parsers.

Each document is built from the constructs the HTML5 tokenizer and tree builder treat
specially (implied heads, comments of every kind, bogus comments, script data in its
escaped and double-escaped states, CDATA in XHTML scripts, templates, charset metas,
body content, fragments). The generator only says what the page *is* (a document, a
fragment, a page with a loader); where the snippet belongs is asked of the parser.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

#: What the oracle looks for: a unique, empty element the injector is asked to insert.
MARKER = b'<script data-px-mark="1"></script>'

COMMENTS = [
    "<!-- plain <head> <body> -->", "<!-->", "<!--->", "<!---->", "<!-- ends with bang --!>",
    "<!-- <!-- nested-looking --> ", "<!--- three dashes --->", "<!-- a -- b -->",
    "<!--<script>not a script</script>-->", "<!-- --!-- still open -->",
]
BOGUS = ["<?php echo '<head>'; ?>", "<!x <body>>", "</ not-an-end-tag>", "</3>",
         "<![CDATA[ <head> ]]>", "<?xml-stylesheet href='s.css'?>"]
#: Bogus comments that leave no text behind (a "<" or ">" inside ends them early).
PREAMBLE_BOGUS = ["<?xml version='1.0' encoding='utf-8'?>", "<!x y>", "</ x>"]
CHARSET_METAS = ['<meta charset="utf-8">', "<META CHARSET=utf-8 />",
                 '<meta http-equiv="Content-Type" content="text/html; charset=utf-8">',
                 '<meta http-equiv="X-UA-Compatible" content="IE=edge">']
SCRIPTS = [
    '<script>var s = "</body>"; document.write("<head>");</script>',
    # Escaped, then double-escaped: the first </script> does not end the element.
    '<script><!--<script>var x = "</script>";--></script>',
    "<script><!-- if (a-->b) { c = '<body>'; } --></script>",
    '<script><!-->"<script>"</script>',
    "<script>//<![CDATA[\nvar a = '<head>' < 1, b = '<!--';\n//]]></script>",
    '<script>var t = "</scriptx>"; // <div></SCRIPT >',
    '<script type="module">import x from "/x.js";</script foo=">">',
    '<script src="/app.js" defer></script>',
    "<script><!--<SCRIPT>document.write('</script><meta charset=x>')</script>--></script>",
]
OTHER_HEAD = [
    '<meta name="description" content="a > b">', "<meta name=author content=O'Brien>",
    '<link rel="stylesheet" href="/s.css?a=1&amp;b=2">', '<base href="/">',
    "<title>Title &lt;head&gt; <body> <!-- </title x>",
    "<TITLE>t</TITLE>", "<style>p > a { x: '</head>' } /* <body> <!-- */</style>",
    "<noscript><link rel=stylesheet href=/n.css></noscript>",
    "<noframes><body>x</noframes>", "<link rel=icon href=x/>",
]
#: Templates in the head (html5lib 1.1 has no <template>: Chromium is their oracle).
TEMPLATES = [
    "<template><meta charset=latin-1><div>not the body</div></template>",
    "<template><template><p>x</p></template><meta charset=y></template>",
    "<template><!-- </template> --><p>still inside</p></template>",
    "<template><script>var t = '</template>';</script><textarea></template></textarea>"
    "</template>",
    "<TEMPLATE><style></template></style>text</TEMPLATE>",
]
BODY_STARTS = ["<div>", '<nav class="top">', "Hello", "<p>", "<img src=x>", "</br>",
               "<body>", '<body class="b">', "<textarea>", "<svg><title>x</title></svg>",
               "&nbsp;", "<h1>"]
BODY_REST = "<p>text <head> <meta charset=latin-1></p><script>var h = '<head>';</script>"
LOADER = ('<script>(function(n,t){var i="aptrinsic";n[i]=n[i]||function(){}})'
          "(window,document);</script>")


@dataclass
class Generated:
    data: bytes
    kind: str  # "document", "fragment" (no doctype/html/head/body first), "loader"


def _some(rnd: random.Random, items: list[str], most: int) -> list[str]:
    return [rnd.choice(items) for _ in range(rnd.randint(0, most))]


def _ws(rnd: random.Random) -> str:
    return rnd.choice(["", "", "\n", "  ", "\r\n\t"])


def _head_items(rnd: random.Random, most: int, templates: bool = False) -> list[str]:
    pools = [CHARSET_METAS, SCRIPTS, SCRIPTS, OTHER_HEAD, OTHER_HEAD, COMMENTS, BOGUS]
    if templates:
        pools += [TEMPLATES, TEMPLATES]
    return [rnd.choice(rnd.choice(pools)) + _ws(rnd) for _ in range(rnd.randint(0, most))]


def generate(rnd: random.Random, templates: bool = False) -> Generated:
    kind = rnd.choice(["document"] * 6 + ["fragment", "fragment", "loader"])
    parts: list[str] = []
    if rnd.random() < 0.2:
        parts.append("\ufeff")
    parts += [c + _ws(rnd) for c in _some(rnd, COMMENTS + PREAMBLE_BOGUS, 2)]
    if kind == "fragment":
        if rnd.random() < 0.5:  # head-like elements first, then body content: a fragment
            parts += [i for i in _head_items(rnd, 3) if not i.startswith("<!")]
        parts.append(rnd.choice([s for s in BODY_STARTS if not s.startswith("<body")]))
        parts.append(BODY_REST + "<head><meta charset=utf-8></head><body>x</body>")
        return Generated("".join(parts).encode(), kind)
    signal = rnd.choice(["doctype", "html", "head", "doctype html head", "doctype html"])
    if "doctype" in signal:
        parts.append(rnd.choice(["<!DOCTYPE html>", "<!doctype html>", "<!DocType HTML>",
                                 '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN"'
                                 ' "http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">'])
                     + _ws(rnd))
        parts += [c + _ws(rnd) for c in _some(rnd, COMMENTS, 1)]
    if "html" in signal:
        parts.append(rnd.choice(["<html>", '<html lang="en">', "<HTML class='no-js'>"]) + _ws(rnd))
    explicit = "head" in signal
    if explicit:
        parts.append(rnd.choice(["<head>", '<head profile="a>b">', "<HEAD>"]))
    items = _head_items(rnd, 6, templates)
    if kind == "loader":
        items.insert(rnd.randint(0, len(items)), LOADER)
    parts += items
    opened = explicit or any(not i.startswith(("<!", "<?", "</")) for i in items)
    ending = rnd.choice(["close", "body", "eof"] if opened else ["close", "body"])
    if ending == "close":
        parts.append("</head>" + _ws(rnd) + rnd.choice(["", *COMMENTS[:3]]))
    if ending != "eof":
        parts.append(rnd.choice(BODY_STARTS) + BODY_REST)
    return Generated("".join(parts).encode(), kind)

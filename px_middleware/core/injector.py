"""Find where the snippet goes in a streamed HTML body and splice it in: bytes in, bytes out.

A sans-IO state machine in the spirit of h11: ``feed(chunk)`` returns the bytes that
may be sent now, ``close()`` returns the rest. It holds the start of the document
until it knows the insertion point (at most ``limit`` bytes, 64 KiB by default), then
passes every later chunk through untouched.

The decision depends only on the first ``limit`` bytes of the document, never on how
they were split into chunks, so any chunking gives the same output.

Where the snippet goes:

* right after ``<head ...>``, and after any ``<meta charset>`` / ``X-UA-Compatible``
  meta in that head (those must stay first for the browser to honour them);
* else right before ``<body``;
* never inside a comment, ``<script>``, ``<style>``, ``<textarea>``, ``<title>`` or
  ``<template>``, which are skipped as opaque.

It gives up (passes the document through unchanged) on anything that is not a
whole HTML document: text or a non-head element before ``<head>``/``<body>`` (a
fragment, or XML such as ``<feed>`` that merely contains ``<head>``), a page that
already carries a PX loader in its head, or no ``<head``/``<body`` within the limit.

Tag names are matched case-insensitively on the bytes themselves (ASCII only), so
nothing is decoded and no offsets shift.
"""

from __future__ import annotations

import re

from px_middleware.core.snippet import LOADER_SIGNATURE

LIMIT = 64 * 1024

_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n\f"

# One token at a "<", read the way the HTML tokenizer reads it, so a tag ends where a
# browser ends it: quotes delimit a value only right after "=" (``content=O'Brien`` is
# an unquoted value, not a quoted run that swallows the head), "<!-->" is a whole
# comment. Every choice is made by the next character (names and values are taken
# whole, lookaheads forbid the other reading), so there is exactly one way to match:
# a token matched in a short window is the same token in a longer one (any chunking
# gives the same result), and a failed match backtracks in linear time.
_TOKEN = re.compile(
    rb"""<(?:
        (?P<comment>!--(?:>|->|.*?-->))
      | (?P<declaration>(?:!(?!--)|\?)[^>]*>)
      | /(?P<end>[A-Za-z][^\t\n\f\r />]*)[^>]*>
      | (?P<start>[A-Za-z][^\t\n\f\r />]*)(?=[\t\n\f\r />])
        (?:
            [\t\n\f\r /]
          | [^\t\n\f\r />][^\t\n\f\r />=]*(?=[\t\n\f\r />=])
            (?:[\t\n\f\r ]*=[\t\n\f\r ]*
               (?:"[^"]*"|'[^']*'|[^\t\n\f\r >"'][^\t\n\f\r >]*(?=[\t\n\f\r >])|(?=>))
             |(?![\t\n\f\r ]*=))
        )*
        >
    )""",
    re.VERBOSE | re.DOTALL,
)

# What a start tag means to the scanner, by lower-case name.
_HTML, _HEAD, _BODY, _META, _OPAQUE, _HEAD_CONTENT = range(6)
#: Elements whose content is not markup (skipped to their end tag), the other elements
#: a head may hold, and the document structure; any other element starts the body.
_ELEMENTS: dict[bytes, int] = {
    b"html": _HTML,
    b"head": _HEAD,
    b"body": _BODY,
    b"meta": _META,
    **dict.fromkeys(
        (b"script", b"style", b"title", b"textarea", b"template", b"noscript"), _OPAQUE
    ),
    **dict.fromkeys((b"link", b"base"), _HEAD_CONTENT),
}
_opaque_end: dict[bytes, re.Pattern[bytes]] = {
    name: re.compile(rb"</" + name + rb"(?:[\t\n\f\r /][^>]*)?>", re.IGNORECASE)
    for name, kind in _ELEMENTS.items()
    if kind == _OPAQUE
}

_NEED_MORE = -1
_END, _START = _TOKEN.groupindex["end"], _TOKEN.groupindex["start"]


class Injector:
    """Insert ``snippet`` once into one HTML document streamed through ``feed``."""

    def __init__(self, snippet: bytes, limit: int = LIMIT) -> None:
        self._snippet = snippet
        self._limit = limit
        self._data = b""
        self._pos = 0
        self._in_head = False
        self._insert_at = 0
        #: ``None`` while undecided, then whether the snippet went in.
        self.inserted: bool | None = None
        #: ``inserted is not None``, as a plain attribute: read for every chunk.
        self.decided = False
        #: Why the snippet did not go in (for the debug log).
        self.reason = ""

    def feed(self, chunk: bytes) -> bytes:
        if self.decided:
            return chunk
        self._data += chunk
        final = len(self._data) >= self._limit
        if not self._scan(final) and not final:
            return b""
        return self._release()

    def close(self) -> bytes:
        """End of body: decide with what there is and return everything held."""
        if self.decided:
            return b""
        if not self._scan(True):
            self._decide(None, "no <head> or <body> in the document")
        return self._release()

    def abandon(self) -> bytes:
        """Stop: return what is held, unchanged; later chunks pass through as is."""
        data, self._data = self._data, b""
        if not self.decided:
            self._decide(None, "abandoned after an error")
        return data

    # -- internals ------------------------------------------------------------------
    def _release(self) -> bytes:
        if not self.decided:
            self._decide(None, f"no <head> or <body> in the first {self._limit} bytes")
        data, self._data = self._data, b""
        if not self.inserted:
            return data
        view = memoryview(data)
        at = self._insert_at
        return b"".join((view[:at], self._snippet, view[at:]))

    def _decide(self, insert_at: int | None, reason: str = "") -> bool:
        if insert_at is None:
            self.inserted, self.reason = False, reason
        else:
            self.inserted, self._insert_at = True, insert_at
        self.decided = True
        return True

    def _give_up_or_insert(self, reason: str) -> bool:
        """At the end of what we may look at: inject if a ``<head>`` was seen."""
        if self._in_head:
            return self._decide(self._insert_at)
        return self._decide(None, reason)

    def _scan(self, final: bool) -> bool:
        """Advance over complete tokens; True once decided. ``final``: no more data."""
        data = self._data
        end = min(len(data), self._limit)
        pos = self._pos
        if pos == 0:
            if len(data) < len(_BOM) and _BOM.startswith(data) and not final:
                return False  # maybe the start of a byte-order mark
            if data.startswith(_BOM):
                pos = len(_BOM)
        find, match = data.find, _TOKEN.match
        while True:
            lt = find(b"<", pos, end)
            if not self._in_head:
                text_end = end if lt < 0 else lt
                if text_end > pos and data[pos:text_end].strip(_WHITESPACE):
                    return self._decide(None, "text before <head>/<body>: not a whole document")
            if lt < 0:
                self._pos = end
                return self._give_up_or_insert("no <head> or <body>") if final else False
            token = match(data, lt, end)
            if token is None:
                pos = self._odd(data, lt, end)
            elif token.lastindex == _START:
                pos = self._start_tag(data, token, end)
            elif token.lastindex == _END:
                pos = token.end()
                if not self._in_head:
                    self._decide(None, "end tag before <head>/<body>: not a whole document")
                elif token.group(_END).lower() == b"head":
                    self._decide(self._insert_at)
            else:  # comment, doctype, processing instruction
                pos = token.end()
            if self.decided:
                return True
            if pos == _NEED_MORE:
                self._pos = lt  # rescan this token when more data arrives
                return self._give_up_or_insert("document cut short") if final else False

    def _odd(self, data: bytes, lt: int, end: int) -> int:
        """A "<" that is not a whole token: cut short (``_NEED_MORE``) or plain text."""
        nxt = data[lt + 1 : lt + 2]
        if nxt.isalpha() or nxt in (b"", b"!", b"?"):
            return _NEED_MORE  # a tag, comment or declaration not finished yet
        if nxt == b"/" and data.find(b">", lt, end) < 0:
            return _NEED_MORE  # "</" + something, not closed yet
        # "< ", "<3", "</>", "</ x>": text as far as the document structure goes.
        if not self._in_head:
            self._decide(None, "text before <head>/<body>: not a whole document")
        return lt + 1

    def _start_tag(self, data: bytes, token: re.Match[bytes], end: int) -> int:
        name = token.group(_START)
        kind = _ELEMENTS.get(name)
        if kind is None:
            name = name.lower()
            kind = _ELEMENTS.get(name)
        after = token.end()
        # Most frequent first: a head is mostly metas, scripts, styles and links.
        if kind == _META:
            if self._in_head:
                tag = token.group().lower()
                if b"charset" in tag or b"x-ua-compatible" in tag:
                    self._insert_at = after  # these must stay first in the head
            return after
        if kind == _OPAQUE:
            close = _opaque_end[name].search(data, after, end)
            if close is None:
                return _NEED_MORE
            # From the tag itself: a loader may be ``<script src=".../aptrinsic.js">``.
            if name == b"script" and data.find(LOADER_SIGNATURE, token.start(), close.start()) >= 0:
                self._decide(None, "the page already has a PX loader")
            return close.end()
        if kind in (_HEAD_CONTENT, _HTML):
            return after
        if kind == _HEAD:
            if not self._in_head:
                self._in_head, self._insert_at = True, after
            return after
        if kind == _BODY:
            self._decide(self._insert_at if self._in_head else token.start())
            return after
        if self._in_head:  # any other element implicitly closes the head
            self._decide(self._insert_at)
        else:
            label = name.decode(errors="replace")
            self._decide(None, f"<{label}> before <head>/<body>: not a document")
        return after

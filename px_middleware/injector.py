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

from px_middleware.snippet import LOADER_SIGNATURE

LIMIT = 64 * 1024

_BOM = b"\xef\xbb\xbf"
_START_TAG = re.compile(rb"""<([A-Za-z][A-Za-z0-9:-]*)(?:[^>"']|"[^"]*"|'[^']*')*>""")
_END_TAG = re.compile(rb"</([A-Za-z][A-Za-z0-9:-]*)[^>]*>")
_WHITESPACE = b" \t\r\n\f"
#: Elements whose content is not markup; we skip to their end tag.
_OPAQUE = frozenset({b"script", b"style", b"title", b"textarea", b"template", b"noscript"})
#: Elements that may appear before ``<body>`` of a document with no ``<head>`` tag.
_HEAD_CONTENT = frozenset({b"meta", b"link", b"base", b"title", b"script", b"style",
                           b"noscript", b"template"})
_opaque_end: dict[bytes, re.Pattern[bytes]] = {
    name: re.compile(rb"</" + name + rb"(?:[\s/][^>]*)?>", re.IGNORECASE) for name in _OPAQUE
}

_NEED_MORE = -1


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
        #: Why the snippet did not go in (for the debug log).
        self.reason = ""

    @property
    def decided(self) -> bool:
        return self.inserted is not None

    def feed(self, chunk: bytes) -> bytes:
        if self.inserted is not None:
            return chunk
        self._data += chunk
        final = len(self._data) >= self._limit
        if not self._scan(final) and not final:
            return b""
        return self._release()

    def close(self) -> bytes:
        """End of body: decide with what there is and return everything held."""
        if self.inserted is not None:
            return b""
        if not self._scan(True):
            self._decide(None, "no <head> or <body> in the document")
        return self._release()

    def abandon(self) -> bytes:
        """Stop: return what is held, unchanged; later chunks pass through as is."""
        data, self._data = self._data, b""
        if self.inserted is None:
            self._decide(None, "abandoned after an error")
        return data

    # -- internals ------------------------------------------------------------------
    def _release(self) -> bytes:
        if self.inserted is None:
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
        while True:
            self._pos = pos
            lt = data.find(b"<", pos, end)
            text_end = end if lt < 0 else lt
            if not self._in_head and data[pos:text_end].strip(_WHITESPACE):
                return self._decide(None, "text before <head>/<body>: not a whole document")
            if lt < 0:
                self._pos = end
                return self._give_up_or_insert("no <head> or <body>") if final else False
            pos = self._token(data, lt, end)
            if self.inserted is not None:
                return True
            if pos == _NEED_MORE:
                return self._give_up_or_insert("document cut short") if final else False

    def _token(self, data: bytes, lt: int, end: int) -> int:
        """Consume the markup at ``lt``; return the position after it, or ``_NEED_MORE``."""
        head = data[lt : min(lt + 4, end)]
        if len(head) < 4 and lt + len(head) >= end and b"<!--".startswith(head):
            return _NEED_MORE
        if head == b"<!--":
            close = data.find(b"-->", lt + 4, end)
            return _NEED_MORE if close < 0 else close + 3
        if head[1:2] in (b"!", b"?"):  # doctype, processing instruction
            close = data.find(b">", lt + 2, end)
            return _NEED_MORE if close < 0 else close + 1
        if head[1:2] == b"/":
            return self._end_tag(data, lt, end)
        if head[1:2].isalpha():
            return self._start_tag(data, lt, end)
        if not self._in_head:
            self._decide(None, "text before <head>/<body>: not a whole document")
        return lt + 1

    def _end_tag(self, data: bytes, lt: int, end: int) -> int:
        match = _END_TAG.match(data, lt, end)
        if match is None:
            return _NEED_MORE if data.find(b">", lt, end) < 0 else lt + 2
        if not self._in_head:
            self._decide(None, "end tag before <head>/<body>: not a whole document")
        elif match.group(1).lower() == b"head":
            self._decide(self._insert_at)
        return match.end()

    def _start_tag(self, data: bytes, lt: int, end: int) -> int:
        match = _START_TAG.match(data, lt, end)
        if match is None:
            return _NEED_MORE
        name = match.group(1).lower()
        after = match.end()
        if name == b"html":
            return after
        if name == b"head":
            if not self._in_head:
                self._in_head, self._insert_at = True, after
            return after
        if name == b"body":
            self._decide(self._insert_at if self._in_head else lt)
            return after
        if name not in _HEAD_CONTENT:
            if self._in_head:  # a body element implicitly closes the head
                self._decide(self._insert_at)
            else:
                self._decide(None, f"<{name.decode()}> before <head>/<body>: not a document")
            return after
        if name == b"meta" and self._in_head:
            tag = match.group(0).lower()
            if b"charset" in tag or b"x-ua-compatible" in tag:
                self._insert_at = after
            return after
        if name in _OPAQUE:
            close = _opaque_end[name].search(data, after, end)
            if close is None:
                return _NEED_MORE
            if name == b"script" and data.find(LOADER_SIGNATURE, lt, close.start()) >= 0:
                self._decide(None, "the page already has a PX loader")
            return close.end()
        return after

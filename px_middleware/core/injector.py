"""Find where the snippet goes in a streamed HTML body and splice it in: bytes in, bytes out.

A sans-IO state machine in the spirit of h11: ``feed(chunk)`` returns the bytes that
may be sent now, ``close()`` returns the rest. It holds the start of the document
until it knows the insertion point (at most ``limit`` bytes, 64 KiB by default), then
passes every later chunk through untouched.

The scanner follows the HTML5 tokenizer and the first insertion modes of the tree
builder ("initial" to "in head"), so the snippet lands where a browser puts it:

* A document is recognised by a doctype, ``<html>``, ``<head>`` or ``<body>`` before
  any body content. Anything else (a fragment, XML such as ``<feed>`` that merely
  contains ``<head>``) passes through untouched.
* The head may be explicit (after ``<head ...>``) or implied: title, meta, link, base,
  style, script, noscript, noframes and template before the first other element or
  non-whitespace text open it (Flask's tutorial pages are ``<!doctype html><title>``
  ``…<nav>``). The snippet goes at the start of the head, after any ``<meta charset>``
  / ``X-UA-Compatible`` meta there, and never after the first body content.
* Comments (``<!-->``, ``<!--->``, ``--!>``), bogus comments (``<?…>``, ``</ …>``,
  ``<!…>``), RCDATA/RAWTEXT (title, style, …), script data with its escaped and
  double-escaped states (``<!--<script>`` inside a script) and nested templates are
  read as the tokenizer reads them.
* A page whose head already carries a PX loader is left alone, and so is an XHTML
  empty ``<head/>`` (an XML parser closes that head at once: no place in it).

Any chunking gives the same output, and the work is linear in the document however it
is chunked: a comment, raw text or script left open at the end of a chunk is resumed
where its search stopped, and an unfinished tag is re-read only once a ``>`` arrived.
Tag names are matched case-insensitively on the bytes themselves (ASCII only), so
nothing is decoded and no offsets shift.
"""

from __future__ import annotations

import re

from px_middleware.core.snippet import LOADER_SIGNATURE

LIMIT = 64 * 1024

_Buffer = bytes | bytearray  # the held start of the body: one chunk, or several joined

_BOM = b"\xef\xbb\xbf"
_WHITESPACE = b" \t\r\n\f"

# The attributes of a tag, read the way the HTML tokenizer reads them, so a tag ends
# where a browser ends it: quotes delimit a value only right after "=" (``content=
# O'Brien`` is an unquoted value), and a quoted value may hold ">". Every choice is made
# by the next character, so there is one way to match: a tag matched in a short window
# is the same tag in a longer one, and a failed match backtracks in linear time.
_ATTRS = rb"""
    (?:
        [\t\n\f\r ] | /(?!>)
      | [^\t\n\f\r />][^\t\n\f\r />=]*(?=[\t\n\f\r />=])
        (?:[\t\n\f\r ]*=[\t\n\f\r ]*
           (?:"[^"]*"|'[^']*'|[^\t\n\f\r >"'][^\t\n\f\r >]*(?=[\t\n\f\r >])|(?=>))
         |(?![\t\n\f\r ]*=))
    )*
"""
# One token at a "<" that is not a comment opener (those are matched by _COMMENT_OPEN).
_TOKEN = re.compile(
    rb"""<(?:
        (?P<declaration>!(?!--)[^>]*>|\?[^>]*>|/[^A-Za-z>][^>]*>)
      | (?P<empty_end>/>)
      | (?P<end>/)?(?P<name>[A-Za-z][^\t\n\f\r />]*)(?=[\t\n\f\r />])"""
    + _ATTRS
    + rb"(?P<selfclosing>/)?>)",
    re.VERBOSE | re.DOTALL,
)
_DOCTYPE = re.compile(rb"<!doctype", re.IGNORECASE)
_COMMENT_OPEN = b"<!--"
_COMMENT_END = re.compile(rb"--!?>")


def _charsetish(data: _Buffer, start: int, end: int) -> int:
    """Offset of a "charset" or "X-UA-Compatible" mention, or -1 (ASCII-lowered copy:
    a bytes.find beats a case-insensitive regex by far)."""
    text = data[start:end].lower()
    found = [at for at in (text.find(b"charset"), text.find(b"x-ua-compatible")) if at >= 0]
    return start + min(found) if found else -1

# Script data: the three tokenizer states and what ends each of them.
_SCRIPT_DATA, _SCRIPT_ESCAPED, _SCRIPT_DOUBLE = range(3)
_SCRIPT_SEARCH = {
    _SCRIPT_DATA: re.compile(rb"<(?:(/)script(?=[\t\n\f\r />])|!--)", re.IGNORECASE),
    _SCRIPT_ESCAPED: re.compile(rb"-->|<(/?)script(?=[\t\n\f\r />])", re.IGNORECASE),
    _SCRIPT_DOUBLE: re.compile(rb"-->|<(/)script(?=[\t\n\f\r />])", re.IGNORECASE),
}
#: A search that failed at the end of the data resumes this far back: the longest
#: pattern above ("</script" plus its lookahead) can straddle the end by this much.
_SCRIPT_OVERLAP = 9

# What a start tag means to the scanner, by lower-case name.
_HTML, _HEAD, _BODY, _META, _VOID, _RAW, _BODY_RAW, _SCRIPT, _TEMPLATE, _PLAINTEXT = range(10)
_RAW_IN_HEAD = (b"title", b"style", b"noscript", b"noframes")
#: Raw text elements that belong to the body; they matter only inside a template.
_RAW_IN_BODY = (b"textarea", b"xmp", b"iframe", b"noembed")
_ELEMENTS: dict[bytes, int] = {
    b"html": _HTML,
    b"head": _HEAD,
    b"body": _BODY,
    b"meta": _META,
    **dict.fromkeys((b"link", b"base", b"basefont", b"bgsound"), _VOID),
    **dict.fromkeys(_RAW_IN_HEAD, _RAW),
    **dict.fromkeys(_RAW_IN_BODY, _BODY_RAW),
    b"script": _SCRIPT,
    b"template": _TEMPLATE,
    b"plaintext": _PLAINTEXT,
}
_IN_HEAD_KINDS = (_META, _VOID, _RAW, _SCRIPT, _TEMPLATE)
_raw_end: dict[bytes, re.Pattern[bytes]] = {
    name: re.compile(rb"</" + name + rb"(?=[\t\n\f\r />])", re.IGNORECASE)
    for name in _RAW_IN_HEAD + _RAW_IN_BODY
}
#: End tags that close the head (and so are body content before an implied one).
_HEAD_CLOSERS = (b"head", b"body", b"html", b"br")

# Fast path: a run of the tokens a head is mostly made of (whitespace, meta/link/base,
# a title, script or style whose text holds no "<"), matched in one regex call. Its tag
# grammar is a strict subset of the tokenizer's (a quote opens a value only right after
# "=", and no "<" or ">" inside a value), so where it matches it reads the same tokens.
# Runs of characters are taken whole (the lookaheads make each one maximal), so there
# is one way to match and the engine loops per run, not per character. A run is
# skipped only up to its first charset meta or loader: the tokenizer reads those.
_W = rb"[\t\n\f\r ]"
_PLAIN_TAG = (
    rb"(?=[\t\n\f\r />])(?:[^<>\"'=]+(?![^<>\"'=])"
    rb"|=" + _W + rb"*\"[^\"<>]*\"|=" + _W + rb"*'[^'<>]*'"
    rb"|=(?=" + _W + rb"*[^\t\n\f\r \"']))*>"
)
_PLAIN_RUN = re.compile(
    rb"(?:" + _W + rb"+(?!" + _W + rb")|<(?:meta|link|base)" + _PLAIN_TAG
    + b"".join(
        rb"|<" + name + _PLAIN_TAG + rb"[^<]*</" + name + _W + rb"*>"
        for name in (b"title", b"script", b"style")
    )
    + rb")+",
    re.IGNORECASE,
)

# Insertion modes of the tree builder, as far as the scanner needs them.
_INITIAL, _BEFORE_HEAD, _IN_HEAD = range(3)
# What the scanner is inside of, when it is inside an element's content or a comment.
_COMMENT, _RAWTEXT, _SCRIPT_CONTENT, _PLAINTEXT_CONTENT = range(4)

_NEED_MORE = -1


#: What a known head decides: inserted, the insertion point, a document, the reason.
_Verdict = tuple[bool, int, bool, str]
_Known = tuple[bytes, _Verdict]


class KnownHeads:
    """Per middleware: decisions already made on the starts of bodies, by their bytes.

    The scanner decides from the bytes it has read, so a body that starts with the same
    bytes is decided the same way, and most apps send the same head with every page (a
    template's): it is tokenized once. To learn which bytes a decision rests on, a first
    chunk is read in growing windows (``window``, then twice that, ...), as though it
    had arrived in chunks of those sizes, which gives the same output as any chunking;
    the bytes up to the end of the deciding window are what is remembered. A head that
    changes with every request (a nonce, a CSRF token) is read in full every time, and
    it cannot push out the heads that do repeat: a new head waits in ``new`` until a
    second body starts with it, then moves to ``seen``. Each is bounded (``size``),
    newest first, and lock-free: a reader always sees a whole tuple.
    """

    def __init__(self, size: int = 8, window: int = 1024) -> None:
        self.size = size
        self.window = window
        #: (the bytes a decision rests on, the decision), newest first: heads met again,
        #: and heads met once.
        self.seen: tuple[_Known, ...] = ()
        self.new: tuple[_Known, ...] = ()

    def find(self, data: bytes) -> _Known | None:
        for entry in self.seen:
            if data.startswith(entry[0]):
                return entry
        for entry in self.new:
            if data.startswith(entry[0]):
                self.new = tuple(other for other in self.new if other is not entry)
                self.seen = (entry, *self.seen[: self.size - 1])
                return entry
        return None

    def remember(self, prefix: bytes, verdict: _Verdict) -> None:
        self.new = ((prefix, verdict), *self.new[: self.size - 1])


class Injector:
    """Insert ``snippet`` once into one HTML document streamed through ``feed``.

    With ``known`` (shared by the injectors of one middleware), a first chunk that
    starts like a body already decided is decided without scanning it.
    """

    # The scanner's state, at its start. Class attributes: every one is immutable and
    # set on the instance when it first changes, so a body decided by a known head (most
    # pages) never pays for the scanner state it does not use.
    _data: _Buffer = b""
    _pos = 0
    _mode = _INITIAL
    _document = False  # a doctype, <html>, <head> or <body> was seen
    _insert_at = 0
    _templates = 0  # open <template> elements in the head
    # Inside a comment or an element's text: (what, where it began, state, where the
    # search for its end resumes, the pattern that ends it).
    _inside: tuple[int, int, int, int, re.Pattern[bytes] | None] | None = None
    _wait_from = -1  # an unfinished tag at _pos: re-read once ">" is past this
    _retry_at = 0  # ... and once the data is this long (it failed at a ">")
    _failed_at = -1  # where the last unfinished tag began
    _plain_until = 0  # the fast path stays off before this offset
    #: Bytes the scanner examined, for the linear-work test and the benchmarks.
    scanned = 0
    #: ``None`` while undecided, then whether the snippet went in.
    inserted: bool | None = None
    #: ``inserted is not None``, as a plain attribute: read for every chunk.
    decided = False
    #: Why the snippet did not go in (for the debug log).
    reason = ""

    def __init__(
        self, snippet: bytes, limit: int = LIMIT, known: KnownHeads | None = None
    ) -> None:
        self._snippet = snippet
        self._limit = limit
        self._known = known

    def feed(self, chunk: bytes) -> bytes:
        if self.decided:
            return chunk
        if self._known is not None and not self._data and type(chunk) is bytes and chunk:
            return self._feed_first(chunk, self._known)
        self._take(chunk)
        return self._release() if self.decided else b""

    def _feed_first(self, chunk: bytes, known: KnownHeads) -> bytes:
        """The first chunk, decided by a known head or read in windows (see KnownHeads)."""
        entry = known.find(chunk)
        if entry is not None and len(entry[0]) <= self._limit:  # decided within our limit
            prefix, (inserted, self._insert_at, self._document, self.reason) = entry
            self.scanned += len(prefix)
            self.inserted, self.decided, self._data = inserted, True, chunk
            return self._release()
        held, window = 0, known.window
        while not self.decided and held < len(chunk):
            end = min(held + window, len(chunk))
            self._take(chunk[held:end])
            held, window = end, window * 2
        if not self.decided:
            return b""
        if held < self._limit:  # decided before the limit forced it: by these bytes only
            assert self.inserted is not None
            known.remember(chunk[:held], (self.inserted, self._insert_at, self._document,
                                          self.reason))
        self._data = chunk  # the windows held copies of its start: release the chunk itself
        return self._release()

    def _take(self, chunk: bytes) -> None:
        """Hold ``chunk`` and scan on; ``decided`` says whether that settled it."""
        data = self._data
        if not data:
            # Most pages: one chunk, never copied (a caller's buffer is, never aliased).
            data = self._data = chunk if type(chunk) is bytes else bytes(chunk)
        else:
            if isinstance(data, bytes):
                data = self._data = bytearray(data)  # appends in place from now on
            data += chunk
        final = len(data) >= self._limit
        if self._wait_from >= 0 and not final and len(data) - self._pos > 16:
            # The unfinished tag cannot have ended without a new ">"; one that ended
            # nothing (a quoted ">") means: wait until the tag's data doubled, so a
            # long tag full of quoted ">" is re-read a logarithmic number of times.
            if len(data) < self._retry_at:
                return
            if data.find(b">", self._wait_from) < 0:
                self.scanned += len(data) - self._wait_from
                self._wait_from = len(data)
                return
        if not self._scan(final) and final:
            self._decide(None, f"no <head> or <body> in the first {self._limit} bytes")

    def close(self) -> bytes:
        """End of body: decide with what there is and return everything held."""
        if self.decided:
            return b""
        if not self._scan(True):
            self._decide(None, "no <head> or <body> in the document")
        return self._release()

    @property
    def document(self) -> bool:
        """A doctype, ``<html>``, ``<head>`` or ``<body>`` was seen: not a fragment."""
        return self._document

    # -- internals ------------------------------------------------------------------
    def _release(self) -> bytes:
        data, self._data = self._data, b""
        if not self.inserted:
            return bytes(data)
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

    def _end_of_head(self) -> bool:
        """The head ends here: inject at the insertion point, if this is a document."""
        if not self._document:
            return self._decide(None, "head elements, then body content: a fragment")
        return self._decide(self._insert_at)

    def _body_content(self, at: int, what: str = "text") -> bool:
        """Body content at ``at`` (an element or text that cannot be in a head)."""
        if self._mode == _IN_HEAD:
            return self._end_of_head()
        if self._mode == _BEFORE_HEAD:
            return self._decide(at)  # the head is empty and implied: open it here
        return self._decide(None, f"{what} before <head>/<body>: not a document")

    def _give_up_or_insert(self, reason: str) -> bool:
        """At the end of what we may look at: inject if a head was seen."""
        if self._mode == _IN_HEAD and self._document:
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
        self._wait_from = -1
        while True:
            if self._inside is not None:
                pos = self._skip_inside(data, end)
                if pos == _NEED_MORE:
                    return self._give_up_or_insert("document cut short") if final else False
                if self.decided:
                    return True
            lt = data.find(b"<", pos, end)
            text_end = end if lt < 0 else lt
            if text_end > pos:
                self.scanned += text_end - pos
                if self._text(data, pos, text_end):
                    return True
            if lt < 0:
                self._pos = end
                return self._give_up_or_insert("no <head> or <body>") if final else False
            if self._mode == _IN_HEAD and lt >= self._plain_until and not self._templates:
                stop = self._plain_run(data, lt, end)
                if stop != lt:
                    pos = stop
                    continue
            pos = self._token(data, lt, end)
            if self.decided:
                return True
            if pos == _NEED_MORE:
                self._pos = lt  # re-read this token when more data arrives
                self._wait_from = end
                self._retry_at = lt + 2 * (end - lt) if lt == self._failed_at else 0
                self._failed_at = lt
                return self._give_up_or_insert("document cut short") if final else False

    def _text(self, data: _Buffer, pos: int, end: int) -> bool:
        """Character data between tokens: whitespace, or body content."""
        if self._templates:
            return False  # template contents are not the document's body
        stripped = data[pos:end].lstrip(_WHITESPACE)
        if not stripped:
            return False
        return self._body_content(end - len(stripped))

    def _plain_run(self, data: _Buffer, lt: int, end: int) -> int:
        """Skip a run of plain head tokens at ``lt``; where it ends (``lt``: no run).

        A charset meta in the run moves the insertion point as the tokenizer would:
        after the last meta tag that mentions a charset or X-UA-Compatible (a mention
        in a title or another tag moves nothing). A loader hands the run back to the
        tokenizer, which decides.
        """
        run = _PLAIN_RUN.match(data, lt, end)
        if run is None:
            return lt
        stop = run.end()
        self.scanned += 2 * (stop - lt)  # the match, and the lowered copy searched below
        text = data[lt:stop].lower()
        for word in (b"charset", b"x-ua-compatible"):
            at = len(text)
            while (at := text.rfind(word, 0, at)) >= 0:
                tag = text.rfind(b"<", 0, at)
                # Plain tags hold no ">" inside a value: the first ">" ends the tag.
                if text.startswith(b"<meta", tag) and text.find(b">", tag) > at:
                    self._insert_at = max(self._insert_at, lt + text.find(b">", tag) + 1)
                    break
        loader = data.find(LOADER_SIGNATURE, lt, stop)
        if loader >= 0:
            # The tokenizer reads on from the tag that mentions it (and sees the charset
            # metas after it again, which moves the insertion point nowhere new).
            self._plain_until = stop
            return data.rfind(b"<", lt, loader)
        return stop

    def _token(self, data: _Buffer, lt: int, end: int) -> int:
        """Read the token at ``lt``; return where the next one starts, or _NEED_MORE."""
        if data.startswith(_COMMENT_OPEN, lt):
            after = lt + len(_COMMENT_OPEN)
            if end - after < 2:
                return _NEED_MORE  # "<!-->" and "<!--->" are whole comments
            self.scanned += 6
            if data[after] == 0x3E:  # ">"
                return after + 1
            if data[after : after + 2] == b"->":
                return after + 2
            self._inside = (_COMMENT, lt, 0, after, _COMMENT_END)
            return self._skip_inside(data, end)
        token = _TOKEN.match(data, lt, end)
        self.scanned += (end if token is None else token.end()) - lt
        if token is None:
            return self._odd(data, lt, end)
        after = token.end()
        declaration, empty_end, end_tag, name, _ = token.groups()
        if declaration:
            if _DOCTYPE.match(data, lt) and not self._document:
                self._document = True
                if self._mode == _INITIAL:
                    self._mode = _BEFORE_HEAD
            return after
        if empty_end:
            return after  # "</>" is dropped by the tokenizer
        name = name.lower()
        if end_tag:
            self._end_tag(name, lt)
            return after
        return self._start_tag(data, name, token, end)

    def _odd(self, data: _Buffer, lt: int, end: int) -> int:
        """A "<" that is not a whole token: cut short (``_NEED_MORE``) or plain text."""
        nxt = bytes(data[lt + 1 : lt + 2])
        if nxt.isalpha() or nxt in (b"", b"!", b"?", b"/"):
            return _NEED_MORE  # a tag, comment or declaration not finished yet
        # "< ", "<3": a "<" that is text.
        if not self._templates:
            self._body_content(lt)
        return lt + 1

    def _end_tag(self, name: bytes, lt: int) -> None:
        if self._templates:
            if name == b"template":
                self._templates -= 1
            return
        if self._mode == _INITIAL:
            self._decide(None, "an end tag before <html>/<head>/<body>: not a document")
        elif name in _HEAD_CLOSERS:
            self._body_content(lt)
        # Any other end tag is ignored by the tree builder here.

    def _start_tag(self, data: _Buffer, name: bytes, token: re.Match[bytes], end: int) -> int:
        kind = _ELEMENTS.get(name)
        lt, after = token.start(), token.end()
        if self._templates:
            if kind == _TEMPLATE:
                self._templates += 1
                return after
            return self._enter(data, kind, name, lt, after, end)
        if self._mode != _IN_HEAD:
            if kind == _HTML:
                self._document, self._mode = True, _BEFORE_HEAD
                return after
            if kind == _HEAD:
                if token.group("selfclosing"):
                    self._decide(None, "an empty XHTML <head/>: no place for the snippet")
                    return after
                self._document, self._mode, self._insert_at = True, _IN_HEAD, after
                return after
            if kind == _BODY:
                self._document, self._mode = True, _BEFORE_HEAD
                self._body_content(lt)
                return after
            if kind not in _IN_HEAD_KINDS:
                self._body_content(lt, f"<{name.decode(errors='replace')}>")
                return after
            self._mode, self._insert_at = _IN_HEAD, lt  # an implied head opens here
        # In the head.
        if kind == _META:
            if _charsetish(data, lt, after) >= 0:
                self._insert_at = after  # these must stay first in the head
            return after
        if kind == _VOID:
            return after
        if kind in (_HTML, _HEAD):
            self._document = True
            return after
        if kind == _TEMPLATE:
            self._templates += 1
            return after
        if kind in (_RAW, _SCRIPT):
            return self._enter(data, kind, name, lt, after, end)
        if kind == _BODY:
            self._document = True
        self._end_of_head()
        return after

    def _enter(
        self, data: _Buffer, kind: int | None, name: bytes, lt: int, after: int, end: int
    ) -> int:
        """A start tag whose content the tokenizer reads differently: skip that content."""
        if kind == _SCRIPT:
            self._inside = (_SCRIPT_CONTENT, lt, _SCRIPT_DATA, after, None)
        elif kind in (_RAW, _BODY_RAW):
            # The state slot holds how far a failed search must back up: "</name".
            self._inside = (_RAWTEXT, lt, len(name) + 3, after, _raw_end[name])
        elif kind == _PLAINTEXT:
            self._inside = (_PLAINTEXT_CONTENT, lt, 0, after, None)
        else:
            return after
        return self._skip_inside(data, end)

    def _skip_inside(self, data: _Buffer, end: int) -> int:
        """Resume the search for the end of the current comment or element text.

        Returns where the scanner goes on (at the closing end tag, which it then reads
        as a token, or after a comment), or _NEED_MORE with the search position saved.
        """
        assert self._inside is not None
        what, began, state, start, pattern = self._inside
        if what == _PLAINTEXT_CONTENT:
            self.scanned += end - start
            self._inside = (what, began, state, end, pattern)
            return _NEED_MORE  # plaintext never ends
        if what == _SCRIPT_CONTENT:
            found = self._script_end(data, state, start, end)
            if found == _NEED_MORE:
                return _NEED_MORE
            self._inside = None
            self._check_script(data, began, found)
            return found
        assert pattern is not None
        match = pattern.search(data, start, end)
        if match is None:
            self.scanned += end - start
            overlap = 3 if what == _COMMENT else state
            self._inside = (what, began, state, max(start, end - overlap), pattern)
            return _NEED_MORE
        self.scanned += match.end() - start
        self._inside = None
        return match.end() if what == _COMMENT else match.start()

    def _script_end(self, data: _Buffer, state: int, start: int, end: int) -> int:
        """Where the script's end tag starts, following the script data states."""
        assert self._inside is not None
        while True:
            match = _SCRIPT_SEARCH[state].search(data, start, end)
            if match is None:
                self.scanned += end - start
                _, began, _, _, _ = self._inside
                resume = max(start, end - _SCRIPT_OVERLAP)
                self._inside = (_SCRIPT_CONTENT, began, state, resume, None)
                return _NEED_MORE
            self.scanned += match.end() - start
            token = match.group()
            if state == _SCRIPT_DATA:
                if match.group(1):
                    return match.start()  # </script>
                # "<!--": escaped, with its two dashes able to end it at once ("<!-->").
                state, start = _SCRIPT_ESCAPED, match.end() - 2
            elif token == b"-->":
                state, start = _SCRIPT_DATA, match.end()
            elif state == _SCRIPT_ESCAPED:
                if match.group(1):
                    return match.start()  # </script> ends an escaped script too
                state, start = _SCRIPT_DOUBLE, match.end()  # "<!--<script>"
            else:  # "</script" in double-escaped text only leaves that state
                state, start = _SCRIPT_ESCAPED, match.end()

    def _check_script(self, data: _Buffer, began: int, end: int) -> None:
        """A whole script, from its tag: a PX loader, or CDATA HTML and XML read apart."""
        if data.find(LOADER_SIGNATURE, began, end) >= 0:
            self._decide(None, "the page already has a PX loader")
            return
        cdata = data.find(b"<![CDATA[", began, end)
        if cdata >= 0 and data.find(b"]]>", cdata, end) < 0:
            # XHTML ends this script after "]]>", HTML at the "</script>" inside it.
            self._decide(None, "a script whose CDATA section runs past its </script>")
        self.scanned += 2 * (end - began)

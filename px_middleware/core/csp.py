"""Would the page's Content-Security-Policy let our snippet run? Decided as a browser does.

Our snippet is an inline ``<script>`` (carrying a nonce when there is one) that creates
a second ``<script src=…/aptrinsic.js>`` element (with the same nonce). Both must be
allowed by **every** enforced policy: each ``Content-Security-Policy`` header, and each
comma-separated policy inside one header (CSP3 §2.2). ``Content-Security-Policy-
Report-Only`` never blocks, so it never causes a skip, but its nonce is still used.

Per policy (CSP3 §6.7):

* the directive is ``script-src-elem``, else ``script-src``, else ``default-src``; none
  of them means no restriction; a duplicated directive: the first one wins;
* the inline script is allowed by a matching ``'nonce-…'``, or by ``'unsafe-inline'``
  when the list has no nonce, no hash and no ``'strict-dynamic'`` (those switch it off);
* the SDK element is allowed by ``'strict-dynamic'`` (a script created by an allowed
  script), by its nonce, or by its URL matching a source: ``*``, a scheme (``https:``),
  a host (``*.aptrinsic.com``, ``https://web-sdk.aptrinsic.com:443/api/``) or ``'self'``;
* ``'none'`` alone allows nothing.

The nonce is the app's (its nonce callable) or, without one, a nonce the enforced
policies themselves list (the app's own scripts use that one).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable
from urllib.parse import urlsplit

_ENFORCE = "content-security-policy"
_REPORT_ONLY = "content-security-policy-report-only"
_DIRECTIVES = ("script-src-elem", "script-src", "default-src")
# Keywords are case-insensitive (CSP's grammar is ABNF); the nonce value is not.
_NONCE_SOURCE = re.compile(r"'(?i:nonce)-([A-Za-z0-9+/_=-]+)'")
_HASH_SOURCE = re.compile(r"'(?:sha256|sha384|sha512)-[A-Za-z0-9+/_=-]+'", re.IGNORECASE)
_DIRECTIVE_NAME = re.compile(r"[A-Za-z0-9-]+")
_HOST_SOURCE = re.compile(
    r"^(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?"
    r"(?P<host>\*|(?:\*\.)?[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)"
    r"(?::(?P<port>[0-9]+|\*))?"
    r"(?P<path>/[^;,]*)?$"
)
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Whether our snippet may go in, with which nonce, and why not."""

    allowed: bool
    nonce: str | None = None
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class _Url:
    scheme: str
    host: str
    port: int | None
    path: str

    @classmethod
    @functools.lru_cache(maxsize=64)  # the SDK's URL and the app's hosts: a few, repeated
    def parse(cls, url: str) -> _Url:
        parts = urlsplit(url)
        return cls(parts.scheme.lower(), (parts.hostname or "").lower(), parts.port,
                   parts.path or "/")

    @property
    def effective_port(self) -> int | None:
        return self.port if self.port is not None else _DEFAULT_PORTS.get(self.scheme)


_Policy = dict[str, list[str]]


def policies(headers: Iterable[tuple[str, str]], name: str = _ENFORCE) -> list[_Policy]:
    """Every policy in the headers called ``name``: directive name -> source list."""
    found = []
    for header, value in headers:
        if header.lower() != name:
            continue
        for text in value.split(","):
            policy: _Policy = {}
            for directive in text.split(";"):
                tokens = directive.split()
                if not tokens or not _DIRECTIVE_NAME.fullmatch(tokens[0]):
                    continue
                policy.setdefault(tokens[0].lower(), tokens[1:])  # the first one wins
            if policy:
                found.append(policy)
    return found


def _script_sources(policy: _Policy) -> list[str] | None:
    for directive in _DIRECTIVES:
        if directive in policy:
            return policy[directive]
    return None


def _nonces(sources: list[str]) -> list[str]:
    return [m.group(1) for m in map(_NONCE_SOURCE.fullmatch, sources) if m]


def _has(sources: list[str], keyword: str) -> bool:
    return any(source.lower() == keyword for source in sources)


def _inline_allowed(sources: list[str], nonce: str | None) -> bool:
    if nonce is not None and nonce in _nonces(sources):
        return True
    switched_off = (
        _nonces(sources)
        or any(_HASH_SOURCE.fullmatch(s) for s in sources)
        or _has(sources, "'strict-dynamic'")
    )
    return _has(sources, "'unsafe-inline'") and not switched_off


def _port_matches(port: str | None, url: _Url) -> bool:
    if port == "*":
        return True
    if port is None:
        # No port: the default port of the URL's scheme (https upgrades keep matching).
        return url.port is None or url.port == _DEFAULT_PORTS.get(url.scheme)
    wanted = int(port)
    return wanted == url.effective_port or (
        wanted == 80 and url.scheme == "https" and url.effective_port == 443
    )


def _scheme_matches(source: str, url_scheme: str) -> bool:
    """A source scheme matches itself and its secure upgrade (http: lets https in)."""
    return url_scheme == source or (source, url_scheme) in (("http", "https"), ("ws", "wss"))


def _source_matches(source: str, url: _Url, page: _Url | None) -> bool:
    lowered = source.lower()
    if lowered == "*":
        return url.scheme in ("http", "https") or (page is not None and url.scheme == page.scheme)
    if lowered == "'self'":
        return page is not None and (
            _scheme_matches(page.scheme, url.scheme)
            and url.host == page.host
            and (url.effective_port == page.effective_port
                 or (page.scheme == "http" and url.scheme == "https"
                     and page.effective_port == 80 and url.effective_port == 443))
        )
    if lowered.startswith("'"):
        return False  # keywords, nonces, hashes: not URL matches
    if re.fullmatch(r"[a-z][a-z0-9+.-]*:", lowered):
        return _scheme_matches(lowered[:-1], url.scheme)
    match = _HOST_SOURCE.match(lowered)
    if match is None:
        return False
    scheme = match.group("scheme")
    # Without a scheme a source means the page's scheme (or its https upgrade).
    wanted = scheme or (page.scheme if page is not None else "http")
    if not _scheme_matches(wanted, url.scheme):
        return False
    host = match.group("host")
    if host.startswith("*."):
        if not url.host.endswith(host[1:]):
            return False
    elif host != "*" and host != url.host:
        return False
    if not _port_matches(match.group("port"), url):
        return False
    path = match.group("path")
    if path:
        return url.path.startswith(path) if path.endswith("/") else url.path == path
    return True


def _sdk_allowed(sources: list[str], nonce: str | None, url: _Url, page: _Url | None) -> bool:
    if _has(sources, "'strict-dynamic'"):
        return True  # the loader is a trusted script; what it creates is trusted too
    if nonce is not None and nonce in _nonces(sources):
        return True
    return any(_source_matches(source, url, page) for source in sources)


def _blocked(
    enforced: list[_Policy], nonce: str | None, url: _Url, page: _Url | None
) -> str | None:
    """Why some enforced policy blocks the snippet with this nonce, or None."""
    for number, policy in enumerate(enforced, 1):
        sources = _script_sources(policy)
        if sources is None:
            continue
        label = f"CSP policy {number} of {len(enforced)}"
        if not _inline_allowed(sources, nonce):
            why = "no nonce" if nonce is None else f"nonce {nonce!r} not listed"
            return (
                f"{label} blocks our inline script ({why}, and 'unsafe-inline' absent or"
                " switched off by a nonce, hash or 'strict-dynamic'; fail closed)"
            )
        if not _sdk_allowed(sources, nonce, url, page):
            return f"{label} blocks the PX SDK at {url.scheme}://{url.host} (fail closed)"
    return None


def check(
    headers: Iterable[tuple[str, str]],
    nonce: str | None,
    sdk_url: str,
    page_url: str | None = None,
) -> Verdict:
    """May our snippet (inline loader, then the SDK from ``sdk_url``) run on this page?

    ``nonce`` is the app's own nonce for this response, if it has one; ``page_url``
    (the page's scheme and host) is what ``'self'`` means.
    """
    headers = list(headers)
    enforced = policies(headers)
    url = _Url.parse(sdk_url)
    page = _Url.parse(page_url) if page_url else None
    if nonce is not None:
        reason = _blocked(enforced, nonce, url, page)
        return Verdict(reason is None, nonce, reason or "")
    # No nonce from the app: try the ones the policies list (report-only ones too, so
    # the nonce goes on even when nothing is enforced), then none at all.
    candidates: list[str | None] = []
    for policy in enforced + policies(headers, _REPORT_ONLY):
        sources = _script_sources(policy) or []
        candidates += [n for n in _nonces(sources) if n not in candidates]
    candidates.append(None)
    first_reason = ""
    for candidate in candidates:
        reason = _blocked(enforced, candidate, url, page)
        if reason is None:
            return Verdict(True, candidate)
        first_reason = first_reason or reason
    return Verdict(False, None, first_reason)

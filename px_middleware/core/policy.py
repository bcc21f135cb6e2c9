"""Whether a request/response may get the snippet: pure functions returning a reason.

Each function returns ``None`` for "yes" or a short reason for "no"; the adapters log
the reason at debug level so "why was nothing injected?" has an answer. Anything
uncertain is a "no": a page without PX is harmless, a broken response is not.
"""

from __future__ import annotations

from collections.abc import Iterable

from px_middleware.core.request import HeaderGetter

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})


def media_type(content_type: str | None) -> str:
    """``Text/HTML; charset=utf-8`` -> ``text/html``."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def content_type(headers: Iterable[tuple[str, str]]) -> str | None:
    """The response's ``Content-Type``: the last one, as ``ResponseHead`` reads it."""
    found = None
    for name, value in headers:
        if len(name) == 12 and name.lower() == "content-type":
            found = value
    return found


def request_skip_reason(
    method: str, path: str, header: HeaderGetter, path_allowed: bool
) -> str | None:
    """Decide from the request alone; ``header(name)`` is case-insensitive.

    ``path_allowed`` is the include/exclude verdict on ``path`` (``path_allowed()``).
    """
    if method != "GET":
        return f"method {method} (only GET pages get the snippet)"
    if not path_allowed:
        return f"path {path!r} excluded by include_paths/exclude_paths"
    if (header("x-requested-with") or "").lower() == "xmlhttprequest":
        return "XHR request (X-Requested-With)"
    if header("hx-request") and not header("hx-boosted"):
        return "htmx partial request (HX-Request)"
    if header("turbo-frame"):
        return "Turbo Frame request"
    purpose = (header("sec-purpose") or header("purpose") or "").lower()
    if "prefetch" in purpose or "prerender" in purpose:
        return "prefetch request (Sec-Purpose/Purpose)"
    return None


def navigation_reason(header: HeaderGetter) -> str | None:
    """Why this request is not a person navigating to a page (``None``: it is).

    Browsers say so in ``Sec-Fetch-Dest``/``Sec-Fetch-Mode`` when they send them; a
    page's own ``fetch()`` is ``empty``/``cors``. htmx boosting and Turbo Drive visits
    are navigations made through ``fetch()``, so they count as page views.
    """
    if (header("hx-boosted") or "").lower() == "true":
        return None
    if header("x-turbo-request-id") and not header("turbo-frame"):
        return None
    dest = header("sec-fetch-dest")
    if dest is not None and dest.lower() != "document":
        return f"Sec-Fetch-Dest: {dest} (not a navigation)"
    mode = header("sec-fetch-mode")
    if mode is not None and mode.lower() != "navigate":
        return f"Sec-Fetch-Mode: {mode} (not a navigation)"
    return None


class ResponseHead:
    """The facts about a response head that decisions need, read in one pass."""

    __slots__ = ("csp", "media_type", "public", "refusal")

    def __init__(self, headers: Iterable[tuple[str, str]]) -> None:
        content_type = None
        #: Why the body must not be rewritten whatever it holds (None: it may be).
        self.refusal: str | None = None
        #: Why the response may land in a shared cache (None: it may not).
        self.public: str | None = None
        #: A Content-Security-Policy(-Report-Only) header is there (most pages: none).
        self.csp = False
        for name, value in headers:
            lower = name.lower()
            if lower == "content-type":
                content_type = value
            elif lower == "content-length" and not _digits(value.strip()):
                self.refusal = self.refusal or f"invalid Content-Length {value!r}"
            elif lower == "cache-control":
                lowered = value.lower()
                if "no-transform" in lowered:
                    self.refusal = self.refusal or "Cache-Control: no-transform"
                directives = {d.strip().split("=", 1)[0] for d in lowered.split(",")}
                if "public" in directives or "s-maxage" in directives:
                    self.public = "Cache-Control says public; an identified page must stay private"
            elif lower == "content-encoding" and value.strip().lower() != "identity":
                self.refusal = self.refusal or f"Content-Encoding {value} (never decompressed)"
            elif lower == "content-disposition" and value.strip().lower().startswith(
                "attachment"
            ):
                self.refusal = self.refusal or "Content-Disposition: attachment"
            elif lower.startswith("content-security-policy"):
                self.csp = True
        self.media_type = media_type(content_type)

    @property
    def html(self) -> bool:
        return self.media_type in HTML_TYPES


def _digits(text: str) -> bool:
    # ASCII digits only: str.isdigit() alone also accepts "²", which int() refuses.
    return text.isascii() and text.isdigit()


def response_skip_reason(
    status: int, head: ResponseHead | Iterable[tuple[str, str]], statuses: frozenset[int]
) -> str | None:
    """Decide from the response status and headers, before any body is read."""
    if not isinstance(head, ResponseHead):
        head = ResponseHead(head)
    if status not in statuses:
        return f"status {status}"
    if head.refusal is not None:
        return head.refusal
    if not head.html:
        return f"media type {head.media_type or 'missing'!r} is not HTML"
    return None


def public_cache_reason(headers: Iterable[tuple[str, str]]) -> str | None:
    """Per-user content must not land in a shared cache: refuse ``public`` pages."""
    return ResponseHead(headers).public


def rewrite_headers(
    headers: list[tuple[str, str]], *, identified: bool, length_delta: int
) -> list[tuple[str, str]]:
    """Headers for a page whose body grew by ``length_delta`` bytes.

    ``Content-Length`` is recomputed when present, a strong ``ETag`` becomes weak (the
    body is no longer the app's byte for byte), and an identified page gets at least
    ``Cache-Control: private``. Duplicates and order are kept.
    """
    result: list[tuple[str, str]] = []
    has_cache_control = False
    for name, value in headers:
        lower = name.lower()
        if lower == "content-length" and length_delta:
            value = str(int(value) + length_delta)
        elif lower == "etag" and length_delta and not value.startswith("W/"):
            value = "W/" + value
        elif lower == "cache-control" and identified:
            has_cache_control = True
            directives = [d.strip() for d in value.split(",") if d.strip()]
            if not any(d.lower() in ("private", "no-store") for d in directives):
                directives.insert(0, "private")
            value = ", ".join(directives)
        result.append((name, value))
    if identified and not has_cache_control:
        result.append(("Cache-Control", "private"))
    return result

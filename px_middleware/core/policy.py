"""Whether a request/response may get the snippet: pure functions returning a reason.

Each function returns ``None`` for "yes" or a short reason for "no"; the adapters log
the reason at debug level so "why was nothing injected?" has an answer. Anything
uncertain is a "no": a page without PX is harmless, a broken response is not.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from px_middleware.core.request import HeaderGetter

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
_DIGITS = re.compile(r"[0-9]+")


def media_type(content_type: str | None) -> str:
    """``Text/HTML; charset=utf-8`` -> ``text/html``."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def request_skip_reason(
    method: str, path: str, header: HeaderGetter, path_allowed: Callable[[str], bool]
) -> str | None:
    """Decide from the request alone; ``header(name)`` is case-insensitive."""
    if method != "GET":
        return f"method {method} (only GET pages get the snippet)"
    if not path_allowed(path):
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


def response_skip_reason(
    status: int, headers: Iterable[tuple[str, str]], statuses: frozenset[int]
) -> str | None:
    """Decide from the response status and headers, before any body is read."""
    if status not in statuses:
        return f"status {status}"
    content_type = None
    for name, value in headers:
        lower = name.lower()
        if lower == "content-type":
            content_type = value
        elif lower == "content-encoding" and value.strip().lower() != "identity":
            return f"Content-Encoding {value} (never decompressed)"
        elif lower == "content-disposition" and value.strip().lower().startswith("attachment"):
            return "Content-Disposition: attachment"
        elif lower == "cache-control" and "no-transform" in value.lower():
            return "Cache-Control: no-transform"
        elif lower == "content-length" and not _DIGITS.fullmatch(value.strip()):
            # ASCII digits only: str.isdigit() also accepts "²", which int() refuses.
            return f"invalid Content-Length {value!r}"
    kind = media_type(content_type)
    if kind not in HTML_TYPES:
        return f"media type {kind or 'missing'!r} is not HTML"
    return None


def public_cache_reason(headers: Iterable[tuple[str, str]]) -> str | None:
    """Per-user content must not land in a shared cache: refuse ``public`` pages."""
    for name, value in headers:
        if name.lower() == "cache-control":
            directives = {d.strip().split("=", 1)[0].lower() for d in value.split(",")}
            if "public" in directives or "s-maxage" in directives:
                return "Cache-Control says public; an identified page must stay private"
    return None


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

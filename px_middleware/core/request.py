"""Request-side helpers the core shares: the header getter type and cookie reading."""

from __future__ import annotations

from collections.abc import Callable

HeaderGetter = Callable[[str], "str | None"]


def cookie_value(header: str | None, name: str) -> str | None:
    """One cookie's value from a ``Cookie`` header; a hand parser, because
    ``SimpleCookie`` rejects whole headers over one odd cookie from somebody else."""
    if not header or name not in header:
        return None
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            return value.strip().strip('"')
    return None

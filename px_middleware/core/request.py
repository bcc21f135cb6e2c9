"""``RequestInfo``: the request facts the core needs, gathered by the adapters."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

HeaderGetter = Callable[[str], "str | None"]


@dataclasses.dataclass(frozen=True)
class RequestInfo:
    method: str
    path: str
    #: ``header(name)`` returns the value of a request header, case-insensitively.
    header: HeaderGetter
    query: str = ""
    scheme: str = "http"
    host: str = ""
    #: The peer address as the server saw it.
    client: str | None = None

    def cookie(self, name: str) -> str | None:
        """One cookie's value; a hand parser, because ``SimpleCookie`` rejects whole
        headers over one odd cookie from somebody else."""
        for part in (self.header("cookie") or "").split(";"):
            key, sep, value = part.partition("=")
            if sep and key.strip() == name:
                return value.strip().strip('"')
        return None

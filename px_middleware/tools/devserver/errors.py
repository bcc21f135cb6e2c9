"""PX's error body: ``{"externalapierror": {"status", "message", "subErrors"}}``.

``status`` is the name of the HTTP status (``NOT_FOUND``), as PX sends it, not its number.

Every error the stand-in answers uses this shape, so client code that parses PX's
messages (to log why an event was dropped) is exercised against the real format.
"""

from __future__ import annotations

import http
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.responses import JSONResponse


class ApiError(Exception):
    """An error answered to the client; raised anywhere inside a request handler."""

    def __init__(
        self, status: int, messages: str | Sequence[str], headers: Mapping[str, str] | None = None
    ) -> None:
        self.status = status
        self.messages = [messages] if isinstance(messages, str) else list(messages)
        self.headers = dict(headers or {})
        super().__init__(f"{status}: {'; '.join(self.messages)}")


def status_name(status: int) -> str:
    """``404`` -> ``"NOT_FOUND"``; an unknown code keeps its number as text."""
    try:
        return http.HTTPStatus(status).name
    except ValueError:
        return str(status)


def error_body(status: int, messages: Sequence[str]) -> dict[str, Any]:
    return {
        "externalapierror": {
            "status": status_name(status),
            "message": "; ".join(messages) or status_name(status),
            "subErrors": [{"message": message} for message in messages],
        }
    }


def error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(error.status, error.messages), status_code=error.status, headers=error.headers
    )

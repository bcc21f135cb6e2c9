"""Clients for the Gainsight PX REST API (users, accounts, custom events).

``PXRestClient`` is blocking: delivery and the loader call it from their own threads.

The client never retries: ``delivery.retry`` is the one retry layer. Failed calls raise
:class:`PXAPIError` (or a subclass); network failures propagate as ``httpx`` exceptions.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Mapping
from typing import Any, Literal, cast
from urllib.parse import quote

import httpx

Upserted = Literal["updated", "created"]

USER_AGENT = "px_middleware/0.1 (+httpx)"

# Characters that cannot travel safely in a path segment; such ids use PUT .../update.
_UNSAFE_ID = re.compile(r"[/?#%\s\x00-\x1f\x7f]|[^\x00-\x7f]")


class PXAPIError(Exception):
    """PX answered with an error status; ``messages`` are PX's own explanations."""

    def __init__(self, status: int, messages: list[str], body: Any = None) -> None:
        self.status = status
        self.messages = messages
        self.body = body
        super().__init__(status, messages)

    def __str__(self) -> str:
        detail = "; ".join(self.messages) or "no details"
        return f"PX API {self.status}: {detail}"


class PXNotFound(PXAPIError):
    """404: the user or account does not exist."""


class PXAuthError(PXAPIError):
    """401/403: the API key is wrong, revoked, or lacks permission."""


class PXRateLimited(PXAPIError):
    """429: over PX's rate limit; ``retry_after`` is the server's wait in seconds."""

    def __init__(
        self, status: int, messages: list[str], body: Any = None, retry_after: float | None = None
    ) -> None:
        super().__init__(status, messages, body)
        self.retry_after = retry_after


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP-date).

    ``now`` is the current Unix time (for HTTP-dates). Unparseable values give ``None``;
    dates in the past give ``0.0``. The result is not capped: see :func:`retry_delay`.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # HTTP-dates are GMT by definition
        return None
    current = time.time() if now is None else now
    return max(when.timestamp() - current, 0.0)


def error_for(response: httpx.Response) -> PXAPIError | None:
    """The exception a response stands for, or ``None`` for a 2xx."""
    if response.is_success:
        return None
    status = response.status_code
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = response.text
    messages = _messages(body) or [response.reason_phrase or "error"]
    if status == 404:
        return PXNotFound(status, messages, body)
    if status in (401, 403):
        return PXAuthError(status, messages, body)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        return PXRateLimited(status, messages, body, retry_after)
    return PXAPIError(status, messages, body)


def _messages(body: Any) -> list[str]:
    if isinstance(body, Mapping):
        error = body.get("externalapierror")
        if isinstance(error, Mapping):
            subs = error.get("subErrors")
            found = [
                str(sub["message"])
                for sub in (subs if isinstance(subs, list) else [])
                if isinstance(sub, Mapping) and sub.get("message")
            ]
            if found:
                return found
            body = error
        for key in ("message", "error", "detail"):
            if isinstance(body.get(key), str) and body[key]:
                return [body[key]]
        return []
    if isinstance(body, str) and body.strip():
        text = " ".join(body.split())
        return [text if len(text) <= 200 else text[:197] + "..."]
    return []


def path_safe(identifier: str) -> bool:
    """Whether an id can go in a URL path as is (else PUT ``/update`` is used)."""
    return bool(identifier) and identifier not in (".", "..") and not _UNSAFE_ID.search(identifier)


def _segment(identifier: str) -> str:
    if identifier in (".", ".."):  # dot segments would be resolved away
        return "%2E" * len(identifier)
    return quote(identifier, safe="" if not path_safe(identifier) else "!$&'()*+,;=:@-._~")


def _body(response: httpx.Response) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    try:
        return response.json()
    except ValueError:
        return response.text


def _id_of(obj: Mapping[str, Any], field: str) -> str:
    value = obj.get(field)
    if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
        raise ValueError(f"{field} is required (a non-empty string) to upsert into PX")
    return str(value)


def _timeout(timeout: float | httpx.Timeout | None) -> httpx.Timeout | None:
    if timeout is None or isinstance(timeout, httpx.Timeout):
        return timeout
    # Connecting should be quick; a long connect timeout only delays noticing an outage.
    return httpx.Timeout(timeout, connect=min(timeout, 5.0))


class PXRestClient:
    """Blocking PX REST client over one keep-alive ``httpx.Client``.

    ``base_url`` includes the version, e.g. ``https://api.aptrinsic.com/v1``
    (``PXConfig.rest_url``). Every method takes an optional per-call ``timeout``.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float | httpx.Timeout = 10.0,
        transport: httpx.BaseTransport | None = None,
        max_connections: int = 4,
    ) -> None:
        if not api_key:
            raise ValueError("api_key is required for the PX REST API")
        self._client = httpx.Client(
            transport=transport,
            base_url=base_url.rstrip("/") + "/",
            headers={
                "X-APTRINSIC-API-KEY": api_key,
                "Accept": "application/json",
                "User-Agent": USER_AGENT,
            },
            timeout=_timeout(timeout),
            limits=httpx.Limits(
                max_connections=max_connections,
                max_keepalive_connections=max_connections,
                keepalive_expiry=30.0,
            ),
            follow_redirects=False,
        )

    # -- plumbing -----------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        timeout: float | httpx.Timeout | None = None,
    ) -> httpx.Response:
        """One call; raises :class:`PXAPIError` on a non-2xx answer. ``content`` is a
        pre-encoded JSON body (the sender encodes each item once)."""
        kwargs: dict[str, Any] = {}
        if content is not None:
            kwargs["content"] = content
            kwargs["headers"] = {"Content-Type": "application/json"}
        elif json is not None:
            kwargs["json"] = json
        if timeout is not None:
            kwargs["timeout"] = _timeout(timeout)
        response = self._client.request(method, path.lstrip("/"), **kwargs)
        error = error_for(response)
        if error is not None:
            raise error
        return response

    def _get(self, collection: str, identifier: str, timeout: float | None) -> Any:
        try:
            response = self.request(
                "GET", f"/{collection}/{_segment(str(identifier))}", timeout=timeout
            )
        except PXNotFound:
            return None
        return _body(response)

    def _update(
        self, collection: str, identifier: str, obj: Mapping[str, Any], timeout: float | None
    ) -> Any:
        path = f"/{collection}/{_segment(identifier)}" if path_safe(identifier) else (
            f"/{collection}/update"
        )
        return _body(self.request("PUT", path, json=obj, timeout=timeout))

    def _upsert(
        self, collection: str, field: str, obj: Mapping[str, Any], timeout: float | None
    ) -> Upserted:
        identifier = _id_of(obj, field)
        try:
            self._update(collection, identifier, obj, timeout)
            return "updated"
        except PXNotFound:
            pass
        try:
            self.request("POST", f"/{collection}", json=obj, timeout=timeout)
            return "created"
        except PXAPIError as exc:
            if exc.status not in (400, 409):
                raise
            # Another process may have created it between our PUT and POST (two workers
            # upserting one new user): then a second PUT succeeds. Otherwise the POST's
            # error is the real one.
            try:
                self._update(collection, identifier, obj, timeout)
            except PXNotFound:
                raise exc from None
            return "updated"

    # -- users --------------------------------------------------------------------------
    def get_user(self, identify_id: str, *, timeout: float | None = None) -> dict[str, Any] | None:
        return cast("dict[str, Any] | None", self._get("users", identify_id, timeout))

    def create_user(self, obj: Mapping[str, Any], *, timeout: float | None = None) -> Any:
        return _body(self.request("POST", "/users", json=obj, timeout=timeout))

    def update_user(
        self, identify_id: str, obj: Mapping[str, Any], *, timeout: float | None = None
    ) -> Any:
        return self._update("users", str(identify_id), obj, timeout)

    def upsert_user(self, obj: Mapping[str, Any], *, timeout: float | None = None) -> Upserted:
        """PUT, then POST when PX says the user does not exist (PX has no upsert)."""
        return self._upsert("users", "identifyId", obj, timeout)

    def delete_user(self, identify_id: str, *, timeout: float | None = None) -> None:
        self.request("DELETE", f"/users/{_segment(str(identify_id))}", timeout=timeout)

    # -- accounts -----------------------------------------------------------------------
    def get_account(
        self, account_id: str, *, timeout: float | None = None
    ) -> dict[str, Any] | None:
        return cast("dict[str, Any] | None", self._get("accounts", account_id, timeout))

    def create_account(self, obj: Mapping[str, Any], *, timeout: float | None = None) -> Any:
        return _body(self.request("POST", "/accounts", json=obj, timeout=timeout))

    def update_account(
        self, account_id: str, obj: Mapping[str, Any], *, timeout: float | None = None
    ) -> Any:
        return self._update("accounts", str(account_id), obj, timeout)

    def upsert_account(self, obj: Mapping[str, Any], *, timeout: float | None = None) -> Upserted:
        return self._upsert("accounts", "id", obj, timeout)

    def delete_account(self, account_id: str, *, timeout: float | None = None) -> None:
        self.request("DELETE", f"/accounts/{_segment(str(account_id))}", timeout=timeout)

    # -- events -------------------------------------------------------------------------
    def send_events(
        self,
        events: Mapping[str, Any] | list[Mapping[str, Any]],
        *,
        timeout: float | None = None,
    ) -> Any:
        """POST one custom event or a list of them to ``/events/custom``."""
        return _body(self.request("POST", "/events/custom", json=events, timeout=timeout))

    # -- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> PXRestClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""The front door of ``/v1``: injected faults, API key, rate limit and the request log.

It wraps the whole Starlette app rather than sitting inside it as Starlette
middleware, so that ``send`` is the server's own and an injected connection drop is
a real one: the client sees the socket close with no response at all, exactly what
a retrying sender has to cope with when PX's load balancer drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from px_middleware.delivery.ratelimit import TokenBucket
from px_middleware.tools.devserver.errors import ApiError, error_response
from px_middleware.tools.devserver.faults import Failure, Faults
from px_middleware.tools.devserver.store import Store

API_KEY_HEADER = b"x-aptrinsic-api-key"


class RateLimit:
    """The stand-in's PX-like limit: the library's own token bucket, renewed on reset."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.refill()

    def refill(self) -> None:
        self._bucket = TokenBucket(self.rate)

    def try_acquire(self) -> bool:
        return self._bucket.try_acquire() == 0.0


#: Where a handler leaves why it refused a request, for the request log and dashboard.
REASON_KEY = "px_devserver.reason"


def is_api_path(path: str) -> bool:
    return path == "/v1" or path.startswith("/v1/")


class ApiGate:
    def __init__(
        self, app: ASGIApp, *, store: Store, faults: Faults, bucket: RateLimit, api_key: str
    ) -> None:
        self.app = app
        self.store = store
        self.faults = faults
        self.bucket = bucket
        self._api_key = api_key.encode("utf-8")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_api_path(scope["path"]):
            await self.app(scope, receive, send)
            return
        status: int | None = None

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._gate(scope, receive, recording_send, send)
        finally:
            query = scope.get("query_string", b"").decode("latin-1")
            reason = scope.get(REASON_KEY)
            self.store.log_request(scope["method"], scope["path"], query, status, reason)

    async def _gate(self, scope: Scope, receive: Receive, send: Send, server_send: Send) -> None:
        delay = self.faults.delay_for(scope["path"])
        if delay:
            await asyncio.sleep(delay)
        fault = self.faults.take()
        if fault == "close":
            await _drop_connection(receive, server_send)
            return
        error: ApiError | None = None
        if isinstance(fault, Failure):
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            error = ApiError(fault.status, f"injected fault: {fault.status}", headers)
        elif not self._authorized(scope):
            error = ApiError(401, "missing or unknown X-APTRINSIC-API-KEY header")
        elif not self.bucket.try_acquire():
            error = ApiError(
                429,
                f"rate limit exceeded: at most {self.bucket.rate:g} requests per second",
                {"Retry-After": "1"},
            )
        if error is not None:
            scope[REASON_KEY] = "; ".join(error.messages)
            await error_response(error)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name.lower() == API_KEY_HEADER:
                return hmac.compare_digest(value, self._api_key)
        return False


async def _drop_connection(receive: Receive, send: Send) -> None:
    # Read the whole request first: closing a socket with unread input makes the
    # kernel answer RST, and the client error would then depend on timing.
    message = await _read_body(receive)
    # uvicorn's ``send`` is a bound method of the request cycle, which owns the
    # transport; closing it ends the connection without a byte of response.
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if isinstance(transport, asyncio.BaseTransport):
        transport.close()
        # Wait until the server has seen the close, or it would answer 500 for us.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(_until_disconnect(receive, message), timeout=5)
        return
    # Another server: promise a body and never send it; the client sees a truncated
    # response (a protocol error) rather than a status it might act on.
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"1")]}
    )


async def _read_body(receive: Receive) -> Message:
    message = await receive()
    while message["type"] == "http.request" and message.get("more_body", False):
        message = await receive()
    return message


async def _until_disconnect(receive: Receive, message: Message) -> None:
    while message["type"] != "http.disconnect":
        message = await receive()

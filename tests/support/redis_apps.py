"""Apps for the many-hosts tests: one ``page_view`` captured per request, both protocols.

Configured from ``PX_*`` variables (``PX_REDIS_URL``, ``PX_API_URL``, ...), so every
server in a test shares one Redis and one stand-in. ``GET /?id=<eventId>&s=<session>
&seq=<n>`` captures one event and answers ``<pid> <accepted>``.

Also a gunicorn config module (``-c python:tests.support.redis_apps``): ``worker_exit``
makes each worker deliver before it exits, as the README tells users to do.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from px_middleware.config import PXConfig
from px_middleware.delivery import get_delivery, gunicorn_worker_exit, shutdown_all

worker_exit = gunicorn_worker_exit

px_config = PXConfig.from_env()  # not "config": gunicorn reads that name


def _capture(query_string: str) -> bytes:
    query = {k: v[0] for k, v in parse_qs(query_string).items()}
    accepted = get_delivery(px_config).capture(
        "event",
        {
            "eventName": "page_view",
            "identifyId": "u-" + query.get("s", "s"),
            "userType": "USER",
            "propertyKey": px_config.product_key,
            "eventId": query["id"],
            "sessionId": query.get("s", "s"),
            "date": 1_700_000_000_000 + int(query.get("seq", "0")),
            "attributes": {"seq": int(query.get("seq", "0")), "pid": os.getpid()},
        },
    )
    return f"{os.getpid()} {accepted}".encode()


def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = _capture(environ.get("QUERY_STRING", ""))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


async def asgi(
    scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                get_delivery(px_config).start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                shutdown_all()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = _capture(scope.get("query_string", b"").decode("latin-1"))
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})

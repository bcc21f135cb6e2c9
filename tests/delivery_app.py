"""A tiny WSGI app for the gunicorn fork test: one captured event per request.

Also a gunicorn config module (``-c python:tests.delivery_app``): ``worker_exit``
below is the documented hook that makes each worker deliver before it exits. The
``Delivery`` is created at import, so with ``--preload`` it is built in the master and
inherited by every forked worker, the case the at-fork reset exists for.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

from px_middleware.config import PXConfig
from px_middleware.delivery import get_delivery, gunicorn_worker_exit

worker_exit = gunicorn_worker_exit

px_config = PXConfig.from_env()  # not "config": gunicorn reads that name
px_delivery = get_delivery(px_config)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """One event per request (``?id=&s=&seq=``), or ``?n=`` events with ids ``<id>-<k>``."""
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    count = int(query.get("n", "0"))
    ids = [query["id"]] if not count else [f"{query['id']}-{k}" for k in range(count)]
    accepted = all(
        px_delivery.capture(
            "event",
            {
                "eventName": "request",
                "identifyId": "u1",
                "propertyKey": px_config.product_key,
                "eventId": event_id,
                "sessionId": query.get("s", "s"),
                "date": 1_700_000_000_000,
                "attributes": {"seq": int(query.get("seq", "0")), "pid": os.getpid()},
            },
        )
        for event_id in ids
    )
    body = f"{os.getpid()} {accepted}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]

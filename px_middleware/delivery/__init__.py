"""Reliable delivery of server-side events and user/account upserts to Gainsight PX.

``capture()`` costs microseconds on the request path; background threads store, rate
limit, send and retry items (with ``PXConfig.outbox_path``, in SQLite until PX has
acknowledged them). Split as OpenTelemetry splits a BatchProcessor from its exporter:
``worker`` (queue, dispatcher, lanes, flush, shutdown, fork), ``exporter`` (bodies to
PX), ``outbox`` (the storage protocol: order per key, latest-wins upserts, dead
letter), ``retry`` (the one retry loop and the shared 429 pause), ``ratelimit``,
``notices`` (rate-limited warnings) and ``registry`` (the per-process instance).
"""

from px_middleware.delivery.outbox import (
    DeadItem,
    Entry,
    Item,
    MemoryOutbox,
    Outbox,
    SQLiteOutbox,
)
from px_middleware.delivery.ratelimit import RateLimiter, TokenBucket
from px_middleware.delivery.registry import (
    get_delivery,
    gunicorn_worker_exit,
    shutdown_all,
    tracker_for,
)
from px_middleware.delivery.worker import Delivery

__all__ = [
    "DeadItem",
    "Delivery",
    "Entry",
    "Item",
    "MemoryOutbox",
    "Outbox",
    "RateLimiter",
    "SQLiteOutbox",
    "TokenBucket",
    "get_delivery",
    "gunicorn_worker_exit",
    "shutdown_all",
    "tracker_for",
]

"""Reliable delivery of server-side events and user/account upserts to Gainsight PX.

``capture()`` costs microseconds on the request path; background threads batch, rate
limit, retry and (with ``PXConfig.outbox_path``) persist items in SQLite until PX has
acknowledged them. See ``sender`` for the pipeline, ``outbox`` for storage, ``retry``
and ``ratelimit`` for the policies, ``registry`` for the per-process instance.
"""

from px_middleware.delivery.outbox import Entry, Item, MemoryOutbox, Outbox, SQLiteOutbox
from px_middleware.delivery.ratelimit import RateLimiter, TokenBucket
from px_middleware.delivery.registry import (
    get_delivery,
    gunicorn_worker_exit,
    shutdown_all,
    tracker_for,
)
from px_middleware.delivery.sender import Delivery

__all__ = [
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

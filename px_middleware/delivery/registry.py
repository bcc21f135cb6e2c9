"""One :class:`Delivery` per process and configuration, shut down when the process ends.

``get_delivery(config)`` is what the middleware calls. Instances live in a module-level
registry; after ``fork()`` each one resets itself in the child (see ``Delivery``), so a
gunicorn ``--preload`` master can create them before forking workers.

Exit hooks: ``atexit`` (registered on first use) and, for gunicorn, whose workers should
drain before the arbiter's graceful timeout, a ``worker_exit`` hook::

    # gunicorn.conf.py
    from px_middleware.delivery import gunicorn_worker_exit as worker_exit
"""

from __future__ import annotations

import atexit
import os
import threading
import time
from typing import Any

from px_middleware.config import SHUTDOWN_TIMEOUT, PXConfig
from px_middleware.core.counters import Counters
from px_middleware.core.tracking import Tracker
from px_middleware.delivery.worker import Delivery

_registry: dict[tuple[str, str, str | None], Delivery] = {}
_lock = threading.Lock()
_atexit_registered = False

#: The settings a ``Delivery`` is built from besides its key (URL, API key, outbox).
SETTINGS = (
    "max_queue_events",
    "max_queue_bytes",
    "rate_limit",
    "daily_budget",
    "concurrency",
    "request_timeout",
    "batch_events",
    "max_attempts",
    "dead_letter_after",
    "redis_url",
)


def _key(config: PXConfig) -> tuple[str, str, str | None]:
    return (config.rest_url, config.api_key or "", config.outbox_path)


def _check_same(existing: PXConfig, config: PXConfig) -> None:
    """One API key and outbox get one sender (one rate limit, one order per key), so a
    second config that asks for different delivery settings is a mistake to report."""
    differ = [n for n in SETTINGS if getattr(existing, n) != getattr(config, n)]
    if differ:
        raise ValueError(
            "px_middleware: this process already delivers to "
            f"{config.rest_url} with the same API key and outbox but other settings "
            f"({', '.join(differ)}); give every PXConfig the same delivery settings"
        )


def get_delivery(config: PXConfig) -> Delivery:
    """The process's ``Delivery`` for this API URL, API key and outbox path.

    Raises ``ValueError`` when one exists with other delivery settings (``SETTINGS``).
    """
    key = _key(config)
    delivery = _registry.get(key)
    if delivery is not None and not delivery.closed:
        if delivery.config is not config:
            _check_same(delivery.config, config)
        return delivery
    global _atexit_registered
    with _lock:
        delivery = _registry.get(key)
        if delivery is None or delivery.closed:
            delivery = _registry[key] = Delivery(config)
        else:
            _check_same(delivery.config, config)
        if not _atexit_registered:
            atexit.register(shutdown_all, SHUTDOWN_TIMEOUT)
            _atexit_registered = True
    return delivery


def tracker_for(config: PXConfig, counters: Counters) -> Tracker | None:
    """What both adapters track with, or None when the app did not ask for tracking.

    The session cookie is set only when events are on (``api_key``) or the app set
    ``cookie_secret`` on purpose (for ``aptrinsic('reset')`` after logout alone):
    a new cookie is a privacy decision that is the app's to make.
    """
    if not (config.events_enabled or config.cookie_secret):
        return None
    capture = get_delivery(config).capture if config.events_enabled else None
    return Tracker(config, counters, capture)


def shutdown_all(timeout: float = SHUTDOWN_TIMEOUT) -> None:
    """Shut every registered ``Delivery`` down, all within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    for delivery in list(_registry.values()):
        delivery.shutdown(max(deadline - time.monotonic(), 0.0))


def gunicorn_worker_exit(server: Any, worker: Any) -> None:
    """gunicorn ``worker_exit`` hook: deliver what the worker captured before it exits."""
    shutdown_all(SHUTDOWN_TIMEOUT)


def _reset_lock() -> None:
    global _lock
    _lock = threading.Lock()  # a thread of the parent may have held it during fork()


os.register_at_fork(after_in_child=_reset_lock)

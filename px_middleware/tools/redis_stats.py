"""The Redis side of ``python -m px_middleware outbox``: the streams and the budget."""

from __future__ import annotations

import os

from px_middleware.delivery.redis_budget import RedisBudget, key_prefix
from px_middleware.delivery.redis_connect import connect
from px_middleware.delivery.redis_outbox import RedisOutbox


def open_redis(url: str, api_key: str) -> tuple[RedisOutbox, dict[str, object]]:
    """A handle on the subscription's streams (it takes no lease, so it never sends)
    and the shared budget's state (``PX_RATE_LIMIT`` and ``PX_DAILY_BUDGET`` only label
    what it reports: the counts are Redis's)."""
    client = connect(url)
    prefix = key_prefix(api_key)
    rate = float(os.environ.get("PX_RATE_LIMIT") or 150.0)
    daily = int(os.environ.get("PX_DAILY_BUDGET") or 0) or None
    budget = RedisBudget(client, prefix, rate=rate, daily_budget=daily).stats()
    return RedisOutbox(client, prefix), budget

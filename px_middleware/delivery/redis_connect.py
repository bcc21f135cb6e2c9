"""The Redis client every Redis part of delivery uses, tuned to fail fast.

redis-py retries a failed command three times with up to 10 s of backoff by default.
For a sender that has a local fallback that is the wrong trade: a dead Redis must cost
one short timeout, after which the caller falls back and tries again later itself.
"""

from __future__ import annotations

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # a clear start-up error, not a bare module name
    raise ImportError(
        "PXConfig.redis_url (PX_REDIS_URL) needs redis-py: pip install 'px_middleware[redis]'"
    ) from exc

#: Seconds a command (or a connection attempt) may take before the caller falls back.
SOCKET_TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0


def connect(url: str) -> redis.Redis:
    """A client for ``url`` (redis://, rediss://, unix://): one retry, no backoff.

    The single retry covers a pooled connection that the server closed (a Redis
    restart); a second failure is reported to the caller at once.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
    )

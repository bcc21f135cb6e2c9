"""Fixtures shared by the whole suite: the local PX stand-in (``devserver``) and a real
Redis (``redis_server``, ``redis_url``)."""

from collections.abc import Iterator

import pytest

from px_middleware.core.notices import REQUEST_NOTICES

pytest_plugins = ["tests.support.devserver", "tests.support.redis_server"]


@pytest.fixture(autouse=True)
def _quiet_request_notices() -> Iterator[None]:
    """Request-time warnings are rate-limited per process: each test starts afresh, so
    the first bad attribute of a test is logged whatever earlier tests did."""
    REQUEST_NOTICES.clear()
    yield

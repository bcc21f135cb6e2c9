"""Fixtures shared by the whole suite: the local PX stand-in (``devserver``) and a real
Redis (``redis_server``, ``redis_url``)."""

pytest_plugins = ["tests.support.devserver", "tests.support.redis_server"]

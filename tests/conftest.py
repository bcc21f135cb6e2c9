"""Fixtures shared by the whole suite: the local PX stand-in (``devserver``)."""

pytest_plugins = ["tests.support.devserver"]

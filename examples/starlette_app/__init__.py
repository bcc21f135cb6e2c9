"""Starlette example app: ``uvicorn examples.starlette_app:app``."""

from examples.starlette_app.app import app, bare_app, create_app

__all__ = ["app", "bare_app", "create_app"]

"""FastAPI example app: ``uvicorn examples.fastapi_app:app``."""

from examples.fastapi_app.app import app, bare_app, create_app

__all__ = ["app", "bare_app", "create_app"]

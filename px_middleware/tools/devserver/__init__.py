"""A local stand-in for Gainsight PX, for tests and demos: ``python -m px_middleware devserver``.

It speaks PX's REST API (users, accounts, custom events) with PX's statuses and error
bodies, enforces the API key and a rate limit, serves a stand-in web SDK that records
``aptrinsic(...)`` calls and verifies the identify ``userHash``, stores everything in
SQLite, and shows it on a dashboard. ``/_control`` lets tests inject faults and read
what arrived.
"""

from px_middleware.tools.devserver.app import create_app
from px_middleware.tools.devserver.cli import main

__all__ = ["create_app", "main"]

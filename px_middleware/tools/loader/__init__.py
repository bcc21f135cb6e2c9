"""Bulk loader: ``python -m px_middleware load {users|accounts|events} FILE``.

Modules, one job each: ``values`` (strict cell parsing), ``fields`` (PX field tables),
``mapping`` (column → field plan, rows → bodies), ``reader`` (streaming CSV/JSONL),
``sender`` (one unit to PX with the delivery rate limiter and retry policy),
``runner`` (the concurrent load), ``state`` (``--resume``), ``errorfile``,
``progress`` and ``cli``.
"""

from __future__ import annotations

from px_middleware.tools.loader.cli import main

__all__ = ["main"]

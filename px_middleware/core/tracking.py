"""What server-side tracking shares across the requests of one middleware.

``Tracker`` holds no per-request state and makes no per-request decision: those are
the ``Exchange``'s. It carries the cookie signer, the bot pattern, the clock and
``capture``, the driver's hand-off to delivery (which only appends to a bounded
buffer; sending is somebody else's job).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from px_middleware.config import PXConfig
from px_middleware.core.counters import Counters
from px_middleware.core.session import VISITOR_MAX_AGE, SessionCookie

#: ``capture(kind, body)``: kind is ``"event"``, ``"user"`` or ``"account"``; False
#: means the item was not accepted (a full buffer) and is counted as dropped.
Capture = Callable[[str, dict[str, Any]], bool]


class Tracker:
    """Sessions in a signed cookie, page-view/session events and upserts: shared parts."""

    def __init__(
        self,
        config: PXConfig,
        counters: Counters,
        capture: Capture | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        secret = config.session_signing_secret
        if secret is None:
            raise ValueError("server-side sessions need cookie_secret, hmac_secret or api_key")
        self.config = config
        self.counters = counters
        self.capture = capture if config.events_enabled else None
        self.clock = clock
        self.cookie = SessionCookie(secret)
        self.bots = re.compile(config.bot_pattern, re.IGNORECASE)
        self.cookie_attributes = f"Path=/; Max-Age={VISITOR_MAX_AGE}; HttpOnly; SameSite=Lax"

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
        self._bots = re.compile(config.bot_pattern, re.IGNORECASE)
        #: User agent -> is a bot; browsers send few distinct ones, so it stays small.
        self._agents: dict[str, bool] = {}
        self.cookie_attributes = f"Path=/; Max-Age={VISITOR_MAX_AGE}; HttpOnly; SameSite=Lax"

    def is_bot(self, user_agent: str) -> bool:
        known = self._agents.get(user_agent)
        if known is None:
            known = self._bots.search(user_agent) is not None
            if len(self._agents) >= 1024:
                self._agents.clear()  # bounded; refilled by the next requests
            self._agents[user_agent] = known
        return known

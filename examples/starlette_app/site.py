"""What the Starlette and FastAPI examples share: settings, templates, the streamed page."""

from __future__ import annotations

import asyncio
import html
import os
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.templating import Jinja2Templates

from px_middleware import PXConfig

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
PRICE_LIST = HERE / "files" / "price-list.csv"
templates = Jinja2Templates(directory=HERE / "templates")

#: Used when PX_PRODUCT_KEY is not set, so the demo runs with no configuration.
DEMO_PRODUCT_KEY = "AP-DEMO00000000-2"
SESSION_SECRET = os.environ.get("SESSION_SECRET", "demo-session-secret-change-me")

ACTIVITY = [
    ("Alice invited Carol to Acme Corporation", "2 minutes ago"),
    ("Bob exported the Q3 usage report", "14 minutes ago"),
    ("Acme Corporation upgraded to 50 seats", "1 hour ago"),
    ("Globex renewed its Growth plan", "yesterday"),
    ("Alice created the dashboard “Weekly adoption”", "2 days ago"),
]
#: Pause between streamed rows, so a browser visibly receives them one by one.
ACTIVITY_DELAY = 0.15


def px_config() -> PXConfig:
    """PX_PRODUCT_KEY, PX_HMAC_SECRET, PX_DATA_CENTER, PX_LOCAL_URL, PX_API_KEY, ..."""
    return PXConfig.from_env({"PX_PRODUCT_KEY": DEMO_PRODUCT_KEY, **os.environ})


async def activity_stream(page: str, delay: float = ACTIVITY_DELAY) -> AsyncIterator[str]:
    """The rendered page in pieces: head and heading first, then one row at a time."""
    top, bottom = page.split("<!--rows-->", 1)
    yield top
    for what, when in ACTIVITY:
        await asyncio.sleep(delay)
        yield f"  <li><span>{html.escape(what)}</span><time>{when}</time></li>\n"
    yield bottom

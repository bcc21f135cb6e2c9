"""``make demo``'s readiness probe is not a visitor, for the Flask and the Django demo.

The probe is ``examples.demo.wait_until_up`` itself, against the demo's app command
(gunicorn) wired to the test's stand-in. A visit from a browser is the control: it
must show up as a session, and it must be the only one. The app is stopped before we
count, so everything it captured has been delivered (the exit flushes).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from examples import demo
from tests.support.devserver import DevServer
from tests.support.servers import gunicorn

BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/156.0 Safari/537.36",
           "Accept": "text/html"}
APPS = {"flask": ("examples.flask_app:app",), "django": ("examples.django_app.wsgi", "--preload")}


@pytest.mark.parametrize("app", sorted(APPS))
def test_the_readiness_probe_is_not_a_visitor(
    app: str, devserver: DevServer, tmp_path: Path
) -> None:
    spec, *args = APPS[app]
    env = {**demo.SETTINGS, "PX_LOCAL_URL": devserver.base_url,
           "PX_HMAC_SECRET": devserver.hmac_secret, "PX_API_KEY": devserver.api_key,
           "FLASK_APP_DB": str(tmp_path / "flask.sqlite3"),
           "DJANGO_APP_DB": str(tmp_path / "django.sqlite3")}
    with gunicorn(spec, *args, env=env) as server:
        demo.wait_until_up(server.url + "/", server.process, time.monotonic() + 30)
        visit = httpx.get(server.url + "/", headers=BROWSER, timeout=30)
        assert visit.status_code == 200 and "px_session" in visit.cookies
    starts = devserver.wait_for(lambda: devserver.events(eventName="session_start"))
    views = devserver.events(eventName="page_view")
    assert len(starts) == 1 and [v["sessionId"] for v in views] == [starts[0]["sessionId"]]
    assert views[0]["attributes"]["userAgent"] == BROWSER["User-Agent"]

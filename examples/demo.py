"""``make demo``: the local PX stand-in plus an example app wired to it.

    python -m examples.demo               # Flask example under gunicorn
    python -m examples.demo starlette     # Starlette example under uvicorn
    python -m examples.demo fastapi       # FastAPI example under uvicorn
    python -m examples.demo django        # Django example under gunicorn

Nothing leaves the machine: the app's pages load the stand-in SDK from the local
devserver, and server-side events and upserts go to its REST API. Ctrl-C stops both.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PX_PORT = int(os.environ.get("DEMO_PX_PORT", "8787"))
APP_PORT = int(os.environ.get("DEMO_APP_PORT", "5000"))
STATE = Path(os.environ.get("DEMO_DIR", ".demo"))

SETTINGS = {
    "PX_PRODUCT_KEY": "AP-DEMO00000000-2",
    "PX_DATA_CENTER": "local",
    "PX_LOCAL_URL": f"http://127.0.0.1:{PX_PORT}",
    "PX_HMAC_SECRET": "dev-hmac-secret",
    "PX_API_KEY": "dev-api-key",
}

APPS = {
    "flask": [
        "-m", "gunicorn", "--bind", f"127.0.0.1:{APP_PORT}", "--workers", "2",
        "--access-logfile", "-", "examples.flask_app:app",
    ],
    "starlette": [
        "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(APP_PORT),
        "examples.starlette_app:app",
    ],
    "fastapi": [
        "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(APP_PORT),
        "examples.fastapi_app:app",
    ],
    # --preload: the master creates the SQLite database once, before forking workers.
    "django": [
        "-m", "gunicorn", "--bind", f"127.0.0.1:{APP_PORT}", "--workers", "2", "--preload",
        "--access-logfile", "-", "examples.django_app.wsgi",
    ],
}
#: The readiness probe says it is a bot (the default bot_pattern matches "bot"), so the
#: middleware neither tracks it nor sets a cookie: it is not a visitor on the dashboard.
PROBE_USER_AGENT = "px-demo-readiness-bot"


def wait_until_up(url: str, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited with {process.returncode}")
        try:
            probe = urllib.request.Request(url, headers={"User-Agent": PROBE_USER_AGENT})
            with urllib.request.urlopen(probe, timeout=1):
                return
        except OSError:
            time.sleep(0.1)  # polling a server that is starting, not synchronising a test
    raise SystemExit(f"{url} did not come up in time")


def main(argv: list[str]) -> int:
    which = argv[0] if argv else "flask"
    if which not in APPS:
        print(f"usage: python -m examples.demo [{'|'.join(APPS)}]", file=sys.stderr)
        return 2
    STATE.mkdir(exist_ok=True)
    # A SIGTERM (timeout, a process manager) must stop both servers too, not orphan them.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    env = {**os.environ, **SETTINGS, "PX_OUTBOX_PATH": str(STATE / "outbox.sqlite3"),
           "FLASK_APP_DB": str(STATE / "flask_app.sqlite3"),
           "DJANGO_APP_DB": str(STATE / "django_app.sqlite3")}
    px = subprocess.Popen(
        [sys.executable, "-m", "px_middleware", "devserver", "--port", str(PX_PORT),
         "--db", str(STATE / "px-devserver.sqlite3"), "--api-key", SETTINGS["PX_API_KEY"],
         "--hmac-secret", SETTINGS["PX_HMAC_SECRET"],
         # The examples' custom attributes, as PX's Administration > Attributes has them.
         "--attribute", "ACCOUNT:seats=NUMBER", "--attribute", "ACCOUNT:contractEnd=DATE_TIME"],
        env=env,
    )
    app = None
    try:
        wait_until_up(f"http://127.0.0.1:{PX_PORT}/healthz", px, time.monotonic() + 30)
        app = subprocess.Popen([sys.executable, *APPS[which]], env=env)
        wait_until_up(f"http://127.0.0.1:{APP_PORT}/", app, time.monotonic() + 30)
        print(
            f"\n  Example app ({which}):  http://127.0.0.1:{APP_PORT}/"
            f"\n  PX stand-in dashboard: http://127.0.0.1:{PX_PORT}/"
            "\n  Log in as alice@acme.test / alice  (or bob@globex.test / bob)"
            "\n  Ctrl-C stops both.\n",
            flush=True,
        )
        while px.poll() is None and app.poll() is None:
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for process in (app, px):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (app, px):
            if process is not None:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Flask's own tutorial app (flaskr, from Flask's sdist) with ``PX(app)`` and nothing else.

Its pages are HTML5 without ``<head>`` or ``<body>`` (``<!doctype html><title>…``
``<link …><nav>``), and it keeps the user id in Flask's session as ``user_id``. The
sdist is fetched by ``make`` (``pip download`` into .venv/sdists), never at test time.
Checked: the loader on anonymous pages (in the head html5lib builds), identify with the
right ``userHash`` after register and login through flaskr's own forms, and flaskr's
own test suite passing with PX added.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.metadata
import json
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import html5lib
import pytest

SDISTS = Path(__file__).resolve().parent.parent / ".venv" / "sdists"
SECRET = "flaskr-hmac-secret"
# The app factory with PX added: the one line an app adds, and a stand-in config.
WRAPPER = f'''
from flaskr import create_app as _create_app
from px_middleware import PXConfig
from px_middleware.flask import PX

CONFIG = PXConfig("AP-FLASKRTUTOR1-2", hmac_secret={SECRET!r})
EXTENSIONS = []


def create_app(test_config=None):
    app = _create_app(test_config)
    EXTENSIONS.append((app, PX(app, config=CONFIG)))
    return app
'''
# For flaskr's own suite: its conftest imports flaskr.create_app, so swap in the wrapper,
# and report how many pages PX injected so the run proves PX was really there.
CONFTEST = '''
import json, os
import flaskr
import px_flaskr

flaskr.create_app = px_flaskr.create_app


def pytest_sessionfinish(session, exitstatus):
    injected = sum(px.middleware(app).counters.snapshot().get("injected", 0)
                   for app, px in px_flaskr.EXTENSIONS)
    with open(os.environ["PX_REPORT"], "w") as report:
        json.dump({"apps": len(px_flaskr.EXTENSIONS), "injected": injected}, report)
'''


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    version = importlib.metadata.version("flask")
    sdist = SDISTS / f"flask-{version}.tar.gz"
    if not sdist.exists():
        message = f"{sdist} is missing: run make (it downloads Flask's sdist)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    root = tmp_path_factory.mktemp("flaskr")
    prefix = f"flask-{version}/examples/tutorial/"
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix)]
        for member in members:
            member.name = member.name[len(prefix):]
        if hasattr(tarfile, "data_filter"):  # Python 3.10.12+: refuse odd members
            archive.extractall(root, members=members, filter="data")
        else:
            archive.extractall(root, members=members)
    (root / "px_flaskr.py").write_text(WRAPPER)
    return root


@pytest.fixture
def flaskr_app(tutorial: Path, tmp_path: Path) -> Iterator[Any]:
    sys.path.insert(0, str(tutorial))
    try:
        import px_flaskr  # type: ignore[import-not-found]
        from flaskr.db import init_db  # type: ignore[import-not-found]

        app = px_flaskr.create_app({"TESTING": True, "DATABASE": str(tmp_path / "db.sqlite")})
        with app.app_context():
            init_db()
        yield app
    finally:
        sys.path.remove(str(tutorial))
        for name in [m for m in sys.modules if m == "px_flaskr" or m.startswith("flaskr")]:
            del sys.modules[name]


def head_scripts(html: bytes) -> list[ET.Element]:
    root = html5lib.parse(html, treebuilder="etree", namespaceHTMLElements=False)
    head = root.find("head")
    assert head is not None
    return [s for s in head.iter("script") if s.get("data-px-middleware") == "1"]


def identify_args(script: ET.Element) -> list[Any] | None:
    text = script.text or ""
    start = text.find('aptrinsic("identify",')
    if start < 0:
        return None
    user, _ = json.JSONDecoder().raw_decode(text, start + len('aptrinsic("identify",'))
    return [user]


def test_anonymous_pages_get_the_loader_in_the_implied_head(flaskr_app: Any) -> None:
    client = flaskr_app.test_client()
    for path in ("/", "/auth/login", "/auth/register"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.data.startswith(b"<!doctype html>\n<script data-px-middleware")
        scripts = head_scripts(response.data)
        assert len(scripts) == 1 and identify_args(scripts[0]) is None


def test_register_and_login_through_its_forms_then_identify_with_the_user_hash(
    flaskr_app: Any,
) -> None:
    client = flaskr_app.test_client()
    register = client.post("/auth/register", data={"username": "ada", "password": "pw"})
    assert register.status_code == 302 and register.headers["Location"] == "/auth/login"
    login = client.post("/auth/login", data={"username": "ada", "password": "pw"})
    assert login.status_code == 302 and login.headers["Location"] == "/"
    page = client.get("/")
    assert b"Log Out" in page.data
    scripts = head_scripts(page.data)
    assert len(scripts) == 1
    args = identify_args(scripts[0])
    assert args is not None
    user = args[0]
    with flaskr_app.app_context():
        from flaskr.db import get_db

        user_id = get_db().execute("SELECT id FROM user WHERE username = 'ada'").fetchone()[0]
    expected = hmac.new(SECRET.encode(), str(user_id).encode(), hashlib.sha256).hexdigest()
    assert user == {"id": str(user_id), "userHash": expected}
    assert page.headers["Cache-Control"].startswith("private")


def test_flaskrs_own_suite_passes_with_px_added(tutorial: Path, tmp_path: Path) -> None:
    (tutorial / "conftest.py").write_text(CONFTEST)
    report = tmp_path / "report.json"
    env = {**os.environ, "PYTHONPATH": str(tutorial), "PX_REPORT": str(report)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=tutorial, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout and "failed" not in done.stdout
    counts = json.loads(report.read_text())
    assert counts["apps"] > 10 and counts["injected"] > 5, counts

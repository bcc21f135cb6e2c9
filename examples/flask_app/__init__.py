"""A small Flask SaaS app with Gainsight PX wired in by ``PX(app)``.

    flask --app examples.flask_app run
    gunicorn examples.flask_app:app

Seed users (password = first name): alice@acme.test / alice, carol@acme.test / carol
(both in the Acme Corporation account), bob@globex.test / bob (Globex).

Settings come from the environment: ``PX_PRODUCT_KEY`` (default a demo key),
``PX_HMAC_SECRET``, ``PX_DATA_CENTER`` (``local`` for the stand-in),
``PX_LOCAL_URL``, ``PX_API_KEY`` and any other ``PX_*`` key; ``FLASK_APP_DB`` for the
SQLite file, ``FLASK_SECRET_KEY`` for the session.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask
from flask_login import LoginManager

from examples.flask_app import db
from examples.flask_app.px_setup import px
from examples.flask_app.views import bp

DEMO_PRODUCT_KEY = "AP-DEMO00000000-2"

login_manager = LoginManager()
login_manager.login_view = "main.login"
login_manager.login_message_category = "info"


@login_manager.user_loader  # type: ignore[untyped-decorator]
def load_user(user_id: str) -> db.AppUser | None:
    return db.user_by_id(user_id)


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(
        SECRET_KEY=os.environ.get("FLASK_SECRET_KEY", "dev-only-not-a-secret"),
        DATABASE=os.environ.get("FLASK_APP_DB")
        or os.path.join(app.instance_path, "flask_app.sqlite3"),
    )
    # Other PX_* settings (secrets above all) come from the environment: PX(app) reads
    # what app.config lacks from there, and debug panels never show it.
    app.config.setdefault("PX_PRODUCT_KEY", os.environ.get("PX_PRODUCT_KEY", DEMO_PRODUCT_KEY))
    if test_config:
        app.config.update(test_config)
    app.teardown_appcontext(db.close_db)
    login_manager.init_app(app)
    app.register_blueprint(bp)
    px.init_app(app)
    return app


app = create_app()

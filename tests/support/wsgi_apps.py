"""The Flask app the server tests serve twice: ``bare`` and ``wrapped`` (``PX(app)``).

Both are built by the same factory, so any byte that differs between them on a
response we must not touch is the middleware's doing.

``/stream?gate=NAME`` sends its first chunk, then blocks on the FIFO
``$WSGI_TEST_GATE_DIR/NAME`` until the test writes to it: the test proves the first
chunk arrived while the app was still running, with no sleeps.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path

from flask import Flask, Response, abort, make_response, redirect, request, send_file, session
from werkzeug.wrappers import Response as BaseResponse

from px_middleware import Account, Identity, User
from px_middleware.flask import PX

SECRET_KEY = "wsgi-test-secret-key"
HMAC_SECRET = "test-hmac-secret"
PRODUCT_KEY = "AP-WSGITEST0001-2"
GATE_DIR_ENV = "WSGI_TEST_GATE_DIR"

USERS = {
    "u-1": ("ada@example.test", "Ada", "acme"),
    "u-2": ("bob@example.test", "Bob", "globex"),
}
ACCOUNTS = {"acme": ("Acme Corp", 50), "globex": ("Globex", 12)}

PAGE = (
    "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Page</title></head>\n"
    "<body><h1>Hello, caf\u00e9 \u2603</h1><p>{}</p></body></html>\n"
)
STREAM_FIRST = b"<!doctype html><html><head><title>Stream</title></head><body><p>first</p>\n"
STREAM_REST = [b"<p>second</p>\n", b"<p>third</p></body></html>\n"]
#: /slowhead bodies: (first chunk, the chunks after the gate).
SLOW = {
    "page": (b"<!doctype html><html><head><title>Slow</title>",
             [b"<link rel=icon href=/x.ico></head><body><p>late</p>", b"</body></html>\n"]),
    "fragment": (b"\n  ", [b"<li>a row</li>\n", b"<li>another</li>\n"]),
}
STATIC_HTML = Path(__file__).with_name("static_page.html")


def identify() -> Identity | None:
    user_id = session.get("user_id")
    if user_id not in USERS:
        return None
    email, name, account_id = USERS[user_id]
    account_name, seats = ACCOUNTS[account_id]
    return Identity(
        User(user_id, email=email, first_name=name),
        Account(account_id, name=account_name, custom={"seats": seats}),
    )


def create_app(*, with_px: bool) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET_KEY, PX_PRODUCT_KEY=PRODUCT_KEY,
                      PX_HMAC_SECRET=HMAC_SECRET)

    @app.get("/page")
    def page() -> str:
        return PAGE.format("x" * int(request.args.get("size", "10")))

    @app.get("/stream")
    def stream() -> Response:
        gate = Path(os.environ[GATE_DIR_ENV]) / request.args["gate"]

        def body() -> Iterator[bytes]:
            yield STREAM_FIRST
            with gate.open("rb", buffering=0) as fifo:
                fifo.read(1)  # blocks until the test writes its byte
            yield from STREAM_REST

        return Response(body(), mimetype="text/html")

    @app.get("/slowhead")
    def slow_head() -> Response:
        """A page (or fragment) whose first chunk does not decide where the snippet goes:
        it writes ``NAME.reached`` and blocks on the gate before the rest."""
        gate = Path(os.environ[GATE_DIR_ENV]) / request.args["gate"]
        first, rest = SLOW[request.args["kind"]]

        def body() -> Iterator[bytes]:
            yield first
            gate.with_name(gate.name + ".reached").touch()
            with gate.open("rb", buffering=0) as fifo:
                fifo.read(1)  # blocks until the test writes its byte
            yield from rest

        return Response(body(), mimetype="text/html", headers={"ETag": '"v1"'})

    @app.get("/api")
    def api() -> dict[str, object]:
        return {"user": session.get("user_id"), "items": [1, 2, 3], "html": "<head></head>"}

    @app.get("/redirect")
    def go() -> BaseResponse:
        return redirect("/page")

    @app.get("/etag")
    def etag() -> BaseResponse:
        response = make_response(PAGE.format("etag"))
        response.set_etag("v1")
        return response.make_conditional(request)

    @app.get("/gzip")
    def gzipped() -> Response:
        body = gzip.compress(PAGE.format("gzip").encode(), mtime=0)
        return Response(body, mimetype="text/html", headers={"Content-Encoding": "gzip"})

    @app.get("/attachment")
    def attachment() -> Response:
        return Response(PAGE.format("download"), mimetype="text/html",
                        headers={"Content-Disposition": 'attachment; filename="page.html"'})

    @app.get("/events")
    def events() -> Response:
        def body() -> Iterator[bytes]:
            for n in range(3):
                yield f"id: {n}\ndata: <head>{n}</head>\n\n".encode()

        return Response(body(), mimetype="text/event-stream")

    @app.get("/file")
    def file() -> BaseResponse:
        # send_file hands the server a wsgi.file_wrapper (sendfile under gunicorn).
        return send_file(STATIC_HTML, mimetype="text/html", etag=False, last_modified=None,
                         max_age=0)

    @app.post("/echo")
    def echo() -> Response:
        return Response(PAGE.format(request.get_data(as_text=True)), mimetype="text/html")

    @app.get("/missing")
    def missing() -> BaseResponse:
        abort(404)

    if with_px:
        PX(app, identify=identify)
    return app


bare = create_app(with_px=False)
wrapped = create_app(with_px=True)

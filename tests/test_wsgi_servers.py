"""``PX(app)`` under real servers: gunicorn (sync worker), waitress and wsgiref.

The same Flask app (``tests/support/wsgi_apps.py``) is served bare on one port and
wrapped on another. Responses that must not be touched are compared as raw bytes off
the socket (only the ``Date`` line, the server's clock, is blanked); pages that get
the snippet are checked for exactly one loader, the right ``identify`` arguments and
a ``userHash`` computed here with ``hmac``, and a ``Content-Length`` that matches.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.sessions import SecureCookieSessionInterface

from tests.support import servers, wsgi_apps
from tests.support.servers import HOST, RawResponse, Server, raw_request

SNIPPET = re.compile(rb'<script data-px-middleware="1"[^>]*>.*?</script>', re.DOTALL)
IDENTIFY = re.compile(rb'aptrinsic\("identify",(\{[^{}]*\}),(\{[^{}]*\})\);')

Starter = Callable[..., contextlib.AbstractContextManager[Server]]
SERVERS: dict[str, Starter] = {
    "gunicorn": servers.gunicorn,
    "waitress": servers.waitress,
    "wsgiref": servers.wsgiref,
}


@pytest.fixture(scope="module")
def gate_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gates")


@pytest.fixture(scope="module", params=sorted(SERVERS))
def pair(request: pytest.FixtureRequest, gate_dir: Path) -> Iterator[tuple[Server, Server]]:
    """(bare, wrapped): the same app on two ports of the same kind of server."""
    start = SERVERS[request.param]
    env = {wsgi_apps.GATE_DIR_ENV: str(gate_dir)}
    with start("tests.support.wsgi_apps:bare", env=env) as bare, \
            start("tests.support.wsgi_apps:wrapped", env=env) as wrapped:
        yield bare, wrapped


def session_cookie(user_id: str) -> str:
    """A session cookie as the app itself would sign it after a login."""
    interface = wsgi_apps.bare.session_interface
    assert isinstance(interface, SecureCookieSessionInterface)
    serializer = interface.get_signing_serializer(wsgi_apps.bare)
    assert serializer is not None
    return f"session={serializer.dumps({'user_id': user_id})}"


ALICE = {"Cookie": session_cookie("u-1")}


def both(pair: tuple[Server, Server], path: str, **kwargs: Any) -> tuple[RawResponse, RawResponse]:
    bare, wrapped = pair
    return raw_request(bare.port, path, **kwargs), raw_request(wrapped.port, path, **kwargs)


def assert_length_right(response: RawResponse) -> None:
    length = response.header("content-length")
    if length is not None:
        assert int(length) == len(response.body), response.raw[:300]


def without_snippet(body: bytes) -> bytes:
    return SNIPPET.sub(b"", body, count=1)


def identify_args(body: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    (match,) = IDENTIFY.finditer(body)
    return json.loads(match.group(1)), json.loads(match.group(2))


# -- pages that get the snippet --------------------------------------------------------
def test_identified_page_has_one_loader_and_a_verified_identify(
    pair: tuple[Server, Server],
) -> None:
    bare, wrapped = both(pair, "/page", headers=ALICE)
    assert wrapped.status == bare.status == 200
    assert len(SNIPPET.findall(wrapped.body)) == 1
    assert wrapped.body.count(b"aptrinsic.js") == 1
    user, account = identify_args(wrapped.body)
    expected_hash = hmac.new(wsgi_apps.HMAC_SECRET.encode(), b"u-1", hashlib.sha256).hexdigest()
    assert user == {"id": "u-1", "email": "ada@example.test", "firstName": "Ada",
                    "userHash": expected_hash}
    assert account == {"id": "acme", "name": "Acme Corp", "seats": 50}
    assert wsgi_apps.HMAC_SECRET.encode() not in wrapped.raw
    # The snippet is the only change to the body; the head changed only where it must.
    assert without_snippet(wrapped.body) == bare.body
    assert_length_right(wrapped)
    assert int(wrapped.header("content-length") or 0) > int(bare.header("content-length") or 0)
    assert wrapped.header("cache-control") == "private"
    changed = {"content-length", "cache-control", "date"}
    assert [h for h in wrapped.headers if h[0].lower() not in changed] == [
        h for h in bare.headers if h[0].lower() not in changed
    ]


def test_other_user_gets_their_own_identify(pair: tuple[Server, Server]) -> None:
    _, wrapped = pair
    response = raw_request(wrapped.port, "/page", headers={"Cookie": session_cookie("u-2")})
    user, account = identify_args(response.body)
    assert (user["id"], user["email"], account["id"]) == ("u-2", "bob@example.test", "globex")
    assert user["userHash"] == hmac.new(b"test-hmac-secret", b"u-2", "sha256").hexdigest()


def test_anonymous_page_gets_the_loader_only(pair: tuple[Server, Server]) -> None:
    bare, wrapped = both(pair, "/page")
    assert len(SNIPPET.findall(wrapped.body)) == 1
    assert b"identify" not in wrapped.body
    assert without_snippet(wrapped.body) == bare.body
    assert wrapped.header("cache-control") is None  # nothing per-user on the page
    assert_length_right(wrapped)


def test_large_page_keeps_content_length_right(pair: tuple[Server, Server]) -> None:
    bare, wrapped = both(pair, "/page?size=200000", headers=ALICE)
    assert without_snippet(wrapped.body) == bare.body
    assert len(SNIPPET.findall(wrapped.body)) == 1
    assert_length_right(wrapped)


def test_strong_etag_is_weakened_and_still_revalidates(pair: tuple[Server, Server]) -> None:
    bare, wrapped = both(pair, "/etag", headers=ALICE)
    assert bare.header("etag") == '"v1"'
    assert wrapped.header("etag") == 'W/"v1"'  # the body is no longer the app's, byte for byte
    _, revalidated = both(pair, "/etag", headers={**ALICE, "If-None-Match": 'W/"v1"'})
    assert revalidated.status == 304


# -- responses that must come back byte for byte -----------------------------------------
PASS_THROUGH = [
    ("GET", "/api", {}),
    ("GET", "/api", ALICE),
    ("GET", "/redirect", ALICE),
    ("GET", "/etag", {**ALICE, "If-None-Match": '"v1"'}),
    ("HEAD", "/page", ALICE),
    ("GET", "/gzip", ALICE),
    ("GET", "/attachment", ALICE),
    ("GET", "/events", ALICE),
    ("GET", "/file", ALICE),
    ("GET", "/missing", ALICE),
    ("POST", "/echo", ALICE),
    ("GET", "/page", {**ALICE, "X-Requested-With": "XMLHttpRequest"}),
]


def test_request_body_reaches_the_app(pair: tuple[Server, Server]) -> None:
    body = b"name=ada&note=" + b"z" * 5000
    bare, wrapped = both(pair, "/echo", method="POST", headers=ALICE, body=body)
    assert body.decode() in wrapped.body.decode()
    assert wrapped.normalized() == bare.normalized()


@pytest.mark.parametrize(("method", "path", "headers"), PASS_THROUGH,
                         ids=[f"{m} {p} {'user' if h else 'anon'}" for m, p, h in PASS_THROUGH])
def test_untouched_responses_are_byte_identical(
    pair: tuple[Server, Server], method: str, path: str, headers: dict[str, str]
) -> None:
    bare, wrapped = both(pair, path, method=method, headers=headers)
    assert wrapped.normalized() == bare.normalized()
    assert b"data-px-middleware" not in wrapped.raw
    if method != "HEAD":
        assert_length_right(wrapped)


def test_pass_through_statuses_are_what_the_app_sent(pair: tuple[Server, Server]) -> None:
    # Guards the byte comparison above against two identical failures.
    statuses = {path: raw_request(pair[1].port, path, headers=h).status
                for path, h in [("/redirect", {}), ("/missing", {}), ("/api", {}),
                                ("/etag", {"If-None-Match": '"v1"'})]}
    assert statuses == {"/redirect": 302, "/missing": 404, "/api": 200, "/etag": 304}


# -- streaming ---------------------------------------------------------------------------
class Gate:
    """A FIFO the app blocks on until the test releases it; use as a context manager.

    The test holds the FIFO open read-write (Linux: never blocks), so ``release``
    needs no reader yet and a failing test can never hang on it; the byte waits in
    the pipe until the app reads it.
    """

    def __init__(self, directory: Path, name: str) -> None:
        self.name = name
        os.mkfifo(directory / name)
        self._fd = os.open(directory / name, os.O_RDWR | os.O_NONBLOCK)
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            os.write(self._fd, b"!")

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
        os.close(self._fd)


def read_until(sock: socket.socket, marker: bytes, received: bytearray) -> None:
    while marker not in received:
        data = sock.recv(65536)
        assert data, f"connection closed before {marker!r}: {bytes(received)!r}"
        received += data


def stream(port: int, gate: Gate, headers: dict[str, str]) -> tuple[bytes, RawResponse]:
    """(what had arrived while the app was blocked, the whole response)."""
    with gate, socket.create_connection((HOST, port), timeout=30) as sock:
        sock.sendall(servers.request_bytes(f"/stream?gate={gate.name}", headers=headers))
        received = bytearray()
        read_until(sock, b"first</p>", received)
        early = bytes(received)
        gate.release()
        while data := sock.recv(65536):
            received += data
    return early, servers.parse_response(bytes(received))


def test_streamed_page_arrives_chunk_by_chunk_with_the_snippet_first(
    pair: tuple[Server, Server], gate_dir: Path, request: pytest.FixtureRequest
) -> None:
    bare, wrapped = pair
    tag = request.node.callspec.id
    early, response = stream(wrapped.port, Gate(gate_dir, f"wrapped-{tag}"), ALICE)
    # The app is blocked on its gate: the first chunk, with the snippet, came before.
    assert b"second" not in early
    assert len(SNIPPET.findall(early)) == 1
    assert early.index(b"data-px-middleware") < early.index(b"first</p>")
    user, _ = identify_args(early)
    assert user["id"] == "u-1"

    _, bare_response = stream(bare.port, Gate(gate_dir, f"bare-{tag}"), ALICE)
    assert without_snippet(response.body) == bare_response.body
    assert response.body.endswith(b"<p>third</p></body></html>\n")
    assert response.header("content-length") is None
    assert response.header("cache-control") == "private"


def wait_for_file(path: Path, deadline: float = 30.0) -> None:
    """Poll for a file the app creates (a condition with a deadline, never a sleep)."""
    import time

    end = time.monotonic() + deadline
    while not path.exists():
        assert time.monotonic() < end, f"{path.name} never appeared"
        time.sleep(0.01)


@pytest.mark.parametrize("kind", ["page", "fragment"])
def test_a_slow_streamed_head_is_held_until_the_injector_decides(
    pair: tuple[Server, Server], gate_dir: Path, request: pytest.FixtureRequest, kind: str
) -> None:
    _, wrapped = pair
    tag = f"slow-{request.node.callspec.id}"
    with Gate(gate_dir, tag) as gate, socket.create_connection((HOST, wrapped.port),
                                                               timeout=30) as sock:
        sock.sendall(servers.request_bytes(f"/slowhead?gate={tag}&kind={kind}",
                                           headers=ALICE))
        wait_for_file(gate_dir / f"{tag}.reached")
        # The app yielded its first chunk and is blocked: it did not decide anything,
        # so not even the head may be on the wire yet.
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(65536)
        sock.setblocking(True)
        gate.release()
        received = bytearray()
        while data := sock.recv(65536):
            received += data
    response = servers.parse_response(bytes(received))
    first, rest = wsgi_apps.SLOW[kind]
    if kind == "page":
        at = len(b"<!doctype html><html><head>")
        snippet = SNIPPET.search(response.body)
        assert snippet is not None and snippet.start() == at
        assert without_snippet(response.body) == first + b"".join(rest)
        assert response.header("cache-control") == "private"
        assert response.header("etag") == 'W/"v1"'
    else:  # a fragment: the app's own head and body, untouched
        assert response.body == first + b"".join(rest)
        assert response.header("cache-control") is None
        assert response.header("etag") == '"v1"'

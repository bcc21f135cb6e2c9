"""``PXAsgiMiddleware`` driven with raw ``receive``/``send``: what the server sees.

No framework and no server: each test scripts the messages an ASGI app sends and
asserts the exact messages the middleware passes on, compared with the same app
unwrapped wherever the response must not change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import pytest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from px_middleware import PXConfig, User
from px_middleware.asgi import PXAsgiMiddleware
from px_middleware.core.exchange import Exchange
from px_middleware.core.snippet import MARKER

CONFIG = PXConfig(product_key="AP-TEST00000000-2", hmac_secret="conformance-secret")
DOC = (
    b"<!doctype html><html><head><meta charset=utf-8><title>T</title></head>"
    b"<body><p>hello</p></body></html>"
)
HTML = [(b"content-type", b"text/html; charset=utf-8")]


def http_scope(method: str = "GET", path: str = "/", **extra: Any) -> Message:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 1234),
        "server": ("test", 80),
        **extra,
    }


def start(headers: Iterable[tuple[bytes, bytes]] = HTML, status: int = 200,
          **extra: Any) -> Message:
    return {"type": "http.response.start", "status": status, "headers": list(headers), **extra}


def body(data: bytes, **extra: Any) -> Message:
    return {"type": "http.response.body", "body": data, **extra}


def scripted(*messages: Message, raise_at_end: BaseException | None = None) -> ASGIApp:
    """An app that sends fresh copies of ``messages`` (then raises, if asked)."""

    async def app(scope: Message, receive: Any, send: Any) -> None:
        for message in messages:
            await send(dict(message))
        if raise_at_end is not None:
            raise raise_at_end

    return app


async def call(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    await app(scope, receive, send)


def run(app: ASGIApp, scope: Message | None = None) -> list[Message]:
    """Call ``app`` like a server would and return every message it sent."""
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(call(app, scope or http_scope(), receive, send))
    return sent


def run_raising(app: ASGIApp, exc_type: type[BaseException]) -> tuple[list[Message], Any]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    with pytest.raises(exc_type) as info:
        asyncio.run(call(app, http_scope(), receive, send))
    return sent, info.value


def wrap(app: ASGIApp, **kwargs: Any) -> PXAsgiMiddleware:
    return PXAsgiMiddleware(app, CONFIG, **kwargs)


def alice(request: Any) -> User:
    return User(id="alice", email="alice@acme.test")


def body_bytes(sent: list[Message]) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def header(message: Message, name: bytes) -> bytes | None:
    values = [v for k, v in message["headers"] if k.lower() == name]
    assert len(values) <= 1
    return values[0] if values else None


def assert_well_formed(sent: list[Message]) -> None:
    """One start first, bodies after it, the last body final, length consistent."""
    assert sent[0]["type"] == "http.response.start"
    assert [m["type"] for m in sent[1:]] == ["http.response.body"] * (len(sent) - 1)
    assert all(m.get("more_body", False) for m in sent[1:-1])
    assert not sent[-1].get("more_body", False)
    length = header(sent[0], b"content-length")
    if length is not None:
        assert int(length) == len(body_bytes(sent))


def injected_once(data: bytes) -> bool:
    return data.count(MARKER.encode()) == 1


# -- the reference output -------------------------------------------------------------------------
def reference() -> list[Message]:
    app = scripted(start([*HTML, (b"content-length", str(len(DOC)).encode())]), body(DOC))
    return run(wrap(app, identify=alice))


def test_reference_page_is_injected_after_meta_charset() -> None:
    sent = reference()
    assert_well_formed(sent)
    data = body_bytes(sent)
    assert injected_once(data)
    assert data.startswith(b"<!doctype html><html><head><meta charset=utf-8><script ")
    assert data.endswith(b"</script><title>T</title></head><body><p>hello</p></body></html>")


# -- message boundaries ---------------------------------------------------------------------------
@pytest.mark.parametrize("cut", [*range(1, 30), 47, 48, 66, 70, 71, 72, len(DOC) - 1])
def test_head_split_across_two_messages(cut: int) -> None:
    app = scripted(
        start([*HTML, (b"content-length", str(len(DOC)).encode())]),
        body(DOC[:cut], more_body=True),
        body(DOC[cut:], more_body=False),
    )
    sent = run(wrap(app, identify=alice))
    assert_well_formed(sent)
    assert body_bytes(sent) == body_bytes(reference())
    assert header(sent[0], b"content-length") == header(reference()[0], b"content-length")


def test_every_byte_in_its_own_message() -> None:
    pieces = [body(DOC[i : i + 1], more_body=True) for i in range(len(DOC))]
    app = scripted(start(), *pieces, body(b"", more_body=False))
    sent = run(wrap(app, identify=alice))
    assert_well_formed(sent)
    assert body_bytes(sent) == body_bytes(reference())


def test_empty_body_messages_change_nothing() -> None:
    app = scripted(
        start([*HTML, (b"content-length", str(len(DOC)).encode())]),
        body(b"", more_body=True),
        body(DOC[:20], more_body=True),
        body(b"", more_body=True),
        body(DOC[20:], more_body=True),
        body(b"", more_body=True),
        body(b"", more_body=False),
    )
    sent = run(wrap(app, identify=alice))
    assert_well_formed(sent)
    assert body_bytes(sent) == body_bytes(reference())


def test_missing_more_body_means_the_body_is_complete() -> None:
    app = scripted(start([*HTML, (b"content-length", str(len(DOC)).encode())]), body(DOC))
    sent = run(wrap(app, identify=alice))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[1].get("more_body", False) is False
    assert int(header(sent[0], b"content-length") or b"0") == len(sent[1]["body"])
    assert injected_once(sent[1]["body"])


def test_empty_final_message_without_more_body() -> None:
    app = scripted(start(), body(DOC, more_body=True), {"type": "http.response.body"})
    sent = run(wrap(app, identify=alice))
    assert_well_formed(sent)
    assert injected_once(body_bytes(sent))


def test_streamed_page_is_released_when_the_decision_is_made() -> None:
    """The head goes out with the chunk that decided, not at the end of the body."""
    seen_before_second_chunk: list[list[str]] = []
    sent: list[Message] = []

    async def app(scope: Message, receive: Any, send: Any) -> None:
        await send(start())
        await send(body(DOC[:75], more_body=True))  # ... </head> is in here
        seen_before_second_chunk.append([m["type"] for m in sent])
        await send(body(DOC[75:], more_body=False))

    async def server_send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    asyncio.run(call(wrap(app, identify=alice), http_scope(), receive, server_send))
    assert seen_before_second_chunk == [["http.response.start", "http.response.body"]]
    assert_well_formed(sent)
    assert header(sent[0], b"content-length") is None
    assert body_bytes(sent) == body_bytes(reference())


def test_content_length_recomputed_for_a_body_in_many_messages() -> None:
    chunks = [DOC[i : i + 10] for i in range(0, len(DOC), 10)]
    app = scripted(
        start([*HTML, (b"content-length", str(len(DOC)).encode()), (b"etag", b'"v1"')]),
        *[body(c, more_body=True) for c in chunks],
        body(b""),
    )
    sent = run(wrap(app, identify=alice))
    assert_well_formed(sent)
    assert int(header(sent[0], b"content-length") or b"0") == len(body_bytes(sent)) > len(DOC)
    assert header(sent[0], b"etag") == b'W/"v1"'


def test_headers_keep_order_and_duplicates() -> None:
    headers = [
        (b"set-cookie", b"a=1"),
        (b"content-type", b"text/html"),
        (b"x-one", b"1"),
        (b"set-cookie", b"b=2"),
    ]
    sent = run(wrap(scripted(start(headers), body(DOC)), identify=alice))
    assert sent[0]["headers"][:4] == headers
    assert sent[0]["headers"][4:] == [(b"Cache-Control", b"private")]


def test_other_keys_of_the_start_message_are_kept() -> None:
    sent = run(wrap(scripted(start(HTML, trailers=False), body(DOC))))
    assert sent[0]["trailers"] is False
    assert injected_once(body_bytes(sent))


# -- messages we cannot rewrite -------------------------------------------------------------------
def test_pathsend_is_forwarded_with_the_original_start() -> None:
    messages = (
        start([*HTML, (b"content-length", b"1234")]),
        {"type": "http.response.pathsend", "path": "/srv/index.html"},
    )
    scope = http_scope(extensions={"http.response.pathsend": {}})
    middleware = wrap(scripted(*messages), identify=alice)
    sent = run(middleware, scope)
    assert sent == list(messages)
    assert middleware.counters.snapshot() == {"skipped": 1}


def test_zerocopysend_and_unknown_messages_are_forwarded() -> None:
    for extra in (
        {"type": "http.response.zerocopysend", "file": 7, "count": 10},
        {"type": "http.response.something_new", "x": 1},
    ):
        messages = (start(), extra)
        assert run(wrap(scripted(*messages))) == list(messages)


def test_body_held_before_an_unknown_message_is_released_unchanged() -> None:
    messages = (
        start(),
        body(b"<!doctype html><html><head>", more_body=True),
        {"type": "http.response.something_new"},
        body(b"</head></html>", more_body=False),
    )
    sent = run(wrap(scripted(*messages)))
    assert sent == [messages[0], {**messages[1]}, messages[2], messages[3]]


def test_trailers_follow_an_injected_body_untouched() -> None:
    trailers = {"type": "http.response.trailers", "headers": [(b"x-digest", b"abc")],
                "more_trailers": False}
    middleware = wrap(scripted(start(HTML, trailers=True), body(DOC), trailers), identify=alice)
    sent = run(middleware)
    assert [m["type"] for m in sent] == [
        "http.response.start", "http.response.body", "http.response.trailers"]
    assert sent[0]["trailers"] is True
    assert injected_once(sent[1]["body"])
    assert sent[2] == trailers
    assert middleware.counters.snapshot() == {"injected": 1, "identified": 1}


def test_trailers_of_a_response_we_do_not_touch() -> None:
    trailers = {"type": "http.response.trailers", "headers": [], "more_trailers": False}
    messages = (start([(b"content-type", b"application/json")], trailers=True),
                body(b"{}"), trailers)
    assert run(wrap(scripted(*messages))) == list(messages)


# -- the app raises -------------------------------------------------------------------------------
class Boom(Exception):
    pass


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param((), id="before-start"),
        pytest.param((start(),), id="after-start"),
        pytest.param((start(), body(b"<!doctype html><html><head>", more_body=True)),
                     id="after-an-undecided-chunk"),
        pytest.param((start([(b"content-type", b"application/json")]),
                      body(b"[1,", more_body=True)), id="not-html"),
    ],
)
def test_app_exception_propagates_and_the_server_saw_what_it_would_have(
    messages: tuple[Message, ...],
) -> None:
    bare_sent, _ = run_raising(scripted(*messages, raise_at_end=Boom("bare")), Boom)
    error = Boom("wrapped")
    sent, exc = run_raising(wrap(scripted(*messages, raise_at_end=error), identify=alice), Boom)
    assert exc is error
    assert sent == bare_sent


def test_app_exception_after_two_held_chunks_releases_their_bytes() -> None:
    chunks = (body(b"<!doctype html><html>", more_body=True),
              body(b"<head><title>x", more_body=True))
    bare_sent, _ = run_raising(scripted(start(), *chunks, raise_at_end=Boom()), Boom)
    sent, _ = run_raising(wrap(scripted(start(), *chunks, raise_at_end=Boom())), Boom)
    assert sent[0] == bare_sent[0]
    assert body_bytes(sent) == body_bytes(bare_sent)
    assert all(m.get("more_body") for m in sent[1:])


def test_app_exception_after_the_snippet_went_out() -> None:
    sent, _ = run_raising(
        wrap(scripted(start(), body(DOC, more_body=True), raise_at_end=Boom())), Boom
    )
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert injected_once(sent[1]["body"])


def test_app_returning_mid_body_leaves_the_response_as_unfinished_as_without_us() -> None:
    messages = (start(), body(b"<!doctype html><html><head>", more_body=True))
    bare = run(scripted(*messages))
    assert run(wrap(scripted(*messages), identify=alice)) == bare


def test_cancellation_is_not_turned_into_a_flush() -> None:
    sent, _ = run_raising(
        wrap(scripted(start(), raise_at_end=asyncio.CancelledError())), asyncio.CancelledError
    )
    assert sent == []


def test_a_failing_server_send_reaches_the_app() -> None:
    """A client that went away: the app must see the error, as without us."""
    seen: list[BaseException] = []

    async def app(scope: Message, receive: Any, send: Any) -> None:
        await send(start())
        try:
            await send(body(DOC))
        except OSError as exc:
            seen.append(exc)
            raise

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            raise OSError("client disconnected")

    async def receive() -> Message:
        return {"type": "http.request"}

    with pytest.raises(OSError, match="client disconnected"):
        asyncio.run(call(wrap(app), http_scope(), receive, send))
    assert len(seen) == 1


# -- our own failures: logged once, response unchanged --------------------------------------------
def _explode(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("bug in px_middleware")


@pytest.mark.parametrize("method", ["accepts", "begin", "feed", "close", "headers"])
def test_internal_error_passes_the_original_response_through(
    method: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    messages = (
        start([*HTML, (b"content-length", str(len(DOC)).encode())]),
        body(DOC[:10], more_body=True),
        body(DOC[10:], more_body=False),
    )
    bare = run(scripted(*messages))
    monkeypatch.setattr(Exchange, method, _explode)
    middleware = wrap(scripted(*messages), identify=alice)
    with caplog.at_level(logging.ERROR, logger="px_middleware"):
        sent = run(middleware)
    assert sent[0] == bare[0]
    assert body_bytes(sent) == body_bytes(bare)
    assert_well_formed(sent)
    assert middleware.counters.snapshot().get("errors") == 1
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


def test_identify_raising_leaves_the_page_alone(caplog: pytest.LogCaptureFixture) -> None:
    def identify(request: Any) -> User:
        raise LookupError("user table is down")

    messages = (start(), body(DOC))
    middleware = wrap(scripted(*messages), identify=identify)
    with caplog.at_level(logging.WARNING, logger="px_middleware"):
        assert run(middleware) == list(messages)
    assert middleware.counters.snapshot()["identify_errors"] == 1
    assert "user table is down" in caplog.text


def test_async_identify_is_awaited_once() -> None:
    calls: list[str] = []

    async def identify(request: Any) -> User:
        calls.append(request.url.path)
        return User(id="u-1")

    sent = run(wrap(scripted(start(), body(DOC[:30], more_body=True), body(DOC[30:])),
                    identify=identify), http_scope(path="/dash"))
    assert calls == ["/dash"]
    assert b'aptrinsic("identify",{"id":"u-1"' in body_bytes(sent)


def test_identify_is_not_called_for_responses_that_cannot_get_the_snippet() -> None:
    calls: list[object] = []

    def identify(request: Any) -> None:
        calls.append(request)

    run(wrap(scripted(start([(b"content-type", b"application/json")]), body(b"{}")),
             identify=identify))
    run(wrap(scripted(start(), body(DOC)), identify=identify), http_scope(method="POST"))
    assert calls == []


# -- scopes we never touch ------------------------------------------------------------------------
@pytest.mark.parametrize("scope_type", ["websocket", "lifespan"])
def test_non_http_scopes_get_the_server_callables_themselves(scope_type: str) -> None:
    seen: list[tuple[object, object, object]] = []

    async def app(scope: Message, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send))

    async def receive() -> Message:
        return {}

    async def send(message: Message) -> None:
        pass

    scope: Message = {"type": scope_type, "asgi": {"version": "3.0"}}
    asyncio.run(call(wrap(app), scope, receive, send))
    assert seen == [({"type": scope_type, "asgi": {"version": "3.0"}}, receive, send)]


def test_head_request_is_untouched() -> None:
    messages = (start([*HTML, (b"content-length", b"120")]), body(b""))
    assert run(wrap(scripted(*messages)), http_scope(method="HEAD")) == list(messages)


def test_two_nested_middlewares_inject_once() -> None:
    inner = wrap(scripted(start(), body(DOC)), identify=alice)
    outer = wrap(inner, identify=alice)
    data = body_bytes(run(outer))
    assert injected_once(data)
    assert outer.counters.snapshot()["injected"] == 1
    assert inner.counters.snapshot() == {}

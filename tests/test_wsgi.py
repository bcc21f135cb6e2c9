"""``PXWsgiMiddleware`` against PEP 3333: validators, streaming, close(), failing open.

Plain WSGI apps, called either through the two linters (``wsgiref.validate`` and
werkzeug's ``LintMiddleware``, each on its own, with warnings turned into errors)
or through ``serve``, a minimal PEP 3333 server that records what went out.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.util import FileWrapper as WsgirefFileWrapper
from wsgiref.validate import validator

import pytest
from werkzeug.middleware.lint import LintMiddleware
from werkzeug.test import Client, create_environ
from werkzeug.wrappers import Request

from px_middleware import Account, Identity, PXConfig, User, user_hash
from px_middleware.core.exchange import SEEN_KEY, SET_USER_KEY, SKIP_KEY, Exchange
from px_middleware.core.injector import Injector
from px_middleware.wsgi import PXWsgiMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

KEY = "AP-WSGITEST0001-2"
SECRET = "unit-hmac-secret"
CONFIG = PXConfig(product_key=KEY, hmac_secret=SECRET)
HTML = "text/html; charset=utf-8"
PAGE = (b'<!doctype html><html><head><meta charset="utf-8"><title>T</title></head>'
        b"<body>hi</body></html>")
SNIPPET = re.compile(rb'<script data-px-middleware="1"[^>]*>.*?</script>', re.DOTALL)
ADA = Identity(User("u-1", email="ada@example.test"), Account("acme", name="Acme"))


# -- apps --------------------------------------------------------------------------------
class Body:
    """An app iterable that records how far it was pulled and whether it was closed."""

    def __init__(self, chunks: Iterable[bytes], fail_at: int | None = None) -> None:
        self.chunks = list(chunks)
        self.fail_at = fail_at
        self.pulled = 0
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        for index, chunk in enumerate(self.chunks):
            if index == self.fail_at:
                raise RuntimeError("the app failed mid-body")
            self.pulled += 1
            yield chunk

    def close(self) -> None:
        self.closed += 1


def page_app(
    chunks: Iterable[bytes] = (PAGE,),
    *,
    content_type: str = HTML,
    status: str = "200 OK",
    length: bool = True,
    extra: Iterable[tuple[str, str]] = (),
    fail_at: int | None = None,
) -> tuple[WSGIApplication, list[Body]]:
    """An app that answers every request with ``chunks``; the list gets each Body."""
    parts = list(chunks)
    bodies: list[Body] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        headers = [("Content-Type", content_type), *extra]
        if length:
            headers.append(("Content-Length", str(sum(map(len, parts)))))
        start_response(status, headers)
        body = Body(parts, fail_at)
        bodies.append(body)
        return body

    return app, bodies


def lazy_app(chunks: Iterable[bytes], events: list[str]) -> WSGIApplication:
    """A generator app: start_response runs on first iteration, every step is logged."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        events.append("started")
        start_response("200 OK", [("Content-Type", HTML)])
        for index, chunk in enumerate(chunks):
            events.append(f"chunk {index}")
            yield chunk

    return app


def file_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", HTML), ("Content-Length", str(len(PAGE)))])
    wrapper: Callable[[Any], Iterable[bytes]] = environ["wsgi.file_wrapper"]
    return wrapper(io.BytesIO(PAGE))


def write_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    write = start_response("200 OK", [("Content-Type", HTML), ("Content-Length", str(len(PAGE)))])
    write(PAGE[:20])
    write(PAGE[20:])
    return []


def wrap(app: WSGIApplication, identity: object = ADA, **kwargs: Any) -> PXWsgiMiddleware:
    return PXWsgiMiddleware(app, CONFIG, identify=lambda request: identity, **kwargs)


# -- a minimal PEP 3333 server --------------------------------------------------------------
@dataclasses.dataclass
class Served:
    status: str
    headers: list[tuple[str, str]]
    #: Every item the response iterable yielded, empty ones included.
    items: list[bytes]
    written: list[bytes]

    @property
    def body(self) -> bytes:
        return b"".join(self.written) + b"".join(self.items)

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)


def serve(app: WSGIApplication, path: str = "/", *, method: str = "GET",
          headers: dict[str, str] | None = None, environ: dict[str, Any] | None = None,
          stop_after: int | None = None) -> Served:
    """Call ``app`` as a server would; ``stop_after`` n items simulates a client leaving."""
    env = create_environ(path, method=method, headers=headers)
    env.update(environ or {})
    state: dict[str, Any] = {"sent": False}
    items: list[bytes] = []
    written: list[bytes] = []

    def start_response(status: str, response_headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], object]:
        if exc_info is not None and state["sent"]:
            raise exc_info[1].with_traceback(exc_info[2])
        assert exc_info is not None or "status" not in state, "start_response called twice"
        state["status"], state["headers"] = status, response_headers
        return write

    def write(data: bytes) -> None:
        state["sent"] = True
        written.append(data)

    result = app(env, start_response)
    try:
        for item in result:
            assert "status" in state, "body before start_response"
            assert isinstance(item, bytes)
            if item:
                state["sent"] = True
            items.append(item)
            if stop_after is not None and len(items) >= stop_after:
                break
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return Served(state["status"], state["headers"], items, written)


class Heads(list[list[tuple[str, str]]]):
    """A ``start_response`` that records every head it is given."""

    def __call__(self, status: str, headers: list[tuple[str, str]],
                 exc_info: Any = None) -> Callable[[bytes], object]:
        self.append(headers)
        return print


def snippets(body: bytes) -> list[bytes]:
    return SNIPPET.findall(body)


# -- the linters ---------------------------------------------------------------------------
def _lint_cases() -> list[tuple[str, WSGIApplication, dict[str, str], bool]]:
    """(name, app, request headers, injected?)"""
    chunks = [PAGE[:30], PAGE[30:60], PAGE[60:]]
    return [
        ("injected", page_app()[0], {}, True),
        ("injected-chunks-with-length", page_app(chunks)[0], {}, True),
        ("injected-streamed", page_app(chunks, length=False)[0], {}, True),
        ("injected-lazy", lazy_app(chunks, []), {}, True),
        ("json", page_app([b'{"a": 1}'], content_type="application/json")[0], {}, False),
        ("not-found", page_app(status="404 Not Found")[0], {}, False),
        ("xhr", page_app()[0], {"X-Requested-With": "XMLHttpRequest"}, False),
        ("no-head", page_app([b"<p>fragment</p>"])[0], {}, False),
        ("file-wrapper", file_app, {}, False),
        ("write", write_app, {}, False),
    ]


LINT_CASES = _lint_cases()
LINT_IDS = [case[0] for case in LINT_CASES]


@pytest.mark.parametrize(("name", "app", "headers", "injected"), LINT_CASES, ids=LINT_IDS)
@pytest.mark.parametrize("linter", ["wsgiref.validate", "werkzeug.lint"])
@pytest.mark.parametrize("where", ["outside", "inside"])
def test_linters_accept_the_middleware(
    linter: str, where: str, name: str, app: WSGIApplication, headers: dict[str, str],
    injected: bool,
) -> None:
    """Outside: what the server sees from us. Inside: what the app sees from us."""
    lint: Callable[[WSGIApplication], WSGIApplication] = (
        validator if linter == "wsgiref.validate" else LintMiddleware
    )
    stack = lint(wrap(app)) if where == "outside" else wrap(lint(app))
    if where == "inside" and name == "file-wrapper":
        injected = True  # the linter hides the file wrapper in its own iterator: a plain body
    # wsgiref's own FileWrapper, as a server offers it (werkzeug.lint installs its own).
    client = Client(stack)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("GET", "HEAD"):
            # wsgiref's FileWrapper, as a server offers it (werkzeug.lint installs its own).
            with client.open("/", method=method, headers=headers,
                             environ_base={"wsgi.file_wrapper": WsgirefFileWrapper}) as response:
                body = response.get_data()
                assert response.status_code in (200, 404)
                length = response.headers.get("Content-Length")
                # These bare apps send a body even to HEAD (the server drops it).
                assert len(snippets(body)) == (1 if injected and method == "GET" else 0)
                if length is not None:
                    assert int(length) == len(body)


@pytest.mark.parametrize("lint", [validator, LintMiddleware], ids=["wsgiref", "werkzeug"])
def test_linters_accept_an_error_page_after_exc_info(
    lint: Callable[[WSGIApplication], WSGIApplication],
) -> None:
    # serve(), not werkzeug's Client: the Client re-raises every exc_info it is given.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for stack in (lint(wrap(exc_info_app)), wrap(lint(exc_info_app))):
            served = serve(stack)
            assert served.status.startswith("500")
            assert served.body == b"<html><head></head><body>error</body></html>"


# -- PEP 3333 behaviour ------------------------------------------------------------------
def test_injects_once_and_recomputes_content_length() -> None:
    app, bodies = page_app([PAGE[:25], PAGE[25:50], PAGE[50:]])
    served = serve(wrap(app))
    assert len(snippets(served.body)) == 1
    assert SNIPPET.sub(b"", served.body) == PAGE
    assert served.header("Content-Length") == str(len(served.body))
    assert served.body.index(b"data-px-middleware") > served.body.index(b'<meta charset="utf-8">')
    assert bodies[0].closed == 1


def test_identify_payload_has_the_hash_and_no_secret() -> None:
    served = serve(wrap(page_app()[0]))
    assert user_hash("u-1", SECRET) in served.body.decode()
    assert SECRET not in served.body.decode()
    assert served.header("Cache-Control") == "private"


def test_iterable_is_returned_before_the_app_runs() -> None:
    events: list[str] = []
    middleware = wrap(lazy_app([PAGE], events))
    result = middleware(create_environ("/"), Heads())
    assert events == []  # nothing of the app ran yet: we did not iterate it
    assert list(result) and events == ["started", "chunk 0"]


def test_streamed_body_is_pulled_until_decided_then_yields_in_step_with_the_app() -> None:
    chunks = [b"<!doctype html><html><head>", b"<title>T</title>", b"</head><body>",
              b"<p>one</p>", b"<p>two</p>", b"</body></html>"]
    events: list[str] = []
    heads = Heads()
    middleware = wrap(lazy_app(chunks, events))
    result = middleware(create_environ("/"), heads)
    iterator = iter(result)
    # The head is held until the injector decides (at "</head>", in chunk 2): those
    # chunks are pulled without a yield, since a server refuses a body chunk (even an
    # empty one) before the head.
    first = next(iterator)
    assert events[-1] == "chunk 2" and heads == [[("Content-Type", HTML),
                                                  ("Cache-Control", "private")]]
    assert len(snippets(first)) == 1 and SNIPPET.sub(b"", first) == b"".join(chunks[:3])
    outputs = [first]
    for index in range(3, len(chunks)):
        outputs.append(next(iterator))
        assert events[-1] == f"chunk {index}"  # one app chunk per item: nothing read ahead
    assert next(iterator, None) is None
    assert outputs[1:] == chunks[3:]


def test_streamed_page_sends_its_head_only_once_decided() -> None:
    heads = Heads()
    app, _ = page_app([PAGE], length=False)
    result = wrap(app)(create_environ("/"), heads)
    assert heads == []  # nothing is sent before the injector has seen the page
    body = b"".join(result)
    assert heads == [[("Content-Type", HTML), ("Cache-Control", "private")]]
    assert len(snippets(body)) == 1


@pytest.mark.parametrize("chunks", [[b"<div><p>a fragment</p></div>"],
                                    [b"<html><head><script>aptrinsic=1</script></head>"]],
                         ids=["fragment", "has-loader"])
def test_a_streamed_response_without_the_snippet_keeps_its_head(chunks: list[bytes]) -> None:
    """No snippet, so no rewritten head either: the ETag stays strong, no private."""
    heads = Heads()
    app, _ = page_app(chunks, length=False, extra=[("ETag", '"v1"')])
    body = b"".join(wrap(app)(create_environ("/"), heads))
    assert body == b"".join(chunks)
    assert heads == [[("Content-Type", HTML), ("ETag", '"v1"')]]


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "streamed"])
@pytest.mark.parametrize("injected", [True, False], ids=["html", "json"])
def test_close_is_always_forwarded(length: bool, injected: bool) -> None:
    content_type = HTML if injected else "application/json"
    app, bodies = page_app([PAGE[:30], PAGE[30:]], content_type=content_type, length=length)
    serve(wrap(app))
    serve(wrap(app), stop_after=1)  # the client went away after the first item
    with pytest.raises(RuntimeError, match="mid-body"):
        serve(wrap(page_app([PAGE[:30], PAGE[30:]], fail_at=1, length=length)[0]))
    assert [body.closed for body in bodies] == [1, 1]


def test_app_errors_propagate_and_close_is_still_called() -> None:
    app, bodies = page_app([PAGE[:30], PAGE[30:]], fail_at=1)
    with pytest.raises(RuntimeError, match="mid-body"):
        serve(wrap(app))
    assert bodies[0].closed == 1


def test_responses_we_do_not_touch_are_the_apps_own_iterable() -> None:
    app, bodies = page_app([b"{}"], content_type="application/json")
    env = create_environ("/")
    result = wrap(app)(env, Heads())
    assert result is bodies[0]


def test_file_wrapper_body_is_handed_over_untouched() -> None:
    env = create_environ("/")
    env["wsgi.file_wrapper"] = WsgirefFileWrapper
    heads = Heads()
    middleware = wrap(file_app)
    result = middleware(env, heads)
    assert isinstance(result, WsgirefFileWrapper)  # the server may still use sendfile
    assert heads == [[("Content-Type", HTML), ("Content-Length", str(len(PAGE)))]]
    assert b"".join(result) == PAGE
    assert middleware.counters.snapshot().get("injected") is None


def test_write_callable_passes_through() -> None:
    served = serve(wrap(write_app))
    assert served.body == PAGE
    assert served.written == [PAGE[:20], PAGE[20:]]
    assert served.header("Content-Length") == str(len(PAGE))


def exc_info_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", HTML)])
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        error = b"<html><head></head><body>error</body></html>"
        start_response("500 Internal Server Error",
                       [("Content-Type", HTML), ("Content-Length", str(len(error)))],
                       sys.exc_info())
        return [error]


def test_exc_info_replaces_a_response_whose_head_is_not_out() -> None:
    served = serve(wrap(exc_info_app))
    assert served.status.startswith("500")
    assert served.body == b"<html><head></head><body>error</body></html>"


def test_exc_info_reraises_once_the_app_has_sent_body_bytes() -> None:
    """The app yielded bytes (we held them for Content-Length): for it the head is out."""

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", HTML), ("Content-Length", "999")])
        yield b"<!doctype html><html><head><title>"
        try:
            raise ValueError("half way")
        except ValueError:
            import sys

            start_response("500 Internal Server Error", [("Content-Type", HTML)],
                           sys.exc_info())
            yield b"error"

    with pytest.raises(ValueError, match="half way"):
        serve(wrap(app))
    with pytest.raises(ValueError, match="half way"):  # the same without us
        serve(app)


def test_exc_info_after_a_streamed_head_is_the_servers_call() -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", HTML)])
        yield PAGE[:40]
        yield PAGE[40:]
        try:
            raise ValueError("late")
        except ValueError:
            import sys

            start_response("500 Internal Server Error", [("Content-Type", HTML)],
                           sys.exc_info())
            yield b"error"

    with pytest.raises(ValueError, match="late"):
        serve(wrap(app))


def test_request_body_is_never_read() -> None:
    class Input(io.BytesIO):
        reads = 0

        def read(self, size: int | None = -1) -> bytes:
            Input.reads += 1
            return super().read(size)

        def readline(self, size: int | None = -1) -> bytes:
            Input.reads += 1
            return super().readline(size)

    def nosy(request: Request) -> Identity:
        return ADA

    app, _ = page_app()
    stream = Input(b"a=1&b=2")
    env = {"wsgi.input": stream, "CONTENT_LENGTH": "7",
           "CONTENT_TYPE": "application/x-www-form-urlencoded"}
    served = serve(PXWsgiMiddleware(app, CONFIG, identify=nosy), environ=env)
    assert len(snippets(served.body)) == 1
    assert Input.reads == 0 and stream.tell() == 0

    def reads_form(request: Request) -> Identity:
        request.form.get("a")  # a shallow request refuses: the body is the app's
        return ADA

    served = serve(PXWsgiMiddleware(app, CONFIG, identify=reads_form), environ=env)
    assert served.body == PAGE
    assert Input.reads == 0


def test_the_hooks_request_reads_as_werkzeugs_own() -> None:
    """The request the hooks get reads the environ only when asked; what it reads is
    what werkzeug's own ``Request`` reads from the same environ."""
    seen: list[Request] = []

    def identify(request: Request) -> Identity:
        seen.append(request)
        return ADA

    app, _ = page_app()
    env = create_environ("/shop/a%20b?q=1&q=2", "https://app.test:8443/",
                         headers={"Cookie": "sid=abc; theme=dark", "X-Forwarded-For": "10.0.0.1",
                                  "User-Agent": "Mozilla/5.0"})
    env["SCRIPT_NAME"] = "/shop"
    env["PATH_INFO"] = "/a b"
    env["REMOTE_ADDR"] = "192.0.2.7"
    served = serve(PXWsgiMiddleware(app, CONFIG, identify=identify), environ=env)
    assert len(snippets(served.body)) == 1
    [ours] = seen
    theirs = Request(dict(ours.environ), shallow=True)
    assert isinstance(ours, Request) and ours.shallow
    for name in ("method", "scheme", "server", "root_path", "path", "full_path", "query_string",
                 "args", "cookies", "host", "url", "base_url", "remote_addr", "access_route",
                 "user_agent", "content_type"):
        assert str(getattr(ours, name)) == str(getattr(theirs, name)), name
    assert dict(ours.headers) == dict(theirs.headers)
    with pytest.raises(AttributeError):
        getattr(ours, "no_such_attribute")  # noqa: B009 - a missing attribute stays missing


# -- decisions the adapter wires through -------------------------------------------------
def test_identify_is_lazy_and_called_at_most_once() -> None:
    calls: list[str] = []

    def identify(request: Request) -> Identity:
        calls.append(request.path)
        return ADA

    def run(app: WSGIApplication, path: str = "/", **kwargs: Any) -> Served:
        return serve(PXWsgiMiddleware(app, CONFIG, identify=identify), path, **kwargs)

    run(page_app([b"{}"], content_type="application/json")[0], "/json")
    run(page_app(status="302 Found")[0], "/redirect")
    run(page_app()[0], "/post", method="POST")
    run(page_app()[0], "/head", method="HEAD")
    assert calls == []
    run(page_app([PAGE[:10], PAGE[10:40], PAGE[40:]])[0], "/page")
    assert calls == ["/page"]


def test_identify_runs_inside_the_apps_start_response() -> None:
    order: list[str] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        order.append("app starts response")
        start_response("200 OK", [("Content-Type", HTML)])
        order.append("app returns")
        return [PAGE]

    def identify(request: Request) -> None:
        order.append("identify")

    serve(PXWsgiMiddleware(app, CONFIG, identify=identify))
    assert order == ["app starts response", "identify", "app returns"]


def test_nested_middleware_injects_once() -> None:
    app, _ = page_app()
    seen: list[object] = []

    def inner_identify(request: Request) -> Identity:
        seen.append(request.environ.get(SEEN_KEY))
        return ADA

    inner = PXWsgiMiddleware(app, CONFIG, identify=inner_identify)
    served = serve(wrap(inner))
    assert len(snippets(served.body)) == 1
    assert seen == []  # the inner one stepped aside before identifying


def test_page_with_a_loader_already_is_left_alone() -> None:
    page = b"<html><head><script>window.aptrinsic=1</script></head><body></body></html>"
    served = serve(wrap(page_app([page])[0]))
    assert served.body == page
    assert served.header("Content-Length") == str(len(page))


def test_cache_control_private_on_identified_pages_and_public_is_skipped() -> None:
    served = serve(wrap(page_app(extra=[("Cache-Control", "max-age=60")])[0]))
    assert served.header("Cache-Control") == "private, max-age=60"
    public, _ = page_app(extra=[("Cache-Control", "public, max-age=60")])
    served = serve(wrap(public))
    assert served.body == PAGE and served.header("Cache-Control") == "public, max-age=60"
    anonymous = serve(wrap(public, identity=None))
    assert len(snippets(anonymous.body)) == 1  # the loader alone is the same for everybody
    assert anonymous.header("Cache-Control") == "public, max-age=60"


def test_skip_key_set_by_the_app() -> None:
    app, _ = page_app()

    def skipping(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        environ[SKIP_KEY] = True
        return app(environ, start_response)

    assert serve(wrap(skipping)).body == PAGE


def test_set_user_key_adds_a_set_call() -> None:
    app, _ = page_app()

    def setting(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        environ[SET_USER_KEY] = {"plan": "gold", "seats": 5}
        return app(environ, start_response)

    body = serve(wrap(setting)).body
    assert b'aptrinsic("set","user",{"plan":"gold","seats":5});' in body


def test_csp_nonce_callable() -> None:
    app, _ = page_app()
    body = serve(wrap(app, csp_nonce=lambda request: "abc123")).body
    assert b'<script data-px-middleware="1" nonce="abc123">' in body
    # A nonce source that has none: fail closed, unless it is optional.
    assert serve(wrap(app, csp_nonce=lambda request: None)).body == PAGE
    body = serve(wrap(app, csp_nonce=lambda request: None, nonce_required=False)).body
    assert len(snippets(body)) == 1 and b"nonce=" not in body


def test_bad_attribute_is_dropped_and_counted() -> None:
    identity = Identity(User("u-1", custom={"seats": 3, "bad": object()}))
    middleware = wrap(page_app()[0], identity=identity)
    served = serve(middleware)
    assert b'"seats":3' in served.body and b'"bad"' not in served.body
    assert middleware.counters.snapshot()["attributes_dropped"] == 1


# -- failing open --------------------------------------------------------------------------
def _broken(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("a bug of ours")


MID_BODY = [b"<!doctype html><html>", b"<head><title>T</title>", b"</head><body>x</body>",
            b"</html>"]
AT_END = [b"<!doctype html><html>", b"<head><title>T</title>", b"<link rel=icon href=x>"]
FAILURES = [
    # (what breaks, where the injector decides)
    ((Injector, "feed"), MID_BODY), ((Exchange, "headers"), MID_BODY),
    ((Exchange, "headers"), AT_END), ((Injector, "close"), AT_END),
    ((Exchange, "begin"), MID_BODY), ((Exchange, "accepts"), MID_BODY),
    ((Exchange, "__init__"), MID_BODY),
]


@pytest.mark.parametrize(("target", "chunks"), FAILURES, ids=[
    f"{t.__name__}.{name}-{'mid' if c is MID_BODY else 'end'}" for (t, name), c in FAILURES])
@pytest.mark.parametrize("length", [True, False], ids=["content-length", "streamed"])
def test_our_errors_pass_the_response_through_byte_for_byte(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    target: tuple[type, str], chunks: list[bytes], length: bool,
) -> None:
    app, bodies = page_app(chunks, length=length)
    middleware = wrap(app)
    monkeypatch.setattr(*target, _broken)
    with caplog.at_level(logging.ERROR, logger="px_middleware"):
        served = serve(middleware)
    assert served.body == b"".join(chunks)
    original = [("Content-Type", HTML)]
    if length:
        original.append(("Content-Length", str(len(served.body))))
    # The head is held until decided, streamed or not: a failure sends the app's own.
    assert served.headers == original
    assert len(caplog.records) == 1 and middleware.counters.snapshot()["errors"] == 1
    assert bodies[0].closed == 1


def test_identify_that_raises_leaves_the_page_alone(caplog: pytest.LogCaptureFixture) -> None:
    app, _ = page_app()
    middleware = PXWsgiMiddleware(app, CONFIG, identify=_broken)
    with caplog.at_level(logging.WARNING, logger="px_middleware"):
        served = serve(middleware)
    assert served.status == "200 OK" and served.body == PAGE
    assert middleware.counters.snapshot()["identify_errors"] == 1
    assert len(caplog.records) == 1


def test_identify_returning_nonsense_leaves_the_page_alone() -> None:
    middleware = wrap(page_app()[0], identity={"id": "u-1"})
    assert serve(middleware).body == PAGE
    assert middleware.counters.snapshot()["identify_errors"] == 1


def test_async_identify_is_refused_at_construction() -> None:
    async def identify(request: Request) -> None:
        return None

    with pytest.raises(TypeError, match="async"):
        PXWsgiMiddleware(page_app()[0], CONFIG, identify=identify)


def test_the_page_view_and_path_rules_see_the_path_the_request_came_in_with() -> None:
    """werkzeug's DispatcherMiddleware rewrites PATH_INFO in place before the mounted
    app starts its response: the page URL and exclude_paths must use the full path."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from px_middleware.core.tracking import Tracker

    # An API key of its own: the delivery registry is per process, keyed by it.
    config = dataclasses.replace(CONFIG, api_key="dispatcher-test",
                                 api_url="http://127.0.0.1:9/v1", exclude_paths=("/admin/*",))
    inner, _ = page_app()
    middleware = PXWsgiMiddleware(DispatcherMiddleware(page_app()[0], {"/admin": inner,
                                                                       "/shop": inner}),
                                  config, identify=lambda request: ADA)
    sent: list[dict[str, Any]] = []

    def capture(kind: str, body: dict[str, Any]) -> bool:
        sent.append(body)
        return True

    middleware.tracker = Tracker(config, middleware.counters, capture)
    browser = {"HTTP_SEC_FETCH_DEST": "document", "HTTP_SEC_FETCH_MODE": "navigate"}
    shop = serve(middleware, "/shop/cart", environ=browser)
    assert len(snippets(shop.body)) == 1
    assert [e["url"] for e in sent if e.get("eventName") == "page_view"] == [
        "http://localhost/shop/cart"
    ]
    sent.clear()
    admin = serve(middleware, "/admin/users", environ=browser)
    assert snippets(admin.body) == [] and sent == []

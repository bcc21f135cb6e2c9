"""``PX``: the Flask extension. ``PX(app)`` and every HTML page carries the PX tag.

    app.config["PX_PRODUCT_KEY"] = "AP-XXXXXXXXXXXX-2"
    px = PX(app)                      # or: px = PX(); px.init_app(app)

Settings ``app.config`` lacks come from ``PX_*`` environment variables: keep the
secrets there, where debug panels that show ``app.config`` cannot.

It only resolves who is on the page and wires ``PXWsgiMiddleware`` in; every
decision about the response is the core's. Who is on the page, in this order:

1. the function registered with ``@px.identify`` (returns ``Identity``/``User``/``None``);
2. Flask-Login's ``current_user`` when a ``LoginManager`` is set up on the app;
3. otherwise ``session["user_id"]`` / ``session["_user_id"]`` (the Flask tutorial).

All of it runs lazily, once, when the response starts and only for responses that
can get the snippet (an HTML page to a GET), while the request context is live.

For apps that wrap by hand, ``session_identify(app)`` reads Flask's signed session
cookie with the app's own serializer, with no Flask context needed.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from flask import Flask, current_app, g, has_app_context, has_request_context
from flask import Request as FlaskRequest
from flask import request as flask_request
from flask import session as flask_session
from flask.sessions import SecureCookieSessionInterface
from itsdangerous import BadData
from werkzeug.wrappers import Request

from px_middleware.config import PXConfig
from px_middleware.core.exchange import SET_USER_KEY, SKIP_KEY
from px_middleware.core.model import Identity, User
from px_middleware.wsgi import PXWsgiMiddleware

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = ["PX", "exempt", "px_exempt", "session_identify"]

F = TypeVar("F", bound=Callable[..., Any])
#: What ``@px.identify`` decorates: no arguments, Flask's context is live.
IdentifyView = Callable[[], "Identity | User | None"]

_EXEMPT = "_px_exempt"
#: Session keys of the Flask tutorial (``user_id``) and of Flask-Login (``_user_id``).
SESSION_KEYS = ("user_id", "_user_id")


def exempt(view: F) -> F:
    """Decorate a view whose pages never get the PX snippet."""
    setattr(view, _EXEMPT, True)
    return view


px_exempt = exempt


class PX:
    """The Flask extension: reads ``PX_*`` from ``app.config``, wraps ``app.wsgi_app``.

    One instance may serve several apps (``init_app`` per app); what belongs to an
    app (its config, its middleware and counters) is kept per app.
    """

    exempt = staticmethod(exempt)

    def __init__(
        self,
        app: Flask | None = None,
        *,
        config: PXConfig | None = None,
        identify: IdentifyView | None = None,
    ) -> None:
        self._config = config
        self._identify = identify
        self._middlewares: weakref.WeakKeyDictionary[Flask, PXWsgiMiddleware] = (
            weakref.WeakKeyDictionary()
        )
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, *, config: PXConfig | None = None) -> None:
        """Wrap ``app.wsgi_app``; ``config`` defaults to ``PX_*`` keys of ``app.config``,
        then ``PX_*`` environment variables for the settings ``app.config`` lacks."""
        if "px" in app.extensions:
            raise RuntimeError("PX is already set up on this app")
        settings = (
            config or self._config or PXConfig.from_mapping(app.config, environ=os.environ)
        )
        middleware = _FlaskMiddleware(
            app,
            app.wsgi_app,
            settings,
            identify=self._who,
            csp_nonce=_talisman_nonce,
            # No Talisman nonce is not an error: the core reads the CSP header itself.
            nonce_required=False,
        )
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions["px"] = self
        self._middlewares[app] = middleware

    # -- for the app ---------------------------------------------------------------
    def identify(self, fn: IdentifyView) -> IdentifyView:
        """Decorator: ``fn()`` returns the visitor's ``Identity`` (or ``User``, or None)."""
        self._identify = fn
        return fn

    def set_user(self, **attributes: Any) -> None:
        """Queue ``aptrinsic('set', 'user', {...})`` on this response (identified pages)."""
        if not has_request_context():
            raise RuntimeError("px.set_user() works only while handling a request")
        queued: dict[str, Any] = flask_request.environ.setdefault(SET_USER_KEY, {})
        queued.update(attributes)

    def skip(self) -> None:
        """No PX snippet on this response (like ``g.px_skip = True``)."""
        if not has_request_context():
            raise RuntimeError("px.skip() works only while handling a request")
        flask_request.environ[SKIP_KEY] = True

    def middleware(self, app: Flask | None = None) -> PXWsgiMiddleware:
        """The middleware wrapping ``app`` (default: the current app)."""
        if app is None:
            if has_app_context():
                app = current_app._get_current_object()  # type: ignore[attr-defined]
            elif len(self._middlewares) == 1:
                app = next(iter(self._middlewares))
            else:
                raise RuntimeError("px.middleware() needs an app or an app context")
        try:
            return self._middlewares[app]
        except KeyError:
            raise RuntimeError("PX is not set up on this app; call px.init_app(app)") from None

    @property
    def counters(self) -> dict[str, int]:
        """A snapshot of the counters of the current app's middleware."""
        return self.middleware().counters.snapshot()

    # -- wiring ----------------------------------------------------------------------
    def _who(self, request: Request) -> Identity | User | None:
        if not has_request_context():
            return None  # a WSGI app mounted inside ours, outside Flask's dispatch
        if self._identify is not None:
            return self._identify()
        return current_identity()


class _FlaskMiddleware(PXWsgiMiddleware):
    """Reads Flask's context at response start, while it is live: ``g.px_skip`` and
    ``@exempt`` views, and the request Flask built already, for the hooks."""

    def __init__(self, flask_app: Flask, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flask_app = flask_app

    def _skipped(self, environ: WSGIEnvironment, request: Request) -> bool:
        if super()._skipped(environ, request):
            return True
        if not isinstance(request, FlaskRequest):
            return False  # outside Flask's dispatch (a WSGI app mounted inside ours)
        view = self.flask_app.view_functions.get(request.endpoint) if request.endpoint else None
        return bool(g.get("px_skip") or getattr(view, _EXEMPT, False))

    def _request(self, environ: WSGIEnvironment) -> Request:
        return _current_request(environ) or super()._request(environ)


def _current_request(environ: WSGIEnvironment) -> FlaskRequest | None:
    """Flask's own request for ``environ``, while its context is live (one proxy look-up:
    each costs about a microsecond)."""
    if not has_request_context():
        return None
    request: FlaskRequest = flask_request._get_current_object()  # type: ignore[attr-defined]
    return request if request.environ is environ else None


def current_identity() -> User | None:
    """Zero-code identification: Flask-Login's ``current_user``, else the session."""
    if getattr(current_app, "login_manager", None) is not None:
        from flask_login import current_user

        if not current_user.is_authenticated:
            return None
        # Raw values: the core drops (and counts) any attribute PX cannot store.
        return User(
            current_user.get_id(),
            email=getattr(current_user, "email", None),
            first_name=getattr(current_user, "first_name", None),
            last_name=getattr(current_user, "last_name", None),
        )
    return _user_from(flask_session, SESSION_KEYS)


def session_identify(
    app: Flask, key: str | Sequence[str] = SESSION_KEYS
) -> Callable[[Request], User | None]:
    """An ``identify`` for a hand-wrapped Flask app: the user id in its session cookie.

        app.wsgi_app = PXWsgiMiddleware(app.wsgi_app, config,
                                        identify=session_identify(app))

    The cookie is verified with the app's own serializer (``SECRET_KEY`` and its
    fallbacks, ``PERMANENT_SESSION_LIFETIME``); a bad or expired cookie is anonymous.
    It reads the request's cookie, so a login shows on the page after it.
    """
    interface = app.session_interface
    if not isinstance(interface, SecureCookieSessionInterface):
        raise TypeError(
            f"session_identify needs Flask's signed-cookie sessions, not "
            f"{type(interface).__name__}; pass your own identify function instead"
        )
    keys = (key,) if isinstance(key, str) else tuple(key)

    def identify(request: Request) -> User | None:
        value = request.cookies.get(interface.get_cookie_name(app))
        serializer = interface.get_signing_serializer(app)
        if not value or serializer is None:
            return None
        try:
            data = serializer.loads(
                value, max_age=int(app.permanent_session_lifetime.total_seconds())
            )
        except BadData:
            return None
        return _user_from(data, keys) if isinstance(data, dict) else None

    return identify


def _user_from(data: Any, keys: Sequence[str]) -> User | None:
    for key in keys:
        value = data.get(key)
        if value is not None and value != "":
            return User(value)
    return None


def _talisman_nonce(request: Request) -> str | None:
    """Flask-Talisman's per-request nonce (``request.csp_nonce``), when it set one: the
    hooks get Flask's own request (``_FlaskMiddleware._request``)."""
    nonce = getattr(request, "csp_nonce", None)
    return nonce if isinstance(nonce, str) and nonce else None

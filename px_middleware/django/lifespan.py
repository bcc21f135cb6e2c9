"""``with_lifespan``: delivery at shutdown for Django under ASGI.

    application = with_lifespan(get_asgi_application())     # asgi.py

Django's ASGI handler refuses the ``lifespan`` protocol, and uvicorn (since 0.29)
re-raises SIGTERM after its graceful shutdown, so the process dies of the signal and
``atexit`` hooks never run: events still queued would be lost. This wrapper answers
``lifespan`` itself and, at ``lifespan.shutdown``, delivers what the process captured
(``shutdown_all``, bounded by ``SHUTDOWN_TIMEOUT``) before the server goes on.
Everything else goes to Django untouched. Under WSGI no wrapper is needed: gunicorn's
workers exit the interpreter normally, and ``atexit`` flushes.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from starlette.types import ASGIApp, Receive, Scope, Send

from px_middleware.config import SHUTDOWN_TIMEOUT
from px_middleware.delivery import shutdown_all

__all__ = ["with_lifespan"]


def with_lifespan(application: ASGIApp) -> ASGIApp:
    """Wrap Django's ASGI application so a server's shutdown flushes PX delivery."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await application(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                # Off the event loop: delivery joins its threads and may wait on PX.
                await sync_to_async(shutdown_all, thread_sensitive=False)(SHUTDOWN_TIMEOUT)
                await send({"type": "lifespan.shutdown.complete"})
                return

    return app

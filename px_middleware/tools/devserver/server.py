"""uvicorn, adapted: announce readiness, and exit 0 on SIGTERM.

Imported only by ``main``: uvicorn is needed to run the stand-in, not to build it
with ``create_app``.
"""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp


class ReadyServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, ready_line: str) -> None:
        super().__init__(config)
        self.ready_line = ready_line

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(self.ready_line, flush=True)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # uvicorn re-raises SIGTERM after its graceful shutdown, which would end the
        # process with -15; a stand-in stopped on purpose exits 0 instead.
        handled = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(app: ASGIApp, sock: socket.socket, ready_line: str) -> None:
    """Serve on an already bound socket until SIGINT/SIGTERM."""
    config = uvicorn.Config(
        app,
        http="h11",  # the connection-drop fault relies on h11's request cycle
        loop="asyncio",
        lifespan="on",
        access_log=False,  # /_control/requests and the dashboard log REST calls
        log_level="warning",
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=3,
    )
    ReadyServer(config, ready_line).run(sockets=[sock])

"""A real Redis for tests: Debian's ``redis-server``, one per test session.

Fixture ``redis_server`` (session scope) starts it on a free loopback port with
``--save "" --appendonly yes`` in a temporary directory, so a restart replays the
append-only file just as a production restart would, and stops it by PID at the end.
Fixture ``redis_url`` (per test) empties it first and gives its URL. Tests that stop,
kill or restart the server leave it running again (``start`` reuses port and files).

    def test_x(redis_url: str, redis_server: RedisServer) -> None:
        redis_server.stop(); ...; redis_server.start()

No fakes: fakeredis cannot run Lua faithfully, and the budget is a Lua script.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.servers import HOST, free_port

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_DEADLINE = 20.0


class RedisServer:
    """One ``redis-server`` process; ``start`` after ``stop``/``kill`` reuses port and AOF."""

    def __init__(self, directory: Path, *, port: int | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def command(self) -> list[str]:
        return [
            REDIS_SERVER,
            "--bind", HOST, "--port", str(self.port), "--dir", str(self.directory),
            "--save", "", "--appendonly", "yes", "--daemonize", "no",
            "--logfile", str(self.log_path), "--protected-mode", "no",
        ]  # fmt: skip

    def start(self) -> None:
        if self.running:
            raise RuntimeError("redis-server is already running")
        if not os.path.exists(REDIS_SERVER):
            raise RuntimeError(
                "redis-server is not installed (apt-get install redis-server; .ci/run does it)"
            )
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + START_DEADLINE
        client = redis.Redis(host=HOST, port=self.port, socket_timeout=1.0)
        try:
            while True:
                try:
                    # LOADING (replaying the AOF) is an error reply: ready means PONG.
                    if client.ping():
                        return
                except redis.RedisError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"redis-server did not start; log:\n{self.log()}")
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.process.wait(timeout=0.05)
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: Redis fsyncs the append-only file and exits (a clean restart)."""
        self._signal(signal.SIGTERM, timeout)

    def kill(self) -> None:
        self._signal(signal.SIGKILL, 10.0)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _signal(self, sig: signal.Signals, timeout: float) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=5.0)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    directory = Path(tempfile.mkdtemp(prefix="px-redis-"))
    server = RedisServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session's Redis, running and empty, for one test."""
    if not redis_server.running:
        redis_server.start()
    with contextlib.closing(redis_server.client()) as client:
        client.flushall()
    yield redis_server.url

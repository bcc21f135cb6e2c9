"""Run the PX devserver (``python -m px_middleware devserver``) as a subprocess in tests.

Fixture ``devserver``: a fresh server per test, its SQLite file in ``tmp_path``.
pytest finds fixtures by name in a conftest's or test module's namespace. The clean
way is one import in ``tests/conftest.py``, which makes it available to every test::

    from tests.support.devserver import devserver  # noqa: F401

    # in any test module:
    from tests.support.devserver import DevServer

    def test_something(devserver: DevServer) -> None:
        events = devserver.wait_for(lambda: devserver.events(eventName="page_view"))

Importing the fixture into a test module works too, but ruff then needs ``# noqa:
F401`` on the import and ``# noqa: F811`` on every test that takes the argument.
For other settings (a low rate limit, base64 hashes) use ``DevServer`` directly::

    with DevServer(tmp_path / "px.sqlite3", rate_limit=5) as server: ...

Reading state goes through ``/_control``, which is never rate limited, logged or
subject to injected faults, so the helper does not disturb the scenario it observes.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
import pytest

T = TypeVar("T")

_READY = re.compile(r"PX devserver listening on (http://\S+)")
_REPO_ROOT = Path(__file__).resolve().parents[2]


class DevServer:
    """One devserver process; ``start`` again after ``stop``/``kill`` reuses port and db."""

    def __init__(
        self,
        db_path: str | Path,
        *,
        port: int | None = None,
        api_key: str = "test-api-key",
        hmac_secret: str = "test-hmac-secret",
        rate_limit: float = 1000.0,
        hash_encoding: str = "hex",
        hash_field: str = "id",
        host: str = "127.0.0.1",
        startup_timeout: float = 20.0,
        accept_event_lists: bool = True,
    ) -> None:
        self.db_path = Path(db_path)
        self.port = port
        self.host = host
        self.api_key = api_key
        self.hmac_secret = hmac_secret
        self.rate_limit = rate_limit
        self.hash_encoding = hash_encoding
        self.hash_field = hash_field
        self.startup_timeout = startup_timeout
        self.accept_event_lists = accept_event_lists
        #: Exit code of the last process once stopped (0 after a clean SIGTERM).
        self.returncode: int | None = None
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._client: httpx.Client | None = None
        # Server stdout+stderr, for failure messages; bounded for long runs.
        self._output: collections.deque[str] = collections.deque(maxlen=2000)

    # -- addresses --------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("the devserver has no port yet: call start() first")
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return self.base_url + "/v1"

    @property
    def sdk_url(self) -> str:
        return self.base_url + "/api/aptrinsic.js"

    @property
    def api_headers(self) -> dict[str, str]:
        """Headers for direct calls to the REST API."""
        return {"X-APTRINSIC-API-KEY": self.api_key}

    @property
    def output(self) -> str:
        """What the server printed (stdout and stderr), for debugging."""
        return "".join(self._output)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- process ----------------------------------------------------------------------
    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "px_middleware", "devserver",
            "--host", self.host,
            "--port", str(self.port or 0),  # 0: the server binds a free port and prints it
            "--db", str(self.db_path),
            "--api-key", self.api_key,
            "--hmac-secret", self.hmac_secret,
            "--rate-limit", str(self.rate_limit),
            "--hash-encoding", self.hash_encoding,
            "--hash-field", self.hash_field,
            "--accept-event-lists" if self.accept_event_lists else "--no-accept-event-lists",
        ]  # fmt: skip

    def start(self) -> None:
        if self.running:
            raise RuntimeError("the devserver is already running")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")]))
        process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=env,
        )
        self._process = process
        ready = threading.Event()
        urls: list[str] = []
        self._reader = threading.Thread(
            target=self._read_output, args=(process, ready, urls), daemon=True
        )
        self._reader.start()
        # The ready line is printed once the socket accepts connections; EOF (the
        # process died) also wakes us.
        if not ready.wait(self.startup_timeout) or not urls:
            self._terminate(signal.SIGKILL)
            raise RuntimeError(
                f"the devserver did not start within {self.startup_timeout}s "
                f"(exit code {process.returncode}); output:\n{self.output}"
            )
        self.port = int(urls[0].rsplit(":", 1)[1])
        self._client = httpx.Client(base_url=self.base_url, timeout=10.0, trust_env=False)
        self._check(self._client.get("/healthz"))

    def _read_output(
        self, process: subprocess.Popen[str], ready: threading.Event, urls: list[str]
    ) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self._output.append(line)
            match = _READY.search(line)
            if match and not urls:
                urls.append(match.group(1))
                ready.set()
        ready.set()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait for a graceful exit (SIGKILL after ``timeout``)."""
        self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: the abrupt end a crash or an OOM kill would be."""
        self._terminate(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _terminate(self, sig: signal.Signals, timeout: float = 10.0) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.returncode = process.returncode
        if self._reader is not None:
            self._reader.join(5.0)
            self._reader = None
        if process.stdout is not None:
            process.stdout.close()

    def __enter__(self) -> DevServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- control API --------------------------------------------------------------------
    @property
    def client(self) -> httpx.Client:
        """An httpx client bound to ``base_url`` (no API key, no proxies from the env)."""
        if self._client is None:
            raise RuntimeError("the devserver is not running: call start() first")
        return self._client

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_error:
            raise AssertionError(
                f"{response.request.method} {response.request.url.path} answered "
                f"{response.status_code}: {response.text}"
            )
        return response

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        return self._check(self.client.get(path, params=params)).json()

    def events(self, **filters: str) -> list[dict[str, Any]]:
        """Custom events received, in arrival order, duplicates included.

        Filters: ``eventName``, ``identifyId``, ``sessionId``, ``accountId``, ``eventId``.
        """
        result: list[dict[str, Any]] = self._get("/_control/events", filters)
        return result

    def users(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get("/_control/users")
        return result

    def accounts(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._get("/_control/accounts")
        return result

    def sdk_calls(self) -> list[dict[str, Any]]:
        """Calls the stand-in SDK reported: ``method``, ``args``, ``product_key``, ``url``,
        ``hash_valid`` (identify only: true, false, or null when no userHash), ``ts``."""
        result: list[dict[str, Any]] = self._get("/_control/sdk-calls")
        return result

    def requests(self) -> list[dict[str, Any]]:
        """REST calls received: ``method``, ``path``, ``query``, ``status`` (null when the
        connection was dropped by a fault), ``ts`` (epoch ms)."""
        result: list[dict[str, Any]] = self._get("/_control/requests")
        return result

    def faults(self, **plan: Any) -> None:
        """Replace the fault plan: ``fail_next``, ``status``, ``retry_after``,
        ``latency_ms``, ``close_next``; no arguments clears it."""
        self._check(self.client.post("/_control/faults", json=plan))

    def reset(self) -> None:
        """Wipe all stored data, faults and the rate limiter's state."""
        self._check(self.client.post("/_control/reset"))

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0) -> T:
        """Poll ``predicate`` until it returns something truthy, and return that."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")
            time.sleep(0.05)


@pytest.fixture
def devserver(tmp_path: Path) -> Iterator[DevServer]:
    with DevServer(tmp_path / "px-devserver.sqlite3") as server:
        yield server

"""Run real HTTP servers (gunicorn, waitress, wsgiref, uvicorn) as subprocesses in tests.

``run_server(argv, port)`` is the generic part: start ``argv``, wait until ``port``
accepts connections (polling with a deadline; it fails early, with the server's
output, when the process exits), stop it on exit. The others build ``argv``::

    with gunicorn("tests.support.wsgi_apps:wrapped") as server:
        response = raw_request(server.port, "/")   # .raw, .status, .headers, .body

    with uvicorn("examples.starlette_app:app") as server: ...

Servers run from the repository root, so ``module:attribute`` specs import as in
the tests. Their output goes to a file, not a pipe: a chatty server must never
block on a full pipe buffer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
#: Generous: a loaded CI machine may take seconds to import Flask and fork workers.
START_DEADLINE = 60.0


@dataclasses.dataclass
class Server:
    argv: list[str]
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log(self) -> str:
        """Everything the server printed so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")


def free_port() -> int:
    """A port nobody listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], deadline: float) -> None:
    """Return once ``port`` accepts a connection; raise if ``process`` dies or time is up."""
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing accepted connections on port {port} in time")
        # Wait on the process itself: returns at once if it died, else paces the poll.
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.05)
        if process.returncode is not None:
            raise RuntimeError(f"server exited with status {process.returncode}")


@contextlib.contextmanager
def run_server(
    argv: Sequence[str],
    port: int,
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path = REPO_ROOT,
    deadline: float = START_DEADLINE,
) -> Iterator[Server]:
    """Start ``argv`` (which must listen on ``port``); yield once it accepts connections."""
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
    environment.update(env or {})
    with tempfile.NamedTemporaryFile(prefix="server-", suffix=".log", delete=False) as log:
        log_path = Path(log.name)
        process = subprocess.Popen(
            list(argv), cwd=cwd, env=environment, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    server = Server(list(argv), port, process, log_path)
    try:
        try:
            wait_for_port(port, process, time.monotonic() + deadline)
        except (TimeoutError, RuntimeError) as exc:
            raise RuntimeError(f"{' '.join(argv)}: {exc}\n--- server output ---\n"
                               f"{server.log()}") from None
        yield server
    finally:
        _stop(process)
        log_path.unlink(missing_ok=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        # The whole session: gunicorn's workers must not outlive the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# -- the servers ----------------------------------------------------------------------
def gunicorn(app: str, *args: str, port: int | None = None,
             env: Mapping[str, str] | None = None) -> contextlib.AbstractContextManager[Server]:
    """gunicorn, one sync worker unless ``args`` say otherwise."""
    port = port or free_port()
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"{HOST}:{port}", "--workers", "1",
            "--worker-class", "sync", "--log-level", "warning", *args, app]
    return run_server(argv, port, env=env)


def waitress(app: str, *args: str, port: int | None = None,
             env: Mapping[str, str] | None = None) -> contextlib.AbstractContextManager[Server]:
    port = port or free_port()
    argv = [sys.executable, "-m", "waitress", f"--listen={HOST}:{port}", "--threads=4",
            *args, app]
    return run_server(argv, port, env=env)


_WSGIREF = """
import importlib, sys
from wsgiref.simple_server import WSGIRequestHandler, make_server
module, _, name = sys.argv[1].partition(":")
app = getattr(importlib.import_module(module), name)
class Quiet(WSGIRequestHandler):
    def log_message(self, *args): pass
make_server("{host}", int(sys.argv[2]), app, handler_class=Quiet).serve_forever()
"""


def wsgiref(app: str, *, port: int | None = None,
            env: Mapping[str, str] | None = None) -> contextlib.AbstractContextManager[Server]:
    """The standard library's reference server (HTTP/1.0, one request at a time)."""
    port = port or free_port()
    argv = [sys.executable, "-c", _WSGIREF.format(host=HOST), app, str(port)]
    return run_server(argv, port, env=env)


def uvicorn(app: str, *args: str, port: int | None = None,
            env: Mapping[str, str] | None = None) -> contextlib.AbstractContextManager[Server]:
    port = port or free_port()
    argv = [sys.executable, "-m", "uvicorn", "--host", HOST, "--port", str(port),
            "--log-level", "warning", *args, app]
    return run_server(argv, port, env=env)


# -- a client that shows the bytes ------------------------------------------------------
@dataclasses.dataclass
class RawResponse:
    """One HTTP response as it came off the socket."""

    raw: bytes
    status: int
    headers: list[tuple[str, str]]
    #: The body after de-chunking (what the app produced).
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)

    def header_all(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]

    def normalized(self) -> bytes:
        """The raw bytes with the ``Date`` line (the server's clock) blanked."""
        head, sep, body = self.raw.partition(b"\r\n\r\n")
        lines = [b"Date: -" if line.lower().startswith(b"date:") else line
                 for line in head.split(b"\r\n")]
        return b"\r\n".join(lines) + sep + body


def raw_request(port: int, path: str, *, method: str = "GET",
                headers: Mapping[str, str] | None = None, body: bytes = b"",
                timeout: float = 30) -> RawResponse:
    """Send one request with ``Connection: close`` and read the response to EOF.

    ``timeout`` only bounds a hung server; nothing here waits for time to pass.
    """
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(request_bytes(path, method=method, headers=headers, body=body))
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return parse_response(b"".join(chunks), head_only=method == "HEAD")


def request_bytes(path: str, *, method: str = "GET",
                  headers: Mapping[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_response(raw: bytes, *, head_only: bool = False) -> RawResponse:
    head, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = [(n.strip(), v.strip()) for n, _, v in (h.partition(":") for h in header_lines)]
    response = RawResponse(raw, int(status_line.split()[1]), headers, payload)
    if not head_only and (response.header("transfer-encoding") or "").lower() == "chunked":
        response.body = dechunk(payload)
    return response


def dechunk(payload: bytes) -> bytes:
    """The body of a ``Transfer-Encoding: chunked`` payload (trailers ignored)."""
    body: list[bytes] = []
    pos = 0
    while True:
        line_end = payload.index(b"\r\n", pos)
        size = int(payload[pos:line_end].split(b";")[0], 16)
        if size == 0:
            return b"".join(body)
        start = line_end + 2
        body.append(payload[start : start + size])
        pos = start + size + 2

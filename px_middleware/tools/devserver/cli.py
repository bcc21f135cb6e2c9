"""``python -m px_middleware devserver``: run the stand-in under uvicorn.

The listening socket is bound here, before uvicorn starts, so ``--port 0`` picks a
free port without a race and the ready line can name the port actually bound. That
line is printed only once the server accepts connections; test helpers wait for it.
"""

from __future__ import annotations

import argparse
import socket
import sys

from px_middleware.tools.devserver.app import (
    DEFAULT_API_KEY,
    DEFAULT_HMAC_SECRET,
    DEFAULT_RATE_LIMIT,
    create_app,
)

READY_LINE = "PX devserver listening on {url}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m px_middleware devserver",
        description="A local stand-in for Gainsight PX: REST API, web SDK and dashboard.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787, help="0 picks a free port")
    parser.add_argument(
        "--db",
        default="px-devserver.sqlite3",
        help="SQLite file, or :memory: (default: %(default)s)",
    )
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--hmac-secret", default=DEFAULT_HMAC_SECRET)
    parser.add_argument("--hash-encoding", choices=("hex", "base64"), default="hex")
    parser.add_argument("--hash-field", choices=("id", "email"), default="id")
    parser.add_argument(
        "--rate-limit", type=float, default=DEFAULT_RATE_LIMIT, help="API requests per second"
    )
    parser.add_argument(
        "--accept-event-lists",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="take a list of events in one POST (PX documents one event per request)",
    )
    return parser


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not the default 0: asyncio only sets TCP_NODELAY on accepted sockets
    # whose proto says TCP, and without it every response pays a 40 ms delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    # Restarting on the same port must work while old connections sit in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.rate_limit <= 0:
        print("--rate-limit must be positive", file=sys.stderr)
        return 2
    try:
        from px_middleware.tools.devserver.server import serve
    except ImportError:
        print("the devserver needs uvicorn: pip install uvicorn", file=sys.stderr)
        return 2
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    host, port = sock.getsockname()[:2]
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    app = create_app(
        args.db,
        api_key=args.api_key,
        hmac_secret=args.hmac_secret,
        hash_encoding=args.hash_encoding,
        hash_field=args.hash_field,
        rate_limit=args.rate_limit,
        accept_event_lists=args.accept_event_lists,
    )
    print(f"REST API {url}/v1 (X-APTRINSIC-API-KEY: {args.api_key})", file=sys.stderr)
    print(f"web SDK {url}/api/aptrinsic.js · dashboard {url}/", file=sys.stderr)
    with sock:
        serve(app, sock, READY_LINE.format(url=url))
    return 0

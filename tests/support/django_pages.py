"""Bodies of the Django test pages, importable without Django settings."""

from __future__ import annotations

from collections.abc import Iterator

HEAD = b'<!doctype html><html><head><meta charset="utf-8"><title>streamed</title></head>'
ROWS = [b"<p>row %d</p>" % i for i in range(50)]
PAGE = b"<!doctype html><html><head><title>file</title></head><body>file</body></html>"


def chunks() -> Iterator[bytes]:
    yield HEAD
    yield b"<body>"
    yield from ROWS
    yield b"</body></html>"

"""Progress on stderr: a redrawn bar on a terminal, periodic plain lines in logs.

The reporter runs in its own thread and only reads counters, so a stalled load (PX
answering 429 for a while) still shows a live, falling rate instead of freezing.
ETA comes from how far into the file the reader is (bytes), so no pre-counting pass
over a large file is needed.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import TextIO


@dataclasses.dataclass
class Counts:
    created: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0

    @property
    def done(self) -> int:
        return self.created + self.updated + self.skipped + self.failed

    def summary(self) -> str:
        return (
            f"created {self.created:,}, updated {self.updated:,}, "
            f"skipped {self.skipped:,}, failed {self.failed:,}"
        )


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    def __init__(
        self,
        stream: TextIO,
        counts: Counts,
        position: Callable[[], float],
        *,
        tty: bool | None = None,
        interval: float | None = None,
    ) -> None:
        self._stream = stream
        self._counts = counts
        self._position = position
        self._tty = stream.isatty() if tty is None else tty
        self._interval = interval if interval is not None else (0.2 if self._tty else 10.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = time.monotonic()
        self._start_position = 0.0

    def start(self) -> None:
        self._start = time.monotonic()
        self._start_position = self._position()
        self._thread = threading.Thread(target=self._run, name="px-load-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._tty:
            self._stream.write("\r" + self.line() + "\n")
            self._stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            text = self.line()
            self._stream.write(("\r" + text + "\x1b[K") if self._tty else (text + "\n"))
            self._stream.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def line(self) -> str:
        elapsed = max(self.elapsed(), 1e-9)
        done = self._counts.done
        rate = done / elapsed
        pos = self._position()
        progressed = pos - self._start_position
        remaining = (1.0 - pos) * elapsed / progressed if progressed > 0 else None
        eta = _clock(remaining) if remaining is not None else "?"
        stats = f"{done:,} rows  {rate:,.0f} rows/s  ETA {eta}  ({self._counts.summary()})"
        if not self._tty:
            return f"px load: {pos:.1%} {stats}"
        width = 24
        filled = int(pos * width)
        return f"[{'#' * filled}{'.' * (width - filled)}] {pos:6.1%}  {stats}"

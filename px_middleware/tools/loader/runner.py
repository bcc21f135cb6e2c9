"""The load itself: read, validate, send concurrently, record every outcome.

The main thread streams the file and builds request bodies; a few worker threads send
them, each taking the next unit any worker may send. Memory stays flat whatever the
file size because the pending units are bounded: the reader blocks when PX is slower
than the file.

Rows for the same user or account are sent one at a time, in file order (a key is
"busy" while one of its rows is pending or in flight; its later rows wait beside it),
so a file that updates one id twice applies the updates in order. A slow or retrying
row holds only its own id and its worker: the other workers go on with other ids.

Each finished unit updates the counters, the errors file and the resume tracker under
one lock. The state file is saved at most ``SAVE_EVERY`` seconds or ``SAVE_ROWS`` rows
apart (and at the end), not after every row. A kill therefore re-sends at most those
rows on ``--resume``, which is harmless for users and accounts: an upsert of a row PX
already has finds it and updates it (PUT), never a second create. Events have no such
guard, so after an acknowledged events batch the state is saved at once.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import threading
import time
from typing import Any, TextIO

from px_middleware.tools.loader.errorfile import ErrorFile
from px_middleware.tools.loader.mapping import Plan
from px_middleware.tools.loader.progress import Counts
from px_middleware.tools.loader.reader import Record, Source, SourceError
from px_middleware.tools.loader.sender import Fatal, Mode, Outcome, Stopped, UnitSender
from px_middleware.tools.loader.state import AckTracker, StateFile

#: Row problems printed to stderr before the rest only go to the errors file.
MAX_REPORTED = 20
#: Units waiting to be sent, per worker, before the reader blocks.
_PENDING_PER_WORKER = 16
SAVE_EVERY = 1.0
SAVE_ROWS = 500

Unit = list[tuple[Record, dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class Settings:
    mode: Mode = "upsert"
    workers: int = 4
    #: Events per POST; for users/accounts >1 turns on batched creates.
    batch_size: int = 1
    resume: bool = False


@dataclasses.dataclass
class Result:
    counts: Counts
    resumed_from: int = 0
    interrupted: bool = False
    fatal: str | None = None
    complete: bool = False


class Reporter:
    """Row-level problems on stderr, capped so a broken file does not flood a terminal."""

    def __init__(self, source_name: str, stream: TextIO) -> None:
        self._name = source_name
        self._stream = stream
        self._lock = threading.Lock()
        self.reported = 0
        self.suppressed = 0

    def row(self, record: Record, message: str) -> None:
        with self._lock:
            if self.reported >= MAX_REPORTED:
                self.suppressed += 1
                return
            self.reported += 1
            self._stream.write(f"{self._name} row {record.row}: {message}\n")


def row_problems(plan: Plan, record: Record) -> tuple[dict[str, Any], str | None]:
    """The body for a record, or the reason it cannot be sent (every bad cell named)."""
    if record.problem:
        return {}, record.problem
    body, problems = plan.build(record.ordinal, record.values)
    if problems:
        return body, "; ".join(f"column {col!r}: {reason}" for col, reason in problems)
    return body, None


def dry_run(source: Source, plan: Plan, mode: Mode, out: TextIO, reporter: Reporter) -> Counts:
    """Validate every row and print what would be sent; no network, no files written."""
    counts = Counts()
    kind = plan.schema.kind
    op = "send event" if kind == "events" else f"{mode} {kind[:-1]}"
    for record in source.records():
        body, problem = row_problems(plan, record)
        if problem:
            counts.failed += 1
            reporter.row(record, problem)
            continue
        counts.skipped += 1  # "would be sent"; the CLI prints it as such
        out.write(json.dumps({"row": record.row, "op": op, "body": body}) + "\n")
    return counts


class WorkPool:
    """Pending units for any worker, with per-key order: one unit of a key at a time."""

    def __init__(self, limit: int) -> None:
        lock = threading.Lock()
        # Two conditions on one lock: a finished unit wakes one worker and the reader,
        # not every thread (which would only fight over the GIL).
        self._has_work = threading.Condition(lock)
        self._has_room = threading.Condition(lock)
        self._limit = limit
        self._pending = 0
        self._ready: collections.deque[tuple[str | None, Unit]] = collections.deque()
        #: Keys with a unit ready or in flight -> their later units, in file order.
        self._waiting: dict[str, collections.deque[Unit]] = {}
        self._closed = False

    def put(self, key: str | None, unit: Unit, stop: threading.Event) -> bool:
        """Queue a unit, waiting while too many are pending; ``False`` once stopped."""
        with self._has_room:
            while self._pending >= self._limit:
                if stop.is_set():
                    return False
                self._has_room.wait(0.2)
            self._pending += 1
            if key is not None and key in self._waiting:
                self._waiting[key].append(unit)
            else:
                if key is not None:
                    self._waiting[key] = collections.deque()
                self._ready.append((key, unit))
                self._has_work.notify()
            return True

    def take(self) -> tuple[str | None, Unit] | None:
        """The next unit that may be sent now, or ``None`` when closed and drained."""
        with self._has_work:
            while not self._ready:
                if self._closed and not self._pending:
                    return None
                self._has_work.wait()
            return self._ready.popleft()

    def done(self, key: str | None) -> None:
        """A unit of ``key`` finished: its next unit (if any) may go."""
        with self._has_work:
            self._pending -= 1
            if key is not None:
                later = self._waiting[key]
                if later:
                    self._ready.append((key, later.popleft()))
                    self._has_work.notify()
                else:
                    del self._waiting[key]
            if self._closed and not self._pending:
                self._has_work.notify_all()  # idle workers may end now
            self._has_room.notify()

    def close(self) -> None:
        with self._has_work:
            self._closed = True
            self._has_work.notify_all()


class Loader:
    def __init__(
        self,
        source: Source,
        plan: Plan,
        sender: UnitSender,
        errors: ErrorFile,
        state: StateFile,
        settings: Settings,
        reporter: Reporter,
        counts: Counts | None = None,
    ) -> None:
        self.source = source
        self.plan = plan
        self.sender = sender
        self.errors = errors
        self.state = state
        self.settings = settings
        self.reporter = reporter
        self.counts = counts or Counts()
        self._gate = sender.gate
        self._lock = threading.Lock()
        self._tracker = AckTracker()
        self._fatal: str | None = None
        self._crash: BaseException | None = None
        self._pool = WorkPool(_PENDING_PER_WORKER * settings.workers)
        self._saved_at = time.monotonic()
        self._unsaved = 0

    # -- main thread ----------------------------------------------------------------------
    def run(self) -> Result:
        start, done = 0, set[int]()
        if self.settings.resume:
            saved = self.state.load()
            if saved is not None:
                start, done = saved
        self._tracker = AckTracker(start, done)
        result = Result(self.counts, resumed_from=start)
        threads = [
            threading.Thread(target=self._work, name=f"px-load-{i}", daemon=True)
            for i in range(self.settings.workers)
        ]
        for t in threads:
            t.start()
        try:
            try:
                self._feed(start)
            except SourceError as exc:  # the file broke mid-way: finish what was sent
                self._fatal = str(exc)
            self._pool.close()
            for t in threads:
                t.join()
        except KeyboardInterrupt:
            result.interrupted = True
            self._gate.stop.set()
            self._pool.close()  # workers drain the pool without sending
            for t in threads:  # in-flight requests finish and are recorded
                t.join()
        finally:
            self._gate.stop.set()
            self.errors.close()
        if self._crash is not None:
            raise self._crash
        result.fatal = self._fatal
        result.complete = not result.interrupted and self._fatal is None
        with self._lock:
            # Kept after a complete load too: --resume then sends only rows appended since.
            self.state.save(self._tracker)
        return result

    def _feed(self, start: int) -> None:
        batch_size = self._unit_size()
        batch: Unit = []
        for record in self.source.records(start):
            if self._gate.stop.is_set():
                return
            with self._lock:
                self._tracker.issue(record.ordinal)
                if self._tracker.already_done(record.ordinal):  # sent before a crash
                    self._tracker.finish(record.ordinal)
                    continue
            body, problem = row_problems(self.plan, record)
            if problem is not None:
                self.reporter.row(record, problem)
                with self._lock:
                    self._record(record, Outcome("failed", problem), report=False)
                    self._maybe_save()
                continue
            if batch_size == 1:
                self._submit([(record, body)])
                continue
            batch.append((record, body))
            if len(batch) >= batch_size:
                self._submit(batch)
                batch = []
        if batch:
            self._submit(batch)

    def _unit_size(self) -> int:
        if self.plan.schema.kind == "events":
            return max(1, self.settings.batch_size)
        # Batched creates only make sense when missing records may be created.
        return max(1, self.settings.batch_size) if self.settings.mode == "upsert" else 1

    def _submit(self, unit: Unit) -> None:
        key = None
        if len(unit) == 1 and self.plan.schema.kind != "events":
            key = str(unit[0][1].get(self.plan.schema.key))
        self._pool.put(key, unit, self._gate.stop)

    # -- workers --------------------------------------------------------------------------
    def _work(self) -> None:
        while (taken := self._pool.take()) is not None:
            key, unit = taken
            try:
                self._work_on(unit)
            finally:
                self._pool.done(key)

    def _work_on(self, unit: Unit) -> None:
        if self._gate.stop.is_set():
            return  # drain without sending; these rows stay unacknowledged
        try:
            outcomes = self._send(unit)
        except Stopped:
            return
        except Fatal as exc:
            self._fatal = str(exc)
            self._gate.stop.set()
            return
        except BaseException as exc:  # a bug: stop cleanly, re-raise in the main thread
            self._crash = exc
            self._gate.stop.set()
            return
        with self._lock:
            for (record, _), outcome in zip(unit, outcomes, strict=True):
                self._record(record, outcome)
            if self.plan.schema.kind == "events":
                self._save()  # a re-sent event could be a duplicate: never re-send one
            else:
                self._maybe_save()

    def _maybe_save(self) -> None:
        """Save the state if it is ``SAVE_EVERY`` seconds or ``SAVE_ROWS`` rows old."""
        self._unsaved += 1
        if self._unsaved >= SAVE_ROWS or time.monotonic() - self._saved_at >= SAVE_EVERY:
            self._save()

    def _save(self) -> None:
        self.state.save(self._tracker)
        self._saved_at = time.monotonic()
        self._unsaved = 0

    def _send(self, unit: Unit) -> list[Outcome]:
        bodies = [body for _, body in unit]
        if self.plan.schema.kind == "events":
            return self.sender.send_events(bodies)
        if len(bodies) > 1:
            return self.sender.create_many(bodies)
        return [self.sender.send_one(bodies[0])]

    def _record(self, record: Record, outcome: Outcome, *, report: bool = True) -> None:
        """Count one finished record; the caller holds the lock and saves the state."""
        if outcome.result == "failed":
            self.errors.write(record, outcome.message)
            if report:
                self.reporter.row(record, outcome.message)
        setattr(self.counts, outcome.result, getattr(self.counts, outcome.result) + 1)
        self._tracker.finish(record.ordinal)

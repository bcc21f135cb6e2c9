"""The load itself: read, validate, send concurrently, record every outcome.

The main thread streams the file and builds request bodies; a few worker threads send
them. Memory stays flat whatever the file size because each worker has a small
bounded queue: the reader blocks when PX is slower than the file.

Rows for the same user or account always go to the same worker, in file order, so a
file that updates one id twice applies the updates in order. Each finished unit
updates the counters, the errors file and the resume state together under one lock,
and the state is saved right then, so a kill at any moment loses at most the requests
that were in flight.
"""

from __future__ import annotations

import dataclasses
import json
import queue
import threading
from typing import Any, TextIO

from px_middleware.tools.loader.errorfile import ErrorFile
from px_middleware.tools.loader.mapping import Plan
from px_middleware.tools.loader.progress import Counts
from px_middleware.tools.loader.reader import Record, Source
from px_middleware.tools.loader.sender import Fatal, Mode, Outcome, Stopped, UnitSender
from px_middleware.tools.loader.state import AckTracker, StateFile

#: Row problems printed to stderr before the rest only go to the errors file.
MAX_REPORTED = 20
_QUEUE_UNITS = 8

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
        self._queues: list[queue.Queue[Unit | None]] = [
            queue.Queue(_QUEUE_UNITS) for _ in range(settings.workers)
        ]
        self._next_queue = 0

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
            threading.Thread(target=self._work, args=(q,), name=f"px-load-{i}", daemon=True)
            for i, q in enumerate(self._queues)
        ]
        for t in threads:
            t.start()
        try:
            self._feed(start)
            for q in self._queues:
                self._put(q, None)
            for t in threads:
                t.join()
        except KeyboardInterrupt:
            result.interrupted = True
            self._gate.stop.set()
            for q in self._queues:  # workers drain their queues without sending
                self._put(q, None)
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
                    self.state.save(self._tracker)
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
        if len(unit) == 1 and self.plan.schema.kind != "events":
            # Same key, same worker: updates to one id are applied in file order.
            key = str(unit[0][1].get(self.plan.schema.key))
            q = self._queues[hash(key) % len(self._queues)]
        else:
            q = self._queues[self._next_queue]
            self._next_queue = (self._next_queue + 1) % len(self._queues)
        self._put(q, unit)

    def _put(self, q: queue.Queue[Unit | None], item: Unit | None) -> None:
        while True:
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                if self._gate.stop.is_set() and item is not None:
                    return

    # -- workers --------------------------------------------------------------------------
    def _work(self, q: queue.Queue[Unit | None]) -> None:
        while True:
            unit = q.get()
            if unit is None:
                return
            if self._gate.stop.is_set():
                continue  # drain without sending; these rows stay unacknowledged
            try:
                outcomes = self._send(unit)
            except Stopped:
                continue
            except Fatal as exc:
                self._fatal = str(exc)
                self._gate.stop.set()
                continue
            except BaseException as exc:  # a bug: stop cleanly, re-raise in the main thread
                self._crash = exc
                self._gate.stop.set()
                continue
            with self._lock:
                for (record, _), outcome in zip(unit, outcomes, strict=True):
                    self._record(record, outcome)
                self.state.save(self._tracker)

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

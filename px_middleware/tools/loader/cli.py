"""``python -m px_middleware load``: argument parsing, set-up checks, the summary.

Everything that can be checked before the first request is checked here (mapping,
columns, time zone, API key, product key), so a mistake costs seconds, not a
half-loaded tenant. The API key is read from ``PX_API_KEY`` or a file, never from a
flag, so it does not end up in shell history or ``ps`` output.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import httpx

from px_middleware.config import API_HOSTS, LOCAL_BASE_URL
from px_middleware.delivery.ratelimit import TokenBucket
from px_middleware.delivery.retry import classify
from px_middleware.rest import PXAPIError, PXRestClient
from px_middleware.tools.loader.errorfile import ErrorFile, default_path
from px_middleware.tools.loader.fields import KINDS, SCHEMAS, Kind, Schema
from px_middleware.tools.loader.mapping import (
    MappingFile,
    Options,
    Plan,
    PlanError,
    build_plan,
    load_mapping,
)
from px_middleware.tools.loader.progress import Counts, Progress
from px_middleware.tools.loader.reader import Source, SourceError
from px_middleware.tools.loader.runner import Loader, Reporter, Settings, dry_run
from px_middleware.tools.loader.sender import Fatal, Gate, LimitedTransport, UnitSender
from px_middleware.tools.loader.state import StateError, StateFile
from px_middleware.tools.loader.values import ATTR_TYPES, AttrType, timezone

EXIT_OK, EXIT_FAILED_ROWS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A problem with the command line or the environment: exit 2 before any request."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m px_middleware load",
        description="Bulk-upsert users or accounts, or send custom events, from CSV or JSONL "
        "to Gainsight PX. The API key comes from PX_API_KEY (or --api-key-file).",
    )
    p.add_argument("kind", choices=KINDS)
    p.add_argument("file", type=Path, help="CSV with a header row, or JSONL (.jsonl/.ndjson)")
    p.add_argument("--map", type=Path, help="TOML mapping file ([columns], [types], ignore)")
    p.add_argument(
        "--dry-run", action="store_true", help="validate and print the bodies; send nothing"
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--insert-missing",
        dest="mode",
        action="store_const",
        const="upsert",
        help="create users/accounts that do not exist yet (default)",
    )
    mode.add_argument(
        "--update-only",
        dest="mode",
        action="store_const",
        const="update",
        help="only update existing users/accounts; missing ones are counted as skipped",
    )
    p.set_defaults(mode="upsert")
    p.add_argument(
        "--data-center",
        choices=("US", "EU", "US2", "local"),
        default=None,
        help=f"PX data center (default: PX_DATA_CENTER or US); local = {LOCAL_BASE_URL}/v1",
    )
    p.add_argument("--api-url", help="REST base URL including /v1 (default: PX_API_URL)")
    p.add_argument("--api-key-file", type=Path, help="read the API key from this file")
    p.add_argument("--product-key", help="product key for propertyKeys (default: PX_PRODUCT_KEY)")
    p.add_argument("--timezone", default="UTC", help="zone of dates without an offset (UTC)")
    p.add_argument(
        "--encoding",
        default="utf-8",
        help="text encoding of the file (utf-8; e.g. cp1252 for Excel on Windows)",
    )
    p.add_argument("--errors", type=Path, help="errors file (default: <file>.errors.csv)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue after the last acknowledged row (<file>.px-load-state.json)",
    )
    p.add_argument("--rate", type=float, default=150.0, help="requests per second (150)")
    p.add_argument("--workers", type=int, default=4, help="concurrent requests (4)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="events per request (default 100); for users/accounts N > 1 creates new records "
        "N per request, upserting row by row when PX refuses a batch (default 1)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return int(exc.code or 0)
    try:
        return run(args, os.environ, sys.stdout, sys.stderr)
    except UsageError as exc:
        print(f"px load: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("px load: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def run(args: argparse.Namespace, env: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    kind: Kind = args.kind
    schema = SCHEMAS[kind]
    if args.rate <= 0 or args.workers < 1 or (args.batch_size is not None and args.batch_size < 1):
        raise UsageError("--rate must be > 0, --workers and --batch-size at least 1")
    try:
        tz = timezone(args.timezone)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    mapping = _load_mapping(args.map)
    product_key = args.product_key or env.get("PX_PRODUCT_KEY") or None
    if not product_key:  # PX requires it on every create: check before any request
        raise UsageError("set PX_PRODUCT_KEY (or pass --product-key): PX requires it")
    options = Options(tz=tz, product_key=product_key, create=args.mode == "upsert")
    api_key = _api_key(args, env, required=not args.dry_run)

    try:
        source = Source(args.file, encoding=args.encoding)
    except SourceError as exc:
        raise UsageError(str(exc)) from None
    with source:
        gate = Gate()
        limiter = TokenBucket(args.rate)
        transport = LimitedTransport(
            httpx.HTTPTransport(
                limits=httpx.Limits(
                    max_connections=args.workers, max_keepalive_connections=args.workers
                )
            ),
            limiter,
            gate,
        )
        base_url = _base_url(args, env)
        with PXRestClient(base_url, api_key or "-", transport=transport) as client:
            sender = UnitSender(client, kind, args.mode, gate)
            # The dry run reads the same metadata, so it judges rows as the real run will.
            remote = fetch_types(sender, schema, err) if api_key else None
            if api_key is None:
                print(
                    "px load: warning: no PX_API_KEY: the dry run uses built-in types and the "
                    "mapping's [types] only, and the real run may judge custom attributes "
                    "differently",
                    file=err,
                )
            plan = _plan(schema, source, mapping, options, remote, err)
            if args.dry_run:
                reporter = Reporter(str(args.file), err)
                counts = dry_run(source, plan, args.mode, out, reporter)
                print(
                    f"px load: dry run of {args.file}: {counts.skipped:,} rows valid, "
                    f"{counts.failed:,} invalid; nothing was sent",
                    file=err,
                )
                return EXIT_FAILED_ROWS if counts.failed else EXIT_OK
            return _load(args, source, plan, sender, err)


def _load(
    args: argparse.Namespace, source: Source, plan: Plan, sender: UnitSender, err: TextIO
) -> int:
    path: Path = args.file
    state = StateFile(path.with_name(f"{path.stem}.px-load-state.json"), path.resolve(), args.kind)
    if not args.resume and state.path.exists():
        print(
            f"px load: starting over; {state.path} is replaced (use --resume to continue)", file=err
        )
    errors_path = args.errors or default_path(path, source.format)
    errors = ErrorFile(errors_path, source.format, source.header, append=args.resume)
    default_batch = 100 if args.kind == "events" else 1
    settings = Settings(
        mode=args.mode,
        workers=args.workers,
        batch_size=args.batch_size or default_batch,
        resume=args.resume,
    )
    counts = Counts()
    reporter = Reporter(str(path), err)
    loader = Loader(source, plan, sender, errors, state, settings, reporter, counts)
    progress = Progress(err, counts, source.position)
    progress.start()
    try:
        result = loader.run()
    except StateError as exc:
        raise UsageError(str(exc)) from None
    finally:
        progress.stop()
    elapsed = progress.elapsed()
    if result.resumed_from:
        print(f"px load: resumed at record {result.resumed_from + 1:,}", file=err)
    if reporter.suppressed:
        print(f"px load: {reporter.suppressed:,} more failed rows not shown", file=err)
    rate = counts.done / elapsed if elapsed > 0 else 0.0
    print(
        f"px load: {args.kind} from {path}: {counts.summary()} "
        f"in {elapsed:.1f}s ({rate:,.0f} rows/s)",
        file=err,
    )
    if counts.failed:
        print(f"px load: failed rows and PX's reasons are in {errors_path}", file=err)
    if result.fatal:
        print(f"px load: stopped: {result.fatal}", file=err)
    if result.interrupted or result.fatal:
        print("px load: run again with --resume to continue where this run stopped", file=err)
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED_ROWS if counts.failed or result.fatal else EXIT_OK


def _plan(
    schema: Schema,
    source: Source,
    mapping: MappingFile | None,
    options: Options,
    remote: Mapping[str, AttrType] | None,
    err: TextIO,
) -> Plan:
    try:
        plan = build_plan(schema, source.header, mapping, options, remote)
    except PlanError as exc:
        raise UsageError(f"{source.path}: cannot load:\n  " + "\n  ".join(exc.problems)) from None
    for warning in plan.warnings:
        print(f"px load: warning: {warning}", file=err)
    return plan


def _load_mapping(path: Path | None) -> MappingFile | None:
    if path is None:
        return None
    try:
        return load_mapping(path)
    except PlanError as exc:
        raise UsageError("\n  ".join(exc.problems)) from None


def _api_key(
    args: argparse.Namespace, env: Mapping[str, str], *, required: bool
) -> str | None:
    if args.api_key_file is not None:
        try:
            key: str = args.api_key_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise UsageError(f"cannot read {args.api_key_file}: {exc.strerror}") from None
    else:
        key = env.get("PX_API_KEY", "").strip()
    if not key and required:
        raise UsageError("set PX_API_KEY (or pass --api-key-file) to load into PX")
    return key or None


def _base_url(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    url: str | None = args.api_url or env.get("PX_API_URL")
    if url:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"API URL {url!r} must start with http:// or https://")
        return url.rstrip("/")
    center = args.data_center or env.get("PX_DATA_CENTER") or "US"
    if center == "local":
        return LOCAL_BASE_URL + "/v1"
    if center not in API_HOSTS:
        raise UsageError(f"unknown data center {center!r}; use US, EU, US2 or local")
    return API_HOSTS[center]


def fetch_types(sender: UnitSender, schema: Schema, err: TextIO) -> dict[str, AttrType] | None:
    """Custom attribute types from PX's metadata, read with the load's retry policy.

    A wrong API key is reported here, before any row is sent. PX unreachable after the
    retries stops the load: guessing the types would retype every custom attribute.
    """
    if schema.metadata_entity is None:
        return None
    path = f"/admin/model/{schema.metadata_entity}/attributes"
    try:
        body: Any = sender.call(lambda: sender.client.request("GET", path)).json()
    except Fatal as exc:
        raise UsageError(str(exc)) from None
    except (PXAPIError, httpx.HTTPError) as exc:
        if isinstance(exc, PXAPIError) and classify(exc.status) == "drop":
            print(
                f"px load: warning: PX has no attribute metadata ({_short(exc)}); custom "
                "attributes are text unless the mapping's [types] says otherwise",
                file=err,
            )
            return None
        raise UsageError(
            f"cannot read attribute types from PX ({_short(exc)}); nothing was sent, "
            "try again later"
        ) from None
    except ValueError:
        body = None
    if not isinstance(body, list):
        raise UsageError("unexpected attribute metadata from PX; nothing was sent")
    types: dict[str, AttrType] = {}
    for item in body:
        if isinstance(item, dict) and isinstance(item.get("apiName"), str):
            attr_type = str(item.get("type", "")).upper()
            types[item["apiName"]] = _as_type(attr_type)
    return types


def _as_type(name: str) -> AttrType:
    for t in ATTR_TYPES:
        if t == name:
            return t
    return "STRING"  # PX has richer types (EMAIL, URL, ...); all travel as text


def _short(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__

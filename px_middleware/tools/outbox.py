"""``python -m px_middleware outbox {stats,dead,retry,purge}``: look at and act on an
outbox's backlog and dead letter.

The outbox is ``--path`` or ``PX_OUTBOX_PATH``, or with ``--redis-url`` /
``PX_REDIS_URL`` (and ``PX_API_KEY``, which names the subscription's keys) the Redis
streams, whose ``stats`` also show the pending items and the shared PX budget.
``retry`` puts dead items back to be sent again (by any running process that has the
outbox open, or the next to start); ``purge`` deletes them for good. Both take item
ids, or ``--all``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

from px_middleware.delivery.outbox import Outbox, SQLiteOutbox


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m px_middleware outbox", description=__doc__)
    parser.add_argument("--path", default=os.environ.get("PX_OUTBOX_PATH"), help="SQLite file")
    parser.add_argument("--redis-url", default=os.environ.get("PX_REDIS_URL"), help="Redis")
    parser.add_argument("--api-key", default=os.environ.get("PX_API_KEY"), help="with Redis")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("stats", help="items stored, claimed, parked, dead (JSON)")
    dead = sub.add_parser("dead", help="list the dead letter, oldest first")
    dead.add_argument("--limit", type=int, default=50)
    dead.add_argument("--json", action="store_true", help="one JSON object per line")
    for name, what in (("retry", "send again"), ("purge", "delete for good")):
        cmd = sub.add_parser(name, help=f"{what}: dead items by id, or --all")
        cmd.add_argument("ids", nargs="*", type=int)
        cmd.add_argument("--all", action="store_true")
    args = parser.parse_args(argv)
    box: Outbox
    budget: dict[str, object] | None = None
    if args.redis_url:
        from px_middleware.tools.redis_stats import open_redis

        if not args.api_key:
            parser.error("with Redis, pass --api-key or set PX_API_KEY (it names the keys)")
        box, budget = open_redis(args.redis_url, args.api_key)
    else:
        if not args.path:
            parser.error("no outbox: pass --path or set PX_OUTBOX_PATH (or PX_REDIS_URL)")
        if not os.path.exists(args.path):
            parser.error(f"{args.path} does not exist")
        box = SQLiteOutbox(args.path)
    try:
        if args.command == "stats":
            stats: dict[str, object] = dict(box.stats())
            if budget is not None:
                stats["budget"] = budget
            print(json.dumps(stats, sort_keys=True))
        elif args.command == "dead":
            for item in box.dead(args.limit):
                if args.json:
                    row = item._asdict()
                    row["data"] = json.loads(item.data)
                    print(json.dumps(row, ensure_ascii=False, sort_keys=True))
                    continue
                when = datetime.datetime.fromtimestamp(item.buried, datetime.timezone.utc)
                print(
                    f"#{item.id} {item.kind} {item.key} attempts={item.attempts} "
                    f"buried={when:%Y-%m-%dT%H:%M:%SZ} error={item.error}"
                )
        else:
            if not args.ids and not args.all:
                parser.error(f"{args.command}: give item ids, or --all")
            ids = None if args.all else args.ids
            count = box.revive(ids) if args.command == "retry" else box.purge(ids)
            verb = "put back to be sent" if args.command == "retry" else "deleted"
            print(f"{count} dead items {verb}")
    finally:
        box.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

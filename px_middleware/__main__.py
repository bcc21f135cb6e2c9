"""``python -m px_middleware {devserver|load|outbox} ...``"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m px_middleware {devserver|load|outbox} [options]")
        print("  devserver  run the local Gainsight PX stand-in")
        print("  load       bulk-upsert users, accounts or events from CSV/JSONL")
        print("  outbox     stats, dead letter, retry and purge of a delivery outbox")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "devserver":
        from px_middleware.tools.devserver import main as devserver_main

        return devserver_main(rest)
    if command == "load":
        from px_middleware.tools.loader import main as load_main

        return load_main(rest)
    if command == "outbox":
        from px_middleware.tools.outbox import main as outbox_main

        return outbox_main(rest)
    print(f"unknown command {command!r}; use devserver, load or outbox", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

"""``python -m px_middleware {devserver|load} ...``"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m px_middleware {devserver|load} [options]")
        print("  devserver  run the local Gainsight PX stand-in")
        print("  load       bulk-upsert users, accounts or events from CSV/JSONL")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "devserver":
        from px_middleware.tools.devserver import main as devserver_main

        return devserver_main(rest)
    if command == "load":
        from px_middleware.tools.loader import main as load_main

        return load_main(rest)
    print(f"unknown command {command!r}; use devserver or load", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

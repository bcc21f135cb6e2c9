"""Run every ``benchmarks/bench_*.py`` in turn: ``python -m benchmarks [name ...]``.

Each module exposes ``main() -> None`` and prints its own numbers. A benchmark that
fails prints its error and the next one still runs; the exit status says whether any
failed. Names (``core``, ``bench_core``) pick a subset.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path


def discover() -> list[str]:
    return sorted(path.stem for path in Path(__file__).parent.glob("bench_*.py"))


def main(argv: list[str]) -> int:
    names = discover()
    if argv:
        wanted = {arg if arg.startswith("bench_") else f"bench_{arg}" for arg in argv}
        unknown = wanted - set(names)
        if unknown:
            print(f"unknown benchmarks: {', '.join(sorted(unknown))}; have: {', '.join(names)}")
            return 2
        names = [name for name in names if name in wanted]
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        try:
            sys.argv = [f"benchmarks.{name}"]  # each parses its own (empty) arguments
            importlib.import_module(f"benchmarks.{name}").main()
        except (Exception, SystemExit):  # a broken benchmark must not hide the others
            failed.append(name)
            traceback.print_exc(file=sys.stdout)
        print(f"--- {name}: {time.perf_counter() - start:.1f} s", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

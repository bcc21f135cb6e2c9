"""The per-request overhead of ``bench_overhead``, counted in instructions, not timed.

    python -m benchmarks.bench_instructions [--only WSGI|ASGI|flask]

On a shared 2-core machine the timed ratios of ``bench_overhead`` swing by a fifth
from one run to the next. Valgrind's callgrind counts the instructions a process
runs, which is the same from run to run whatever else the machine does: each variant
runs in a child process under callgrind with 200 and with 600 requests, and the
difference over 400 is its instructions per request (start-up and warm-up cancel).
``PYTHONHASHSEED`` is fixed so that dict layouts, and so the counts, repeat.

An instruction is not a unit of time (a cache miss or a page fault costs many
cycles and counts as one), but it shows what changed in the work our code does, free
of noise. Block copies are counted as the CPU does them (``NO_REP_STRINGS``). The
last lines do the same for the examples' identified pages (Flask's dashboard,
Starlette's account page, in process): bare/wrapped is the throughput ratio a server
would see if the app were all it ran.
Prints, never asserts; without valgrind it says so and measures nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOW, HIGH = 200, 600
#: glibc copies and clears blocks of a few KiB with ``rep movsb``/``rep stosb``, which
#: valgrind counts once per byte: a 30 KB copy would count 30k instructions for what
#: the CPU does in under 0.5 us. With these thresholds glibc uses its vector loops,
#: counted once per 32 bytes, as the work is on the CPU. (Ignored off x86.)
NO_REP_STRINGS = ("glibc.cpu.x86_rep_movsb_threshold=0xffffffffffffffff:"
                  "glibc.cpu.x86_rep_stosb_threshold=0xffffffffffffffff")
VARIANTS = ("bare", "floor", "ours, events off", "ours, events on", "bare JSON",
            "ours JSON, events on")


def _child(kind: str, name: str, requests: int) -> None:
    """Run ``requests`` requests of one variant (after a warm-up of 100)."""
    if kind in ("flask", "starlette"):
        (_flask_pages if kind == "flask" else _starlette_pages)(name, requests)
        return
    from benchmarks import bench_overhead as bench

    if kind == "WSGI":
        app, path = bench.wsgi_variants()[name]
        bench.wsgi_round(app, path, 100)
        bench.wsgi_round(app, path, requests)
    else:
        app, path = bench.asgi_variants()[name]
        asyncio.run(bench.asgi_round(app, path, 100))
        asyncio.run(bench.asgi_round(app, path, requests))


def _flask_pages(name: str, requests: int) -> None:
    from werkzeug.test import EnvironBuilder

    from benchmarks.bench_wsgi import ENV, PAGE, _call, _login_cookie, bare_app, floor_app

    os.environ.update(ENV)
    from examples.flask_app import create_app

    app = {"bare": bare_app, "floor": floor_app, "wrapped": create_app}[name]()
    environ = EnvironBuilder(path=PAGE, headers=[("Cookie", _login_cookie(app))]).get_environ()
    for _ in range(100 + requests):
        _call(app.wsgi_app, environ)


def _starlette_pages(name: str, requests: int) -> None:
    from benchmarks.bench_asgi import ENV, _call, _login_cookie, floor_app

    os.environ.update(ENV)
    from examples.starlette_app import create_app

    async def pages() -> None:
        app = floor_app() if name == "floor" else create_app(px=name == "wrapped")
        cookie = await _login_cookie(create_app())
        for _ in range(100 + requests):
            await _call(app, cookie)

    asyncio.run(pages())


def _count(valgrind: str, kind: str, name: str, requests: int) -> int:
    command = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
               "-m", "benchmarks.bench_instructions", "--child", kind, name, str(requests)]
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT),
           "GLIBC_TUNABLES": NO_REP_STRINGS}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    match = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode or match is None:
        raise RuntimeError(f"{kind} {name!r} under callgrind failed:\n{done.stderr[-2000:]}")
    return int(match.group(1))


def _per_request(valgrind: str, kind: str, name: str) -> float:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:  # the two counts side by side
        low, high = pool.map(lambda n: _count(valgrind, kind, name, n), (LOW, HIGH))
    return (high - low) / (HIGH - LOW)


def measure(valgrind: str, kind: str) -> None:
    counts = {name: _per_request(valgrind, kind, name) for name in VARIANTS}
    unit = counts["floor"] - counts["bare"]
    print(f"{kind}: instructions per request ({LOW} and {HIGH} requests under callgrind)")
    for name, count in counts.items():
        line = f"  {name:22} {count:10,.0f}"
        if not name.startswith("bare"):
            base = counts["bare JSON" if "JSON" in name else "bare"]
            line += f"   overhead {count - base:9,.0f}   {(count - base) / unit:5.2f} floor units"
        print(line)


def measure_example(valgrind: str, kind: str) -> None:
    bare, floor, wrapped = (_per_request(valgrind, kind, name)
                            for name in ("bare", "floor", "wrapped"))
    page = "Flask example, GET /dashboard" if kind == "flask" else "Starlette example, GET /account"
    print(f"{page} in process, instructions per request:\n"
          f"  bare    {bare:10,.0f}\n"
          f"  floor   {floor:10,.0f}   +{(floor - bare) / bare:.1%}   "
          f"bare/floor {bare / floor:.3f}\n"
          f"  wrapped {wrapped:10,.0f}   +{(wrapped - bare) / bare:.1%}   "
          f"bare/wrapped {bare / wrapped:.3f} (the server target is >= 0.97)\n"
          f"  ours over this page: {(wrapped - bare) / (floor - bare):.2f} of its floor units")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", choices=("WSGI", "ASGI", "flask", "starlette"))
    parser.add_argument("--child", nargs=3, metavar=("KIND", "NAME", "REQUESTS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, name, requests = args.child
        _child(kind, name, int(requests))
        return
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        print("valgrind not found (apt-get install valgrind): nothing counted")
        return
    for kind in ("WSGI", "ASGI"):
        if args.only in (None, kind):
            measure(valgrind, kind)
    for kind in ("flask", "starlette"):
        if args.only in (None, kind):
            measure_example(valgrind, kind)


if __name__ == "__main__":
    main()

"""Where cold start's import time goes: ``python -X importtime``, many runs, medians.

Runs ``python -X importtime -c "import hecated.daemon"`` (what ``hecated
serve`` imports before it can answer) ``--runs`` times in fresh interpreters
and prints, per module of interest, the median *cumulative* microseconds (the
module and everything it imported first). Beside it, the same import with
``werkzeug.serving`` kept out (a stub put in ``sys.modules`` by this script
only, never by hecated) shows what Werkzeug's eager ``from .serving import
run_simple`` in ``werkzeug/__init__`` costs a daemon that never calls it; a
third column keeps ``werkzeug.test`` out as well (``from .test import Client``,
the other eager import there), leaving what routing, wrappers and exceptions,
the parts hecated uses, cost.

    .venv/bin/python bench/importtime.py [--runs 15] [--target hecated.daemon]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time

WATCH = (
    "hecated.daemon",
    "hecated.http.app",
    "hecated.http.server",
    "werkzeug",
    "werkzeug.serving",
    "http.server",
    "socketserver",
    "ssl",
    "werkzeug.test",
    "werkzeug.routing",
    "werkzeug.wrappers",
    "werkzeug.exceptions",
    "waitress",
    "watchdog.observers",
    "systemd.daemon",
    "hecated.core.index",
    "hecated.core.store",
    "tomllib",
    "json",
    "email.parser",
    "urllib.request",
    "http.cookiejar",
    "mimetypes",
    "hashlib",
    "http.client",
    "email",
    "watchdog",
    "sdnotify",
)
LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")
# Keeps werkzeug.serving out, for the "what it would save" column only.
NO_SERVING = (
    "import sys, types; m = types.ModuleType('werkzeug.serving'); "
    "m.run_simple = None; sys.modules['werkzeug.serving'] = m; "
)
# ... and werkzeug.test too (``from .test import Client``, also in werkzeug/__init__):
# what the parts hecated uses (routing, wrappers, exceptions) cost on their own.
NO_SERVING_TEST = NO_SERVING + (
    "t = types.ModuleType('werkzeug.test'); t.Client = None; sys.modules['werkzeug.test'] = t; "
)


def one(target: str, prelude: str = "") -> tuple[dict[str, int], float, dict[str, int]]:
    """Cumulative µs per module of one fresh import, the wall time, and self µs per module."""
    t0 = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"{prelude}import {target}"],
        capture_output=True,
        text=True,
        check=True,
    )
    wall = time.perf_counter() - t0
    cumulative: dict[str, int] = {}
    own: dict[str, int] = {}
    for match in LINE.finditer(res.stderr):
        cumulative.setdefault(match.group(4), int(match.group(2)))
        own.setdefault(match.group(4), int(match.group(1)))
    return cumulative, wall, own


def exclusive(full: list, without: list) -> tuple[int, float]:
    """Modules only the full import loads, and the median sum of their self times (ms).

    Robust where cumulative figures are not: a module that the stubbed import
    still loads (through another path) is not counted as saved.
    """
    kept = set().union(*(r[2] for r in without))
    only = set().union(*(r[2] for r in full)) - kept
    sums = [sum(v for k, v in r[2].items() if k in only) for r in full]
    return len(only), statistics.median(sums) / 1000


def bare_interpreter() -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--target", default="hecated.daemon")
    args = parser.parse_args()
    one(args.target)  # warm the page cache and the .pyc files
    runs, stub, stub2, bare = [], [], [], []
    for _ in range(args.runs):  # interleaved, so a burst of load falls on all alike
        runs.append(one(args.target))
        stub.append(one(args.target, NO_SERVING))
        stub2.append(one(args.target, NO_SERVING_TEST))
        bare.append(bare_interpreter())

    def med(samples: list[tuple[dict[str, int], float]], name: str) -> float | None:
        values = [r[0][name] for r in samples if name in r[0]]
        return statistics.median(values) / 1000 if values else None

    print(f"python -X importtime -c 'import {args.target}', median of {args.runs} runs (ms)\n")
    print(
        "| module | cumulative | without werkzeug.serving | without .serving and .test |\n"
        "|---|---|---|---|"
    )
    for name in WATCH:
        a, b, c = med(runs, name), med(stub, name), med(stub2, name)
        if a is None and b is None and c is None:
            continue
        cell = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        print(f"| `{name}` | {cell(a)} | {cell(b)} | {cell(c)} |")
    wall = statistics.median(r[1] for r in runs) * 1000
    wall_stub = statistics.median(r[1] for r in stub) * 1000
    wall_stub2 = statistics.median(r[1] for r in stub2) * 1000
    print(
        f"\nwall time of the whole process (exec, import, exit): {wall:.1f} ms; "
        f"without werkzeug.serving {wall_stub:.1f} ms; without .serving and .test "
        f"{wall_stub2:.1f} ms; "
        f"bare interpreter (`python -c pass`) {statistics.median(bare) * 1000:.1f} ms"
    )
    for label, without in (("werkzeug.serving", stub), ("werkzeug.serving and .test", stub2)):
        count, saved = exclusive(runs, without)
        print(
            f"- keeping {label} out spares {count} modules whose own import time is "
            f"{saved:.1f} ms (median of the self times summed)"
        )


if __name__ == "__main__":
    main()

"""Where cold start's import time goes: ``python -X importtime``, many runs, medians.

Runs what ``hecated serve`` imports before it can answer (``SERVE``: the command
line read as a plain ``serve`` is, then ``hecated.daemon``, with the cyclic
collector off as ``hecated_main`` has it) ``--runs`` times in fresh interpreters,
and prints:

- the median sum of the modules' *own* import times, split three ways: hecated's
  own modules, waitress, and the standard library (whatever else is loaded), with
  the wall time of the whole process beside ``python -c pass`` on the same
  interpreter;
- the modules with the largest own times (median), each with its group;
- for a few modules of interest, the median *cumulative* time (the module and
  everything it imported first).

Run it with the interpreter of the install to look at (``--python``): the pip
venv's ``bin/python``, or ``/usr/bin/python3`` for the .deb; the development venv's
own interpreter also pays for the editable finder (bench/installs.py).

    .venv/bin/python bench/importtime.py [--runs 15] [--python PATH] [--top 25]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time

# What ``hecated serve`` imports before its first answer (bench/cold_start.py's
# libraries child imports the same, less hecated's own modules).
SERVE = (
    "import gc\n"
    "gc.disable()\n"
    "from hecated.cli import flags\n"
    "flags(['serve'])\n"
    "import hecated.daemon\n"
)
WATCH = (
    "hecated.daemon",
    "hecated.http.server",
    "hecated.core.index",
    "hecated.core.config",
    "hecated.adapters.liveness",
    "hecated.wiring",
    "waitress",
    "dataclasses",
    "inspect",
    "logging",
    "pathlib",
    "typing",
    "socket",
    "json",
    "platform",
    "urllib.parse",
)
LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)")
Run = tuple[dict[str, int], dict[str, int], float]  # own µs, cumulative µs, wall s


def group(module: str) -> str:
    top = module.split(".")[0]
    return top if top in ("hecated", "waitress") else "stdlib"


def one(python: str) -> Run:
    """Own and cumulative µs per module of one fresh ``SERVE``, and its wall time (s)."""
    t0 = time.perf_counter()
    res = subprocess.run(
        [python, "-X", "importtime", "-c", SERVE], capture_output=True, text=True, check=True
    )
    wall = time.perf_counter() - t0
    own: dict[str, int] = {}
    cumulative: dict[str, int] = {}
    for match in LINE.finditer(res.stderr):
        own.setdefault(match.group(4), int(match.group(1)))
        cumulative.setdefault(match.group(4), int(match.group(2)))
    return own, cumulative, wall


def bare(python: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([python, "-c", "pass"], check=True)
    return time.perf_counter() - t0


def median_ms(values: list[float]) -> float:
    return statistics.median(values) / 1000 if values else 0.0


def report(runs: list[Run], walls: list[float]) -> tuple[str, dict[str, float]]:
    """The three groups' medians and the wall times; each module's median own time."""
    modules = sorted(set().union(*(r[0] for r in runs)))
    own = {m: median_ms([r[0].get(m, 0) for r in runs]) for m in modules}
    lines = ["| group | modules | own import time, ms (median of the sums) |", "|---|---|---|"]
    for name in ("hecated", "waitress", "stdlib"):
        members = [m for m in modules if group(m) == name]
        sums = [sum(r[0].get(m, 0) for m in members) for r in runs]
        lines.append(f"| {name} | {len(members)} | {median_ms(sums):.1f} |")
    wall = statistics.median(r[2] for r in runs) * 1000
    lines.append(
        f"\nwall time of the whole process (exec, imports, exit): {wall:.1f} ms; "
        f"`python -c pass` on the same interpreter: {statistics.median(walls) * 1000:.1f} ms\n"
    )
    return "\n".join(lines), own


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    one(args.python)  # warm the page cache and the .pyc files
    runs, walls = [], []
    for _ in range(args.runs):  # interleaved, so a burst of load falls on both alike
        runs.append(one(args.python))
        walls.append(bare(args.python))
    print(f"`hecated serve`'s imports on {args.python}, median of {args.runs} runs\n")
    summary, own = report(runs, walls)
    print(summary)
    print("| module | group | own ms |\n|---|---|---|")
    for name, ms in sorted(own.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"| `{name}` | {group(name)} | {ms:.2f} |")
    print("\n| module | cumulative ms |\n|---|---|")
    for name in WATCH:
        values = [r[1][name] for r in runs if name in r[1]]
        print(f"| `{name}` | {median_ms(values):.1f} |" if values else f"| `{name}` | - |")


if __name__ == "__main__":
    main()

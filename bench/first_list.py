"""Spawn → first complete ``GET /api/plugins`` on a never-seen tree, trees of code side by side.

Table 5 of ``make bench`` gives one figure per run; this script gives the
comparison a change needs: the same generated tree, hecated from several source
trees (``--base``, e.g. an export of ``main``, ``--also LABEL=PATH``, and
``--cand``, by default this worktree), run with the same interpreter,
interleaved round by round. "Never
seen" is made again before every start by deleting the manifest cache the
previous run saved (the files themselves stay in the page cache, as they do
for table 5, whose tree is written just before the start). Each first answer
is checked to be complete (``--count`` entries) and the trees' first lists
are compared byte for byte.

    git archive main | tar -x -C /tmp/base-src
    .venv/bin/python bench/first_list.py --base /tmp/base-src [--also docs-era=/tmp/old]
        [--count 10000] [--rounds 5]
    .venv/bin/python bench/first_list.py --profile   # cProfile of the candidate's start
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from procs import loadavg, make_plugins, remove, stop_pid, temp_home  # noqa: E402
from rawhttp import fetch  # noqa: E402

CACHE = Path(".hecate/hecate-daemon/run/manifests.cache.json")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid``: all its threads, and reaped children
    (the start scan's reading child is reaped before the first answer). Less noisy than
    wall time on a shared machine."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return sum(int(v) for v in fields[11:15]) / TICK


def spawn(src: Path, home: Path, profile: Path | None = None) -> tuple[subprocess.Popen, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HECATE_")}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = str(src)
    cmd = [sys.executable, "-m", "hecated"]
    if profile is not None:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "hecated"]
    log = (home / "hecated.log").open("ab")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd="/")
    log.close()
    return proc, started


def first_list(home: Path, proc: subprocess.Popen, started: float) -> tuple[float, bytes]:
    """Seconds from spawn to the first complete list, and its body."""
    address = str(home / ".hecate/hecate-daemon/sockets/api.sock")
    deadline = time.monotonic() + 120
    while True:
        try:
            body = fetch(address, "/api/plugins")
            return time.perf_counter() - started, body
        except (FileNotFoundError, ConnectionRefusedError):
            pass
        if proc.poll() is not None:
            raise RuntimeError((home / "hecated.log").read_text()[-2000:])
        if time.monotonic() > deadline:
            raise RuntimeError("no answer in 120 s")
        time.sleep(0.002)


def one_start(
    src: Path, home: Path, count: int, profile: Path | None = None
) -> tuple[float, str, float]:
    """Seconds to the first complete list, its digest, and the CPU-seconds spent by then."""
    (home / CACHE).unlink(missing_ok=True)  # never seen: no parsed manifests to reuse
    proc, started = spawn(src, home, profile)
    try:
        took, body = first_list(home, proc, started)
        cpu = cpu_seconds(proc.pid)
    finally:
        stop_pid(proc)
    plugins = json.loads(body)
    if len(plugins) < count:
        raise RuntimeError(f"first list held {len(plugins)} of {count} plugins")
    return took, hashlib.sha256(body).hexdigest()[:16], cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, help="source tree of the baseline (holds hecated/)")
    parser.add_argument("--cand", type=Path, default=HERE.parent)
    parser.add_argument(
        "--also", action="append", default=[], help="LABEL=PATH: a further source tree to time"
    )
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="cProfile the candidate's start")
    args = parser.parse_args()
    home = temp_home("hfl")
    try:
        make_plugins(home, args.count)
        one_start(args.cand, home, args.count)  # the primary namespace, the page cache
        if args.profile:
            out = home / "start.prof"
            took, _, _ = one_start(args.cand, home, args.count, profile=out)
            print(f"profiled start: {took * 1000:.0f} ms (under cProfile)")
            import pstats

            pstats.Stats(str(out)).sort_stats("cumulative").print_stats(45)
            pstats.Stats(str(out)).sort_stats("tottime").print_stats(30)
            return 0
        variants = {"cand": args.cand} | ({"base": args.base} if args.base else {})
        variants |= {k: Path(v) for k, _, v in (a.partition("=") for a in args.also)}
        times: dict[str, list[float]] = {k: [] for k in variants}
        cpus: dict[str, list[float]] = {k: [] for k in variants}
        hashes: dict[str, set[str]] = {k: set() for k in variants}
        print(f"load average at start {loadavg()}")
        for _ in range(args.rounds):
            for label, src in variants.items():
                took, digest, cpu = one_start(src, home, args.count)
                times[label].append(took)
                cpus[label].append(cpu)
                hashes[label].add(digest)
        for label, values in times.items():
            ms = sorted(round(v * 1000) for v in values)
            print(
                f"{label}: median {statistics.median(values) * 1000:.0f} ms, "
                f"range {ms[0]}-{ms[-1]} ms, all {ms}, list sha256 {sorted(hashes[label])}"
            )
            print(
                f"{label}: CPU-seconds at the first answer (both processes): middle value "
                f"{statistics.median(cpus[label]):.2f}, all {[round(c, 2) for c in cpus[label]]}"
            )
        if args.base:
            ratio = [c / b for c, b in zip(times["cand"], times["base"], strict=True)]
            print(f"cand/base per round: {', '.join(f'{r:.2f}' for r in ratio)}")
            same = len(set().union(*hashes.values())) == 1
            print(f"first lists byte-identical across trees and rounds: {same}")
            if not same:  # which trees agree (an older tree may have an older list shape)
                groups: dict[str, list[str]] = {}
                for label, found in hashes.items():
                    groups.setdefault(",".join(sorted(found)), []).append(label)
                print(f"identical lists, by tree: {list(groups.values())}")
        print(f"load average at end {loadavg()}")
    finally:
        remove(home)
    return 0


if __name__ == "__main__":
    sys.exit(main())

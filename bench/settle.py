"""After the first full list on a never-seen tree: how long until hecated is idle, at what CPU cost.

The first answer comes before the watches are in place and the sockets probed
(``bench/first_list.py`` times that answer); this script times what follows.
For each start it spawns hecated on a generated tree in ``/dev/shm``
(``--count`` plugins, the manifest cache deleted first, so the tree is never
seen), waits for the first complete ``GET /api/plugins``, then samples the
process's CPU time every 20 ms until a ``--window`` (1 s) passes in which it
used under 1 % of one core. It prints, per source tree:

- ``idle``: seconds from the first full list to the start of that quiet window;
- ``cpu``: CPU-seconds (user + system, all threads, reaped children) from the
  first list to idle, and from spawn to idle;
- ``watching``: seconds from the first list to the watcher's "watches (re)built"
  log line, and the inotify watches held once idle (3 per plugin + 2);
- ``split``: with ``--split``, those CPU-seconds by thread (threads are given
  their Python names through a ``sitecustomize`` on the child's path, so
  ``/proc/PID/task/TID/stat`` says whose they are; a thread that ends between
  two samples loses at most one sample's time).

Trees are run interleaved, round by round, with the same interpreter, as
``bench/first_list.py`` does:

    git archive 76af7f8 | tar -x -C /tmp/base-src
    .venv/bin/python bench/settle.py --base /tmp/base-src [--count 10000] [--rounds 3] [--split]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from first_list import CACHE, TICK, cpu_seconds, first_list, spawn  # noqa: E402
from procs import inotify_watches, loadavg, make_plugins, stop_pid  # noqa: E402

SAMPLE = 0.02
WATCHING = "watcher: watches "  # "(re)built, tree read" before the catch-up, "built, N of"

# Names each thread after its Python name (15 bytes: the kernel's limit), for --split.
SITECUSTOMIZE = """
import ctypes, threading
_prctl = ctypes.CDLL(None, use_errno=True).prctl
_inner = threading.Thread._bootstrap_inner
def _named(self):
    _prctl(15, self.name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    _inner(self)
threading.Thread._bootstrap_inner = _named
"""


def run_ns(pid: int, seen: dict[str, int]) -> int:
    """Nanoseconds on a CPU of ``pid``'s threads so far (schedstat: exact, unlike ticks).

    Each thread's last reading is kept in ``seen``, so a thread that ends does not
    take its time out of the sum (it loses at most what it ran since the last sample).
    """
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                seen[tid] = int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return sum(seen.values())


def thread_ticks(pid: int, seen: dict[str, tuple[str, int]]) -> None:
    """Record each live thread's name and CPU ticks in ``seen`` (by tid)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                text = fh.read()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rpartition(")")[2].split()
        seen[tid] = (name, int(fields[11]) + int(fields[12]))


def until_idle(
    pid: int, log: Path, window: float, split: bool, timeout: float = 120.0
) -> dict[str, float | dict]:
    """Sample from the first list until ``window`` seconds under 1 % of a core."""
    start, cpu0 = time.perf_counter(), cpu_seconds(pid)
    samples: collections.deque[tuple[float, int]] = collections.deque()
    before: dict[str, tuple[str, int]] = {}
    if split:
        thread_ticks(pid, before)
    threads = dict(before)
    ran: dict[str, int] = {}
    watching = None
    while True:
        now = time.perf_counter()
        samples.append((now, run_ns(pid, ran)))
        if split:
            thread_ticks(pid, threads)
        if watching is None and WATCHING in log.read_text(errors="replace"):
            watching = now - start
        while len(samples) > 1 and samples[1][0] <= now - window:
            samples.popleft()
        first_t, first_ns = samples[0]
        if now - first_t >= window and (samples[-1][1] - first_ns) / 1e9 < 0.01 * (now - first_t):
            idle_at = first_t
            break
        if now - start > timeout:
            raise RuntimeError(f"not idle within {timeout} s")
        time.sleep(SAMPLE)
    return {
        "idle": idle_at - start,
        "cpu": cpu_seconds(pid) - cpu0,  # includes the quiet window's crumbs (< 1 %)
        "watching": float("nan") if watching is None else watching,
        "threads": _by_name(before, threads),
    }


def _by_name(before: dict, after: dict) -> dict[str, float]:
    """CPU-seconds by thread name between two ``thread_ticks`` records."""
    out: dict[str, float] = collections.defaultdict(float)
    for tid, (name, ticks) in after.items():
        base = before.get(tid, (name, 0))[1]
        label = name.rstrip("0123456789") or name
        out[label] += (ticks - base) / TICK
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v > 0}


def one_start(src: Path, home: Path, count: int, window: float, split: bool) -> dict:
    (home / CACHE).unlink(missing_ok=True)  # never seen: no parsed manifests to reuse
    log = home / "hecated.log"
    log.write_bytes(b"")
    proc, started = spawn(src, home)
    try:
        listed, body = first_list(home, proc, started)
        if body.count(b'"name"') < count:
            raise RuntimeError("the first list was not complete")
        result = until_idle(proc.pid, log, window, split)
        result["first_list"] = listed
        result["total_cpu"] = cpu_seconds(proc.pid)
        result["watches"] = inotify_watches(proc.pid)
    finally:
        stop_pid(proc)
    return result


def report(label: str, runs: list[dict], count: int) -> None:
    def col(key: str) -> str:
        values = [r[key] for r in runs]
        each = ", ".join(f"{v:.2f}" for v in values)
        return f"median {statistics.median(values):.2f} (all {each})"

    print(f"{label}:")
    print(f"  first full list after spawn, s     {col('first_list')}")
    print(f"  first list -> idle, s              {col('idle')}")
    print(f"  CPU-seconds first list -> idle     {col('cpu')}")
    print(f"  CPU-seconds spawn -> idle          {col('total_cpu')}")
    print(f"  first list -> watches built, s     {col('watching')}")
    print(
        f"  inotify watches at idle            {[r['watches'] for r in runs]} "
        f"(expected {3 * count + 2})"
    )
    for i, r in enumerate(runs):
        if r["threads"]:
            print(f"  run {i + 1} CPU-s by thread: {r['threads']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", type=Path, help="source tree of the baseline (holds hecated/)")
    parser.add_argument("--cand", type=Path, default=HERE.parent)
    parser.add_argument("--count", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=1.0, help="quiet window, seconds")
    parser.add_argument("--split", action="store_true", help="CPU by thread name")
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="hst", dir="/dev/shm"))
    site = Path(tempfile.mkdtemp(prefix="hst-site"))
    try:
        make_plugins(home, args.count)
        variants = {"cand": args.cand} | ({"base": args.base} if args.base else {})
        if args.split:
            (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
            variants = {k: Path(f"{v}{os.pathsep}{site}") for k, v in variants.items()}
        one_start(args.cand, home, args.count, args.window, False)  # primary namespace, caches
        runs: dict[str, list[dict]] = {k: [] for k in variants}
        print(f"{args.count} plugins in {home}; load average at start {loadavg()}")
        for _ in range(args.rounds):
            for label, src in variants.items():
                runs[label].append(one_start(src, home, args.count, args.window, args.split))
        for label, results in runs.items():
            report(label, results, args.count)
        print(f"load average at end {loadavg()}")
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(site, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

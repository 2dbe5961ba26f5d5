"""What following plugin units costs: idle CPU with 100 watched units, and the lag of a storm.

Usage: .venv/bin/python bench/unit_watch.py [--units 100] [--storm 50] [--idle 20]

A private ``systemd --user`` (tests/systemd_support.py, under the machine-wide
manager lock) runs ``--units`` trivial service units (``sleep infinity``); a
``UnitWatcher`` (hecated/adapters/unitwatch.py) in this process follows them all.

- **idle**: once every unit is published ``active``, this process's CPU time
  (utime + stime, every thread) over ``--idle`` seconds, and how often the
  watcher's thread woke (its voluntary context switches);
- **storm**: ``--storm`` more units wanted by one target, started at once through
  ``unitcontrol``; for each unit, the lag from the manager's own state change
  (``StateChangeTimestamp``) to the watcher publishing it ``active``: median and max.

- **follow**: ``--lines`` restarts of a unit that prints a line, read through
  ``journal.follow``: the time from journald's receipt to the iterator's yield.

Goals (issue 20): idle CPU at most 1% of a core with 100 unit-backed plugins; a
unit's state in the list within 1 s of the manager knowing. Everything started
here is stopped by its pid (the manager stops its units).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from systemd_support import UserManager  # noqa: E402

from hecated.adapters import journal  # noqa: E402
from hecated.adapters.units import UnitState  # noqa: E402
from hecated.adapters.unitwatch import UnitWatcher  # noqa: E402

SERVICE = "[Service]\nExecStart=/bin/sleep infinity\n"


class Board:
    """The watcher's callback: the latest state of each unit, and when it came."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.states: dict[str, UnitState | None] = {}
        self.first_active: dict[str, float] = {}
        self.since: dict[str, float] = {}  # the manager's StateChangeTimestamp of that state

    def __call__(self, unit: str, state: UnitState | None) -> None:
        now = time.time()
        with self.cond:
            self.states[unit] = state
            active = state is not None and state.active_state == "active"
            if active and unit not in self.first_active:
                self.first_active[unit] = now
                self.since[unit] = state.since or now
            self.cond.notify_all()

    def wait_active(self, units: list[str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(u in self.first_active for u in units):
                if not self.cond.wait(max(0.0, deadline - time.monotonic())):
                    raise RuntimeError("the watcher did not see every unit active")


def thread_switches(tid: int) -> int:
    for line in Path(f"/proc/self/task/{tid}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    return 0


def prepare(um: UserManager, idle_units: list[str], storm_units: list[str]) -> None:
    """Every unit file and the storm's target, then one daemon-reload, before any watching
    (a reload makes the watcher read every unit again: not what a storm measures)."""
    for unit in [*idle_units, *storm_units]:
        (um.unit_dir / unit).write_text(SERVICE)
    (um.unit_dir / "bench-storm.target").write_text(f"[Unit]\nWants={' '.join(storm_units)}\n")
    um.systemctl("daemon-reload")
    um.systemctl("start", *idle_units)


def idle(watcher: UnitWatcher, seconds: float) -> None:
    tid = watcher._thread.native_id
    cpu0, sw0, t0 = time.process_time(), thread_switches(tid), time.monotonic()
    time.sleep(seconds)  # the measurement itself: nothing happens meanwhile, by design
    cpu, sw, wall = time.process_time() - cpu0, thread_switches(tid) - sw0, time.monotonic() - t0
    n = len(watcher.wanted())
    print(f"idle, {n} watched units, {wall:.0f} s: CPU {100 * cpu / wall:.3f} % of a core;")
    print(f"  the watcher thread woke {sw} times")


def storm(um: UserManager, board: Board, units: list[str]) -> None:
    um.systemctl("start", "--no-block", "bench-storm.target")
    board.wait_active(units)
    lags = [board.first_active[u] - board.since[u] for u in units]
    print(
        f"storm, {len(units)} units started by one target: publish lag after the manager's"
        f" state change median {1000 * statistics.median(lags):.1f} ms,"
        f" max {1000 * max(lags):.1f} ms"
    )


LOG_UNIT = """[Unit]
StartLimitIntervalSec=0

[Service]
ExecStart=/bin/sh -c 'echo tick; exec sleep infinity'
"""


def follow_lag(um: UserManager, rounds: int, wait: float) -> None:
    """A unit's line through ``journal.follow``: the time from journald's receipt
    (``__REALTIME_TIMESTAMP``) to the iterator yielding it, over ``rounds`` restarts."""
    unit = "bench-log.service"
    (um.unit_dir / unit).write_text(LOG_UNIT)
    um.systemctl("daemon-reload")
    stop, lags, seen = threading.Event(), [], threading.Semaphore(0)

    def follow() -> None:
        for line in journal.follow(unit, stop, wait=wait):
            lags.append(time.time() - line.time)
            seen.release()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    time.sleep(0.5)  # the reader is open and at the journal's end before the first line
    for _ in range(rounds):
        um.systemctl("restart", unit)
        if not seen.acquire(timeout=30):
            raise RuntimeError("no line through follow")
    stop.set()
    follower.join(5)
    print(
        f"journal follow (wait {wait:g} s), {rounds} lines: yield after journald's receipt"
        f" median {1000 * statistics.median(lags):.1f} ms, max {1000 * max(lags):.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--units", type=int, default=100)
    parser.add_argument("--storm", type=int, default=50)
    parser.add_argument("--idle", type=float, default=20.0)
    parser.add_argument("--lines", type=int, default=20)
    parser.add_argument("--follow-wait", type=float, default=0.5)
    args = parser.parse_args()
    idle_units = [f"bench-idle{i:03d}.service" for i in range(args.units)]
    storm_units = [f"bench-storm{i:03d}.service" for i in range(args.storm)]
    um = UserManager(journald=True).start()
    try:
        um.unit_dir.mkdir(parents=True, exist_ok=True)
        prepare(um, idle_units, storm_units)
        board = Board()
        watcher = UnitWatcher(board, [*idle_units, *storm_units], address=um.bus_address)
        watcher.start()
        try:
            board.wait_active(idle_units)
            with board.cond:  # each storm unit read (inactive) before the storm
                board.cond.wait_for(lambda: all(board.states.get(u) for u in storm_units), 60)
            idle(watcher, args.idle)
            storm(um, board, storm_units)
        finally:
            watcher.close()
        follow_lag(um, args.lines, args.follow_wait)
    finally:
        um.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Login storm: 50 plugin units started at once, and how soon hecated lists them running.

Usage: .venv/bin/python bench/login_storm.py [--plugins 50] [--runs 3] [--out FILE|-]

A private ``systemd --user`` with its session bus (tests/systemd_support.py, under the
machine-wide manager lock) and a real hecated started with ``XDG_RUNTIME_DIR`` at that
manager's runtime dir, so it follows the units from the manager's signals. ``--plugins``
units run the test plugin (tests/plugin_support.py, one process and one socket each),
registered in hecated and wanted by one target; each run starts the target at once
(``systemctl --user start --no-block``) and measures, from that moment:

- **sockets**: the time until every plugin's own socket answers ``GET /health`` 2xx, by
  this script itself (each socket tried in turn, again and again, a new connection each);
- **listed**: the time until hecated's list shows all of them ``running`` (followed
  through the change feed's long poll, ``GET /api/plugins?since=SEQ&wait=S``);
- **list latency**: ``GET /api/plugins`` (a new connection each, one after another) while
  the storm lasts, beside the same request while everything is idle: p99 during the storm
  against the idle p50; beside it, a control hecated with an empty tree, asked in turn
  with the same load, shows what the machine's load alone does to the same request.

Goals (issue 20): listed <= sockets + 1 s; storm p99 <= 10x idle p50. Between runs the
units are stopped and the list waited on until every plugin is ``stopped`` again.

"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import socket
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from procs import loadavg
from unit_support import (
    REPO,
    Daemon,
    Daemons,
    UserManager,
    commit,
    http_request,
    run_section,
    unit_files,
)

PLUGIN = REPO / "tests" / "plugin_support.py"
HEADING = "## 9. Login storm: 50 plugin units at once (issue 20)"
TIMEOUT = 120.0
TARGET = "bench-storm.target"


def answers(path: Path) -> bool:
    """The plugin's socket answers GET /health with a 2xx (a new connection; raw, so each
    try costs this loop as little as it can)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(2.0)
    try:
        sock.connect(os.fspath(path))
        sock.sendall(b"GET /health HTTP/1.0\r\nHost: x\r\n\r\n")
        head = sock.recv(64)
        return head.startswith(b"HTTP/1.") and head[9:10] == b"2"
    except OSError:
        return False
    finally:
        sock.close()


class Feed:
    """The list as hecated says it, followed by long polls on a thread of its own."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.cond = threading.Condition()
        self.rows: dict[str, dict] = {}
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        _, headers, body = self.d.request("GET", "/api/plugins")
        while not self.stop:
            with self.cond:
                self.rows = {p["name"]: p for p in body}
                self.cond.notify_all()
            seq = headers["X-Hecate-Seq"]
            try:
                _, headers, body = self.d.request("GET", f"/api/plugins?since={seq}&wait=5")
            except (OSError, http.client.HTTPException):  # the daemon stopped at the end
                return

    def wait(self, names: list[str], test, timeout: float = TIMEOUT) -> float:
        """The monotonic time at which every name first passed ``test``."""
        with self.cond:
            ok = self.cond.wait_for(
                lambda: all(n in self.rows and test(self.rows[n]) for n in names), timeout
            )
            if not ok:
                raise RuntimeError(f"the list never passed the test: {list(self.rows.values())}")
            return time.monotonic()


def idle_p50(socks: list[Path], n: int) -> list[float]:
    """The idle p50 of ``GET /api/plugins`` on each socket, asked in turn."""
    samples: list[list[float]] = [[] for _ in socks]
    for _ in range(n):
        for sock, mine in zip(socks, samples, strict=True):
            t0 = time.perf_counter()
            status, _, _ = http_request(sock, "GET", "/api/plugins")
            mine.append(time.perf_counter() - t0)
            assert status == 200
    return [statistics.median(mine) for mine in samples]


def storm_run(um: UserManager, d: Daemon, control: Daemon, feed: Feed, names: list[str]) -> dict:
    sockets = {n: um.home / ".hecate" / n / "sockets" / "api.sock" for n in names}
    during: list[float] = []
    beside: list[float] = []  # the control hecated's, asked in turn with the same load
    done = threading.Event()

    def hammer() -> None:
        while not done.is_set():
            for sock, samples in ((d.socket, during), (control.socket, beside)):
                t0 = time.perf_counter()
                http_request(sock, "GET", "/api/plugins")
                samples.append(time.perf_counter() - t0)

    listed_at: list[float] = []
    t0 = time.monotonic()
    um.systemctl("start", "--no-block", TARGET)
    lister = threading.Thread(
        target=lambda: listed_at.append(feed.wait(names, lambda r: r["status"] == "running")),
        daemon=True,
    )
    lister.start()
    load = threading.Thread(target=hammer, daemon=True)
    load.start()
    pending = set(names)
    while pending:
        for name in sorted(pending):
            if answers(sockets[name]):
                pending.discard(name)
    sockets_at = time.monotonic()
    lister.join(TIMEOUT)
    done.set()
    load.join(10)
    if not listed_at:
        raise RuntimeError("hecated never listed them all running")
    return {
        "sockets": sockets_at - t0,
        "listed": listed_at[0] - t0,
        "storm_p99": percentile(during, 99),
        "storm_n": len(during),
        "control_p99": percentile(beside, 99),
    }


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))]


def stop_all(um: UserManager, feed: Feed, units: list[str], names: list[str]) -> None:
    um.systemctl("stop", TARGET, *units)
    feed.wait(names, lambda r: r["status"] == "stopped")


def spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    lo, mid, hi = (scale * f(values) for f in (min, statistics.median, max))
    return f"{mid:.{digits}f} ({lo:.{digits}f} to {hi:.{digits}f})"


def section(runs: list[dict], n: int, loads: tuple[str, str]) -> str:
    lag = [r["listed"] - r["sockets"] for r in runs]
    ratio = [r["storm_p99"] / r["idle_p50"] for r in runs]
    control = [r["control_p99"] / r["control_p50"] for r in runs]
    lag_ok = "✅" if statistics.median(lag) <= 1.0 else "❌"
    ratio_ok = "✅" if statistics.median(ratio) <= 10 else "❌"
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            HEADING,
            "",
            f"_Generated by `bench/login_storm.py` on {when}; commit {commit()}, "
            f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}; "
            f"{len(runs)} runs, unpinned; load average {loads[0]} at the start, {loads[1]} at "
            "the end. Each cell: median over the runs (min to max)._",
            "",
            f"{n} plugin units (tests/plugin_support.py, one process each) wanted by one "
            "target, started at once with `systemctl --user start --no-block`; a real "
            "hecated follows them from the user manager's signals. Times from the start "
            "command. *sockets*: the bench's own loop finds every plugin socket answering "
            "`GET /health`; *listed*: hecated's list (followed by long polls) shows all "
            "of them `running`. List latency: `GET /api/plugins`, a new connection each, "
            "one after another, while the storm lasts, beside the same while idle.",
            "",
            "| | figure | goal |",
            "|---|---|---|",
            f"| all {n} sockets answer | {spread([r['sockets'] for r in runs])} s | |",
            f"| hecated lists all {n} `running` | {spread([r['listed'] for r in runs])} s | |",
            f"| listed minus sockets | {spread(lag, digits=3)} s | ≤ +1 s {lag_ok} |",
            f"| `GET /api/plugins` p50, idle | {spread([r['idle_p50'] for r in runs], 1000, 3)}"
            " ms | |",
            f"| `GET /api/plugins` p99, during the storm | "
            f"{spread([r['storm_p99'] for r in runs], 1000, 3)} ms "
            f"(n = {min(r['storm_n'] for r in runs)} to {max(r['storm_n'] for r in runs)}) | |",
            f"| storm p99 / idle p50 | {spread(ratio, digits=1)}x | ≤ 10x {ratio_ok} |",
            f"| control hecated (empty, follows nothing), p99 during the storm / its idle "
            f"p50 | {spread(control, digits=1)}x | |",
            "",
            "The control is a second hecated with an empty tree, asked in turn with the "
            "first during the same storms and the same idle rounds: what the machine's "
            "load alone (50 Python processes starting on 2 CPUs, the bench's own loops) "
            "does to a list request, beside what following the storm adds.",
            "",
        ]
    )


def storms(args: argparse.Namespace, um: UserManager, daemons: Daemons) -> str:
    names = [f"storm-p{i:03d}" for i in range(args.plugins)]
    commands = {
        f"{n}.service": f"{sys.executable} {PLUGIN} {um.home / '.hecate' / n}" for n in names
    }
    unit_files(um, commands, TARGET)
    d = daemons.beside(um)
    for name in names:
        assert d.register(name)[0] == 201
    feed = Feed(d)
    # Every unit read (inactive) before the first storm: the watcher follows them all.
    feed.wait(names, lambda r: r["unit"] is not None and r["status"] == "stopped")
    control = daemons.control("ls")  # empty; no XDG_RUNTIME_DIR: no units
    loads = [loadavg()]
    runs = []
    for i in range(args.runs):
        p50, control_p50 = idle_p50([d.socket, control.socket], args.idle_samples)
        run = storm_run(um, d, control, feed, names)
        runs.append({**run, "idle_p50": p50, "control_p50": control_p50})
        print(f"run {i + 1}: {runs[-1]}", flush=True)
        stop_all(um, feed, list(commands), names)
    loads.append(loadavg())
    feed.stop = True
    return section(runs, args.plugins, (loads[0], loads[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plugins", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle-samples", type=int, default=500)
    return run_section(parser, HEADING, storms)


if __name__ == "__main__":
    sys.exit(main())

"""Login storm: 50 plugin units started at once, and how soon hecated lists them running.

Usage: .venv/bin/python bench/login_storm.py [--plugins 50] [--runs 3] [--out docs/benchmarks.md]

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

``--out``: the markdown section replaces the one headed ``## 9. Login storm`` in that file
(appended when there is none); ``-`` prints it only.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from conftest import HECATED, Daemon, http_request  # noqa: E402
from systemd_support import UserManager, fresh_home  # noqa: E402

from hecated.adapters.unitcontrol import UserManager as Control  # noqa: E402
from hecated.adapters.units import SystemdUnavailable  # noqa: E402

PLUGIN = HERE.parent / "tests" / "plugin_support.py"
HEADING = "## 9. Login storm: 50 plugin units at once (issue 20)"
TIMEOUT = 120.0


def wait_until(test, timeout: float = TIMEOUT, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := test()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout} s")
        time.sleep(0.02)
    return value


def answers(path: Path) -> bool:
    """The plugin's socket answers GET /health with a 2xx (a new connection)."""
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


def on_bus(um: UserManager) -> bool:
    try:
        return Control(address=um.bus_address).state("dbus.service").active_state == "active"
    except SystemdUnavailable:
        return False


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
    um.systemctl("start", "--no-block", "bench-storm.target")
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
    um.systemctl("stop", "bench-storm.target", *units)
    feed.wait(names, lambda r: r["status"] == "stopped")


def prepare(um: UserManager, names: list[str]) -> list[str]:
    um.unit_dir.mkdir(parents=True, exist_ok=True)
    units = []
    for name in names:
        namespace = um.home / ".hecate" / name
        unit = f"{name}.service"
        (um.unit_dir / unit).write_text(
            f"[Service]\nExecStart={sys.executable} {PLUGIN} {namespace}\n"
        )
        units.append(unit)
    (um.unit_dir / "bench-storm.target").write_text(f"[Unit]\nWants={' '.join(units)}\n")
    um.systemctl("daemon-reload")
    return units


def loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(HECATED.parent.parent.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


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


def write(out: str, text: str) -> None:
    if out == "-":
        print(text)
        return
    path = Path(out)
    doc = path.read_text() if path.exists() else ""
    start = doc.find(HEADING)
    if start < 0:
        doc = doc.rstrip("\n") + "\n\n" + text
    else:
        end = doc.find("\n## ", start + len(HEADING))
        doc = doc[:start] + text + ("" if end < 0 else "\n" + doc[end + 1 :])
    path.write_text(doc)
    print(f"wrote {out}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plugins", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--idle-samples", type=int, default=500)
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    names = [f"storm-p{i:03d}" for i in range(args.plugins)]
    um = UserManager(journald=False).start()
    d = control = None
    try:
        wait_until(lambda: on_bus(um), 60, "the manager on its bus")
        units = prepare(um, names)
        d = Daemon(um.home, env={"XDG_RUNTIME_DIR": str(um.runtime)})
        d.env.pop("DBUS_SESSION_BUS_ADDRESS", None)
        d.start()
        for name in names:
            assert d.register(name)[0] == 201
        feed = Feed(d)
        # Every unit read (inactive) before the first storm: the watcher follows them all.
        feed.wait(names, lambda r: r["unit"] is not None and r["status"] == "stopped")
        control = Daemon(fresh_home("ls")).start()  # empty; no XDG_RUNTIME_DIR: no units
        loads = [loadavg()]
        runs = []
        for i in range(args.runs):
            p50, control_p50 = idle_p50([d.socket, control.socket], args.idle_samples)
            run = storm_run(um, d, control, feed, names)
            runs.append({**run, "idle_p50": p50, "control_p50": control_p50})
            print(f"run {i + 1}: {runs[-1]}", flush=True)
            stop_all(um, feed, units, names)
        loads.append(loadavg())
        feed.stop = True
        write(args.out, section(runs, args.plugins, (loads[0], loads[1])))
    finally:
        for daemon in (d, control):
            if daemon is not None:
                daemon.kill()
        if control is not None:
            shutil.rmtree(control.home, ignore_errors=True)
        um.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

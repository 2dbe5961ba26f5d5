"""Forwarding /plugin/{name}/... (issue 14): its cost beside a direct request, and what
open streams cost the registry.

- ``GET /manifest`` forwarded through hecated beside the same request straight to the
  plugin's socket: same raw client (``rawhttp``), keep-alive on the client's side, one
  run, interleaved in rounds so a load spike hits both alike (goal: p50 <= 3x direct).
- ``GET /api/plugins`` latency with 200 idle forwarded streams open beside none,
  alternated in rounds (streams opened, then closed) in one run (goal <= 1.2x).
- hecated's threads and RSS with none, 200 and 256 (the cap) streams open.

The plugin is the tests' stdlib plugin (its own process, its own socket). The table is
section 7 of docs/benchmarks.md (``make bench ARGS='--only forwarding'``, bench/run.py).
Alone: ``.venv/bin/python bench/forward.py`` (``--runs N``, ``--out FILE``): several
runs, each with its own daemon and plugin, unpinned; the raw figures of every run are
printed as JSON, then the table (date, load average, runs, the range of each figure over
the runs). ``--against DIR``: the forwarded/direct ratio of this hecated and of the one in
another checkout (``git archive COMMIT hecated | tar -x -C DIR``), both in each run,
interleaved: a change measured against its baseline in one sitting. Figures from a
loaded machine are indicative: compare the ratios, each measured against its baseline
in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from rawhttp import Client, read_response  # noqa: E402
from test_forward import PLUGIN  # noqa: E402

HECATED = Path(sys.executable).parent / "hecated"
LIST_ROUNDS = 4  # rounds of the registry list with no stream / 200 streams open


def wait_for(predicate, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.02)


def answers(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
        return True
    except OSError:
        return False


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            out[key] = int(value.split()[0])
    return out


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in samples)
    return {
        "p50_ms": round(statistics.median(ms), 3),
        "p90_ms": round(ms[int(len(ms) * 0.9)], 3),
        "p99_ms": round(ms[int(len(ms) * 0.99)], 3),
        "n": len(ms),
    }


def rounds(clients: dict[str, Client], n: int, per_round: int = 100) -> dict[str, list[float]]:
    """Interleave the clients in rounds: a spike of load on the machine hits both."""
    out: dict[str, list[float]] = {k: [] for k in clients}
    for _ in range(n // per_round):
        for key, client in clients.items():
            out[key] += client.run(per_round)
    return out


def open_streams(sock: Path, path: str, count: int) -> list[socket.socket]:
    streams = []
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(sock))
        s.settimeout(30)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        streams.append(s)
    for s in streams:
        data = b""
        while b": open" not in data:
            piece = s.recv(4096)
            if not piece:
                raise RuntimeError(f"stream closed: {data!r}")
            data += piece
    return streams


@dataclass
class World:
    """A hecated and one plugin, each its own process, under a fresh HOME."""

    home: Path
    sock: Path
    plugin_sock: Path
    daemon: subprocess.Popen
    plugin: subprocess.Popen

    def stop(self) -> None:
        self.plugin.kill()
        self.daemon.send_signal(signal.SIGTERM)
        self.daemon.wait(30)
        self.plugin.wait(10)
        shutil.rmtree(self.home, ignore_errors=True)


def start(source: Path | None = None) -> World:
    """hecated as this venv runs it; or the package in ``source`` (a checkout's
    top directory: ``python -m hecated`` with it first on the path), on the same
    interpreter, so two versions compare with nothing else different."""
    home = Path(tempfile.mkdtemp(prefix="hbf", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HECATE_")}
    env["HOME"] = str(home)
    command = [str(HECATED)]
    if source is not None:
        env["PYTHONPATH"] = str(source)
        command = [sys.executable, "-m", "hecated"]
    root = home / ".hecate"
    sock = root / "hecate-daemon" / "sockets" / "api.sock"
    daemon = subprocess.Popen(command, env=env, cwd="/", stderr=subprocess.DEVNULL)
    plugin_dir = root / "hecate-app-benchd" / "sockets"
    plugin_dir.mkdir(parents=True)
    plugin_sock = plugin_dir / "api.sock"
    plugin = subprocess.Popen(
        [sys.executable, "-c", PLUGIN, str(plugin_sock), "hecate-app-benchd"],
        stdin=subprocess.PIPE,
    )
    world = World(home, sock, plugin_sock, daemon, plugin)
    try:
        wait_for(lambda: answers(sock) and answers(plugin_sock))
    except BaseException:
        world.stop()
        raise
    return world


def against(source: Path, samples: int = 2000) -> dict:
    """``GET /manifest`` through this hecated and through the one in ``source`` (e.g.
    an older commit's tree), each beside the same request straight to its own plugin:
    four raw keep-alive clients interleaved in rounds of 100 in one run."""
    worlds = {"new": start(), "base": start(source)}
    try:
        clients = {}
        for key, world in worlds.items():
            clients[f"{key}_direct"] = Client(str(world.plugin_sock), "/manifest", True)
            clients[f"{key}_forwarded"] = Client(str(world.sock), "/plugin/bench/manifest", True)
        rounds(clients, 200)  # warm-up
        got = {k: percentiles(v)["p50_ms"] for k, v in rounds(clients, samples).items()}
    finally:
        for world in worlds.values():
            world.stop()
    for key in worlds:
        got[f"{key}_ratio"] = round(got[f"{key}_forwarded"] / got[f"{key}_direct"], 2)
    got["new_over_base"] = round(got["new_forwarded"] / got["base_forwarded"], 3)
    return got


def run(samples: int = 2000) -> dict:
    world = start()
    sock, plugin_sock, daemon = world.sock, world.plugin_sock, world.daemon
    try:
        # Register a few plugins so the list is not trivially empty.
        for i in range(20):
            c = Client(
                str(sock),
                "/api/plugins/register",
                False,
                201,
                "POST",
                json.dumps({"name": f"p{i}", "version": "1"}).encode(),
            )
            c.run(1)
        direct = Client(str(plugin_sock), "/manifest", True)
        forwarded = Client(str(sock), "/plugin/bench/manifest", True)
        rounds({"direct": direct, "forwarded": forwarded}, 200)  # warm-up
        manifest = rounds({"direct": direct, "forwarded": forwarded}, samples)
        result: dict = {
            "manifest_direct": percentiles(manifest["direct"]),
            "manifest_forwarded": percentiles(manifest["forwarded"]),
        }
        result["manifest_p50_ratio"] = round(
            result["manifest_forwarded"]["p50_ms"] / result["manifest_direct"]["p50_ms"], 2
        )
        listing = Client(str(sock), "/api/plugins", True)
        listing.run(200)
        result["proc_0_streams"] = proc_status(daemon.pid)
        # Alternate: none open, 200 open, none, ... so a load spike hits both alike.
        idle: list[float] = []
        busy: list[float] = []
        for _ in range(LIST_ROUNDS):
            listing.run(50)  # what closing the last round's streams left is done
            idle += listing.run(samples // LIST_ROUNDS)
            streams = open_streams(sock, "/plugin/bench/hold", 200)
            listing.run(50)
            busy += listing.run(samples // LIST_ROUNDS)
            result["proc_200_streams"] = proc_status(daemon.pid)
            for s in streams:
                s.close()
        streams = open_streams(sock, "/plugin/bench/hold", 200)
        more = open_streams(sock, "/plugin/bench/hold", 56)
        result["proc_256_streams"] = proc_status(daemon.pid)
        with socket.socket(socket.AF_UNIX) as s:  # the 257th
            s.connect(str(sock))
            s.sendall(b"GET /plugin/bench/hold HTTP/1.1\r\nHost: localhost\r\n\r\n")
            result["stream_257_status"] = read_response(s, bytearray())[0]
        for s in streams + more:
            s.close()
        result["list_no_streams"] = percentiles(idle)
        result["list_200_streams"] = percentiles(busy)
        result["list_p50_ratio"] = round(
            result["list_200_streams"]["p50_ms"] / result["list_no_streams"]["p50_ms"], 2
        )
        return result
    finally:
        world.stop()


# -- the table ------------------------------------------------------------------------------

GOALS = {"manifest_p50_ratio": 3.0, "list_p50_ratio": 1.2}  # issue 22: <= 3x direct


def spread(values: list[float], unit: str = "", digits: int = 2) -> str:
    """``median (min-max)`` over the runs."""
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"{mid:.{digits}f}{unit} ({lo:.{digits}f} to {hi:.{digits}f})"


def loadavg() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def commit() -> str:
    try:
        out = subprocess.run(
            # The checkout whose .venv runs the hecated measured (maybe not this one).
            ["git", "-C", str(HECATED.parent.parent.parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def table(runs: list[dict], samples: int, load_before: str, load_after: str) -> str:
    """The runs as markdown: each figure's median over the runs and its range."""

    def col(*keys: str) -> list[float]:
        out = []
        for r in runs:
            value: object = r
            for key in keys:
                value = value[key]  # type: ignore[index]
            out.append(float(value))  # type: ignore[arg-type]
        return out

    def verdict(key: str) -> str:
        worst = max(col(key))
        best = min(col(key))
        goal = GOALS[key]
        if worst <= goal:
            return f"goal ≤ {goal}x: met in every run ✅"
        if best <= goal:
            return f"goal ≤ {goal}x: met in some runs only ⚠️"
        return f"goal ≤ {goal}x: not met ❌"

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Forwarding /plugin/{name}/… (issue 14)",
        "",
        f"_Generated by `bench/forward.py` on {when}; commit {commit()}, {platform.node()}, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; {len(runs)} runs of "
        f"{samples} requests per figure, unpinned; load average {load_before} at the start, "
        f"{load_after} at the end. Each cell: median over the runs (min-max). The machine "
        "is shared: compare the ratios, each measured against its baseline in the same run._",
        "",
        "## Forwarded `GET /manifest` beside the same request straight to the plugin",
        "",
        "Same raw keep-alive client, interleaved in rounds of 100 in one run.",
        "",
        "| | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for label, key in [
        ("direct to the plugin's socket", "manifest_direct"),
        ("through hecated", "manifest_forwarded"),
    ]:
        lines.append(
            f"| {label} | {spread(col(key, 'p50_ms'), digits=3)} | "
            f"{spread(col(key, 'p90_ms'), digits=3)} | {spread(col(key, 'p99_ms'), digits=3)} |"
        )
    lines += [
        "",
        f"p50 ratio, forwarded / direct: **{spread(col('manifest_p50_ratio'), 'x')}**; "
        + verdict("manifest_p50_ratio"),
        "",
        "## Registry `GET /api/plugins` with 200 idle forwarded streams open",
        "",
        f"One keep-alive client; {LIST_ROUNDS} rounds of: none open, then 200 opened "
        "(each has its first event), then closed.",
        "",
        "| streams open | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for label, key in [("none", "list_no_streams"), ("200", "list_200_streams")]:
        lines.append(
            f"| {label} | {spread(col(key, 'p50_ms'), digits=3)} | "
            f"{spread(col(key, 'p90_ms'), digits=3)} | {spread(col(key, 'p99_ms'), digits=3)} |"
        )
    lines += [
        "",
        f"p50 ratio, 200 streams / none: **{spread(col('list_p50_ratio'), 'x')}**; "
        + verdict("list_p50_ratio"),
        "",
        "## What open streams cost hecated",
        "",
        "| streams open | threads | RSS MiB |",
        "|---|---|---|",
    ]
    for label, key in [
        ("0", "proc_0_streams"),
        ("200", "proc_200_streams"),
        ("256 (the cap)", "proc_256_streams"),
    ]:
        rss = [x / 1024 for x in col(key, "VmRSS")]
        lines.append(
            f"| {label} | {spread(col(key, 'Threads'), digits=0)} | {spread(rss, digits=1)} |"
        )
    statuses = sorted({r["stream_257_status"] for r in runs})
    lines += [
        "",
        f"The 257th stream was answered {', '.join(map(str, statuses))} in every run.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--out", default="-", help="where the markdown table goes ('-': printed)")
    parser.add_argument(
        "--against",
        type=Path,
        help="a checkout's top directory: A/B of GET /manifest only, its hecated beside this one",
    )
    args = parser.parse_args()
    load_before = loadavg()
    if args.against is not None:
        for i in range(args.runs):
            load = loadavg()
            print(json.dumps({"run": i + 1, "load": load, **against(args.against, args.samples)}))
        return
    runs = []
    for i in range(args.runs):
        runs.append(run(args.samples))
        print(json.dumps({"run": i + 1, **runs[-1]}), flush=True)
    text = table(runs, args.samples, load_before, loadavg())
    if args.out == "-":
        print(text)
    else:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

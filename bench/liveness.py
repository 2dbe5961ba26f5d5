"""What liveness probes cost: idle CPU with 100 live plugins, and list latency beside none.

Usage: .venv/bin/python bench/liveness.py [--plugins 100] [--idle 30] [--rounds 20]
(also the "liveness" section of ``make bench``, bench/run.py).

Two hecated processes side by side, each on its own HOME with the same ``--plugins``
registered plugins (names as the ecosystem spells them, ``hecate-app-pNNNd``):

- **none live**: nothing serves their sockets (the baseline);
- **all live**: one plugin process (tests/plugin_support.py, modelled on
  hecate-traderd) serves every ``sockets/api.sock``, so each is ``running`` with its
  manifest, probed every ``probe_interval`` (the default, 10 s).

Measured in the same run, so that the machine's load falls on both alike:

- idle CPU of each hecated over the same ``--idle`` seconds (utime + stime from
  ``/proc/PID/stat``), once every live plugin shows its manifest;
- ``GET /api/plugins`` latency (raw socket, a new connection per request, as
  hecate-web asks): ``--rounds`` alternating rounds of ``--per-round`` requests to
  each, so that drift in load cannot favour either; median and p99 of each.

Goals (issue 12): idle CPU at most 1% of a core; the all-live list at most 1.2x the
none-live list (medians). Everything started here is stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from procs import Hecated, loadavg, median, percentile, remove, stop_pid, temp_home  # noqa: E402
from rawhttp import Client, fetch  # noqa: E402

from hecated.core.layout import SUBDIRS  # noqa: E402
from hecated.core.manifest import Manifest, dumps  # noqa: E402

PLUGIN = HERE.parent / "tests" / "plugin_support.py"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    plugins: int
    idle_seconds: float
    cpu_none: float  # % of one core
    cpu_live: float
    none_p50: float  # ms
    none_p99: float
    live_p50: float
    live_p99: float
    samples: int  # per side
    bytes_none: int  # list body sizes: the live one carries manifests
    bytes_live: int

    @property
    def ratio(self) -> float:
        return self.live_p50 / self.none_p50


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14, 15)


def register_on_disk(home: Path, names: list[str]) -> None:
    """The plugins as hecated itself writes them (no fsync: set-up, not the test)."""
    root = home / ".hecate"
    root.mkdir(mode=0o700, exist_ok=True)
    now = datetime.now(UTC).replace(microsecond=0)
    for name in names:
        ns = root / name
        ns.mkdir(mode=0o700)
        for sub in SUBDIRS:
            (ns / sub).mkdir(mode=0o700)
        manifest = Manifest(name=name, version="1.0.0", registered_at=now, updated_at=now)
        (ns / "plugin.toml").write_bytes(dumps(manifest))


def listing(daemon: Hecated) -> list[dict]:
    return json.loads(fetch(daemon.socket, "/api/plugins"))


def wait_until(predicate, timeout: float, what: str) -> None:
    """Polls an end state (a bench, not a test: no event to wait on from outside)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench: {what} not reached within {timeout} s")
        time.sleep(0.1)


def measure(plugins: int = 100, idle: float = 30.0, rounds: int = 20, per_round: int = 100):
    """Both daemons, the plugin process, the idle window and the interleaved latency."""
    names = [f"hecate-app-p{i:03d}d" for i in range(plugins)]
    homes = [temp_home("hlv"), temp_home("hlv")]
    daemons: list[Hecated] = []
    server: subprocess.Popen | None = None
    try:
        for home in homes:
            register_on_disk(home, names)
            daemons.append(Hecated(home, None).start())
        for d in daemons:
            d.wait_answer()
        none, live = daemons
        namespaces = [str(live.home / ".hecate" / n) for n in names]
        server = subprocess.Popen(
            [sys.executable, str(PLUGIN), *namespaces], stdout=subprocess.PIPE, text=True
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"

        def all_live() -> bool:  # running, and each manifest read (the last step of a probe)
            return sum(
                p["status"] == "running" and p.get("display_name") is not None
                for p in listing(live)
            ) == len(names)

        wait_until(all_live, 120, "every plugin running with its manifest")
        before = [cpu_seconds(d.proc.pid) for d in daemons]
        began = time.monotonic()
        time.sleep(idle)  # the quantity measured is what hecated does while nobody asks
        spent = time.monotonic() - began
        cpu = [
            (cpu_seconds(d.proc.pid) - b) / spent * 100
            for d, b in zip(daemons, before, strict=True)
        ]
        samples: list[list[float]] = [[], []]
        for _ in range(rounds):
            for i, d in enumerate(daemons):
                client = Client(d.socket, "/api/plugins", keep_alive=False)
                samples[i] += [s * 1000 for s in client.run(per_round)]
        return Result(
            plugins=plugins,
            idle_seconds=spent,
            cpu_none=cpu[0],
            cpu_live=cpu[1],
            none_p50=median(samples[0]),
            none_p99=percentile(samples[0], 0.99),
            live_p50=median(samples[1]),
            live_p99=percentile(samples[1], 0.99),
            samples=len(samples[0]),
            bytes_none=len(fetch(none.socket, "/api/plugins")),
            bytes_live=len(fetch(live.socket, "/api/plugins")),
        )
    finally:
        stop_pid(server)
        for d in daemons:
            d.stop()
        for home in homes:
            remove(home)


def table(r: Result) -> str:
    ok = "✅" if r.cpu_live <= 1.0 else "❌"
    ok_ratio = "✅" if r.ratio <= 1.2 else "❌"
    return (
        "## Liveness probes (issue 12)\n\n"
        f"Two hecated side by side, {r.plugins} registered plugins each; in one, a plugin "
        "process (tests/plugin_support.py) serves every socket, so all are `running` with "
        "their manifests and probed every 10 s (the default). Idle CPU over the same "
        f"{r.idle_seconds:.0f} s; `GET /api/plugins` (new connection per request) in "
        f"alternating rounds, {r.samples} requests each. `bench/liveness.py`.\n\n"
        "| | none live (baseline) | all live | ratio | goal |\n|---|---|---|---|---|\n"
        f"| idle CPU, % of a core | {r.cpu_none:.2f} | {r.cpu_live:.2f} | | ≤ 1 % {ok} |\n"
        f"| `GET /api/plugins` p50 | {r.none_p50:.3f} ms | {r.live_p50:.3f} ms | {r.ratio:.2f}x "
        f"| ≤ 1.2x {ok_ratio} |\n"
        f"| `GET /api/plugins` p99 | {r.none_p99:.3f} ms | {r.live_p99:.3f} ms | "
        f"{r.live_p99 / r.none_p99:.2f}x | |\n"
        f"| list body | {r.bytes_none} B | {r.bytes_live} B | "
        f"{r.bytes_live / r.bytes_none:.2f}x | |\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plugins", type=int, default=100)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=100)
    args = parser.parse_args(argv)
    load = loadavg()
    result = measure(args.plugins, args.idle, args.rounds, args.per_round)
    print(table(result))
    print(f"_Load average at start {load}, at end {loadavg()}; unpinned._")
    return 0


if __name__ == "__main__":
    sys.exit(main())

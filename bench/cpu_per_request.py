"""Why 8 clients miss "p50 ≤ 5x nginx": the server's CPU time per request, hecated and nginx.

With 8 closed-loop clients on 2 CPUs the servers are saturated, and the p50 is
mostly requests queued behind other requests: it grows with the CPU each request
costs the server (and the clients, the same for both). This script measures that
cost directly, unpinned, in one run: the server process's user and system CPU
time (``/proc/PID/stat``, all its threads) over ``--requests`` requests, divided
by their number, for hecated (100 plugins, ``GET /api/plugins``) and nginx-light
(one worker, the same bytes from a file, bench/baselines.py), new connection and
keep-alive, 1 and 8 clients, rounds alternating. Beside it the p50 ratio of the
same requests, so the two can be compared.

    .venv/bin/python bench/cpu_per_request.py [--requests 4000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import baselines  # noqa: E402
from procs import Hecated, loadavg, make_plugins, percentile, remove, temp_home  # noqa: E402
from rawhttp import Client, fetch, run_clients  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` and all its threads so far."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def measure(pid: int, make, clients: int, count: int) -> tuple[float, float, float, float]:
    """µs of server user CPU and system CPU per request, the p50 and the p99 in µs."""
    u0, s0 = cpu_seconds(pid)
    lat, _wall = run_clients(make, clients, count // clients, None)
    u1, s1 = cpu_seconds(pid)
    n = len(lat)
    p99 = percentile(lat, 0.99)
    return (u1 - u0) / n * 1e6, (s1 - s0) / n * 1e6, statistics.median(lat) * 1e6, p99 * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--workers",
        type=int,
        action="append",
        default=[],
        help="also a hecated with --workers N (repeatable); the default one always runs",
    )
    args = parser.parse_args()
    work = temp_home("hcpu")
    daemons: dict[str, Hecated] = {}
    nginx = None
    try:
        for label, flags in [("hecated", [])] + [
            (f"hecated --workers {n}", ["--workers", str(n)]) for n in args.workers
        ]:
            home = work / f"h{len(daemons)}"
            home.mkdir()
            make_plugins(home, 100)
            daemons[label] = Hecated(home, None, flags).start()
            daemons[label].wait_answer()
        first = next(iter(daemons.values()))
        body = fetch(first.socket, "/api/plugins")
        baselines.ensure_installed(["nginx"])
        ndir = work / "nginx"
        ndir.mkdir()
        nginx = baselines.Nginx(ndir, None).start({"list.json": body})
        nginx_pid = nginx_worker(nginx.proc.pid)
        print(f"load average at start {loadavg()}")
        print(
            "| server | connection | clients | CPU µs/req (user + sys) | nginx CPU µs/req "
            "(user + sys) | CPU ratio | p50 | p50 ratio | p99 / own p50 |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for keep in (False, True):
            for clients in (1, 8):
                ours: dict[str, list[tuple[float, float, float, float]]] = {k: [] for k in daemons}
                base: list[tuple[float, float, float, float]] = []
                for _ in range(args.rounds):
                    for label, daemon in daemons.items():
                        ours[label].append(
                            measure(
                                daemon.proc.pid,
                                lambda _i, k=keep, d=daemon: Client(d.socket, "/api/plugins", k),
                                clients,
                                args.requests,
                            )
                        )
                    base.append(
                        measure(
                            nginx_pid,
                            lambda _i, k=keep: Client(nginx.socket, "/list.json", k),
                            clients,
                            args.requests,
                        )
                    )
                for label, rows in ours.items():
                    print(_row(label, keep, clients, rows, base), flush=True)
        print(f"load average at end {loadavg()}")
    finally:
        for daemon in daemons.values():
            daemon.stop()
        if nginx is not None:
            nginx.stop()
        remove(work)
    return 0


def _row(label: str, keep: bool, clients: int, ours: list, base: list) -> str:
    cpu_o = [u + s for u, s, _, _ in ours]
    cpu_b = [u + s for u, s, _, _ in base]
    ratio = [o / b for o, b in zip(cpu_o, cpu_b, strict=True)]
    p50 = [o[2] / b[2] for o, b in zip(ours, base, strict=True)]
    tail = [o[3] / o[2] for o in ours]
    return (
        f"| {label} | {'keep-alive' if keep else 'new'} | {clients} | "
        f"{_rng(cpu_o)} ({_rng([o[0] for o in ours])} + {_rng([o[1] for o in ours])}) | "
        f"{_rng(cpu_b)} ({_rng([b[0] for b in base])} + {_rng([b[1] for b in base])}) | "
        f"{min(ratio):.1f}-{max(ratio):.1f}x | {_rng([o[2] for o in ours])} µs | "
        f"{min(p50):.1f}-{max(p50):.1f}x | {min(tail):.1f}-{max(tail):.1f}x |"
    )


def nginx_worker(master: int) -> int:
    """The pid of nginx's one worker (the master only forks it and waits)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise RuntimeError("nginx started no worker")


def _rng(values: list[float]) -> str:
    return f"{min(values):.0f}-{max(values):.0f}"


if __name__ == "__main__":
    sys.exit(main())

"""On-demand start: a forwarded request to a stopped plugin, beside the plugin's own start.

Usage: .venv/bin/python bench/on_demand.py [--rounds 15]

A private ``systemd --user`` (tests/systemd_support.py, under the machine-wide
manager lock) with the example plugin (examples/hecate-exampled.py) as a real
``.service``, and a real hecated beside it (the manager's XDG_RUNTIME_DIR). Each
round, the unit stopped first (hecated sees it stopped):

- **forwarded**: ``GET /plugin/hecate-exampled/health`` through hecated's socket,
  from the request sent to its answer read: hecated finds no socket, starts the
  unit, holds the request until the plugin's socket answers (its finding, from
  the watcher and the prober), then relays it;
- **own start**: the same unit started by this process (``unitcontrol``: the start
  job, waited for), then the plugin's own socket asked ``GET /health`` every
  millisecond until it answers 2xx: the start job -> socket answers.

Both include what the example does when it starts (a Python start-up, its
registration with hecated). Goal (issue 20): forwarded <= own start + 100 ms.
The first round of each is a warm-up (the D-Bus library's first import) and is
not counted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from unit_support import (
    UserManager,
    answers,
    example_command,
    get,
    hecated_beside,
    ms,
    private_manager,
    unit_files,
    until,
)

from hecated.adapters.unitcontrol import UserManager as Control

NAME = "hecate-exampled"
UNIT = f"{NAME}.service"


def status(api: Path) -> str:
    return get(api, f"/api/plugins/{NAME}")[1].get("status", "")


def stopped(control: Control, api: Path) -> None:
    control.stop(UNIT)
    until(lambda: status(api) == "stopped", step=0.01)


def forwarded(api: Path) -> float:
    began = time.perf_counter()
    code, body = get(api, f"/plugin/{NAME}/health")
    took = time.perf_counter() - began
    if code != 200:
        raise RuntimeError(f"forwarded: {code} {body!r}")
    return took


def own_start(control: Control, plugin_sock: Path) -> float:
    began = time.perf_counter()
    control.start(UNIT)
    until(lambda: answers(plugin_sock))
    return time.perf_counter() - began


def measure(um: UserManager, rounds: int) -> tuple[list[float], list[float]]:
    """Forwarded and own starts, ``rounds`` of each after a warm-up round."""
    control = Control(address=um.bus_address)
    api = um.socket
    control.start(UNIT)  # it registers itself
    until(lambda: status(api) == "running", step=0.01)
    plugin_sock = um.home / ".hecate" / NAME / "sockets" / "api.sock"
    fwd, own = [], []
    for _ in range(rounds + 1):
        stopped(control, api)
        fwd.append(forwarded(api))
        stopped(control, api)
        own.append(own_start(control, plugin_sock))
    return fwd[1:], own[1:]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    with private_manager() as um:
        unit_files(um, {UNIT: example_command(NAME)})
        with hecated_beside(um):
            report(*measure(um, args.rounds))
    return 0


def report(fwd: list[float], own: list[float]) -> None:
    extra = [f - o for f, o in zip(fwd, own, strict=True)]
    print(f"rounds: {len(fwd)}")
    print(f"forwarded request to a stopped plugin -> its answer: {ms(fwd)}")
    print(f"the plugin's own start (start job -> socket answers): {ms(own)}")
    print(
        f"hecated's part (forwarded - own, median of medians): "
        f"{(statistics.median(fwd) - statistics.median(own)) * 1000:+.0f} ms (goal <= +100 ms)"
    )
    print(f"per round (forwarded - the next own start): {ms(extra)}")


if __name__ == "__main__":
    sys.exit(main())

"""Install as a file: a unit file dropped into gitops/apps -> the plugin listed running,
beside the same unit installed by hand (``daemon-reload`` + ``start`` with systemctl).

Usage: .venv/bin/python bench/gitops.py [--rounds 10]

A private ``systemd --user`` (tests/systemd_support.py, under the machine-wide manager
lock), a real hecated beside it (the manager's XDG_RUNTIME_DIR), and the example plugin
(examples/hecate-exampled.py, which registers itself with hecated when it starts) as the
unit's program. Each round, from the same state (unit stopped, no file anywhere, hecated
listing the plugin stopped):

- **gitops**: the unit file written into ``~/.hecate/gitops/apps/``; the clock stops when
  ``GET /api/plugins/hecate-exampled`` (asked every millisecond) says ``running``. hecated
  hears the file, waits for the tree to be quiet (``gitops_settle``, 0.1 s by default),
  links it into ``~/.config/systemd/user/``, reloads the manager once and starts the unit;
- **by hand**: the same file written into ``~/.config/systemd/user/``, then
  ``systemctl --user daemon-reload`` and ``systemctl --user start``, as a person does; the
  clock stops at the same answer.

Both include the example's own start (a Python start-up, its registration). Goal (issue
21): gitops <= by hand + 200 ms. The first round of each is a warm-up and is not counted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from unit_support import (
    UserManager,
    example_command,
    get,
    hecated_beside,
    ms,
    private_manager,
    until,
)

NAME = "hecate-exampled"
UNIT = f"{NAME}.service"
TEXT = f"[Unit]\nDescription=bench\n\n[Service]\nExecStart={example_command(NAME)}\n"


def row(api: Path) -> dict:
    code, body = get(api, f"/api/plugins/{NAME}")
    return body if code == 200 else {}


def running(api: Path) -> bool:
    return row(api).get("status") == "running"


def gone(um: UserManager, api: Path) -> None:
    """Back to the round's start: the unit stopped, its file nowhere, hecated says stopped."""
    until(lambda: row(api).get("status") in ("stopped", None), step=0.01)
    until(lambda: not os.path.lexists(um.unit_dir / UNIT), step=0.01)
    until(lambda: um.prop(UNIT, "ActiveState") == "inactive", step=0.05)


def by_gitops(um: UserManager, api: Path) -> float:
    src = um.home / ".hecate" / "gitops" / "apps" / UNIT
    began = time.perf_counter()
    src.write_text(TEXT)
    until(lambda: running(api))
    took = time.perf_counter() - began
    src.unlink()  # hecated stops the unit, removes its link, reloads
    until(lambda: not row(api).get("installed"), step=0.01)
    gone(um, api)
    return took


def by_hand(um: UserManager, api: Path) -> float:
    dest = um.unit_dir / UNIT
    began = time.perf_counter()
    dest.write_text(TEXT)
    um.systemctl("daemon-reload")
    um.systemctl("start", UNIT)
    until(lambda: running(api))
    took = time.perf_counter() - began
    um.systemctl("stop", UNIT)
    dest.unlink()
    um.systemctl("daemon-reload")
    gone(um, api)
    return took


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with private_manager() as um, hecated_beside(um):
        um.unit_dir.mkdir(parents=True, exist_ok=True)
        until(lambda: (um.home / ".hecate" / "gitops" / "apps").is_dir(), step=0.01)
        gitops, hand = [], []
        for _ in range(args.rounds + 1):
            gitops.append(by_gitops(um, um.socket))
            hand.append(by_hand(um, um.socket))
        report(gitops[1:], hand[1:])
    return 0


def report(gitops: list[float], hand: list[float]) -> None:
    print(f"rounds: {len(gitops)}")
    print(f"file dropped into gitops/apps -> listed running: {ms(gitops)}")
    print(f"by hand: file + daemon-reload + start -> listed running: {ms(hand)}")
    extra = (statistics.median(gitops) - statistics.median(hand)) * 1000
    print(f"hecated's part (gitops - by hand, medians): {extra:+.0f} ms (goal <= +200 ms)")


if __name__ == "__main__":
    sys.exit(main())

"""A daemon with an import spy (a ``sitecustomize`` on its PYTHONPATH) and a FIFO that
holds a thread at an import until the test lets it go: how test_fast and test_coldstart
show what a first answer needs, without timing anything."""

from __future__ import annotations

import os
from pathlib import Path

from conftest import Daemon, wait_for


def spied_daemon(home: Path, spy: str, out_name: str) -> tuple[Daemon, Path, Path]:
    """The daemon (not started), the file the spy writes, the FIFO it waits on."""
    spy_dir = home / "spy"
    spy_dir.mkdir()
    (spy_dir / "sitecustomize.py").write_text(spy)
    out, hold = home / out_name, home / "hold"
    os.mkfifo(hold)
    env = {"PYTHONPATH": str(spy_dir), "HECATE_TEST_SPY": str(out), "HECATE_TEST_HOLD": str(hold)}
    return Daemon(home, env=env), out, hold


def release(hold: Path) -> None:
    """Let the held thread go on: open the FIFO once its reader is there."""

    def opened() -> int | None:
        try:
            return os.open(hold, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: the held thread has not reached its import yet
            return None

    os.close(wait_for(opened, timeout=15))

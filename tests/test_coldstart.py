"""Cold start: what ``hecated serve`` loads before its first answer, and what waits.

Socket activation starts hecated on a client's first connection, so that client
waits for every import and every start-up chore before its answer (issue 22,
table 1). These tests hold the daemon's after-first-answer thread at its first
import and look at what the first answer needed: behaviour, not timing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, wait_for
from spy_support import release, spied_daemon

from hecated.cli import _daemon_parser, flags

# Loaded through PYTHONPATH before hecated: notes every module a thread imports
# (``thread name collector-on``), and holds the deferred thread at its first import until the
# test opens the FIFO. find_spec returns None: the normal import goes on.
SPY = """\
import gc, os, sys, threading

class _Spy:
    held = False

    def find_spec(self, name, path=None, target=None):
        thread = threading.current_thread().name
        with open(os.environ["HECATE_TEST_SPY"], "a") as out:
            out.write(f"{thread} {name} {int(gc.isenabled())}\\n")
        if thread == "hecated-deferred" and not _Spy.held:
            _Spy.held = True
            with open(os.environ["HECATE_TEST_HOLD"], "rb"):
                pass  # opening a FIFO to read waits for its writer
        return None

sys.meta_path.insert(0, _Spy())
"""

# Never needed for a first answer on a tree whose manifests need no parsing: the
# command line's parser, the TOML parser (no config file here), the parts the
# after-first-answer thread starts, and what only a purge or the gitops reconciler uses.
NOT_BEFORE_THE_FIRST_ANSWER = (
    "argparse",
    "tomllib",
    "werkzeug",
    "watchdog",
    "jeepney",
    "hecated.adapters.watch",
    "hecated.adapters.gitops",
    "hecated.adapters.unitstatus",
    "hecated.http.app",
    "hecated.core.installed",
    "hecated.core.purge",
)


def _spied(home: Path) -> tuple[Daemon, Path, Path]:
    return spied_daemon(home, SPY, "imported")


def _first_answer(daemon: Daemon) -> Any:
    daemon.start(wait=False)

    def answered() -> Any:
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()
        try:
            return daemon.request("GET", "/api/plugins")
        except OSError:
            return None

    return wait_for(answered, timeout=15)


@pytest.mark.parametrize("argv", [[], ["serve"]])
def test_a_plain_serve_parses_as_argparse_would(argv: list[str]) -> None:
    """``hecated serve`` without options skips argparse; it must get what argparse gives."""
    assert flags(argv) == vars(_daemon_parser().parse_args(argv))


def test_the_first_answer_waits_for_no_deferred_part(home: Path) -> None:
    daemon, spy, hold = _spied(home)
    try:
        status, _, listed = _first_answer(daemon)
        assert (status, listed) == (200, [])
        noted = [line.split(" ") for line in spy.read_text().splitlines()]
        imported = {name for thread, name, _ in noted if thread != "hecated-deferred"}
        assert imported.isdisjoint(NOT_BEFORE_THE_FIRST_ANSWER), sorted(
            imported & set(NOT_BEFORE_THE_FIRST_ANSWER)
        )
        # The cyclic collector is off while hecated starts and on again once it serves.
        collector = {(thread, name): on for thread, name, on in noted}
        assert collector[("MainThread", "hecated.daemon")] == "0"
        release(hold)  # it waits for the deferred thread, which noted its first import
        spy_lines = [line.split(" ") for line in spy.read_text().splitlines()]
        assert next(on for thread, _, on in spy_lines if thread == "hecated-deferred") == "1"
        status, _, body = daemon.register("after-first")
        assert status == 201, body
        assert daemon.request("GET", "/api/plugins/after-first")[0] == 200
        assert "Traceback" not in daemon.log()
    finally:
        assert daemon.stop() == 0

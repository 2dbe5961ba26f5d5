"""What the bench scripts that talk to hecated over its socket share, and those that run it
beside a private ``systemd --user`` (unit_idle, login_storm, gitops, on_demand; events and
edit_latency for the socket half).

The manager is tests/systemd_support.py's ``UserManager`` (under the machine-wide manager
lock), hecated a real one in that manager's HOME with its ``XDG_RUNTIME_DIR``, so it reaches
the manager's bus. Nothing here imitates either; every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))

import docsection  # noqa: E402
from conftest import Daemon, http_request  # noqa: E402
from systemd_support import UserManager, fresh_home, on_bus  # noqa: E402

__all__ = ["Daemon", "UserManager", "fresh_home", "http_request", "on_bus"]  # with those below

HECATED = Path(sys.executable).parent / "hecated"
EXAMPLED = REPO / "examples" / "hecate-exampled.py"


# -- hecated's socket ----------------------------------------------------------------------


def get(sock: Path | str, target: str, timeout: float = 60.0) -> tuple[int, Any]:
    """``GET target`` on a new connection: the status and the JSON body."""
    status, _, body = http_request(Path(sock), "GET", target, timeout=timeout)
    return status, body


def answers(sock: Path | str) -> bool:
    """``GET /health`` on ``sock`` answers 2xx (hecated's or a plugin's)."""
    try:
        return 200 <= get(sock, "/health", 5.0)[0] < 300
    except OSError:
        return False


def until(
    test: Callable[[], Any], timeout: float = 60.0, step: float = 0.001, what: str = "condition"
) -> Any:
    """``test()``'s first true value, asked every ``step`` seconds for ``timeout`` at most."""
    deadline = time.monotonic() + timeout
    while not (value := test()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g} s")
        time.sleep(step)
    return value


# -- a private manager and hecated beside it -----------------------------------------------


@contextlib.contextmanager
def private_manager(journald: bool = False) -> Iterator[UserManager]:
    """A private ``systemd --user``, up and on its session bus; stopped after."""
    um = UserManager(journald=journald).start()
    try:
        until(lambda: on_bus(um), 60, 0.05, "the manager on its bus")
        yield um
    finally:
        um.stop()


def unit_files(um: UserManager, commands: dict[str, str], target: str | None = None) -> None:
    """One ``[Service]`` unit per name (``ExecStart=`` its command), and a target wanting
    them all when ``target`` is named; read by one daemon-reload."""
    um.unit_dir.mkdir(parents=True, exist_ok=True)
    for unit, command in commands.items():
        (um.unit_dir / unit).write_text(f"[Service]\nExecStart={command}\n")
    if target is not None:
        (um.unit_dir / target).write_text(f"[Unit]\nWants={' '.join(commands)}\n")
    um.systemctl("daemon-reload")


def example_command(name: str) -> str:
    """The example plugin (it registers itself with hecated as it starts) as ``name``."""
    return f"{sys.executable} {EXAMPLED} --name {name}"


@contextlib.contextmanager
def hecated_beside(um: UserManager) -> Iterator[subprocess.Popen]:
    """hecated as the user's session runs it beside ``um`` (its HOME, runtime dir and bus),
    answering; stopped (SIGTERM, by its pid) after."""
    env = {**os.environ, "HOME": str(um.home), "XDG_RUNTIME_DIR": str(um.runtime)}
    for key in ("DBUS_SESSION_BUS_ADDRESS", "XDG_CONFIG_HOME"):
        env.pop(key, None)
    with (um.base / "hecated.log").open("ab") as log:
        proc = subprocess.Popen([str(HECATED)], env=env, stdout=log, stderr=log)
    try:
        until(lambda: um.socket.exists() and answers(um.socket), step=0.01, what="hecated")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Daemons:
    """The tests' hecated ``Daemon``s a bench starts: one beside the manager (its HOME,
    runtime dir and bus), controls in fresh HOMEs (empty, no manager); all killed at the
    end, by their pids, and the controls' HOMEs removed."""

    def __init__(self) -> None:
        self.started: list[Daemon] = []
        self.homes: list[Path] = []

    def beside(self, um: UserManager) -> Daemon:
        d = Daemon(um.home, env={"XDG_RUNTIME_DIR": str(um.runtime)})
        d.env.pop("DBUS_SESSION_BUS_ADDRESS", None)
        self.started.append(d.start())
        return d

    def control(self, prefix: str) -> Daemon:
        d = Daemon(fresh_home(prefix))
        self.homes.append(d.home)
        self.started.append(d.start())
        return d

    def __enter__(self) -> Daemons:
        return self

    def __exit__(self, *exc: object) -> None:
        for d in self.started:
            d.kill()
        for home in self.homes:
            shutil.rmtree(home, ignore_errors=True)


# -- what a bench says ---------------------------------------------------------------------


def ms(values: list[float]) -> str:
    """Seconds as ``median X ms, min Y, max Z``."""
    return (
        f"median {statistics.median(values) * 1000:.0f} ms, "
        f"min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f}"
    )


def commit() -> str:
    """The short commit measured (of the checkout this bench runs from)."""
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_section(out: str, heading: str, text: str) -> None:
    """``text`` in place of the section headed ``heading`` in ``out`` (bench/docsection)."""
    docsection.write(out, heading, text)


def run_section(
    parser: argparse.ArgumentParser,
    heading: str,
    measure: Callable[[argparse.Namespace, UserManager, Daemons], str],
) -> int:
    """A bench's ``main``: its arguments and ``--out``, ``measure`` run beside a private
    manager (the hecateds it starts through ``Daemons``), its section written."""
    parser.add_argument(
        "--out",
        default=str(REPO / "docs" / "benchmarks.md"),
        help=f"the file whose section {heading.split('.')[0]!r} this replaces (appended when "
        "there is none); '-' prints it only",
    )
    args = parser.parse_args()
    with private_manager() as um, Daemons() as daemons:
        text = measure(args, um, daemons)
    write_section(args.out, heading, text)
    return 0

"""A private user manager with a stand-in Quadlet, and hecated beside it, for the gitops tests.

Nothing here imitates hecated or systemd. The one stand-in is Quadlet, podman's
user generator (no podman 4.4 on Debian 12): a shell generator that does what
Quadlet does with a ``*.container`` in ``~/.config/containers/systemd`` for these
tests (its ``[Container]`` section dropped, the rest becomes ``NAME.service`` in the
generator's output directory) and what hecated must avoid (it aborts on a dangling
link, as Quadlet's generator does). It also appends one line per run to
``~/generator.runs``: what the two unit directories held when the manager ran its
generators, which it does exactly once per daemon-reload. That file counts reloads
and shows what each reload saw, from the manager's side. The manager finds it
through ``$SYSTEMD_GENERATOR_PATH`` (systemd's own override), and so does hecated.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from conftest import HECATED, Daemon, wait_for
from systemd_support import UserManager, on_bus

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "hecate-exampled.py"
PYTHON = HECATED.parent / "python"
TIMEOUT = 60.0
_LOGS = itertools.count()  # one log file per hecated started in the module

STAND_IN_QUADLET = r"""#!/bin/sh
# A stand-in for podman's Quadlet generator, for hecated's gitops tests only.
out="$1"
conf="${XDG_CONFIG_HOME:-$HOME/.config}"
quadlet="$conf/containers/systemd"
runs="$HOME/generator.runs"
{ ls -A "$conf/systemd/user"; ls -A "$quadlet"; } 2>/dev/null | tr '\n' ' ' >> "$runs"
echo >> "$runs"
for f in "$quadlet"/*.container; do
    [ -L "$f" ] || [ -e "$f" ] || continue
    if [ ! -e "$f" ]; then
        echo "quadlet stand-in: $f is a dangling link" >&2
        exit 1
    fi
    name=$(basename "$f" .container)
    awk '/^\[/ { keep = ($0 != "[Container]") } keep' "$f" > "$out/$name.service"
done
"""


@contextlib.contextmanager
def manager_with_quadlet() -> Iterator[UserManager]:
    """A private manager on its bus whose generators are the stand-in Quadlet alone."""
    um = UserManager(journald=False)
    generators = um.base / "generators"
    generators.mkdir()
    gen = generators / "podman-user-generator"
    gen.write_text(STAND_IN_QUADLET)
    gen.chmod(0o755)
    um.env["SYSTEMD_GENERATOR_PATH"] = str(generators)
    um.start()
    try:
        wait_for(lambda: on_bus(um), timeout=60)
        yield um
    finally:
        um.stop()


def fake_podman(folder: Path, version: str) -> Path:
    """A ``podman`` that only says its version (what the script's preflight and hecated's
    Quadlet check ask of it); the folder goes first on PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    podman = folder / "podman"
    podman.write_text(f"#!/bin/sh\necho 'podman version {version}'\n")
    podman.chmod(0o755)
    return folder


class World:
    """One test's gitops tree, hecated and units over the module's manager; all undone after."""

    def __init__(self, um: UserManager) -> None:
        self.um = um
        self.gitops = um.home / ".hecate" / "gitops"
        self.apps = self.gitops / "apps"
        self.quadlet_dir = um.home / ".config" / "containers" / "systemd"
        self.daemons: list[Daemon] = []
        self.made: list[Path] = []  # files a test put into the unit directories

    def hecated(
        self, env: dict[str, str] | None = None, quadlet: bool = True, args: tuple[str, ...] = ()
    ) -> Daemon:
        """hecated as the user runs it beside that manager (the bus at $XDG_RUNTIME_DIR/bus)."""
        extra = {"XDG_RUNTIME_DIR": str(self.um.runtime)}
        if quadlet:
            extra["SYSTEMD_GENERATOR_PATH"] = self.um.env["SYSTEMD_GENERATOR_PATH"]
        d = Daemon(self.um.home, list(args), env={**extra, **(env or {})})
        d.env.pop("DBUS_SESSION_BUS_ADDRESS", None)
        d.env.pop("XDG_CONFIG_HOME", None)
        # Its own log: the module's tests share the manager's HOME, not their logs.
        d.stderr_path = self.um.base / f"hecated-{next(_LOGS)}.stderr"
        self.daemons.append(d)
        return d.start()

    def write(self, name: str, text: str, folder: Path | None = None) -> Path:
        folder = folder or self.apps
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        path.write_text(text)
        return path

    def runs(self) -> list[str]:
        """One line per generator run (manager start, then one per daemon-reload)."""
        path = self.um.home / "generator.runs"
        return path.read_text().splitlines() if path.exists() else []

    def prop(self, unit: str, name: str) -> str:
        return self.um.prop(unit, name)

    def close(self) -> None:
        for d in self.daemons:
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
        units = set()
        for folder in (self.um.unit_dir, self.quadlet_dir):
            for entry in folder.glob("*") if folder.exists() else []:
                if entry.is_symlink() or entry in self.made:
                    units.add(entry.with_suffix(".service").name)
                    entry.unlink()
        if units:
            self.um.systemctl("stop", *sorted(units), check=False)
            self.um.systemctl("reset-failed", *sorted(units), check=False)
        shutil.rmtree(self.um.home / ".hecate", ignore_errors=True)
        self.um.systemctl("daemon-reload", check=False)


def service_text(name: str, description: str = "", extra: str = "") -> str:
    """The example plugin as a unit file: it registers itself and answers on its socket."""
    return (
        f"[Unit]\nDescription={description or 'test ' + name}\n\n[Service]\n"
        f"ExecStart={PYTHON} {EXAMPLE} --name {name}\n{extra}"
    )


def sleeper_text(description: str = "a sleeper") -> str:
    return f"[Unit]\nDescription={description}\n\n[Service]\nExecStart=/bin/sleep infinity\n"


def container_text(command: str = "/bin/sleep infinity") -> str:
    """A Quadlet file: [Container] for podman, [Service] passed through as Quadlet does."""
    return (
        "[Unit]\nDescription=a container\n\n[Container]\nImage=docker.io/library/busybox\n\n"
        f"[Service]\nExecStart={command}\n"
    )


def listed(d: Daemon, test: Callable[[dict[str, Any]], Any], name: str | None = None) -> Any:
    """``name``'s row (or the whole list, ``name`` None) once ``test`` holds, following
    the change feed's long polls."""
    deadline = time.monotonic() + TIMEOUT
    status, headers, body = d.request("GET", "/api/plugins")
    while True:
        assert status == 200, body
        got = body if name is None else next((p for p in body if p["name"] == name), None)
        if got is not None and test(got):
            return got
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"never passed the test; last: {got}\n{d.log()[-3000:]}")
        seq = headers["X-Hecate-Seq"]
        wait = min(left, 5.0)
        status, headers, body = d.request("GET", f"/api/plugins?since={seq}&wait={wait:.2f}")


def active(row: dict[str, Any]) -> bool:
    unit = row.get("unit")
    return unit is not None and unit["active_state"] == "active"


__all__ = [
    "PYTHON",
    "World",
    "active",
    "container_text",
    "fake_podman",
    "listed",
    "manager_with_quadlet",
    "reconciler_script",
    "service_text",
    "sleeper_text",
]


# The ecosystem's reconciler, hecate-gitops' reconciler/hecate-reconciler.sh (MIT), is run
# as it is published, never copied into this repository: from $HECATE_RECONCILER_SH, else
# from a clone of hecate-gitops ($HECATE_GITOPS_REPO, or this machine's mirror of it).
RECONCILER_PATH = "reconciler/hecate-reconciler.sh"
GITOPS_CLONES = ("/work/.mirror/hecate-social+hecate-gitops/repo",)


def reconciler_script() -> str | None:
    """The script's text, or None when no copy of it is at hand."""
    given = os.environ.get("HECATE_RECONCILER_SH")
    if given:
        return Path(given).read_text()
    for repo in filter(None, (os.environ.get("HECATE_GITOPS_REPO"), *GITOPS_CLONES)):
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            return subprocess.run(
                ["git", "-C", repo, "show", f"HEAD:{RECONCILER_PATH}"],
                capture_output=True,
                text=True,
                check=True,
                timeout=30,
            ).stdout
    return None

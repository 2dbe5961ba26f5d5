"""Helpers for the packaging tests: apt as root, Debian's own environment, a user manager.

The user manager is tests/systemd_support.py's ``UserManager`` (a real
``/usr/lib/systemd/systemd --user`` with a fresh HOME under /home and its own
XDG_RUNTIME_DIR), so units a package installs under /usr/lib/systemd/user/
are found and activated exactly as at a user's login. HOME is not under /tmp
because the shipped hecate.service has PrivateTmp=yes.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from systemd_support import UserManager

SYS_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
APT_LOCK = ["-o", "DPkg::Lock::Timeout=300"]
# No journald runs here: the service's output goes to a file a failing test can show.
LOG_DROP_IN = """[Service]
StandardOutput=append:%h/hecated.log
StandardError=append:%h/hecated.log
"""


def system_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment with nothing of the caller's Python: Debian's /usr/bin first."""
    return {"PATH": SYS_PATH, "HOME": str(home), "LANG": "C.UTF-8", "USER": "root", **extra}


def run(
    cmd: list[str], env: dict[str, str] | None = None, check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run from ``/``, so that ``python3 -c`` never imports the checkout instead of the package."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd="/")
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


@contextmanager
def user_manager() -> Iterator[UserManager]:
    """A started private user manager whose hecate.service logs to ~/hecated.log."""
    um = UserManager()
    try:
        um.start()
        um.drop_in("hecate.service", "00-test-log", LOG_DROP_IN)
        um.systemctl("daemon-reload")
        yield um
    finally:
        um.stop()  # stops the units, then the manager by pid; removes its HOME


def main_pid(um: UserManager, unit: str) -> int:
    return int(um.prop(unit, "MainPID") or 0)


def apt_env() -> dict[str, str]:
    return {"PATH": SYS_PATH, "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}


def is_installed(package: str) -> bool:
    proc = run(["dpkg-query", "-W", "-f=${Status}", package], env=apt_env(), check=False)
    return proc.returncode == 0 and "installed" in proc.stdout.split()


def purge(package: str) -> None:
    """Purge ``package`` if dpkg knows it at all (installed or config files left)."""
    if run(["dpkg", "-s", package], env=apt_env(), check=False).returncode == 0:
        run(["apt-get", *APT_LOCK, "purge", "-y", package], env=apt_env())

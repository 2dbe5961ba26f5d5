"""Helpers for the packaging tests: a private systemd user manager and apt as root.

The user manager is a real ``/usr/lib/systemd/systemd --user`` with its own
HOME and XDG_RUNTIME_DIR, so units installed by a package under
/usr/lib/systemd/user/ are found and activated exactly as at a user's login,
without touching any real user's session. It is stopped by pid.

HOME lives under /home, not /tmp: the shipped hecate.service has
PrivateTmp=yes, which would hide a HOME under /tmp from the service (the
same choice as tests/systemd_support.py, whose UserManager this mirrors).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from conftest import wait_for

SYSTEMD = Path("/usr/lib/systemd/systemd")
SYS_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# systemctl refuses to work unless it believes systemd is the init system.
BOOTED_FLAG = Path("/run/systemd/system")
TEST_HOMES = Path(os.environ.get("HECATE_TEST_HOMES", "/home/hecate-tests"))
# No journald runs here: the service's output goes to a file a failing test can show.
LOG_DROP_IN = """[Service]
StandardOutput=append:%h/hecated.log
StandardError=append:%h/hecated.log
"""


def fresh_base(prefix: str) -> Path:
    """A fresh 0700 directory outside /tmp, with a short path (socket paths are short)."""
    TEST_HOMES.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=TEST_HOMES))
    path.chmod(0o700)
    return path


def system_env(home: Path, **extra: str) -> dict[str, str]:
    """An environment with nothing of the caller's Python: Debian's /usr/bin first."""
    return {"PATH": SYS_PATH, "HOME": str(home), "LANG": "C.UTF-8", "USER": "root", **extra}


def run(
    cmd: list[str], env: dict[str, str] | None = None, check: bool = True, timeout: float = 600
):
    """Run from ``/``, so that ``python3 -c`` never imports the checkout instead of the package."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd="/")
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


class UserManager:
    """``systemd --user`` with a fresh HOME and XDG_RUNTIME_DIR (both 0700)."""

    def __init__(self) -> None:
        self.base = fresh_base("pum")
        self.home = self.base / "home"
        self.runtime = self.base / "run"
        self.home.mkdir(mode=0o700)
        self.runtime.mkdir(mode=0o700)
        self.env = system_env(self.home, XDG_RUNTIME_DIR=str(self.runtime))
        self.proc: subprocess.Popen | None = None
        self._made_flag = False
        self.log_path = self.base / "manager.log"

    def start(self) -> UserManager:
        drop_in = self.home / ".config" / "systemd" / "user" / "hecate.service.d"
        drop_in.mkdir(parents=True)
        (drop_in / "00-test-log.conf").write_text(LOG_DROP_IN)
        if not BOOTED_FLAG.exists():
            BOOTED_FLAG.mkdir(parents=True)
            self._made_flag = True
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(SYSTEMD), "--user"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            cwd=self.home,
            start_new_session=True,
        )
        wait_for(self._running, timeout=30, interval=0.1)
        return self

    def _running(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd --user exited {self.proc.returncode}: {self.log()}")
        if not (self.runtime / "systemd" / "private").exists():
            return False
        state = self.systemctl("is-system-running", check=False).stdout.strip()
        return state in ("running", "degraded")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def service_log(self) -> str:
        path = self.home / "hecated.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(["systemctl", "--user", "--no-pager", *args], env=self.env, check=check)

    def main_pid(self, unit: str) -> int:
        out = self.systemctl("show", "-P", "MainPID", unit).stdout.strip()
        return int(out or 0)

    def stop(self) -> None:
        pids: list[int] = []
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                pids = [self.main_pid("hecate.service")]
            self.proc.send_signal(signal.SIGTERM)  # a user manager starts exit.target
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        for pid in pids:  # a service the manager failed to stop must not outlive the test
            if pid > 0:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if hasattr(self, "_log"):
            self._log.close()
        if self._made_flag:
            with contextlib.suppress(OSError):
                BOOTED_FLAG.rmdir()
        shutil.rmtree(self.base, ignore_errors=True)


def apt_env() -> dict[str, str]:
    return {"PATH": SYS_PATH, "DEBIAN_FRONTEND": "noninteractive", "LANG": "C.UTF-8"}


APT_LOCK = ["-o", "DPkg::Lock::Timeout=300"]


def is_installed(package: str) -> bool:
    proc = run(["dpkg-query", "-W", "-f=${Status}", package], env=apt_env(), check=False)
    return proc.returncode == 0 and "installed" in proc.stdout.split()


def purge(package: str) -> None:
    """Purge ``package`` if dpkg knows it at all (installed or config files left)."""
    if run(["dpkg", "-s", package], env=apt_env(), check=False).returncode == 0:
        run(["apt-get", *APT_LOCK, "purge", "-y", package], env=apt_env())

"""Real systemd for the tests: a private ``systemd --user`` manager, socket activation, sd_notify.

Nothing here imitates systemd. ``UserManager`` runs the distro's own
``/usr/lib/systemd/systemd --user`` with a fresh HOME and XDG_RUNTIME_DIR and
drives it with ``systemctl --user``; ``socket_activate`` runs hecated under
``systemd-socket-activate``; ``NotifyListener`` is a datagram socket that
receives what hecated sends to ``NOTIFY_SOCKET``.

HOME lives under /home (not /tmp): the shipped unit has PrivateTmp=yes, which
hides /tmp from the service, and ReadWritePaths=%h/.hecate must exist in the
service's mount namespace.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import HECATED, Daemon, http_request, wait_for

from hecated.tools.units import hidden_from_service

SYSTEMD = Path("/usr/lib/systemd/systemd")
SOCKET_ACTIVATE = shutil.which("systemd-socket-activate")
SYSTEMCTL = shutil.which("systemctl")
TEST_HOMES = Path(os.environ.get("HECATE_TEST_HOMES", "/home/hecate-tests"))


def needs(condition: bool, why: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not condition, reason=why)


# hecated exactly as shipped, started through a wrapper that adds the one thing the
# daemon itself never does: SIGUSR2 freezes the main thread, which is the serving
# loop (Python runs signal handlers there), for good. The supervisor thread runs on,
# so the watchdog tests see hecated's own heartbeat check withhold the pings. The
# wrapper lives here, not in hecated/: nothing in the shipped daemon can freeze it.
FREEZE_ON_SIGUSR2 = (
    "import signal, sys, threading; "
    "from hecated.cli import hecated_main; "
    "signal.signal(signal.SIGUSR2, lambda *_: threading.Event().wait()); "
    "sys.exit(hecated_main())"
)
FREEZABLE_HECATED = [str(HECATED.parent / "python"), "-c", FREEZE_ON_SIGUSR2]


def freezable_exec_start() -> str:
    """An ``ExecStart=`` line running the freezable wrapper (systemd's own quoting)."""
    python, flag, code = FREEZABLE_HECATED
    return f'{python} {flag} "{code}" serve'


needs_socket_activate = needs(bool(SOCKET_ACTIVATE), "systemd-socket-activate is not installed")
needs_user_manager = needs(
    SYSTEMD.exists() and bool(SYSTEMCTL) and os.geteuid() == 0,
    "needs /usr/lib/systemd/systemd, systemctl and root (for /run/systemd/system)",
)


def fresh_home(prefix: str = "h") -> Path:
    """A fresh 0700 HOME outside /tmp, with a short path (socket paths are short)."""
    TEST_HOMES.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=TEST_HOMES))
    path.chmod(0o700)
    return path


def checkout_in_private_tmp() -> str:
    """The top directories under /tmp or /var/tmp that hold this venv's hecated or this
    checkout (space-separated, as BindReadOnlyPaths= takes them); empty when none does."""
    tops = set()
    for path in (HECATED.resolve(), Path(__file__).resolve().parent.parent):
        hidden = hidden_from_service(path)
        if hidden:
            tops.add(str(Path(hidden) / path.relative_to(hidden).parts[0]))
    return " ".join(sorted(tops))


def stop_pid(proc: subprocess.Popen, timeout: float = 10) -> None:
    """Stop a process we started, by its pid: TERM, then KILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


RUN_SYSTEM = Path("/run/systemd/system")
_RUNNING: list[UserManager] = []  # managers started and not yet stopped, in this process
_MADE_RUN_SYSTEM: list[Path] = []  # RUN_SYSTEM, when a manager of ours made it
# Managers started here all land in this process's cgroup: two processes' managers
# (two suites, a suite and `make bench`) would stop each other's services. The
# first manager of a process takes this lock and the last to stop releases it,
# so such runs take turns instead of failing. bench/cold_start.py takes it too.
MANAGER_LOCK = Path(os.environ.get("HECATE_MANAGER_LOCK", "/run/lock/hecated-user-manager.lock"))
_LOCK_FD: list[int] = []


def _hold_manager_lock() -> None:
    if _LOCK_FD:
        return
    inherited = _inherited_lock_fd()
    if inherited is not None:  # `flock LOCK pytest ...`: the lock our parent took is ours
        fcntl.flock(inherited, fcntl.LOCK_EX)
        _LOCK_FD.append(-1)
        return
    MANAGER_LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(MANAGER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)  # waits for the other process's managers to stop
    _LOCK_FD.append(fd)


def _inherited_lock_fd() -> int | None:
    """An fd on the lock file we were started with (flock(1) passes its locked fd on):
    locking the file anew would wait for ourselves."""
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}") == str(MANAGER_LOCK):
                return int(name)
    return None


def _release_manager_lock() -> None:
    if _LOCK_FD and (fd := _LOCK_FD.pop()) >= 0:
        os.close(fd)  # closing the only fd drops the flock (an inherited one is not ours)


JOURNALD = Path("/lib/systemd/systemd-journald")
JOURNAL_DIR = Path("/run/systemd/journal")


class Journald:
    """The distro's systemd-journald, started by hand (it runs as root without being PID 1).

    Started only when no journald listens already (then that one is used, and left
    alone); stopped by its pid. A user manager started after it hands its services'
    stdout to journald's stream socket, so their lines land in /run/log/journal."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self) -> Journald:
        if journal_listening(JOURNAL_DIR / "socket"):
            return self
        self.proc = subprocess.Popen(
            [str(JOURNALD)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None
        )
        wait_for(self._listening, timeout=30)
        return self

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"systemd-journald exited with {self.proc.returncode}")
        return journal_listening(JOURNAL_DIR / "socket") and (JOURNAL_DIR / "stdout").exists()

    def stop(self) -> None:
        if self.proc is not None:
            stop_pid(self.proc)
            self.proc = None


needs_journald = needs(
    JOURNALD.exists() and os.geteuid() == 0, "needs /lib/systemd/systemd-journald and root"
)


def descendants(pid: int) -> list[int]:
    """Every live process under ``pid`` (children, their children...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (an orphan is reaped by init: a zombie counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


class UserManager:
    """A private ``systemd --user`` with its own HOME and XDG_RUNTIME_DIR.

    ``journald``: start a journald first (if none runs), stopped with the manager."""

    def __init__(self, journald: bool = False) -> None:
        self.journald = Journald() if journald else None
        self.orphans: list[int] = []  # processes a crashed manager left behind
        self.base = fresh_home("um")
        self.home = self.base / "home"
        self.runtime = self.base / "run"
        self.home.mkdir(mode=0o700)
        self.runtime.mkdir(mode=0o700)
        self.log_path = self.base / "manager.log"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.runtime),
            "LANG": "C.UTF-8",
        }
        self.proc: subprocess.Popen | None = None

    @property
    def unit_dir(self) -> Path:
        return self.home / ".config" / "systemd" / "user"

    @property
    def socket(self) -> Path:
        return self.home / ".hecate" / "hecate-daemon" / "sockets" / "api.sock"

    def start(self) -> UserManager:
        # systemd --user wants to see a booted system; made here, removed by the last
        # manager of this process to stop, if it was not there before.
        _hold_manager_lock()
        _RUNNING.append(self)
        if not RUN_SYSTEM.exists():
            RUN_SYSTEM.mkdir(parents=True)
            _MADE_RUN_SYSTEM.append(RUN_SYSTEM)
        try:
            if self.journald is not None:
                self.journald.start()  # before the manager, which connects its services to it
            self._spawn()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(SYSTEMD), "--user", "--log-target=console", "--log-level=info"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.home,
                start_new_session=True,
            )
        wait_for(self._running, timeout=60, interval=0.05)

    def _running(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"systemd --user exited: {self.log()}")
        state = self.systemctl("is-system-running", check=False).stdout.strip()
        return state in ("running", "degraded")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(SYSTEMCTL), "--user", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"systemctl --user {' '.join(args)} failed ({result.returncode}): "
                f"{result.stdout}{result.stderr}\n--- manager log ---\n{self.log()[-3000:]}"
            )
        return result

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """A command in the manager's environment (hecated install-units, systemd-analyze)."""
        result = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"{cmd} failed: {result.stdout}{result.stderr}")
        return result

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.systemctl("show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def prop(self, unit: str, name: str) -> str:
        return self.show(unit, name)[name]

    def request(self, method: str = "GET", path: str = "/api/plugins", body=None):
        return http_request(self.socket, method, path, body)

    def drop_in(self, unit: str, name: str, text: str) -> None:
        directory = self.unit_dir / f"{unit}.d"
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{name}.conf").write_text(text)

    def reset(self) -> None:
        """Back to nothing installed: units stopped and removed, ~/.hecate gone."""
        self.systemctl("stop", "hecate.socket", "hecate.service", check=False)
        self.systemctl("disable", "hecate.socket", check=False)
        self.systemctl("reset-failed", check=False)
        shutil.rmtree(self.unit_dir, ignore_errors=True)
        shutil.rmtree(self.home / ".hecate", ignore_errors=True)
        self.systemctl("daemon-reload")

    def install(self, *drop_ins: tuple[str, str]) -> None:
        """``hecated install-units`` exactly as a user runs it, then the two commands it prints."""
        out = self.run(str(HECATED), "install-units").stdout
        assert "systemctl --user daemon-reload" in out
        self.drop_in("hecate.service", "00-test-log", _LOG_DROP_IN)
        shown = checkout_in_private_tmp()
        if shown:
            # A checkout under /tmp (a CI clone): PrivateTmp=yes would hide the venv's
            # hecated from the service (203/EXEC). It is bound into the service's private
            # /tmp, read-only; the sandbox stays as shipped. (PrivateTmp=no, as before,
            # left /tmp read-only under ProtectSystem=strict: systemd-analyze, which makes
            # its working directory in /tmp whatever $TMPDIR says, could not verify.)
            self.drop_in("hecate.service", "00-test-tmp", f"[Service]\nBindReadOnlyPaths={shown}\n")
        for name, text in drop_ins:
            self.drop_in("hecate.service", name, text)
        self.systemctl("daemon-reload")
        self.systemctl("enable", "--now", "hecate.socket")

    def service_log(self) -> str:
        path = self.home / "hecated.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def bus_address(self) -> str:
        return f"unix:path={self.runtime}/bus"

    def crash(self) -> None:
        """SIGKILL the manager, as a crash would: what it started (the bus, the units'
        processes) runs on, orphaned; ``stop`` ends them, by pid."""
        assert self.proc is not None
        self.orphans += descendants(self.proc.pid)
        self.proc.kill()
        self.proc.wait(15)

    def kill_orphan(self, comm: str) -> None:
        """SIGKILL what the crashed manager left running under that name (its bus:
        ``dbus-daemon``), by pid, and wait until it is gone."""
        for pid in self.orphans:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                    os.kill(pid, signal.SIGKILL)
                    wait_for(lambda p=pid: _gone(p), timeout=15)

    def respawn(self) -> None:
        """A new manager in the same HOME and XDG_RUNTIME_DIR, after ``crash``."""
        self._spawn()

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(Exception):
                self.systemctl("stop", "hecate.socket", "hecate.service", check=False)
            stop_pid(self.proc, timeout=20)
        for pid in self.orphans:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.orphans.clear()
        if self.journald is not None:
            self.journald.stop()
        shutil.rmtree(self.base, ignore_errors=True)
        if self in _RUNNING:
            _RUNNING.remove(self)
        if not _RUNNING and _MADE_RUN_SYSTEM:
            with contextlib.suppress(OSError):
                _MADE_RUN_SYSTEM.pop().rmdir()
        if not _RUNNING:
            _release_manager_lock()


# Where the service's output goes in the tests: no journald runs here, and a
# file is what a failing test wants to show. It changes nothing else.
_LOG_DROP_IN = """[Service]
StandardOutput=append:%h/hecated.log
StandardError=append:%h/hecated.log
"""


class NotifyListener:
    """A datagram socket standing in for the manager's ``NOTIFY_SOCKET``."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "notify.sock"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(os.fspath(self.path))
        self.messages: list[str] = []

    def receive(self, timeout: float) -> str | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536).decode()
        except TimeoutError:
            return None
        self.messages.append(data)
        return data

    def wait_for(self, needle: str, timeout: float = 15) -> str:
        """The first message (from now on) holding the assignment ``needle``."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            message = self.receive(left)
            if message is not None and needle in message.split("\n"):
                return message
        raise AssertionError(f"no {needle!r} within {timeout}s; got {self.messages}")

    def drain(self) -> None:
        while self.receive(0.05) is not None:
            pass

    def close(self) -> None:
        self.sock.close()


def socket_activate(
    sockets: Path | str | list[Path | str],
    home: Path,
    args: list[str],
    env: dict[str, str],
    names: str | None = None,
    command: list[str] | None = None,
) -> subprocess.Popen:
    """``systemd-socket-activate -l SOCK... [--fdname=A:B] [-E K=V...] -- hecated ARGS``.

    ``command`` replaces ``hecated`` (the freezable wrapper, say)."""
    cmd = [str(SOCKET_ACTIVATE)]
    for sock in sockets if isinstance(sockets, list) else [sockets]:
        cmd += ["-l", str(sock)]
    if names:
        cmd.append(f"--fdname={names}")
    for key, value in {"HOME": str(home), **env}.items():
        cmd += ["-E", f"{key}={value}"]
    with (home / "activate.log").open("ab") as log:
        program = command or [str(HECATED)]
        return subprocess.Popen([*cmd, "--", *program, *args], stdout=log, stderr=log)


def tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as fh:
            for line in list(fh)[1:]:
                inodes.add(line.split()[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                found.add(target[len("socket:[") : -1])
    return found


def assert_no_tcp(pid: int) -> None:
    """The process holds no TCP socket at all (listening or not)."""
    assert not socket_inodes(pid) & tcp_inodes(), f"pid {pid} holds a TCP socket"


def journal_listening(path: Path) -> bool:
    """Whether a live socket (a real journald, or another run's stand-in) is bound there."""
    if not path.exists():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(os.fspath(path))
    except OSError:
        return False  # ECONNREFUSED: a socket file nobody is bound to any more
    finally:
        probe.close()
    return True


@contextlib.contextmanager
def fake_journal() -> Iterator[socket.socket | None]:
    """A datagram listener at /run/systemd/journal/socket, if no journald owns it.

    libsystemd's sd_journal_sendv always writes there; no journald runs in CI,
    so the test binds it and reads the native-protocol datagrams itself.
    """
    directory = Path("/run/systemd/journal")
    path = directory / "socket"
    if os.geteuid() != 0 or journal_listening(path):
        yield None
        return
    path.unlink(missing_ok=True)  # a leftover of a killed run: nobody reads it
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(os.fspath(path))
    try:
        yield sock
    finally:
        sock.close()
        path.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()


def parse_journal_datagram(data: bytes) -> dict[str, str]:
    """The journal's native protocol: ``KEY=value\\n``, or ``KEY\\n<le64 size>value\\n``."""
    fields: dict[str, str] = {}
    i = 0
    while i < len(data):
        end = data.index(b"\n", i)
        line = data[i:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = end + 1
        else:
            key = line
            size = int.from_bytes(data[end + 1 : end + 9], "little")
            value = data[end + 9 : end + 9 + size]
            i = end + 9 + size + 1
        fields[key.decode()] = value.decode(errors="replace")
    return fields


# -- a manager on its session bus, and the units a test made (the unit tests' fixtures) -----


def on_bus(um: UserManager) -> bool:
    """The manager answers on its session bus (``is-system-running`` says "running"
    before it has joined the bus its dbus.socket started)."""
    from hecated.adapters.unitcontrol import UserManager as Control
    from hecated.adapters.units import SystemdUnavailable

    try:
        return Control(address=um.bus_address).state("dbus.service").active_state == "active"
    except SystemdUnavailable:
        return False


@contextlib.contextmanager
def manager_on_bus(journald: bool = True) -> Iterator[UserManager]:
    """A private manager, up and on its bus; stopped after."""
    um = UserManager(journald=journald).start()
    try:
        wait_for(lambda: on_bus(um), timeout=60)
        yield um
    finally:
        um.stop()


@contextlib.contextmanager
def units_made(manager: UserManager) -> Iterator[UserManager]:
    """The manager, with ``made``: the units a test adds there, stopped, reset and
    removed after it (a daemon-reload last), while the manager still runs."""
    made: list[str] = []
    manager.made = made  # type: ignore[attr-defined]
    yield manager
    running = manager.proc is not None and manager.proc.poll() is None
    if made and running:
        manager.systemctl("stop", *made, check=False)
        manager.systemctl("reset-failed", *made, check=False)
    for unit in made:
        (manager.unit_dir / unit).unlink(missing_ok=True)
    if running:
        manager.systemctl("daemon-reload", check=False)


def manager_fixtures(journald: bool = True) -> tuple[Any, Any]:
    """A test module's ``manager`` (its private user manager, on its bus, for the module)
    and ``um`` (that manager, per test, with ``made``: the units the test adds, stopped
    and removed after it): ``manager, um = manager_fixtures()`` at a module's top."""

    @pytest.fixture(scope="module")
    def manager() -> Iterator[UserManager]:
        with manager_on_bus(journald) as um:
            yield um

    @pytest.fixture
    def um(manager: UserManager) -> Iterator[UserManager]:
        with units_made(manager) as made:
            yield made

    return manager, um


def add_unit(um: UserManager, name: str, service: str) -> str:
    """``name`` with this ``[Service]`` section in the manager's unit directory, read by a
    daemon-reload; in ``um.made`` (``units_made``), so it goes after the test."""
    um.unit_dir.mkdir(parents=True, exist_ok=True)
    (um.unit_dir / name).write_text(f"[Unit]\nDescription=test {name}\n\n[Service]\n{service}")
    um.made.append(name)  # type: ignore[attr-defined]
    um.systemctl("daemon-reload")
    return name


@contextlib.contextmanager
def hecated_on(um: UserManager, env: dict[str, str] | None = None) -> Iterator[Daemon]:
    """hecated as the user's session would run it beside ``um``: the manager's HOME, its
    runtime dir and its bus (and ``env``); stopped afterwards if it still runs."""
    own = {"XDG_RUNTIME_DIR": str(um.runtime), "DBUS_SESSION_BUS_ADDRESS": um.bus_address}
    d = Daemon(um.home, env={**own, **(env or {})}).start()
    try:
        yield d
    finally:
        if d.proc and d.proc.poll() is None:
            d.stop()

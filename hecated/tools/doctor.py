"""``hecatectl doctor``: what is wrong with this installation, and how to fix each thing.

Reads the disk directly and changes nothing (the daemon's own code paths
tighten modes as they open directories, so the doctor uses ``lstat`` and
``O_NOFOLLOW`` reads instead). It works with the daemon down, which is when
people need it most.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hecated.client import DaemonUnavailableError, HecateClient
from hecated.core.config import ConfigError, resolve
from hecated.core.errors import ForeignOwnerError, UnsafePathError
from hecated.core.files import opened, read_regular
from hecated.core.layout import (
    MANIFEST_NAME,
    PID_FILE,
    RUN_DIR,
    SOCKET_NAME,
    SOCKETS_DIR,
    SUBDIRS,
    Layout,
)
from hecated.core.manifest import MAX_FILE_BYTES, ManifestError, parse
from hecated.core.runstate import connect_plugin, nobody_listens, pid_alive, read_pid
from hecated.protocol import TUI_SOCKET, accepts  # accepts: the daemon's stale-socket test
from hecated.tools.units import COMMANDS, UNIT_NAMES, user_unit_dir

OK, INFO, WARNING, PROBLEM = "ok", "info", "warning", "problem"
START_HINT = "systemctl --user start hecate.socket (or run `hecated`)"
INSTALL_HINT = " && ".join(("hecated install-units", *COMMANDS))


@dataclass(frozen=True)
class Finding:
    level: str
    check: str
    message: str
    fix: str | None = None
    path: str | None = None


@dataclass
class Report:
    root: Path
    socket: Path
    findings: list[Finding] = field(default_factory=list)

    def add(
        self, level: str, check: str, message: str, fix: str | None = None, path: object = None
    ) -> None:
        self.findings.append(Finding(level, check, message, fix, str(path) if path else None))

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.level == PROBLEM]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == WARNING]

    def to_json(self) -> dict:
        return {
            "ok": not self.problems,
            "root": str(self.root),
            "socket": str(self.socket),
            "problems": len(self.problems),
            "warnings": len(self.warnings),
            "findings": [asdict(f) for f in self.findings],
        }

    def print_text(self) -> None:
        print(f"hecatectl doctor: {self.root}")
        for f in self.findings:
            label = "PROBLEM" if f.level == PROBLEM else f.level
            print(f"  {label:<8} {f.message}")
            if f.fix:
                print(f"  {'':<8} fix: {f.fix}")
        verdict = "no problems" if not self.problems else f"{len(self.problems)} problem(s)"
        print(f"{verdict}, {len(self.warnings)} warning(s)")


def diagnose(client: HecateClient) -> Report:
    layout, config_problem = _layout()
    try:
        health = client.health()
    except DaemonUnavailableError as exc:
        health = None
        reason = exc.reason
    else:
        layout = (
            Layout(Path(health.data_dir), layout.socket_override, layout.gitops_override)
            if health.data_dir
            else layout
        )
    report = Report(layout.root, client.socket_path)
    if config_problem:
        report.add(PROBLEM, "config", config_problem, "fix the named setting")
    if health is not None:
        report.add(
            OK,
            "daemon",
            f"hecated {health.version} answers on {client.socket_path} (pid {health.pid})",
        )
    else:
        report.add(
            WARNING,
            "daemon",
            f"hecated is not running: nothing answers on {client.socket_path} ({reason})",
            START_HINT,
        )
    # When /health failed, probe the socket itself: a hung daemon, or systemd holding the
    # socket while the service starts, still accepts, and that socket is not stale.
    _check_socket(report, client.socket_path, answering=True if health is not None else None)
    if _check_root(report, layout.root):
        for name in sorted(os.listdir(layout.root)):
            _check_namespace(report, layout, name, answering=health is not None)
    _check_units(report)
    _check_gitops(report, layout)
    return report


def _check_gitops(report: Report, layout: Layout) -> None:
    """The gitops tree's ``.container`` files need Quadlet (podman 4.4 or later): where it
    is missing, they would be linked and make nothing, silently."""
    from hecated.adapters.gitopsquadlet import quadlet_problem
    from hecated.core.installed import SUBDIRS

    containers = []
    for sub in SUBDIRS:
        folder = layout.gitops_dir / sub
        try:
            containers += sorted(n for n in os.listdir(folder) if n.endswith(".container"))
        except OSError:
            continue
    if not containers:
        return
    problem = quadlet_problem()
    what = f"{len(containers)} .container file(s) in {layout.gitops_dir}"
    if problem is None:
        report.add(OK, "gitops", f"{what}; Quadlet is installed")
        return
    report.add(
        PROBLEM,
        "gitops",
        f"{what} cannot run: {problem} ({', '.join(containers)})",
        "install podman 4.4 or later (Debian 13, or bookworm-backports), or ship the plugin "
        "as a .service",
        layout.gitops_dir,
    )


def _layout() -> tuple[Layout, str | None]:
    """The layout hecated would use if started now with this environment."""
    try:
        return resolve({}).layout, None
    except ConfigError as exc:
        from hecated.core.layout import default_root

        return Layout.at(default_root()), f"hecated's configuration is invalid: {exc}"


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _private(report: Report, path: Path, st: os.stat_result, want: int = 0o700) -> bool:
    if st.st_uid != os.geteuid():
        report.add(
            PROBLEM,
            "owner",
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.geteuid()})",
            f"chown {os.geteuid()} {shlex.quote(str(path))}",
            path,
        )
        return False
    if stat.S_IMODE(st.st_mode) & 0o077:
        report.add(
            PROBLEM,
            "permissions",
            f"{path} is mode {_mode(st)}; others can reach it (should be {want:04o})",
            f"chmod {want:o} {shlex.quote(str(path))}",
            path,
        )
        return False
    return True


def _check_root(report: Report, root: Path) -> bool:
    try:
        st = root.stat()
    except FileNotFoundError:
        report.add(
            WARNING,
            "layout",
            f"{root} does not exist yet; hecated creates it when it first starts",
            START_HINT,
            root,
        )
        return False
    if not stat.S_ISDIR(st.st_mode):
        report.add(PROBLEM, "layout", f"{root} is not a directory", f"move {root} away", root)
        return False
    if _private(report, root, st):
        report.add(OK, "layout", f"{root}: directory, mode {_mode(st)}", path=root)
    return True


def _check_namespace(report: Report, layout: Layout, name: str, answering: bool) -> None:
    path = layout.root / name
    if name.startswith(".") or (name == TUI_SOCKET and path.is_socket()):
        return  # hecate-tui's socket (hecate.socket's second path) is hecated's too
    primary = name == layout.primary_name
    if not primary and name in layout.reserved_names:  # the gitops tree: _check_gitops
        return
    if not primary and not layout.is_plugin_name(name):
        report.add(
            WARNING,
            "layout",
            f"{path} is not a valid daemon name; hecated ignores it",
            "rename or remove it",
            path,
        )
        return
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        report.add(
            PROBLEM,
            "layout",
            f"{path} is a symlink; hecated never follows symlinks inside {layout.root}",
            f"replace the link with a real directory (rm {shlex.quote(str(path))})",
            path,
        )
        return
    if not stat.S_ISDIR(st.st_mode):
        report.add(PROBLEM, "layout", f"{path} is not a directory", "move it away", path)
        return
    clean = _private(report, path, st)
    if st.st_uid != os.geteuid():
        return  # another user's: reported; nothing in it is read, probed or connected to
    clean = _check_subdirs(report, path, name, primary) and clean
    if primary:
        clean = _check_primary_pid(report, layout, name, answering) and clean
    else:
        clean = _check_manifest(report, layout, name) and clean
        clean = _check_plugin_run(report, layout, name) and clean
    if clean:
        what = "primary namespace" if primary else "namespace"
        report.add(OK, "layout", f"{what} {name}: layout and permissions ok", path=path)


def _check_subdirs(report: Report, ns: Path, name: str, primary: bool) -> bool:
    clean = True
    missing = []
    for sub in SUBDIRS:
        path = ns / sub
        try:
            st = path.lstat()
        except FileNotFoundError:
            missing.append(sub)
            continue
        if not stat.S_ISDIR(st.st_mode):
            report.add(
                PROBLEM,
                "layout",
                f"{path} is a symlink or not a directory",
                f"move it away, then mkdir -m 700 {shlex.quote(str(path))}",
                path,
            )
            clean = False
        else:
            clean = _private(report, path, st) and clean
    if missing:
        dirs = " ".join(shlex.quote(str(ns / sub)) for sub in missing)
        fix = "start hecated" if primary else f"hecatectl register {name}"
        report.add(
            WARNING,
            "layout",
            f"{ns} lacks {', '.join(missing)}/",
            f"{fix} (or mkdir -m 700 {dirs})",
            ns,
        )
        clean = False
    return clean


def _pid_in(report: Report, layout: Layout, name: str) -> tuple[bool, int | None]:
    """The namespace's pid file read as the daemon reads it (``runstate``), and what is
    wrong with it reported instead of ignored."""
    pid_file = layout.namespace(name) / RUN_DIR / PID_FILE
    try:
        with opened(layout.open_namespace(name)) as ns_fd:
            return True, read_pid(ns_fd, strict=True)
    except FileNotFoundError:
        return True, None
    except ValueError:
        report.add(
            PROBLEM,
            "pidfile",
            f"{pid_file} does not hold a pid",
            f"rm {shlex.quote(str(pid_file))}",
            pid_file,
        )
    except (OSError, UnsafePathError) as exc:
        why = exc.message if isinstance(exc, UnsafePathError) else exc.strerror or str(exc)
        report.add(PROBLEM, "pidfile", f"{pid_file}: {why}", f"rm {pid_file}", pid_file)
    return False, None


def _check_primary_pid(report: Report, layout: Layout, name: str, answering: bool) -> bool:
    pid_file = layout.namespace(name) / RUN_DIR / PID_FILE
    fine, pid = _pid_in(report, layout, name)
    if pid is None:
        return fine
    if not pid_alive(pid):
        report.add(
            PROBLEM,
            "pidfile",
            f"stale pid file {pid_file}: process {pid} is not running",
            f"rm {shlex.quote(str(pid_file))} (hecated also replaces it when it starts)",
            pid_file,
        )
        return False
    if not answering:
        report.add(
            WARNING,
            "pidfile",
            f"{pid_file} names live process {pid}, but nothing answers on the socket",
            f"check that process (ps -p {pid}); is it hecated with another --socket?",
            pid_file,
        )
        return False
    return True


def _check_manifest(report: Report, layout: Layout, name: str) -> bool:
    path = layout.manifest_path(name)
    try:  # read as the daemon reads it: no link, no FIFO or socket, no other user's file
        with opened(layout.open_namespace(name)) as ns_fd:
            raw = read_regular(ns_fd, MANIFEST_NAME, MAX_FILE_BYTES)
    except (OSError, UnsafePathError) as exc:
        why = exc.message if isinstance(exc, UnsafePathError) else exc.strerror or str(exc)
        report.add(
            PROBLEM,
            "manifest",
            f"{path}: {why}",
            f"remove it and run `hecatectl register {name}`",
            path,
        )
        return False
    if raw is None:
        report.add(
            INFO,
            "manifest",
            f"{name} is not registered (no {MANIFEST_NAME}); its data is kept in {path.parent}",
            f"`hecatectl register {name}` to register it, `hecatectl purge {name}` to delete it",
            path.parent,
        )
        return True
    try:
        parse(raw, name, str(path))
    except ManifestError as exc:
        where = f" (line {exc.line})" if exc.line else ""
        report.add(
            PROBLEM,
            "manifest",
            f"invalid {MANIFEST_NAME}: {exc}",
            f"edit {path}{where}, or delete it and run `hecatectl register {name}`",
            path,
        )
        return False
    return True


def _check_plugin_run(report: Report, layout: Layout, name: str) -> bool:
    pid_file = layout.namespace(name) / RUN_DIR / PID_FILE
    fine, pid = _pid_in(report, layout, name)
    if pid is not None and not pid_alive(pid):
        report.add(
            WARNING,
            "pidfile",
            f"stale pid file {pid_file}: process {pid} is not running "
            "(the plugin did not remove it on exit)",
            f"rm {shlex.quote(str(pid_file))}",
            pid_file,
        )
        fine = False
    sock = layout.namespace(name) / SOCKETS_DIR / SOCKET_NAME
    return _check_socket(report, sock, answering=None, plugin=(layout, name)) and fine


def _plugin_answers(report: Report, path: Path, layout: Layout, name: str) -> bool | None:
    """Does something of this user's listen on a plugin's socket? None: reported here
    (its peer is another user). The connect is the daemon's own (``connect_plugin``)."""
    try:
        connect_plugin(layout, name, 1.0).close()
    except ForeignOwnerError as exc:
        report.add(PROBLEM, "owner", f"{path}: {exc.message}", "stop that process", path)
        return None
    except UnsafePathError:
        return False
    except OSError as exc:
        return not nobody_listens(exc)
    return True


def _check_socket(
    report: Report, path: Path, answering: bool | None, plugin: tuple[Layout, str] | None = None
) -> bool:
    """A socket file: a socket, ours, mode 0600, and not a stale leftover of a crash."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return True
    quoted = shlex.quote(str(path))
    if not stat.S_ISSOCK(st.st_mode):
        report.add(PROBLEM, "socket", f"{path} exists but is not a socket", f"rm {quoted}", path)
        return False
    if st.st_uid != os.geteuid():
        _private(report, path, st)  # reported as another user's; never connected to
        return False
    fine = True
    if stat.S_IMODE(st.st_mode) & 0o077:
        report.add(
            PROBLEM if plugin is None else WARNING,
            "socket",
            f"socket {path} is mode {_mode(st)} (should be 0600)",
            f"chmod 600 {quoted}",
            path,
        )
        fine = False
    if answering is None:
        answering = accepts(path) if plugin is None else _plugin_answers(report, path, *plugin)
        if answering is None:
            return False
    if not answering:
        report.add(
            PROBLEM if plugin is None else WARNING,
            "socket",
            f"stale socket {path}: nothing listens on it",
            f"rm {quoted}" + ("" if plugin is not None else f", then {START_HINT}"),
            path,
        )
        return False
    if fine and plugin is None:
        report.add(OK, "socket", f"socket {path}: mode {_mode(st)}", path=path)
    return fine


def unit_dirs() -> list[Path]:
    return [
        user_unit_dir(),
        Path("/etc/systemd/user"),
        Path("/usr/local/lib/systemd/user"),
        Path("/usr/lib/systemd/user"),
    ]


def _check_units(report: Report) -> None:
    dirs = unit_dirs()
    missing = []
    for unit in UNIT_NAMES:
        found = next((d / unit for d in dirs if (d / unit).is_file()), None)
        if found:
            report.add(OK, "units", f"{unit} is installed: {found}", path=found)
        else:
            missing.append(unit)
    if missing:
        report.add(
            WARNING,
            "units",
            f"{' and '.join(missing)} not installed in {dirs[0]} or {dirs[-1]}; "
            "hecated is not started on demand",
            INSTALL_HINT,
        )
        return
    _check_listening(report)


def _check_listening(report: Report) -> None:
    try:
        out = subprocess.run(
            ["systemctl", "--user", "is-active", "hecate.socket"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        report.add(INFO, "systemd", f"could not ask systemctl --user: {exc}; skipped")
        return
    state = out.stdout.strip()
    if state == "active":
        report.add(OK, "systemd", "hecate.socket is active (listening)")
    elif state in ("inactive", "failed", "activating", "deactivating"):
        report.add(
            WARNING,
            "systemd",
            f"hecate.socket is {state}: nothing is listening for hecated",
            "systemctl --user enable --now hecate.socket",
        )
    else:
        detail = (out.stderr.strip() or state or f"exit {out.returncode}").splitlines()[0]
        report.add(INFO, "systemd", f"systemctl --user did not answer ({detail}); skipped")

"""The systemd user units, and ``hecated install-units`` for pip and venv installations.

The canonical unit files are ``units/`` in the source tree (what a distro
package installs into /usr/lib/systemd/user). pyproject.toml maps that same
directory into the package as ``hecated._units`` (package-dir, no copy, no
symlink), so a wheel carries the very files a distro ships and this module
reads them with importlib.resources. Installing rewrites only ``ExecStart=``
to point at this installation's ``hecated`` and adds a marker line, so a later
run can tell its own files (replace them, idempotently) from a unit someone
else wrote (refuse, unless ``--force``).

``hecate-daemon.service`` is an alias of ``hecate.service``: the Hecate
ecosystem's plugin units say ``Requires=``/``After=hecate-daemon.service`` and
its CLI runs ``systemctl --user ... hecate-daemon`` (docs/ecosystem.md). The
alias is a symlink named ``hecate-daemon.service`` pointing at the unit, which
systemd reads as a second name of the same unit whether or not it is enabled;
``Alias=`` would need ``[Install]`` and enabling, and the service is static.
Distro packages ship it beside the unit in /usr/lib/systemd/user. A symlink in
a *configuration* directory (~/.config/systemd/user) would make systemctl call
the service ``indirect`` (enabled through an alias) instead of ``static``, so
for the user's own unit directory the link goes into the user's *data* unit
directory (~/.local/share/systemd/user), which systemd also searches, the way
a vendor directory holds a package's alias.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hecated.core.errors import HecateError
from hecated.core.files import atomic_write, opened

UNIT_NAMES = ("hecate.socket", "hecate.service")
# Second names of a unit: alias -> the unit it is a symlink to.
ALIASES: dict[str, str] = {"hecate-daemon.service": "hecate.service"}
DISTRO_EXEC = "/usr/bin/hecated"
MARKER = "# Written by `hecated install-units`; re-run it to update, or use a drop-in to change."
COMMANDS = ("systemctl --user daemon-reload", "systemctl --user enable --now hecate.socket")


class InstallError(RuntimeError):
    """A unit could not be installed; the message says which and why."""


@dataclass(frozen=True)
class Outcome:
    path: Path
    action: str  # "written", "updated", "unchanged", "replaced"


def distro_unit(name: str) -> str:
    """The unit as shipped in ``units/`` (ExecStart=/usr/bin/hecated ...)."""
    if name not in UNIT_NAMES:
        raise ValueError(f"unknown unit {name!r}")
    try:
        return (resources.files("hecated._units") / name).read_text(encoding="utf-8")
    except ModuleNotFoundError:  # running from a source tree that was never installed
        return (Path(__file__).resolve().parents[2] / "units" / name).read_text("utf-8")


def this_hecated() -> Path:
    """The ``hecated`` executable of this installation (the venv's, or the one on PATH)."""
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if argv0 is not None and argv0.name == "hecated":
        found = argv0 if argv0.parent != Path() else shutil.which("hecated")
        if found and os.access(found, os.X_OK):
            return Path(found).absolute()
    beside = Path(sys.executable).parent / "hecated"
    if os.access(beside, os.X_OK):
        return beside.absolute()
    on_path = shutil.which("hecated")
    if on_path:
        return Path(on_path).absolute()
    raise InstallError("cannot find this installation's hecated executable")


def systemd_quote(path: Path) -> str:
    """One ExecStart= word for ``path``: specifiers (%) and variables ($) escaped."""
    word = os.fspath(path).replace("%", "%%").replace("$", "$$")
    if any(c.isspace() or c in "\"'\\;" for c in word):
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return word


def render(name: str, executable: Path) -> str:
    """The unit ``name`` with ExecStart= pointing at ``executable``, and our marker."""
    lines = []
    for line in distro_unit(name).splitlines():
        if line.startswith("ExecStart=") and DISTRO_EXEC in line:
            prefix, _, rest = line.partition(DISTRO_EXEC)
            line = prefix + systemd_quote(executable) + rest
        lines.append(line)
    return MARKER + "\n" + "\n".join(lines) + "\n"


def user_unit_dir(environ: dict[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def user_data_unit_dir(environ: dict[str, str] | None = None) -> Path:
    """``$XDG_DATA_HOME/systemd/user``: searched by ``systemd --user``, not a config dir."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "systemd" / "user"


def link_target(directory: Path, alias_dir: Path, target: str) -> str:
    """What the alias symlink in ``alias_dir`` holds: relative, so a moved home keeps it."""
    if alias_dir == directory:
        return target
    return os.path.relpath(directory / target, alias_dir)


def install(
    directory: Path, executable: Path, force: bool = False, alias_dir: Path | None = None
) -> list[Outcome]:
    """Write both units into ``directory`` and the alias symlinks into ``alias_dir``.

    ``alias_dir`` defaults to ``directory`` itself. Every check is made before
    anything is written, so a refusal leaves both directories exactly as they were.
    """
    alias_dir = directory if alias_dir is None else alias_dir
    links = {alias: link_target(directory, alias_dir, t) for alias, t in ALIASES.items()}
    rendered = {name: render(name, executable) for name in UNIT_NAMES}
    current = {name: _read(directory / name) for name in UNIT_NAMES}
    foreign = [directory / n for n, text in current.items() if text is not None and not _ours(text)]
    aliases = {alias: _alias_state(alias_dir / alias, link) for alias, link in links.items()}
    foreign += [alias_dir / alias for alias, state in aliases.items() if state == "foreign"]
    if foreign and not force:
        raise InstallError(
            f"refusing to overwrite {', '.join(str(path) for path in foreign)}: "
            "not written by hecated install-units (--force replaces it)"
        )
    directory.mkdir(mode=0o755, parents=True, exist_ok=True)
    alias_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    outcomes = []
    with opened(os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)) as dir_fd:
        for name in UNIT_NAMES:
            before = current[name]
            if before == rendered[name]:
                action = "unchanged"
            else:
                atomic_write(dir_fd, name, rendered[name].encode(), mode=0o644)
                action = "written" if before is None else "updated" if _ours(before) else "replaced"
            outcomes.append(Outcome(directory / name, action))
    with opened(os.open(alias_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)) as dir_fd:
        for alias, link in links.items():
            state = aliases[alias]
            if state != "ours":
                _atomic_symlink(dir_fd, link, alias)
            action = {"ours": "unchanged", "absent": "written"}.get(state, "replaced")
            outcomes.append(Outcome(alias_dir / alias, action))
    return outcomes


def _alias_state(path: Path, target: str) -> str:
    """``ours`` (a symlink to ``target``), ``absent``, or ``foreign`` (anything else there)."""
    try:
        link = os.readlink(path)
    except FileNotFoundError:
        return "absent"
    except OSError:  # EINVAL: not a symlink
        if path.is_dir():
            raise InstallError(f"{path} is a directory") from None
        return "foreign"
    return "ours" if link == target else "foreign"


def _atomic_symlink(dir_fd: int, target: str, name: str) -> None:
    """Point ``name`` at ``target`` in one rename, durably (a temp link, rename, fsync dir)."""
    tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    os.symlink(target, tmp, dir_fd=dir_fd)
    try:
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)


def hidden_from_service(executable: Path) -> str | None:
    """The PrivateTmp= directory ``executable`` lives under, if any: the unit cannot run it."""
    for private in ("/tmp", "/var/tmp"):
        if executable.resolve().is_relative_to(private):
            return private
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise InstallError(f"{path} is a directory") from None


def _ours(text: str) -> bool:
    return text.startswith(MARKER + "\n")


def main(directory: str | None, force: bool) -> int:
    """``hecated install-units``: install, then say what to run next."""
    target = Path(directory).expanduser() if directory else user_unit_dir()
    # the user's own unit dir is a config dir: its alias goes to the data dir (see above)
    alias_dir = user_data_unit_dir() if target == user_unit_dir() else target
    try:
        executable = this_hecated()
        outcomes = install(target, executable, force, alias_dir)
        if target == user_unit_dir():  # the service may write only where a dir is already
            (target.parent.parent / "containers" / "systemd").mkdir(parents=True, exist_ok=True)
    except (InstallError, HecateError, OSError) as exc:
        print(f"hecated install-units: {exc}", file=sys.stderr)
        return 1
    for outcome in outcomes:
        print(f"{outcome.action}: {outcome.path}")
    hidden = hidden_from_service(executable)
    if hidden:
        print(
            f"warning: {executable} is under {hidden}, which the service's PrivateTmp=yes "
            "hides from it; install hecated elsewhere (e.g. ~/.local) or it cannot start",
            file=sys.stderr,
        )
    print("now run:")
    for command in COMMANDS:
        print(f"  {command}")
    if directory and target != user_unit_dir():
        print(f"(note: systemd --user reads units from {shlex.quote(str(user_unit_dir()))})")
    return 0

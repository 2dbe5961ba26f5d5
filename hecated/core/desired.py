"""The desired state that install and uninstall write: unit files in the gitops tree's ``apps/``.

``POST /api/plugins/install`` puts a checked unit file (``core/unitfile``) at
``{gitops_dir}/apps/{name}.{kind}``; the reconciler (``adapters/gitops``) sees it
and links, reloads and starts; ``uninstall`` removes it. Like ``hecate install``
of the bash CLI, which copies the file there, and like a ``git pull`` of the
tree: the files are the truth, whoever writes them.

The write is ``core/files``' (temp file, fsync, rename, fsync of the directory),
so the reconciler never reads half a unit file; ``apps/`` is reached without
following a symlink (a planted ``apps -> /etc/systemd`` is refused, not written
through), and a file of the same plugin already there is replaced only when
asked: without ``replace`` the new file is linked into place, which the kernel
refuses if the name exists, so two installs of one name cannot both win.
``x.service`` and ``x.container`` are the same plugin (Quadlet makes
``x.service`` of the latter): either one in the tree counts as installed.

Mode 0600: only the user's own manager and Quadlet generator read the file,
and an ``Environment=`` line may hold a secret (hecated's unit runs with
``UMask=0077`` anyway). The gitops directory itself is the user's choice and
may be a symlink (a git checkout elsewhere), like the data root.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from hecated.core.errors import AlreadyInstalledError, StorageError, UnsafePathError
from hecated.core.files import (
    atomic_write,
    open_dir,
    open_root,
    opened,
    remove_file,
    remove_stale_temps,
)
from hecated.core.unitfile import KINDS, UnitFile

APPS_DIR = "apps"  # the plugins' unit files; "system/" is the ecosystem's own, never written
SYSTEM_DIR = "system"
FILE_MODE = 0o600


class Apps:
    """``{gitops_dir}/apps/``: install, find and remove one plugin's unit file."""

    def __init__(self, gitops_dir: Path, sub: str = APPS_DIR) -> None:
        # ``sub``: SYSTEM_DIR only to look (``installed``): hecated never writes there.
        self.gitops_dir = Path(gitops_dir)
        self.sub = sub
        self.dir = self.gitops_dir / sub

    def path(self, filename: str) -> Path:
        return self.dir / filename

    def _open(self, create: bool) -> int:
        """``apps/`` as a directory fd, its last step taken without following a symlink.

        Created (0700) when missing and asked; an existing tree's modes are left as
        they are (it may be a git checkout the user keeps elsewhere)."""
        if create:
            try:
                self.gitops_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot create {self.gitops_dir}: {exc.strerror}") from exc
        with opened(open_root(self.gitops_dir, create=False)) as top:
            return open_dir(top, self.sub, create=create)

    def installed(self, name: str) -> list[str]:
        """The file names of plugin ``name`` in this directory (none, one, or both kinds)."""
        try:
            fd = self._open(create=False)
        except FileNotFoundError:
            return []
        with opened(fd):
            return [f for f in _filenames(name) if _exists(fd, f)]

    def install(self, unit: UnitFile, replace: bool = False) -> list[str]:
        """Write ``unit`` into ``apps/``; the file names it replaced (``replace``), else
        ``AlreadyInstalledError`` when the plugin has a file there already."""
        with opened(self._open(create=True)) as fd:
            remove_stale_temps(fd, unit.filename)  # a crashed writer's, never a live one's
            present = [f for f in _filenames(unit.name) if _exists(fd, f)]
            if present and not replace:
                raise AlreadyInstalledError(_already(self, unit.name, present))
            try:
                atomic_write(fd, unit.filename, unit.data, FILE_MODE, replace=replace)
            except FileExistsError:  # it appeared since the look above
                raise AlreadyInstalledError(_already(self, unit.name, [unit.filename])) from None
            # The other kind goes only once the new file is in place: the plugin is
            # never without a desired state in between.
            for other in present:
                if other != unit.filename:
                    remove_file(fd, other)
        return present

    def remove(self, name: str) -> list[str]:
        """Remove plugin ``name``'s files from ``apps/``; the names removed (none: not there).

        A symlink there is removed, never followed; a directory is refused."""
        try:
            fd = self._open(create=False)
        except FileNotFoundError:
            return []
        with opened(fd):
            return [f for f in _filenames(name) if _exists(fd, f) and remove_file(fd, f)]


def _filenames(name: str) -> list[str]:
    return [f"{name}.{kind}" for kind in KINDS]


def _exists(dir_fd: int, filename: str) -> bool:
    """Is there an entry of that name (a dangling symlink too)? A directory there is
    nothing hecated may replace or remove: ``UnsafePathError``."""
    try:
        st = os.stat(filename, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            raise UnsafePathError(f"{filename}: the apps directory is not one") from exc
        raise
    if stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{filename} in the gitops tree is a directory, not a unit file")
    return True


def _already(apps: Apps, name: str, present: list[str]) -> str:
    where = ", ".join(str(apps.path(f)) for f in present)
    return (
        f"plugin {name!r} is already installed ({where}); "
        'send "replace": true (hecatectl install --replace) to replace it'
    )

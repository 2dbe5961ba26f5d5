"""The gitops reconciler's file half: what the tree wants, what the unit directories hold.

The semantics are the ecosystem's ``hecate-reconciler.sh`` (hecate-gitops,
``reconciler/hecate-reconciler.sh``), so that the two can run side by side:

- every ``*.container`` in ``gitops/{system,apps}/`` is symlinked into Quadlet's user
  directory (``$XDG_CONFIG_HOME/containers/systemd/``); hecated adds ``*.service``
  (a plugin that is a plain program) into ``$XDG_CONFIG_HOME/systemd/user/``;
- a link is *ours* when it points into the gitops tree, whoever made it (the script
  makes the very same links: ``ln -s $GITOPS_DIR/apps/NAME $DEST``);
- an own link to another file of the tree is replaced; a file that is not a link, or
  a link elsewhere, is never touched: it is reported;
- an own link whose file is gone (dangling) is removed, its unit stopped first.

Nothing here follows a symlink: entries are read with ``lstat``/``readlink``, the tree's
own files must be regular files, and a link's target is compared as text. This module
plans and makes links; the user manager is the reconciler's (adapters/gitops).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hecated.core.errors import HecateError, InvalidNameError
from hecated.core.files import open_dir, open_root, opened
from hecated.core.installed import SUBDIRS, Desired, desired_of
from hecated.core.layout import Layout

log = logging.getLogger("hecated.adapters.gitops")

TMP_SUFFIX = ".hecated-tmp"  # a link being replaced: no unit suffix, so no reader takes it


def config_home(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME``, else ``~/.config``: where Quadlet and ``systemd --user`` look."""
    env = os.environ if environ is None else environ
    return Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")


@dataclass(frozen=True)
class UnitDirs:
    """Where each kind's links go."""

    quadlet: Path  # $XDG_CONFIG_HOME/containers/systemd
    systemd: Path  # $XDG_CONFIG_HOME/systemd/user

    @classmethod
    def of(cls, base: Path) -> UnitDirs:
        return cls(base / "containers" / "systemd", base / "systemd" / "user")

    def for_kind(self, kind: str) -> Path:
        return self.quadlet if kind == "container" else self.systemd

    def all(self) -> tuple[Path, Path]:
        return (self.quadlet, self.systemd)


@dataclass(frozen=True)
class Want:
    """One desired-state file and where its link goes."""

    desired: Desired
    dest: Path

    @property
    def src(self) -> str:
        return self.desired.path


@dataclass
class Plan:
    """What one look at the tree and the unit directories found to do."""

    wants: dict[str, Want] = field(default_factory=dict)  # plugin -> its file
    make: list[Want] = field(default_factory=list)  # no link yet
    replace: list[Want] = field(default_factory=list)  # an own link to another file
    blocked: dict[str, Want] = field(default_factory=dict)  # plugin -> its file, not linked
    dangling: list[Path] = field(default_factory=list)  # own links whose file is gone
    refused: dict[str, str] = field(default_factory=dict)  # a file -> why it is no plugin's
    not_regular: dict[str, Want] = field(default_factory=dict)  # plugin -> a non-file entry
    unsafe: dict[str, str] = field(default_factory=dict)  # system/ or apps/ -> why not read
    stale_tmp: list[Path] = field(default_factory=list)  # own NAME.hecated-tmp a crash left


def desired_files(layout: Layout, plan: Plan, dirs: UnitDirs) -> None:
    """Read ``system/`` then ``apps/``: one file per plugin, ``apps/`` last so it wins (the
    script's end state when both hold a name).

    The tree's top may be a symlink (a checkout kept elsewhere, like the data root);
    ``system/`` and ``apps/`` are opened without following one and read through their
    fds, so a ``gitops/apps -> /elsewhere`` is reported (``plan.unsafe``), never linked."""
    try:
        top = open_root(layout.gitops_dir, create=False)
    except (OSError, HecateError):
        return
    with opened(top):
        for sub in SUBDIRS:
            folder = layout.gitops_dir / sub
            try:
                fd = open_dir(top, sub)
            except FileNotFoundError:
                continue
            except (OSError, HecateError) as exc:
                plan.unsafe[str(folder)] = getattr(exc, "message", None) or str(exc)
                continue
            with opened(fd):
                for name in sorted(os.listdir(fd)):
                    _one_file(layout, plan, dirs, (fd, name), os.path.join(folder, name))


def _one_file(layout: Layout, plan: Plan, dirs: UnitDirs, at: tuple[int, str], path: str) -> None:
    try:
        desired = desired_of(path, layout)
    except InvalidNameError as exc:
        plan.refused[path] = exc.message
        return
    if desired is None:
        return
    want = Want(desired, dirs.for_kind(desired.kind) / os.path.basename(path))
    try:
        regular = stat.S_ISREG(os.stat(at[1], dir_fd=at[0], follow_symlinks=False).st_mode)
    except FileNotFoundError:  # gone while we read: the next burst tells
        return
    plan.not_regular.pop(desired.name, None)
    plan.wants.pop(desired.name, None)
    if regular:
        plan.wants[desired.name] = want
    else:  # a link (perhaps out of the tree) or a directory: never followed
        plan.not_regular[desired.name] = want


def is_own(target: str, gitops: Path) -> bool:
    """A link's text points into the gitops tree (compared as text, never resolved)."""
    if not os.path.isabs(target):
        return False
    prefix = os.path.normpath(gitops) + os.sep
    return os.path.normpath(target).startswith(prefix)


def read_link(dest: Path) -> str | None:
    """The link's text; None when ``dest`` is absent. OSError(EINVAL): not a link."""
    try:
        return os.readlink(dest)
    except FileNotFoundError:
        return None


def link_states(layout: Layout, plan: Plan) -> None:
    """Sort each wanted file's link: in place, to make, to replace, or blocked."""
    for name, want in plan.wants.items():
        try:
            target = read_link(want.dest)
        except OSError:  # EINVAL: a file that is not a link
            plan.blocked[name] = want
            continue
        if target is None:
            plan.make.append(want)
        elif target == want.src:
            continue
        elif is_own(target, layout.gitops_dir):
            plan.replace.append(want)
        else:
            plan.blocked[name] = want


def dangling_links(layout: Layout, plan: Plan, dirs: UnitDirs) -> None:
    """Own links (into the tree) whose file is no longer a regular file there; one that a
    wanted file replaces (the file moved from ``system/`` to ``apps/``) is not removed."""
    replaced = {want.dest for want in plan.replace}
    for folder in dirs.all():
        try:
            names = sorted(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for name in names:
            dest = folder / name
            if dest in replaced:
                continue
            with contextlib.suppress(OSError):
                target = os.readlink(dest)
                if name.endswith(TMP_SUFFIX):
                    if is_own(target, layout.gitops_dir):
                        plan.stale_tmp.append(dest)
                    continue
                if is_own(target, layout.gitops_dir) and not _regular(target, layout.gitops_dir):
                    plan.dangling.append(dest)


def _regular(target: str, gitops: Path) -> bool:
    """``target`` (an own link's text) is a regular file of the tree; in ``system/`` or
    ``apps/`` reached as the look reads them: a symlinked subdirectory is not followed."""
    parts = os.path.relpath(os.path.normpath(target), os.path.normpath(gitops)).split(os.sep)
    if len(parts) != 2 or parts[0] not in SUBDIRS:  # no file hecated links: as it was
        try:
            return stat.S_ISREG(os.lstat(target).st_mode)
        except OSError:
            return False
    try:
        with opened(open_root(gitops, create=False)) as top, opened(open_dir(top, parts[0])) as fd:
            return stat.S_ISREG(os.stat(parts[1], dir_fd=fd, follow_symlinks=False).st_mode)
    except (OSError, HecateError):
        return False


def look(layout: Layout, dirs: UnitDirs) -> Plan:
    """The whole plan for one pass."""
    plan = Plan()
    desired_files(layout, plan, dirs)
    link_states(layout, plan)
    dangling_links(layout, plan, dirs)
    return plan


# -- doing it -------------------------------------------------------------------------------


def make_link(want: Want, gitops: Path) -> bool:
    """The link in place (True), or something not ours in the way (False).

    ``symlink`` fails on any existing name, so a file that appeared meanwhile is never
    replaced; if the script made the same link meanwhile, that is the same result."""
    want.dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(want.src, want.dest)
        return True
    except FileExistsError:
        with contextlib.suppress(OSError):
            if os.readlink(want.dest) == want.src:
                return True
    return False


def replace_link(want: Want, gitops: Path) -> bool:
    """An own link pointed at another file of the tree now points at ``want``'s: a new
    link renamed over it, so the name is never missing (a reload meanwhile sees one).

    The tmp name is cleared only when it holds an own link; the link is read again right
    before the rename, which happens only while it is still own (docs/gitops.md says
    what window is left)."""
    tmp = want.dest.with_name(want.dest.name + TMP_SUFFIX)
    if not clean_tmp(tmp, gitops):
        return False  # something not ours under the tmp name: left alone
    os.symlink(want.src, tmp)
    try:
        target = read_link(want.dest)
    except OSError:
        target = ""
    if target is not None and not is_own(target, gitops):  # it changed hands meanwhile
        clean_tmp(tmp, gitops)
        return False
    os.replace(tmp, want.dest)
    return True


def clean_tmp(tmp: Path, gitops: Path) -> bool:
    """``tmp`` is free: absent, or an own link (one a crashed pass left) now removed."""
    try:
        target = os.readlink(tmp)
    except FileNotFoundError:
        return True
    except OSError:  # EINVAL: a file, not a link
        return False
    if not is_own(target, gitops):
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    return True


def dangles(dest: Path, gitops: Path) -> bool:
    """``dest`` is (still) an own link whose file is gone: remove_link's condition, asked
    again right before its unit is stopped (a file back meanwhile keeps it running)."""
    return _own_link(dest, gitops) is False


def linked(dest: Path, gitops: Path) -> bool:
    """``dest`` is an own link to a regular file of the tree: its unit may be started.
    Asked right before each start, so a file removed since the pass looked is never
    started again (uninstall's stop stands)."""
    return _own_link(dest, gitops) is True


def _own_link(dest: Path, gitops: Path) -> bool | None:
    """None: ``dest`` is no own link (absent, a file, a link elsewhere); else whether
    its file is a regular file of the tree."""
    try:
        target = os.readlink(dest)
    except OSError:
        return None
    return _regular(target, gitops) if is_own(target, gitops) else None


def remove_link(dest: Path, gitops: Path) -> bool:
    """Remove a dangling own link, checked again just before: True when it is gone."""
    if not os.path.lexists(dest):
        return True
    if not dangles(dest, gitops):
        return False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(dest)
    return True


def unit_of_link(dest: Path) -> str | None:
    """The unit a link in a unit directory makes: ``x.container`` -> ``x.service``."""
    stem, suffix = os.path.splitext(dest.name)
    if suffix == ".container":
        return stem + ".service"
    if suffix == ".service":
        return dest.name
    return None


def shown(path: Path | str) -> str:
    """A path as people read it: the home directory as ``~``."""
    text, home = str(path), str(Path.home())
    if home != "/" and (text == home or text.startswith(home + os.sep)):
        return "~" + text[len(home) :]
    return text

"""The ``~/.hecate`` directory convention: the spec's ``shared_paths``.

This module is the only place that spells a path of the convention. Everything
else asks it for paths, so the layout can evolve here alone.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from hecated.core.errors import InvalidNameError, NameTooLongError, ReservedNameError
from hecated.core.files import open_dir, open_root, opened
from hecated.protocol import NAME_MAX, NAME_RE, PRIMARY_NAME, SUN_PATH_MAX  # the contract's rules

SOCKETS_DIR = "sockets"  # the namespace subdirectory that holds SOCKET_NAME
RUN_DIR = "run"  # the namespace subdirectory that holds PID_FILE and STATE_FILE
SUBDIRS: tuple[str, ...] = ("sqlite", "reckon-db", SOCKETS_DIR, RUN_DIR, "connectors")
MANIFEST_NAME = "plugin.toml"
SOCKET_NAME = "api.sock"
PID_FILE = "daemon.pid"
STATE_FILE = "daemon.state"
LOCK_FILE = "daemon.lock"
# The primary's cache of parsed manifests (in its run/), see manifestcache.py.
INDEX_CACHE_FILE = "manifests.cache.json"
DIR_MODE = 0o700
# The desired-state tree (core/installed.py) beside the namespaces, as the ecosystem has it.
GITOPS_DIR = "gitops"


def json_key(subdir: str) -> str:
    """The API spells ``reckon-db/`` as ``reckon_db``: JSON keys are identifiers."""
    return subdir.replace("-", "_")


def default_root() -> Path:
    """``$HECATE_HOME``, else ``~/.hecate``; packagers and tests point it elsewhere."""
    env = os.environ.get("HECATE_HOME")
    return Path(env) if env else Path.home() / ".hecate"


@dataclass(frozen=True)
class Layout:
    """Where everything lives for one hecated instance.

    ``data_dir`` is the primary's own namespace (the spec's ``base_dir``); the
    plugins' namespaces are its siblings under ``root``.
    """

    data_dir: Path
    socket_override: Path | None = None
    gitops_override: Path | None = None

    @classmethod
    def at(cls, root: Path, socket_override: Path | None = None) -> Layout:
        return cls(Path(root) / PRIMARY_NAME, socket_override)

    @property
    def root(self) -> Path:
        return self.data_dir.parent

    @property
    def primary_name(self) -> str:
        return self.data_dir.name

    # -- the primary's own files (shared_paths) -------------------------------------

    @property
    def base_dir(self) -> Path:
        return self.data_dir

    def sqlite_path(self, name: str) -> Path:
        return self.data_dir / "sqlite" / name

    def reckon_path(self, name: str) -> Path:
        return self.data_dir / "reckon-db" / name

    def socket_path(self, name: str) -> Path:
        return self.data_dir / SOCKETS_DIR / name

    def run_path(self, name: str) -> Path:
        return self.data_dir / RUN_DIR / name

    def connectors_dir(self) -> Path:
        return self.data_dir / "connectors"

    @property
    def api_socket(self) -> Path:
        """The well-known bootstrap socket, unless ``HECATE_SOCKET_PATH`` moved it."""
        return self.socket_override or self.socket_path(SOCKET_NAME)

    @property
    def gitops_dir(self) -> Path:
        """The desired-state tree (``system/``, ``apps/``): ``~/.hecate/gitops``, where
        ``hecate install`` and the ecosystem's reconciler have it, unless ``gitops_dir``
        moved it."""
        return self.gitops_override or self.root / GITOPS_DIR

    @cached_property
    def reserved_names(self) -> frozenset[str]:
        """Names in the root that are the daemon's, never a plugin's: its own namespace
        and the gitops tree (a directory there is no plugin, whatever it holds)."""
        names = {PRIMARY_NAME, self.primary_name, GITOPS_DIR}
        if self.gitops_dir.parent == self.root:
            names.add(self.gitops_dir.name)
        return frozenset(names)

    @property
    def pid_file(self) -> Path:
        return self.run_path(PID_FILE)

    @property
    def state_file(self) -> Path:
        return self.run_path(STATE_FILE)

    @property
    def lock_file(self) -> Path:
        return self.run_path(LOCK_FILE)

    # -- any daemon's namespace ---------------------------------------------------------

    def namespace(self, name: str) -> Path:
        return self.root / name

    # The same paths as plain strings: the index builds one per plugin and per
    # answer, and ``pathlib`` costs ~10x a concatenation (a scan of 10,000 names
    # spent 15% of its time there).

    @cached_property
    def _prefix(self) -> str:
        """The root as a string without a trailing slash ("" for a root of "/")."""
        return str(self.root).rstrip("/")

    @cached_property
    def _socket_overhead(self) -> int:
        """Bytes of a plugin's socket path besides its name: ``ROOT/`` + ``/sockets/api.sock``."""
        return len(os.fsencode(self._prefix)) + len(f"//{SOCKETS_DIR}/{SOCKET_NAME}")

    def namespace_str(self, name: str) -> str:
        return f"{self._prefix}/{name}"

    def manifest_str(self, name: str) -> str:
        return f"{self._prefix}/{name}/{MANIFEST_NAME}"

    def plugin_socket_str(self, name: str) -> str:
        return f"{self._prefix}/{name}/{SOCKETS_DIR}/{SOCKET_NAME}"

    def paths(self, name: str) -> dict[str, str]:
        """The spec's ``paths`` object for a namespace, keyed the JSON way."""
        base = self.namespace_str(name)
        return {json_key(sub): f"{base}/{sub}" for sub in SUBDIRS}

    def plugin_socket(self, name: str) -> Path:
        return self.namespace(name) / SOCKETS_DIR / SOCKET_NAME

    def plugin_pid_file(self, name: str) -> Path:
        return self.namespace(name) / RUN_DIR / PID_FILE

    def manifest_path(self, name: str) -> Path:
        return self.namespace(name) / MANIFEST_NAME

    # -- names ------------------------------------------------------------------------

    def check_name(self, name: object) -> str:
        """Validate a name before it touches any path; return it unchanged."""
        if not isinstance(name, str) or not name:
            raise InvalidNameError("name must be a non-empty string")
        if len(name) > NAME_MAX:
            raise NameTooLongError(f"name is {len(name)} characters; at most {NAME_MAX} allowed")
        if not NAME_RE.fullmatch(name):
            raise InvalidNameError(
                f"invalid name {name!r}: use lowercase letters, digits and single hyphens, "
                "starting with a letter (e.g. 'hecate-traderd')"
            )
        # The name is ASCII here (NAME_RE), so its length in bytes is len(name).
        sock_len = self._socket_overhead + len(name)
        if sock_len > SUN_PATH_MAX:
            raise NameTooLongError(
                f"name {name!r} is too long for this data root: its socket path "
                f"{self.plugin_socket_str(name)} is {sock_len} bytes, but a Unix socket "
                f"address holds at most {SUN_PATH_MAX} (108 with the terminating NUL)"
            )
        return name

    def check_plugin_name(self, name: object) -> str:
        """Like ``check_name``, and the primary's own namespace and the gitops tree are
        not a plugin's."""
        name = self.check_name(name)
        if name in self.reserved_names:
            if name in (PRIMARY_NAME, self.primary_name):
                raise ReservedNameError(f"{name!r} is the primary daemon's own namespace")
            raise ReservedNameError(f"{name!r} is the daemon's desired-state (gitops) directory")
        return name

    def is_plugin_name(self, name: str) -> bool:
        try:
            self.check_plugin_name(name)
        except InvalidNameError:
            return False
        return True

    # -- creating the tree ------------------------------------------------------------

    def open_namespace(self, name: str, create: bool = False) -> int:
        """A directory fd on a namespace, reached without following symlinks.

        With ``create``, the namespace and its five subdirectories are made
        (mode 0700) before the fd is returned, so a caller that answers with
        the paths never hands out a directory that does not exist yet.
        """
        with opened(open_root(self.root, create=create)) as root_fd:
            # Only creating tightens the mode: a read (a refresh the watcher runs on
            # every hand edit) must not undo a chmod before `hecatectl doctor` sees it.
            ns_fd = open_dir(root_fd, name, create=create, private=create)
        if create:
            try:
                for sub in SUBDIRS:
                    os.close(open_dir(ns_fd, sub, create=True))
            except BaseException:
                os.close(ns_fd)
                raise
        return ns_fd

    def ensure_namespace(self, name: str) -> None:
        os.close(self.open_namespace(name, create=True))

    def ensure_layout(self) -> None:
        """The spec's ``ensure_layout/0``: the primary's namespace, complete."""
        self.ensure_namespace(self.primary_name)

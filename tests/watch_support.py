"""Helpers for the watcher's tests: hand edits the way editors and scripts make them."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hecated.adapters.liveness import Prober
from hecated.adapters.watch import Watcher
from hecated.core.index import Index
from hecated.core.layout import Layout


def manifest_text(name: str, version: str = "1.0", description: str = "") -> str:
    return f'name = "{name}"\nversion = "{version}"\ndescription = "{description}"\n'


BROKEN = 'name = "x"\nversion = \n'  # invalid TOML on line 2


def write_in_place(path: Path, text: str) -> None:
    """What `echo > file` and most editors without backups do: truncate and write."""
    with open(path, "w") as fh:
        fh.write(text)


def write_rename_over(path: Path, text: str) -> None:
    """What VS Code, atomic writers and os.replace users do."""
    tmp = path.with_name(f".{path.name}.edit")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_vim_style(path: Path, text: str, gap: float = 0.0) -> None:
    """vim outside /tmp: move the file to a backup, write a new one, delete the backup.

    ``gap`` stretches the moment the file is missing (a slow disk, a busy machine).
    """
    backup = path.with_name(path.name + "~")
    os.rename(path, backup)
    time.sleep(gap)
    with open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.unlink(backup)


def dead_pid() -> int:
    """A pid that named a process a moment ago and names none now."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def fresh_scan(layout: Layout) -> dict:
    """What the index should hold: a new registry's scan of the same tree (its run dirs
    read; no socket probed: none of these trees has a socket that answers)."""
    reg = Index(layout)
    prober = Prober(reg)
    prober.hold()
    try:
        reg.scan()
        return {p.name: p for p in reg.list()}
    finally:
        prober.close()
        reg.close()


def index_of(reg: Index) -> dict:
    return {p.name: p for p in reg.list()}


@contextmanager
def watching(root: Path, create: bool = True) -> Iterator[tuple[Index, Watcher]]:
    """A registry over ``root`` with a running watcher, as the daemon composes them."""
    layout = Layout.at(root)
    if create:
        layout.ensure_layout()
    reg = Index(layout)
    prober = Prober(reg)
    prober.hold()  # as the daemon starts: the start scan's probes run after it
    reg.scan()
    watcher = Watcher(reg).start()
    prober.release()
    try:
        yield reg, watcher
    finally:
        watcher.stop()
        prober.close()
        reg.close()


class WatcherLog(logging.Handler):
    """Counts the watcher's refreshes and rescans of one tree, from its own log records
    (a refresh is logged at debug level): the daemon keeps no counter for tests."""

    def __init__(self, root: Path) -> None:
        super().__init__(logging.DEBUG)
        self.root = str(root)
        self.refreshed: list[str] = []
        self.rescans = 0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(f"watcher: refreshed {self.root}/"):
            self.refreshed.append(message.rpartition("/")[2])
        elif message.startswith("watcher: watches (re)built") and message.endswith(
            f" in {self.root}"
        ):
            self.rescans += 1

    @property
    def refreshes(self) -> int:
        return len(self.refreshed)


@contextmanager
def watcher_log(root: Path) -> Iterator[WatcherLog]:
    """Count what the watcher of ``root`` does while the block runs."""
    logger = logging.getLogger("hecated.adapters.watch")
    counter = WatcherLog(root)
    level = logger.level
    logger.addHandler(counter)
    logger.setLevel(logging.DEBUG)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)

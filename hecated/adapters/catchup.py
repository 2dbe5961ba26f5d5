"""Which names changed between the index's last full read and the watches: read only those.

The rule is watches first, then read: whatever changes after a watch is in
place makes an event, whatever changed before must be read. The daemon reads
the whole tree at start (the start scan) and places its watches seconds later,
after the first answer; reading all of it again then would cost ~0.7 CPU-s at
10,000 plugins (three opens and reads per name for the run files alone), to
find, almost always, nothing new.

What can have changed since a read shows in the kernel's change time: every
write, truncate, chmod or rename of a file sets its ``ctime``, and every entry
made, removed or renamed in a directory sets the directory's; nobody can set a
``ctime`` back. So, once the watches are in place, a name is read again when
any of its namespace directory, ``plugin.toml``, ``run/``, ``run/daemon.pid``
and ``run/daemon.state`` has a ``ctime`` from after the read began (less
``MARGIN`` for the kernel's coarse clock), or when it is on disk but not in the
index or the other way round. Sockets are the prober's business, as they were
for the full rescan.

"After the read began" is measured in the filesystem's own clock, which on a
network file system is the server's: an unnamed file (``O_TMPFILE``) made in
the root gives the file system's "now", and the time elapsed since the read
began (``CLOCK_BOOTTIME``, which no clock step moves) is taken off it. Where
that cannot be done (no ``O_TMPFILE``, no root), or the index is empty (never
scanned), the answer is "read everything", the full rescan as before.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable

from hecated.core.layout import MANIFEST_NAME, PID_FILE, RUN_DIR, STATE_FILE

MARGIN = 0.25  # seconds: the coarse clock file times are taken from, and then some
# What a refresh of a name reads, as suffixes of its namespace's path.
_PARTS = ("", f"/{MANIFEST_NAME}", f"/{RUN_DIR}", f"/{RUN_DIR}/{PID_FILE}")
_PARTS += (f"/{RUN_DIR}/{STATE_FILE}",)


def process_start() -> float:
    """When this process started, in ``CLOCK_BOOTTIME`` seconds: the daemon's start scan
    read the tree after it."""
    with open("/proc/self/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return int(fields[19]) / os.sysconf("SC_CLK_TCK")  # starttime, ticks since boot


def fs_threshold_ns(root: str, read_after: float) -> int | None:
    """``read_after`` (``CLOCK_BOOTTIME`` seconds) on the file system's clock, less the
    margin, in ns; None when the file system cannot say what time it is."""
    try:
        fd = os.open(root, os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    except OSError:
        return None
    try:
        fs_now = os.fstat(fd).st_ctime_ns
    finally:
        os.close(fd)
    elapsed = time.clock_gettime(time.CLOCK_BOOTTIME) - read_after
    return fs_now - int((elapsed + MARGIN) * 1e9)


def changed_since(
    root: str, on_disk: Iterable[str], in_index: Iterable[str], threshold_ns: int
) -> list[str]:
    """The names whose files changed at or after ``threshold_ns``, or that are in only one
    of the tree and the index, sorted."""
    disk, index = set(on_disk), set(in_index)
    stale = disk ^ index
    for name in sorted(disk & index):
        if _changed(f"{root}/{name}", threshold_ns):
            stale.add(name)
    return sorted(stale)


def _changed(namespace: str, threshold_ns: int) -> bool:
    for part in _PARTS:
        try:
            if os.lstat(namespace + part).st_ctime_ns >= threshold_ns:
                return True
        except OSError as exc:
            if part and exc.errno in (errno.ENOENT, errno.ENOTDIR):
                continue  # missing: had it been removed since, its directory would say so
            return True  # the namespace gone, or unreadable: read it again
    return False

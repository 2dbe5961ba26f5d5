"""What the gitops reconciler owes a user manager, kept on disk for the hecated after this one.

Two files in the primary's ``run/`` (the spec allows only its subdirectories at the top of
a namespace), one unit name a line, written atomically, removed when nothing is owed:

- ``gitops-owed-starts``: units linked whose start was not made. Their links are in
  place, so nothing else would tell the next hecated these units are new (systemd 252
  loads a freshly linked ``.service`` on a D-Bus query without a reload).
- ``gitops-owed-stops``: units whose file left the tree and whose stop was not made.
  Their links are kept, but a link removed by hand meanwhile would leave nothing to say
  the unit must stop: the file does.

Kept on disk, what is owed to a manager that is not there at all does not keep hecated
from its idle exit: the next hecated's first pass asks for it. A name read back is
handed to the manager only when it is a valid unit name (the file may have been written
by something else), and a stop read back is made only on a unit that still runs from
hecated's link or from no file at all (adapters/gitops: the user may have put a unit file
of their own in the link's place meanwhile).
"""

from __future__ import annotations

import logging

from hecated import protocol
from hecated.core.errors import HecateError
from hecated.core.files import atomic_write, open_dir, open_root, opened, read_regular, remove_file
from hecated.core.layout import RUN_DIR, Layout

log = logging.getLogger("hecated.adapters.gitops")

STARTS = "gitops-owed-starts"
STOPS = "gitops-owed-stops"
OWED_MAX = 64 * 1024


def _run_dir(layout: Layout) -> int:
    """The primary's ``run/``, opened without following a link."""
    root = open_root(layout.root, create=False)
    with opened(root) as top, opened(open_dir(top, layout.primary_name)) as own:
        return open_dir(own, RUN_DIR)


def load_owed(layout: Layout, name: str = STARTS) -> set[str]:
    """The units a hecated before this one owed (``name``: STARTS or STOPS) when it ended
    (stopped, crashed, exited idle)."""
    try:
        with opened(_run_dir(layout)) as fd:
            data = read_regular(fd, name, OWED_MAX)
    except (OSError, HecateError) as exc:
        log.warning("cannot read what was owed before (%s): %s", name, exc)
        return set()
    names = set() if data is None else set(data.decode("utf-8", "replace").split())
    junk = sorted(n for n in names if not _unit_name(n))
    if junk:  # written by hand or by something else: never handed to the manager
        log.warning("ignoring what is not a unit name in %s: %s", name, ", ".join(junk))
    return names.difference(junk)


def save_owed(layout: Layout, units: set[str], name: str = STARTS) -> bool:
    """The owed units on disk (none: the file removed), for a hecated after this one;
    whether they are."""
    try:
        with opened(_run_dir(layout)) as fd:
            if units:
                atomic_write(fd, name, "".join(u + "\n" for u in sorted(units)).encode())
            else:
                remove_file(fd, name)
    except (OSError, HecateError) as exc:
        log.warning("cannot keep what is owed in %s: %s", name, exc)
        return False
    return True


def _unit_name(name: str) -> bool:
    try:
        protocol.check_unit_name(name)
    except protocol.InvalidUnitName:
        return False
    return True

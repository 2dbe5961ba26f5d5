"""What the gitops tree says is installed: one desired-state file per plugin.

The ecosystem installs a plugin by putting a unit file into ``~/.hecate/gitops/``
(``system/`` or ``apps/``): a Quadlet ``.container`` (``hecate install``, hecate-cli) or,
for a plugin that is a plain program, a ``.service``. The reconciler
(adapters/gitops) links each into the user manager's directories; the index
holds what it found per plugin (``Installed``) so that an installed plugin is
listed, registered or not, with its file and, when it cannot run here, why.

The file's stem is the unit's stem and the plugin's name
(``apps/hecate-traderd.container`` -> ``hecate-traderd.service`` -> ``hecate-traderd``):
the convention Quadlet and the plugins already follow (``ContainerName=hecate-traderd``,
the namespace ``~/.hecate/hecate-traderd``). ``desired_of`` is the one place that says so.
Stdlib only, like the rest of the core.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

from hecated.protocol import UNIT_SUFFIX

# The desired-state tree's subdirectories, in the order the ecosystem's reconciler reads them.
SUBDIRS: tuple[str, ...] = ("system", "apps")
# A file's suffix -> its kind; any other file (``.env``, ``README``) is not a unit file.
KINDS: dict[str, str] = {".container": "container", ".service": "service"}

__all__ = ["KINDS", "SUBDIRS", "Desired", "Installed", "desired_of"]


@dataclass(frozen=True)
class Installed:
    """One plugin's desired-state file as the reconciler last found it.

    ``path``: the file under the gitops tree; ``kind``: "container" or "service";
    ``unit``: the unit the user manager runs (``hecate-traderd.service``); ``linked``:
    hecated's link to it is in place in the unit directory; ``problem``: why it does
    not run here, in a sentence (None: nothing known to be wrong).
    """

    path: str
    kind: str
    unit: str
    linked: bool = False
    problem: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "unit": self.unit,
            "linked": self.linked,
            "problem": self.problem,
        }


class _Names(Protocol):
    def check_plugin_name(self, name: object) -> str: ...


@dataclass(frozen=True)
class Desired:
    """What a desired-state file's name says: its plugin, kind and unit."""

    path: str
    name: str
    kind: str
    unit: str


def desired_of(path: str, names: _Names) -> Desired | None:
    """The plugin a desired-state file belongs to; None when it is no unit file.

    ``names`` is the layout (its ``check_plugin_name``): a stem that is no plugin
    name (a template ``foo@``, capitals, the primary's own ``hecate-daemon``) raises
    the layout's ``InvalidNameError`` with the reason, so the caller reports it and
    links nothing.
    """
    stem, suffix = os.path.splitext(os.path.basename(path))
    kind = KINDS.get(suffix)
    if kind is None:
        return None
    name = names.check_plugin_name(stem)
    return Desired(path, name, kind, name + UNIT_SUFFIX)

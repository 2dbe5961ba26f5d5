"""Which systemd unit runs a plugin: the one rule, in one place.

A plugin names its unit in ``plugin.toml`` (``unit = "..."``); left out, the
ecosystem's convention holds: the unit named after the namespace,
``{name}.service`` (Quadlet's ``ContainerName=hecate-traderd`` gives
``hecate-traderd.service``). The control routes, on-demand start and the unit
watcher all ask here, so they can never disagree about a plugin's unit.
Pure and stdlib-only: the name is checked where it is used (the adapter refuses
a bad one before any D-Bus call).
"""

from __future__ import annotations

from typing import Any

from hecated.protocol import UNIT_SUFFIX


def unit_of(entry: Any, name: str) -> str:
    """The unit of plugin ``name``: its manifest's ``unit`` if set, else ``{name}.service``.

    ``entry`` is the index's ``Plugin``, its ``Entry`` (with a ``manifest``), a
    manifest itself, or None (a plugin known only by name)."""
    entry = getattr(entry, "entry", entry)
    manifest = getattr(entry, "manifest", entry)
    unit = getattr(manifest, "unit", None)
    if isinstance(unit, str) and unit:
        return unit
    return name + UNIT_SUFFIX

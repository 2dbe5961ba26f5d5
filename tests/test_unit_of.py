"""Which unit runs a plugin (core/units.py): the manifest's ``unit``, else ``{name}.service``."""

from __future__ import annotations

from dataclasses import dataclass

from hecated.core.index import Index
from hecated.core.layout import Layout
from hecated.core.units import unit_of


@dataclass(frozen=True)
class Named:
    """Anything with a ``unit`` attribute, as the manifest has once it holds the key."""

    unit: str | None


def test_the_convention_without_a_unit_key(tmp_path) -> None:
    layout = Layout.at(tmp_path / ".hecate")
    layout.ensure_layout()
    index = Index(layout)
    index.register("hecate-traderd", "1.0", "")
    plugin = index.get("hecate-traderd")
    assert unit_of(plugin, "hecate-traderd") == "hecate-traderd.service"
    assert unit_of(plugin.entry, "hecate-traderd") == "hecate-traderd.service"
    assert unit_of(None, "hecate-traderd") == "hecate-traderd.service"


def test_a_named_unit_wins() -> None:
    assert unit_of(Named("traderd@main.service"), "hecate-traderd") == "traderd@main.service"
    assert unit_of(Named(None), "hecate-traderd") == "hecate-traderd.service"
    assert unit_of(Named(""), "hecate-traderd") == "hecate-traderd.service"

"""The list's entries as ``http/views.py`` encodes them: a quiet entry (registered, nothing
live to tell: most of a first list of 10,000) is written without its dict, and must be the
very bytes its ``summary`` encodes to, whatever the entry holds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hecated.core.index import Index, Plugin
from hecated.core.installed import Installed
from hecated.core.layout import Layout
from hecated.core.manifest import Manifest
from hecated.core.status import LiveManifest, Liveness, UnitFinding
from hecated.core.store import Entry
from hecated.http.views import Views, quiet_fragment
from hecated.protocol import PluginStatus

ODD_TEXT = 'quotes " and \\ back, tab\t, é, 😀, \u2028 and \x01'


@pytest.fixture
def views(home: Path) -> Iterator[Views]:
    index = Index(Layout.at(home / ".hecate"))
    yield Views(index)
    index.close()


def _plugin(name: str, manifest: Manifest | None, live: Liveness, **more: object) -> Plugin:
    return Plugin(Entry(name, manifest=manifest), live, **more)  # type: ignore[arg-type]


def _quiet() -> list[Plugin]:
    """Registered and quiet: every status the run dir alone can give, odd text, no manifest."""
    plain = Manifest(name="plain", version="1.2.3", description="a plugin")
    odd = Manifest(name="odd-text", version=ODD_TEXT, description=ODD_TEXT)
    return [
        _plugin("plain", plain, Liveness(PluginStatus.STOPPED)),
        _plugin("odd-text", odd, Liveness(PluginStatus.STARTING, pid=42, state="booting")),
        _plugin("failed", plain, Liveness(PluginStatus.FAILED, detail="exited 1")),
        _plugin("empty", Manifest(name="empty", version="1"), Liveness(PluginStatus.RUNNING)),
        _plugin("invalid", None, Liveness(PluginStatus.STOPPED)),
    ]


def _loud() -> list[Plugin]:
    """Each with one thing live to tell: their summaries are encoded as dicts."""
    plain = Manifest(name="loud", version="1", description="d")
    said = LiveManifest(name="loud", version="2", display_name="Loud", ui=True, problems=("x",))
    unit = UnitFinding("loud.service", "loaded", "active", "running")
    return [
        _plugin("live", plain, Liveness(PluginStatus.RUNNING, manifest=said, answering=True)),
        _plugin("unit", plain, Liveness(PluginStatus.RUNNING, unit=unit)),
        _plugin("installed", plain, Liveness(PluginStatus.STOPPED), installed=Installed(
            "/g/installed.toml", "service", "hecate-installed.service")),
        _plugin("found", None, Liveness(PluginStatus.RUNNING, answering=True), registered=False),
    ]  # fmt: skip


def _as_dict(views: Views, plugin: Plugin) -> bytes:
    text = json.dumps(views.summary(plugin), ensure_ascii=False, separators=(",", ":"))
    return text.encode()


@pytest.mark.parametrize("plugin", _quiet(), ids=lambda p: p.name)
def test_a_quiet_entry_is_the_bytes_of_its_summary(views: Views, plugin: Plugin) -> None:
    socket = views.layout.plugin_socket_str(plugin.name)
    assert quiet_fragment(plugin, socket) == _as_dict(views, plugin)
    assert views.fragment(plugin) == _as_dict(views, plugin)


@pytest.mark.parametrize("plugin", _loud(), ids=lambda p: p.name)
def test_an_entry_with_live_news_is_its_summary_encoded(views: Views, plugin: Plugin) -> None:
    assert quiet_fragment(plugin, views.layout.plugin_socket_str(plugin.name)) is None
    assert views.fragment(plugin) == _as_dict(views, plugin)

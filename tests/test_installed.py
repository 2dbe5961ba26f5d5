"""What is installed, in the core: the file -> plugin rule, the listing rule, the views.

The reconciler (adapters/gitops) publishes ``Installed`` with ``Index.set_installed``;
these tests publish it by hand, so the core's rules are held without a user manager.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from hecated.client import DesiredInfo, PluginSummary
from hecated.core import config
from hecated.core.errors import InvalidNameError, ReservedNameError, StillRegisteredError
from hecated.core.index import Index
from hecated.core.installed import Installed, desired_of
from hecated.core.layout import Layout
from hecated.http import openapi
from hecated.http.views import Views


@pytest.fixture
def layout(home: Path) -> Layout:
    layout = Layout.at(home / ".hecate")
    layout.ensure_layout()
    return layout


@pytest.fixture
def index(layout: Layout) -> Index:
    index = Index(layout)
    index.scan()
    return index


def conforms(schema: str, value: Any) -> None:
    doc = {"$ref": f"#/components/schemas/{schema}", "components": openapi.spec()["components"]}
    Draft202012Validator(doc).validate(value)


TRADER = Installed("/g/apps/hecate-traderd.container", "container", "hecate-traderd.service")


# -- the file -> plugin rule ---------------------------------------------------------------


def test_a_files_stem_is_its_units_and_its_plugins_name(layout: Layout) -> None:
    got = desired_of("/g/apps/hecate-traderd.container", layout)
    assert got is not None
    assert (got.name, got.kind, got.unit) == (
        "hecate-traderd",
        "container",
        "hecate-traderd.service",
    )
    got = desired_of("/g/system/hecate-exampled.service", layout)
    assert got is not None
    assert (got.name, got.kind, got.unit) == (
        "hecate-exampled",
        "service",
        "hecate-exampled.service",
    )


@pytest.mark.parametrize(
    "path", ["/g/apps/hecate-traderd.env", "/g/apps/README", "/g/apps/.service"]
)
def test_a_file_that_is_no_unit_file_belongs_to_no_plugin(layout: Layout, path: str) -> None:
    assert desired_of(path, layout) is None


@pytest.mark.parametrize(
    "path", ["/g/apps/foo@.service", "/g/apps/Trader.container", "/g/apps/a--b.service"]
)
def test_a_stem_that_is_no_plugin_name_is_refused_with_the_reason(
    layout: Layout, path: str
) -> None:
    with pytest.raises(InvalidNameError, match="invalid name"):
        desired_of(path, layout)


def test_the_primarys_own_container_is_no_plugin(layout: Layout) -> None:
    with pytest.raises(ReservedNameError):
        desired_of("/g/system/hecate-daemon.container", layout)


# -- the gitops tree is the daemon's, never a plugin -------------------------------------------


def test_gitops_is_a_reserved_name(layout: Layout) -> None:
    assert layout.gitops_dir == layout.root / "gitops"
    with pytest.raises(ReservedNameError, match="gitops"):
        layout.check_plugin_name("gitops")
    assert not layout.is_plugin_name("gitops")


def test_a_moved_gitops_dir_in_the_root_reserves_its_own_name(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "hecate-daemon", None, tmp_path / "desired")
    assert not layout.is_plugin_name("desired")
    elsewhere = Layout(tmp_path / "hecate-daemon", None, tmp_path / "x" / "desired")
    assert elsewhere.is_plugin_name("desired")


def test_a_plugin_toml_in_the_gitops_tree_is_not_listed(layout: Layout) -> None:
    (layout.gitops_dir / "apps").mkdir(parents=True)
    (layout.gitops_dir / "plugin.toml").write_text('name = "gitops"\nversion = "1"\n')
    index = Index(layout)
    index.scan()
    assert [p.name for p in index.list()] == []


def test_the_gitops_dir_setting_moves_the_tree(home: Path, tmp_path: Path) -> None:
    assert config.resolve({}, {"HOME": str(home)}).layout.gitops_dir.name == "gitops"
    moved = config.resolve({}, {"HECATE_GITOPS_DIR": str(tmp_path / "g")})
    assert moved.layout.gitops_dir == tmp_path / "g"
    flagged = config.resolve({"gitops_dir": str(tmp_path / "f")}, {})
    assert flagged.layout.gitops_dir == tmp_path / "f"


# -- the listing rule ------------------------------------------------------------------------


def test_an_installed_name_is_listed_unregistered_and_not_answering(index: Index) -> None:
    before = index.seq
    change = index.set_installed("hecate-traderd", TRADER)
    assert change is not None and change.seq == before + 1
    plugin = index.get("hecate-traderd")
    assert plugin is not None
    assert (plugin.registered, plugin.installed, plugin.live.answering) == (False, TRADER, False)
    assert index.set_installed("hecate-traderd", TRADER) is None  # no difference, no change
    assert index.seq == before + 1


def test_a_new_finding_of_the_same_file_is_a_change(index: Index) -> None:
    index.set_installed("hecate-traderd", TRADER)
    linked = Installed(TRADER.path, TRADER.kind, TRADER.unit, linked=True)
    assert index.set_installed("hecate-traderd", linked) is not None
    plugin = index.get("hecate-traderd")
    assert plugin is not None and plugin.installed == linked


def test_uninstalling_an_unregistered_name_drops_it(index: Index) -> None:
    index.set_installed("hecate-traderd", TRADER)
    assert index.set_installed("hecate-traderd", None) is not None
    assert index.get("hecate-traderd") is None
    assert index.set_installed("hecate-traderd", None) is None


def test_deregistering_an_installed_plugin_keeps_it_listed_as_installed(index: Index) -> None:
    index.register("hecate-traderd", "1.0.0", "Trading daemon")
    index.set_installed("hecate-traderd", TRADER)
    plugin = index.get("hecate-traderd")
    assert plugin is not None and plugin.registered and plugin.installed == TRADER
    index.deregister("hecate-traderd")
    plugin = index.get("hecate-traderd")
    assert plugin is not None and not plugin.registered and plugin.installed == TRADER


def test_uninstalling_a_registered_plugin_keeps_it_registered(index: Index) -> None:
    index.register("hecate-traderd", "1.0.0", "Trading daemon")
    index.set_installed("hecate-traderd", TRADER)
    index.set_installed("hecate-traderd", None)
    plugin = index.get("hecate-traderd")
    assert plugin is not None and plugin.registered and plugin.installed is None


def test_a_rescan_keeps_what_is_installed(index: Index) -> None:
    index.set_installed("hecate-traderd", TRADER)
    index.register("hecate-other", "1.0.0", "x")
    index.scan()
    plugin = index.get("hecate-traderd")
    assert plugin is not None and plugin.installed == TRADER
    index.refresh("hecate-traderd")
    assert index.get("hecate-traderd") == plugin


# -- the views and the SDK -------------------------------------------------------------------


def test_list_and_detail_say_installed_and_desired(index: Index) -> None:
    index.register("hecate-plain", "1.0.0", "not installed")
    problem = "needs podman 4.4 or later for Quadlet; this machine has 4.3.1"
    index.set_installed(
        "hecate-traderd", Installed(TRADER.path, "container", TRADER.unit, False, problem)
    )
    views = Views(index)
    by_name = {p.name: views.summary(p) for p in index.list()}
    assert by_name["hecate-plain"]["installed"] is False
    assert by_name["hecate-plain"]["desired"] is None
    row = by_name["hecate-traderd"]
    assert row["installed"] is True and row["registered"] is False
    assert row["desired"] == {
        "path": TRADER.path,
        "kind": "container",
        "unit": "hecate-traderd.service",
        "linked": False,
        "problem": problem,
    }
    for summary in by_name.values():
        conforms("PluginSummary", summary)
    plugin = index.get("hecate-traderd")
    assert plugin is not None
    conforms("PluginDetail", views.detail(plugin))
    got = PluginSummary.from_json(row)
    assert got.installed is True
    assert got.desired == DesiredInfo(TRADER.path, "container", TRADER.unit, False, problem)


def test_the_sdk_reads_a_daemon_that_predates_installs() -> None:
    row = {"name": "a", "version": None, "description": None, "socket": "/s", "status": "stopped"}
    got = PluginSummary.from_json(row)
    assert got.installed is False and got.desired is None


def test_an_installed_plugins_data_is_not_purged(index: Index, layout: Layout) -> None:
    layout.ensure_namespace("hecate-traderd")
    index.set_installed("hecate-traderd", TRADER)
    with pytest.raises(StillRegisteredError, match="uninstall it"):
        index.purge("hecate-traderd")
    assert layout.namespace("hecate-traderd").is_dir()
    index.set_installed("hecate-traderd", None)
    index.purge("hecate-traderd")
    assert not layout.namespace("hecate-traderd").exists()

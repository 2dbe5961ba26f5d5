"""The start-up cache of parsed manifests: used only for files that did not change."""

from __future__ import annotations

import os
from pathlib import Path

from hecated.core.index import Index
from hecated.core.layout import INDEX_CACHE_FILE, Layout
from hecated.core.manifest import Manifest, dumps, now_utc


def _write(layout: Layout, name: str, version: str, extra: dict | None = None) -> Path:
    layout.ensure_namespace(name)
    path = layout.manifest_path(name)
    now = now_utc()
    m = Manifest(name, version, "d", registered_at=now, updated_at=now, extra=extra or {})
    path.write_bytes(dumps(m))
    return path


def _registry(layout: Layout) -> Index:
    registry = Index(layout)
    registry.cache.racy_ns = 0  # files written just now count as settled
    return registry


def _versions(registry: Index) -> dict[str, str | None]:
    return {p.name: p.entry.manifest.version if p.entry.manifest else None for p in registry.list()}


def test_a_restart_takes_unchanged_manifests_from_the_cache(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path / ".hecate")
    layout.ensure_layout()
    for i in range(5):
        _write(layout, f"p{i}", f"1.{i}")
    first = _registry(layout)
    first.scan()
    assert first.cache.hits == 0
    assert first.save_cache()
    assert (layout.data_dir / "run" / INDEX_CACHE_FILE).exists()

    second = _registry(layout)
    assert second.load_cache() == 5
    second.scan()
    assert second.cache.hits == 5
    assert second.list() == first.list()
    detail = second.get("p3")
    assert detail is not None and detail.entry.manifest is not None
    assert detail.entry.manifest.registered_at == first.get("p3").entry.manifest.registered_at


def test_a_changed_file_is_parsed_again(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path / ".hecate")
    layout.ensure_layout()
    path = _write(layout, "edited", "1.0")
    _write(layout, "same", "1.0")
    first = _registry(layout)
    first.scan()
    first.save_cache()
    # An in-place edit of the same size, then a distinct mtime, as a later edit has.
    with path.open("r+b") as fh:
        data = fh.read().replace(b'version = "1.0"', b'version = "2.0"')
        fh.seek(0)
        fh.write(data)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    _write(layout, "fresh", "3.0")
    second = _registry(layout)
    second.load_cache()
    second.scan()
    assert _versions(second) == {"edited": "2.0", "fresh": "3.0", "same": "1.0"}
    assert second.cache.hits == 1


def test_a_recently_changed_file_is_never_cached(tmp_path: Path) -> None:
    """Within the racy window an edit may keep inode, size and timestamps: parse again."""
    layout = Layout.at(tmp_path / ".hecate")
    layout.ensure_layout()
    _write(layout, "young", "1.0")
    registry = Index(layout)  # the real window: the file was written just now
    registry.scan()
    assert len(registry.cache) == 0
    registry.scan()
    assert registry.cache.hits == 0


def test_a_corrupt_or_foreign_cache_is_ignored(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path / ".hecate")
    layout.ensure_layout()
    _write(layout, "one", "1.0")
    cache = layout.data_dir / "run" / INDEX_CACHE_FILE
    for junk in (b"{not json", b'{"format": 99, "entries": {}}', b"[]", b"\xff\xfe"):
        cache.write_bytes(junk)
        registry = _registry(layout)
        assert registry.load_cache() == 0
        registry.scan()
        assert _versions(registry) == {"one": "1.0"}


def test_a_tampered_entry_is_dropped_not_trusted(tmp_path: Path) -> None:
    """Rows that would not pass the parser's own checks are ignored one by one."""
    layout = Layout.at(tmp_path / ".hecate")
    layout.ensure_layout()
    _write(layout, "one", "1.0")
    _write(layout, "two", "1.0")
    first = _registry(layout)
    first.scan()
    first.save_cache()
    cache = layout.data_dir / "run" / INDEX_CACHE_FILE
    cache.write_bytes(cache.read_bytes().replace(b'"1.0","d"', b'"1.0","bad\\u0000"', 1))
    second = _registry(layout)
    assert second.load_cache() == 1
    second.scan()
    assert _versions(second) == {"one": "1.0", "two": "1.0"}
    assert all(p.entry.manifest.description == "d" for p in second.list())


def test_manifests_with_keys_a_person_added_are_not_cached(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path / ".hecate")
    layout.ensure_layout()
    _write(layout, "noted", "1.0", extra={"notes": {"owner": "me"}})
    registry = _registry(layout)
    registry.scan()
    assert len(registry.cache) == 0
    assert registry.get("noted").entry.manifest.extra == {"notes": {"owner": "me"}}


def test_the_unit_keys_survive_the_cache(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path / ".hecate")
    layout.ensure_layout()
    layout.ensure_namespace("unitful")
    now = now_utc()
    m = Manifest(
        "unitful", "1", "d", now, now, unit="u@1.service", start_on_demand=False, idle_stop_after=9
    )
    layout.manifest_path("unitful").write_bytes(dumps(m))
    first = _registry(layout)
    first.scan()
    assert first.save_cache()
    second = _registry(layout)
    assert second.load_cache() == 1
    second.scan()
    assert second.cache.hits == 1
    cached = second.get("unitful").entry.manifest
    assert (cached.unit, cached.start_on_demand, cached.idle_stop_after) == (
        "u@1.service",
        False,
        9,
    )

"""Parsed ``plugin.toml`` files kept across restarts, so a start need not re-parse them all.

Parsing TOML is most of what a scan of 10,000 plugins costs (~60% of it). The
files stay the truth: a cached manifest is used only while its file's inode,
mtime, size and ctime are what they were when it was parsed, and only if the
file had been still for ``RACY_NS`` before that (an edit within the same
timestamp tick could otherwise keep all four, as git's "racily clean" index
entries can). Anything changed, unknown or doubtful is parsed again; a cache
that is missing, corrupt or of another version is ignored as a whole.

The cache is one JSON file in the primary's ``run/`` directory, written
atomically. Manifests with keys a person added (``extra``) are never cached:
TOML values do not all survive a JSON round trip, and such files are rare.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
import time
from datetime import datetime

from hecated.core.errors import UnsafePathError
from hecated.core.files import atomic_write, read_regular
from hecated.core.manifest import (
    DESCRIPTION_MAX,
    VERSION_MAX,
    Manifest,
    check_idle_stop_after,
    check_text,
    check_unit,
)

log = logging.getLogger("hecated.cache")

FORMAT = 2  # 2: the unit keys (unit, start_on_demand, idle_stop_after) in each row
RACY_NS = 2_000_000_000
MAX_CACHE_BYTES = 64 * 1024 * 1024

Key = tuple[int, int, int, int]


def key_of(st: os.stat_result) -> Key | None:
    """What identifies one version of a file; None for anything but a regular file."""
    if not stat.S_ISREG(st.st_mode):
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns)


def settled(key: Key, now_ns: int, racy_ns: int = RACY_NS) -> bool:
    """True when the file was last changed long enough ago that a later change shows."""
    return max(key[1], key[3]) + racy_ns <= now_ns


class ManifestCache:
    """Thread-safe map of name → (file key, manifest), loaded from and saved to disk."""

    def __init__(self, racy_ns: int = RACY_NS) -> None:
        self.racy_ns = racy_ns
        self._entries: dict[str, tuple[Key, Manifest]] = {}
        self._lock = threading.Lock()
        self._dirty = False
        self.hits = 0

    def get(self, name: str, key: Key | None) -> Manifest | None:
        if key is None:
            return None
        with self._lock:
            hit = self._entries.get(name)
        if hit is None or hit[0] != key:
            return None
        self.hits += 1
        return hit[1]

    def put(self, name: str, key: Key | None, found: Manifest | None, now_ns: int) -> None:
        """Remember ``found`` for ``key``, if it can be trusted later; else forget ``name``."""
        ok = (
            found is not None
            and key is not None
            and not found.extra
            and not found.fine_times  # the cache's rows keep times to the microsecond
            and settled(key, now_ns, self.racy_ns)
        )
        with self._lock:
            if ok:
                if self._entries.get(name) != (key, found):
                    self._entries[name] = (key, found)  # type: ignore[assignment]
                    self._dirty = True
            elif self._entries.pop(name, None) is not None:
                self._dirty = True

    def retain(self, names: set[str]) -> None:
        with self._lock:
            for name in [n for n in self._entries if n not in names]:
                del self._entries[name]
                self._dirty = True

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    # -- on disk ---------------------------------------------------------------------

    def load(self, dir_fd: int, filename: str) -> int:
        """Read the cache file; returns the number of entries taken, 0 when it is unusable."""
        try:
            raw = read_regular(dir_fd, filename, MAX_CACHE_BYTES)
            doc = json.loads(raw) if raw else None
        except (OSError, UnsafePathError, ValueError) as exc:
            log.info("ignoring the manifest cache: %s", exc)
            return 0
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            return 0
        rows = doc.get("entries")
        if not isinstance(rows, dict):
            return 0
        entries = {}
        for name, row in rows.items():
            parsed = _from_row(name, row)
            if parsed is not None:
                entries[name] = parsed
        with self._lock:
            self._entries = entries
            self._dirty = False
        return len(entries)

    def save(self, dir_fd: int, filename: str) -> bool:
        """Write the cache atomically when it changed since the last load or save."""
        with self._lock:
            if not self._dirty:
                return False
            rows = {name: _to_row(key, m) for name, (key, m) in self._entries.items()}
            self._dirty = False
        data = json.dumps({"format": FORMAT, "entries": rows}, separators=(",", ":")).encode()
        atomic_write(dir_fd, filename, data)
        return True


def _stamp(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _to_row(key: Key, m: Manifest) -> list:
    stamps = [_stamp(m.registered_at), _stamp(m.updated_at)]
    units = [m.unit, m.start_on_demand, m.idle_stop_after]
    return [*key, m.version, m.description, *stamps, m.schema, *units]


def _from_row(name: str, row: object) -> tuple[Key, Manifest] | None:
    """One cached entry, checked as strictly as a parse would; None when anything is off."""
    try:
        ino, mtime, size, ctime, version, description, registered, updated, schema = row[:9]  # type: ignore[index]
        unit, on_demand, idle = row[9:]  # type: ignore[index]
        key = (ino, mtime, size, ctime)
        if not all(type(k) is int for k in key) or type(schema) is not int:
            return None
        if type(on_demand) is not bool:
            return None
        m = Manifest(
            name=name,
            version=check_text("version", version, VERSION_MAX),
            description=check_text("description", description, DESCRIPTION_MAX),
            registered_at=None if registered is None else datetime.fromisoformat(registered),
            updated_at=None if updated is None else datetime.fromisoformat(updated),
            schema=schema,
            unit=None if unit is None else check_unit(unit),
            start_on_demand=on_demand,
            idle_stop_after=None if idle is None else check_idle_stop_after(idle),
        )
    except Exception:  # a hand-mangled cache is ignored, entry by entry
        return None
    return key, m


def now_ns() -> int:
    return time.time_ns()

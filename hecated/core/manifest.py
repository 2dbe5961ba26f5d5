"""``plugin.toml``: the registry entry of one plugin, and the source of truth.

A plugin is registered exactly when ``~/.hecate/{name}/plugin.toml`` exists
and parses here. People open these files by hand, so the format is plain
TOML with a comment saying what the file is, and keys nobody defined here
(a user's notes) are kept across rewrites.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

from hecated.core.errors import InvalidFieldError, UnsafePathError
from hecated.core.files import Sync, atomic_write, read_regular
from hecated.core.layout import MANIFEST_NAME
from hecated.protocol import InvalidUnitName, check_unit_name

SCHEMA_VERSION = 1
MAX_FILE_BYTES = 64 * 1024
VERSION_MAX = 64
DESCRIPTION_MAX = 1024
# Tables and arrays nested deeper than this in a hand edit are refused: tomllib reads far
# deeper than tomli_w can write back (a RecursionError), and no entry needs it.
NESTING_MAX = 32
# The keys of the plugin's unit (issue 20): which systemd user unit runs it, whether a
# forwarded request may start it, and after how many idle seconds hecated stops it.
UNIT_KEYS = frozenset({"unit", "start_on_demand", "idle_stop_after"})
KNOWN_KEYS = frozenset(
    {"schema", "name", "version", "description", "registered_at", "updated_at", *UNIT_KEYS}
)
# Control characters but tab and newline: refused in free text.
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
_LINE_RE = re.compile(r"\(at line (\d+)(?:, column (\d+))?\)")
# What every _FINE_TIME_RE match holds: a cheap test before the full search.
_SEVEN_DIGITS = re.compile(r"\.\d{7}")
# A TOML date-time with more fractional digits than Python keeps (tomllib cuts to µs).
_FINE_TIME_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}\.\d{7,}(?:[Zz]|[+-]\d{2}:\d{2})?"
)


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    description: str = ""
    registered_at: datetime | None = None
    updated_at: datetime | None = None
    schema: int = SCHEMA_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Hand-written times finer than a microsecond: (as Python would write them, as written),
    # so a rewrite puts back what the person wrote instead of a value cut to microseconds.
    fine_times: tuple[tuple[str, str], ...] = ()
    # The systemd user unit that runs the plugin; None: the convention, ``{name}.service``.
    unit: str | None = None
    # False: a forwarded request to the stopped plugin is refused, not answered by a start.
    start_on_demand: bool = True
    # Seconds with no forwarded request and no open stream before hecated stops the unit;
    # None: never (the default). As written (an int stays an int across a rewrite).
    idle_stop_after: int | float | None = None

    def updated(self, version: str, description: str, now: datetime) -> Manifest:
        return replace(self, version=version, description=description, updated_at=now)


@dataclass(frozen=True)
class ManifestError(Exception):
    """Why a ``plugin.toml`` on disk is not a valid registry entry.

    Carries the file and, for TOML syntax errors, the line, so a person who
    broke the file by hand is told where to look.
    """

    path: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message}"


def check_text(field_name: str, value: object, limit: int) -> str:
    """Validate a free-text field the same way for the API and for hand edits."""
    if not isinstance(value, str):
        raise InvalidFieldError(f"{field_name!r} must be a string")
    if len(value) > limit:
        raise InvalidFieldError(f"{field_name!r} is {len(value)} characters; at most {limit}")
    if _CONTROL_RE.search(value):  # one C-level pass: per-character Python was 20% of a scan
        raise InvalidFieldError(f"{field_name!r} contains control characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # JSON may carry lone surrogates ("\\ud800"); no file can hold them as UTF-8.
        raise InvalidFieldError(f"{field_name!r} is not valid Unicode text") from None
    return value


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _timestamp(value: object, key: str, path: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise ManifestError(path, f"{key!r} must be a TOML date-time")


def header_of(name: str) -> str:
    """The comment ``dumps`` heads every file with: what it is, in words."""
    return (
        f"# Registry entry of the Hecate plugin daemon {name!r}, kept by hecated.\n"
        "# This file IS the registration: hand edits are picked up by the daemon, and\n"
        "# deleting it deregisters the plugin. The data directories beside it are kept.\n"
        "\n"
    )


def _toml(text: str, name: str) -> dict[str, Any]:
    """``tomllib.loads(text)``, our own header skipped when the file starts with it.

    Four lines of comments are a sixth of tomllib's time on a file ``dumps`` wrote
    (10,000 of them at a start), and comments change no document. A file that
    does not parse is parsed again whole: its error says the line as written.
    """
    import tomllib  # on the first file parsed: a start whose manifests are all cached has none

    header = header_of(name)
    if text.startswith(header):
        try:
            return tomllib.loads(text[len(header) :])
        except tomllib.TOMLDecodeError:
            pass
    return tomllib.loads(text)


def _load(data: bytes, path: str, name: str) -> tuple[str, dict[str, Any]]:
    """The file's text and its TOML document; ``ManifestError`` with the line when not TOML."""
    import tomllib

    try:
        text = data.decode("utf-8")
        return text, _toml(text, name)
    except UnicodeDecodeError as exc:
        raise ManifestError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        why = str(exc)
        match = _LINE_RE.search(why)
        if match:
            line: int | None = int(match.group(1))
        elif "end of document" in why:
            line = max(1, data.count(b"\n") + (0 if data.endswith(b"\n") else 1))
        else:
            line = None
        msg = _LINE_RE.sub("", why).replace("(at end of document)", "at end of file").strip()
        raise ManifestError(path, f"invalid TOML: {msg}", line) from None
    except RecursionError:
        raise ManifestError(path, "invalid TOML: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer past Python's digit limit
        raise ManifestError(path, f"invalid TOML: {exc}") from None


def parse(data: bytes, expected_name: str, path: str) -> Manifest:
    """Parse and validate a ``plugin.toml``; raise ``ManifestError`` saying why not."""
    text, doc = _load(data, path, expected_name)
    schema = doc.get("schema", SCHEMA_VERSION)
    if not isinstance(schema, int) or isinstance(schema, bool):
        raise ManifestError(path, "'schema' must be an integer")
    if schema > SCHEMA_VERSION:
        raise ManifestError(
            path, f"schema {schema} is newer than this hecated understands ({SCHEMA_VERSION})"
        )
    name = doc.get("name")
    if name is None:
        raise ManifestError(path, "missing required key 'name'")
    if name != expected_name:
        raise ManifestError(
            path, f"'name' is {name!r} but the file lives in the namespace {expected_name!r}"
        )
    if "version" not in doc:
        raise ManifestError(path, "missing required key 'version'")
    try:
        version = check_text("version", doc["version"], VERSION_MAX)
        description = check_text("description", doc.get("description", ""), DESCRIPTION_MAX)
    except InvalidFieldError as exc:
        raise ManifestError(path, exc.message) from None
    unit_keys = _unit_keys(doc, path)
    extra = {k: v for k, v in doc.items() if k not in KNOWN_KEYS}
    if extra and _too_deep(extra):
        raise ManifestError(
            path,
            f"tables or arrays nested more than {NESTING_MAX} levels deep; hecated could not "
            "write them back",
        )
    return Manifest(
        name=name,
        version=version,
        description=description,
        registered_at=_timestamp(doc.get("registered_at"), "registered_at", path),
        updated_at=_timestamp(doc.get("updated_at"), "updated_at", path),
        schema=schema,
        extra=extra,
        fine_times=_fine_times(text) if _SEVEN_DIGITS.search(text) else (),
        **unit_keys,
    )


def check_unit(value: object) -> str:
    """A ``unit`` value, the same rule for the API and for hand edits (``InvalidFieldError``)."""
    try:
        return check_unit_name(value)
    except InvalidUnitName as exc:
        raise InvalidFieldError(f"'unit' is not a valid unit: {exc}") from None


def check_idle_stop_after(value: object) -> int | float:
    """Seconds, a finite number >= 0 (TOML's ``inf``/``nan`` and booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidFieldError("'idle_stop_after' must be a number of seconds")
    if not math.isfinite(value) or value < 0:
        raise InvalidFieldError(f"'idle_stop_after' must be a finite number >= 0, not {value}")
    return value


def _unit_keys(doc: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The unit keys present in ``doc``, validated; ``ManifestError`` saying which is wrong."""
    found: dict[str, Any] = {}
    try:
        if "unit" in doc:
            found["unit"] = check_unit(doc["unit"])
        if "start_on_demand" in doc:
            if not isinstance(doc["start_on_demand"], bool):
                raise InvalidFieldError("'start_on_demand' must be true or false")
            found["start_on_demand"] = doc["start_on_demand"]
        if "idle_stop_after" in doc:
            found["idle_stop_after"] = check_idle_stop_after(doc["idle_stop_after"])
    except InvalidFieldError as exc:
        raise ManifestError(path, exc.message) from None
    return found


def _fine_times(text: str) -> tuple[tuple[str, str], ...]:
    """Each date-time literal with sub-microsecond digits: how ``dumps`` would render
    the value tomllib read from it, and the literal itself."""
    import tomllib

    found = []
    for match in _FINE_TIME_RE.finditer(text):
        literal = match.group()
        try:
            value = tomllib.loads(f"v = {literal}")["v"]
        except (tomllib.TOMLDecodeError, ValueError):
            continue
        found.append((str(value), literal))
    return tuple(found)


def _too_deep(doc: dict[str, Any]) -> bool:
    """More than ``NESTING_MAX`` levels of tables and arrays (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > NESTING_MAX:
            return True
        children = value.values() if isinstance(value, dict) else value
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


def dumps(manifest: Manifest) -> bytes:
    """Render the file people will read: a header that says what it is, then TOML."""
    import tomli_w  # only writers pay for it; reads and cold start do not

    doc: dict[str, Any] = {
        "schema": manifest.schema,
        "name": manifest.name,
        "version": manifest.version,
        "description": manifest.description,
    }
    if manifest.registered_at is not None:
        doc["registered_at"] = manifest.registered_at
    if manifest.updated_at is not None:
        doc["updated_at"] = manifest.updated_at
    if manifest.unit is not None:
        doc["unit"] = manifest.unit
    if not manifest.start_on_demand:
        doc["start_on_demand"] = False
    if manifest.idle_stop_after is not None:
        doc["idle_stop_after"] = manifest.idle_stop_after
    doc.update({k: v for k, v in manifest.extra.items() if k not in KNOWN_KEYS})
    header = header_of(manifest.name)
    body = tomli_w.dumps(doc)
    for rendered, literal in manifest.fine_times:  # a value (never a string) as written
        body = re.sub(rf"(?<![^\s=\[,]){re.escape(rendered)}(?=,|\]|\}}|\s*\n)", literal, body)
    return header.encode() + body.encode()


def read(ns_fd: int, name: str, path: str) -> Manifest | None:
    """The manifest in the namespace open at ``ns_fd``; ``None`` when there is none."""
    try:
        data = read_regular(ns_fd, MANIFEST_NAME, MAX_FILE_BYTES)
    except UnsafePathError as exc:
        raise ManifestError(path, exc.message) from None
    except PermissionError:
        raise ManifestError(path, "permission denied") from None
    if data is None:
        return None
    return parse(data, name, path)


def write(ns_fd: int, manifest: Manifest, sync: Sync = os.fsync) -> None:
    atomic_write(ns_fd, MANIFEST_NAME, dumps(manifest), sync=sync)

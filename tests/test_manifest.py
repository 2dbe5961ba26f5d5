"""manifest.py: the plugin.toml schema, its parse errors, and atomic writes."""

from __future__ import annotations

import os
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hecated.core import manifest
from hecated.core.files import opened
from hecated.core.manifest import Manifest, ManifestError

T0 = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)


def _dir_fd(path: Path) -> int:
    path.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def test_round_trip_keeps_every_field_and_extra_keys(home: Path) -> None:
    m = Manifest("hecate-traderd", "0.1.0", "Trading daemon", T0, T0, extra={"owner": "ops"})
    with opened(_dir_fd(home / "ns")) as fd:
        manifest.write(fd, m)
        back = manifest.read(fd, "hecate-traderd", "plugin.toml")
    assert back == m


def test_written_file_is_plain_commented_toml(home: Path) -> None:
    m = Manifest("hecate-traderd", "0.1.0", 'quote " and \\ and\nnewline', T0, T0)
    with opened(_dir_fd(home / "ns")) as fd:
        manifest.write(fd, m)
    text = (home / "ns" / "plugin.toml").read_text()
    assert text.startswith("# Registry entry of the Hecate plugin daemon 'hecate-traderd'")
    doc = tomllib.loads(text)
    assert doc["schema"] == 1
    assert doc["name"] == "hecate-traderd"
    assert doc["description"] == m.description
    assert doc["registered_at"] == T0
    assert oct((home / "ns" / "plugin.toml").stat().st_mode & 0o777) == oct(0o600)


def test_atomic_write_leaves_no_temp_file(home: Path) -> None:
    with opened(_dir_fd(home / "ns")) as fd:
        for i in range(5):
            manifest.write(fd, Manifest("p", str(i)))
    assert sorted(os.listdir(home / "ns")) == ["plugin.toml"]


def test_minimal_hand_written_file_is_valid() -> None:
    m = manifest.parse(b'name = "p"\nversion = "1"\n', "p", "p/plugin.toml")
    assert (m.name, m.version, m.description, m.registered_at) == ("p", "1", "", None)


@pytest.mark.parametrize(
    ("data", "fragment", "line"),
    [
        (b'name = "p"\nversion = \n', "invalid TOML", 2),
        (b'version = "1"\n', "missing required key 'name'", None),
        (b'name = "p"\n', "missing required key 'version'", None),
        (b'name = "other"\nversion = "1"\n', "namespace 'p'", None),
        (b'name = "p"\nversion = 1\n', "'version' must be a string", None),
        (b'name = "p"\nversion = "1"\nschema = 99\n', "newer", None),
        (b'name = "p"\nversion = "1"\nregistered_at = "yesterday"\n', "date-time", None),
        (b"\xff\xfe", "not UTF-8", None),
        (b"a = " + b"[" * 20000, "nested too deeply", None),
        (b"a = " + b"9" * 5000, "invalid TOML", None),
    ],
)
def test_invalid_files_say_why(data: bytes, fragment: str, line: int | None) -> None:
    with pytest.raises(ManifestError) as info:
        manifest.parse(data, "p", "p/plugin.toml")
    assert fragment in info.value.message
    assert info.value.line == line
    assert str(info.value).startswith("p/plugin.toml")


INVALID = [
    b'name = "p"\nversion = \n',
    b'version = "1"\n',
    b'name = "p"\nversion = "1"\nregistered_at = "yesterday"\n',
    b'name = "p"\nversion = "1"\n# a comment with a \x01 control character\n',
    b"a = " + b"[" * 20000,
    b"a = " + b"9" * 5000,
]


@pytest.mark.parametrize("data", INVALID)
def test_a_file_under_our_own_header_fails_as_under_any_other(data: bytes) -> None:
    """The parse skips the header ``dumps`` writes (a sixth of tomllib's time): a file
    under it must say what it would say under a header that is not skipped, line and
    all (the same number of lines: another plugin's name)."""
    errors = []
    for name in ("p", "q"):
        with pytest.raises(ManifestError) as info:
            manifest.parse(manifest.header_of(name).encode() + data, "p", "p/plugin.toml")
        errors.append((info.value.message, info.value.line))
    assert errors[0] == errors[1]


def test_a_file_under_our_own_header_reads_as_without_it() -> None:
    data = b'name = "p"\nversion = "1"\nregistered_at = 2026-11-25T08:00:00Z\n'
    headed = manifest.parse(manifest.header_of("p").encode() + data, "p", "p/plugin.toml")
    assert headed == manifest.parse(data, "p", "p/plugin.toml")


def test_symlinked_manifest_is_not_followed(home: Path) -> None:
    secret = home / "secret"
    secret.write_text('name = "p"\nversion = "1"\n')
    ns = home / "ns"
    ns.mkdir()
    (ns / "plugin.toml").symlink_to(secret)
    with opened(_dir_fd(ns)) as fd, pytest.raises(ManifestError, match="symlink"):
        manifest.read(fd, "p", "ns/plugin.toml")


def test_fifo_manifest_does_not_hang(home: Path) -> None:
    ns = home / "ns"
    ns.mkdir()
    os.mkfifo(ns / "plugin.toml")
    with opened(_dir_fd(ns)) as fd, pytest.raises(ManifestError, match="not a regular file"):
        manifest.read(fd, "p", "ns/plugin.toml")


def test_oversized_manifest_is_refused(home: Path) -> None:
    ns = home / "ns"
    ns.mkdir()
    (ns / "plugin.toml").write_bytes(b"#" * (manifest.MAX_FILE_BYTES + 1))
    with opened(_dir_fd(ns)) as fd, pytest.raises(ManifestError, match="bytes"):
        manifest.read(fd, "p", "ns/plugin.toml")


# -- the unit keys (issue 20) ----------------------------------------------------------------


def test_the_unit_keys_are_read_and_written_back() -> None:
    data = (
        b'name = "p"\nversion = "1"\nunit = "hecate-p@x.service"\n'
        b"start_on_demand = false\nidle_stop_after = 300\n"
    )
    m = manifest.parse(data, "p", "p/plugin.toml")
    assert (m.unit, m.start_on_demand, m.idle_stop_after) == ("hecate-p@x.service", False, 300)
    assert m.extra == {}
    doc = tomllib.loads(manifest.dumps(m).decode())
    assert (doc["unit"], doc["start_on_demand"], doc["idle_stop_after"]) == (
        "hecate-p@x.service",
        False,
        300,
    )
    assert manifest.parse(manifest.dumps(m), "p", "p/plugin.toml") == m


def test_the_unit_keys_default_to_the_convention_and_are_not_written() -> None:
    m = manifest.parse(b'name = "p"\nversion = "1"\n', "p", "p/plugin.toml")
    assert (m.unit, m.start_on_demand, m.idle_stop_after) == (None, True, None)
    doc = tomllib.loads(manifest.dumps(m).decode())
    assert not {"unit", "start_on_demand", "idle_stop_after"} & set(doc)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ('unit = "../evil.service"', "'unit' is not a valid unit: a unit name, not a path"),
        ('unit = "p.socket"', "'unit' is not a valid unit: only .service units"),
        ('unit = "p@.service"', "a template needs an instance"),
        ('unit = "p q.service"', "not a unit name"),
        ('unit = ""', "a unit name is a non-empty string"),
        ("unit = 7", "a unit name is a non-empty string"),
        ('unit = "a\\\\x2d.service"', "not a path or an escape"),
        ('start_on_demand = "yes"', "'start_on_demand' must be true or false"),
        ("start_on_demand = 1", "'start_on_demand' must be true or false"),
        ("idle_stop_after = -1", "'idle_stop_after' must be a finite number >= 0"),
        ("idle_stop_after = inf", "'idle_stop_after' must be a finite number >= 0"),
        ("idle_stop_after = nan", "'idle_stop_after' must be a finite number >= 0"),
        ("idle_stop_after = true", "'idle_stop_after' must be a number of seconds"),
        ('idle_stop_after = "5m"', "'idle_stop_after' must be a number of seconds"),
    ],
)
def test_bad_unit_keys_make_the_file_invalid_with_the_reason(line: str, fragment: str) -> None:
    data = f'name = "p"\nversion = "1"\n{line}\n'.encode()
    with pytest.raises(ManifestError) as info:
        manifest.parse(data, "p", "p/plugin.toml")
    assert fragment in info.value.message
    assert str(info.value).startswith("p/plugin.toml: ")

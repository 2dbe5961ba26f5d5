"""The plain-TOML reader (issue 22: tomllib was a third of a 10,000-plugin start) must
read every document it accepts exactly as tomllib does, and hand everything else to
tomllib. Held together by a differential test over hecated's own files and random
lines built from the pieces TOML gets wrong most easily."""

from __future__ import annotations

import random
import tomllib
from datetime import UTC, datetime

import pytest

from hecated.core.manifest import Manifest, dumps, parse, plain_toml


def same(a: object, b: object) -> bool:
    """Equal, of the same types, with the same time zones (== ignores both)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if type(a) is not type(b):
        return False
    if isinstance(a, datetime):
        return a == b and a.utcoffset() == b.utcoffset()  # type: ignore[union-attr]
    return a == b


def check(text: str) -> bool:
    """Whether the plain reader took ``text``; asserts it agrees with tomllib."""
    doc = plain_toml(text)
    try:
        expected = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError):
        assert doc is None, f"accepted what tomllib refuses: {text!r}"
        return False
    assert doc is None or same(doc, expected), f"{text!r}: {doc!r} != {expected!r}"
    return doc is not None


def test_hecated_own_files_are_read_plainly() -> None:
    when = datetime(2026, 12, 4, 20, 0, 1, tzinfo=UTC)
    manifest = Manifest(
        name="hecate-traderd",
        version="1.2.3",
        description="trades\tthings, é and 😀",
        registered_at=when,
        updated_at=when,
        unit="hecate-traderd.service",
        start_on_demand=False,
        idle_stop_after=30,
    )
    data = dumps(manifest)
    assert check(data.decode())
    assert parse(data, "hecate-traderd", "plugin.toml") == manifest


KEYS = ["a", "name", "x-y_1", "1", "a.b", '"q"', "a b", "é", ""]
VALUES = [
    '"plain"',
    '"with \\" quote"',
    '"back\\\\slash"',
    '"tab\there"',
    '"ctl\x01"',
    '"del\x7f"',
    '"é 😀"',
    "'literal'",
    '"""multi"""',
    '"open',
    "0",
    "-0",
    "+1",
    "007",
    "123456789012345678",
    "1234567890123456789012",
    "1_000",
    "0x1f",
    "1.5",
    "inf",
    "true",
    "false",
    "True",
    "2026-12-04 20:00:01+00:00",
    "2026-12-04T20:00:01Z",
    "2026-12-04t20:00:01z",
    "2026-12-04 20:00:01-05:30",
    "2026-12-04 20:00:01+24:00",
    "2026-13-04 20:00:01Z",
    "2026-02-30 20:00:01Z",
    "2026-12-04 20:00:60Z",
    "2026-12-04 20:00:01.5Z",
    "2026-12-04 20:00:01",
    "2026-12-04",
    "[1, 2]",
    "{a = 1}",
]
OTHER_LINES = ["", "# comment", "#", "# ctl \x02", "  ", "[table]", "a = 1 # trailing", "\t# x"]


def test_random_documents_agree_with_tomllib() -> None:
    rng = random.Random(22)
    taken = 0
    for _ in range(4000):
        lines = []
        for _ in range(rng.randint(1, 5)):
            if rng.random() < 0.25:
                lines.append(rng.choice(OTHER_LINES))
            else:
                sep = rng.choice([" = ", " = ", "=", " =  "])
                lines.append(f"{rng.choice(KEYS)}{sep}{rng.choice(VALUES)}")
        end = rng.choice(["\n", "", "\r\n"])
        taken += check(end.join(lines) + end)
    assert taken > 100  # the plain shape was met often enough to be tested


@pytest.mark.parametrize(
    "text",
    ["a = 1\na = 2\n", 'a = "x"\r\n', 'a = "\\u00e9"\n', "a = 2026-12-04 20:00:01\n"],
)
def test_what_it_does_not_read_goes_to_tomllib(text: str) -> None:
    assert plain_toml(text) is None

"""One section of docs/benchmarks.md replaced in place: how a bench that measures one table
(``bench/run.py --only … --splice``, the unit benches' ``--out``) updates the page without
rewriting the tables it did not measure, so every table stays the output of a script."""

from __future__ import annotations

import sys
from pathlib import Path


def number(heading: str) -> str:
    """``"## 7. Forwarding …"`` -> ``"## 7."``: a section is known by its number, so a
    retitled section replaces the old one instead of being appended beside it."""
    head = heading.split("\n", 1)[0]
    first = head.split(" ", 2)
    return " ".join(first[:2]) if len(first) > 1 and first[1].rstrip(".").isdigit() else head


def replace(doc: str, heading: str, text: str) -> str:
    """``doc`` with the section that starts with ``heading`` (up to the next ``## ``) replaced
    by ``text``; appended when there is none."""
    start = doc.find(heading)
    if start < 0 or (start > 0 and doc[start - 1] != "\n"):
        return doc.rstrip("\n") + "\n\n" + text
    end = doc.find("\n## ", start + len(heading))
    return doc[:start] + text + ("" if end < 0 else "\n" + doc[end + 1 :])


def write(out: str, heading: str, text: str) -> None:
    """``text`` in place of its section in the file ``out``; ``-`` prints it only."""
    if out == "-":
        print(text)
        return
    path = Path(out)
    doc = path.read_text() if path.exists() else ""
    path.write_text(replace(doc, number(heading), text))
    print(f"wrote {out}", file=sys.stderr)

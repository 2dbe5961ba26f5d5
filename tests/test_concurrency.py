"""32 clients over the real socket, 1,000 registrations and deregistrations of overlapping names.

Phase one: every client registers the same 20 names at once, so each name is
raced by many clients: exactly one of them may get the 201. Phase two: a storm
of registrations and deregistrations of those names and 20 more. Per name the
answers must add up (every 201 made an entry from nothing, every deregistration
200 removed one), and afterwards the index, the files and a fresh scan agree.
"""

from __future__ import annotations

import os
import random
import threading
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from conftest import Daemon, http_request

from hecated.core import manifest
from hecated.core.index import Index
from hecated.core.layout import MANIFEST_NAME, SUBDIRS, Layout

CLIENTS = 32
OPERATIONS = int(os.environ.get("HECATE_CONCURRENCY_OPS", "1000"))
RACED = [f"race-{i}" for i in range(20)]
BUSY = [0]  # 503 answers retried, for the figures
MIXED = RACED + [f"mix-{i}" for i in range(20)]


def _request(daemon: Daemon, method: str, path: str, body: object = None) -> int:
    """One request; a 503 ``busy`` is the documented back-pressure, so retry it."""
    for _ in range(200):
        status, _, answer = http_request(daemon.socket, method, path, body)
        if status != 503:
            return status
        BUSY[0] += 1
        assert answer["code"] == "busy"
        threading.Event().wait(0.01)
    raise AssertionError(f"{method} {path}: busy for too long")


def _run_clients(target, count: int) -> None:
    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]


def register(daemon: Daemon, name: str, version: str) -> int:
    return _request(daemon, "POST", "/api/plugins/register", {"name": name, "version": version})


@pytest.mark.slow
def test_overlapping_registrations_from_32_clients(daemon: Daemon) -> None:
    # 12 each (384 registrations) of the 1,000; each client races a sample of the 20 names.
    per_phase_one = min(len(RACED), max(1, OPERATIONS * 2 // 5 // CLIENTS))
    remaining = max(CLIENTS, OPERATIONS - per_phase_one * CLIENTS)
    lock = threading.Lock()
    first: dict[str, Counter] = defaultdict(Counter)

    def phase_one(i: int) -> None:
        rng = random.Random(i)
        for name in rng.sample(RACED, per_phase_one):
            status = register(daemon, name, f"1.{i}")
            with lock:
                first[name][status] += 1

    _run_clients(phase_one, CLIENTS)
    for name in RACED:
        assert first[name][201] == 1, (name, first[name])
        assert set(first[name]) <= {200, 201}, (name, first[name])

    # Phase two: registrations and deregistrations of overlapping names, at once.
    acks: dict[str, Counter] = defaultdict(Counter)

    def phase_two(i: int) -> None:
        rng = random.Random(1000 + i)
        for _ in range(remaining // CLIENTS + (i < remaining % CLIENTS)):
            name = rng.choice(MIXED)
            if rng.random() < 0.65:
                status = register(daemon, name, f"2.{i}")
                assert status in (200, 201), status
                kind = "created" if status == 201 else "updated"
            else:
                status = _request(daemon, "DELETE", f"/api/plugins/{name}")
                assert status in (200, 404), status
                kind = "removed" if status == 200 else "absent"
            with lock:
                acks[name][kind] += 1

    _run_clients(phase_two, CLIENTS)
    total = sum(sum(c.values()) for c in first.values()) + sum(
        sum(c.values()) for c in acks.values()
    )

    # Every plugin.toml parses, and what is on disk is what the answers add up to.
    layout = Layout.at(daemon.root)
    on_disk = set()
    for name in MIXED:
        path = layout.manifest_path(name)
        if path.exists():
            manifest.parse(path.read_bytes(), name, str(path))
            on_disk.add(name)
        before = 1 if name in RACED else 0
        after = before + acks[name]["created"] - acks[name]["removed"]
        assert after == (1 if name in on_disk else 0), (name, acks[name], name in on_disk)
        if acks[name]["removed"] == 0 and (name in RACED or acks[name]["created"]):
            assert name in on_disk, f"acknowledged registration of {name} was lost"
        if name in on_disk:
            assert not _stray_files(path.parent), name
        if name in RACED or acks[name]["created"]:
            # Deregistration never deletes data: the namespace stays, complete.
            assert all((path.parent / sub).is_dir() for sub in SUBDIRS), name

    # The index the daemon serves equals a fresh scan of the tree.
    status, _, listed = daemon.request("GET", "/api/plugins")
    assert status == 200
    fresh = Index(layout)
    fresh.scan()
    assert sorted(p["name"] for p in listed) == sorted(on_disk)
    assert {p["name"]: p["version"] for p in listed} == {
        p.name: p.entry.manifest.version for p in fresh.list() if p.entry.manifest
    }
    assert all(p["status"] != "invalid" for p in listed)
    creates = sum(c["created"] for c in acks.values())
    removes = sum(c["removed"] for c in acks.values())
    print(
        f"\nFIGURES concurrency: clients={CLIENTS} requests={total} "
        f"phase1_201={sum(c[201] for c in first.values())}/{len(RACED)} names "
        f"phase2 created={creates} removed={removes} final={len(on_disk)} "
        f"busy_retries={BUSY[0]} lost=0 corrupt=0"
    )
    assert total >= OPERATIONS


def _stray_files(ns: Path) -> list[str]:
    expected = {MANIFEST_NAME, "sqlite", "reckon-db", "sockets", "run", "connectors"}
    return [e for e in os.listdir(ns) if e not in expected]

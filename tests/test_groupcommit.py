"""Group commit: concurrent registrations share syncs, and none answers before its sync."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest
from conftest import wait_for

from hecated.core import manifest
from hecated.core.files import GroupCommit, atomic_write
from hecated.core.index import Index
from hecated.core.layout import Layout


class RecordingSync:
    """A real ``os.fsync`` of the leader's fd that records when each round began and ended."""

    def __init__(
        self,
        delay: float = 0.005,
        fail_rounds: frozenset[int] = frozenset(),
        hold_round: int | None = None,
    ) -> None:
        self.delay = delay
        self.fail_rounds = fail_rounds
        self.hold_round = hold_round  # this round waits inside the sync until released
        self.held = threading.Event()
        self.release = threading.Event()
        self.clock = 0
        self.lock = threading.Lock()
        self.rounds: list[tuple[int, int]] = []  # (began, ended) on self.tick's clock

    def tick(self) -> int:
        with self.lock:
            self.clock += 1
            return self.clock

    def __call__(self, fd: int) -> None:
        began = self.tick()
        number = len(self.rounds) + 1  # rounds run one at a time
        os.fsync(fd)
        if number == self.hold_round:
            self.held.set()
            assert self.release.wait(30), "the test never released the held round"
        else:
            time.sleep(self.delay)  # a slow disk: writers pile up behind the leader
        self.rounds.append((began, self.tick()))
        if number in self.fail_rounds:
            raise OSError(errno.EIO, "injected write-back error")


def test_every_caller_returns_after_a_sync_that_began_after_its_call(tmp_path: Path) -> None:
    recorder = RecordingSync()
    commit = GroupCommit(syncfs=recorder)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    calls: list[tuple[int, int]] = []  # (called, returned)
    lock = threading.Lock()

    def writer() -> None:
        for _ in range(20):
            called = recorder.tick()
            commit.sync(fd)
            returned = recorder.tick()
            with lock:
                calls.append((called, returned))

    threads = [threading.Thread(target=writer) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        os.close(fd)
    assert len(calls) == 160
    for called, returned in calls:
        assert any(called < began and ended < returned for began, ended in recorder.rounds), (
            called,
            returned,
        )
    # Shared: far fewer rounds than calls (8 writers behind each 5 ms round).
    assert len(recorder.rounds) < len(calls) / 2, len(recorder.rounds)
    assert commit.rounds == len(recorder.rounds)


def waiting_for(commit: GroupCommit, fd: int, target: int) -> int:
    """How many callers wait for round ``target`` of ``fd``'s filesystem (white-box)."""
    group = commit._groups.get(os.fstat(fd).st_dev)
    if group is None:
        return 0
    with group._cond:
        return group._waiting.get(target, 0)


def test_a_failed_sync_fails_every_caller_it_covered_and_only_those(tmp_path: Path) -> None:
    recorder = RecordingSync(delay=0, fail_rounds=frozenset({2}), hold_round=1)
    commit = GroupCommit(syncfs=recorder)
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    results: list[str] = []
    lock = threading.Lock()

    def writer() -> None:
        try:
            commit.sync(fd)
            outcome = "ok"
        except OSError as exc:
            outcome = errno.errorcode[exc.errno]
        with lock:
            results.append(outcome)

    try:
        first = threading.Thread(target=writer)
        first.start()
        assert recorder.held.wait(10)  # it leads round 1, held inside the sync
        followers = [threading.Thread(target=writer) for _ in range(5)]
        for t in followers:
            t.start()  # all wait behind round 1, covered by round 2 (which fails)
        wait_for(lambda: waiting_for(commit, fd, 2) == 5)
        recorder.release.set()
        for t in [first, *followers]:
            t.join(10)
        commit.sync(fd)  # round 3 succeeds: the error went to its own callers only
    finally:
        os.close(fd)
    assert sorted(results) == ["EIO"] * 5 + ["ok"], results
    assert len(recorder.rounds) == 3


def test_grouped_atomic_writes_land_whole(tmp_path: Path) -> None:
    """The real thing: libc's syncfs, 16 threads writing 20 files each through one commit."""
    commit = GroupCommit()
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            for n in range(20):
                atomic_write(fd, f"f-{i}-{n}", f"{i}:{n}\n".encode() * 50, sync=commit.sync)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        os.close(fd)
    assert not errors, errors[:3]
    for i in range(16):
        for n in range(20):
            assert (tmp_path / f"f-{i}-{n}").read_bytes() == f"{i}:{n}\n".encode() * 50
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert 0 < commit.rounds <= 16 * 20 * 2


def test_concurrent_registrations_through_the_grouped_path(tmp_path: Path) -> None:
    layout = Layout.at(tmp_path / ".hecate")
    layout.ensure_layout()
    registry = Index(layout)
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            for n in range(10):
                registry.register(f"g-{i}-{n % 5}", f"{n}.0", "grouped")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    assert registry.commit.rounds > 0
    assert len(registry) == 40
    for i in range(8):
        for k in range(5):
            name = f"g-{i}-{k}"
            path = layout.manifest_path(name)
            on_disk = manifest.parse(path.read_bytes(), name, str(path))
            assert on_disk.version == f"{5 + k}.0"  # the last write of each name won
            assert registry.get(name).entry.manifest == on_disk


@pytest.mark.parametrize("release", ["5.4.0-150-generic", "4.19.0"])
def test_kernels_whose_syncfs_hides_errors_fall_back_to_fsync(
    release: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hecated.core import files

    monkeypatch.setattr(os, "uname", lambda: os.uname_result(("Linux", "h", release, "", "")))
    assert files._load_syncfs() is None

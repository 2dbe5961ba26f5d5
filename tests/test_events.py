"""GET /api/events: every change of the registry as a server-sent event (issue 21).

The core half (core/events.py) is held in process over a real index on real files;
the stream over a real hecated, read the way hecate-web's desktop app reads it
(events_support.WebClient).
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import Daemon, wait_for
from events_support import WebClient

from hecated.core.events import Events
from hecated.core.index import Index
from hecated.core.installed import Installed
from hecated.core.layout import Layout
from hecated.core.status import SocketFinding, SocketKind, UnitFinding

# -- the core: one event per change, named by what changed -----------------------------------


@pytest.fixture
def index(home: Path) -> Index:
    layout = Layout.at(home / ".hecate")
    layout.ensure_layout()
    index = Index(layout)
    index.scan()
    return index


ANSWERING = SocketFinding(SocketKind.ANSWERING)
ABSENT = SocketFinding(SocketKind.ABSENT)


def test_each_change_is_one_event_named_by_what_changed(index: Index) -> None:
    events = Events(index)
    start = events.latest
    index.register("hecate-a", "1.0", "")
    index.register("hecate-a", "2.0", "")
    index.set_finding("hecate-a", ANSWERING)  # stopped -> running
    unit = UnitFinding("hecate-a.service", "loaded", "active", "running")
    index.set_unit("hecate-a", unit)  # active decides nothing: still running, a unit block now
    desired = Installed("/g/apps/hecate-a.service", "service", "hecate-a.service", True, None)
    index.set_installed("hecate-a", desired)
    index.set_installed("hecate-a", None)
    index.deregister("hecate-a")  # its socket still answers: listed, discovered
    index.set_finding("hecate-a", ABSENT)  # and now gone
    index.set_finding("hecate-b", ANSWERING)  # a socket with no plugin.toml
    got = events.after(start, 100)
    assert got is not None
    assert [e.kind for e in got] == [
        "registered",
        "updated",
        "status",
        "unit",
        "installed",
        "removed",
        "deregistered",
        "gone",
        "discovered",
    ]
    assert [e.seq for e in got] == list(range(start + 1, index.seq + 1))  # no gap, no extra
    assert [e.listed for e in got] == [True] * 7 + [False, True]
    assert got[3].plugin.live.unit == unit and got[4].plugin.installed == desired


def test_an_installed_name_comes_and_goes_with_its_file(index: Index) -> None:
    """Not registered, not answering: the file alone lists it, and its removal drops it."""
    events = Events(index)
    start = events.latest
    desired = Installed("/g/apps/hecate-c.container", "container", "hecate-c.service", False, None)
    index.set_installed("hecate-c", desired)
    index.set_installed("hecate-c", None)
    got = events.after(start, 10)
    assert got is not None
    assert [(e.kind, e.listed) for e in got] == [("installed", True), ("removed", False)]


def test_a_reader_the_ring_left_behind_is_told_so(index: Index) -> None:
    events = Events(index, size=4)
    start = events.latest
    for i in range(10):
        index.register(f"hecate-r{i}", "1.0", "")
    latest = events.latest
    assert latest == start + 10
    assert events.after(start, 100) is None  # six of them are gone from the ring
    kept = events.after(latest - 4, 100)
    assert kept is not None and [e.seq for e in kept] == list(range(latest - 3, latest + 1))
    assert events.after(latest, 100) == []
    assert events.after(latest + 5, 100) is None  # a number from another run


def test_changes_of_many_names_are_recorded_in_seq_order(index: Index) -> None:
    """Writers of different names run in parallel; the record has every seq, in order
    (listeners of the change feed are told under the name's lock only, in any order)."""
    events = Events(index)
    start = events.latest

    def burst(t: int) -> None:
        for i in range(25):
            index.register(f"hecate-t{t}-{i}", "1.0", "")

    threads = [threading.Thread(target=burst, args=(t,)) for t in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch often: between a numbering and its telling
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    got = events.after(start, 1000)
    assert got is not None
    assert [e.seq for e in got] == list(range(start + 1, start + 201))


def test_a_waiting_reader_is_woken_by_a_change_and_by_wake(index: Index) -> None:
    events = Events(index)
    seq, stop = events.latest, threading.Event()
    woke: list[bool] = []
    reader = threading.Thread(target=lambda: woke.append(events.wait(seq, 60, stop)))
    reader.start()
    index.register("hecate-w", "1.0", "")
    reader.join(30)
    assert woke == [True]
    seq = events.latest
    reader = threading.Thread(target=lambda: woke.append(events.wait(seq, 60, stop)))
    reader.start()
    stop.set()
    events.wake()
    reader.join(30)
    assert not reader.is_alive() and woke == [True, False]


# -- the stream, as hecate-web reads it ------------------------------------------------------


def open_stream(daemon: Daemon, **kw) -> WebClient:
    client = WebClient(daemon.socket, **kw)
    assert client.status == 200, (client.status, client.body())
    assert client.next_comment() == "following"  # the head is out: changes from now are seen
    return client


def test_hecate_web_reads_the_stream_and_drops_what_it_does_not_know(daemon: Daemon) -> None:
    """hecate-web's request, its chunked reader and its line parser: every event it
    dispatches has a type and one JSON line; none of ours is in its table, so it logs
    each as "unknown event type" and reads on (the stream stays open: no 3 s retry)."""
    with open_stream(daemon) as web:
        assert web.chunked and web.headers["content-type"].startswith("text/event-stream")
        daemon.register("hecate-traderd", "0.1.0", "Trading")
        got = web.next()
        assert (got.type, got.tauri) == ("registered", None)
        entry = got.json()
        assert entry["name"] == "hecate-traderd" and entry["version"] == "0.1.0"
        _, _, listed = daemon.request("GET", "/api/plugins")
        assert entry == listed[0]  # the list's own entry, byte for byte the same shape
        daemon.request("DELETE", "/api/plugins/hecate-traderd")
        got = web.next()
        assert (got.type, got.tauri) == ("deregistered", None)
        assert got.json()["listed"] is False
        assert got.id is not None and not web.ended


def test_an_events_client_sees_registration_update_status_and_deregistration(
    daemon: Daemon,
) -> None:
    wait_for(lambda: "watching" in daemon.log())  # a pid file is seen by the watcher
    with open_stream(daemon) as web:
        daemon.register("hecate-a", "1.0")
        daemon.register("hecate-a", "2.0")
        kinds = [web.next() for _ in range(2)]
        run = daemon.root / "hecate-a" / "run"
        (run / "daemon.pid").write_text(f"{os.getpid()}\n")  # a live process: starting
        kinds.append(web.next())
        daemon.request("DELETE", "/api/plugins/hecate-a")
        kinds.append(web.next())
    assert [k.type for k in kinds] == ["registered", "updated", "status", "deregistered"]
    assert kinds[2].json()["status"] == "starting"
    ids = [k.seq for k in kinds]
    assert ids == list(range(ids[0], ids[0] + 4))


def test_last_event_id_resumes_without_losing_one(daemon: Daemon) -> None:
    with open_stream(daemon) as web:
        for i in range(3):
            daemon.register(f"hecate-r{i}")
        first = [web.next() for _ in range(2)]
    for i in range(3, 6):  # while nobody listens
        daemon.register(f"hecate-r{i}")
    last = first[-1].id
    with WebClient(daemon.socket, headers={"Last-Event-ID": str(last)}) as web:
        rest = [web.next() for _ in range(4)]
    names = [e.json()["name"] for e in first + rest]
    assert names == [f"hecate-r{i}" for i in range(6)]
    ids = [e.seq for e in first + rest]
    assert ids == list(range(ids[0], ids[0] + 6))
    assert len({e.run for e in first + rest}) == 1
    # curl's way, the same resumption.
    with WebClient(daemon.socket, path=f"/api/events?since={first[0].id}") as web:
        again = [web.next() for _ in range(5)]
    assert [e.id for e in again] == [e.id for e in first[1:] + rest]
    # and with the list's plain seq, as curl users have it from GET /api/plugins
    with WebClient(daemon.socket, path=f"/api/events?since={first[0].seq}") as web:
        again = [web.next() for _ in range(5)]
    assert [e.id for e in again] == [e.id for e in first[1:] + rest]


@pytest.fixture
def small_ring(home: Path) -> Iterator[Daemon]:
    d = Daemon(home, env={"HECATE_EVENTS_BACKLOG": "4"}).start()
    yield d
    d.stop()


def test_a_resume_the_ring_cannot_serve_gets_one_resync_then_the_events(
    small_ring: Daemon,
) -> None:
    daemon = small_ring
    with open_stream(daemon) as web:
        daemon.register("hecate-s0")
        run = web.next().run
    for i in range(1, 10):
        daemon.register(f"hecate-s{i}")
    # too old for a ring of 4; ahead of this run; another run's; a plain number (an id
    # of a daemon from before ids named their run): each a resync
    for i, last_id in enumerate((f"{run}-1", f"{run}-999", "zzz-5", "5")):
        with WebClient(daemon.socket, headers={"Last-Event-ID": last_id}) as web:
            resync = web.next()
            assert resync.type == "resync"
            body = resync.json()
            assert resync.seq == body["seq"]
            _, _, listed = daemon.request("GET", "/api/plugins")
            assert body["plugins"] == listed and len(listed) >= 10
            daemon.register(f"hecate-after{i}")
            after = web.next()
            assert (after.type, after.seq) == ("registered", body["seq"] + 1)


def test_a_last_event_id_of_the_run_before_gets_a_resync_not_a_partial_tail(home: Path) -> None:
    """The review's reproduction: run 1 registers p1..p3 and the client saw the 3rd's id;
    run 2 (socket activation and the idle stop make restarts routine) finds p1 gone and
    registers p4, p5. Its numbers start again, so the old id names nothing of run 2:
    resuming with it must give the whole list (a resync), never run 2's later events as
    if they followed run 1's (p5 alone: p1's end and p4 lost)."""
    first = Daemon(home).start()
    try:
        with open_stream(first) as web:
            for name in ("hecate-p1", "hecate-p2", "hecate-p3"):
                first.register(name)
            seen = [web.next() for _ in range(3)]
    finally:
        first.stop()
    old = seen[-1].id or ""
    shutil.rmtree(first.root / "hecate-p1")
    second = Daemon(home).start()
    try:
        for name in ("hecate-p4", "hecate-p5"):
            second.register(name)
        for headers, path in (
            ({"Last-Event-ID": old}, "/api/events"),
            ({}, f"/api/events?since={old}"),
        ):
            with WebClient(second.socket, path=path, headers=headers) as web:
                got = web.next()
                assert got.type == "resync", (got.type, got.data)
                names = [p["name"] for p in got.json()["plugins"]]
                assert names == ["hecate-p2", "hecate-p3", "hecate-p4", "hecate-p5"]
                assert got.id != old
        # this run's own ids resume as before: the list's seq, then the next change
        with WebClient(second.socket, headers={"Last-Event-ID": got.id or ""}) as web:
            second.register("hecate-p6")
            assert web.next().json()["name"] == "hecate-p6"
    finally:
        second.stop()


@pytest.mark.parametrize(
    ("path", "last_id"),
    [
        ("/api/events", "yesterday"),
        ("/api/events", "9" * 5000),  # past Python's int-string limit: a 500 once
        (f"/api/events?since={'9' * 5000}", None),
        ("/api/events?since=-1", None),
    ],
    ids=["words", "huge-id", "huge-since", "negative-since"],
)
def test_a_bad_last_event_id_is_a_400_envelope(
    daemon: Daemon, path: str, last_id: str | None
) -> None:
    headers = {} if last_id is None else {"Last-Event-ID": last_id}
    with WebClient(daemon.socket, path=path, headers=headers) as web:
        assert web.status == 400
        body = web.body()
    assert b'"code":"invalid_parameter"' in body and b'"ok":false' in body


@pytest.fixture
def burst_daemon(memory_home: Path) -> Iterator[Daemon]:
    d = Daemon(memory_home, env={"HECATE_EVENTS_BACKLOG": "64"}).start()
    yield d
    d.stop()


def test_a_burst_of_1000_registrations_leaves_no_reader_with_unbounded_memory(
    burst_daemon: Daemon,
) -> None:
    """A reader that keeps up gets every event; one that reads nothing during the
    burst is not queued for: once the socket's buffer is full the stream waits, the
    ring (64 here) moves on, and when it reads again it gets a resync (the list), then
    the events that follow. Either way its view ends equal to the list."""
    daemon = burst_daemon
    description = "x" * 200  # about 500 bytes an event: more than the socket buffers hold
    idle = open_stream(daemon)
    keen = open_stream(daemon)
    mirror: dict[str, dict] = {}
    kept_up = threading.Thread(target=follow, args=(keen, mirror, 1000))
    kept_up.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            codes = list(
                pool.map(
                    lambda i: daemon.register(f"hecate-b{i:04}", "1.0", description)[0], range(1000)
                )
            )
        assert codes == [201] * 1000
        kept_up.join(120)
        assert not kept_up.is_alive() and len(mirror) == 1000
        seen: list[str] = []
        while True:  # the idle reader: what its socket held, then a resync
            got = idle.next()
            seen.append(got.type)
            if got.type == "resync":
                break
        assert len(seen) - 1 < 1000  # it was never given the whole burst one by one
        resync = got.json()
        assert len(resync["plugins"]) == 1000
        daemon.register("hecate-last")
        after = idle.next()
        assert (after.type, after.seq) == ("registered", resync["seq"] + 1)
    finally:
        idle.close()
        keen.close()


def follow(web: WebClient, mirror: dict[str, dict], until: int) -> None:
    """Keep a mirror of the list from the events (a resync replaces it) until it has
    ``until`` names; checks that ids come without a gap between resyncs."""
    last: int | None = None
    while len(mirror) < until:
        got = web.next()
        seq = got.seq
        assert last is None or got.type == "resync" or seq == last + 1, (last, seq)
        last = seq
        if got.type == "resync":
            mirror.clear()
            mirror.update({p["name"]: p for p in got.json()["plugins"]})
        else:
            mirror[got.json()["name"]] = got.json()


@pytest.fixture
def quick_heartbeats(home: Path) -> Iterator[Daemon]:
    d = Daemon(home, env={"HECATE_EVENTS_HEARTBEAT": "0.05", "HECATE_EVENTS_CLIENTS": "2"})
    d.start()
    yield d
    d.stop()


def test_heartbeats_arrive_on_a_quiet_stream(quick_heartbeats: Daemon) -> None:
    with open_stream(quick_heartbeats) as web:
        assert web.next_comment() == "heartbeat"
        assert web.next_comment() == "heartbeat"


def test_the_cap_answers_503_busy_and_a_client_going_away_frees_its_place(
    home: Path,
) -> None:
    """Two streams at most here. The place is given back when the client hangs up,
    not at the next heartbeat (15 s by default, longer than this test waits)."""
    daemon = Daemon(home, env={"HECATE_EVENTS_CLIENTS": "2"}).start()
    try:
        first, second = open_stream(daemon), open_stream(daemon)
        with WebClient(daemon.socket) as third:
            assert third.status == 503
            assert third.headers.get("retry-after")
            body = third.body()
        assert b'"code":"busy"' in body and b'"ok":false' in body
        first.close()
        wait_for(lambda: reopened(daemon), timeout=10)
        second.close()
    finally:
        daemon.stop()


def reopened(daemon: Daemon) -> bool:
    with WebClient(daemon.socket) as web:
        return web.status == 200


def test_head_gets_the_head_only(daemon: Daemon) -> None:
    status, headers, _ = daemon.request("HEAD", "/api/events")
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")


# -- the SDK ----------------------------------------------------------------------------------


def test_the_sdks_events_resume_and_resync(small_ring: Daemon) -> None:
    from hecated.client import HecateClient

    daemon = small_ring
    client = HecateClient(daemon.socket)
    daemon.register("hecate-sdk", "1.0")
    events = client.events(since=0)  # the one change so far: the ring (4) still has it
    first = next(events)
    events.close()
    assert (first.kind, first.plugin.name if first.plugin else None) == ("registered", "hecate-sdk")
    for i in range(6):
        daemon.register(f"hecate-more{i}")
    events = client.events(since=first.seq)  # six behind, the ring keeps four: a resync
    resync = next(events)
    assert resync.kind == "resync" and resync.plugin is None and resync.plugins is not None
    assert [p.name for p in resync.plugins][:1] == ["hecate-more0"]
    daemon.request("DELETE", "/api/plugins/hecate-sdk")
    gone = next(events)
    assert (gone.kind, gone.seq, gone.listed) == ("deregistered", resync.seq + 1, False)
    events.close()
    daemon.register("hecate-sdk2")
    events = client.events(since=gone.id)  # the event's id (RUN-SEQ): Last-Event-ID
    again = next(events)
    events.close()
    assert (again.kind, again.seq, again.id.rpartition("-")[0]) == (
        "registered",
        gone.seq + 1,
        gone.id.rpartition("-")[0],
    )
    events = client.events(since=f"zz-{again.seq}")  # another run's id: a resync
    assert next(events).kind == "resync"
    events.close()


def test_a_stopping_daemon_ends_the_stream_so_hecate_web_reconnects(home: Path) -> None:
    """hecate-web reconnects 3 s after its stream ends: a stopping hecated must end it
    (not leave it open for the grace period), and the next run serves it again."""
    daemon = Daemon(home).start()
    web = open_stream(daemon)
    try:
        assert daemon.stop() == 0
        with pytest.raises(EOFError):
            web.next()
    finally:
        web.close()
    again = Daemon(home).start()
    try:
        with open_stream(again):
            pass
    finally:
        again.stop()

"""The start scan (``Index.scan(at_start=True)``): the later names read and parsed by a
forked child while the earlier ones are read and published. Its list must be byte for
byte the list a warm rescan and a one-by-one scan give, on a tree with valid, invalid
and odd files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hecated.adapters.liveness import Prober
from hecated.core import startscan
from hecated.core.index import Index
from hecated.core.layout import Layout
from hecated.core.store import Store
from hecated.http.views import Views
from hecated.protocol import PluginStatus

STAMP = "2026-01-02T03:04:05Z"


def _valid(name: str, i: int) -> str:
    return (
        f'schema = 1\nname = "{name}"\nversion = "1.{i}.0"\n'
        f'description = "plugin {i}, ünïcode ✓"\nregistered_at = {STAMP}\nupdated_at = {STAMP}\n'
    )


def _tree(root: Path) -> dict[str, str]:
    """A tree of every kind of namespace the scan meets; what each should read as."""
    root.mkdir(mode=0o700)
    want: dict[str, str] = {}

    def ns(name: str) -> Path:
        path = root / name
        for sub in ("run", "sockets"):
            (path / sub).mkdir(parents=True, mode=0o700)
        return path

    for i in range(120):  # enough for both processes to parse some
        name = f"ok-{i:03d}"
        (ns(name) / "plugin.toml").write_text(_valid(name, i))
        want[name] = "valid"
    for p in ("", "zz-"):  # odd names among the parent's and among the child's
        _odd(root, ns, p, want)
    (root / "Not A Name").mkdir()  # not a plugin name: never read
    return want


def _odd(root: Path, ns, p: str, want: dict[str, str]) -> None:
    """Invalid and odd namespaces, their names prefixed with ``p``."""
    bad = {
        "bad-syntax": f'name = "{p}bad-syntax"\nversion = "1"\nbroken = [\n',
        "bad-line": f'name = "{p}bad-line"\n\nversion = = "1"\n',
        "bad-name": 'name = "other"\nversion = "1"\n',
        "bad-noversion": f'name = "{p}bad-noversion"\n',
        "bad-schema": f'schema = 9\nname = "{p}bad-schema"\nversion = "1"\n',
        "bad-control": f'name = "{p}bad-control"\nversion = "1\\u0007"\n',
        "bad-date": f'name = "{p}bad-date"\nversion = "1"\nupdated_at = "yesterday"\n',
    }
    for name, text in bad.items():
        (ns(p + name) / "plugin.toml").write_text(text)
        want[p + name] = "invalid"
    (ns(p + "bad-utf8") / "plugin.toml").write_bytes(
        f'name = "{p}bad-utf8"\nversion = "'.encode() + b'\xff"\n'
    )
    (ns(p + "bad-big") / "plugin.toml").write_text(
        f'name = "{p}bad-big"\nversion = "1"\n#' + "x" * 70000
    )
    (ns(p + "bad-dir") / "plugin.toml").mkdir()
    os.mkfifo(ns(p + "bad-fifo") / "plugin.toml")
    os.symlink(root / "ok-000" / "plugin.toml", ns(p + "bad-link") / "plugin.toml")
    os.symlink(root / "ok-001", root / f"{p}bad-nslink")
    for name in ("bad-utf8", "bad-big", "bad-dir", "bad-fifo", "bad-link", "bad-nslink"):
        want[p + name] = "invalid"
    # Valid with oddities: keys a person added (never cached), a date without a time.
    (ns(p + "odd-extra") / "plugin.toml").write_text(
        f'name = "{p}odd-extra"\nversion = "2"\nnotes = "mine"\n[owner]\nwho = "me"\n'
    )
    (ns(p + "odd-date") / "plugin.toml").write_text(
        f'name = "{p}odd-date"\nversion = "2"\nregistered_at = 2026-01-02\n'
    )
    ns(p + "odd-empty")  # a namespace without plugin.toml: not listed
    (ns(p + "odd-running") / "plugin.toml").write_text(_valid(p + "odd-running", 7))
    (root / f"{p}odd-running" / "run" / "daemon.pid").write_text(f"{os.getpid()}\n")
    (root / f"{p}odd-garbage-pid" / "run").mkdir(parents=True)
    (root / f"{p}odd-garbage-pid" / "plugin.toml").write_text(_valid(p + "odd-garbage-pid", 8))
    (root / f"{p}odd-garbage-pid" / "run" / "daemon.pid").write_text("not a pid\n")
    for name in ("odd-extra", "odd-date", "odd-running", "odd-garbage-pid"):
        want[p + name] = "valid"


def _index(layout: Layout) -> Index:
    # settle_ns=0: a broken file is never "still being written", whatever the timing.
    # No prober: the run dirs are read by the index itself; no socket is probed.
    return Index(layout, store=Store(layout, settle_ns=0))


@pytest.fixture
def layout(home: Path) -> Iterator[Layout]:
    layout = Layout.at(home / ".hecate")
    WANT.clear()
    WANT.update(_tree(layout.root))
    layout.ensure_layout()
    yield layout


WANT: dict[str, str] = {}  # what each name of the fixture's tree should read as


@pytest.fixture
def forks() -> None:
    """A child for any number of files (the scripts set PARALLEL_MIN), where a second
    CPU is there to run it."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: the start scan parses in one process")


# The cold start in a fresh interpreter, as the daemon starts: a fork is taken only while
# no other thread runs, and a test process has threads left by earlier tests. MODE says
# what goes wrong with the child: nothing, no fork, a killed child, a malformed answer.
COLD_START = """
import json, os, sys
from hecated.core import startscan
from hecated.core.index import Index
from hecated.core.layout import Layout
from hecated.core.store import Store
from hecated.http.views import Views

root, mode = sys.argv[1], sys.argv[2]
startscan.PARALLEL_MIN = 2  # a child for any number of files
real_start, real_main = startscan.ReadChild.start, startscan._child_main
seen = {"started": 0, "killed": 0}

def start(store, names, root_):
    seen["started"] += 1
    if mode == "no-fork":
        return None  # fork refused (a seccomp filter, no memory)
    child = real_start(store, names, root_)
    if mode == "killed":
        os.kill(child.pid, 9)
        seen["killed"] += 1
    return child

def malformed(store, names, root_, wfd, board):  # garbage of the right length, for all
    import pickle
    low = len(names)
    while (new := board.child_claims(low)) < low:  # claim all the parent has not taken
        low = new
    out = [("not", "a", "ChildRead", 4), 7, None] * len(names)
    os.write(wfd, pickle.dumps((low, out[: len(names) - low])))
    os._exit(0)

startscan.ReadChild.start = staticmethod(start)
if mode == "malformed":
    startscan._child_main = malformed
layout = Layout.at(root)
index = Index(layout, store=Store(layout, settle_ns=0))
if mode == "head-start":  # as hecated_main does: the child forked before the daemon's imports
    index.head_start()
    seen["before_scan"] = seen["started"]
    import hecated.daemon  # the imports the child's reading overlaps
index.scan(at_start=True)
out = {"child": index.store.parsed_in_child, "first": Views(index).encoded_list()[1].decode()}
out.update(seen)
out["lines"] = [index.get(p + "bad-line").entry.error.line for p in ("", "zz-")]
index.scan()  # the warm rescan: cached manifests, the rest parsed again
out["warm"] = Views(index).encoded_list()[1].decode()
try:
    os.waitpid(-1, os.WNOHANG)  # any child at all, running or a zombie
    out["children_left"] = True
except ChildProcessError:
    out["children_left"] = False
index.close()
sys.stdout.write(json.dumps(out))
"""


def _cold_start(layout: Layout, mode: str) -> dict:
    ran = subprocess.run(
        [sys.executable, "-c", COLD_START, str(layout.root), mode],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    return json.loads(ran.stdout)


def _serial_list(layout: Layout) -> bytes:
    serial = _index(layout)  # its own store: no cache, every file parsed here
    try:
        serial.scan()
        assert serial.store.parsed_in_child == 0
        return Views(serial).encoded_list()[1]
    finally:
        serial.close()


def test_the_start_list_is_the_list_of_a_serial_scan_and_of_a_warm_rescan(
    layout: Layout, forks: None
) -> None:
    cold = _cold_start(layout, "as-is")
    assert cold["child"] > 0  # the second process really parsed some
    assert cold["lines"] == [3, 3]  # the line a serial parse reports, either side
    assert not cold["children_left"]  # the child was reaped
    first = cold["first"].encode()
    assert _serial_list(layout) == first
    assert cold["warm"].encode() == first

    listed = {row["name"]: row for row in json.loads(first)}
    assert set(listed) == set(WANT)
    for name, want in WANT.items():
        assert (listed[name]["status"] == PluginStatus.INVALID) == (want == "invalid"), name
    for p in ("", "zz-"):
        assert listed[f"{p}odd-running"]["status"] == PluginStatus.STARTING  # a live pid, no socket


def test_a_head_start_begun_before_the_imports_lists_what_a_serial_scan_lists(
    layout: Layout, forks: None
) -> None:
    """``Index.head_start`` (the command line, before ``hecated.daemon`` is imported)
    forks the child there; the scan goes on with it, and lists what a serial scan does."""
    cold = _cold_start(layout, "head-start")
    assert cold["before_scan"] == cold["started"] == 1  # forked before the scan, once
    assert cold["child"] > 0
    assert not cold["children_left"]
    assert cold["first"].encode() == _serial_list(layout)
    assert cold["warm"] == cold["first"]


def test_a_head_start_dropped_before_its_scan_leaves_no_child_nor_fd(
    layout: Layout, forks: None
) -> None:
    """A start that fails before its scan (another daemon holds the lock): the command
    line drops the head start, and its child and root fd go with it."""
    script = """
import json, os, sys
from hecated.core import startscan
from hecated.core.index import Index
from hecated.core.layout import Layout
startscan.PARALLEL_MIN = 2
fds = set(os.listdir("/proc/self/fd"))
index = Index(Layout.at(sys.argv[1]))
index.head_start()
started = index._head is not None and index._head.child is not None
index.drop_head_start()
index.drop_head_start()  # twice is once
try:
    os.waitpid(-1, os.WNOHANG)
    left = True
except ChildProcessError:
    left = False
out = {"started": started, "left": left, "fds": sorted(set(os.listdir("/proc/self/fd")) - fds)}
sys.stdout.write(json.dumps(out))
"""
    ran = subprocess.run(
        [sys.executable, "-c", script, str(layout.root)], capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert json.loads(ran.stdout) == {"started": True, "left": False, "fds": []}


@pytest.mark.parametrize("mode", ["no-fork", "killed", "malformed"])
def test_a_child_that_fails_in_any_way_costs_only_time(
    layout: Layout, forks: None, mode: str
) -> None:
    """No fork (a seccomp filter, no memory), a child killed before it answers, or an
    answer that makes no sense: the parent reads the child's part itself, and the list
    is the serial scan's, byte for byte."""
    cold = _cold_start(layout, mode)
    assert cold["started"] == 1  # the scan did split: the child's part was really at stake
    assert cold["killed"] == (mode == "killed")
    assert cold["child"] == 0
    assert not cold["children_left"]
    assert cold["first"].encode() == _serial_list(layout)


def test_a_scan_that_stops_half_way_reaps_its_child(layout: Layout, forks: None) -> None:
    """An exception in the caller mid-scan (here: the generator dropped after one name)
    closes the pipe and reaps the child: no zombie, no fd left open."""
    script = """
import json, os, sys
from hecated.core import startscan
from hecated.core.layout import Layout
from hecated.core.store import Store
startscan.PARALLEL_MIN = 2
layout = Layout.at(sys.argv[1])
store = Store(layout)
fds = set(os.listdir("/proc/self/fd"))
with store.root() as root:
    scan = startscan.read_each(store, root.names(), root)
    next(scan)
    scan.close()
try:
    os.waitpid(-1, os.WNOHANG)  # any child at all, running or a zombie
    left = True
except ChildProcessError:
    left = False
sys.stdout.write(json.dumps({"left": left, "fds": sorted(set(os.listdir("/proc/self/fd")) - fds)}))
"""
    ran = subprocess.run(
        [sys.executable, "-c", script, str(layout.root)], capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert json.loads(ran.stdout) == {"left": False, "fds": []}


def test_held_probes_wait_for_release_and_look_only_where_a_socket_file_is(
    layout: Layout,
) -> None:
    """The start scan asks for a socket probe per name; none runs before the first answer,
    and after it only the names with a socket file are probed (a look where there is none
    finds what "not looked at yet" says: at 10,000 plugins, seconds of CPU for nothing)."""
    import socket

    from conftest import wait_for

    index = Index(layout)
    prober = Prober(index)
    prober.hold()
    index.scan(at_start=True)
    assert prober.probes == 0 and prober._threads == []  # queued, no thread made yet
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a file nothing accepts on
    bound.bind(str(layout.namespace("ok-007") / "sockets" / "api.sock"))
    try:
        prober.release()
        wait_for(lambda: index.finding("ok-007") is not None)
        wait_for(lambda: not prober._queue and not prober._busy and not prober._queued)
        assert index.finding("ok-007").socket_file
        assert [n for n in index.list() if index.finding(n.name) is not None] == [
            index.get("ok-007")
        ]
    finally:
        bound.close()
        prober.close()
        index.close()


def test_a_real_daemon_parses_in_a_child_and_lists_what_a_rescan_lists(home: Path) -> None:
    """End to end: a daemon starting on a tree past PARALLEL_MIN forks its child (the
    debug line says how many files it parsed), and its first list is the list of a
    rescan of the same tree afterwards, byte for byte."""
    import re

    from conftest import Daemon, UnixHTTPConnection

    def body() -> bytes:
        conn = UnixHTTPConnection(daemon.socket)
        try:
            conn.request("GET", "/api/plugins")
            resp = conn.getresponse()
            assert resp.status == 200
            return resp.read()
        finally:
            conn.close()

    root = home / ".hecate"
    want = _tree(root)
    for i in range(startscan.PARALLEL_MIN):
        name = f"many-{i:04d}"
        (root / name).mkdir()
        (root / name / "plugin.toml").write_text(_valid(name, i))
    daemon = Daemon(home, ["--log-level", "debug"]).start()
    try:
        first = body()
        found = re.search(r"(\d+) files parsed by a child process", daemon.log())
        if len(os.sched_getaffinity(0)) >= 2:
            assert found is not None and int(found.group(1)) > 0, daemon.log()[-2000:]
        assert daemon.request("POST", "/api/rescan")[0] == 200
        assert body() == first
        listed = {p["name"] for p in json.loads(first)}
        assert listed == set(want) | {f"many-{i:04d}" for i in range(startscan.PARALLEL_MIN)}
    finally:
        daemon.stop()


def test_the_board_lets_parent_and_child_meet_without_a_gap() -> None:
    """The child claims ``BATCH`` names at a time from the end, never below the parent's
    next name; the parent takes names from the start while they are below the child's
    claim. Whatever the interleaving, every name is read by one of them (a claim the
    parent had looked past is read by both; the parent keeps its own)."""
    batch, count = startscan.BATCH, 3 * startscan.BATCH + 5
    board = startscan.Board(count)
    try:
        assert board.child_claims(count) == count - batch
        taken = 0
        while board.parent_takes(taken):
            taken += 1
            if taken == 3:  # the parent is at 3: the child may not claim below it
                low = count - batch
                while (new := board.child_claims(low)) < low:
                    low = new
                assert low == 3
        assert taken == 3  # it met the child's claim, which covers everything from 3 on
        assert board.child_claims(3) == 3  # nothing left to claim
    finally:
        board.close()


def test_the_childs_claims_are_put_together_or_refused() -> None:
    """The child's answer is its claims from the end down, each pickled on its own: put
    together in order when they fit, refused (None: the parent reads it all) when not."""
    import pickle

    def claim(first: int, found: list) -> bytes:
        return pickle.dumps((first, found), pickle.HIGHEST_PROTOCOL)

    data = claim(7, ["h", "i", "j"]) + claim(4, ["e", "f", "g"])
    assert startscan._claims(data, 10) == (4, ["e", "f", "g", "h", "i", "j"])
    assert startscan._claims(b"", 10) == (10, [])
    assert startscan._claims(claim(7, ["h", "i"]), 10) is None  # a name missing
    assert startscan._claims(claim(7, ["h", "i", "j"]) + claim(2, ["x"]), 10) is None
    # A claim that fits by length but starts below the first name, or one claiming nothing
    # (a child's bug): refused, never names shifted by one.
    assert startscan._claims(claim(-1, list("abcdefghijk")), 10) is None
    assert startscan._claims(claim(10, []), 10) is None

"""The change feed: X-Hecate-Seq, long polls on GET /api/plugins, POST /api/rescan."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
from conftest import Daemon, wait_for
from watch_support import manifest_text, write_rename_over

from hecated.core.errors import BusyError
from hecated.core.index import Index
from hecated.core.layout import Layout
from hecated.http.app import HecateApp


def seq_of(headers: dict) -> int:
    return int(headers["X-Hecate-Seq"])


class Poll(threading.Thread):
    """A long poll in the background; ``result`` is (status, headers, body)."""

    def __init__(self, daemon: Daemon, query: str) -> None:
        super().__init__(daemon=True)
        self.d, self.query, self.result = daemon, query, None

    def run(self) -> None:
        self.result = self.d.request("GET", f"/api/plugins?{self.query}")


def test_list_carries_seq_and_health_says_it(daemon: Daemon) -> None:
    status, headers, body = daemon.request("GET", "/api/plugins")
    assert status == 200 and body == []
    first = seq_of(headers)
    daemon.register("alpha")
    status, headers, body = daemon.request("GET", "/api/plugins")
    assert [p["name"] for p in body] == ["alpha"]
    assert seq_of(headers) > first
    assert daemon.request("GET", "/health")[2]["seq"] == seq_of(headers)


def one_waits_one_is_busy(daemon: Daemon, since: int) -> Poll:
    """Two long polls on a daemon that lets one client wait: returns the one waiting.

    The other must be refused with 503 ``busy``, and that refusal is the proof
    (from outside, without sleeping) that the first is held as a waiter.
    """
    polls = [Poll(daemon, f"since={since}&wait=60") for _ in range(2)]
    for poll in polls:
        poll.start()
    done = wait_for(lambda: [p for p in polls if not p.is_alive()])
    assert len(done) == 1, [p.result for p in polls]
    status, _headers, body = done[0].result
    assert status == 503, (status, body)
    assert body["code"] == "busy"
    (waiting,) = [p for p in polls if p is not done[0]]
    assert waiting.is_alive()  # held: nothing changed
    return waiting


def test_long_poll_answers_on_a_change(home: Path) -> None:
    d = Daemon(home, ["--workers", "2"]).start()  # at most one waiter
    try:
        _, headers, _ = d.request("GET", "/api/plugins")
        seq = seq_of(headers)
        poll = one_waits_one_is_busy(d, seq)
        d.register("alpha")
        poll.join(10)
        assert not poll.is_alive()
        status, headers, body = poll.result
        assert status == 200
        assert seq_of(headers) > seq
        assert [p["name"] for p in body] == ["alpha"]
    finally:
        stop_daemon(d)


def test_long_poll_sees_hand_edits(daemon: Daemon) -> None:
    wait_for(lambda: "watching" in daemon.log())
    _, headers, _ = daemon.request("GET", "/api/plugins")
    poll = Poll(daemon, f"since={seq_of(headers)}&wait=30")
    poll.start()
    ns = daemon.root / "alpha"
    ns.mkdir()
    write_rename_over(ns / "plugin.toml", manifest_text("alpha", "1.5"))
    poll.join(10)
    assert not poll.is_alive()
    assert [p["version"] for p in poll.result[2]] == ["1.5"]


def test_long_poll_times_out_with_the_same_seq(daemon: Daemon) -> None:
    _, headers, _ = daemon.request("GET", "/api/plugins")
    status, headers2, body = daemon.request("GET", f"/api/plugins?since={seq_of(headers)}&wait=0.2")
    assert status == 200 and body == []
    assert seq_of(headers2) == seq_of(headers)


def test_since_from_a_previous_run_answers_at_once(daemon: Daemon) -> None:
    start = time.monotonic()
    status, headers, _ = daemon.request("GET", "/api/plugins?since=999999&wait=30")
    assert status == 200
    assert seq_of(headers) < 999999
    assert time.monotonic() - start < 10  # not held for the full wait


@pytest.mark.parametrize(
    "query",
    ["since=x", "since=-1", "since=1.5", "wait=abc", "wait=-2", "wait=nan", "wait=inf"],
)
def test_bad_parameters_are_a_json_400(daemon: Daemon, query: str) -> None:
    status, _, body = daemon.request("GET", f"/api/plugins?{query}")
    assert status == 400
    assert body["code"] == "invalid_parameter"


def stop_daemon(d: Daemon) -> None:
    if d.proc and d.proc.poll() is None:
        d.stop()


def test_rescan(daemon: Daemon) -> None:
    daemon.register("alpha")
    status, _, body = daemon.request("POST", "/api/rescan")
    assert status == 200
    assert body == {"ok": True, "plugins": 1}
    assert daemon.request("GET", "/api/rescan")[0] == 405


@pytest.mark.slow
def test_waiters_are_bounded_and_shutdown_does_not_wait_for_them(home: Path) -> None:
    d = Daemon(home, ["--workers", "2"]).start()  # at most one waiter
    try:
        _, headers, _ = d.request("GET", "/api/plugins")
        first = one_waits_one_is_busy(d, seq_of(headers))
        # A third client is refused as well while the first waits.
        status, _, body = d.request("GET", f"/api/plugins?since={seq_of(headers)}&wait=60")
        assert status == 503
        assert body["code"] == "busy"
        started = time.monotonic()
        assert d.stop(timeout=20) == 0
        first.join(10)
        assert not first.is_alive()
        assert time.monotonic() - started < 20
    finally:
        stop_daemon(d)


def test_registry_wait_is_released_by_close(home: Path) -> None:
    reg = Index(Layout.at(home / ".hecate"), max_waiters=1)
    results: list = []
    waiter = threading.Thread(target=lambda: results.append(reg.wait(reg.seq, 60)))
    waiter.start()
    wait_for(lambda: reg._waiters == 1)
    with pytest.raises(BusyError):
        reg.wait(reg.seq, 60)
    reg.close()
    waiter.join(10)
    assert not waiter.is_alive()
    assert results == [0]


def test_list_is_encoded_once_per_seq(home: Path) -> None:
    reg = Index(Layout.at(home / ".hecate"))
    app = HecateApp(reg)
    try:
        first = app._encoded_list()
        assert app._encoded_list()[1] is first[1]  # nothing changed: the same bytes
        reg.register("alpha", "1.0", "")
        second = app._encoded_list()
        assert second[0] > first[0] and b'"alpha"' in second[1]
    finally:
        reg.close()


def test_sighup_rescans_and_keeps_serving(daemon: Daemon) -> None:
    """Only a rescan pass (SIGHUP, POST /api/rescan) logs "rescanned the tree (pass N)"
    (the watcher's own start-up read of the tree says something else), so the count
    moves because of the signal."""
    wait_for(lambda: "watching" in daemon.log())
    daemon.register("alpha")
    assert daemon.log().count("rescanned the tree (pass ") == 0
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "rescanned the tree (pass 1): 1 plugin(s)" in daemon.log())
    assert daemon.log().count("rescanned the tree (pass ") == 1
    assert daemon.request("GET", "/health")[0] == 200

"""Liveness from the plugin's own socket, manifests and discovery (issue 12, points 3-5, 7).

Every test runs a real hecated and a real test plugin (tests/plugin_support.py):
a separate process serving ``~/.hecate/NAME/sockets/api.sock`` as the real
plugins do, writing no pid file and never registering. Waits are on the
change feed (``GET /api/plugins?since=&wait=``) until an end state is reached.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, short_tempdir, wait_for
from ctl_support import ctl
from jsonschema import Draft202012Validator
from plugin_support import Plugin

from hecated.http import openapi

INTERVAL = "0.3"  # seconds between probes: short, so a kill -9 is seen soon

Listing = dict[str, dict[str, Any]]


@pytest.fixture
def live(home: Path) -> Iterator[Daemon]:
    d = Daemon(home, env={"HECATE_PROBE_INTERVAL": INTERVAL}).start()
    yield d
    if d.proc and d.proc.poll() is None:
        d.stop()


def until(daemon: Daemon, done: Callable[[Listing], Any], timeout: float = 20.0) -> Listing:
    """Follow the change feed until ``done(listing)`` holds; the listing then."""
    deadline = time.monotonic() + timeout
    since = 0
    while True:
        status, headers, body = daemon.request("GET", f"/api/plugins?since={since}&wait=2")
        assert status == 200
        listing = {p["name"]: p for p in body}
        if done(listing):
            return listing
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout} s: {listing}")
        since = int(headers["X-Hecate-Seq"])


def detail_of(daemon: Daemon, name: str) -> dict[str, Any]:
    status, _, body = daemon.request("GET", f"/api/plugins/{name}")
    assert status == 200
    return body


def conforms(schema: str, value: Any) -> None:
    """``value`` is what the OpenAPI description promises for ``schema``."""
    doc = {"$ref": f"#/components/schemas/{schema}", "components": openapi.spec()["components"]}
    Draft202012Validator(doc).validate(value)


def status_is(name: str, status: str) -> Callable[[Listing], bool]:
    return lambda listing: listing.get(name, {}).get("status") == status


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``path`` with its size and mtime: what 'no file touched' compares."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.relpath(os.path.join(dirpath, name), path)] = (st.st_size, st.st_mtime_ns)
    return out


def test_a_plugin_that_never_registered_is_discovered_running_with_its_manifest(
    live: Daemon,
) -> None:
    ns = live.root / "hecate-app-traderd"
    with Plugin(ns):
        before = tree(ns)
        listing = until(live, status_is("hecate-app-traderd", "running"))
        row = listing["hecate-app-traderd"]
        assert row["registered"] is False
        assert (row["version"], row["description"]) == ("0.3.0", "AI Stock Trading Agents")
        assert (row["display_name"], row["icon"], row["tag"]) == (
            "Trader",
            "\N{CHART WITH UPWARDS TREND}",
            "trader-studio",
        )
        assert row["ui"] is True and row["problems"] == []
        status, _, detail = live.request("GET", "/api/plugins/hecate-app-traderd")
        assert status == 200
        assert (detail["registered"], detail["manifest"], detail["status"]) == (
            False,
            None,
            "running",
        )
        conforms("PluginSummary", row)
        conforms("PluginDetail", detail)
        _, _, health = live.request("GET", "/health")
        assert health["plugins"]["hecate-app-traderd"] == "ok"
        # Its data is not purged while it answers (it writes no pid file to refuse by).
        status, _, refused = live.request("POST", "/api/plugins/hecate-app-traderd/purge")
        assert (status, refused["code"]) == (409, "plugin_running")
        assert tree(ns) == before  # a discovered entry creates, changes, deletes nothing
        assert not (ns / "plugin.toml").exists()

        listed = ctl(live.home, "list")
        assert listed.code == 0
        row_line = next(li for li in listed.out.splitlines() if li.startswith("hecate-app"))
        assert row_line.split()[:7] == [
            "hecate-app-traderd",
            "0.3.0",
            "running",
            "-",  # no user manager here: no word of a unit
            "no",
            "\N{CHART WITH UPWARDS TREND}",
            "Trader",
        ]


def test_registering_a_discovered_plugin_takes_version_and_description_from_its_manifest(
    live: Daemon,
) -> None:
    ns = live.root / "hecate-traderd"  # the older naming fits the short name too
    with Plugin(ns):
        until(live, status_is("hecate-traderd", "running"))
        status, _, body = live.request("POST", "/api/plugins/register", {"name": "hecate-traderd"})
        assert (status, body["ok"], body["base_dir"]) == (201, True, str(ns))
        _, _, detail = live.request("GET", "/api/plugins/hecate-traderd")
        assert (detail["registered"], detail["version"], detail["description"]) == (
            True,
            "0.3.0",
            "AI Stock Trading Agents",
        )
        assert detail["status"] == "running" and detail["problems"] == []
        text = (ns / "plugin.toml").read_text()
        assert '"0.3.0"' in text and "AI Stock Trading Agents" in text
        # The manifest is live data: none of it is written into plugin.toml.
        assert "trader-studio" not in text and "icon" not in text and 'Trader"' not in text


def test_kill_9_leaves_a_stale_socket_that_is_stopped_and_a_discovered_plugin_is_gone(
    live: Daemon,
) -> None:
    registered, discovered = live.root / "hecate-app-traderd", live.root / "hecate-marketd"
    plugin = Plugin(registered, discovered)
    try:
        until(live, lambda ls: {"hecate-app-traderd", "hecate-marketd"} <= set(ls))
        assert live.register("hecate-app-traderd", "0.3.0")[0] == 201
        until(live, lambda ls: ls["hecate-app-traderd"]["status"] == "running")
    finally:
        plugin.kill()
    assert (registered / "sockets" / "api.sock").exists()  # the crash's leftover
    listing = until(
        live,
        lambda ls: "hecate-marketd" not in ls and ls["hecate-app-traderd"]["status"] == "stopped",
    )
    assert listing["hecate-app-traderd"]["registered"] is True
    _, _, detail = live.request("GET", "/api/plugins/hecate-app-traderd")
    assert "nothing accepts" in detail["reason"]
    assert live.request("GET", "/api/plugins/hecate-marketd")[0] == 404
    _, _, health = live.request("GET", "/health")
    assert health["plugins"] == {"hecate-app-traderd": "stopped"}


def test_a_plugin_that_accepts_and_never_answers_is_unhealthy_and_lists_still_answer(
    live: Daemon,
) -> None:
    with Plugin(live.root / "hecate-app-muted", mode="silent"):
        listing = until(live, status_is("hecate-app-muted", "unhealthy"))
        assert listing["hecate-app-muted"]["registered"] is False
        _, _, detail = live.request("GET", "/api/plugins/hecate-app-muted")
        assert "no answer within" in detail["reason"]
        conforms("PluginDetail", detail)
        for _ in range(20):  # each probe holds a connection open for its whole timeout
            assert live.request("GET", "/api/plugins")[0] == 200
            assert live.request("GET", "/api/plugins/hecate-app-muted")[0] == 200
        _, _, health = live.request("GET", "/health")
        assert health["plugins"]["hecate-app-muted"] == "degraded"


def test_no_ui_module_is_ui_false_with_its_problem(live: Daemon) -> None:
    with Plugin(live.root / "hecate-app-plaind", mode="no-ui"):
        listing = until(live, status_is("hecate-app-plaind", "running"))
        row = listing["hecate-app-plaind"]
        assert row["ui"] is False
        assert row["problems"] == [
            "the UI will drop this plugin: GET /ui/component.js answered 404"
        ]
        out = ctl(live.home, "list").out
        assert "hecate-app-plaind: the UI will drop this plugin" in out


def test_a_manifest_name_that_fits_no_convention_is_a_problem(live: Daemon) -> None:
    with Plugin(live.root / "hecate-app-traderd", manifest_name="stocks"):
        listing = until(live, status_is("hecate-app-traderd", "running"))
        [problem] = listing["hecate-app-traderd"]["problems"]
        assert "'stocks' fits none of the conventions" in problem
        assert "hecate-app-stocksd" in problem


def test_a_symlinked_sockets_dir_pointing_outside_the_tree_is_never_probed(
    live: Daemon,
) -> None:
    outside = short_tempdir("out")
    try:
        with Plugin(outside / "hecate-evild"):
            assert live.register("hecate-evild", "1.0")[0] == 201
            ns = live.root / "hecate-evild"
            (ns / "sockets").rmdir()
            (ns / "sockets").symlink_to(outside / "hecate-evild" / "sockets")
            assert live.request("POST", "/api/rescan")[0] == 200

            def refused(_ls: Listing) -> bool:
                detail = live.request("GET", "/api/plugins/hecate-evild")[2]
                return "symlink" in (detail["reason"] or "")

            listing = until(live, refused)
            assert listing["hecate-evild"]["status"] == "stopped"
            assert listing["hecate-evild"]["display_name"] is None
            # A real sockets/ whose api.sock is a link to the outside socket: not probed either.
            (ns / "sockets").unlink()
            (ns / "sockets").mkdir(mode=0o700)
            (ns / "sockets" / "api.sock").symlink_to(outside / "hecate-evild/sockets/api.sock")
            assert live.request("POST", "/api/rescan")[0] == 200

            def not_a_socket(_ls: Listing) -> bool:
                detail = live.request("GET", "/api/plugins/hecate-evild")[2]
                return "api.sock is a symlink" in (detail["reason"] or "")

            assert until(live, not_a_socket)["hecate-evild"]["status"] == "stopped"
            # A namespace of its own, never registered, with the same trick: never listed.
            other = live.root / "hecate-sneakyd"
            other.mkdir(mode=0o700)
            (other / "sockets").symlink_to(outside / "hecate-evild" / "sockets")
            assert live.request("POST", "/api/rescan")[0] == 200
            assert "hecate-sneakyd" not in until(live, lambda ls: "hecate-evild" in ls)
    finally:
        import shutil

        shutil.rmtree(outside, ignore_errors=True)


def test_a_live_pid_whose_socket_accepts_nothing_yet_is_starting(live: Daemon) -> None:
    assert live.register("hecate-app-slowd", "1.0")[0] == 201
    ns = live.root / "hecate-app-slowd"
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(os.fspath(ns / "sockets" / "api.sock"))  # a socket file nothing accepts on
    leftover.close()
    proc = subprocess.Popen(["sleep", "60"])
    try:
        (ns / "run" / "daemon.pid").write_text(f"{proc.pid}\n")
        listing = until(live, status_is("hecate-app-slowd", "starting"))
        assert listing["hecate-app-slowd"]["registered"] is True

        def refused() -> dict | None:  # once the socket's probe has said why (it may be
            # asked after the pid file's refresh has already made the status "starting")
            detail = detail_of(live, "hecate-app-slowd")
            return detail if "nothing accepts" in (detail["reason"] or "") else None

        detail = wait_for(refused)
        assert (detail["status"], detail["pid"]) == ("starting", proc.pid)
        _, _, health = live.request("GET", "/health")
        assert health["plugins"]["hecate-app-slowd"] == "degraded"
    finally:
        proc.kill()
        proc.wait()
    until(live, status_is("hecate-app-slowd", "stopped"))  # the pidfd saw it go


def test_a_live_pid_with_no_socket_is_starting_until_the_socket_answers(live: Daemon) -> None:
    assert live.register("hecate-app-laterd", "1.0")[0] == 201
    ns = live.root / "hecate-app-laterd"
    waiting = subprocess.Popen(["sleep", "60"])  # a process that has not bound its socket yet
    try:
        (ns / "run" / "daemon.pid").write_text(f"{waiting.pid}\n")
        until(live, status_is("hecate-app-laterd", "starting"))
        _, _, detail = live.request("GET", "/api/plugins/hecate-app-laterd")
        assert detail["pid"] == waiting.pid and "does not answer yet" in detail["reason"]
        with Plugin(ns) as plugin:  # the socket answers now: running, with the pid file's pid
            (ns / "run" / "daemon.pid").write_text(f"{plugin.proc.pid}\n")
            until(live, status_is("hecate-app-laterd", "running"))
            wait_for(lambda: detail_of(live, "hecate-app-laterd")["pid"] == plugin.proc.pid)
            assert detail_of(live, "hecate-app-laterd")["status"] == "running"
    finally:
        waiting.kill()
        waiting.wait()
    until(live, status_is("hecate-app-laterd", "stopped"))


def test_with_no_periodic_probes_the_sockets_watch_finds_a_plugin_and_its_going(
    home: Path,
) -> None:
    daemon = Daemon(home, env={"HECATE_PROBE_INTERVAL": "0"}).start()
    try:
        ns = daemon.root / "hecate-app-eventd"
        (ns / "sockets").mkdir(parents=True)
        # The watches are in place once a rescan has rebuilt them: from then on the
        # socket's bind is an inotify event, the only way it can be seen here.
        assert daemon.request("POST", "/api/rescan")[0] == 200
        plugin = Plugin(ns)
        try:
            until(daemon, status_is("hecate-app-eventd", "running"))
        finally:
            plugin.kill()
        (ns / "sockets" / "api.sock").unlink()  # what a clean stop does: a removal event
        until(daemon, lambda ls: "hecate-app-eventd" not in ls)
    finally:
        daemon.stop()


def test_a_plugin_running_before_the_daemon_starts_is_discovered_at_start(home: Path) -> None:
    """Never registered, already serving when hecated starts, no periodic probes: the
    start scan asks about entries only, so the prober's first round (after the first
    answer) is what looks at every socket file present."""
    ns = home / ".hecate" / "hecate-app-earlyd"
    with Plugin(ns):
        daemon = Daemon(home, env={"HECATE_PROBE_INTERVAL": "0"}).start()
        try:
            until(daemon, status_is("hecate-app-earlyd", "running"))
        finally:
            daemon.stop()


def test_probe_interval_from_flag_environment_file_and_default(tmp_path: Path) -> None:
    from hecated.core.config import ConfigError, resolve

    conf = tmp_path / "hecated.toml"
    conf.write_text("probe_interval = 30\n")
    flags = {"config": str(conf)}
    assert resolve({}, {"XDG_CONFIG_HOME": str(tmp_path)}).probe_interval == 10.0
    assert resolve(flags, {}).probe_interval == 30.0
    assert resolve(flags, {"HECATE_PROBE_INTERVAL": "2.5"}).probe_interval == 2.5
    assert resolve({**flags, "probe_interval": 0.0}, {}).probe_interval == 0.0
    with pytest.raises(ConfigError, match="HECATE_PROBE_INTERVAL"):
        resolve({}, {"XDG_CONFIG_HOME": str(tmp_path), "HECATE_PROBE_INTERVAL": "-1"})

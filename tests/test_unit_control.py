"""Start, stop, restart and logs of plugins' units through a real hecated (issue 20).

A private ``systemd --user`` with its session bus and a journald started by hand
(systemd_support.UserManager), the example plugin (examples/hecate-exampled.py)
as a real ``.service``, and a real hecated started by the test in that manager's
XDG_RUNTIME_DIR: the routes, the SDK and hecatectl against them. Every wait is on
an answer, a stream's event or an end state, bounded; never a sleep.
"""

from __future__ import annotations

import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HECATECTL, Daemon, UnixHTTPConnection, wait_for
from systemd_support import (
    UserManager,
    add_unit,
    fresh_home,
    hecated_on,
    manager_fixtures,
    needs_journald,
    needs_user_manager,
)

from hecated.adapters.unitapi import SystemdUnits
from hecated.client import HecateClient, LogLine, UnitFailedError
from hecated.core.errors import InvalidUnitError, SystemdUnavailableError
from hecated.http.units import FOLLOW_STREAMS, HEARTBEAT

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hecate-exampled.py"
TIMEOUT = 30.0

pytestmark = [needs_user_manager, needs_journald, pytest.mark.slow]


manager, um = manager_fixtures()


@pytest.fixture
def hecated(um: UserManager) -> Iterator[Daemon]:
    with hecated_on(um) as d:
        yield d


def register(d: Daemon, name: str) -> None:
    status, _, body = d.register(name)
    assert status in (200, 201), body


def ctl(um: UserManager, *args: str) -> subprocess.CompletedProcess:
    env = {**um.env, "HECATE_SOCKET_PATH": str(um.socket)}
    return subprocess.run(
        [str(HECATECTL), *args], env=env, capture_output=True, text=True, timeout=TIMEOUT * 2
    )


def listed_status(d: Daemon, name: str) -> str | None:
    status, _, body = d.request("GET", "/api/plugins")
    assert status == 200
    return {p["name"]: p["status"] for p in body}.get(name)


def test_start_stop_restart_the_example_plugin(um: UserManager, hecated: Daemon) -> None:
    name = "hecate-exampled"
    add_unit(um, f"{name}.service", f"ExecStart={sys.executable} {EXAMPLE}\n")
    register(hecated, name)
    status, _, body = hecated.request("POST", f"/api/plugins/{name}/start")
    assert status == 200, body
    assert body["ok"] is True and body["unit"] == f"{name}.service"
    assert body["state"]["active_state"] == "active" and body["state"]["main_pid"] > 0
    first = body["state"]["main_pid"]
    # The example registers itself and serves: the list says running once its socket answers.
    wait_for(lambda: listed_status(hecated, name) == "running", timeout=TIMEOUT)
    status, _, body = hecated.request("POST", f"/api/plugins/{name}/restart")
    assert status == 200, body
    assert body["state"]["active_state"] == "active"
    assert body["state"]["main_pid"] not in (0, None, first)
    status, _, body = hecated.request("POST", f"/api/plugins/{name}/stop")
    assert status == 200, body
    assert body["state"]["active_state"] == "inactive" and body["state"]["main_pid"] is None
    assert um.prop(f"{name}.service", "ActiveState") == "inactive"
    # hecatectl: the same verbs, and the plugin's lines.
    started = ctl(um, "start", name)
    assert started.returncode == 0, started.stderr
    assert "active (running)" in started.stdout
    assert um.prop(f"{name}.service", "ActiveState") == "active"
    stopped = ctl(um, "stop", name)
    assert stopped.returncode == 0 and "inactive" in stopped.stdout, stopped.stderr
    assert um.prop(f"{name}.service", "ActiveState") == "inactive"


def test_a_plugin_without_a_unit_is_409_no_unit(um: UserManager, hecated: Daemon) -> None:
    register(hecated, "hecate-nounitd")
    for verb in ("start", "restart", "stop"):
        status, _, body = hecated.request("POST", f"/api/plugins/hecate-nounitd/{verb}")
        assert (status, body["code"]) == (409, "no_unit"), body
        assert "hecate-nounitd.service" in body["error"] and "plugin.toml" in body["error"]
    assert listed_status(hecated, "hecate-nounitd") == "stopped"  # the registry is untouched


def test_a_unit_that_fails_to_start_is_502_with_its_reason_and_lines(
    um: UserManager, hecated: Daemon
) -> None:
    name = "hecate-faild"
    add_unit(um, f"{name}.service", "Type=oneshot\nExecStart=/bin/sh -c 'echo boom-$$$$; exit 1'\n")
    register(hecated, name)
    status, _, body = hecated.request("POST", f"/api/plugins/{name}/start")
    assert (status, body["code"]) == (502, "unit_failed"), body
    assert body["result"] == "failed"
    assert "exited with status 1" in body["error"]
    assert body["state"]["active_state"] == "failed"
    assert isinstance(body["logs"], list)
    # The lines: in the answer as soon as journald has filed them (it reads the plugin's
    # stdout on its own), and through the logs route in any case.
    wait_for(lambda: any(x["message"].startswith("boom-") for x in logs(hecated, name)), TIMEOUT)
    # The SDK and hecatectl say the same; a start clears the failed state first.
    client = HecateClient(um.socket)
    with pytest.raises(UnitFailedError) as caught:
        client.start(name)
    assert caught.value.status == 502 and caught.value.state["active_state"] == "failed"
    failed = ctl(um, "start", name)
    assert failed.returncode == 1 and "unit_failed" in failed.stderr


def logs(d: Daemon, name: str, lines: int = 100) -> list[dict]:
    status, _, body = d.request("GET", f"/api/plugins/{name}/logs?lines={lines}")
    assert status == 200, body
    return body["lines"]


def test_unknown_plugins_and_bad_names(um: UserManager, hecated: Daemon) -> None:
    for verb in ("start", "stop", "restart"):
        status, _, body = hecated.request("POST", f"/api/plugins/hecate-nobodyd/{verb}")
        assert (status, body["code"]) == (404, "not_found")
        status, _, body = hecated.request("POST", f"/api/plugins/Not_A_Name/{verb}")
        assert (status, body["code"]) == (400, "invalid_name")
    status, _, body = hecated.request("GET", "/api/plugins/hecate-nobodyd/logs")
    assert (status, body["code"]) == (404, "not_found")
    register(hecated, "hecate-quietd")
    for query in ("lines=-1", "lines=abc", "follow=maybe"):
        status, _, body = hecated.request("GET", f"/api/plugins/hecate-quietd/logs?{query}")
        assert (status, body["code"]) == (400, "invalid_parameter"), query


def test_logs_and_follow(um: UserManager, hecated: Daemon) -> None:
    name = "hecate-logd"
    add_unit(um, f"{name}.service", "ExecStart=/bin/sh -c 'echo line-$$$$; exec sleep infinity'\n")
    register(hecated, name)
    pid = hecated.request("POST", f"/api/plugins/{name}/start")[2]["state"]["main_pid"]
    wait_for(lambda: f"line-{pid}" in [x["message"] for x in logs(hecated, name)], TIMEOUT)
    client = HecateClient(um.socket)
    assert client.logs(name, 1) == [LogLine.from_json(x) for x in logs(hecated, name, 1)]
    lines: queue.Queue = queue.Queue()
    stream = client.follow_logs(name, lines=1)

    def read() -> None:
        for line in stream:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    first = lines.get(timeout=TIMEOUT)  # the backlog: the stream is open
    assert first.message == f"line-{pid}" and first.pid == pid
    again = hecated.request("POST", f"/api/plugins/{name}/restart")[2]["state"]["main_pid"]
    new = lines.get(timeout=TIMEOUT)  # journald tells readers ~0.5 s after the line
    lag = time.time() - new.time  # from journald's receipt to the SDK's hands
    assert new.message == f"line-{again}"
    print(f"\nFIGURES follow through the API: a new line after {lag * 1000:.0f} ms")
    # hecatectl logs: the last lines, oldest first.
    out = ctl(um, "logs", name, "-n", "2")
    assert out.returncode == 0, out.stderr
    assert [line.rsplit(": ", 1)[1] for line in out.stdout.splitlines()] == [
        f"line-{pid}",
        f"line-{again}",
    ]
    as_json = ctl(um, "logs", name, "-n", "1", "--json")
    assert json.loads(as_json.stdout)["message"] == f"line-{again}"
    # hecatectl logs -f: the last line, then the next one; Ctrl-C ends it quietly.
    env = {**um.env, "HECATE_SOCKET_PATH": str(um.socket)}
    # As a terminal would have it: SIGINT not ignored. A suite started in the background
    # by a non-interactive shell (`make test &`) ignores SIGINT, and an ignored signal
    # stays ignored across exec: hecatectl would never see the Ctrl-C.
    proc = subprocess.Popen(
        [str(HECATECTL), "logs", name, "-f", "-n", "1"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    printed: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [printed.put(x) for x in proc.stdout], daemon=True).start()
    try:
        assert printed.get(timeout=TIMEOUT).rstrip().endswith(f"line-{again}")
        third = hecated.request("POST", f"/api/plugins/{name}/restart")[2]["state"]["main_pid"]
        assert printed.get(timeout=TIMEOUT).rstrip().endswith(f"line-{third}")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(TIMEOUT) == 130


class Follow:
    """A follow stream held open: its status and first bytes (then it is being served)."""

    def __init__(self, d: Daemon, name: str) -> None:
        self.conn = UnixHTTPConnection(d.socket, timeout=TIMEOUT)
        self.conn.request("GET", f"/api/plugins/{name}/logs?follow=1&lines=0")
        # The response holds the socket (http.client lets the connection drop it):
        # kept here, or the stream's client would go with it.
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.first = self.resp.readline() if self.status == 200 else self.resp.read()

    def close(self) -> None:
        self.resp.close()
        self.conn.close()


def test_follow_streams_are_bounded_and_end_when_the_client_goes(
    um: UserManager, hecated: Daemon
) -> None:
    name = "hecate-manyd"
    add_unit(um, f"{name}.service", "ExecStart=/bin/sh -c 'echo line-$$$$; exec sleep infinity'\n")
    register(hecated, name)
    assert hecated.request("POST", f"/api/plugins/{name}/start")[0] == 200
    opened = [Follow(hecated, name) for _ in range(FOLLOW_STREAMS)]
    try:
        assert [(f.status, f.first) for f in opened] == [(200, b": following\n")] * FOLLOW_STREAMS
        refused = Follow(hecated, name)
        refused.close()
        assert refused.status == 503 and json.loads(refused.first)["code"] == "busy"
    finally:
        for follow in opened:
            follow.close()
    # The clients have gone: each stream's stop is set on the hang-up (no line is written,
    # and the bound is below the first heartbeat, whose write would also find them gone),
    # so each ends and gives its place back.

    def a_place_again() -> bool:
        follow = Follow(hecated, name)
        follow.close()
        return follow.status == 200

    wait_for(a_place_again, timeout=HEARTBEAT / 2, interval=0.1)
    assert hecated.request("GET", "/api/plugins")[0] == 200  # the daemon serves on
    assert "Traceback" not in hecated.log()


def test_no_user_manager_is_503_and_the_registry_works() -> None:
    home = fresh_home("nobus")
    runtime = home / "run"
    runtime.mkdir(mode=0o700)
    env = {"XDG_RUNTIME_DIR": str(runtime), "DBUS_SESSION_BUS_ADDRESS": ""}
    d = Daemon(home, env=env).start()
    try:
        register(d, "hecate-lonelyd")
        for verb in ("start", "stop", "restart"):
            status, _, body = d.request("POST", f"/api/plugins/hecate-lonelyd/{verb}")
            assert (status, body["code"]) == (503, "systemd_unavailable"), body
        assert listed_status(d, "hecate-lonelyd") == "stopped"
        status, _, body = d.request("GET", "/api/plugins/hecate-lonelyd")
        assert status == 200 and body["name"] == "hecate-lonelyd"
        assert "Traceback" not in d.log()
    finally:
        d.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_the_job_bound_is_the_unit_job_timeout_setting(um: UserManager) -> None:
    """A job still running at the bound: 502 unit_failed, saying so; the job goes on.

    The bound (3 s) covers the calls before the job too (reset-failed, start): a bound
    shorter than a loaded machine's round trips tests the load, not the bound."""
    name = "hecate-slowd"
    add_unit(um, f"{name}.service", "Type=oneshot\nExecStart=/bin/sleep 60\n")
    env = {
        "XDG_RUNTIME_DIR": str(um.runtime),
        "DBUS_SESSION_BUS_ADDRESS": um.bus_address,
        "HECATE_UNIT_JOB_TIMEOUT": "3",
    }
    d = Daemon(um.home, env=env).start()
    try:
        register(d, name)
        status, _, body = d.request("POST", f"/api/plugins/{name}/start")
        assert (status, body["code"]) == (502, "unit_failed"), body
        assert "still running after 3 s" in body["error"], body
        assert body["state"]["active_state"] == "activating"
    finally:
        d.stop()


def test_bad_unit_names_are_refused_before_any_call() -> None:
    """invalid_unit (400), not systemd_unavailable: no bus was ever tried."""
    units = SystemdUnits(address="unix:path=/nonexistent/bus")
    for bad in ("../x.service", "x.socket", "foo@.service", "a b.service"):
        for call in (units.start, units.stop, units.restart):
            with pytest.raises(InvalidUnitError):
                call(bad)
        with pytest.raises(InvalidUnitError):
            units.logs(bad, 10)
        with pytest.raises(InvalidUnitError):
            units.follow(bad, threading.Event(), 0)
    with pytest.raises(SystemdUnavailableError):
        units.start("fine.service")  # a good name does reach for the bus

"""End to end under a private ``systemd --user``: the units as installed by ``install-units``.

One manager per test session (starting one costs about a second); every test
starts from nothing installed. The service's output goes to ~/hecated.log via a
drop-in (no journald here); everything else is the shipped unit.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HECATED, http_request, wait_for
from plugin_support import Plugin
from systemd_support import UserManager, assert_no_tcp, freezable_exec_start, needs_user_manager

pytestmark = [pytest.mark.slow, needs_user_manager]

SERVICE = "hecate.service"
# The watchdog test's WatchdogSec=: hecated pings every half of it and withholds the
# ping once its loop has not turned for that half (5 s). A healthy loop turns every
# 0.5 s; a loaded 2-core machine delays a turn by tens of milliseconds, not seconds,
# and the process's start-up before the first ping fits in it with room to spare.
WATCHDOG_SEC = 10


@pytest.fixture(scope="session")
def manager() -> Iterator[UserManager]:
    um = UserManager().start()
    yield um
    um.stop()


@pytest.fixture
def um(manager: UserManager) -> Iterator[UserManager]:
    manager.reset()
    yield manager
    manager.reset()


def active(um: UserManager) -> str:
    return um.prop(SERVICE, "ActiveState")


def main_pid(um: UserManager) -> int:
    return int(um.prop(SERVICE, "MainPID"))


def served(um: UserManager) -> list:
    status, _, body = um.request()
    assert status == 200, body
    return body


def names(um: UserManager) -> list[str]:
    return sorted(p["name"] for p in served(um))


def test_first_request_activates_the_service(um: UserManager) -> None:
    um.install()
    assert um.prop("hecate.socket", "ActiveState") == "active"
    assert active(um) == "inactive", "nothing may start hecated before the first connection"
    assert um.socket.is_socket()
    assert (um.socket.stat().st_mode & 0o777) == 0o600
    assert (um.socket.parent.stat().st_mode & 0o777) == 0o700
    assert served(um) == []
    props = um.show(SERVICE, "ActiveState", "StatusText", "Type", "NotifyAccess", "MainPID")
    assert props["ActiveState"] == "active", um.service_log()
    assert (props["Type"], props["NotifyAccess"]) == ("notify", "main")
    assert props["StatusText"] == "0 plugins registered, 0 running"
    assert_no_tcp(int(props["MainPID"]))
    assert "socket-activated" in um.service_log()


def test_hecate_tuis_socket_activates_the_service_too(um: UserManager) -> None:
    """hecate-tui looks for $HECATE_SOCKET, /run/hecate/daemon.sock, then
    ~/.hecate/daemon.sock: the shipped hecate.socket listens there too, so a first
    connection there starts hecated with nothing running, as the API's path does."""
    um.install()
    tui = um.home / ".hecate" / "daemon.sock"
    assert tui.is_socket() and (tui.stat().st_mode & 0o777) == 0o600
    assert active(um) == "inactive"
    status, _, health = http_request(tui, "GET", "/health")
    assert status == 200, health
    # What hecate-tui decodes (internal/client: Health): status, ready, uptime_seconds (int).
    assert (health["status"], health["ready"]) == ("healthy", True)
    assert isinstance(health["uptime_seconds"], int)
    assert active(um) == "active" and main_pid(um) == health["pid"]
    assert served(um) == []  # the registry's own path: the same daemon
    um.systemctl("stop", SERVICE)
    assert tui.is_socket(), "the socket unit's: it stays for the next activation"


def test_active_only_after_ready_with_the_index_loaded(um: UserManager) -> None:
    um.install()
    served(um)
    for name in ("alpha", "beta", "gamma"):
        assert um.request("POST", "/api/plugins/register", {"name": name})[0] == 201
    um.systemctl("stop", SERVICE)
    # `systemctl start` of a Type=notify unit returns once READY=1 arrived: by then the
    # status line, sent with READY, already counts the index read from disk.
    um.systemctl("start", SERVICE)
    props = um.show(
        SERVICE, "ActiveState", "StatusText", "ExecMainStartTimestampMonotonic",
        "ActiveEnterTimestampMonotonic",
    )  # fmt: skip
    assert props["ActiveState"] == "active"
    assert props["StatusText"] == "3 plugins registered, 0 running"
    assert int(props["ActiveEnterTimestampMonotonic"]) > int(
        props["ExecMainStartTimestampMonotonic"]
    ), "active must follow READY=1, not the fork"


def test_status_text_follows_the_registry(um: UserManager) -> None:
    um.install()
    served(um)
    um.request("POST", "/api/plugins/register", {"name": "alpha"})
    wait_for(lambda: um.prop(SERVICE, "StatusText") == "1 plugin registered, 0 running")
    um.request("DELETE", "/api/plugins/alpha")
    wait_for(lambda: um.prop(SERVICE, "StatusText") == "0 plugins registered, 0 running")


def test_the_sandbox_still_sees_running_plugins(um: UserManager) -> None:
    """ProtectProc=, PrivateUsers= and friends must not blind hecated to a plugin's pid,
    nor keep it from its socket."""
    um.install()
    served(um)
    assert um.request("POST", "/api/plugins/register", {"name": "alpha"})[0] == 201
    ns = um.home / ".hecate" / "alpha"
    waiting = subprocess.Popen(["sleep", "60"])
    try:
        # A live pid with no socket yet: starting (a pid the sandbox cannot see: stopped).
        (ns / "run" / "daemon.pid").write_text(f"{waiting.pid}\n")
        wait_for(lambda: [p["status"] for p in served(um)] == ["starting"])
        with Plugin(ns) as plugin:  # its socket answers /health: running
            (ns / "run" / "daemon.pid").write_text(f"{plugin.proc.pid}\n")
            wait_for(lambda: um.request("GET", "/api/plugins/alpha")[2]["pid"] == plugin.proc.pid)
            wait_for(lambda: [p["status"] for p in served(um)] == ["running"])
            wait_for(lambda: um.prop(SERVICE, "StatusText") == "1 plugin registered, 1 running")
    finally:
        waiting.kill()
        waiting.wait()
    # Killed: its socket file stays behind, its pid is gone (the pidfd tells): stopped.
    wait_for(lambda: [p["status"] for p in served(um)] == ["stopped"])


def test_reload_rescans_the_tree(um: UserManager) -> None:
    um.install()
    served(um)
    um.request("POST", "/api/plugins/register", {"name": "alpha"})
    pid = main_pid(um)
    um.systemctl("reload", SERVICE)
    # The lifecycle's own line (the watcher's start-up rescan says no "pass"), counting
    # alpha: the reload's pass ran, after the registration.
    wait_for(lambda: "rescanned the tree (pass 1): 1 plugin(s)" in um.service_log())
    assert (active(um), main_pid(um)) == ("active", pid)
    assert names(um) == ["alpha"]


def test_stop_then_request_reactivates_with_the_registry_intact(um: UserManager) -> None:
    um.install()
    served(um)
    um.request("POST", "/api/plugins/register", {"name": "alpha"})
    um.systemctl("stop", SERVICE)
    assert active(um) == "inactive"
    assert um.socket.is_socket(), "systemd's socket must survive the service"
    assert names(um) == ["alpha"]
    assert active(um) == "active"


def test_kill_9_then_the_next_request_is_served(um: UserManager) -> None:
    um.install()
    served(um)
    um.request("POST", "/api/plugins/register", {"name": "alpha"})
    pid = main_pid(um)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: main_pid(um) not in (0, pid) or active(um) != "active")
    assert names(um) == ["alpha"]
    assert active(um) == "active"
    assert main_pid(um) != pid


def test_idle_exit_then_reactivation(um: UserManager) -> None:
    idle = f"[Service]\nExecStart=\nExecStart={HECATED} serve --idle-timeout 1\n"
    um.install(("10-idle", idle))
    served(um)
    restarts = um.prop(SERVICE, "NRestarts")
    wait_for(lambda: active(um) == "inactive", timeout=20)
    props = um.show(SERVICE, "Result", "ExecMainStatus", "NRestarts")
    assert props == {"Result": "success", "ExecMainStatus": "0", "NRestarts": restarts}
    assert "exiting until the next connection" in um.service_log()
    assert served(um) == []
    assert active(um) == "active"


def test_watchdog_keeps_a_turning_loop_and_kills_a_stuck_one(um: UserManager) -> None:
    # The shipped daemon behind a test wrapper whose SIGUSR2 freezes the serving loop
    # (systemd_support.FREEZE_ON_SIGUSR2); hecated itself has no such hook.
    # ExecStopPost (unsandboxed, "+") records why systemd says the process ended.
    drop_in = (
        f"[Service]\nWatchdogSec={WATCHDOG_SEC}\n"
        f"ExecStart=\nExecStart={freezable_exec_start()}\n"
        "ExecStopPost=+/bin/sh -c 'echo \"$SERVICE_RESULT $EXIT_CODE $EXIT_STATUS\" >> %h/why'\n"
    )
    um.install(("10-watchdog", drop_in))
    served(um)
    pid, restarts = main_pid(um), int(um.prop(SERVICE, "NRestarts"))
    started = int(um.prop(SERVICE, "ExecMainStartTimestampMonotonic"))
    # Alive past a whole WatchdogSec only if the pings arrive: wait for one that systemd
    # recorded (WatchdogTimestampMonotonic, the last WATCHDOG=1) a full period after start.
    wait_for(
        lambda: (
            int(um.prop(SERVICE, "WatchdogTimestampMonotonic")) > started + WATCHDOG_SEC * 1_000_000
        ),
        timeout=WATCHDOG_SEC * 4,
    )
    assert (active(um), main_pid(um)) == ("active", pid)
    assert int(um.prop(SERVICE, "NRestarts")) == restarts
    um.systemctl("kill", "--kill-who=main", "-s", "SIGUSR2", SERVICE)
    # Pings stop at most WATCHDOG_SEC / 2 after the freeze; systemd acts WATCHDOG_SEC later.
    wait_for(lambda: int(um.prop(SERVICE, "NRestarts")) == restarts + 1, timeout=WATCHDOG_SEC * 6)
    result, code, status = (um.home / "why").read_text().split("\n")[0].split()
    assert (result, status) == ("watchdog", "ABRT"), code  # code: "dumped" or "killed"
    assert "withholding the watchdog ping" in um.service_log()
    wait_for(lambda: active(um) == "active", timeout=20)
    assert main_pid(um) != pid
    assert served(um) == []


def test_the_service_is_not_enabled_on_its_own(um: UserManager) -> None:
    um.install()
    assert um.systemctl("is-enabled", SERVICE, check=False).stdout.strip() == "static"
    assert um.systemctl("is-enabled", "hecate.socket").stdout.strip() == "enabled"


def test_installed_units_verify_clean(um: UserManager) -> None:
    um.install()
    result = um.run(
        "systemd-analyze", "verify", "--user",
        str(um.unit_dir / "hecate.socket"), str(um.unit_dir / SERVICE), check=False,
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout + result.stderr == "", result


def test_security_exposure(um: UserManager) -> None:
    """The hardening holds: record the score (docs/systemd.md) and keep it from regressing."""
    um.install()
    out = um.run("systemd-analyze", "security", "--user", "--no-pager", SERVICE).stdout
    match = re.search(r"Overall exposure level for hecate\.service: (\d+\.\d+)", out)
    assert match, out
    Path(um.base / "security.txt").write_text(out)
    assert float(match.group(1)) <= 3.0, out

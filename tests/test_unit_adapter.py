"""The unit adapter against a real ``systemd --user``, its session bus and a real journald.

Plugins run as real ``.service`` units of a private user manager
(systemd_support.UserManager, with dbus-user-session's bus and a journald
started by hand); the adapter talks to them over D-Bus exactly as hecated
will. Every wait is on an event (a published state, a journal line, a job's
end), never a sleep.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import wait_for
from hypothesis import given
from hypothesis import strategies as st
from systemd_support import (
    UserManager,
    add_unit,
    manager_fixtures,
    needs_journald,
    needs_user_manager,
    on_bus,
)

from hecated.adapters import journal
from hecated.adapters.unitcontrol import UserManager as Control
from hecated.adapters.units import (
    InvalidUnitName,
    JobConflict,
    JobFailed,
    JobTimeout,
    NoSuchUnit,
    SystemdUnavailable,
    UnitError,
    UnitState,
    check_unit_name,
    unit_reason,
    unit_status,
)
from hecated.adapters.unitwatch import UnitWatcher

CALL_TIMEOUT = 10.0  # unitbus.CALL_TIMEOUT: one D-Bus call's own bound (not imported: jeepney)

PLUGIN = Path(__file__).resolve().parent / "plugin_support.py"
TIMEOUT = 30.0
MASKED = "the unit is masked: it cannot start until unmasked"

# -- names and words: pure ------------------------------------------------------------------

GOOD = ["hecate-traderd.service", "foo@bar.service", "a:b_c.d.service", "x" * 247 + ".service"]
BAD = [
    "",
    "hecate-traderd",
    "hecate.socket",
    "../x.service",
    "a/b.service",
    "/etc/systemd/user/x.service",
    "foo@.service",
    "-x.service",
    ".x.service",
    "x\\x2d.service",
    "a@b@c.service",
    "a b.service",
    "ünï.service",
    "x.service\n",
    "x\n.service",
    "\ud800.service",
    "x.service\x00",
    "x..service.service\n",
    ".service",
    "x" * 248 + ".service",
]


@pytest.mark.parametrize("name", GOOD)
def test_valid_unit_names_pass(name: str) -> None:
    assert check_unit_name(name) == name


@pytest.mark.parametrize("name", BAD)
def test_invalid_unit_names_are_refused_before_any_call(name: str) -> None:
    with pytest.raises(InvalidUnitName):
        check_unit_name(name)
    # A bus address nobody listens on: had a call been tried, SystemdUnavailable.
    control = Control(address="unix:path=/nonexistent/bus")
    for action in (control.state, control.start, control.stop, control.restart):
        with pytest.raises(InvalidUnitName):
            action(name)
    with pytest.raises(InvalidUnitName):
        UnitWatcher(lambda *_: None, [name])
    with pytest.raises(InvalidUnitName):
        journal.last_lines(name)


@given(st.text() | st.from_regex(r"[A-Za-z0-9_:.@\\/-]{0,12}\.service", fullmatch=True))
def test_any_text_is_a_safe_unit_name_or_refused(text: str) -> None:
    try:
        name = check_unit_name(text)
    except InvalidUnitName:
        return
    assert name.isascii() and len(name) <= 255 and name.endswith(".service")
    assert "/" not in name and "\\" not in name and name[0] not in "-."
    assert name.count("@") <= 1 and not name.endswith("@.service")


def failed(restarts: int, restart: str = "on-failure", **kw) -> UnitState:
    base = {"result": "exit-code", "exit_code": 1, "exit_status": 1}
    return UnitState(
        "p.service", "loaded", "failed", "failed", n_restarts=restarts, restart=restart,
        **{**base, **kw},
    )  # fmt: skip


def test_a_failed_unit_in_words() -> None:
    assert unit_status(failed(5)) == (
        "failed",
        "exited with status 1; restarted 5 times; start limit hit",
    )
    assert unit_status(failed(0, restart="no")) == ("failed", "exited with status 1")
    killed = failed(1, restart="no", result="signal", exit_code=2, exit_status=9)
    assert unit_reason(killed) == "killed by SIGKILL; restarted once"
    timeout = failed(0, restart="no", result="timeout", exit_code=0, exit_status=0)
    assert unit_status(timeout) == ("failed", "timed out")


def test_the_start_limit_is_told_from_the_failed_state_a_restart_passes_through() -> None:
    # systemd 252 keeps Result=exit-code when the limit stops the restarts; the limit
    # stops them when a restart was due, RestartSec after the exit...
    stopped = failed(5, since=1000.1, exit_time=1000.0, restart_delay=0.1)
    assert stopped.start_limit_hit
    assert unit_reason(stopped) == "exited with status 1; restarted 5 times; start limit hit"
    # ...whereas every exit passes through failed at once, just before auto-restart.
    passing = failed(1, since=1000.0002, exit_time=1000.0, restart_delay=0.1)
    assert not passing.start_limit_hit
    assert unit_status(passing) == ("failed", "exited with status 1; restarted once")
    assert failed(0, result="start-limit-hit", exit_code=0).start_limit_hit


def test_states_that_decide_a_status_and_those_that_do_not() -> None:
    def state(active: str, sub: str, load: str = "loaded") -> UnitState:
        return UnitState("p.service", load, active, sub)

    assert unit_status(state("activating", "start"))[0] == "starting"
    assert unit_status(state("deactivating", "stop-sigterm"))[0] == "stopping"
    assert unit_status(state("inactive", "dead"))[0] == "stopped"
    assert unit_status(state("active", "running")) is None  # the socket probe decides
    assert unit_status(state("inactive", "dead", load="not-found")) is None


def test_no_bus_is_unavailable_and_the_watcher_lives_on() -> None:
    control = Control(address="unix:path=/nonexistent/bus")
    with pytest.raises(SystemdUnavailable):
        control.state("x.service")
    from hecated.adapters.unitbus import bus_address

    with pytest.raises(SystemdUnavailable):
        bus_address({})  # neither DBUS_SESSION_BUS_ADDRESS nor XDG_RUNTIME_DIR
    assert bus_address({"XDG_RUNTIME_DIR": "/run/user/7"}) == "unix:path=/run/user/7/bus"
    seen: list = []
    watcher = UnitWatcher(lambda *a: seen.append(a), ["x.service"], address="unix:path=/no/bus")
    watcher.start()
    watcher.watch(["y.service"])
    watcher.close()
    assert not watcher._thread.is_alive()
    assert seen == []


# -- against a real user manager ------------------------------------------------------------


class Published:
    """The watcher's callback: every (unit, state) it publishes, waited on by condition."""

    def __init__(self) -> None:
        self.events: list[tuple[str, UnitState | None]] = []
        self.cond = threading.Condition()

    def __call__(self, unit: str, state: UnitState | None) -> None:
        with self.cond:
            self.events.append((unit, state))
            self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.events)

    def wait(
        self, unit: str, test: Callable[[UnitState | None], bool], since: int = 0
    ) -> UnitState | None:
        """The first state of ``unit`` published from event ``since`` on that passes ``test``."""
        seen = since
        with self.cond:
            while True:
                for name, state in self.events[seen:]:
                    if name == unit and test(state):
                        return state
                seen = len(self.events)
                if not self.cond.wait(TIMEOUT):
                    raise AssertionError(f"no such state of {unit}; got {self.events}")


manager, um = manager_fixtures()


def plugin_unit(um: UserManager, name: str, extra: str = "") -> str:
    namespace = um.home / ".hecate" / name.removesuffix(".service")
    return add_unit(um, name, f"ExecStart={sys.executable} {PLUGIN} {namespace}\n{extra}")


@pytest.fixture
def control(um: UserManager) -> Control:
    return Control(address=um.bus_address)


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def watcher(um: UserManager, published: Published) -> Iterator[UnitWatcher]:
    w = UnitWatcher(published, address=um.bus_address).start()
    yield w
    w.close()


def active(state: UnitState | None) -> bool:
    return state is not None and state.active_state == "active"


@needs_user_manager
@needs_journald
@pytest.mark.slow
def test_start_then_stop(um, control: Control, watcher: UnitWatcher, published) -> None:
    unit = plugin_unit(um, "hecate-startd.service")
    watcher.watch([unit])  # a set changed after the start: the watcher reads the new unit
    assert published.wait(unit, lambda s: s is not None and s.active_state == "inactive")
    outcome = control.start(unit)
    assert outcome.result == "done"
    assert outcome.state.active_state == "active" and outcome.state.main_pid > 0
    assert published.wait(unit, active).main_pid == outcome.state.main_pid
    mark = published.mark()
    outcome = control.stop(unit)
    assert outcome.state.active_state == "inactive"
    stopped = published.wait(unit, lambda s: s is not None and s.active_state == "inactive", mark)
    assert unit_status(stopped)[0] == "stopped"


@needs_user_manager
@needs_journald
@pytest.mark.slow
def test_a_plugin_exiting_1_fails_with_its_story(um, control, watcher, published) -> None:
    unit = add_unit(
        um,
        "hecate-faild.service",
        "ExecStart=/bin/sh -c 'echo failing; exit 1'\nRestart=on-failure\nRestartSec=50ms\n",
    )
    watcher.watch([unit])
    mark = published.mark()
    control.start(unit)
    # A unit passes through failed each time its process exits (then auto-restart):
    # the failed state that stays is the one the start limit leaves.
    state = published.wait(unit, lambda s: s is not None and s.start_limit_hit, mark)
    assert state.n_restarts == 5  # systemd's default StartLimitBurst
    assert unit_status(state) == (
        "failed",
        "exited with status 1; restarted 5 times; start limit hit",
    )
    assert control.state(unit) == state
    # A start clears the failed state first, as the original does: the unit runs again.
    mark = published.mark()
    control.start(unit)
    assert published.wait(unit, lambda s: s is not None and s.active_state != "failed", mark)


@needs_user_manager
@needs_journald
@pytest.mark.slow
def test_a_start_job_that_fails_says_so(um, control: Control) -> None:
    unit = add_unit(um, "hecate-onced.service", "Type=oneshot\nExecStart=/bin/false\n")
    with pytest.raises(JobFailed) as caught:
        control.start(unit)
    assert caught.value.result == "failed"
    assert caught.value.state.active_state == "failed"
    assert unit_status(caught.value.state) == ("failed", "exited with status 1")
    assert "exited with status 1" in str(caught.value)


@needs_user_manager
@needs_journald
@pytest.mark.slow
def test_kill_9_restarts_and_counts(um, control, watcher, published) -> None:
    unit = plugin_unit(um, "hecate-killd.service", "Restart=on-failure\nRestartSec=50ms\n")
    watcher.watch([unit])
    first = control.start(unit).state
    assert published.wait(unit, active)
    mark = published.mark()
    os.kill(first.main_pid, signal.SIGKILL)
    again = published.wait(
        unit, lambda s: active(s) and s.main_pid not in (0, first.main_pid), mark
    )
    assert again.n_restarts == first.n_restarts + 1
    assert unit_status(again) is None  # active: running is the socket probe's to say


@needs_user_manager
@needs_journald
@pytest.mark.slow
def test_journal_lines_and_follow(um, control: Control) -> None:
    unit = add_unit(
        um, "hecate-logd.service", "ExecStart=/bin/sh -c 'echo line-$$$$; exec sleep infinity'\n"
    )
    lines: queue.Queue = queue.Queue()
    stop = threading.Event()

    def follow() -> None:
        for line in journal.follow(unit, stop):
            lines.put(line)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        pid = control.start(unit).state.main_pid
        seen = lines.get(timeout=TIMEOUT)
        assert seen.message == f"line-{pid}" and seen.pid == pid
        control.restart(unit)  # a second run: a new line, through the same follow
        again = lines.get(timeout=TIMEOUT)
        assert again.message.startswith("line-") and again.message != seen.message
    finally:
        stop.set()
        follower.join(TIMEOUT)
    assert not follower.is_alive()
    last = journal.last_lines(unit, 10)
    assert [x.message for x in last[-2:]] == [seen.message, again.message]
    assert [x.message for x in journal.last_lines(unit, 1)] == [again.message]
    assert journal.last_lines(unit, 10, uid=os.getuid() + 4242) == []  # another user's: none
    # A follow with a backlog: the last lines first, then the next new one, once each.
    stop.clear()
    tail = journal.follow(unit, stop, backlog=2)
    bound = threading.Timer(TIMEOUT, stop.set)  # a line that never comes: StopIteration
    bound.start()
    try:
        assert [next(tail).message, next(tail).message] == [seen.message, again.message]
        third = control.restart(unit).state.main_pid
        assert next(tail).message == f"line-{third}"
    finally:
        bound.cancel()
        tail.close()


@needs_user_manager
@needs_journald
@pytest.mark.slow
def test_the_watcher_outlives_a_manager_crash(um, control, watcher, published) -> None:
    unit = plugin_unit(um, "hecate-crashd.service")
    watcher.watch([unit])
    control.start(unit)
    assert published.wait(unit, active)
    mark = published.mark()
    assert watcher.connected
    um.crash()
    assert published.wait(unit, lambda s: s is None, mark) is None  # status: the probes
    assert not watcher.connected
    with pytest.raises(SystemdUnavailable):
        control.state(unit)  # the bus answers, no manager on it: a 503, not a hang
    # The bus the crashed manager started runs on, orphaned; a new manager starts its own.
    um.kill_orphan("dbus-daemon")
    mark = published.mark()
    um.respawn()
    # The new manager never started the unit: the watcher reads it again, by itself.
    assert published.wait(unit, lambda s: s is not None, mark).active_state == "inactive"
    mark = published.mark()
    control.start(unit)
    assert published.wait(unit, active, mark)


@needs_user_manager
@needs_journald
@pytest.mark.slow
def test_the_watcher_outlives_its_bus(um, control, watcher, published) -> None:
    unit = plugin_unit(um, "hecate-busd.service")
    watcher.watch([unit])
    assert published.wait(unit, lambda s: s is not None)
    mark = published.mark()
    os.kill(int(um.prop("dbus.service", "MainPID")), signal.SIGKILL)
    assert published.wait(unit, lambda s: s is None, mark) is None
    # Reconnecting activates the bus again (dbus.socket); the manager joins it; states come.
    # The manager's joining is systemd's part, tried as dbus.service comes up again: on a
    # loaded machine that one try could miss (two loaded suite runs in two saw the manager
    # stay off the new bus for good, while the watcher kept retrying as it should). Then a
    # restart of dbus.service, through the manager's private socket, is its second try.
    mark = published.mark()
    try:
        wait_for(lambda: on_bus(um), timeout=TIMEOUT)
    except AssertionError:
        um.systemctl("restart", "dbus.service")
        wait_for(lambda: on_bus(um), timeout=TIMEOUT)
    assert published.wait(unit, lambda s: s is not None, mark).active_state == "inactive"
    mark = published.mark()
    control.start(unit)
    assert published.wait(unit, active, mark)


def test_importing_the_adapter_loads_no_dbus_library() -> None:
    """A cold start pays for no D-Bus library: jeepney comes with the first unit call."""
    code = (
        "import sys; import hecated.daemon, hecated.adapters.unitwatch, "
        "hecated.adapters.unitcontrol, hecated.adapters.journal; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jeepney', 'systemd')"
        " or m == 'hecated.adapters.unitbus'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@needs_user_manager
@needs_journald
@pytest.mark.slow
def test_a_job_that_does_not_end_in_time_is_a_timeout(um, control: Control) -> None:
    unit = add_unit(um, "hecate-slowd.service", "Type=oneshot\nExecStart=/bin/sleep infinity\n")
    with pytest.raises(JobTimeout) as caught:
        control.start(unit, timeout=0.2)
    assert caught.value.state.active_state == "activating"  # the job goes on in the manager
    assert control.stop(unit).state.active_state in ("inactive", "failed")  # SIGTERM: failed


@needs_user_manager
@needs_journald
@pytest.mark.slow
def test_a_start_in_mode_fail_leaves_a_queued_stop_to_end_as_asked(um, control: Control) -> None:
    # The gitops reconciler starts in mode "fail": a stop queued before its start (an
    # uninstall's) ends "done"; in mode "replace" the start would cancel it.
    gate, stopping = um.base / "stop.gate", um.base / "stop.waiting"
    os.mkfifo(gate)
    stop_cmd = f"/bin/sh -c 'touch {stopping}; read x < {gate}'"
    unit = add_unit(
        um, "hecate-stoppingd.service", f"ExecStart=/bin/sleep infinity\nExecStop={stop_cmd}\n"
    )
    control.start(unit)
    stopped: queue.Queue = queue.Queue()

    def stop() -> None:
        try:
            stopped.put(control.stop(unit))
        except UnitError as exc:
            stopped.put(exc)

    threading.Thread(target=stop, daemon=True).start()
    wait_for(stopping.exists, TIMEOUT)  # the stop job runs its ExecStop, held at the gate
    try:
        with pytest.raises(JobConflict) as caught:  # not a refusal: it may be asked again
            control.start(unit, mode="fail")
        assert "destructive" in str(caught.value), caught.value
    finally:
        with open(gate, "w") as release:
            release.write("go\n")
    outcome = stopped.get(timeout=TIMEOUT)
    assert not isinstance(outcome, Exception), outcome
    assert outcome.result == "done" and outcome.state.active_state == "inactive"


@needs_user_manager
@needs_journald
@pytest.mark.slow
def test_a_daemon_reload_is_read_once_it_is_over(um, control, watcher, published) -> None:
    unit = plugin_unit(um, "hecate-reloadd.service")
    watcher.watch([unit])
    control.start(unit)
    assert published.wait(unit, active)
    mark = published.mark()
    plugin_unit(um, unit, "Restart=always\n")  # a changed unit file, then daemon-reload
    changed = published.wait(unit, lambda s: s is not None and s.restart == "always", mark)
    assert active(changed)
    # The reload takes the unit apart and builds it again (UnitRemoved, UnitNew...):
    # none of that is published as a state of a unit that never stopped.
    between = [s for u, s in published.events[mark:] if u == unit]
    assert all(active(s) for s in between), between


@needs_user_manager
@needs_journald
@pytest.mark.slow
def test_the_watcher_follows_on_after_a_daemon_reexec(um, control, watcher, published) -> None:
    unit = plugin_unit(um, "hecate-reexecd.service")
    watcher.watch([unit])
    control.start(unit)
    assert published.wait(unit, active)
    um.systemctl("daemon-reexec")  # a package upgrade does this to every user manager
    mark = published.mark()
    control.stop(unit)
    stopped = published.wait(unit, lambda s: s is not None and s.active_state == "inactive", mark)
    assert unit_status(stopped)[0] == "stopped"


@needs_user_manager
@needs_journald
@pytest.mark.slow
def test_a_unit_without_a_file_is_followed_until_it_has_one(um, control, watcher, published):
    unit = "hecate-laterd.service"
    um.made.append(unit)
    watcher.watch([unit])
    missing = published.wait(unit, lambda s: s is not None)
    assert missing.load_state == "not-found" and not missing.exists
    assert unit_status(missing) is None  # no unit: the probes say what the plugin is
    with pytest.raises(NoSuchUnit):
        control.start(unit)
    # The file appears; a start loads it (no daemon-reload): UnitNew, and it is followed.
    namespace = um.home / ".hecate" / "hecate-laterd"
    um.unit_dir.mkdir(parents=True, exist_ok=True)
    service = f"[Service]\nExecStart={sys.executable} {PLUGIN} {namespace}\n"
    (um.unit_dir / unit).write_text(service)
    control.start(unit)
    assert published.wait(unit, active)
    # Reading a missing unit never set the manager loading and unloading it in a loop.
    states = [s.load_state for u, s in published.events if u == unit and s is not None]
    assert states.count("not-found") == 1 and "not-loaded" not in states, states


@needs_user_manager
@needs_journald
@pytest.mark.slow
def test_a_masked_unit_is_followed_and_refused(um, control, watcher, published) -> None:
    unit = "hecate-maskd.service"
    um.made.append(unit)
    um.systemctl("mask", unit)  # ~/.config/systemd/user/hecate-maskd.service -> /dev/null
    um.systemctl("daemon-reload")
    try:
        watcher.watch([unit])
        masked = published.wait(unit, lambda s: s is not None)
        assert masked.load_state == "masked"
        assert unit_status(masked) == ("stopped", MASKED)
        with pytest.raises(UnitError, match="masked"):
            control.start(unit)
        # The manager refuses a reference on it: read all the same, and once.
        states = [s.load_state for u, s in published.events if u == unit and s is not None]
        assert states == ["masked"], states
    finally:
        um.systemctl("unmask", unit)


# A oneshot whose process freezes the manager that started it (systemd gives its services
# $MANAGERPID): the start job is under way, the manager then answers nothing at all.
FREEZE_MANAGER = (
    "Type=oneshot\nExecStart=/bin/sh -c 'kill -STOP $MANAGERPID; exec sleep infinity'\n"
)


def thaw(um: UserManager) -> None:
    assert um.proc is not None
    os.kill(um.proc.pid, signal.SIGCONT)


@needs_user_manager
@needs_journald
@pytest.mark.slow
def test_a_hung_manager_cannot_stretch_a_start_past_its_bound(um, control: Control) -> None:
    """One deadline for the whole call (reset-failed, start, the job, the state read):
    the manager freezes once the job runs, and the answer still comes within the bound
    and a short slack, far below one call's own timeout (before: 1 s of job wait, then
    10 s more for the state read, then 503)."""
    unit = add_unit(um, "hecate-freezerd.service", FREEZE_MANAGER)
    answers: queue.Queue = queue.Queue()

    def start() -> None:
        try:
            answers.put(control.start(unit, timeout=1.0))
        except UnitError as exc:
            answers.put(exc)

    threading.Thread(target=start, daemon=True).start()
    try:
        got = answers.get(timeout=CALL_TIMEOUT - 2)
    finally:
        thaw(um)
    # The job was under way when the manager froze: its bound passed, state unknown.
    assert isinstance(got, JobTimeout), got
    assert got.state is None
    assert control.stop(unit).state.active_state in ("inactive", "failed")


@needs_user_manager
@needs_journald
@pytest.mark.slow
def test_a_hung_manager_does_not_hold_the_watcher(um, control, published) -> None:
    """Each of the watcher's calls has a bound: a frozen manager is a lost one (states
    fall back to the probes, None), and the watcher follows again once it answers."""
    unit = plugin_unit(um, "hecate-hungd.service")
    other = plugin_unit(um, "hecate-otherd.service")
    watcher = UnitWatcher(published, address=um.bus_address, call_timeout=1.0).start()
    assert um.proc is not None
    try:
        watcher.watch([unit])
        assert published.wait(unit, lambda s: s is not None).active_state == "inactive"
        mark = published.mark()
        os.kill(um.proc.pid, signal.SIGSTOP)
        try:
            watcher.watch([unit, other])  # the watcher calls the manager (RefUnit) now
            assert published.wait(unit, lambda s: s is None, mark) is None
        finally:
            thaw(um)
        mark = published.mark()
        assert published.wait(unit, lambda s: s is not None, mark).active_state == "inactive"
        assert published.wait(other, lambda s: s is not None, mark).active_state == "inactive"
    finally:
        watcher.close()


@needs_user_manager
@needs_journald
@pytest.mark.slow
def test_a_set_changed_while_the_watcher_reads_is_not_lost(um, published) -> None:
    """``watch`` while the session reads the units of the last set (its wake-up consumed
    by a call's receive): the new set is read once that reading is done, not when some
    later signal happens to come (before: the loop went back to a blocking receive and,
    the units being quiet, the new unit was never read; seen with 10 plugins registering
    at once in bench/unit_idle.py)."""
    names = [f"hecate-quiet{i:02d}.service" for i in range(30)]
    um.unit_dir.mkdir(parents=True, exist_ok=True)
    for name in names:  # active and quiet: no process, no signal while they are read
        (um.unit_dir / name).write_text(
            "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n"
        )
        um.made.append(name)  # type: ignore[attr-defined]
    um.systemctl("daemon-reload")
    um.systemctl("start", *names)
    watcher = UnitWatcher(published, address=um.bus_address).start()
    try:
        wait_for(lambda: watcher.connected, timeout=TIMEOUT)
        watcher.watch(names[:-1])
        assert published.wait(names[0], active)  # reading the 29 has begun
        watcher.watch(names)  # while it reads the other 28
        assert published.wait(names[-1], active)
    finally:
        watcher.close()

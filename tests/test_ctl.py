"""hecatectl against a real hecated on a real socket: text, --json and exit codes."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from conftest import HECATECTL, Daemon, short_tempdir, wait_for
from ctl_support import ROOT, LineReader, clean_env, ctl, one_line_error, stop
from watch_support import write_rename_over

from hecated.tools.ctl import Exit

START_HINT = "systemctl --user start hecate.socket"

# -- no daemon ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["list"],
        ["list", "--json"],
        ["show", "hecate-foo"],
        ["paths", "hecate-foo"],
        ["register", "hecate-foo"],
        ["deregister", "hecate-foo"],
        ["purge", "hecate-foo", "--yes"],
        ["watch"],
    ],
)
def test_without_a_daemon_every_command_says_so_and_exits_3(home: Path, args: list[str]) -> None:
    result = ctl(home, *args)
    assert result.code == Exit.NOT_RUNNING == 3
    line = one_line_error(result)
    assert "not answering" in line
    assert str(home / ".hecate/hecate-daemon/sockets/api.sock") in line
    assert START_HINT in line
    assert result.out == ""


def test_status_without_a_daemon_explains_how_to_start_it(home: Path) -> None:
    result = ctl(home, "status")
    assert result.code == 3
    line = one_line_error(result)
    assert "hecated is not running" in line
    assert START_HINT in line and "`hecated`" in line
    assert result.out == ""

    result = ctl(home, "status", "--json")
    assert result.code == 3
    answer = result.json()
    assert answer["status"] == "not_running"
    assert answer["socket"] == str(home / ".hecate/hecate-daemon/sockets/api.sock")


def test_usage_errors_exit_2(home: Path) -> None:
    assert ctl(home).code == 2
    assert ctl(home, "frobnicate").code == 2
    assert ctl(home, "paths", "x", "--field", "nope").code == 2
    version = ctl(home, "--version")
    assert (version.code, version.out.split()[0]) == (0, "hecatectl")


# -- reading ------------------------------------------------------------------------------


def test_status(daemon: Daemon) -> None:
    daemon.register("hecate-traderd")
    result = ctl(daemon.home, "status")
    assert result.code == 0, result
    assert result.out.startswith("hecated ")
    assert "is running" in result.out
    assert f"pid:       {daemon.proc.pid}" in result.out
    assert f"socket:    {daemon.socket}" in result.out
    assert "plugins:   1" in result.out
    assert "uptime:" in result.out
    assert "status:    healthy\n" in result.out

    answer = ctl(daemon.home, "status", "--json").json()
    assert (answer["status"], answer["ready"]) == ("healthy", True)
    assert answer["pid"] == daemon.proc.pid
    assert answer["plugins"] == {"hecate-traderd": "stopped"}
    assert answer["plugin_count"] == 1
    assert answer["socket"] == str(daemon.socket)


def test_status_names_the_plugins_that_need_a_look(daemon: Daemon) -> None:
    daemon.register("hecate-fine")
    ns = daemon.root / "hecate-broken"
    ns.mkdir()
    tmp = ns / ".plugin.toml.new"
    tmp.write_text('name = "hecate-broken"\nversion "1"\n')
    tmp.rename(ns / "plugin.toml")  # whole at once: the watcher never sees half a file
    assert daemon.request("POST", "/api/rescan")[0] == 200  # synchronous: no guessing
    assert daemon.request("GET", "/api/plugins/hecate-broken")[2]["status"] == "invalid"
    out = ctl(daemon.home, "status").out
    assert "  hecate-broken: invalid plugin.toml line 2: " in out
    assert "hecate-fine" not in out  # stopped is no news


def test_list(daemon: Daemon) -> None:
    empty = ctl(daemon.home, "list")
    assert (empty.code, empty.out) == (0, "no plugins registered\n")
    assert ctl(daemon.home, "list", "--json").json() == []

    daemon.register("hecate-traderd", "0.1.0", "Trading")
    daemon.register("hecate-b", "2.0")
    result = ctl(daemon.home, "list")
    assert result.code == 0
    lines = result.out.splitlines()
    assert lines[0].split() == [
        "NAME",
        "VERSION",
        "STATUS",
        "UNIT",
        "REGISTERED",
        "APP",
        "SOCKET",
    ]
    assert lines[1].split() == [
        "hecate-b",
        "2.0",
        "stopped",
        "-",  # no user manager: no word of a unit
        "yes",
        "-",  # no manifest until the plugin answers on its socket
        str(daemon.root / "hecate-b/sockets/api.sock"),
    ]
    assert lines[2].split()[:3] == ["hecate-traderd", "0.1.0", "stopped"]

    answer = ctl(daemon.home, "--json", "list").json()  # --json before the command too
    assert [p["name"] for p in answer] == ["hecate-b", "hecate-traderd"]
    assert answer[1] == {
        "name": "hecate-traderd",
        "version": "0.1.0",
        "description": "Trading",
        "socket": str(daemon.root / "hecate-traderd/sockets/api.sock"),
        "status": "stopped",
        "registered": True,
        "display_name": None,
        "icon": None,
        "tag": None,
        "ui": False,
        "problems": [],
        "unit": None,
        "installed": False,
        "desired": None,
    }
    assert ctl(daemon.home, "list", "-q").out == "hecate-b\nhecate-traderd\n"


def test_show(daemon: Daemon) -> None:
    daemon.register("hecate-traderd", "0.1.0", "Trading daemon")
    result = ctl(daemon.home, "show", "hecate-traderd")
    assert result.code == 0
    fields = dict(line.split(":", 1) for line in result.out.splitlines())
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    assert fields["name"] == "hecate-traderd"
    assert fields["version"] == "0.1.0"
    assert fields["description"] == "Trading daemon"
    assert fields["status"] == "stopped"
    assert fields["manifest"] == str(daemon.root / "hecate-traderd/plugin.toml")
    assert fields["sqlite"] == str(daemon.root / "hecate-traderd/sqlite")
    assert fields["reckon_db"] == str(daemon.root / "hecate-traderd/reckon-db")

    answer = ctl(daemon.home, "show", "hecate-traderd", "--json").json()
    assert answer["name"] == "hecate-traderd"
    assert answer["base_dir"] == str(daemon.root / "hecate-traderd")
    assert answer["paths"]["connectors"] == str(daemon.root / "hecate-traderd/connectors")
    assert answer["registered_at"]


def test_show_an_invalid_plugin_toml_names_file_and_line(daemon: Daemon) -> None:
    daemon.register("hecate-broken")
    # Saved whole (by rename): the only states are the old entry and the broken one.
    write_rename_over(
        daemon.root / "hecate-broken/plugin.toml", 'name = "hecate-broken"\nversion = \n'
    )
    status, _, _ = daemon.request("POST", "/api/rescan")  # synchronous; the watcher sees it too
    assert status == 200

    def invalid() -> str | None:
        result = ctl(daemon.home, "show", "hecate-broken")
        return result.out if "invalid" in result.out else None

    out = wait_for(invalid, timeout=20)
    assert "plugin.toml:2" in out


def test_unknown_plugin_exits_4_and_bad_name_exits_1(daemon: Daemon) -> None:
    for args in (["show", "hecate-nope"], ["paths", "hecate-nope"], ["deregister", "hecate-nope"]):
        result = ctl(daemon.home, *args)
        assert result.code == Exit.NOT_FOUND == 4, result
        assert "hecate-nope" in one_line_error(result)
    result = ctl(daemon.home, "show", "Not_Valid")
    assert result.code == 1
    assert "invalid_name" in one_line_error(result)
    result = ctl(daemon.home, "register", "hecate-daemon")
    assert result.code == 1
    assert "reserved_name" in one_line_error(result)


def test_paths(daemon: Daemon) -> None:
    daemon.register("hecate-traderd")
    base = daemon.root / "hecate-traderd"
    result = ctl(daemon.home, "paths", "hecate-traderd")
    assert result.code == 0
    # shell-friendly: each line is KEY=VALUE a shell can eval
    pairs = dict(shlex.split(line)[0].split("=", 1) for line in result.out.splitlines())
    assert pairs == {
        "base_dir": str(base),
        "sqlite": str(base / "sqlite"),
        "reckon_db": str(base / "reckon-db"),
        "sockets": str(base / "sockets"),
        "run": str(base / "run"),
        "connectors": str(base / "connectors"),
        "socket": str(base / "sockets/api.sock"),
    }
    sq = ctl(daemon.home, "paths", "hecate-traderd", "--field", "sqlite")
    assert sq.out == f"{base / 'sqlite'}\n"
    assert ctl(daemon.home, "paths", "hecate-traderd", "--field", "reckon-db").out == (
        f"{base / 'reckon-db'}\n"
    )
    assert ctl(daemon.home, "paths", "hecate-traderd", "--json").json() == pairs
    assert ctl(daemon.home, "paths", "hecate-traderd", "--field", "run", "--json").json() == str(
        base / "run"
    )


# -- writing ------------------------------------------------------------------------------


def test_register_and_reregister(daemon: Daemon) -> None:
    result = ctl(
        daemon.home, "register", "hecate-traderd", "--version", "0.1.0", "--description", "T"
    )
    assert result.code == 0, result
    assert result.out.splitlines()[0] == "registered hecate-traderd 0.1.0"
    assert f"sqlite:      {daemon.root / 'hecate-traderd/sqlite'}" in result.out
    assert (daemon.root / "hecate-traderd/sqlite").is_dir()

    again = ctl(daemon.home, "register", "hecate-traderd", "--version", "0.2.0", "--json")
    assert again.code == 0
    answer = again.json()
    assert (answer["ok"], answer["name"]) == (True, "hecate-traderd")
    assert answer["paths"]["run"] == str(daemon.root / "hecate-traderd/run")
    assert daemon.request("GET", "/api/plugins/hecate-traderd")[2]["version"] == "0.2.0"
    assert ctl(daemon.home, "register", "hecate-traderd").out.startswith("re-registered")


def test_register_with_a_unit(daemon: Daemon) -> None:
    result = ctl(daemon.home, "register", "hecate-traderd", "--unit", "traderd.service")
    assert result.code == 0, result
    text = (daemon.root / "hecate-traderd" / "plugin.toml").read_text()
    assert 'unit = "traderd.service"' in text
    bad = ctl(daemon.home, "register", "hecate-other", "--unit", "/etc/x.service")
    assert bad.code != 0
    assert "not a valid unit" in bad.err
    assert not (daemon.root / "hecate-other").exists()


def test_deregister_keeps_the_data(daemon: Daemon) -> None:
    daemon.register("hecate-traderd")
    keep = daemon.root / "hecate-traderd/sqlite/keep.db"
    keep.write_text("data")
    result = ctl(daemon.home, "deregister", "hecate-traderd")
    assert result.code == 0
    assert "deregistered hecate-traderd" in result.out
    assert "hecatectl purge hecate-traderd" in result.out
    assert keep.read_text() == "data"
    assert daemon.request("GET", "/api/plugins/hecate-traderd")[0] == 404

    daemon.register("hecate-other")
    assert ctl(daemon.home, "deregister", "hecate-other", "--json").json() == {"ok": True}


def test_purge(daemon: Daemon) -> None:
    daemon.register("hecate-traderd")
    ns = daemon.root / "hecate-traderd"

    refused = ctl(daemon.home, "purge", "hecate-traderd", "--yes")
    assert refused.code == 1
    assert "still registered" in one_line_error(refused)
    assert "still_registered" in refused.err
    assert ns.is_dir()

    ctl(daemon.home, "deregister", "hecate-traderd")
    declined = ctl(daemon.home, "purge", "hecate-traderd", input="n\n")
    assert declined.code == 1
    assert "[y/N]" in declined.err and "not purged" in declined.err
    assert ns.is_dir()
    no_answer = ctl(daemon.home, "purge", "hecate-traderd", input="")  # EOF means no
    assert no_answer.code == 1 and ns.is_dir()

    confirmed = ctl(daemon.home, "purge", "hecate-traderd", input="y\n")
    assert confirmed.code == 0, confirmed
    assert confirmed.out == f"purged hecate-traderd: removed {ns}\n"
    assert not ns.exists()

    gone = ctl(daemon.home, "purge", "hecate-traderd", "--yes")
    assert gone.code == 4
    one_line_error(gone)

    daemon.register("hecate-b")
    ctl(daemon.home, "deregister", "hecate-b")
    answer = ctl(daemon.home, "purge", "hecate-b", "--yes", "--json").json()
    assert answer == {"ok": True, "purged": str(daemon.root / "hecate-b")}


def test_purge_refuses_a_running_plugin(daemon: Daemon) -> None:
    daemon.register("hecate-traderd")
    ctl(daemon.home, "deregister", "hecate-traderd")
    (daemon.root / "hecate-traderd/run/daemon.pid").write_text(f"{os.getpid()}\n")
    result = ctl(daemon.home, "purge", "hecate-traderd", "--yes")
    assert result.code == 1
    assert "plugin_running" in one_line_error(result)
    assert (daemon.root / "hecate-traderd").is_dir()


# -- which socket ----------------------------------------------------------------------------


def test_hecate_socket_path_is_honoured(home: Path) -> None:
    elsewhere = short_tempdir("hs")
    sock = elsewhere / "hecate.sock"
    d = Daemon(home, env={"HECATE_SOCKET_PATH": str(sock)}).start()
    try:
        assert sock.is_socket()
        with_env = ctl(home, "status", "--json", env=clean_env(home, HECATE_SOCKET_PATH=str(sock)))
        assert with_env.code == 0, with_env
        assert with_env.json()["socket"] == str(sock)
        assert ctl(home, "register", "hecate-a", env=clean_env(home, HECATE_SOCKET_PATH=str(sock)))

        # the well-known path has nobody on it
        assert ctl(home, "status").code == 3
        # --socket wins over everything, before or after the command
        assert ctl(home, "--socket", str(sock), "list", "-q").out == "hecate-a\n"
        assert ctl(home, "list", "-q", "--socket", str(sock)).out == "hecate-a\n"
        wrong = clean_env(home, HECATE_SOCKET_PATH=str(elsewhere / "nothing.sock"))
        assert ctl(home, "--socket", str(sock), "status", env=wrong).code == 0
        assert ctl(home, "status", env=wrong).code == 3
    finally:
        d.stop()
        import shutil

        shutil.rmtree(elsewhere, ignore_errors=True)


# -- doctor --------------------------------------------------------------------------------


def _findings(result) -> list[dict]:
    return result.json()["findings"]


def test_doctor_on_a_healthy_installation(daemon: Daemon) -> None:
    daemon.register("hecate-traderd")
    result = ctl(daemon.home, "doctor")
    assert result.code == 0, result
    assert "PROBLEM" not in result.out
    assert "no problems" in result.out
    assert f"answers on {daemon.socket}" in result.out
    # no units in this HOME: a warning with the fix, not a problem
    assert "hecate.socket and hecate.service not installed" in result.out
    assert "fix: hecated install-units" in result.out

    answer = ctl(daemon.home, "doctor", "--json").json()
    assert answer["ok"] is True and answer["problems"] == 0
    assert {f["level"] for f in answer["findings"]} <= {"ok", "info", "warning"}
    assert ctl(daemon.home, "doctor", "--strict").code == 1  # warnings count with --strict


def test_doctor_finds_problems_and_gives_fixes(daemon: Daemon) -> None:
    daemon.register("hecate-good")
    daemon.register("hecate-bad")
    daemon.register("hecate-open")
    ns_bad = daemon.root / "hecate-bad"
    (ns_bad / "plugin.toml").write_text('name = "hecate-bad"\nversion "1"\n')
    (ns_bad / "run/daemon.pid").write_text("999999999\n")  # no such process
    (daemon.root / "hecate-open").chmod(0o755)
    stale = ns_bad / "sockets/api.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on

    result = ctl(daemon.home, "doctor")
    assert result.code == 1, result
    out = result.out
    assert f"PROBLEM  invalid plugin.toml: {ns_bad / 'plugin.toml'}:2: invalid TOML" in out
    assert f"fix: edit {ns_bad / 'plugin.toml'} (line 2)" in out
    assert f"{daemon.root / 'hecate-open'} is mode 0755" in out
    assert f"fix: chmod 700 {daemon.root / 'hecate-open'}" in out
    assert f"stale pid file {ns_bad / 'run/daemon.pid'}" in out
    assert f"fix: rm {ns_bad / 'run/daemon.pid'}" in out
    assert f"stale socket {stale}" in out
    assert "namespace hecate-good: layout and permissions ok" in out

    answer = ctl(daemon.home, "doctor", "--json").json()
    assert answer["ok"] is False
    problems = [f for f in answer["findings"] if f["level"] == "problem"]
    assert {f["check"] for f in problems} == {"manifest", "permissions"}
    assert all(f["fix"] for f in problems)


def test_doctor_after_a_crash_finds_the_stale_socket_and_pid_file(home: Path) -> None:
    d = Daemon(home).start()
    d.stop(signal.SIGKILL)  # leaves run/daemon.pid and the socket file behind
    assert d.socket.is_socket()
    result = ctl(home, "doctor")
    assert result.code == 1
    assert f"stale socket {d.socket}" in result.out
    assert f"stale pid file {d.data_dir / 'run/daemon.pid'}" in result.out
    assert "hecated is not running" in result.out
    assert START_HINT in result.out


def test_doctor_sees_installed_units(home: Path) -> None:
    units = home / ".config/systemd/user"
    units.mkdir(parents=True)
    for unit in ("hecate.socket", "hecate.service"):
        (units / unit).write_text("[Unit]\n")
    result = ctl(home, "doctor", "--json")
    assert result.code == 0, result
    installed = [f for f in _findings(result) if f["check"] == "units"]
    assert [f["level"] for f in installed] == ["ok", "ok"]
    assert installed[0]["path"] == str(units / "hecate.socket")
    # then the socket unit is asked about; with no user manager that is skipped, not failed
    assert any(f["check"] == "systemd" for f in _findings(result))


def test_doctor_without_anything(home: Path) -> None:
    result = ctl(home, "doctor")
    assert result.code == 0, result
    assert f"{home / '.hecate'} does not exist yet" in result.out


# -- watch ---------------------------------------------------------------------------------


def _watch(home: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(HECATECTL), "watch", "--interval", "0.2", "--wait", "5", *args],
        env=clean_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_watch_json_follows_the_changes(daemon: Daemon) -> None:
    """Works against a daemon with the long poll and against one that ignores since/wait."""
    daemon.register("hecate-before")
    proc = _watch(daemon.home, "--json", "--count", "3")
    reader = LineReader(proc)
    try:
        first = json.loads(reader.line())
        assert first["event"] == "snapshot"
        assert [p["name"] for p in first["plugins"]] == ["hecate-before"]

        daemon.register("hecate-traderd", "0.1.0")
        added = json.loads(reader.line())
        assert added["event"] == "registered"
        assert added["plugin"]["name"] == "hecate-traderd"
        assert added["plugin"]["version"] == "0.1.0"

        daemon.register("hecate-traderd", "0.2.0")
        changed = json.loads(reader.line())
        assert changed["event"] == "updated"
        assert (changed["before"]["version"], changed["plugin"]["version"]) == ("0.1.0", "0.2.0")

        daemon.request("DELETE", "/api/plugins/hecate-before")
        removed = json.loads(reader.line())
        assert removed == {**removed, "event": "deregistered"}
        assert removed["plugin"]["name"] == "hecate-before"
        assert proc.wait(20) == 0  # --count 3 reached
    finally:
        reader.close()
        stop(proc)


def test_watch_text(daemon: Daemon) -> None:
    proc = _watch(daemon.home, "--count", "1")
    reader = LineReader(proc)
    try:
        assert reader.line().startswith("watching 0 plugin(s) on ")
        daemon.register("hecate-traderd", "0.1.0")
        line = reader.line()
        assert line.split()[1:] == ["registered", "hecate-traderd", "0.1.0", "stopped"]
        assert proc.wait(20) == 0
    finally:
        reader.close()
        stop(proc)


def test_watch_rides_out_a_daemon_restart(home: Path) -> None:
    d = Daemon(home).start()
    proc = _watch(home, "--json", "--count", "1")
    reader = LineReader(proc)
    try:
        assert json.loads(reader.line())["event"] == "snapshot"
        d.stop()
        d = Daemon(home).start()
        d.register("hecate-traderd")
        assert json.loads(reader.line())["plugin"]["name"] == "hecate-traderd"
        assert proc.wait(20) == 0
    finally:
        reader.close()
        stop(proc)
        d.stop()


# -- completion ------------------------------------------------------------------------------


def test_the_shipped_completion_script_is_the_generated_one(home: Path) -> None:
    generated = ctl(home, "completion", "bash")
    assert generated.code == 0
    assert generated.out == (ROOT / "packaging/hecatectl.bash").read_text(), (
        "regenerate: hecatectl completion bash > packaging/hecatectl.bash"
    )


def _complete(home: Path, line: str, env: dict[str, str]) -> list[str]:
    script = ROOT / "packaging/hecatectl.bash"
    words = line.split(" ")
    bash = (
        f"source {shlex.quote(str(script))}\n"
        f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "_hecatectl\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    out = subprocess.run(["bash", "-c", bash], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return sorted(w for w in out.stdout.splitlines() if w)


def test_bash_completion(daemon: Daemon) -> None:
    daemon.register("hecate-traderd")
    daemon.register("hecate-other")
    env = clean_env(daemon.home, PATH=f"{HECATECTL.parent}{os.pathsep}{os.environ['PATH']}")
    assert _complete(daemon.home, "hecatectl s", env) == ["show", "start", "status", "stop"]
    assert _complete(daemon.home, "hecatectl show hecate-t", env) == ["hecate-traderd"]
    assert _complete(daemon.home, "hecatectl purge ", env) == ["hecate-other", "hecate-traderd"]
    assert "--field" in _complete(daemon.home, "hecatectl paths x --f", env)
    assert _complete(daemon.home, "hecatectl paths x --field r", env) == ["reckon_db", "run"]

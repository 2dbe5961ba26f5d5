"""Installing plugins as unit files (issue 21): the check, the verifier, the write, the routes.

A unit file is checked before anything is written (``core/unitfile``: systemd's own
line rules, the first problem's line), then by ``systemd-analyze verify`` where it
is installed (the real binary, never an imitation), then written atomically into
``gitops/apps/`` of a real hecated's tree over its real socket. No systemd user
manager here: stopping the unit on uninstall is ``test_install_units.py``'s.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import Daemon
from ctl_support import ctl
from gitops_support import listed

from hecated.adapters.unitverify import SystemdAnalyze
from hecated.core import unitfile
from hecated.core.desired import Apps
from hecated.core.errors import AlreadyInstalledError, InvalidUnitFileError
from hecated.core.files import atomic_write, opened
from hecated.core.unitfile import UNIT_FILE_MAX
from hecated.tools.ctl import Exit

ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(not ANALYZE, reason="systemd-analyze is not installed")

SERVICE = "[Unit]\nDescription=an example plugin\n\n[Service]\nExecStart=/usr/bin/hecate-x\n"
CONTAINER = "[Unit]\nDescription=a container plugin\n\n[Container]\nImage=quay.io/x/y:1\n"

# (text, line of the first problem, what the message says)
BAD = [
    ("Description=x\n[Service]\nExecStart=/x\n", 1, "before any [Section]"),
    ("[Unit]\nDescription=x\nfoo\n[Service]\nExecStart=/x\n", 3, "not a Key=value line"),
    ("[Unit]\nDescription=x\nfoo \\\n  bar\n[Service]\nExecStart=/x\n", 4, "not a Key=value"),
    ("[Unit\nA=b\n[Service]\nExecStart=/x\n", 1, "section header"),
    ("[Unit]\n[Foo]\nA=b\n[Service]\nExecStart=/x\n", 2, "no section [Foo]"),
    ("[Unit]\n[Container]\nImage=x\n[Service]\nExecStart=/x\n", 2, "no section [Container]"),
    ("[Unit]\nDescription=caf\xe9\n[Service]\nExecStart=/x\n", 2, "not UTF-8"),
    ("[Unit]\r\nDescription=x\r\n", 1, "carriage return"),
    ("[Unit]\nDescription=a\x00b\n[Service]\nExecStart=/x\n", 2, "control character"),
    ("[Unit]\n=x\n[Service]\nExecStart=/x\n", 2, "is not a key name"),
    ("[Unit]\nDescription=x\n", 2, "without a [Service] section"),
    ("[Unit]\nDescription=x\n\n[Service]\nType=simple\n", 4, "has no ExecStart="),
    ("[Service]\nExecStart=/x\nExecStart=\n", 1, "has no ExecStart="),
    ("[Service]\nExecStart=/x\nExecStart=/y\n", 3, "second ExecStart="),
    ("\ufeff[Service]\nExecStart=/x\n", 1, "byte-order mark"),
]


def _bytes(text: str) -> bytes:
    # "\xe9" stands for a Latin-1 byte: the file as an editor in the wrong encoding wrote it.
    return text.encode("latin-1") if "\xe9" in text else text.encode()


# -- the check ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "line", "says"), BAD)
def test_each_problem_is_named_by_its_line(text: str, line: int, says: str) -> None:
    with pytest.raises(InvalidUnitFileError) as caught:
        unitfile.check("hecate-x", "service", _bytes(text))
    assert caught.value.line == line, caught.value.message
    assert caught.value.message.startswith(f"line {line}: "), caught.value.message
    assert says in caught.value.message


@pytest.mark.parametrize(
    "text",
    [
        SERVICE,
        # Comments between continued lines are skipped (systemd.syntax(5)); X- sections
        # are the user's; a oneshot may have several ExecStart=; an empty value resets.
        "[Unit]\nDescription=a \\\n# not here\n  b\n[X-Hecate]\nK=v\n[Service]\nType=oneshot\n"
        "ExecStart=/a\nExecStart=/b\n",
        "; comment\n# comment\n[Service]\nExecStart=/a\nExecStart=\nExecStart=/b\n",
        "[Service]\n  ExecStart = /a --flag=\\\\\n",
    ],
)
def test_what_systemd_reads_is_accepted(text: str) -> None:
    assert unitfile.check("hecate-x", "service", text.encode()).unit == "hecate-x.service"


def test_a_container_needs_its_image() -> None:
    assert unitfile.check("hecate-x", "container", CONTAINER.encode()).filename == (
        "hecate-x.container"
    )
    with pytest.raises(InvalidUnitFileError, match=r"^line 4: \[Container\] has no Image="):
        unitfile.check("hecate-x", "container", b"[Unit]\nA=b\n\n[Container]\nExec=/x\n")
    with pytest.raises(InvalidUnitFileError, match="no section"):
        unitfile.check("hecate-x", "container", b"[Container]\nImage=x\n[Network]\n")


def test_the_size_is_bounded() -> None:
    limit = 32 * 1024  # as documented (docs/hecatectl.md)
    whole = SERVICE.encode() + b"#" * (limit - len(SERVICE) - 1) + b"\n"
    assert len(whole) == limit
    unitfile.check("hecate-x", "service", whole)
    with pytest.raises(InvalidUnitFileError, match="at most") as caught:
        unitfile.check("hecate-x", "service", whole + b"\n")
    assert caught.value.line is None


def _analyze(path: Path, runtime: Path) -> str:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    cmd = [str(ANALYZE), "--user", "--man=no", "verify", str(path)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30).stderr


@needs_analyze
def test_the_lines_are_the_ones_systemd_names(tmp_path: Path) -> None:
    """Where systemd itself complains about a line (it warns and ignores it), the check
    names the same line: the model is systemd's parser, continued lines included."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    compared = 0
    for i, (text, _, _) in enumerate(BAD):
        if "\x00" in text:
            continue  # systemd ends a line at a NUL too (read_line), and so counts one more
        path = tmp_path / f"case{i}.service"
        path.write_bytes(_bytes(text))
        with pytest.raises(InvalidUnitFileError) as caught:
            unitfile.check("hecate-x", "service", _bytes(text))
        said = [x for x in _analyze(path, runtime).splitlines() if x.startswith(f"{path}:")]
        if said:
            assert said[0].startswith(f"{path}:{caught.value.line}: "), (text, said)
            compared += 1
    assert compared >= 5


# -- the second check: systemd-analyze verify --------------------------------------------------


@needs_analyze
def test_verify_names_the_line_of_what_systemd_would_ignore() -> None:
    text = SERVICE + "Restart=sometimes\nExecStrat=/typo\n"
    unit = unitfile.check("hecate-x", "service", text.encode())
    with pytest.raises(InvalidUnitFileError) as caught:
        SystemdAnalyze().verify(unit)
    assert caught.value.line == 6, caught.value.message
    assert "restart" in caught.value.message and "systemd-analyze" in caught.value.message


@needs_analyze
def test_verify_does_not_require_the_program_to_exist_yet() -> None:
    """The unit may come before its program (a package, a build, an image): verify's
    "is not executable" is no finding, and it runs nothing."""
    text = "[Unit]\nDescription=x\n[Service]\nExecStart=/nonexistent/hecate-x --serve\n"
    assert SystemdAnalyze().verify(unitfile.check("hecate-x", "service", text.encode())) == (
        "systemd-analyze"
    )


def test_a_verifier_that_cannot_run_says_nothing(tmp_path: Path) -> None:
    unit = unitfile.check("hecate-x", "service", SERVICE.encode())
    assert SystemdAnalyze(binary=str(tmp_path / "no-such-tool")).verify(unit) is None
    assert SystemdAnalyze(binary="/bin/false").verify(unit) is None  # fails without a word
    container = unitfile.check("hecate-x", "container", CONTAINER.encode())
    assert SystemdAnalyze().verify(container) is None  # Quadlet's, not systemd's
    # No room for its temp copy (a read-only or full /tmp): nothing said, never a 500.
    assert SystemdAnalyze(binary="/bin/true", scratch=str(tmp_path / "none")).verify(unit) is None


# -- the API -------------------------------------------------------------------------------------


def apps(d: Daemon) -> Path:
    return d.root / "gitops" / "apps"


def entries(d: Daemon) -> list[str]:
    return sorted(os.listdir(apps(d))) if apps(d).exists() else []


def install(d: Daemon, **body: object):
    return d.request("POST", "/api/plugins/install", body)


@pytest.mark.parametrize(("text", "line", "says"), BAD[:4] + BAD[10:12])
def test_a_bad_unit_file_is_a_400_naming_its_line_and_nothing_is_written(
    daemon: Daemon, home: Path, text: str, line: int, says: str
) -> None:
    status, _, body = install(daemon, unit=text, kind="service", name="hecate-x")
    assert status == 400, body
    assert body["code"] == "invalid_unit_file" and body["ok"] is False
    assert body["line"] == line and body["error"].startswith(f"line {line}: ")
    assert entries(daemon) == []  # no file, no temp file
    path = home / "hecate-x.service"
    path.write_bytes(_bytes(text))
    status, _, body = install(daemon, path=str(path))
    assert (status, body["line"]) == (400, line), body
    assert entries(daemon) == []


@needs_analyze
def test_what_verify_finds_is_a_400_and_nothing_is_written(daemon: Daemon) -> None:
    text = SERVICE + "ExecStrat=/typo\n"
    status, _, body = install(daemon, unit=text, kind="service", name="hecate-x")
    assert status == 400, body
    assert body["line"] == 6 and "ExecStrat" in body["error"]
    assert entries(daemon) == []


def test_install_writes_the_file_into_the_gitops_tree(daemon: Daemon) -> None:
    status, _, body = install(daemon, unit=SERVICE, kind="service", name="hecate-x")
    assert status == 201, body
    path = apps(daemon) / "hecate-x.service"
    assert body["path"] == str(path) and body["unit"] == "hecate-x.service"
    assert body["kind"] == "service" and body["replaced"] == []
    assert body["verified"] == ("systemd-analyze" if ANALYZE else None)
    assert path.read_text() == SERVICE
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert entries(daemon) == ["hecate-x.service"]
    # The gitops tree is no plugin and no namespace was made for it by the install.
    assert not (daemon.root / "hecate-x").exists() or (daemon.root / "hecate-x").is_dir()


def test_a_second_install_is_a_409_unless_replace(daemon: Daemon) -> None:
    assert install(daemon, unit=SERVICE, kind="service", name="hecate-x")[0] == 201
    path = apps(daemon) / "hecate-x.service"
    # A hard link to the old file: a write in place would change what it reads too.
    keep = daemon.home / "old.service"
    os.link(path, keep)
    changed = SERVICE.replace("hecate-x", "hecate-x --v2")
    status, _, body = install(daemon, unit=changed, kind="service", name="hecate-x")
    assert status == 409 and body["code"] == "already_installed", body
    assert path.read_text() == SERVICE
    status, _, body = install(daemon, unit=changed, kind="service", name="hecate-x", replace=True)
    assert status == 200, body
    assert body["replaced"] == [str(path)]
    assert path.read_text() == changed
    assert keep.read_text() == SERVICE  # replaced by a rename, not rewritten
    # The other kind of the same plugin (same unit, hecate-x.service) replaces it too.
    status, _, body = install(daemon, unit=CONTAINER, kind="container", name="hecate-x")
    assert status == 409, body
    status, _, body = install(
        daemon, unit=CONTAINER, kind="container", name="hecate-x", replace=True
    )
    assert status == 200 and body["replaced"] == [str(path)], body
    assert entries(daemon) == ["hecate-x.container"]


def test_without_replace_an_existing_name_is_never_overwritten(tmp_path: Path) -> None:
    """The write's last step links the temp file into place, which the kernel refuses
    when the name exists (a file that appeared after the look, a dangling symlink)."""
    (tmp_path / "hecate-x.service").write_text("theirs")
    (tmp_path / "hecate-y.service").symlink_to(tmp_path / "nowhere")
    with opened(os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)) as fd:
        for name in ("hecate-x.service", "hecate-y.service"):
            with pytest.raises(FileExistsError):
                atomic_write(fd, name, b"ours", replace=False)
        atomic_write(fd, "hecate-z.service", b"ours", replace=False)
    assert (tmp_path / "hecate-x.service").read_text() == "theirs"
    assert not (tmp_path / "nowhere").exists()
    assert sorted(os.listdir(tmp_path)) == [f"hecate-{c}.service" for c in "xyz"]  # no temps


def test_racing_installs_of_one_name_one_wins(tmp_path: Path) -> None:
    apps_dir = Apps(tmp_path / "gitops")
    results: list[str] = []
    barrier = threading.Barrier(8)

    def one(i: int) -> None:
        text = SERVICE.replace("hecate-x", f"hecate-x --n={i}").encode()
        unit = unitfile.check("hecate-x", "service", text)
        barrier.wait()
        try:
            apps_dir.install(unit)
            results.append("won")
        except AlreadyInstalledError:
            results.append("409")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["409"] * 7 + ["won"]
    assert os.listdir(apps_dir.dir) == ["hecate-x.service"]


def test_two_installs_of_one_name_at_once_one_wins(daemon: Daemon) -> None:
    """Without replace the file is linked into place: the kernel lets one of two
    simultaneous installs have the name, never both (and the loser leaves no temp)."""
    results: list[int] = []
    barrier = threading.Barrier(8)

    def one(i: int) -> None:
        barrier.wait()
        text = SERVICE.replace("hecate-x", f"hecate-x --n={i}")
        results.append(install(daemon, unit=text, kind="service", name="hecate-x")[0])

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [201] + [409] * 7
    assert entries(daemon) == ["hecate-x.service"]


def test_install_from_a_path_reads_the_file_as_it_is(daemon: Daemon, home: Path) -> None:
    source = home / "src" / "hecate-x.container"
    source.parent.mkdir()
    source.write_text(CONTAINER)
    status, _, body = install(daemon, path=str(source))
    assert status == 201, body
    assert body["name"] == "hecate-x" and body["kind"] == "container"
    assert (apps(daemon) / "hecate-x.container").read_text() == CONTAINER
    assert source.read_text() == CONTAINER  # the source is left as it was


def test_a_path_is_read_without_tricks(daemon: Daemon, home: Path) -> None:
    real = home / "real.service"
    real.write_text(SERVICE)
    link = home / "hecate-x.service"
    link.symlink_to(real)
    status, _, body = install(daemon, path=str(link))
    assert status == 409 and body["code"] == "unsafe_path", body
    fifo = home / "hecate-y.service"
    os.mkfifo(fifo)  # a reader that blocked on it would hang the request
    status, _, body = install(daemon, path=str(fifo))
    assert status == 409 and body["code"] == "unsafe_path", body
    big = home / "hecate-z.service"
    big.write_bytes(SERVICE.encode() + b"#" * UNIT_FILE_MAX)
    status, _, body = install(daemon, path=str(big))
    assert status == 400 and body["code"] == "invalid_unit_file", body
    odd = [f"/{'x' * 300}.service", "/tmp/\ud800.service", f"{home}/none/hecate-x.service"]
    odd += ["relative/hecate-x.service", str(home / "none.service"), str(home / "x.txt")]
    for path in odd:
        status, _, body = install(daemon, path=path)
        assert status == 400, (path, body)
    assert entries(daemon) == []


@pytest.mark.parametrize(
    "body",
    [
        {"unit": SERVICE, "kind": "service"},
        {"unit": SERVICE, "kind": "socket", "name": "hecate-x"},
        {"unit": 7, "kind": "service", "name": "hecate-x"},
        {"unit": SERVICE, "kind": "service", "name": "Hecate-X"},
        {"unit": SERVICE, "kind": "service", "name": "gitops"},
        {"unit": SERVICE, "kind": "service", "name": "hecate-daemon"},
        {"unit": SERVICE, "kind": "service", "name": "hecate-x", "replace": "yes"},
        {"unit": SERVICE, "kind": "service", "name": "hecate-x", "path": "/x.service"},
        {"unit": SERVICE, "kind": "service", "name": "hecate-x", "other": 1},
        {"unit": "[Service]\nExecStart=/x\ud800\n", "kind": "service", "name": "hecate-x"},
    ],
)
def test_a_bad_request_is_a_400_and_nothing_is_written(daemon: Daemon, body: dict) -> None:
    status, _, answer = install(daemon, **body)
    assert status == 400, answer
    assert answer["ok"] is False and answer["code"]
    assert entries(daemon) == []


def test_apps_that_leads_out_of_the_tree_is_refused(daemon: Daemon, home: Path) -> None:
    elsewhere = home / "elsewhere"
    elsewhere.mkdir()
    (daemon.root / "gitops").mkdir()
    (daemon.root / "gitops" / "apps").symlink_to(elsewhere)
    status, _, body = install(daemon, unit=SERVICE, kind="service", name="hecate-x")
    assert status == 409 and body["code"] == "unsafe_path", body
    assert os.listdir(elsewhere) == []
    status, _, body = daemon.request("POST", "/api/plugins/hecate-x/uninstall")
    assert status == 409 and body["code"] == "unsafe_path", body


def test_a_directory_in_the_way_is_refused_not_replaced(daemon: Daemon) -> None:
    (apps(daemon) / "hecate-x.service").mkdir(parents=True)
    for replace in (False, True):
        body = {"unit": SERVICE, "kind": "service", "name": "hecate-x", "replace": replace}
        status, _, answer = install(daemon, **body)
        assert status == 409 and answer["code"] == "unsafe_path", answer
    status, _, answer = daemon.request("POST", "/api/plugins/hecate-x/uninstall")
    assert status == 409 and answer["code"] == "unsafe_path", answer
    assert entries(daemon) == ["hecate-x.service"] and (apps(daemon) / "hecate-x.service").is_dir()


def test_a_crashed_writers_temp_file_is_cleaned_by_the_next_install(daemon: Daemon) -> None:
    apps(daemon).mkdir(parents=True)
    crashed = apps(daemon) / ".hecate-x.service.1-deadbeef.0123abcd.tmp"
    crashed.write_text("[Service]\nExecSt")
    assert install(daemon, unit=SERVICE, kind="service", name="hecate-x")[0] == 201
    assert entries(daemon) == ["hecate-x.service"]


def test_uninstall_removes_the_file_and_keeps_the_data(daemon: Daemon) -> None:
    status, _, body = daemon.register("hecate-x")
    assert status == 201, body
    data = daemon.root / "hecate-x" / "sqlite" / "orders.db"
    data.write_bytes(b"keep me")
    assert install(daemon, unit=SERVICE, kind="service", name="hecate-x")[0] == 201
    status, _, body = daemon.request("POST", "/api/plugins/hecate-x/uninstall")
    assert status == 200, body
    assert body["removed"] == [str(apps(daemon) / "hecate-x.service")]
    assert body["unit"] == "hecate-x.service"
    assert entries(daemon) == []
    assert data.read_bytes() == b"keep me"
    assert (daemon.root / "hecate-x" / "plugin.toml").exists()  # still registered
    status, _, body = daemon.request("POST", "/api/plugins/hecate-x/uninstall")
    assert status == 404 and body["code"] == "not_found", body
    status, _, body = daemon.request("POST", "/api/plugins/Bad/uninstall")
    assert status == 400, body


def test_uninstall_of_a_plugin_the_system_tree_installs_is_a_conflict(daemon: Daemon) -> None:
    system = daemon.root / "gitops" / "system"
    system.mkdir(parents=True)
    (system / "hecate-x.container").write_text(SERVICE)
    status, _, body = daemon.request("POST", "/api/plugins/hecate-x/uninstall")
    assert status == 409 and body["code"] == "still_registered", body
    assert "gitops/system/hecate-x.container" in body["error"], body
    assert "which hecated does not write" in body["error"], body
    assert (system / "hecate-x.container").exists()


def test_a_system_dir_that_is_no_directory_does_not_block_an_apps_uninstall(
    daemon: Daemon,
) -> None:
    """A ``system/`` that is a plain file (or a symlink the reconciler ignores) is no
    install of the plugin: the uninstall of its ``apps/`` file goes on."""
    status, _, body = daemon.request(
        "POST", "/api/plugins/install", {"unit": SERVICE, "kind": "service", "name": "hecate-x"}
    )
    assert status == 201, body
    # The reconciler makes system/ and apps/ itself: once it has seen the file, put a
    # plain file where its system/ is.
    listed(daemon, lambda row: row["desired"] is not None, "hecate-x")
    system = daemon.root / "gitops" / "system"
    system.rmdir()
    system.write_text("not a directory\n")
    status, _, body = daemon.request("POST", "/api/plugins/hecate-x/uninstall")
    assert status == 200, body
    assert entries(daemon) == []


# -- hecatectl -------------------------------------------------------------------------------------


def test_hecatectl_install_and_uninstall(daemon: Daemon, home: Path) -> None:
    source = home / "hecate-x.service"
    source.write_text(SERVICE)
    result = ctl(home, "install", str(source))
    assert result.code == Exit.OK, result
    path = apps(daemon) / "hecate-x.service"
    assert result.out.startswith("installed hecate-x (hecate-x.service") and str(path) in result.out
    assert path.read_text() == SERVICE and stat.S_IMODE(path.stat().st_mode) == 0o600
    result = ctl(home, "install", str(source))
    assert result.code == Exit.ERROR and "already_installed" in result.err, result
    source.write_text(SERVICE + "# v2\n")
    result = ctl(home, "install", str(source), "--replace", "--json")
    assert result.code == Exit.OK, result
    assert result.json()["replaced"] == [str(path)]
    assert path.read_text() == SERVICE + "# v2\n"
    # Once the reconciler has found it: list and show say where the file is.
    listed(daemon, lambda row: row["desired"] is not None, "hecate-x")
    result = ctl(home, "show", "hecate-x")
    shown = dict(line.split(":", 1) for line in result.out.splitlines())
    assert shown["installed"].strip() == f"{path} (service -> hecate-x.service)", result
    assert shown["  linked"].strip() in ("yes", "no"), result
    bad = home / "hecate-y.service"
    bad.write_text("[Unit]\nDescription=y\nno equals sign\n")
    result = ctl(home, "install", str(bad))
    assert result.code == Exit.ERROR, result
    assert f"{bad}: line 3: " in result.err and "(invalid_unit_file)" in result.err
    assert entries(daemon) == ["hecate-x.service"]
    result = ctl(home, "uninstall", "hecate-x")
    assert result.code == Exit.OK, result
    assert "uninstalled hecate-x" in result.out and "data kept" in result.out
    assert entries(daemon) == []
    result = ctl(home, "uninstall", "hecate-x")
    assert result.code == Exit.NOT_FOUND, result

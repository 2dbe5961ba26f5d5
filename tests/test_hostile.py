"""A hostile tree: symlinks out of it, FIFOs, huge files, closed permissions, a full disk.

In every case the daemon refuses (a 4xx, or 507 for the disk) or reports the
entry as ``invalid``; it keeps serving, writes nothing outside the tree, and
an entry that was registered before is still there, byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, short_tempdir
from rel_support import WITHOUT_DAC, PrefixedDaemon, needs_root, raw_exchange, snapshot, stop, tmpfs

from hecated.core.layout import Layout

VALID = 'schema = 1\nname = "{name}"\nversion = "6.6.6"\ndescription = "planted"\n'


@pytest.fixture
def outside(home: Path) -> Path:
    """A directory beside the tree with things worth stealing or clobbering."""
    out = home / "outside"
    out.mkdir(mode=0o700)
    (out / "secret.txt").write_text("top secret\n")
    (out / "plugin.toml").write_text(VALID.format(name="evil"))
    (out / "sqlite").mkdir()
    (out / "sqlite" / "precious.db").write_bytes(b"precious")
    return out


@pytest.fixture
def hdaemon(home: Path) -> Iterator[Daemon]:
    d = Daemon(home).start()
    yield d
    stop(d)
    assert "Traceback" not in d.log() and "internal error" not in d.log(), d.log()


def rescan(daemon: Daemon) -> None:
    """The synchronous rescan: when it answers, the index holds what the tree holds.

    (SIGHUP rescans too, but nothing says when it is done; a watcher would do the
    same per name.)"""
    status, _, body = daemon.request("POST", "/api/rescan")
    assert status == 200 and body["ok"], body


def listed(daemon: Daemon) -> dict[str, dict]:
    status, _, body = daemon.request("GET", "/api/plugins")
    assert status == 200
    return {p["name"]: p for p in body}


def keep_entry(daemon: Daemon) -> bytes:
    """An entry registered before the hostility starts; returns its file's bytes."""
    status, _, _ = daemon.register("keep", "1.0", "registered before")
    assert status == 201
    return (daemon.root / "keep" / "plugin.toml").read_bytes()


def assert_kept(daemon: Daemon, before: bytes) -> None:
    assert (daemon.root / "keep" / "plugin.toml").read_bytes() == before
    status, _, body = daemon.request("GET", "/api/plugins/keep")
    assert status == 200 and body["status"] != "invalid" and body["version"] == "1.0"


def assert_error(answer: tuple, status: int | tuple[int, ...], code: str | None = None) -> dict:
    got, headers, body = answer
    statuses = (status,) if isinstance(status, int) else status
    assert got in statuses, answer
    assert headers.get("Content-Type", "").startswith("application/json")
    assert set(body) == {"ok", "error", "code"} and body["ok"] is False, body
    assert isinstance(body["error"], str) and body["error"], body
    if code:
        assert body["code"] == code, body
    return body


def test_namespace_that_is_a_symlink_out_of_the_tree(hdaemon: Daemon, outside: Path) -> None:
    kept = keep_entry(hdaemon)
    before = snapshot(outside)
    (hdaemon.root / "evil").symlink_to(outside)
    rescan(hdaemon)
    entry = listed(hdaemon)["evil"]
    assert entry["status"] == "invalid"  # reported, never followed
    status, _, detail = hdaemon.request("GET", "/api/plugins/evil")
    assert status == 200 and "symlink" in detail["error"]["message"]
    assert "planted" not in json.dumps(detail)  # the outside file was not read

    assert_error(hdaemon.register("evil"), 409, "unsafe_path")
    assert_error(hdaemon.request("DELETE", "/api/plugins/evil"), 409, "unsafe_path")
    assert_error(hdaemon.request("POST", "/api/plugins/evil/purge"), 409, "unsafe_path")
    assert snapshot(outside) == before
    assert (hdaemon.root / "evil").is_symlink()
    assert_kept(hdaemon, kept)


def test_subdirectory_symlinks_are_refused_and_never_followed_by_purge(
    hdaemon: Daemon, outside: Path
) -> None:
    before = snapshot(outside)
    half = hdaemon.root / "half"
    half.mkdir(mode=0o700)
    (half / "sqlite").symlink_to(outside / "sqlite")
    assert_error(hdaemon.register("half"), 409, "unsafe_path")

    # A deregistered namespace whose run/ and a data file point outside: purge removes
    # the links themselves, never what they point at.
    assert hdaemon.register("gone")[0] == 201
    assert hdaemon.request("DELETE", "/api/plugins/gone")[0] == 200
    gone = hdaemon.root / "gone"
    os.rmdir(gone / "run")
    (gone / "run").symlink_to(outside)
    (gone / "sqlite" / "db").symlink_to(outside / "sqlite" / "precious.db")
    status, _, body = hdaemon.request("POST", "/api/plugins/gone/purge")
    assert status == 200, body
    assert not gone.exists()
    assert snapshot(outside) == before


def test_plugin_toml_that_is_a_symlink(hdaemon: Daemon, outside: Path) -> None:
    kept = keep_entry(hdaemon)
    before = snapshot(outside)
    ns = hdaemon.root / "linked"
    Layout.at(hdaemon.root).ensure_namespace("linked")
    (outside / "linked.toml").write_text(VALID.format(name="linked"))
    before = snapshot(outside)
    (ns / "plugin.toml").symlink_to(outside / "linked.toml")
    rescan(hdaemon)
    entry = listed(hdaemon)["linked"]
    assert entry["status"] == "invalid" and entry["version"] is None  # not read through

    # Registering replaces the link with a real file; the target is untouched.
    status, _, _ = hdaemon.register("linked", "2.0")
    assert status in (200, 201)
    assert not (ns / "plugin.toml").is_symlink()
    assert snapshot(outside) == before
    # Deregistering a symlinked plugin.toml unlinks the link only.
    (ns / "plugin.toml").unlink()
    (ns / "plugin.toml").symlink_to(outside / "linked.toml")
    assert hdaemon.request("DELETE", "/api/plugins/linked")[0] == 200
    assert snapshot(outside) == before
    assert_kept(hdaemon, kept)


def test_plugin_toml_that_is_a_fifo_does_not_hang_start_or_requests(home: Path) -> None:
    layout = Layout.at(home / ".hecate")
    layout.ensure_layout()
    layout.ensure_namespace("piped")
    os.mkfifo(layout.manifest_path("piped"), 0o600)
    daemon = Daemon(home).start()  # the start-up scan meets the FIFO first
    try:
        entry = listed(daemon)["piped"]
        assert entry["status"] == "invalid"
        status, _, detail = daemon.request("GET", "/api/plugins/piped")
        assert status == 200 and "regular file" in detail["error"]["message"]
        assert daemon.register("piped")[0] in (200, 201)  # a real entry replaces it
        assert listed(daemon)["piped"]["status"] != "invalid"
        assert daemon.request("GET", "/health")[0] == 200
    finally:
        stop(daemon)


def test_a_100_mb_plugin_toml_is_refused_unread(hdaemon: Daemon) -> None:
    kept = keep_entry(hdaemon)
    Layout.at(hdaemon.root).ensure_namespace("huge")
    path = hdaemon.root / "huge" / "plugin.toml"
    # Written beside the tree and renamed in: the test is about size, not about a
    # writer caught half way (a partial file would be small, valid and "stopped").
    staged = hdaemon.home / "huge.toml"
    with staged.open("wb") as fh:  # valid TOML all the way: only its size is wrong
        fh.write(VALID.format(name="huge").encode() + b"#")
        chunk = b"x" * (1 << 20)
        for _ in range(100):
            fh.write(chunk)
        fh.write(b"\n")
    os.replace(staged, path)
    rescan(hdaemon)
    entry = listed(hdaemon)["huge"]
    assert entry["status"] == "invalid"
    detail = hdaemon.request("GET", "/api/plugins/huge")[2]
    assert "bytes" in detail["error"]["message"]
    assert_kept(hdaemon, kept)


def test_a_100_mb_request_body_is_refused_and_others_are_served(hdaemon: Daemon) -> None:
    status, _, raw = raw_exchange(
        hdaemon.socket,
        b"POST /api/plugins/register HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 104857600\r\n\r\n"
        + b'{"name": "'
        * 1000,
    )
    assert status == 413, raw
    assert json.loads(raw)["code"] == "body_too_large"
    assert hdaemon.request("GET", "/health")[0] == 200


@needs_root
def test_unreadable_files_and_directories(home: Path) -> None:
    """Run as root without DAC override: mode bits bind the daemon like any user."""
    layout = Layout.at(home / ".hecate")
    layout.ensure_layout()
    for name in ("locked", "shut", "frozen"):
        layout.ensure_namespace(name)
    (home / ".hecate" / "locked" / "plugin.toml").write_text(VALID.format(name="locked"))
    (home / ".hecate" / "locked" / "plugin.toml").chmod(0)
    daemon = PrefixedDaemon(home, WITHOUT_DAC).start()
    try:
        kept = keep_entry(daemon)
        (home / ".hecate" / "shut").chmod(0)
        (home / ".hecate" / "frozen").chmod(0o500)
        rescan(daemon)
        entries = listed(daemon)
        assert entries["shut"]["status"] == "invalid"
        assert entries["locked"]["status"] == "invalid"
        detail = daemon.request("GET", "/api/plugins/locked")[2]
        assert "permission denied" in detail["error"]["message"].lower()

        # A namespace the daemon cannot open: refused with a JSON error, never a 500.
        assert_error(daemon.register("shut"), (409, 507))
        assert_error(daemon.request("DELETE", "/api/plugins/shut"), (404, 409, 507))
        assert_error(daemon.request("POST", "/api/plugins/shut/purge"), (404, 409, 507))
        # A namespace it cannot write: the disk refused, said so.
        assert_error(daemon.register("frozen"), 507, "storage_error")
        assert not [e for e in os.listdir(home / ".hecate" / "frozen") if e.endswith(".tmp")]
        assert daemon.request("GET", "/health")[0] == 200
        assert_kept(daemon, kept)
    finally:
        stop(daemon)
        for name in ("shut", "frozen"):
            (home / ".hecate" / name).chmod(0o700)


@needs_root
def test_full_disk(outside_of_home: Path) -> None:
    disk = outside_of_home / "disk"
    with tmpfs(disk, "2m"):
        daemon = Daemon(disk)
        daemon.stderr_path = outside_of_home / "hecated.stderr"  # the log must not need the disk
        daemon.start()
        try:
            kept = keep_entry(daemon)
            filler = disk / "filler"
            with filler.open("wb") as fh:
                try:
                    while True:
                        fh.write(b"\0" * 65536)
                        fh.flush()
                except OSError:
                    pass
            assert_error(daemon.register("newcomer"), 507, "storage_error")
            assert_error(daemon.register("keep", "2.0", "rewrite"), 507, "storage_error")
            assert_kept(daemon, kept)
            temps = [p for p in disk.rglob("*.tmp")]
            assert not temps, temps
            assert "newcomer" not in listed(daemon)
            assert daemon.request("GET", "/health")[0] == 200
            filler.unlink()
            assert daemon.register("newcomer")[0] == 201
        finally:
            stop(daemon)


@pytest.fixture
def outside_of_home() -> Iterator[Path]:
    path = short_tempdir("hcfd")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_chunked_body_over_the_limit_is_413_not_silently_cut(hdaemon: Daemon) -> None:
    """Valid JSON, then 70 KiB of blanks, sent chunked: cut at 64 KiB it would parse."""
    body = b'{"name": "sneaky"}' + b" " * (70 * 1024)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 8192]), body[i : i + 8192])
        for i in range(0, len(body), 8192)
    )
    status, _, raw = raw_exchange(
        hdaemon.socket,
        b"POST /api/plugins/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n",
    )
    assert status == 413, raw
    assert json.loads(raw)["code"] == "body_too_large"
    assert not (hdaemon.root / "sneaky").exists()


@pytest.mark.parametrize(
    "plant",
    ["99999999999999999999", "2147483648", "-1", "0", "garbage", "fifo", "dir", "symlink"],
)
def test_whatever_a_plugin_leaves_in_run_the_listing_still_answers(
    hdaemon: Daemon, outside: Path, plant: str
) -> None:
    """run/daemon.pid and daemon.state are written by plugins: the list must survive them."""
    assert hdaemon.register("runner")[0] == 201
    run = hdaemon.root / "runner" / "run"
    for name in ("daemon.pid", "daemon.state"):
        target = run / name
        if plant == "fifo":
            os.mkfifo(target)
        elif plant == "dir":
            target.mkdir()
        elif plant == "symlink":
            target.symlink_to(outside / "secret.txt")
        else:
            target.write_text(plant + "\n")
    status, _, body = hdaemon.request("GET", "/api/plugins")
    assert status == 200, body
    assert {p["name"]: p["status"] for p in body}["runner"] == "stopped"
    status, _, detail = hdaemon.request("GET", "/api/plugins/runner")
    assert status == 200 and detail["pid"] is None, detail
    assert "secret" not in json.dumps(detail)

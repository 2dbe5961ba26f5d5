"""Hostile review, purge, run state and owners (issue 23: defects 2, 3, 7 and 8, and the
minor nanoseconds). Each case runs a real daemon against a real tree; the attacker is
a real process (a swapper, a listener with a full queue, another user's server).

These tests speak only HTTP and the filesystem, so the same file runs against an older
tree (``PYTHONPATH=old/tree pytest tests/test_hostile_rooms.py``) to show each failing
before its fix.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, short_tempdir, wait_for
from ctl_support import ctl
from rel_support import AS_NOBODY, needs_root, nobody_python, stop

NOBODY_UID = 65534


@pytest.fixture
def hdaemon(home: Path) -> Iterator[Daemon]:
    d = Daemon(home, env={"HECATE_PROBE_INTERVAL": "0.3"}).start()
    yield d
    stop(d)
    assert "Traceback" not in d.log() and "internal error" not in d.log(), d.log()[-3000:]


def deregistered(daemon: Daemon, name: str) -> Path:
    """A namespace with data and no registration: what purge is for."""
    assert daemon.register(name)[0] == 201
    ns = daemon.root / name
    (ns / "sqlite" / "data.db").write_bytes(b"precious")
    assert daemon.request("DELETE", f"/api/plugins/{name}")[0] == 200
    return ns


def purge(daemon: Daemon, name: str) -> tuple[int, dict]:
    """POST purge; a purge that hangs fails the test by the client's timeout (10 s)."""
    status, _, body = daemon.request("POST", f"/api/plugins/{name}/purge")
    return status, body


# -- 3: a full listen queue is a listener ---------------------------------------------------


def test_purge_refuses_a_plugin_whose_listen_queue_is_full(hdaemon: Daemon) -> None:
    """listen(0) and one pending connect, no daemon.pid: every further connect gets
    EAGAIN at once. The plugin runs; its data must stay."""
    ns = deregistered(hdaemon, "queued")
    path = str(ns / "sockets" / "api.sock")
    listener = socket.socket(socket.AF_UNIX)
    pending = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(path)
        listener.listen(0)
        pending.setblocking(False)
        pending.connect(path)  # queued, never accepted: the queue is now full
        with socket.socket(socket.AF_UNIX) as another:
            another.setblocking(False)
            with pytest.raises(BlockingIOError):
                another.connect(path)  # what hecated's check meets too
        status, body = purge(hdaemon, "queued")
        assert (status, body.get("code")) == (409, "plugin_running"), body
        assert (ns / "sqlite" / "data.db").read_bytes() == b"precious"
        # The probes see it answering too (discovered, listed) before it stops: else a
        # probe still in flight when it stops could report it answering after the wait
        # below has already seen it absent (ci: 409 from the index's stale view).
        _until(hdaemon, lambda rows: "queued" in rows)
    finally:
        pending.close()
        listener.close()
    # Stopped: its socket file refuses now; once the probes have seen it go (a plugin
    # seen answering is refused from the index too), the data can go.
    _until(hdaemon, lambda rows: "queued" not in rows)
    assert purge(hdaemon, "queued")[0] == 200


def test_a_daemon_never_takes_a_socket_path_whose_listener_has_a_full_queue(home: Path) -> None:
    """The same rule at start-up (``protocol.accepts``): a socket whose queue is full is
    someone's live socket, never a crash's leftover to unlink and take over."""
    path = short_tempdir("hcq") / "api.sock"
    listener = socket.socket(socket.AF_UNIX)
    pending = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(path))
        listener.listen(0)
        pending.setblocking(False)
        pending.connect(str(path))
        inode = path.lstat().st_ino
        daemon = Daemon(home, env={"HECATE_SOCKET_PATH": str(path)}).start(wait=False)
        assert daemon.proc is not None and daemon.proc.wait(timeout=30) == 1, daemon.log()
        assert "already answering" in daemon.log(), daemon.log()
        assert path.lstat().st_ino == inode  # still the listener's own socket file
    finally:
        pending.close()
        listener.close()
        subprocess.run(["rm", "-rf", str(path.parent)], check=False)


# -- 2: purge never waits on a FIFO, and never holds the name's lock for ever --------------

SWAPPER = textwrap.dedent(
    """
    import ctypes, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    RENAME_EXCHANGE = 2
    AT_FDCWD = -100
    where, pairs = sys.argv[1], int(sys.argv[2])
    names = [(f"{where}/d{i}".encode(), f"{where}/f{i}".encode()) for i in range(pairs)]
    print("swapping", flush=True)
    live = list(names)
    while live:  # swap each dir with its FIFO until purge has taken one of the pair
        for pair in list(live):
            if libc.renameat2(AT_FDCWD, pair[0], AT_FDCWD, pair[1], RENAME_EXCHANGE) != 0:
                if ctypes.get_errno() == 2:  # ENOENT: purge took one of them
                    live.remove(pair)
    """
)


def _release_fifo_readers(root: Path) -> None:
    """Open every FIFO left in the tree for writing: a reader blocked in its open (the
    defect) wakes up, so a failing run still ends."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with contextlib.suppress(OSError):
                if stat.S_ISFIFO(os.lstat(path).st_mode):
                    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def test_purge_under_a_fifo_directory_swap_finishes_and_frees_the_name(hdaemon: Daemon) -> None:
    """Directories inside a deregistered namespace swapped with FIFOs
    (renameat2(RENAME_EXCHANGE)) while it is purged: the purge answers, deletes the
    namespace, and a registration of the same name right after is not blocked."""
    ns = deregistered(hdaemon, "swapped")
    where = ns / "sqlite"
    pairs = 300
    for i in range(pairs):
        (where / f"d{i}").mkdir()
        (where / f"d{i}" / "file").write_bytes(b"x")
        os.mkfifo(where / f"f{i}")
    swapper = subprocess.Popen(
        [sys.executable, "-c", SWAPPER, str(where), str(pairs)], stdout=subprocess.PIPE
    )
    try:
        assert swapper.stdout is not None and swapper.stdout.readline() == b"swapping\n"
        status, body = purge(hdaemon, "swapped")
        assert status == 200, body
        assert not ns.exists()
        assert hdaemon.register("swapped")[0] == 201  # the name's lock is free
    finally:
        swapper.kill()
        swapper.wait()
        _release_fifo_readers(hdaemon.root)


# -- 7: 500s where a clear error belongs -------------------------------------------------------


def test_a_plugin_toml_that_is_a_socket_is_invalid_and_replaced_on_register(
    hdaemon: Daemon,
) -> None:
    ns = hdaemon.root / "socketed"
    for sub in ("run", "sockets"):
        (ns / sub).mkdir(parents=True, mode=0o700)
    planted = socket.socket(socket.AF_UNIX)
    planted.bind(str(ns / "plugin.toml"))
    try:
        status, _, _ = hdaemon.request("POST", "/api/rescan")
        assert status == 200
        status, _, detail = hdaemon.request("GET", "/api/plugins/socketed")
        assert status == 200 and detail["status"] == "invalid", detail
        assert "socket" in detail["error"]["message"], detail
        status, _, body = hdaemon.request("POST", "/api/plugins/register", {"name": "socketed"})
        assert status in (200, 201), body
        assert stat.S_ISREG((ns / "plugin.toml").lstat().st_mode)
    finally:
        planted.close()


RENAMER = textwrap.dedent(
    """
    import os, sys
    ns = sys.argv[1]
    print("renaming", flush=True)
    while True:  # every subdirectory moved away the moment it exists
        for sub in ("sqlite", "reckon-db", "sockets", "run", "connectors"):
            try:
                os.rename(f"{ns}/{sub}", f"{ns}/.{sub}.gone")
                os.rmdir(f"{ns}/.{sub}.gone")
            except OSError:
                pass
    """
)


def test_subdirectories_moved_away_while_registering_are_never_a_500(hdaemon: Daemon) -> None:
    """Each register makes the namespace's five subdirectories and opens them; a process
    moving them away in between gets the registration retried or refused in the envelope."""
    assert hdaemon.register("moving")[0] == 201
    renamer = subprocess.Popen(
        [sys.executable, "-c", RENAMER, str(hdaemon.root / "moving")], stdout=subprocess.PIPE
    )
    statuses: dict[int, int] = {}
    codes: set[str] = set()
    try:
        assert renamer.stdout is not None and renamer.stdout.readline() == b"renaming\n"
        for _ in range(400):
            status, _, body = hdaemon.request("POST", "/api/plugins/register", {"name": "moving"})
            statuses[status] = statuses.get(status, 0) + 1
            if status >= 300:
                codes.add(body.get("code"))
    finally:
        renamer.kill()
        renamer.wait()
    assert 500 not in statuses, (statuses, codes)
    assert set(statuses) <= {200, 507}, (statuses, codes)
    assert codes <= {"storage_error"}, codes
    assert hdaemon.register("moving")[0] == 200


def test_a_key_nested_300_deep_never_blocks_re_registration(hdaemon: Daemon) -> None:
    """tomllib reads what tomli_w cannot write back: such a file is refused as invalid
    with its reason, and registering replaces it (no RecursionError, no 500)."""
    ns = hdaemon.root / "deep"
    (ns / "run").mkdir(parents=True, mode=0o700)
    deep = ".".join(["k"] * 300)
    (ns / "plugin.toml").write_text(f'name = "deep"\nversion = "1"\n[{deep}]\nv = 1\n')
    assert hdaemon.request("POST", "/api/rescan")[0] == 200
    status, _, detail = hdaemon.request("GET", "/api/plugins/deep")
    assert status == 200 and detail["status"] == "invalid", detail
    assert "nested" in detail["error"]["message"]
    for version in ("2", "3"):
        status, _, body = hdaemon.request(
            "POST", "/api/plugins/register", {"name": "deep", "version": version}
        )
        assert status in (200, 201), body
    assert hdaemon.request("GET", "/api/plugins/deep")[2]["version"] == "3"


def test_nanoseconds_in_hand_written_times_survive_a_rewrite(hdaemon: Daemon) -> None:
    ns = hdaemon.root / "fine"
    (ns / "run").mkdir(parents=True, mode=0o700)
    (ns / "plugin.toml").write_text(
        'name = "fine"\nversion = "1"\nregistered_at = 2026-01-02T03:04:05.123456789Z\n'
        "[mine]\nseen = 2026-01-02T03:04:05.987654321+02:00\n"
    )
    assert hdaemon.request("POST", "/api/rescan")[0] == 200
    assert hdaemon.register("fine", "2")[0] == 200
    text = (ns / "plugin.toml").read_text()
    assert "registered_at = 2026-01-02T03:04:05.123456789Z" in text, text
    assert "seen = 2026-01-02T03:04:05.987654321+02:00" in text, text


# -- 8: other users' namespaces, sockets and peers --------------------------------------------

FOREIGN_SERVER = textwrap.dedent(
    """
    import os, socket, sys
    log = open(sys.argv[1], "a", buffering=1)
    if sys.argv[2] == "fd":  # bound by someone else; listen() makes its credentials ours
        srv = socket.socket(fileno=int(sys.argv[3]))
    else:
        srv = socket.socket(socket.AF_UNIX)
        srv.bind(sys.argv[3])
    srv.listen(64)
    print("ready", flush=True)
    while True:
        conn, _ = srv.accept()
        log.write("accepted\\n")
        conn.settimeout(2)
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        if data:
            log.write("request " + data.split(b"\\r\\n", 1)[0].decode(errors="replace") + "\\n")
            body = b'{"ok": true, "name": "foreign", "version": "6.6.6"}'
            head = f"HTTP/1.1 200 OK\\r\\nContent-Length: {len(body)}\\r\\n\\r\\n".encode()
            conn.sendall(head + body)
        conn.close()
    """
)


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory the user nobody may write (the foreign server's log)."""
    path = short_tempdir("hcnb")
    path.chmod(0o777)
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


def _as_nobody(args: list[str], **kw) -> subprocess.Popen:
    python = nobody_python()
    if python is None:
        pytest.skip("no Python interpreter the user nobody may run")
    proc = subprocess.Popen([*AS_NOBODY, python, "-c", FOREIGN_SERVER, *args], **kw)
    return proc


def _until(daemon: Daemon, done, timeout: float = 20.0) -> dict:
    """Follow the change feed until ``done(listing)`` holds."""
    import time

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


def _refused(daemon: Daemon, name: str) -> dict | None:
    """``name``'s detail once its probe has met the foreign peer (its reason says so)."""
    status, _, detail = daemon.request("GET", f"/api/plugins/{name}")
    assert status == 200
    return detail if f"uid {NOBODY_UID}" in (detail["reason"] or "") else None


@needs_root
def test_a_namespace_another_user_made_is_a_problem_never_probed(
    hdaemon: Daemon, nobody_dir: Path
) -> None:
    """The tree was open for a while: another user made a namespace with a socket and
    listens on it. It is listed as a problem, never connected to, never forwarded to."""
    ns = hdaemon.root / "hecate-app-foreignd"
    (ns / "sockets").mkdir(parents=True)
    for path in (ns, ns / "sockets"):
        os.chown(path, NOBODY_UID, NOBODY_UID)
    for path in (hdaemon.home, hdaemon.root):  # the tree was opened up for a while
        path.chmod(0o711)
    log = nobody_dir / "foreign.log"
    server = _as_nobody(
        ["/" + str(log).lstrip("/"), "path", str(ns / "sockets" / "api.sock")],
        stdout=subprocess.PIPE,
    )
    try:
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"
        assert hdaemon.request("POST", "/api/rescan")[0] == 200
        listing = _until(hdaemon, lambda rows: "hecate-app-foreignd" in rows)
        row = listing["hecate-app-foreignd"]
        assert row["status"] == "invalid", row
        status, _, detail = hdaemon.request("GET", "/api/plugins/hecate-app-foreignd")
        assert f"uid {NOBODY_UID}" in detail["error"]["message"], detail
        status, _, body = hdaemon.request("GET", "/plugin/hecate-app-foreignd/api/secret")
        assert status >= 400 and status != 500, body
        doctor = ctl(hdaemon.home, "doctor", "--json").json()
        owners = [f for f in doctor["findings"] if f["check"] == "owner"]
        assert any("hecate-app-foreignd" in f["message"] for f in owners), doctor
        assert not log.exists() or log.read_text() == "", log.read_text()
    finally:
        server.kill()
        server.wait()


@needs_root
def test_a_socket_served_by_another_user_is_never_asked_anything(
    hdaemon: Daemon, nobody_dir: Path
) -> None:
    """Our namespace, our socket file (bound here), but the process that listens on it
    runs as another user (it was handed the fd): SO_PEERCRED says so, and nothing is
    sent to it."""
    assert hdaemon.register("hecate-peerd")[0] == 201
    path = hdaemon.root / "hecate-peerd" / "sockets" / "api.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))  # not listening: the other user's process will
    log = nobody_dir / "peer.log"
    server = _as_nobody(
        [str(log), "fd", str(listener.fileno())],
        stdout=subprocess.PIPE,
        pass_fds=[listener.fileno()],
    )
    listener.close()
    try:
        assert server.stdout is not None and server.stdout.readline() == b"ready\n"
        detail = wait_for(lambda: _refused(hdaemon, "hecate-peerd"), timeout=20)
        assert detail["status"] == "stopped", detail
        status, _, body = hdaemon.request("GET", "/plugin/hecate-peerd/api/secret")
        assert status >= 400 and status != 500, body
        assert "request" not in (log.read_text() if log.exists() else ""), log.read_text()
    finally:
        server.kill()
        server.wait()


def test_forwarding_to_a_plugin_whose_listen_queue_is_full_is_busy(hdaemon: Daemon) -> None:
    """The same full queue seen by forwarding: the plugin runs and will take connections
    again, so the client is told to retry (503 busy, Retry-After), not that it is gone."""
    assert hdaemon.register("queued")[0] == 201
    path = str(hdaemon.root / "queued" / "sockets" / "api.sock")
    listener = socket.socket(socket.AF_UNIX)
    pending = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(path)
        listener.listen(0)
        pending.setblocking(False)
        pending.connect(path)  # queued, never accepted: the queue is now full
        status, headers, body = hdaemon.request("GET", "/plugin/queued/health")
        assert (status, body.get("code")) == (503, "busy"), body
        assert "accepting" in body["error"]
        assert "Retry-After" in dict(headers)
    finally:
        pending.close()
        listener.close()

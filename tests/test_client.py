"""The SDK against a real daemon, and against real sockets that misbehave on purpose."""

from __future__ import annotations

import os
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from conftest import Daemon, short_tempdir, wait_for
from plugin_support import Plugin
from watch_support import write_rename_over

from hecated.client import (
    ApiError,
    ClientError,
    ConflictError,
    DaemonTimeoutError,
    DaemonUnavailableError,
    Health,
    HecateClient,
    InvalidNameError,
    NotFoundError,
    PluginInfo,
    PluginPaths,
    PluginSummary,
    default_socket_path,
)


@pytest.fixture
def client(daemon: Daemon) -> HecateClient:
    return HecateClient(daemon.socket)


# -- results -------------------------------------------------------------------------------


def test_register_returns_typed_paths_that_exist(client: HecateClient, daemon: Daemon) -> None:
    paths = client.register("hecate-traderd", "0.1.0", "Trading daemon")
    assert isinstance(paths, PluginPaths)
    assert paths.created is True
    base = daemon.root / "hecate-traderd"
    assert paths.base_dir == str(base)
    assert set(paths.paths) == {"sqlite", "reckon_db", "sockets", "run", "connectors"}
    assert paths.sqlite_dir == base / "sqlite"
    assert paths.reckon_db_dir == base / "reckon-db" == paths.path("reckon-db")
    for d in (paths.sqlite_dir, paths.reckon_db_dir, paths.sockets_dir, paths.run_dir):
        assert d.is_dir()
    assert paths.connectors_dir.is_dir()
    assert paths.api_socket == base / "sockets/api.sock"
    assert paths.pid_file == base / "run/daemon.pid"
    assert paths.state_file == base / "run/daemon.state"
    assert paths.raw["name"] == "hecate-traderd"

    again = client.register("hecate-traderd", "0.2.0")
    assert again.created is False
    assert again == PluginPaths(paths.name, paths.base_dir, paths.paths, created=False)


def test_list_get_health(client: HecateClient, daemon: Daemon) -> None:
    assert client.list() == []
    client.register("hecate-traderd", "0.1.0", "Trading")
    [summary] = client.list()
    assert summary == PluginSummary(
        "hecate-traderd",
        "0.1.0",
        "Trading",
        str(daemon.root / "hecate-traderd/sockets/api.sock"),
        "stopped",
    )

    info = client.get("hecate-traderd")
    assert isinstance(info, PluginInfo)
    assert (info.name, info.version, info.status, info.pid) == (
        "hecate-traderd",
        "0.1.0",
        "stopped",
        None,
    )
    assert isinstance(info.registered_at, datetime)
    assert info.registered_at.tzinfo is not None
    assert info.manifest == str(daemon.root / "hecate-traderd/plugin.toml")
    assert info.paths["run"] == str(daemon.root / "hecate-traderd/run")
    assert info.error is None

    health = client.health()
    assert isinstance(health, Health)
    assert (health.status, health.ready, health.service) == ("healthy", True, "hecate")
    assert health.pid == daemon.proc.pid
    assert health.plugins == {"hecate-traderd": "stopped"}
    assert health.plugin_count == 1
    assert health.socket == str(daemon.socket)
    assert isinstance(health.uptime_seconds, int) and health.uptime_seconds >= 0
    assert isinstance(health.raw["uptime_seconds"], int)  # on the wire too (hecate-tui)


def test_status_follows_the_pid_file_and_the_socket(client: HecateClient, daemon: Daemon) -> None:
    paths = client.register("hecate-traderd")
    paths.pid_file.write_text(f"{os.getpid()}\n")
    # A live pid whose socket does not answer (there is none yet) is on its way up.
    info = wait_for(lambda: (i := client.get("hecate-traderd")).status == "starting" and i)
    assert (info.status, info.pid) == ("starting", os.getpid())
    with Plugin(daemon.root / "hecate-traderd"):  # its socket answers: running
        info = wait_for(lambda: (i := client.get("hecate-traderd")).status == "running" and i)
        assert (info.status, info.pid) == ("running", os.getpid())
    # Killed, its socket file left behind, and a pid file naming nobody: stopped.
    paths.pid_file.write_text("999999999\n")
    wait_for(lambda: client.get("hecate-traderd").status == "stopped")


def test_an_invalid_manifest_comes_with_file_and_line(client: HecateClient, daemon: Daemon) -> None:
    client.register("hecate-broken")
    manifest = daemon.root / "hecate-broken/plugin.toml"
    # Saved whole (by rename), so the only states are the old entry and the broken one;
    # the synchronous rescan (the watcher would see it too) then a wait for the end
    # state, which the registry publishes once the file has stopped changing.
    write_rename_over(manifest, 'name = "hecate-broken"\nversion "1"\n')
    status, _, _ = daemon.request("POST", "/api/rescan")
    assert status == 200
    info = wait_for(lambda: (i := client.get("hecate-broken")).error and i, timeout=20)
    assert info.status == "invalid"
    assert info.error.file == str(manifest)
    assert info.error.line == 2
    assert str(info.error).startswith(f"{manifest}:2: ")


def test_deregister_and_purge(client: HecateClient, daemon: Daemon) -> None:
    client.register("hecate-traderd")
    client.deregister("hecate-traderd")
    assert client.list() == []
    assert (daemon.root / "hecate-traderd").is_dir()  # data kept
    result = client.purge("hecate-traderd")
    assert result.purged == str(daemon.root / "hecate-traderd")
    assert not (daemon.root / "hecate-traderd").exists()


def test_wait_for_change_returns_the_list(client: HecateClient) -> None:
    """Against the agreed long poll, or a daemon that answers at once: the list is right."""
    before = client.snapshot()
    client.register("hecate-traderd")
    snap = client.wait_for_change(before.seq or 0, wait=5)
    assert [p.name for p in snap.plugins] == ["hecate-traderd"]
    if snap.seq is not None:  # the daemon sends X-Hecate-Seq
        assert before.seq is not None and snap.seq > before.seq


# -- error mapping -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "cls", "status", "code"),
    [
        (lambda c: c.register("Bad Name"), InvalidNameError, 400, "invalid_name"),
        (lambda c: c.register("a" * 65), InvalidNameError, 400, "name_too_long"),
        (lambda c: c.register("hecate-daemon"), InvalidNameError, 400, "reserved_name"),
        (lambda c: c.get("hecate-nope"), NotFoundError, 404, "not_found"),
        (lambda c: c.deregister("hecate-nope"), NotFoundError, 404, "not_found"),
        (lambda c: c.purge("hecate-nope"), NotFoundError, 404, "not_found"),
        (lambda c: c.register("hecate-x", version=7), ApiError, 400, "invalid_field"),
        (lambda c: c.request("GET", "/api/nothing"), NotFoundError, 404, "not_found"),
        (lambda c: c.request("PUT", "/api/plugins"), ApiError, 405, "method_not_allowed"),
    ],
)
def test_api_errors_carry_status_code_and_message(
    client: HecateClient, call: Callable, cls: type, status: int, code: str
) -> None:
    with pytest.raises(cls) as info:
        call(client)
    err = info.value
    assert type(err) is cls
    assert isinstance(err, ApiError) and isinstance(err, ClientError)
    assert (err.status, err.code) == (status, code)
    assert err.message and code in str(err)


def test_conflicts(client: HecateClient) -> None:
    paths = client.register("hecate-traderd")
    with pytest.raises(ConflictError) as info:
        client.purge("hecate-traderd")
    assert (info.value.status, info.value.code) == (409, "still_registered")

    client.deregister("hecate-traderd")
    paths.pid_file.write_text(f"{os.getpid()}\n")
    with pytest.raises(ConflictError) as info:
        client.purge("hecate-traderd")
    assert info.value.code == "plugin_running"
    assert Path(paths.base_dir).is_dir()


def test_no_daemon(home: Path) -> None:
    sock = home / "nothing.sock"
    client = HecateClient(sock, connect_retry=0)
    with pytest.raises(DaemonUnavailableError) as info:
        client.health()
    assert info.value.socket_path == sock
    assert "No such file" in info.value.reason

    # a socket file nobody listens on: the leftover of a crash
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(sock))
    s.close()
    with pytest.raises(DaemonUnavailableError) as info:
        HecateClient(sock, connect_retry=0.1).list()
    assert "refused" in info.value.reason.lower()


def test_retries_while_the_daemon_is_starting(home: Path) -> None:
    """A stale socket refuses connections until hecated replaces it and answers."""
    d = Daemon(home)
    d.socket.parent.mkdir(parents=True)
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d.socket))
    s.close()
    result: dict = {}

    def call() -> None:
        try:
            result["paths"] = HecateClient(d.socket, connect_retry=30).register("hecate-early")
        except Exception as exc:  # pragma: no cover - reported below
            result["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    try:
        d.start()
        thread.join(60)
        assert "error" not in result, result
        assert result["paths"].name == "hecate-early"
    finally:
        d.stop()


def test_hecate_socket_path_is_the_sdks_default(home: Path, monkeypatch) -> None:
    elsewhere = short_tempdir("hs")
    sock = elsewhere / "h.sock"
    d = Daemon(home, env={"HECATE_SOCKET_PATH": str(sock)}).start()
    try:
        monkeypatch.setenv("HECATE_SOCKET_PATH", str(sock))
        assert HecateClient().socket_path == sock
        assert HecateClient().health().socket == str(sock)
    finally:
        d.stop()
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_default_socket_path_precedence() -> None:
    home = Path.home()
    assert default_socket_path({}) == home / ".hecate/hecate-daemon/sockets/api.sock"
    assert default_socket_path({"HECATE_HOME": "/srv/h"}) == Path(
        "/srv/h/hecate-daemon/sockets/api.sock"
    )
    assert default_socket_path({"HECATE_DATA_DIR": "/srv/d", "HECATE_HOME": "/srv/h"}) == Path(
        "/srv/d/sockets/api.sock"
    )
    assert default_socket_path(
        {"HECATE_SOCKET_PATH": "/run/h.sock", "HECATE_DATA_DIR": "/srv/d"}
    ) == Path("/run/h.sock")


# -- real sockets that misbehave -----------------------------------------------------------------


@pytest.fixture
def fake_server(home: Path) -> Iterator[Callable[[list[bytes | None]], Path]]:
    """A real Unix socket answering each connection with the next canned response.

    ``None`` means: accept, read the request, and never answer.
    """
    sock_path = home / "fake.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(sock_path))
    listener.listen(8)
    conns: list[socket.socket] = []

    def serve(answers: list[bytes | None]) -> Path:
        def loop() -> None:
            for answer in answers:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                conns.append(conn)
                conn.recv(65536)
                if answer is not None:
                    conn.sendall(answer)
                    conn.close()

        threading.Thread(target=loop, daemon=True).start()
        return sock_path

    yield serve
    listener.close()
    for conn in conns:
        conn.close()


def _http(status: str, body: bytes, extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n{extra}\r\n"
    return head.encode() + body


def test_a_non_json_answer_is_a_client_error(fake_server) -> None:
    sock = fake_server([_http("502 Bad Gateway", b"<html>nope</html>")])
    with pytest.raises(ClientError) as info:
        HecateClient(sock).health()
    assert not isinstance(info.value, ApiError)
    assert "not JSON" in str(info.value)


@pytest.mark.parametrize(
    "body",
    [
        b'{"ok":false,"error":"short and stout","code":"teapot"}',
        b'{"error":{"code":"teapot","message":"short and stout"}}',  # hecated before 0.2
    ],
    ids=["envelope", "old-shape"],
)
def test_an_unknown_error_code_is_a_plain_api_error(fake_server, body: bytes) -> None:
    sock = fake_server([_http("418 I'm a teapot", body)])
    with pytest.raises(ApiError) as info:
        HecateClient(sock).list()
    assert type(info.value) is ApiError
    assert (info.value.status, info.value.code, info.value.message) == (
        418,
        "teapot",
        "short and stout",
    )


def test_an_error_without_the_envelope_still_says_its_status(fake_server) -> None:
    sock = fake_server([_http("500 Internal Server Error", b'{"something": "else"}')])
    with pytest.raises(ApiError) as info:
        HecateClient(sock).list()
    assert (info.value.status, info.value.code, info.value.message) == (
        500,
        "http_500",
        "HTTP 500",
    )


def test_busy_is_retried(fake_server) -> None:
    busy = b'{"ok":false,"error":"too many connections; retry shortly","code":"busy"}'
    ok = b'{"ok":true,"name":"hecate-x","base_dir":"/b","paths":{"sqlite":"/b/sqlite"}}'
    sock = fake_server(
        [_http("503 Service Unavailable", busy, "Retry-After: 0\r\n"), _http("201 Created", ok)]
    )
    paths = HecateClient(sock, connect_retry=10).register("hecate-x")
    assert (paths.name, paths.created) == ("hecate-x", True)


def test_busy_for_too_long_is_unavailable(fake_server) -> None:
    busy = b'{"ok":false,"error":"too many connections; retry shortly","code":"busy"}'
    sock = fake_server([_http("503 Service Unavailable", busy)] * 50)
    with pytest.raises(DaemonUnavailableError) as info:
        HecateClient(sock, connect_retry=0).health()
    assert "busy" in info.value.reason


def test_a_silent_daemon_times_out(fake_server) -> None:
    sock = fake_server([None])
    with pytest.raises(DaemonTimeoutError) as info:
        HecateClient(sock, timeout=0.5, connect_retry=0).health()
    assert isinstance(info.value, DaemonUnavailableError)
    assert "no answer within 0.5 s" in str(info.value)


def test_default_socket_path_follows_the_daemons_config_file(home: Path) -> None:
    cfg = home / "hecated.toml"
    cfg.write_text(f'socket_path = "{home}/from-config.sock"\n')
    assert default_socket_path({"HECATE_CONFIG": str(cfg)}) == home / "from-config.sock"
    env = {"HECATE_CONFIG": str(cfg), "HECATE_SOCKET_PATH": f"{home}/env.sock"}
    assert default_socket_path(env) == home / "env.sock"
    cfg.write_text("not toml [\n")  # the daemon would refuse it: the client falls back
    assert default_socket_path({"HECATE_CONFIG": str(cfg), "HOME": str(home)}).name == "api.sock"


# -- live data: a plugin's own socket and manifest (issue 12) ------------------------------


def test_a_discovered_plugin_carries_its_live_fields(home: Path) -> None:
    from plugin_support import Plugin

    daemon = Daemon(home, env={"HECATE_PROBE_INTERVAL": "0.3"}).start()
    client = HecateClient(daemon.socket)
    try:
        with Plugin(daemon.root / "hecate-app-traderd", mode="no-ui"):
            summary = wait_for(lambda: next(iter(client.list()), None))
            assert summary == PluginSummary(
                "hecate-app-traderd",
                "0.3.0",
                "AI Stock Trading Agents",
                str(daemon.root / "hecate-app-traderd/sockets/api.sock"),
                "running",
                registered=False,
                display_name="Trader",
                icon="\N{CHART WITH UPWARDS TREND}",
                tag="trader-studio",
                ui=False,
                problems=("the UI will drop this plugin: GET /ui/component.js answered 404",),
            )
            info = client.get("hecate-app-traderd")
            assert (info.registered, info.manifest, info.reason, info.tag) == (
                False,
                "",
                None,
                "trader-studio",
            )
            paths = client.register("hecate-app-traderd")  # no version: the manifest's
            assert paths.created is True
            info = client.get("hecate-app-traderd")
            assert (info.registered, info.version, info.status) == (True, "0.3.0", "running")
    finally:
        daemon.stop()

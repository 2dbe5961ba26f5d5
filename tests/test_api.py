"""app.py through Werkzeug's test client: every route and every error shape."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import wait_for
from plugin_support import Plugin
from werkzeug.test import Client

from hecated import __version__
from hecated.adapters.liveness import Prober
from hecated.core.index import Index
from hecated.core.layout import Layout
from hecated.http import openapi
from hecated.http.app import HecateApp
from hecated.protocol import MAX_BODY, PEER_ENVIRON_KEY, Peer

ME = Peer(os.getpid(), os.getuid(), os.getgid())


def as_peer(app: HecateApp, peer: Peer | None) -> Client:
    """A test client whose requests carry ``peer`` as the server would put it in the environ."""

    def wsgi(environ, start_response):
        if peer is not None:
            environ[PEER_ENVIRON_KEY] = peer
        return app(environ, start_response)

    return Client(wsgi)


@pytest.fixture
def app(home: Path) -> HecateApp:
    layout = Layout.at(home / ".hecate")
    layout.ensure_layout()
    registry = Index(layout)
    Prober(registry)  # liveness, as the daemon composes them
    registry.scan()
    return HecateApp(registry)


@pytest.fixture
def client(app: HecateApp) -> Client:
    return as_peer(app, ME)


def _error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert set(body) == {"ok", "error", "code"}
    assert body["ok"] is False
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]
    return body


def test_register_answers_exactly_the_spec_body(client: Client, app: HecateApp) -> None:
    resp = client.post(
        "/api/plugins/register",
        json={"name": "hecate-traderd", "version": "0.1.0", "description": "Trading daemon"},
    )
    assert resp.status_code == 201
    base = app.layout.root / "hecate-traderd"
    assert resp.get_json() == {
        "ok": True,
        "name": "hecate-traderd",
        "base_dir": str(base),
        "paths": {
            "sqlite": str(base / "sqlite"),
            "reckon_db": str(base / "reckon-db"),
            "sockets": str(base / "sockets"),
            "run": str(base / "run"),
            "connectors": str(base / "connectors"),
        },
    }
    for sub in ("sqlite", "reckon-db", "sockets", "run", "connectors"):
        assert (base / sub).is_dir()


def test_register_with_name_only_as_in_the_bootstrap_flow(client: Client) -> None:
    resp = client.post("/api/plugins/register", json={"name": "hecate-traderd"})
    assert resp.status_code == 201
    listed = client.get("/api/plugins").get_json()
    assert listed[0]["version"] == "" and listed[0]["description"] == ""


def test_register_with_a_unit_writes_it_to_plugin_toml_and_keeps_it(
    client: Client, app: HecateApp
) -> None:
    body = {"name": "hecate-traderd", "version": "1", "unit": "traderd@main.service"}
    assert client.post("/api/plugins/register", json=body).status_code == 201
    path = app.layout.manifest_path("hecate-traderd")
    assert 'unit = "traderd@main.service"' in path.read_text()
    again = {"name": "hecate-traderd", "version": "2"}  # a restart need not repeat it
    assert client.post("/api/plugins/register", json=again).status_code == 200
    assert 'unit = "traderd@main.service"' in path.read_text()
    assert app.registry.get("hecate-traderd").entry.manifest.unit == "traderd@main.service"


def test_reregister_is_200_with_same_body(client: Client) -> None:
    first = client.post("/api/plugins/register", json={"name": "p", "version": "1"})
    again = client.post("/api/plugins/register", json={"name": "p", "version": "2"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.get_json() == again.get_json()
    assert client.get("/api/plugins/p").get_json()["version"] == "2"


# What a registered plugin that has never answered on its socket carries (issue 12).
NOT_ANSWERED = {
    "registered": True,
    "display_name": None,
    "icon": None,
    "tag": None,
    "ui": False,
    "problems": [],
    "unit": None,  # no user manager here: no word of a unit
    "installed": False,  # no desired-state file names it
    "desired": None,
}


def test_list_and_get(client: Client, app: HecateApp) -> None:
    client.post("/api/plugins/register", json={"name": "b", "version": "2", "description": "B"})
    client.post("/api/plugins/register", json={"name": "a", "version": "1", "description": "A"})
    listed = client.get("/api/plugins").get_json()
    assert listed == [
        {
            "name": "a",
            "version": "1",
            "description": "A",
            "socket": str(app.layout.root / "a" / "sockets" / "api.sock"),
            "status": "stopped",
            **NOT_ANSWERED,
        },
        {
            "name": "b",
            "version": "2",
            "description": "B",
            "socket": str(app.layout.root / "b" / "sockets" / "api.sock"),
            "status": "stopped",
            **NOT_ANSWERED,
        },
    ]
    one = client.get("/api/plugins/a").get_json()
    assert one["paths"]["reckon_db"] == str(app.layout.root / "a" / "reckon-db")
    assert one["registered_at"] and one["error"] is None and one["pid"] is None


def test_deregister_then_purge(client: Client, app: HecateApp) -> None:
    client.post("/api/plugins/register", json={"name": "p"})
    assert client.delete("/api/plugins/p").get_json() == {"ok": True}
    assert (app.layout.root / "p" / "sqlite").is_dir()
    _error(client.get("/api/plugins/p"), 404, "not_found")
    _error(client.delete("/api/plugins/p"), 404, "not_found")
    resp = client.post("/api/plugins/p/purge")
    assert resp.status_code == 200 and resp.get_json()["ok"] is True
    assert not (app.layout.root / "p").exists()
    _error(client.post("/api/plugins/p/purge"), 404, "not_found")


def test_purge_of_registered_plugin_is_409(client: Client) -> None:
    client.post("/api/plugins/register", json={"name": "p"})
    _error(client.post("/api/plugins/p/purge"), 409, "still_registered")


def test_health(client: Client, app: HecateApp) -> None:
    client.post("/api/plugins/register", json={"name": "p"})
    app.set_status("healthy")
    for path in ("/health", "/api/health"):
        body = client.get(path).get_json()
        assert (body["status"], body["ready"], body["service"]) == ("healthy", True, "hecate")
        assert body["version"] == __version__
        assert body["plugins"] == {"p": "stopped"}
        assert body["plugin_count"] == 1
        assert type(body["uptime_seconds"]) is int and body["uptime_seconds"] >= 0
        assert body["pid"] == os.getpid()
        assert body["seq"] == app.registry.seq
        assert body["socket"] == str(app.layout.api_socket)
        assert body["data_dir"] == str(app.layout.data_dir)


def test_health_follows_the_daemons_phase(client: Client, app: HecateApp) -> None:
    """hecate-web waits for status healthy and ready; before and after, it is told so."""
    seen = []
    for phase in (None, "healthy", "stopping"):
        if phase is not None:
            app.set_status(phase)
        body = client.get("/health").get_json()
        seen.append((body["status"], body["ready"]))
    assert seen == [("starting", False), ("healthy", True), ("stopping", False)]
    with pytest.raises(ValueError):
        app.set_status("ok")


def test_uptime_is_whole_seconds(home: Path) -> None:
    """hecate-tui decodes uptime_seconds into an int: 1.401 would fail it."""
    now = [100.0]
    layout = Layout.at(home / ".hecate")
    layout.ensure_layout()
    app = HecateApp(Index(layout), clock=lambda: now[0])
    now[0] += 1.9
    assert as_peer(app, ME).get("/health").get_json()["uptime_seconds"] == 1


def test_health_says_how_each_plugin_is(client: Client, app: HecateApp) -> None:
    client.post("/api/plugins/register", json={"name": "quiet"})
    client.post("/api/plugins/register", json={"name": "busy"})
    (app.layout.root / "busy" / "run" / "daemon.pid").write_text(f"{os.getpid()}\n")
    app.registry.refresh("busy")
    broken = app.layout.root / "broken"
    broken.mkdir()
    (broken / "plugin.toml").write_text('name = "broken"\n\nversion = [\n')
    app.registry.refresh("broken")
    client.post("/api/plugins/register", json={"name": "live"})
    with Plugin(app.layout.root / "live") as plugin:  # its socket answers /health: running
        # Its pid file written: a process come, so its socket is looked at (no watcher here
        # to see the socket bound).
        (app.layout.root / "live" / "run" / "daemon.pid").write_text(f"{plugin.proc.pid}\n")
        app.registry.refresh("live")
        wait_for(lambda: client.get("/health").get_json()["plugins"]["live"] == "ok")
    plugins = client.get("/health").get_json()["plugins"]
    assert plugins["quiet"] == "stopped"
    assert plugins["busy"] == "degraded"  # a live pid whose socket does not answer: starting
    assert plugins["broken"].startswith("invalid plugin.toml line 3: ")
    assert len(plugins["broken"]) <= 120


def test_busy_long_polls_get_503_with_retry_after(client: Client, app: HecateApp) -> None:
    app.registry.max_waiters = 0
    resp = client.get(f"/api/plugins?since={app.registry.seq}&wait=5")
    _error(resp, 503, "busy")
    assert resp.headers["Retry-After"] == "1"
    promised = openapi.spec()["components"]["responses"]["Busy"]["headers"]
    assert set(promised) == {"Retry-After"}  # what the description promises is sent


HUGE = "9" * 5000  # past Python's int-string limit (4,300 digits): int() raises ValueError


@pytest.mark.parametrize(
    "path",
    [
        f"/api/plugins?since={HUGE}",
        f"/api/plugins?since=1&wait={HUGE}",
        f"/api/plugins/hecate-x/logs?lines={HUGE}",
        "/api/plugins?since=12345678901234567890",  # 20 digits: past any seq there can be
    ],
    ids=["since", "wait", "lines", "since-20-digits"],
)
def test_a_number_too_long_is_a_400_not_a_500(client: Client, path: str) -> None:
    _error(client.get(path), 400, "invalid_parameter")


def test_rescan_answers_with_the_seq(client: Client, app: HecateApp) -> None:
    client.post("/api/plugins/register", json={"name": "p"})
    resp = client.post("/api/rescan")
    assert resp.get_json() == {"ok": True, "plugins": 1}
    assert resp.headers["X-Hecate-Seq"] == str(app.registry.seq)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"name": "Bad_Name"}, "invalid_name"),
        ({"name": "../../etc"}, "invalid_name"),
        ({"name": "hecate-daemon"}, "reserved_name"),
        ({"name": "a" * 65}, "name_too_long"),
        ({"name": 7}, "invalid_name"),
        ({"version": "1"}, "invalid_field"),
        ({"name": "p", "version": 1}, "invalid_field"),
        ({"name": "p", "description": ["x"]}, "invalid_field"),
        ({"name": "p", "colour": "red"}, "invalid_field"),
        ({"name": "p", "unit": "../p.service"}, "invalid_field"),
        ({"name": "p", "unit": "p.timer"}, "invalid_field"),
        ({"name": "p", "unit": 5}, "invalid_field"),
    ],
)
def test_bad_registrations_are_400_and_create_nothing(
    client: Client, app: HecateApp, body: dict, code: str
) -> None:
    before = sorted(os.listdir(app.layout.root))
    _error(client.post("/api/plugins/register", json=body), 400, code)
    assert sorted(os.listdir(app.layout.root)) == before


@pytest.mark.parametrize(
    ("data", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "invalid_json"),
        (b"[1, 2]", "application/json", 400, "invalid_body"),
        (b'"name"', "application/json", 400, "invalid_body"),
        (b"\xff\xfe", "application/json", 400, "invalid_json"),
        (b"[" * 100000, "application/json", 413, "body_too_large"),
        (b"name=p", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b'{"name": "p"}', "text/plain", 415, "unsupported_media_type"),
        (b'{"name": "p"}', None, 415, "unsupported_media_type"),
    ],
)
def test_bad_bodies(client: Client, data: bytes, content_type, status: int, code: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    _error(client.post("/api/plugins/register", data=data, headers=headers), status, code)


def test_deeply_nested_json_is_400_not_500(client: Client) -> None:
    data = b"[" * 60000 + b"]" * 60000
    assert len(data) <= MAX_BODY * 2
    resp = client.post(
        "/api/plugins/register", data=data[: MAX_BODY - 10], content_type="application/json"
    )
    assert resp.status_code in (400, 413)


def test_oversized_body_is_413(client: Client) -> None:
    big = json.dumps({"name": "p", "description": "x" * (MAX_BODY + 1)})
    _error(
        client.post("/api/plugins/register", data=big, content_type="application/json"),
        413,
        "body_too_large",
    )


def test_unknown_route_and_method(client: Client) -> None:
    _error(client.get("/nope"), 404, "not_found")
    resp = client.put("/api/plugins")
    _error(resp, 405, "method_not_allowed")
    assert "GET" in resp.headers["Allow"]
    _error(client.get("/api/plugins/register"), 404, "not_found")
    _error(client.get("/api/plugins/BAD"), 400, "invalid_name")


def test_other_uid_is_403(app: HecateApp) -> None:
    stranger = as_peer(app, Peer(1, ME.uid + 1, 0))
    _error(stranger.get("/api/plugins"), 403, "forbidden")
    _error(stranger.post("/api/plugins/register", json={"name": "p"}), 403, "forbidden")
    assert not (app.layout.root / "p").exists()


def test_missing_peer_credentials_is_403(app: HecateApp) -> None:
    _error(as_peer(app, None).get("/health"), 403, "forbidden")


def test_symlinked_namespace_is_409_and_nothing_written(
    client: Client, app: HecateApp, home: Path
) -> None:
    outside = home / "outside"
    outside.mkdir()
    (app.layout.root / "evil").symlink_to(outside)
    _error(client.post("/api/plugins/register", json={"name": "evil"}), 409, "unsafe_path")
    assert list(outside.iterdir()) == []


def test_invalid_entry_shows_error_with_line(client: Client, app: HecateApp) -> None:
    ns = app.layout.root / "broken"
    ns.mkdir()
    (ns / "plugin.toml").write_text('name = "broken"\n\nversion = [\n')
    app.registry.refresh("broken")
    listed = client.get("/api/plugins").get_json()
    assert listed[0]["status"] == "invalid"
    detail = client.get("/api/plugins/broken").get_json()
    assert detail["error"]["file"] == str(ns / "plugin.toml")
    assert detail["error"]["line"] == 3


# -- discovered plugins (issue 12): what the index holds while a socket answers -------------


def test_a_discovered_plugin_is_listed_registered_false_and_registers_from_its_manifest(
    client: Client, app: HecateApp
) -> None:
    from hecated.core.status import LiveManifest, SocketFinding, SocketKind

    # Published as the prober would (set_finding), without a socket: the app's side only.
    manifest = LiveManifest("trader", "0.4.0", "AI Stock Trading Agents", "Trader", "x", "t-s")
    live = SocketFinding(SocketKind.ANSWERING, manifest=manifest, socket_file=True)
    gone = SocketFinding(SocketKind.ABSENT)
    with app.registry.name_lock("hecate-traderd"):
        assert app.registry.set_finding("hecate-traderd", live) is not None
    [row] = client.get("/api/plugins").get_json()
    assert (row["registered"], row["version"], row["status"], row["display_name"]) == (
        False,
        "0.4.0",
        "running",
        "Trader",
    )
    assert not app.layout.manifest_path("hecate-traderd").exists()  # nothing written
    resp = client.post(
        "/api/plugins/register", json={"name": "hecate-traderd", "description": "mine"}
    )
    assert resp.status_code == 201
    one = client.get("/api/plugins/hecate-traderd").get_json()
    assert (one["registered"], one["version"], one["description"]) == (True, "0.4.0", "mine")
    # It stops answering: a registered plugin stays, stopped; a discovered one would go.
    with app.registry.name_lock("hecate-traderd"):
        app.registry.set_finding("hecate-traderd", gone)
    assert client.get("/api/plugins/hecate-traderd").get_json()["status"] == "stopped"
    with app.registry.name_lock("hecate-gone"):
        app.registry.set_finding("hecate-gone", live)
        app.registry.set_finding("hecate-gone", gone)
    assert [p["name"] for p in client.get("/api/plugins").get_json()] == ["hecate-traderd"]


def test_control_of_a_plugin_with_a_broken_plugin_toml_acts_on_no_unit(
    client: Client, app: HecateApp
) -> None:
    """Its unit cannot be known: never start the convention's unit instead of the one
    the broken file names (the watcher and on-demand treat it as unitless too)."""
    assert client.post("/api/plugins/register", json={"name": "hecate-foo"}).status_code == 201
    path = app.layout.manifest_path("hecate-foo")
    path.write_text('name = "hecate-foo"\nunit = "hecate-foo-real@.service"\n')
    app.registry.refresh("hecate-foo")
    assert app.registry.get("hecate-foo").entry.manifest is None
    for verb in ("start", "stop", "restart"):
        body = _error(client.post(f"/api/plugins/hecate-foo/{verb}"), 409, "no_unit")
        assert "invalid plugin.toml" in body["error"]
    _error(client.get("/api/plugins/hecate-foo/logs"), 409, "no_unit")

"""The example plugin daemon end to end: it registers, runs, is seen running, stops.

It serves what the ecosystem's plugin daemons serve on their own socket
(docs/ecosystem.md): ``/health``, ``/manifest`` and ``/ui/component.js``,
checked here over the plugin's real socket.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Daemon, UnixHTTPConnection, http_request, wait_for
from ctl_support import EXAMPLED, clean_env, ctl, python, stop

from hecated.client import HecateClient

pytestmark = pytest.mark.slow
NAME = "hecate-exampled"
MANIFEST_KEYS = {"name", "version", "display_name", "icon", "description", "tag"}
NODE = shutil.which("node")


def fetch(sock: Path, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
    """One request, the body as bytes (``/ui/component.js`` is not JSON)."""
    conn = UnixHTTPConnection(sock)
    try:
        conn.request(method, path, headers={"Connection": "close"})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def defines_element(js: str, tag: str) -> bool:
    """Run the module twice under node with a minimal DOM; True if ``tag`` got defined."""
    stub = (
        "globalThis.HTMLElement = class { replaceChildren(...c) { this.children = c; } };\n"
        "globalThis.document = { createElement: (t) => ({ tagName: t }) };\n"
        "const registry = new Map();\n"
        "globalThis.customElements = { get: (t) => registry.get(t),\n"
        "  define: (t, c) => {\n"
        "    if (registry.has(t)) throw new Error('defined twice');\n"
        "    registry.set(t, c);\n"
        "  } };\n"
    )
    check = (
        f"const C = customElements.get({json.dumps(tag)});\n"
        "const el = new C(); el.connectedCallback();\n"
        "console.log(el.children.length === 2 ? 'defined' : 'empty');\n"
    )
    proc = subprocess.run(
        [NODE, "--input-type=module"],
        input=stub + "{\n" + js + "}\n{\n" + js + "}\n" + check,  # two loads, two scopes
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip() == "defined"


class Example:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.ns = home / ".hecate" / NAME
        self.proc: subprocess.Popen | None = None

    def start(self) -> Example:
        self.proc = subprocess.Popen(
            [python(), str(EXAMPLED)],
            env=clean_env(self.home),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return self

    def status(self, client: HecateClient) -> str | None:
        try:
            return client.get(NAME).status
        except Exception:
            return None


@pytest.fixture
def example(home: Path) -> Iterator[Example]:
    ex = Example(home)
    yield ex
    if ex.proc is not None:
        stop(ex.proc)


def test_example_runs_is_seen_running_and_stops(daemon: Daemon, example: Example) -> None:
    client = HecateClient(daemon.socket)
    example.start()
    # generous: the registry learns liveness from run/daemon.pid
    wait_for(lambda: example.status(client) == "running", timeout=30)
    info = client.get(NAME)
    assert info.pid == example.proc.pid
    assert info.version == "0.1.0"
    assert (example.ns / "run/daemon.pid").read_text() == f"{example.proc.pid}\n"
    assert (example.ns / "run/daemon.state").read_text() == "running\n"

    listing = ctl(daemon.home, "list")
    assert [NAME, "0.1.0", "running"] in [line.split()[:3] for line in listing.out.splitlines()]

    # its own API on its own socket, its data in its own sqlite/ dir
    sock = example.ns / "sockets/api.sock"
    assert sock.is_socket() and sock.stat().st_mode & 0o777 == 0o600
    status, _, body = http_request(sock, "GET", "/")
    assert status == 200
    assert body == {"name": NAME, "pid": example.proc.pid, "hits": 1}
    assert (example.ns / "sqlite/example.db").is_file()
    check_plugin_endpoints(sock)

    example.proc.send_signal(signal.SIGTERM)
    assert example.proc.wait(20) == 0
    wait_for(lambda: example.status(client) == "stopped", timeout=30)
    assert not (example.ns / "run/daemon.pid").exists()
    assert not sock.exists()
    assert (example.ns / "run/daemon.state").read_text() == "stopped\n"

    # a restart re-registers; the data survived
    example.start()
    wait_for(lambda: example.status(client) == "running", timeout=30)
    wait_for(sock.is_socket, timeout=30)
    assert http_request(sock, "GET", "/")[2]["hits"] == 2

    # killed without a chance to clean up: the pid file stays, but names a dead process
    example.proc.send_signal(signal.SIGKILL)
    example.proc.wait(20)
    wait_for(lambda: example.status(client) == "stopped", timeout=30)
    assert (example.ns / "run/daemon.pid").exists()


def test_example_started_before_hecated_waits_for_it(home: Path, example: Example) -> None:
    """The SDK retries while the socket is not there yet (a daemon starting up)."""
    example.start()
    d = Daemon(home).start()
    try:
        client = HecateClient(d.socket)
        wait_for(lambda: example.status(client) == "running", timeout=30)
    finally:
        stop(example.proc)
        example.proc = None
        d.stop()


def test_example_without_hecated_fails_clearly(home: Path) -> None:
    proc = subprocess.run(
        [python(), str(EXAMPLED), "--socket", str(home / "nothing.sock"), "--wait", "0.2"],
        env=clean_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "cannot register with hecated" in proc.stderr
    assert "Traceback" not in proc.stderr


def check_plugin_endpoints(sock: Path) -> None:
    """What hecate-web and hecated read from a plugin's own socket, in the ecosystem's shapes."""
    status, headers, health = http_request(sock, "GET", "/health")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert health["ok"] is True and health["app"] == NAME and health["version"] == "0.1.0"
    assert health["node"].startswith(f"{NAME}@")

    status, _, manifest = http_request(sock, "GET", "/manifest")
    assert status == 200
    assert set(manifest) == MANIFEST_KEYS
    # the short name, as hecate-traderd's manifest says "trader"
    assert manifest["name"] == "example" and manifest["version"] == "0.1.0"
    assert manifest["display_name"] == "Example" and manifest["tag"] == "example-studio"
    assert len(manifest["icon"]) == 1 and not manifest["icon"].isascii(), "an emoji"
    assert manifest["description"]

    status, headers, js = fetch(sock, "GET", "/ui/component.js")
    assert status == 200
    assert headers["Content-Type"].startswith("text/javascript")
    assert int(headers["Content-Length"]) == len(js)
    assert b"customElements.define" in js and b'"example-studio"' in js
    if NODE:
        assert defines_element(js.decode(), manifest["tag"])

    status, headers, body = fetch(sock, "HEAD", "/manifest")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0

    # anything else: the ecosystem's error shape, never a traceback or an HTML page
    assert http_request(sock, "GET", "/ui/missing.js")[::2] == (
        404,
        {"ok": False, "error": "not_found"},
    )
    status, headers, body = http_request(sock, "POST", "/manifest", {"x": 1})
    assert (status, body) == (405, {"ok": False, "error": "method_not_allowed"})
    assert headers["Allow"] == "GET, HEAD"

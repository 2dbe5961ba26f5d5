"""The client SDK: stdlib HTTP over the Unix socket, for plugin daemons and hecatectl.

Deliberately free of heavy dependencies so that a plugin daemon can import it
without pulling in Werkzeug or watchdog.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .layout import Layout, default_root


def default_socket_path() -> Path:
    """``HECATE_SOCKET_PATH``, else the well-known ``~/.hecate/hecate-daemon/sockets/api.sock``."""
    env = os.environ.get("HECATE_SOCKET_PATH")
    return Path(env) if env else Layout.at(default_root()).api_socket


class ClientError(Exception):
    """Base of the SDK's errors."""


class DaemonUnavailableError(ClientError):
    """Nothing answers on the socket."""


class ApiError(ClientError):
    """The daemon answered with an error; carries its status, code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PluginPaths:
    name: str
    base_dir: str
    paths: dict[str, str]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(os.fspath(self._path))
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class HecateClient:
    def __init__(self, socket_path: Path | str | None = None, timeout: float = 10.0) -> None:
        self.socket_path = Path(socket_path) if socket_path else default_socket_path()
        self.timeout = timeout

    def request(self, method: str, path: str, body: Any = None) -> Any:
        conn = _UnixConnection(self.socket_path, self.timeout)
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnavailableError(
                f"hecated is not answering on {self.socket_path}: {exc.strerror}"
            ) from None
        except OSError as exc:
            raise DaemonUnavailableError(f"talking to {self.socket_path} failed: {exc}") from None
        finally:
            conn.close()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            raise ClientError(
                f"the daemon sent something that is not JSON: {raw[:200]!r}"
            ) from None
        if resp.status >= 400:
            err = (payload or {}).get("error", {}) if isinstance(payload, dict) else {}
            raise ApiError(resp.status, err.get("code", "error"), err.get("message", resp.reason))
        return payload

    def register(self, name: str, version: str = "", description: str = "") -> PluginPaths:
        body = {"name": name, "version": version, "description": description}
        answer = self.request("POST", "/api/plugins/register", body)
        return PluginPaths(answer["name"], answer["base_dir"], answer["paths"])

    def list(self) -> list[dict[str, Any]]:
        return self.request("GET", "/api/plugins")

    def get(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/api/plugins/{quote(name, safe='')}")

    def deregister(self, name: str) -> None:
        self.request("DELETE", f"/api/plugins/{quote(name, safe='')}")

    def purge(self, name: str) -> dict[str, Any]:
        return self.request("POST", f"/api/plugins/{quote(name, safe='')}/purge")

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/health")

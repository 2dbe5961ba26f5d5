"""One look at a plugin's own socket: ``GET /health``, ``/manifest``, ``/ui/component.js``.

This is network I/O with a plugin that may never answer, so everything here is
held to one deadline and one size limit per request. The connect is the run-state
room's (``runstate.connect_plugin``: no symlink, no other user's file or peer).
It finds; it never decides a status (``core/status.combine`` does) and never
touches the index.
"""

from __future__ import annotations

import io
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from hecated.core.errors import UnsafePathError
from hecated.core.status import LiveManifest, SocketFinding, SocketKind

__all__ = [
    "PROBE_TIMEOUT",
    "ProbeError",
    "exchange",
    "name_fits",
    "probe_socket",
    "read_manifest",
]

PROBE_TIMEOUT = 2.0  # one request to a plugin, connect to last byte (hecate-web's timeout too)
BODY_MAX = 64 * 1024  # the most of an answer (a manifest) read from a plugin
TEXT_MAX = 256  # the most of one manifest string kept
MANIFEST_FIELDS = ("name", "version", "icon", "description", "tag")


class ProbeError(Exception):
    """A request to a plugin did not get an HTTP answer; the message says why."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


def exchange(sock: socket.socket, path: str, timeout: float, limit: int = BODY_MAX) -> Answer:
    """One ``GET path`` on a connected socket, read to the end within ``timeout`` seconds.

    Our own few lines of HTTP/1.1 (``Connection: close``) rather than a client
    library, so the whole exchange, however slowly a plugin dribbles, is held
    to one deadline and one size limit.
    """
    deadline = time.monotonic() + timeout
    request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    try:
        sock.settimeout(timeout)
        sock.sendall(request.encode())
        raw = bytearray()
        while len(raw) <= limit + 8192:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
            if _complete(raw):
                break
    except TimeoutError:
        raise ProbeError(f"GET {path}: no answer within {timeout:g} s") from None
    except OSError as exc:
        raise ProbeError(f"GET {path}: {exc.strerror or exc}") from None
    return _parse(path, bytes(raw), limit)


def _complete(raw: bytearray) -> bool:
    """The answer is whole by its Content-Length (a plugin that keeps the connection open)."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return False
    for line in bytes(raw[:end]).split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            try:
                return len(raw) - end - 4 >= int(value)
            except ValueError:
                return False
    return False


class _Bytes:
    """Just enough of a socket for ``http.client.HTTPResponse`` to parse bytes we read."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def makefile(self, *_args: object, **_kw: object) -> io.BytesIO:
        return io.BytesIO(self._data)


def _parse(path: str, raw: bytes, limit: int) -> Answer:
    # Imported here, on a probe thread: http.client brings email and ssl, which the
    # first answer (start-up imports this module) must not wait for.
    import http.client

    if not raw:
        raise ProbeError(f"GET {path}: the connection closed without an answer")
    response = http.client.HTTPResponse(_Bytes(raw))  # type: ignore[arg-type]
    try:
        response.begin()
        body = response.read(limit + 1)
    except (http.client.HTTPException, ValueError) as exc:
        raise ProbeError(f"GET {path}: not an HTTP answer ({type(exc).__name__})") from None
    if len(body) > limit:
        raise ProbeError(f"GET {path}: the answer is over {limit} bytes")
    return Answer(response.status, body)


def _ask(connect: Callable[[], socket.socket], path: str, timeout: float) -> Answer:
    with connect() as sock:
        return exchange(sock, path, timeout)


def probe_socket(
    connect: Callable[[], socket.socket], namespace: str, timeout: float, manifest: bool
) -> SocketFinding:
    """One look at a plugin's socket: ``/health``, and with ``manifest`` its manifest and UI."""
    absent, refusing = SocketKind.ABSENT, SocketKind.REFUSING
    try:
        sock = connect()
    except FileNotFoundError:
        return SocketFinding(absent)  # the plain case, no reason needed: it is not there
    except UnsafePathError as exc:  # a link, a non-socket, another user's file or peer
        return SocketFinding(absent, str(exc))
    except TimeoutError:
        return SocketFinding(refusing, "connecting to sockets/api.sock timed out", socket_file=True)
    except BlockingIOError:  # EAGAIN: a listener whose queue is full is still a listener
        return SocketFinding(refusing, "sockets/api.sock's listen queue is full", socket_file=True)
    except OSError as exc:
        why = exc.strerror or str(exc)
        return SocketFinding(
            absent, f"nothing accepts on sockets/api.sock ({why})", socket_file=True
        )
    try:
        with sock:
            health = exchange(sock, "/health", timeout)
    except ProbeError as exc:
        return SocketFinding(refusing, str(exc), socket_file=True)
    if not 200 <= health.status < 300:
        return SocketFinding(refusing, f"GET /health answered {health.status}", socket_file=True)
    found = read_manifest(connect, namespace, timeout) if manifest else None
    return SocketFinding(SocketKind.ANSWERING, None, found, socket_file=True)


def read_manifest(
    connect: Callable[[], socket.socket], namespace: str, timeout: float
) -> LiveManifest:
    """``GET /manifest`` checked against the ecosystem's shape, and the UI module's presence."""
    problems: list[str] = []
    doc: dict = {}
    try:
        answer = _ask(connect, "/manifest", timeout)
        if not 200 <= answer.status < 300:
            problems.append(f"GET /manifest answered {answer.status}")
        else:
            doc = _json_object(answer.body, problems)
    except (ProbeError, OSError, UnsafePathError) as exc:
        problems.append(f"GET /manifest failed: {exc}")
    fields = {key: _text(doc, key, problems) for key in (*MANIFEST_FIELDS, "display_name")}
    if doc:
        problems.extend(
            f"the manifest has no {key!r}" for key in MANIFEST_FIELDS if not fields[key]
        )
    name = fields["name"]
    if name and not name_fits(namespace, name):
        problems.append(
            f"the manifest's name {name!r} fits none of the conventions of the namespace "
            f"{namespace!r} (hecate-app-{name}d, hecate-{name}d, or {namespace!r} itself)"
        )
    ui = False
    try:
        component = _ask(connect, "/ui/component.js", timeout)
        ui = 200 <= component.status < 300
        if not ui:
            problems.append(
                f"the UI will drop this plugin: GET /ui/component.js answered {component.status}"
            )
    except (ProbeError, OSError, UnsafePathError) as exc:
        problems.append(f"the UI will drop this plugin: {exc}")
    return LiveManifest(
        name=name,
        version=fields["version"],
        description=fields["description"],
        display_name=fields["display_name"] or name,
        icon=fields["icon"],
        tag=fields["tag"],
        ui=ui,
        problems=tuple(problems),
    )


def name_fits(namespace: str, name: str) -> bool:
    """Real manifests use the short name: ``trader`` in ``hecate-traderd`` or
    ``hecate-app-traderd``; the namespace's own name fits too."""
    return namespace in (name, f"hecate-{name}d", f"hecate-app-{name}d")


def _json_object(body: bytes, problems: list[str]) -> dict:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        problems.append("GET /manifest did not answer JSON")
        return {}
    if not isinstance(doc, dict):
        problems.append("GET /manifest did not answer a JSON object")
        return {}
    return doc


def _text(doc: dict, key: str, problems: list[str]) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        problems.append(f"the manifest's {key!r} is not a string")
        return None
    return value[:TEXT_MAX] or None

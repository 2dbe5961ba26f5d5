"""The client SDK: stdlib HTTP over the Unix socket, for plugin daemons and hecatectl.

Deliberately free of heavy dependencies so that a plugin daemon can import it
without pulling in Werkzeug or watchdog. A plugin daemon needs three lines::

    from hecated.client import HecateClient
    paths = HecateClient().register("hecate-exampled", "0.1.0", "An example")
    db = paths.sqlite_dir / "example.db"

Every answer is a frozen dataclass; every failure is a ``ClientError``:
``DaemonUnavailableError`` when nothing answers on the socket, ``ApiError``
(or one of its subclasses, chosen by the API's error code) when the daemon
answered with an error.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import http.client
import json
import os
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from hecated.core.layout import PID_FILE, SOCKET_NAME, STATE_FILE, Layout, default_root
from hecated.protocol import (
    MAX_BODY,
    NAME_CODES,
    RETRY_AFTER_HEADER,
    SEQ_HEADER,
    Code,
    HealthStatus,
    parse_error,
)

# What a connect sees while the socket is being (re)created: no file yet, or a
# file nobody listens on yet. Worth retrying for a moment; anything else is not.
ACTIVATION_ERRNOS = frozenset({errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN})
# Plugin units: a control call waits for the daemon's job bound (unit_job_timeout, 30 s);
# a followed log hears a heartbeat every 15 s, so this much silence means a broken stream.
CONTROL_WAIT = 35.0
FOLLOW_READ_TIMEOUT = 60.0


def default_socket_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where the primary listens, resolved the way the daemon resolves it (config.py):
    ``HECATE_SOCKET_PATH``, ``HECATE_DATA_DIR`` / ``HECATE_HOME``, the config file's
    ``socket_path`` / ``data_dir``, else the well-known
    ``~/.hecate/hecate-daemon/sockets/api.sock``. A config file the daemon would
    refuse is passed over here: the client then tries the well-known path.
    """
    from hecated.core.config import (  # stdlib and layout only: the SDK stays light
        ConfigError,
        resolve,
    )

    env = os.environ if environ is None else environ
    try:
        return resolve({}, env).layout.api_socket
    except ConfigError:
        if env.get("HECATE_SOCKET_PATH"):
            return Path(env["HECATE_SOCKET_PATH"])
        return Layout.at(default_root()).api_socket


# -- errors ----------------------------------------------------------------------------


class ClientError(Exception):
    """Base of the SDK's errors."""


class DaemonUnavailableError(ClientError):
    """Nothing answers on the socket (or it stopped answering mid-request)."""

    def __init__(self, socket_path: Path, reason: str) -> None:
        super().__init__(f"hecated is not answering on {socket_path}: {reason}")
        self.socket_path = socket_path
        self.reason = reason


class DaemonTimeoutError(DaemonUnavailableError):
    """The daemon accepted the connection but did not answer in time."""


class ApiError(ClientError):
    """The daemon answered with an error; carries its HTTP status, code and message."""

    def __init__(
        self, status: int, code: str, message: str, body: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{message} ({code})")
        self.status = status
        self.code = code
        self.message = message
        self.body: dict[str, Any] = body or {}  # the whole error answer (its extra fields)

    @staticmethod
    def from_response(
        status: int, code: str, message: str, body: dict[str, Any] | None = None
    ) -> ApiError:
        """The most specific class for an error answer, so callers can ``except`` by kind."""
        cls: type[ApiError] = ApiError
        if code in NAME_CODES:
            cls = InvalidNameError
        elif code in UNIT_ERRORS:
            cls = UNIT_ERRORS[code]
        elif code in INSTALL_ERRORS:
            cls = INSTALL_ERRORS[code]
        elif status == 404:
            cls = NotFoundError
        elif status == 409:
            cls = ConflictError
        return cls(status, code, message, body)


class InvalidNameError(ApiError):
    """The name is not a valid plugin name (``invalid_name``, ``name_too_long``, ...)."""


class NotFoundError(ApiError):
    """No such plugin or namespace (HTTP 404)."""


class ConflictError(ApiError):
    """The request clashes with the state (``still_registered``, ``plugin_running``)."""


# -- plugin units (issue 20) ---------------------------------------------------------------


class NoUnitError(ConflictError):
    """The plugin has no unit the user manager knows (``no_unit``, 409)."""


class UnitFailedError(ApiError):
    """The unit's start/stop/restart job failed (``unit_failed``, 502); ``logs`` holds
    the plugin's last journal lines, ``state`` the unit block after the job."""

    @property
    def logs(self) -> builtins.list[LogLine]:
        return [LogLine.from_json(line) for line in self.body.get("logs") or []]

    @property
    def state(self) -> dict[str, Any] | None:
        return self.body.get("state")


class SystemdUnavailableError(ApiError):
    """No systemd user manager (or journal) can be reached (``systemd_unavailable``, 503)."""


UNIT_ERRORS: dict[str, type[ApiError]] = {
    Code.NO_UNIT: NoUnitError,
    Code.UNIT_FAILED: UnitFailedError,
    Code.SYSTEMD_UNAVAILABLE: SystemdUnavailableError,
}


# -- installing plugins as unit files (issue 21) ----------------------------------------------


class InvalidUnitFileError(ApiError):
    """The unit file was refused and nothing written (``invalid_unit_file``, 400); ``line``
    is the line of its first problem (None: the file as a whole)."""

    @property
    def line(self) -> int | None:
        return self.body.get("line")


class AlreadyInstalledError(ConflictError):
    """The plugin has a unit file in the gitops tree already (``already_installed``, 409):
    install again with ``replace=True``."""


INSTALL_ERRORS: dict[str, type[ApiError]] = {
    Code.INVALID_UNIT_FILE: InvalidUnitFileError,
    Code.ALREADY_INSTALLED: AlreadyInstalledError,
}


@dataclass(frozen=True)
class InstallResult:
    """A unit file written into the gitops tree: where, and what it replaced."""

    name: str
    kind: str
    unit: str
    path: str
    replaced: builtins.list[str]
    verified: str | None  # "systemd-analyze", or None: hecated's own check only
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstallResult:
        return cls(
            str(data.get("name", "")),
            str(data.get("kind", "")),
            str(data.get("unit", "")),
            str(data.get("path", "")),
            list(data.get("replaced") or []),
            data.get("verified"),
            data,
        )


@dataclass(frozen=True)
class UninstallResult:
    """A plugin's unit stopped (when the manager had it) and its file removed; data kept."""

    name: str
    unit: str
    stopped: bool
    state: dict[str, Any] | None
    removed: builtins.list[str]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class LogLine:
    """One line of a plugin's unit's journal: when (epoch seconds), who, what."""

    time: float | None
    message: str
    pid: int | None = None
    identifier: str | None = None
    priority: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LogLine:
        return cls(
            data.get("time"),
            str(data.get("message", "")),
            data.get("pid"),
            data.get("identifier"),
            data.get("priority"),
        )


@dataclass(frozen=True)
class UnitResult:
    """A start, stop or restart that ended ``done``: the unit and its state after."""

    name: str
    unit: str
    state: dict[str, Any]
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


# -- results -----------------------------------------------------------------------------


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class PluginPaths:
    """The registration answer (beside its ``ok``): a plugin's namespace and its directories.

    ``paths`` is the spec's object as sent (keys ``sqlite``, ``reckon_db``,
    ``sockets``, ``run``, ``connectors``); the properties hand out ``Path``s.
    """

    name: str
    base_dir: str
    paths: dict[str, str]
    created: bool = False
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any], created: bool = False) -> PluginPaths:
        return cls(data["name"], data["base_dir"], dict(data["paths"]), created, data)

    def path(self, key: str) -> Path:
        return Path(self.paths[key.replace("-", "_")])

    @property
    def sqlite_dir(self) -> Path:
        return self.path("sqlite")

    @property
    def reckon_db_dir(self) -> Path:
        return self.path("reckon_db")

    @property
    def sockets_dir(self) -> Path:
        return self.path("sockets")

    @property
    def run_dir(self) -> Path:
        return self.path("run")

    @property
    def connectors_dir(self) -> Path:
        return self.path("connectors")

    @property
    def api_socket(self) -> Path:
        """Where the plugin binds its own API; what ``GET /api/plugins`` advertises."""
        return self.sockets_dir / SOCKET_NAME

    @property
    def pid_file(self) -> Path:
        """The file whose live pid makes the registry say ``starting`` (until the socket
        answers ``GET /health``: ``running``)."""
        return self.run_dir / PID_FILE

    @property
    def state_file(self) -> Path:
        return self.run_dir / STATE_FILE


@dataclass(frozen=True)
class UnitInfo:
    """A plugin's systemd user unit as the user manager last said (the entry's ``unit``).

    ``reason`` is the unit's story in words when it decides the plugin's status
    ("exited with status 1; restarted 5 times; start limit hit"); ``since`` is the
    last state change, seconds since the epoch."""

    name: str
    load_state: str
    active_state: str
    sub_state: str
    result: str = "success"
    restarts: int = 0
    since: float | None = None
    main_pid: int | None = None
    reason: str | None = None

    @classmethod
    def from_json(cls, data: object) -> UnitInfo | None:
        """The block, or None (null, or not an object: a daemon that predates units)."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return None
        return cls(
            data["name"],
            str(data.get("load_state", "")),
            str(data.get("active_state", "")),
            str(data.get("sub_state", "")),
            str(data.get("result", "success")),
            restarts if isinstance(restarts := data.get("restarts"), int) else 0,
            data.get("since"),
            data.get("main_pid"),
            data.get("reason"),
        )


@dataclass(frozen=True)
class DesiredInfo:
    """A plugin's desired-state file in the gitops tree (the entry's ``desired``): ``path``,
    ``kind`` (container or service), the ``unit`` it makes, whether hecated's link to it is
    in place, and why it cannot run here (``problem``, a sentence; None: nothing known)."""

    path: str
    kind: str
    unit: str
    linked: bool = False
    problem: str | None = None

    @classmethod
    def from_json(cls, data: object) -> DesiredInfo | None:
        """The block, or None (null, or not an object: not installed, or an older daemon)."""
        if not isinstance(data, dict) or not isinstance(data.get("path"), str):
            return None
        problem = data.get("problem")
        return cls(
            data["path"],
            str(data.get("kind", "")),
            str(data.get("unit", "")),
            bool(data.get("linked", False)),
            problem if isinstance(problem, str) else None,
        )


@dataclass(frozen=True, kw_only=True)
class LiveFields:
    """What list rows and details both carry from the plugin itself (live data).

    ``registered`` False: a discovered plugin (its socket answers, it has no
    ``plugin.toml``). ``display_name``, ``icon``, ``tag``, ``ui`` and ``problems``
    come from the plugin's own ``GET /manifest`` and ``GET /ui/component.js``.
    Defaults are what a daemon that predates them means.
    """

    registered: bool = True
    display_name: str | None = None
    icon: str | None = None
    tag: str | None = None
    ui: bool = False
    problems: tuple[str, ...] = ()
    unit: UnitInfo | None = None  # the plugin's systemd user unit; None: no word of it
    installed: bool = False  # a desired-state file in the gitops tree installs it
    desired: DesiredInfo | None = None  # that file, as the reconciler last found it
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @staticmethod
    def live_of(data: dict[str, Any]) -> dict[str, Any]:
        """The live keys of a list row or detail, and the row itself as ``raw``."""
        problems = data.get("problems")
        return {
            "registered": bool(data.get("registered", True)),
            "display_name": data.get("display_name"),
            "icon": data.get("icon"),
            "tag": data.get("tag"),
            "ui": bool(data.get("ui", False)),
            "problems": tuple(str(p) for p in problems) if isinstance(problems, list) else (),
            "unit": UnitInfo.from_json(data.get("unit")),
            "installed": bool(data.get("installed", False)),
            "desired": DesiredInfo.from_json(data.get("desired")),
            "raw": data,
        }


@dataclass(frozen=True)
class PluginSummary(LiveFields):
    """One row of ``GET /api/plugins``; ``status`` is running, starting, unhealthy,
    stopped, invalid, failed or stopping."""

    name: str
    version: str | None
    description: str | None
    socket: str
    status: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PluginSummary:
        return cls(
            data["name"],
            data.get("version"),
            data.get("description"),
            data.get("socket", ""),
            data.get("status", "unknown"),
            **cls.live_of(data),
        )


@dataclass(frozen=True)
class ManifestProblem:
    """Why a ``plugin.toml`` on disk is not a valid registry entry."""

    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class PluginInfo(LiveFields):
    """Everything ``GET /api/plugins/NAME`` says about one plugin."""

    name: str
    version: str | None
    description: str | None
    socket: str
    status: str
    base_dir: str
    paths: dict[str, str]
    manifest: str
    registered_at: datetime | None
    updated_at: datetime | None
    pid: int | None
    state: str | None
    error: ManifestProblem | None
    reason: str | None = None  # why the status is what it is, when the probe said

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PluginInfo:
        err = data.get("error")
        return cls(
            name=data["name"],
            version=data.get("version"),
            description=data.get("description"),
            socket=data.get("socket", ""),
            status=data.get("status", "unknown"),
            base_dir=data.get("base_dir", ""),
            paths=dict(data.get("paths") or {}),
            manifest=data.get("manifest") or "",
            registered_at=_time(data.get("registered_at")),
            updated_at=_time(data.get("updated_at")),
            pid=data.get("pid"),
            state=data.get("state"),
            error=None
            if not isinstance(err, dict)
            else ManifestProblem(err.get("file", ""), err.get("line"), err.get("message", "")),
            reason=data.get("reason"),
            **cls.live_of(data),
        )


@dataclass(frozen=True)
class Health:
    """``GET /health``: is the daemon serving (``status``, ``ready``), since when, and
    how each plugin is (``plugins``: name -> ``ok``, ``stopped``, ``degraded`` or a
    short reason)."""

    status: str
    ready: bool
    service: str
    version: str
    uptime_seconds: int
    plugins: dict[str, str]
    plugin_count: int
    pid: int | None
    socket: str
    data_dir: str
    seq: int | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Health:
        plugins = data.get("plugins")
        plugins = {str(k): str(v) for k, v in plugins.items()} if isinstance(plugins, dict) else {}
        count = data.get("plugin_count")
        status = data.get("status", "unknown")
        return cls(
            status=status,
            ready=bool(data.get("ready", status == HealthStatus.HEALTHY)),
            service=data.get("service", ""),
            version=data.get("version", ""),
            uptime_seconds=int(data.get("uptime_seconds", 0)),
            plugins=plugins,
            plugin_count=int(count) if isinstance(count, int) else len(plugins),
            pid=data.get("pid"),
            socket=data.get("socket", ""),
            data_dir=data.get("data_dir", ""),
            seq=data.get("seq"),
            raw=data,
        )


@dataclass(frozen=True)
class PurgeResult:
    name: str
    purged: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


@dataclass(frozen=True)
class Snapshot:
    """The plugin list together with the registry's change sequence number.

    ``seq`` is ``None`` when the daemon does not send ``X-Hecate-Seq`` (older
    daemons); callers then compare lists instead of numbers.
    """

    seq: int | None
    plugins: list[PluginSummary]

    def by_name(self) -> dict[str, PluginSummary]:
        return {p.name: p for p in self.plugins}


@dataclass(frozen=True)
class Event:
    """One event of ``GET /api/events``: the registry's ``seq`` after the change, its
    kind (registered, deregistered, installed, removed, discovered, gone, status, unit,
    updated; or resync) and the plugin's entry as the list shows it. A ``resync``
    carries no ``plugin`` but the whole list, ``plugins``, as of ``seq``. ``id`` is the
    stream's ``id:`` (``RUN-SEQ``: the daemon's run and ``seq``), what ``events``
    resumes from across a restart of the daemon."""

    seq: int
    kind: str
    plugin: PluginSummary | None
    plugins: list[PluginSummary] | None = None
    listed: bool = True  # False: the change took the name out of the list
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    id: str = ""

    @classmethod
    def from_sse(cls, event_id: str, kind: str, data: dict[str, Any]) -> Event:
        seq = event_id.rpartition("-")[2]  # RUN-SEQ (a plain SEQ from an older hecated)
        number = int(seq) if seq.isascii() and seq.isdigit() and len(seq) < 20 else -1
        if kind == "resync":
            plugins = [PluginSummary.from_json(p) for p in data.get("plugins") or []]
            return cls(int(data.get("seq", number)), kind, None, plugins, True, data, event_id)
        listed = data.get("listed") is not False
        return cls(number, kind, PluginSummary.from_json(data), None, listed, data, event_id)


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    body: Any


# -- transport ---------------------------------------------------------------------------


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


class _Retry(Exception):
    """Internal: this attempt failed in a way that is safe and worth repeating."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class HecateClient:
    """A client of one hecated, one short-lived connection per request.

    ``timeout`` bounds each request once connected. ``connect_retry`` is how
    long to keep trying while the socket is missing or refuses connections (a
    daemon starting, restarting or being socket-activated), and while the
    daemon answers ``503 busy``; it never resends a request the daemon may
    have acted on, except ``GET``.
    """

    def __init__(
        self,
        socket_path: Path | str | None = None,
        timeout: float = 10.0,
        connect_retry: float = 2.0,
    ) -> None:
        self.socket_path = Path(socket_path) if socket_path else default_socket_path()
        self.timeout = timeout
        self.connect_retry = connect_retry

    def __repr__(self) -> str:
        return f"HecateClient({str(self.socket_path)!r})"

    # -- raw requests ------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> Response:
        """One request; returns the decoded answer or raises the matching ``ClientError``."""
        deadline = time.monotonic() + self.connect_retry
        delay = 0.02
        while True:
            try:
                resp = self._attempt(method, path, body, timeout or self.timeout)
            except _Retry as retry:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DaemonUnavailableError(self.socket_path, retry.reason) from None
                time.sleep(min(retry.delay or delay, left))
                delay = min(delay * 2, 0.25)
                continue
            return _check(resp)

    def _attempt(self, method: str, path: str, body: Any, timeout: float) -> Response:
        conn = _UnixConnection(self.socket_path, timeout)
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            try:
                conn.connect()
            except OSError as exc:
                reason = exc.strerror or str(exc)
                if exc.errno in ACTIVATION_ERRNOS:
                    raise _Retry(reason) from None
                raise DaemonUnavailableError(self.socket_path, reason) from None
            try:
                # A daemon refusing work (503 busy) answers without reading the
                # request and closes; its answer is still there to be read.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except TimeoutError:
                raise DaemonTimeoutError(
                    self.socket_path, f"no answer within {timeout:g} s"
                ) from None
            except (ConnectionError, http.client.RemoteDisconnected) as exc:
                if method == "GET":
                    raise _Retry(f"connection lost: {exc}") from None
                raise DaemonUnavailableError(
                    self.socket_path, f"connection lost during {method} {path}: {exc}"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                raise DaemonUnavailableError(self.socket_path, f"{method} {path}: {exc}") from None
        finally:
            conn.close()
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            raise ClientError(
                f"the daemon sent something that is not JSON (HTTP {resp.status}): {raw[:200]!r}"
            ) from None
        error = parse_error(payload) if resp.status >= 400 else None
        if resp.status == 503 and error is not None and error[0] == Code.BUSY:
            raise _Retry("the daemon is busy", _retry_after(resp.getheader(RETRY_AFTER_HEADER)))
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, payload)

    # -- the API ------------------------------------------------------------------------

    def register(
        self,
        name: str,
        version: str | None = None,
        description: str | None = None,
        unit: str | None = None,
    ) -> PluginPaths:
        """Register (or re-register, on every start) and get the namespace's paths.

        ``version`` or ``description`` left out (None): the daemon takes them from the
        plugin's own ``GET /manifest`` when its socket answers, else leaves them empty.
        ``unit``: the systemd user unit that runs the plugin (None: keep what plugin.toml
        says; a plugin.toml without one means ``{name}.service``).
        """
        body: dict[str, str] = {"name": name}
        if unit is not None:
            body["unit"] = unit
        if version is not None:
            body["version"] = version
        if description is not None:
            body["description"] = description
        resp = self.request("POST", "/api/plugins/register", body)
        return PluginPaths.from_json(resp.body, created=resp.status == 201)

    def list(self) -> builtins.list[PluginSummary]:
        return self.snapshot().plugins

    def snapshot(self) -> Snapshot:
        """The plugin list and the registry's ``seq`` as of that list."""
        return _snapshot(self.request("GET", "/api/plugins"))

    def get(self, name: str) -> PluginInfo:
        return PluginInfo.from_json(self.request("GET", _plugin_url(name)).body)

    def deregister(self, name: str) -> None:
        """Remove the registry entry; the namespace and its data stay."""
        self.request("DELETE", _plugin_url(name))

    def purge(self, name: str) -> PurgeResult:
        """Delete a deregistered plugin's namespace; ``ConflictError`` while registered."""
        body = self.request("POST", _plugin_url(name) + "/purge").body
        return PurgeResult(name, body.get("purged", ""), body)

    def health(self) -> Health:
        return Health.from_json(self.request("GET", "/health").body)

    def wait_for_change(self, since: int, wait: float = 30.0) -> Snapshot:
        """Long-poll: the list as soon as the registry's seq passes ``since``.

        Returns after at most about ``wait`` seconds with the (maybe unchanged)
        list. A daemon that does not know the long poll answers at once; the
        caller must not assume that an answer means a change.
        """
        query = urlencode({"since": int(since), "wait": f"{max(wait, 0):g}"})
        resp = self.request("GET", f"/api/plugins?{query}", timeout=wait + self.timeout)
        return _snapshot(resp)

    # -- plugin units ----------------------------------------------------------------------

    def start(self, name: str) -> UnitResult:
        """Start the plugin's unit (a failed state cleared first); waits for the job."""
        return self._control(name, "start")

    def stop(self, name: str) -> UnitResult:
        return self._control(name, "stop")

    def restart(self, name: str) -> UnitResult:
        return self._control(name, "restart")

    def _control(self, name: str, verb: str) -> UnitResult:
        # The daemon waits up to unit_job_timeout (30 s) for the job: wait a little longer.
        timeout = self.timeout + CONTROL_WAIT
        body = self.request("POST", f"{_plugin_url(name)}/{verb}", timeout=timeout).body
        return UnitResult(name, body.get("unit", ""), body.get("state") or {}, body)

    # -- installing plugins as unit files (issue 21) ------------------------------------------

    def install(self, unit: str, kind: str, name: str, replace: bool = False) -> InstallResult:
        """Install plugin ``name`` from a unit file's text (``kind``: "service" or
        "container"): checked, then written into the gitops tree, which the daemon
        reconciles. ``InvalidUnitFileError`` (with the line), ``AlreadyInstalledError``."""
        body = {"unit": unit, "kind": kind, "name": name, "replace": replace}
        return InstallResult.from_json(self.request("POST", "/api/plugins/install", body).body)

    def install_file(self, path: str | os.PathLike[str], replace: bool = False) -> InstallResult:
        """Install from a local file ``NAME.service`` or ``NAME.container``, read here (so
        it needs no path the daemon can see: its unit has a private /tmp)."""
        path = Path(path)
        with path.open("rb") as f:
            data = f.read(MAX_BODY + 1)  # more is refused by the daemon anyway
        stem, _, kind = path.name.rpartition(".")
        # A file that is not UTF-8 goes as it is: the daemon names the line.
        return self.install(data.decode("utf-8", "surrogateescape"), kind, stem, replace)

    def install_path(self, path: str, replace: bool = False) -> InstallResult:
        """Install from a file the daemon reads itself (an absolute path it can see)."""
        body = {"path": path, "replace": replace}
        return InstallResult.from_json(self.request("POST", "/api/plugins/install", body).body)

    def uninstall(self, name: str) -> UninstallResult:
        """Stop the plugin's unit and remove its file from the gitops tree; its data (and
        its registration) stay. ``NotFoundError`` when it is not installed."""
        timeout = self.timeout + CONTROL_WAIT  # the stop job may take unit_job_timeout
        body = self.request("POST", f"{_plugin_url(name)}/uninstall", timeout=timeout).body
        return UninstallResult(
            name,
            str(body.get("unit", "")),
            bool(body.get("stopped")),
            body.get("state"),
            list(body.get("removed") or []),
            body,
        )

    def logs(self, name: str, lines: int = 100) -> builtins.list[LogLine]:
        """The last ``lines`` lines of the plugin's unit's journal, oldest first."""
        path = f"{_plugin_url(name)}/logs?{urlencode({'lines': int(lines)})}"
        return [LogLine.from_json(x) for x in self.request("GET", path).body.get("lines", [])]

    def follow_logs(self, name: str, lines: int = 10) -> Iterator[LogLine]:
        """The last ``lines`` lines, then each new one as it is written (server-sent
        events), until the caller stops iterating (closing the generator hangs up)."""
        path = f"{_plugin_url(name)}/logs?{urlencode({'lines': int(lines), 'follow': 1})}"
        for _id, _kind, data in self._stream(path, {}, "the log stream"):
            yield LogLine.from_json(json.loads(data))

    # -- the change feed as events --------------------------------------------------------

    def events(self, since: int | str | None = None) -> Iterator[Event]:
        """Every change of the registry as it happens (``GET /api/events``), from after
        ``since`` (None: from now) until the caller stops iterating (closing the
        generator hangs up). A ``resync`` event (``since`` too old for the daemon, or
        from another run of it, or this reader fell behind) carries the whole list in
        ``plugins``; the events after its ``seq`` follow.

        Resume after a broken stream with ``since`` = the last event's ``id`` (a str,
        sent as ``Last-Event-ID``): nothing is lost, and an id of the daemon's run
        before a restart gets a resync. An int is a ``seq`` of the daemon's current
        run (a ``Snapshot``'s, sent as ``?since=``): the daemon cannot tell another
        run's number from its own, so take it from a list of the same run."""
        path, headers = "/api/events", {}
        if isinstance(since, str):
            headers = {"Last-Event-ID": since}
        elif since is not None:
            path += f"?since={int(since)}"
        for event_id, kind, data in self._stream(path, headers, "the event stream"):
            yield Event.from_sse(event_id, kind, json.loads(data))

    def _stream(
        self, path: str, headers: dict[str, str], what: str
    ) -> Iterator[tuple[str, str, str]]:
        """The events of a server-sent event stream: (id, event, data) each."""
        conn = _UnixConnection(self.socket_path, FOLLOW_READ_TIMEOUT)
        try:
            try:
                conn.request("GET", path, headers={"Accept": "text/event-stream", **headers})
                resp = conn.getresponse()
            except OSError as exc:
                raise DaemonUnavailableError(self.socket_path, str(exc)) from None
            if resp.status >= 400:
                payload = _json_or_none(resp.read())
                _check(Response(resp.status, {}, payload))
            yield from _sse(resp, self.socket_path, what)
        finally:
            conn.close()


def _sse(resp: http.client.HTTPResponse, where: Path, what: str) -> Iterator[tuple[str, str, str]]:
    """Server-sent events as (id, event, data), each dispatched at its blank line;
    comment lines (heartbeats) skipped, as the SSE spec reads them."""
    fields: dict[str, str] = {}
    while True:
        try:
            raw = resp.readline()
        except TimeoutError:
            raise DaemonTimeoutError(where, f"{what} went silent") from None
        except (OSError, http.client.HTTPException) as exc:
            raise DaemonUnavailableError(where, f"{what} broke: {exc}") from None
        if not raw:
            return
        line = raw.decode(errors="replace").rstrip("\r\n")
        if not line:
            if "data" in fields:
                yield fields.get("id", ""), fields.get("event", "message"), fields["data"]
            fields = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(":")
            fields[key] = value[1:] if value.startswith(" ") else value


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _plugin_url(name: str) -> str:
    return f"/api/plugins/{quote(name, safe='')}"


def _snapshot(resp: Response) -> Snapshot:
    seq = resp.headers.get(SEQ_HEADER.lower())
    try:
        number = int(seq) if seq is not None else None
    except ValueError:
        number = None
    return Snapshot(number, [PluginSummary.from_json(p) for p in resp.body or []])


def _retry_after(value: str | None) -> float | None:
    try:
        return min(float(value), 1.0) if value else None
    except ValueError:
        return None


def _check(resp: Response) -> Response:
    if resp.status < 400:
        return resp
    code, message = parse_error(resp.body) or ("", "")
    raise ApiError.from_response(
        resp.status,
        code or f"http_{resp.status}",
        message or f"HTTP {resp.status}",
        resp.body if isinstance(resp.body, dict) else None,
    )

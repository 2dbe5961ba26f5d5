"""The wire contract shared by the daemon, the SDK and the OpenAPI description.

Standard library only, and the lowest layer of the house: everything may import
it, it imports nothing of hecated's. One place spells each part of what goes
over the socket: the error envelope and its codes (and the HTTP status of
each), the header names, the peer's credentials, the health vocabulary, and
the name rules and limits. The app, the serving layer's own refusals, the SDK
and the OpenAPI description all take them from here, so they cannot drift.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import struct
from enum import StrEnum
from typing import Any, NamedTuple

# -- names and limits ---------------------------------------------------------------------

NAME_PATTERN = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"
NAME_RE = re.compile(NAME_PATTERN)
NAME_MAX = 64
# The primary's own namespace: reserved, never a plugin's name.
PRIMARY_NAME = "hecate-daemon"
# Beside the namespaces: where hecate-tui looks for the daemon (after $HECATE_SOCKET and
# /run/hecate/daemon.sock); hecate.socket listens there too, and a standalone hecated binds it.
TUI_SOCKET = "daemon.sock"
# sun_path is 108 bytes including the terminating NUL: a plugin's socket path
# (ROOT/NAME/sockets/api.sock) must fit in the rest.
SUN_PATH_MAX = 107
# The largest request body the API reads (a registration is a few hundred bytes).
MAX_BODY = 64 * 1024

# -- unit names ----------------------------------------------------------------------------

# systemd's UNIT_NAME_MAX is 256 with the NUL: a unit name has at most 255 bytes.
UNIT_NAME_MAX = 255
UNIT_SUFFIX = ".service"
# systemd's own alphabet (unit-name.c, VALID_CHARS) minus the backslash of its escapes:
# a plugin's unit is named by a person or by the convention, never by systemd-escape.
_UNIT_PART = r"[A-Za-z0-9_:][A-Za-z0-9_:.-]*"
UNIT_PATTERN = rf"^{_UNIT_PART}(@{_UNIT_PART})?\.service$"
_UNIT_RE = re.compile(UNIT_PATTERN)


class InvalidUnitName(ValueError):
    """A unit name that is not a plain ``.service`` name; refused before any call."""


def check_unit_name(unit: object) -> str:
    """``unit`` if it is a name we may hand to the user manager, else ``InvalidUnitName``.

    Why so strict: the name reaches systemd's D-Bus API and the journal's matches, and a
    plugin.toml or a request body is where it comes from. It lives here, beside the plugin
    name rule, so the manifest, the API and the unit adapter refuse the same names.
    Only ``.service`` units: no path, no backslash escape, no template without an instance."""
    if not isinstance(unit, str) or not unit:
        raise InvalidUnitName("a unit name is a non-empty string")
    if len(unit.encode("utf-8", "surrogatepass")) > UNIT_NAME_MAX:
        raise InvalidUnitName(f"a unit name has at most {UNIT_NAME_MAX} bytes")
    if not unit.endswith(UNIT_SUFFIX):
        raise InvalidUnitName(f"only {UNIT_SUFFIX} units run plugins: {unit!r}")
    if "/" in unit or "\\" in unit:
        raise InvalidUnitName(f"a unit name, not a path or an escape: {unit!r}")
    if unit.endswith("@" + UNIT_SUFFIX):
        raise InvalidUnitName(f"a template needs an instance: {unit!r}")
    if not _UNIT_RE.fullmatch(unit):
        raise InvalidUnitName(
            f"not a unit name (letters, digits, ':', '_', '.', '-', one '@'): {unit!r}"
        )
    return unit


# -- headers -------------------------------------------------------------------------------

SEQ_HEADER = "X-Hecate-Seq"  # the registry's change sequence number behind an answer
RETRY_AFTER_HEADER = "Retry-After"
BUSY_RETRY_AFTER = 1  # seconds a busy daemon asks a client to wait before retrying

# -- the error envelope ----------------------------------------------------------------------


class Code(StrEnum):
    """Every stable error code a client may see (a ``str``: it compares and encodes as one)."""

    INVALID_NAME = "invalid_name"
    NAME_TOO_LONG = "name_too_long"
    RESERVED_NAME = "reserved_name"
    INVALID_FIELD = "invalid_field"
    INVALID_JSON = "invalid_json"
    INVALID_BODY = "invalid_body"
    INVALID_PARAMETER = "invalid_parameter"
    BAD_REQUEST = "bad_request"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    STILL_REGISTERED = "still_registered"
    PLUGIN_RUNNING = "plugin_running"
    UNSAFE_PATH = "unsafe_path"
    BODY_TOO_LARGE = "body_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    HEADERS_TOO_LARGE = "headers_too_large"
    STORAGE_ERROR = "storage_error"
    BUSY = "busy"
    PLUGIN_UNREACHABLE = "plugin_unreachable"  # forwarding: no socket, refused, reset
    PLUGIN_TIMEOUT = "plugin_timeout"  # forwarding: no first byte in time
    INTERNAL_ERROR = "internal_error"
    HTTP_ERROR = "http_error"  # any other HTTP failure, named by its status
    # Plugin units (issue 20): control and logs through the user's systemd manager.
    INVALID_UNIT = "invalid_unit"  # not a plain .service name; refused before any call
    NO_UNIT = "no_unit"  # the user manager has no unit file for the plugin
    UNIT_FAILED = "unit_failed"  # the start/stop/restart job did not end "done"
    SYSTEMD_UNAVAILABLE = "systemd_unavailable"  # no user manager can be reached
    # Installing plugins as unit files in the gitops tree (issue 21).
    INVALID_UNIT_FILE = "invalid_unit_file"  # a unit file refused before it was written
    ALREADY_INSTALLED = "already_installed"  # its file is in the tree; replace: true


# The HTTP status each code is answered with.
STATUS: dict[Code, int] = {
    Code.INVALID_NAME: 400,
    Code.NAME_TOO_LONG: 400,
    Code.RESERVED_NAME: 400,
    Code.INVALID_FIELD: 400,
    Code.INVALID_JSON: 400,
    Code.INVALID_BODY: 400,
    Code.INVALID_PARAMETER: 400,
    Code.BAD_REQUEST: 400,
    Code.FORBIDDEN: 403,
    Code.NOT_FOUND: 404,
    Code.METHOD_NOT_ALLOWED: 405,
    Code.STILL_REGISTERED: 409,
    Code.PLUGIN_RUNNING: 409,
    Code.UNSAFE_PATH: 409,
    Code.BODY_TOO_LARGE: 413,
    Code.UNSUPPORTED_MEDIA_TYPE: 415,
    Code.HEADERS_TOO_LARGE: 431,
    Code.INTERNAL_ERROR: 500,
    Code.BUSY: 503,
    Code.PLUGIN_UNREACHABLE: 502,
    Code.PLUGIN_TIMEOUT: 504,
    Code.STORAGE_ERROR: 507,
    Code.INVALID_UNIT: 400,
    Code.NO_UNIT: 409,
    Code.UNIT_FAILED: 502,
    Code.SYSTEMD_UNAVAILABLE: 503,
    Code.INVALID_UNIT_FILE: 400,
    Code.ALREADY_INSTALLED: 409,
}

# The code of a failure known only by its HTTP status (a bad route, a refusal of
# the HTTP server's own parser); any other status is ``http_error``.
CODE_OF_STATUS: dict[int, Code] = {
    400: Code.BAD_REQUEST,
    403: Code.FORBIDDEN,
    404: Code.NOT_FOUND,
    405: Code.METHOD_NOT_ALLOWED,
    413: Code.BODY_TOO_LARGE,
    415: Code.UNSUPPORTED_MEDIA_TYPE,
    431: Code.HEADERS_TOO_LARGE,
    500: Code.INTERNAL_ERROR,
    501: Code.BAD_REQUEST,  # e.g. a transfer coding the server does not implement
}

# The codes that say "this name cannot be used" (the SDK raises InvalidNameError).
NAME_CODES = frozenset({Code.INVALID_NAME, Code.NAME_TOO_LONG, Code.RESERVED_NAME})


def status_of(code: str) -> int:
    """The HTTP status of an error code; an unknown code is the server's fault (500)."""
    try:
        return STATUS[Code(code)]
    except ValueError:
        return 500


def code_of_status(status: int) -> Code:
    return CODE_OF_STATUS.get(status, Code.HTTP_ERROR)


def error_body(code: str, message: str) -> dict[str, Any]:
    """The one error envelope of the Hecate ecosystem: ``{ok: false, error, code}``.

    ``error`` is the human message (what hecate-web shows as ``String(json.error)``),
    ``code`` the stable machine-readable code.
    """
    return {"ok": False, "error": message, "code": str(code)}


def error_headers(code: str) -> list[tuple[str, str]]:
    """Headers an error of this code always carries (``Retry-After`` on ``busy``)."""
    if code == Code.BUSY:
        return [(RETRY_AFTER_HEADER, str(BUSY_RETRY_AFTER))]
    return []


def parse_error(payload: Any) -> tuple[str, str] | None:
    """``(code, message)`` of an error answer, or ``None`` if it is not one.

    Reads the envelope, and the ``{"error": {"code", "message"}}`` of hecated
    before 0.2, so an SDK newer than its daemon still names the failure.
    """
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict):  # the old shape
        return str(error.get("code") or ""), str(error.get("message") or "")
    if isinstance(error, str) or "code" in payload:
        return str(payload.get("code") or ""), str(error or "")
    return None


def encode(body: Any) -> bytes:
    """JSON as the API sends it: compact, UTF-8, one line.

    A lone surrogate from a client's JSON (echoed in a message) has no UTF-8
    form; escaped JSON still says exactly what was sent.
    """
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":")) + "\n"
    try:
        return text.encode()
    except UnicodeEncodeError:
        return (json.dumps(body, separators=(",", ":")) + "\n").encode()


# -- health ----------------------------------------------------------------------------------

SERVICE = "hecate"  # what ``GET /health`` calls the service (hecate-web checks it)


class HealthStatus(StrEnum):
    """The daemon's ``status`` in ``GET /health``; ``ready`` is true only when healthy."""

    STARTING = "starting"
    HEALTHY = "healthy"
    STOPPING = "stopping"


class PluginStatus(StrEnum):
    """A plugin's ``status`` in the list, its detail and the change feed."""

    RUNNING = "running"  # its socket answers GET /health with a 2xx
    STARTING = "starting"  # its pid file names a live process; the socket does not answer yet
    UNHEALTHY = "unhealthy"  # something accepts on its socket, but not a 2xx /health
    STOPPED = "stopped"
    INVALID = "invalid"  # its plugin.toml is not a valid entry
    FAILED = "failed"  # its systemd unit failed (the reason says how, in words)
    STOPPING = "stopping"  # its systemd unit is deactivating


# A plugin's word in the health answer's ``plugins`` object (else a short reason).
PLUGIN_OK = "ok"  # running
PLUGIN_DEGRADED = "degraded"  # alive but not answering as it should
PLUGIN_STOPPED = "stopped"
PLUGIN_STOPPING = "stopping"  # its unit is deactivating
PLUGIN_FAILED = "failed"  # its unit failed: "failed: " and the reason in words
PLUGIN_REASON_MAX = 120  # characters of a reason (an invalid plugin.toml's message)

# -- peers -----------------------------------------------------------------------------------

# Where the serving layer puts the connecting peer in the WSGI environ.
PEER_ENVIRON_KEY = "hecated.peer"
_PEERCRED = struct.Struct("3i")


class Peer(NamedTuple):
    """The connecting process, as the kernel vouches for it (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int

    @classmethod
    def of(cls, conn: socket.socket) -> Peer | None:
        """The peer of a connected Unix socket, or ``None`` if the kernel will not say."""
        try:
            raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        except OSError:
            return None
        return cls(*_PEERCRED.unpack(raw))


# The only answers of a connect to a Unix socket that mean "nothing listens here"; any
# other (EAGAIN: a full listen queue, a timeout, EACCES) means something may.
NOBODY_LISTENS = frozenset({errno.ECONNREFUSED, errno.ENOENT})


def accepts(path: str | os.PathLike[str], timeout: float = 1.0) -> bool:
    """Does something accept connections on this Unix socket path?

    The one test of "is this socket file stale": the daemon's start-up (it
    removes a socket only when nothing accepts on it) and ``hecatectl doctor``
    both ask it. A hung daemon, systemd holding the socket while the service
    starts, or a listener whose queue is full (``EAGAIN`` at once) still
    accepts: such a socket is never stale. Nothing is sent.
    """
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout)
    try:
        probe.connect(os.fspath(path))
    except OSError as exc:
        return exc.errno not in NOBODY_LISTENS
    finally:
        probe.close()
    return True

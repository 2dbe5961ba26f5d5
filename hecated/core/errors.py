"""The registry's failures, each with a stable machine-readable code.

The core raises these; the codes (and the HTTP status of each) are the wire
contract's (``hecated.protocol``), so the core names a failure and never
learns about HTTP.
"""

from __future__ import annotations

from hecated.protocol import Code


class HecateError(Exception):
    """Base of every error a client may be told about."""

    code: str = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def fields(self) -> dict[str, object]:
        """What the error envelope carries beside ``ok``, ``error`` and ``code``."""
        return {}


class InvalidNameError(HecateError):
    code = Code.INVALID_NAME


class NameTooLongError(InvalidNameError):
    code = Code.NAME_TOO_LONG


class ReservedNameError(InvalidNameError):
    code = Code.RESERVED_NAME


class InvalidFieldError(HecateError):
    code = Code.INVALID_FIELD


class UnsafePathError(HecateError):
    """A path in the tree is a symlink, or not the kind of file it must be."""

    code = Code.UNSAFE_PATH


class ForeignOwnerError(UnsafePathError):
    """A file or directory below the data root belongs to another user: never trusted.

    Whoever could write into the tree while it was open (a 0777 root) may have made
    it; hecated neither reads, probes nor connects to what another user owns.
    """


class NotFoundError(HecateError):
    code = Code.NOT_FOUND


class StillRegisteredError(HecateError):
    code = Code.STILL_REGISTERED


class PluginRunningError(HecateError):
    code = Code.PLUGIN_RUNNING


class StorageError(HecateError):
    """The disk refused a write (full, read-only, permissions)."""

    code = Code.STORAGE_ERROR


class BusyError(HecateError):
    """Too many requests are already waiting; retry shortly (not the request's fault)."""

    code = Code.BUSY


# -- plugin units (issue 20): what the user manager answered, named for the client -------------


class InvalidUnitError(HecateError):
    """A unit name that is not a plain ``.service`` name: refused before any D-Bus call."""

    code = Code.INVALID_UNIT


class NoUnitError(HecateError):
    """The user manager has no unit file for the plugin's unit: nothing to start or stop."""

    code = Code.NO_UNIT


class UnitFailedError(HecateError):
    """The unit's job ended other than ``done`` (or not in time).

    ``logs`` are the plugin's last journal lines (dicts), so the answer says why
    without a second request; ``state`` the unit block just after the job."""

    code = Code.UNIT_FAILED

    def __init__(
        self,
        message: str,
        result: str = "failed",
        state: dict[str, object] | None = None,
        logs: list[dict[str, object]] | None = None,
    ) -> None:
        super().__init__(message)
        self.result = result
        self.state = state
        self.logs = logs or []

    def fields(self) -> dict[str, object]:
        return {"result": self.result, "state": self.state, "logs": self.logs}


class SystemdUnavailableError(HecateError):
    """No user manager can be reached (no session bus, none on it, not ours): the
    registry keeps working, control and logs answer 503 until it is back."""

    code = Code.SYSTEMD_UNAVAILABLE


# -- installing plugins as unit files (issue 21) -------------------------------------------------


class InvalidUnitFileError(HecateError):
    """A unit file that may not be installed; ``line`` is where its first problem is
    (``None``: the file as a whole, e.g. its size), also in the message ("line 7: ...")."""

    code = Code.INVALID_UNIT_FILE

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line

    def fields(self) -> dict[str, object]:
        return {"line": self.line}


class AlreadyInstalledError(HecateError):
    """A desired-state file of that plugin is already in the gitops tree (``replace`` it)."""

    code = Code.ALREADY_INSTALLED

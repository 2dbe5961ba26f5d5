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

"""The registry's failures, each with a stable machine-readable code.

The core raises these; the edge (api.py) alone decides which HTTP status each
code deserves, so the core never learns about HTTP.
"""

from __future__ import annotations


class HecateError(Exception):
    """Base of every error a client may be told about."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidNameError(HecateError):
    code = "invalid_name"


class NameTooLongError(InvalidNameError):
    code = "name_too_long"


class ReservedNameError(InvalidNameError):
    code = "reserved_name"


class InvalidFieldError(HecateError):
    code = "invalid_field"


class UnsafePathError(HecateError):
    """A path in the tree is a symlink, or not the kind of file it must be."""

    code = "unsafe_path"


class NotFoundError(HecateError):
    code = "not_found"


class StillRegisteredError(HecateError):
    code = "still_registered"


class PluginRunningError(HecateError):
    code = "plugin_running"


class StorageError(HecateError):
    """The disk refused a write (full, read-only, permissions)."""

    code = "storage_error"


class BusyError(HecateError):
    """Too many requests are already waiting; retry shortly (not the request's fault)."""

    code = "busy"

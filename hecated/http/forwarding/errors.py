"""What can go wrong between hecated and a plugin, each with its code in the envelope."""

from __future__ import annotations

from hecated.core.errors import HecateError
from hecated.protocol import Code


class PluginUnreachableError(HecateError):
    """No socket, nothing accepting on it, the connection reset before an answer, or an
    answer hecated cannot pass on faithfully (conflicting framing, a malformed head)."""

    code = Code.PLUGIN_UNREACHABLE


class PluginNotListeningError(PluginUnreachableError):
    """Nothing listens on the plugin's socket (no socket file, or the connect is refused):
    a plugin that is not running, which the wing may start on demand (``ondemand``)."""


class PluginTimeoutError(HecateError):
    """The plugin accepted but sent no first byte in time."""

    code = Code.PLUGIN_TIMEOUT


class BodyTooLargeError(HecateError):
    code = Code.BODY_TOO_LARGE


class BadForwardError(HecateError):
    """The client's request cannot be forwarded as it is (the client's fault: a 400)."""

    code = Code.BAD_REQUEST

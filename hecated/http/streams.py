"""What the serving layer and the forwarder agree on: the ``/plugin/`` prefix, the
environ keys a forwarded request carries, and the bounds on forwarding.

Kept apart from ``forward.py`` (which relays with ``http.client``, and so imports
``email``) so that the serving layer and the daemon's start-up never load the relay:
forwarded requests go through the full app, which is built off the cold-start path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PREFIX = "/plugin/"
# What the serving layer puts in the environ of a forwarded request.
BUSY_KEY = "hecated.forward_busy"  # the stream cap was reached: answer 503 busy
ABORT_KEY = "hecated.forward_abort"  # call to end the client's stream abruptly
# Call with a function the serving layer runs when the client's connection closes: a
# stream whose plugin is silent must not hold its place until the idle timeout.
ON_CLOSE_KEY = "hecated.forward_on_close"

DEFAULT_BODY_LIMIT = 16 * 1024 * 1024
DEFAULT_STREAMS = 256
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_FIRST_BYTE_TIMEOUT = 30.0  # hecate-web's own read timeout
# A kept-alive connection to a plugin idle this long is closed (before most servers'
# own keep-alive timeouts, so a kept one is seldom found closed).
DEFAULT_POOL_IDLE = 30.0


@dataclass(frozen=True)
class ForwardSettings:
    """Bounds on forwarding, so that plugins cannot starve the registry."""

    body_limit: int = DEFAULT_BODY_LIMIT
    max_streams: int = DEFAULT_STREAMS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    first_byte_timeout: float = DEFAULT_FIRST_BYTE_TIMEOUT
    pool_idle: float = DEFAULT_POOL_IDLE

    @classmethod
    def from_config(cls, config: Any) -> ForwardSettings:
        return cls(
            body_limit=config.forward_body_limit,
            max_streams=config.forward_streams,
            idle_timeout=config.forward_idle_timeout,
            first_byte_timeout=config.forward_timeout,
        )

"""The forwarding wing's one spelling of its prefix, and its bounds.

Kept apart from ``relay.py`` (which relays with ``http.client``, and so imports
``email``) so that the daemon's start-up and the wing's edge never load the relay:
forwarded requests go through the full app, which is built off the cold-start path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The one place the forwarded prefix is spelled: the edge's decision, the router's rule,
# the relay's target and the OpenAPI document all take it from here.
PREFIX = "/plugin/"

DEFAULT_BODY_LIMIT = 16 * 1024 * 1024
DEFAULT_STREAMS = 256
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_FIRST_BYTE_TIMEOUT = 30.0  # hecate-web's own read timeout
# A kept-alive connection to a plugin idle this long is closed (before most servers'
# own keep-alive timeouts, so a kept one is seldom found closed).
DEFAULT_POOL_IDLE = 30.0
# Seconds an idle stream thread is kept for the next forwarded request.
DEFAULT_THREAD_KEEP = 30.0


def is_forwarded(path: str) -> bool:
    """Is ``path`` (as the router sees it: PATH_INFO) one the wing forwards?"""
    return path.startswith(PREFIX)


@dataclass(frozen=True)
class ForwardSettings:
    """Bounds on forwarding, so that plugins cannot starve the registry."""

    body_limit: int = DEFAULT_BODY_LIMIT
    max_streams: int = DEFAULT_STREAMS
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    first_byte_timeout: float = DEFAULT_FIRST_BYTE_TIMEOUT
    pool_idle: float = DEFAULT_POOL_IDLE
    thread_keep: float = DEFAULT_THREAD_KEEP

    @classmethod
    def from_config(cls, config: Any) -> ForwardSettings:
        return cls(
            body_limit=config.forward_body_limit,
            max_streams=config.forward_streams,
            idle_timeout=config.forward_idle_timeout,
            first_byte_timeout=config.forward_timeout,
        )

"""The forwarding wing's one spelling of its prefix, and its bounds.

Kept apart from ``relay.py`` so that the daemon's start-up and the wing's edge never
load the relay: forwarded requests go through the full app, which is built off the
cold-start path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hecated.core.settings import default

# The one place the forwarded prefix is spelled: the edge's decision, the router's rule,
# the relay's target and the OpenAPI document all take it from here.
PREFIX = "/plugin/"

# Not settings a user sets (the table in core/settings.py holds those): a kept-alive
# connection to a plugin idle this long is closed (before most servers' own keep-alive
# timeouts, so a kept one is seldom found closed); an idle stream thread is kept this
# long for the next forwarded request.
POOL_IDLE = 30.0
THREAD_KEEP = 30.0
# How long a stream thread that has answered a forwarded request waits for the next one
# on the same connection (a client's burst of requests, back to back), before the
# serving loop takes the connection back.
FOLLOW = 0.02


def is_forwarded(path: str) -> bool:
    """Is ``path`` (as the router sees it: PATH_INFO) one the wing forwards?"""
    return path.startswith(PREFIX)


@dataclass(frozen=True)
class ForwardSettings:
    """Bounds on forwarding, so that plugins cannot starve the registry.

    The user's settings (``forward_*``, section "forward" of ``core.settings.SETTINGS``)
    take their defaults from that table; ``from_config`` takes the section by its field
    names, so a new forwarding setting is one line there and one field here.
    """

    body_limit: int = default("forward_body_limit")
    max_streams: int = default("forward_streams")
    idle_timeout: float = default("forward_idle_timeout")
    first_byte_timeout: float = default("forward_timeout")
    pool_idle: float = POOL_IDLE
    thread_keep: float = THREAD_KEEP
    follow: float = FOLLOW

    @classmethod
    def from_config(cls, config: Any) -> ForwardSettings:
        return cls(**config.section("forward"))

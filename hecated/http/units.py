"""What the API needs of the plugins' units, and the server-sent events of a followed log.

The edge may not import the adapters (independent layers, ``lint-imports``): the
app is handed an object shaped like ``UnitControl`` and knows nothing of D-Bus or
the journal. The daemon builds the real one (``hecated.adapters.unitapi``) over
the user manager and journald; it raises the core's errors (``no_unit``,
``unit_failed``, ``systemd_unavailable``, ``invalid_unit``), which the app answers
like any other.

A followed log is a long answer: each journal line one SSE event, a comment
every ``HEARTBEAT`` seconds of silence (proxies and clients see the stream is
alive; a client that has gone is noticed at the latest then, when the write
fails), at most ``FOLLOW_STREAMS`` at once (beyond: ``503 busy``), and it ends
when the client goes (the serving layer's hang-up hook, where it offers one),
when the daemon stops, or when the source ends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Protocol

from hecated.http.sse import HEARTBEAT, Places, StreamDetour, event, sse

__all__ = ["HEARTBEAT", "FollowStreams", "LogDetour", "UnitControl", "event", "sse"]

FOLLOW_STREAMS = 8  # followed logs served at once: each holds a thread and a journal reader
LINES_DEFAULT = 100
LINES_MAX = 10_000


class UnitControl(Protocol):
    """The plugins' units as the API sees them; every method raises core errors only."""

    def start(self, unit: str) -> dict[str, Any]:
        """Start (a failed state cleared first), wait for the job; the unit block after."""

    def stop(self, unit: str) -> dict[str, Any]:
        """Stop, wait for the job; the unit block after."""

    def restart(self, unit: str) -> dict[str, Any]:
        """Restart (a failed state cleared first), wait for the job; the unit block after."""

    def logs(self, unit: str, lines: int) -> list[dict[str, Any]]:
        """The unit's last ``lines`` journal lines, oldest first."""

    def follow(self, unit: str, stop: threading.Event, backlog: int) -> Iterator[Any]:
        """The last ``backlog`` lines, then each new one, until ``stop`` is set.

        Opens its source before returning (so a failure is an error answer, not a
        cut stream); the iterator yields a line's dict, or None when nothing came
        for a while (at most a second), so the caller can keep the stream alive."""


class FollowStreams(Places):
    """The cap on followed logs: a place taken per stream, given back when it ends."""

    def __init__(self, limit: int = FOLLOW_STREAMS) -> None:
        super().__init__(limit, "log streams")


LOGS_PATH = r"^/api/plugins/[^/]+/logs/?$"
LOG_REQUESTS = 64  # log requests (followed or not) run at once on the detour's threads


class LogDetour(StreamDetour):
    """The ``Detour`` for log requests (http/sse.py): a followed log never holds an API
    worker; the app's ``FollowStreams`` caps those, this the rest."""

    def __init__(self, limit: int = LOG_REQUESTS) -> None:
        super().__init__(LOGS_PATH, limit, "log requests")

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

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from hecated.core.errors import BusyError
from hecated.http.forwarding.threads import HangUps, StreamThreads
from hecated.http.hooks import Job
from hecated.protocol import encode

FOLLOW_STREAMS = 8  # followed logs served at once: each holds a thread and a journal reader
HEARTBEAT = 15.0  # seconds of silence before a comment line keeps a followed log alive
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


class FollowStreams:
    """The cap on followed logs: a place taken per stream, given back when it ends."""

    def __init__(self, limit: int = FOLLOW_STREAMS) -> None:
        self.limit = limit
        self._open = 0
        self._lock = threading.Lock()

    @property
    def open(self) -> int:
        return self._open

    def take(self) -> None:
        """A place, or ``BusyError`` (503, Retry-After) when all are taken."""
        with self._lock:
            if self._open >= self.limit:
                raise BusyError(f"{self.limit} log streams are open; retry shortly")
            self._open += 1

    def give_back(self) -> None:
        with self._lock:
            self._open -= 1


LOGS_PATH = re.compile(r"^/api/plugins/[^/]+/logs/?$")
LOG_REQUESTS = 64  # log requests (followed or not) run at once on the detour's threads


class LogDetour:
    """The ``Detour`` for log requests: each on a thread of its own, out of the serving
    loop, its client's hang-up watched (``hooks.ON_CLOSE_KEY`` then sets the stream's
    stop event at once), every event sent as it is written. A followed log never
    holds an API worker; the app's ``FollowStreams`` caps those, this the rest."""

    body_limit = 0  # a GET: the server's own limit is more than enough
    send_timeout: float | None = HEARTBEAT * 4  # a client that reads nothing for a minute

    def __init__(self, limit: int = LOG_REQUESTS) -> None:
        self.limit = limit
        self.threads = StreamThreads()
        self.hangups = HangUps()
        self._lock = threading.Lock()
        self._open = 0

    def claims(self, path: str) -> bool:
        return bool(LOGS_PATH.match(path))

    def run(self, job: Job) -> str | None:
        with self._lock:
            if self._open >= self.limit:
                return f"{self.limit} log requests are being answered; retry shortly"
            self._open += 1
        try:
            self.hangups.watch(job.fileno, job.hung_up)
        except (OSError, RuntimeError, TypeError, ValueError) as exc:
            self._release()
            return f"cannot answer a log request now: {exc}"
        try:
            self.threads.submit(lambda: self._serve(job))
        except RuntimeError as exc:
            self.hangups.forget(job.fileno)
            self._release()
            return f"cannot answer a log request now: {exc}"
        return None

    def _serve(self, job: Job) -> Callable[[], None]:
        job.serve()

        def ended() -> None:
            self.hangups.forget(job.fileno)
            self._release()
            job.done()

        return ended

    def _release(self) -> None:
        with self._lock:
            self._open -= 1

    def close(self) -> None:
        self.hangups.close()


def event(line: dict[str, Any]) -> bytes:
    """One SSE event: the line as one JSON ``data:`` field (encode() never spans lines)."""
    return b"data: " + encode(line).rstrip(b"\n") + b"\n\n"


def sse(
    lines: Iterator[Any],
    stop: threading.Event,
    ended: Callable[[], None],
    give_up: Callable[[], bool] = lambda: False,
    heartbeat: float = HEARTBEAT,
) -> Iterable[bytes]:
    """The body of a followed log: events, heartbeats; ``ended`` runs once, whatever ends it.

    ``give_up`` is asked between lines (the daemon stopping); a closed body (the
    client gone, found when a write fails) sets ``stop`` so the source ends. The
    body's ``close`` finishes too when it was never iterated (WSGI closes what it got):
    a generator that never ran skips its ``finally``, and the place would be lost."""
    done = threading.Lock()

    def finish() -> None:
        if not done.acquire(blocking=False):
            return  # finished already
        stop.set()
        close = getattr(lines, "close", None)
        if close is not None:
            close()
        ended()

    return _Body(_events(lines, stop, give_up, heartbeat, finish), finish)


class _Body:
    """A WSGI body whose ``close`` always runs its ``finish``, iterated or not."""

    def __init__(self, events: Iterator[bytes], finish: Callable[[], None]) -> None:
        self.events = events
        self.finish = finish

    def __iter__(self) -> Iterator[bytes]:
        return self.events

    def close(self) -> None:
        self.events.close()
        self.finish()


def _events(
    lines: Iterator[Any],
    stop: threading.Event,
    give_up: Callable[[], bool],
    heartbeat: float,
    finish: Callable[[], None],
) -> Iterator[bytes]:
    try:
        yield b": following\n\n"  # the head and a first byte now, before any line exists
        quiet_since = time.monotonic()
        for line in lines:
            if stop.is_set() or give_up():
                return
            if line is not None:
                yield event(line)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= heartbeat:
                yield b": heartbeat\n\n"
                quiet_since = time.monotonic()
    finally:
        finish()

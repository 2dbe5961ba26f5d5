"""Server-sent event streams: their bodies, their places, and the detour they run on.

Two streams use this: a followed log (``http/units.py``) and the index's events
(``http/events.py``). Both are long answers, so both run as a ``Detour`` (on a
thread of their own, their connection out of the serving loop, their client's
hang-up watched), both are capped (``Places``: beyond the cap, ``503 busy``),
and both send a comment line after ``heartbeat`` seconds of silence (proxies and
clients see the stream is alive; a client that has gone is noticed at the
latest then, when the write fails). A stream ends when the client goes (the
serving layer's hang-up hook), when the daemon stops, or when its source ends.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from hecated.core.errors import BusyError
from hecated.http.forwarding.threads import HangUps, StreamThreads
from hecated.http.hooks import Job
from hecated.protocol import encode

HEARTBEAT = 15.0  # seconds of silence before a comment line keeps a stream alive
FOLLOWING = b": following\n\n"  # the head and a first byte at once, before any event exists


class Places:
    """A cap on streams of one kind: a place taken per stream, given back when it ends."""

    def __init__(self, limit: int, what: str = "streams") -> None:
        self.limit = limit
        self.what = what
        self._open = 0
        self._lock = threading.Lock()

    @property
    def open(self) -> int:
        return self._open

    def take(self) -> None:
        """A place, or ``BusyError`` (503, Retry-After) when all are taken."""
        with self._lock:
            if self._open >= self.limit:
                raise BusyError(f"{self.limit} {self.what} are open; retry shortly")
            self._open += 1

    def give_back(self) -> None:
        with self._lock:
            self._open -= 1


class StreamDetour:
    """The ``Detour`` for the requests whose path matches ``pattern``: each on a thread
    of its own, out of the serving loop, its client's hang-up watched
    (``hooks.ON_CLOSE_KEY`` then sets the stream's stop event at once), every event
    sent as it is written. A stream never holds an API worker; the app's ``Places``
    caps the streams, this the requests (a refusal here is the server's ``503 busy``)."""

    body_limit = 0  # a GET: the server's own limit is more than enough
    send_timeout: float | None = HEARTBEAT * 4  # a client that reads nothing for a minute

    def __init__(self, pattern: str, limit: int, what: str) -> None:
        self.pattern = re.compile(pattern)
        self.limit = limit
        self.what = what
        self.threads = StreamThreads()
        self.hangups = HangUps()
        self._lock = threading.Lock()
        self._open = 0

    def claims(self, path: str) -> bool:
        return bool(self.pattern.match(path))

    def run(self, job: Job) -> str | None:
        with self._lock:
            if self._open >= self.limit:
                return f"{self.limit} {self.what} are being answered; retry shortly"
            self._open += 1
        try:
            self.hangups.watch(job.fileno, job.hung_up)
        except (OSError, RuntimeError, TypeError, ValueError) as exc:
            self._release()
            return f"cannot answer {self.what} now: {exc}"
        try:
            self.threads.submit(lambda: self._serve(job))
        except RuntimeError as exc:
            self.hangups.forget(job.fileno)
            self._release()
            return f"cannot answer {self.what} now: {exc}"
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
    """The body of a stream: events, heartbeats; ``ended`` runs once, whatever ends it.

    ``lines`` yields a dict (sent as one ``data:`` event), bytes (events already
    made, sent as they are) or None (nothing came for a while: a heartbeat is due
    once ``heartbeat`` seconds passed without a write). ``give_up`` is asked
    between items (the daemon stopping); a closed body (the client gone, found when
    a write fails) sets ``stop`` so the source ends. The body's ``close`` finishes
    too when it was never iterated (WSGI closes what it got): a generator that
    never ran skips its ``finally``, and the place would be lost."""
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
        yield FOLLOWING
        quiet_since = time.monotonic()
        for line in lines:
            if stop.is_set() or give_up():
                return
            if line is not None:
                yield line if isinstance(line, bytes) else event(line)
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= heartbeat:
                yield b": heartbeat\n\n"
                quiet_since = time.monotonic()
    finally:
        finish()

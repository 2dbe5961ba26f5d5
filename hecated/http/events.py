"""``GET /api/events``: every change of the index as a server-sent event, as it happens.

Each event is ``id: RUN-SEQ`` (this run's token, core/events.py ``run_token``, and
the index's ``seq``), ``event:`` its kind (core/events.py:
registered, deregistered, installed, removed, discovered, gone, status, unit,
updated) and ``data:`` the plugin's entry exactly as the list shows it (one JSON
line, ``Views.fragment``: the list's own cached bytes when they are current; a
name the change took out of the list: its last entry, with ``"listed": false``).
Every ``seq`` is one event, so ids come without a gap: a client that reconnects
with ``Last-Event-ID`` (or ``?since=``) gets exactly what came after. One it
cannot be given (older than the ring, or from another run of the daemon) gets
one ``resync`` event instead. The run in the id is what tells another run's
id: ``seq`` starts again at each run, and a plain number of the run before
would resume in the middle of this one's changes (``resume_cursor``). The
``resync`` is ``{"seq": N, "plugins": [...the list...]}``, and
the events after ``N`` follow. A stream that falls behind the ring (a client
reading slowly through a burst) is resynced the same way, so a reader never
costs more memory than its place in the ring.

hecate-web's desktop app opens this path on the primary's socket (and retries
every 3 s while it cannot); it reads ``event:``/``data:`` lines and ignores the
kinds it does not know, and comment lines (the heartbeats).
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

from hecated.core.events import RESYNC, STALE, Event, Events
from hecated.http.sse import HEARTBEAT, Places, StreamDetour, sse
from hecated.http.views import Views

EVENTS_PATH = r"^/api/events/?$"
EVENT_REQUESTS = 64  # requests for /api/events run at once on the detour's threads
EVENT_CLIENTS = 16  # streams open at once (the setting events_clients)
BATCH = 256  # events sent in one write at most


# RUN-SEQ, or (``since`` only) SEQ; at most 19 digits: int() of more costs time, and
# past 4,300 digits raises ValueError.
_ID = re.compile(r"(?:([0-9a-z]{1,16})-)?([0-9]{1,19})")


def resume_cursor(raw: str, run: str, plain: bool) -> int:
    """Where a stream resumes after the event id ``raw``: the ``seq`` when it is this
    run's; ``STALE`` (a resync) when it is another run's. A plain number is a ``seq``
    of this run where ``plain`` (``?since=`` from curl, or the list's ``seq``), else
    ``STALE``: a ``Last-Event-ID`` without a run is of a daemon from before runs
    were named, never of this one. ValueError: not an event id at all."""
    match = _ID.fullmatch(raw)  # as written: no sign, space nor underscore
    if match is None:
        raise ValueError(f"not an event id: {raw[:40]!r}")
    token, seq = match.groups()
    if token == run or (token is None and plain):
        return int(seq)
    return STALE


class EventDetour(StreamDetour):
    """``/api/events`` on threads of its own (http/sse.py), like a followed log."""

    def __init__(self, limit: int = EVENT_REQUESTS) -> None:
        super().__init__(EVENTS_PATH, limit, "event requests")


class EventStreams:
    """The event streams of one daemon: their cap, their bodies, the events' encodings."""

    def __init__(
        self,
        events: Events,
        views: Views,
        heartbeat: float = HEARTBEAT,
        clients: int = EVENT_CLIENTS,
    ) -> None:
        self.events = events
        self.views = views
        self.heartbeat = heartbeat
        self.places = Places(clients, "event streams")
        self._run = events.run.encode()
        # Each event encoded once, whatever the number of streams sending it.
        self._encoded: OrderedDict[int, bytes] = OrderedDict()
        self._encoded_lock = threading.Lock()

    def open(
        self, since: int | None, stop: threading.Event, give_up: Callable[[], bool]
    ) -> Iterable[bytes]:
        """A stream's body from after ``since`` (None: from now); ``BusyError`` when every
        place is taken. Its place is given back however it ends."""
        self.places.take()
        try:
            cursor = self.events.latest if since is None else since
            source = self._source(cursor, stop)
        except BaseException:
            self.places.give_back()
            raise
        return sse(source, stop, self.places.give_back, give_up, self.heartbeat)

    def hang_up(self, stop: threading.Event) -> Callable[[], None]:
        """What the serving layer runs when the client goes: the stream ends now."""

        def hung_up() -> None:
            stop.set()
            self.events.wake()

        return hung_up

    def _source(self, cursor: int, stop: threading.Event) -> Iterator[bytes | None]:
        """Events after ``cursor`` as they come, in batches; None after a quiet wait."""
        while not stop.is_set():
            batch = self.events.after(cursor, BATCH)
            if batch is None:  # the ring no longer holds what comes next
                cursor, data = self.resync()
                yield data
            elif batch:
                cursor = batch[-1].seq
                yield b"".join(self.encoded(e) for e in batch)
            elif not self.events.wait(cursor, self.heartbeat, stop):
                yield None

    def resync(self) -> tuple[int, bytes]:
        """The whole list and its ``seq``, as one ``resync`` event."""
        seq, body = self.views.encoded_list()
        data = b'{"seq":%d,"plugins":%s}' % (seq, body.rstrip(b"\n"))
        return seq, b"id: %s-%d\nevent: %s\ndata: %s\n\n" % (self._run, seq, RESYNC.encode(), data)

    def encoded(self, event: Event) -> bytes:
        with self._encoded_lock:
            hit = self._encoded.get(event.seq)
        if hit is not None:
            return hit
        data = self.views.fragment(event.plugin)
        if not event.listed:  # the last entry of a name no longer listed: say so
            data = data[:-1] + b',"listed":false}'
        hit = b"id: %s-%d\nevent: %s\ndata: %s\n\n" % (
            self._run,
            event.seq,
            event.kind.encode(),
            data,
        )
        with self._encoded_lock:
            self._encoded[event.seq] = hit
            while len(self._encoded) > self.events.size:
                self._encoded.popitem(last=False)
        return hit

"""http/units.sse: a followed log's body gives its place back however it ends."""

from __future__ import annotations

import threading

from hecated.http.units import sse


class Source:
    """A log source that says whether it was closed (a journal reader's stand-in)."""

    def __init__(self, lines: list) -> None:
        self.lines = iter(lines)
        self.closed = 0

    def __iter__(self) -> Source:
        return self

    def __next__(self):
        return next(self.lines)

    def close(self) -> None:
        self.closed += 1


def test_a_body_never_iterated_still_gives_its_place_back() -> None:
    """WSGI closes the body it got even when the client was gone before the first write."""
    ended: list[int] = []
    source, stop = Source([{"message": "x"}]), threading.Event()
    body = sse(source, stop, lambda: ended.append(1))
    body.close()
    assert ended == [1] and source.closed == 1 and stop.is_set()


def test_a_body_read_to_its_end_and_closed_ends_once() -> None:
    ended: list[int] = []
    source, stop = Source([{"message": "a"}, None, {"message": "b"}]), threading.Event()
    body = sse(source, stop, lambda: ended.append(1))
    chunks = list(body)
    body.close()
    assert chunks[0] == b": following\n\n" and len(chunks) == 3
    assert ended == [1] and source.closed == 1

"""Why the wing parses a plugin's answer head itself: the same head, four parsers.

A forwarded request costs hecated one answer head to parse (issue 22's profile of
3,000 forwarded ``GET /manifest``: 1.76 s of 2.28 s in ``http.client``'s head,
most of it the ``email`` feed parser). This times, in one process and without any
socket, the parsing of one plugin answer head ``--count`` times (best of
``--rounds``), each parser taking the same bytes and giving the status, the
header pairs and the framing:

- ``wire.Reply`` (hecated/http/forwarding/wire.py): its ``begin()`` on the bytes
  already buffered;
- ``http.client.HTTPResponse.begin()`` on a file of the bytes (status line,
  ``parse_headers`` through ``email``, the framing): what the wing used before;
- ``http.client.parse_headers`` alone (the ``email`` part);
- ``h11`` (pure Python, sans-I/O): a new client ``Connection`` per head, as one
  per answer on a pooled socket would need at least a ``start_next_cycle``;
- ``httptools`` (C, llhttp) when installed: Debian bookworm ships 0.1.1, whose
  callback API this uses too; PyPI's wheels are newer.

h11 and httptools are not the project's dependencies: each row is skipped when
its package is not importable (``pip install h11 httptools`` in a scratch venv
with ``--system-site-packages`` and ``PYTHONPATH=.`` to run them all).

    .venv/bin/python bench/reply_head.py [--count 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import http.client
import io
import time
from collections.abc import Callable

from hecated.http.forwarding.wire import Reply

# What a plugin's GET /manifest answer head looks like (a small Python or Erlang server).
HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: hecate-plugin/0.1\r\n"
    b"Date: Fri, 04 Dec 2026 21:00:00 GMT\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 412\r\n"
    b"Cache-Control: no-store\r\n"
    b"X-Request-Id: 4f1c2a9e\r\n"
    b"\r\n"
)


def with_wire() -> tuple[int, list[tuple[str, str]], int | None]:
    reply = Reply(None, "GET")  # type: ignore[arg-type]  # no socket: the bytes are buffered
    reply._buf = HEAD
    reply.begin()
    return reply.status, reply.getheaders(), reply.length


class _File:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def with_http_client() -> tuple[int, list[tuple[str, str]], int | None]:
    resp = http.client.HTTPResponse(_File(HEAD), method="GET")  # type: ignore[arg-type]
    resp.begin()
    return resp.status, resp.getheaders(), resp.length


def with_parse_headers() -> tuple[int, list[tuple[str, str]], int | None]:
    fp = io.BytesIO(HEAD)
    fp.readline()
    message = http.client.parse_headers(fp)
    return 200, list(message.items()), int(message["Content-Length"])


def h11_parser() -> Callable[[], tuple[int, list[tuple[str, str]], int | None]] | None:
    try:
        import h11
    except ImportError:
        return None

    def with_h11() -> tuple[int, list[tuple[str, str]], int | None]:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/manifest", headers=[("Host", "x")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(HEAD)
        event = conn.next_event()
        pairs = [(k.decode(), v.decode()) for k, v in event.headers.raw_items()]
        length = next((int(v) for k, v in pairs if k.lower() == "content-length"), None)
        return event.status_code, pairs, length

    return with_h11


def h11_overhead() -> Callable[[], object] | None:
    """h11's part that is no head parse (a Connection, the request sent through it):
    ``with_h11`` less this is h11's head parse alone."""
    try:
        import h11
    except ImportError:
        return None

    def without_head() -> object:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/manifest", headers=[("Host", "x")]))
        return conn.send(h11.EndOfMessage())

    return without_head


def httptools_parser() -> Callable[[], tuple[int, list[tuple[str, str]], int | None]] | None:
    try:
        import httptools
    except ImportError:
        return None

    class Sink:
        def __init__(self) -> None:
            self.headers: list[tuple[str, str]] = []

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def with_httptools() -> tuple[int, list[tuple[str, str]], int | None]:
        sink = Sink()
        parser = httptools.HttpResponseParser(sink)
        parser.feed_data(HEAD)
        length = next((int(v) for k, v in sink.headers if k.lower() == "content-length"), None)
        return parser.get_status_code(), sink.headers, length

    return with_httptools


def best(parse: Callable[[], object], count: int, rounds: int) -> float:
    """The best of ``rounds`` runs of ``count`` parses, in seconds."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(count):
            parse()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    parsers: list[tuple[str, Callable[[], object] | None]] = [
        ("wire.Reply.begin (hecated)", with_wire),
        ("http.client HTTPResponse.begin", with_http_client),
        ("http.client.parse_headers alone", with_parse_headers),
        ("h11 Connection (pure Python)", h11_parser()),
        ("httptools (C) HttpResponseParser", httptools_parser()),
    ]
    expected = with_wire()
    print(f"one {len(HEAD)}-byte answer head, {args.count} times, best of {args.rounds}")
    print(f"{'parser':36} {'total s':>8} {'us/head':>8}")
    for name, parse in parsers:
        if parse is None:
            print(f"{name:36} {'(not installed)':>17}")
            continue
        got = parse()
        assert got == expected, (name, got, expected)  # the same answer, or no use
        seconds = best(parse, args.count, args.rounds)
        print(f"{name:36} {seconds:8.3f} {seconds / args.count * 1e6:8.1f}")
    overhead = h11_overhead()
    if overhead is not None:
        seconds = best(overhead, args.count, args.rounds)
        name = "  of which h11 Connection + request"
        print(f"{name:36} {seconds:8.3f} {seconds / args.count * 1e6:8.1f}")


if __name__ == "__main__":
    main()

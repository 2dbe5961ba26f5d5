"""A registration -> its event on an open ``GET /api/events`` stream, beside the long poll.

Starts a real hecated (its tree on tmpfs when there is room: the registrations'
fsyncs are not what is measured), opens one event stream (the SDK's
``HecateClient.events()``, read on its own thread), then ``samples`` times:

1. a long poll ``GET /api/plugins?since=SEQ&wait=30`` is sent on a thread of its
   own and given a moment to be waiting (20 ms);
2. ``POST /api/plugins/register`` of a new name; the clock starts when its answer
   has been read;
3. the time until the stream delivers that name's ``registered`` event, and until
   the long poll answers, are taken from that same moment.

An event can arrive before the POST's answer has been read (the change is told to
the stream as it is made, the answer is written after): such a sample counts as 0
(the event was there first). Percentiles of both, from the same registrations.

    .venv/bin/python bench/events.py [--samples 300] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from procs import Hecated, remove
from unit_support import http_request

from hecated.client import HecateClient


def request(sock: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    return http_request(Path(sock), method, path, body, timeout=60.0)[:2]


def home_dir() -> Path:
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else Path("/tmp")
    return Path(tempfile.mkdtemp(prefix="hev", dir=base))


class Stream:
    """One open event stream; the time each name's ``registered`` event arrived."""

    def __init__(self, sock: str) -> None:
        self.arrived: dict[str, float] = {}
        self.cond = threading.Condition()
        self.events = HecateClient(sock).events()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for event in self.events:
            now = time.perf_counter()
            if event.kind == "registered" and event.plugin is not None:
                with self.cond:
                    self.arrived[event.plugin.name] = now
                    self.cond.notify_all()

    def wait(self, name: str, timeout: float = 30.0) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: name in self.arrived, timeout):
                raise RuntimeError(f"no event for {name}")
            return self.arrived[name]


def long_poll(sock: str, since: int, out: list[float]) -> None:
    request(sock, "GET", f"/api/plugins?since={since}&wait=30")
    out.append(time.perf_counter())


def sample(daemon: Hecated, stream: Stream, i: int) -> tuple[float, float, float]:
    """(the registration's round trip, its event, the long poll), each from the POST sent."""
    status, headers = request(daemon.socket, "GET", "/api/plugins")
    seq = int(headers.get("X-Hecate-Seq", "0"))
    polled: list[float] = []
    poller = threading.Thread(target=long_poll, args=(daemon.socket, seq, polled))
    poller.start()
    time.sleep(0.02)  # the long poll is parked before the change (a bench, not a test)
    name = f"hecate-ev{i:05}"
    sent = time.perf_counter()
    status, _ = request(daemon.socket, "POST", "/api/plugins/register", {"name": name})
    answered = time.perf_counter()
    if status != 201:
        raise RuntimeError(f"register answered {status}")
    event_at = stream.wait(name)
    poller.join(60)
    return answered - sent, event_at - sent, polled[0] - sent


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    home = home_dir()
    load = os.getloadavg()
    daemon = Hecated(home, None).start()
    try:
        daemon.wait_answer("/health")
        stream = Stream(daemon.socket)
        for i in range(5):  # warm: the full app, the stream's thread, the first encodings
            sample(daemon, stream, 100000 + i)
        results = [sample(daemon, stream, i) for i in range(args.samples)]
    finally:
        daemon.stop()
        remove(home)
    end = os.getloadavg()
    answers = [r[0] for r in results]
    rows = [
        ("the registration's own answer (`POST /api/plugins/register`)", answers, None),
        ("its event on an open `GET /api/events` stream", [r[1] for r in results], answers),
        (
            "a waiting long poll `GET /api/plugins?since=N` answers",
            [r[2] for r in results],
            answers,
        ),
    ]
    print(report(rows, args.samples, load, end) if args.markdown else text(rows))
    return 0


Row = tuple[str, list[float], list[float] | None]


def after(values: list[float], answers: list[float]) -> list[float]:
    """Each sample less its registration's answer: 0 when it came before the answer."""
    return [max(0.0, v - a) for v, a in zip(values, answers, strict=True)]


def report(rows: list[Row], samples: int, load: tuple, end: tuple) -> str:
    lines = [
        "| from the POST sent to | p50 ms | p99 ms | after the POST's answer: p50 ms | p99 ms "
        "| p99 after ≤ 20 ms |",
        "|---|---|---|---|---|---|",
    ]
    for label, values, answers in rows:
        if answers is None:
            lines.append(f"| {label} | {pct(values, 0.5):.2f} | {pct(values, 0.99):.2f} | | | |")
            continue
        late = after(values, answers)
        ok = "✅" if pct(late, 0.99) <= 20 else "❌"
        lines.append(
            f"| {label} | {pct(values, 0.5):.2f} | {pct(values, 0.99):.2f} "
            f"| {pct(late, 0.5):.2f} | {pct(late, 0.99):.2f} | {ok} |"
        )
    first = sum(1 for v, a in zip(rows[1][1], rows[0][1], strict=True) if v <= a)
    lines.append(
        f"\n_{samples} registrations, each seen by both readers; the event came before the "
        f"POST's answer was read in {first} of them. Load average {load[0]:.2f} / "
        f"{load[1]:.2f} / {load[2]:.2f} at the start, {end[0]:.2f} / {end[1]:.2f} / "
        f"{end[2]:.2f} at the end; mean event {statistics.mean(rows[1][1]) * 1000:.2f} ms "
        f"from the POST sent._"
    )
    return "\n".join(lines)


def text(rows: list[Row]) -> str:
    return "\n".join(
        f"{label}: p50 {pct(values, 0.5):.2f} ms, p99 {pct(values, 0.99):.2f} ms"
        for label, values, _answers in rows
    )


if __name__ == "__main__":
    sys.exit(main())

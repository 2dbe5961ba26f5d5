"""Where a forwarded stream runs: reusable threads, and one watch for clients hanging up.

A forwarded request may stream for minutes, so it never holds one of the registry
API's workers, and while it runs its connection is out of the serving loop (the
server detaches it before handing it to the wing's edge): the stream's own thread
sends the answer, and ``HangUps`` tells it when the client has gone. Both are
plain threads and an epoll set; nothing here knows HTTP.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["HangUps", "StreamThreads"]

log = logging.getLogger("hecated.http.forwarding")


class StreamThreads:
    """Reusable threads for forwarded requests, started on demand and kept a while.

    A request is handed to an idle thread if there is one, else to a new one; so
    there are never more threads than requests run at once (the cap,
    ``forward_streams``, bounds those). A thread idle for ``keep`` seconds ends: a
    daemon with no stream open soon holds no thread for them, and a burst of short
    requests does not pay a thread's start (and the loop's wait for it) on each.
    """

    def __init__(self, keep: float = 30.0) -> None:
        self.keep = keep
        self._jobs: queue.SimpleQueue[Callable[[], Callable[[], None] | None]] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], Callable[[], None] | None]) -> None:
        """Run ``job`` on an idle thread or a new one; RuntimeError: no thread to be had."""
        with self._lock:
            if self._idle:
                self._idle -= 1
                self._jobs.put(job)
                return
        thread = threading.Thread(target=self._work, args=(job,), name="hecated-forward")
        thread.daemon = True
        thread.start()

    def _work(self, job: Callable[[], Callable[[], None] | None]) -> None:
        while True:
            after = job()
            with self._lock:
                self._idle += 1
            if after is not None:  # e.g. the stream's slot: freed once this thread is
                after()  # idle, so the request it lets in never needs a new thread
            try:
                job = self._jobs.get(timeout=self.keep)
            except queue.Empty:
                with self._lock:  # a job handed to us as we timed out is still ours
                    try:
                        job = self._jobs.get_nowait()
                    except queue.Empty:
                        self._idle -= 1
                        return


class HangUps:
    """One thread that sees the clients of running streams hang up.

    A stream's connection is out of waitress's loop (so 200 open streams cost the
    loop nothing per turn); its thread is blocked reading the plugin. This thread
    waits on all their sockets at once with epoll, registered for no event: only
    EPOLLHUP/EPOLLERR are reported, which a Unix socket raises when its peer has
    closed, not when it only shut its sending side (``nc -N``: that client still
    gets its answer). The hook runs once, then the socket is forgotten.

    Each running request of a connection watches it (pipelining may run a second
    before the first's thread has let go): the fd is watched until the last forgets it.
    """

    def __init__(self) -> None:
        self._hooks: dict[int, Callable[[], None]] = {}
        self._counts: dict[int, int] = {}
        self._lock = threading.Lock()
        self._epoll: Any = None
        self._closed = False

    def watch(self, fd: int, hook: Callable[[], None]) -> None:
        with self._lock:
            if self._epoll is None:  # set only once its thread runs: a failure is retried
                epoll = select.epoll()
                try:
                    threading.Thread(
                        target=self._run, args=(epoll,), name="hecated-hangups", daemon=True
                    ).start()
                except BaseException:
                    epoll.close()
                    raise
                self._epoll = epoll
            if fd not in self._hooks:
                self._epoll.register(fd, 0)
            self._hooks[fd] = hook
            self._counts[fd] = self._counts.get(fd, 0) + 1

    def forget(self, fd: int) -> None:
        with self._lock:
            left = self._counts.pop(fd, 0) - 1
            if left > 0:
                self._counts[fd] = left
            elif self._hooks.pop(fd, None) is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._epoll.unregister(fd)

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def _run(self, epoll: Any) -> None:
        while not self._closed:
            try:
                events = epoll.poll(1.0)
            except InterruptedError:
                continue
            for fd, _ in events:
                with self._lock:
                    # Between the poll and the lock, the stream may have ended and its
                    # fd number gone to a new connection's stream: ask the fd as it is now.
                    if fd not in self._hooks or not _hung_up(fd):
                        continue
                    hook = self._hooks.pop(fd)
                    self._counts.pop(fd, None)
                    with contextlib.suppress(OSError, ValueError):
                        epoll.unregister(fd)
                if hook is not None:
                    try:
                        hook()
                    except Exception:
                        log.exception("hanging up on a plugin failed")
        epoll.close()


def _hung_up(fd: int) -> bool:
    """Does ``fd``'s peer, now, have its connection closed (POLLHUP/POLLERR)?"""
    poller = select.poll()
    poller.register(fd, 0)
    return any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, ev in poller.poll(0))

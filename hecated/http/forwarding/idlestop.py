"""Idle stop: a plugin's unit stopped after ``idle_stop_after`` seconds unused.

Unused means no forwarded request and no open stream: each forwarded request to
a plugin with ``idle_stop_after`` counts as open from its start until its
answer ends (a stream may run for hours and keeps the plugin up); when the last
one ends, the plugin's deadline is set. One thread serves every plugin: it
sleeps until the nearest deadline (woken when the deadlines change; with none,
it sleeps without a timeout: no polling loop), then stops that unit through the
stopper the daemon injects. The next request starts it again (``ondemand``).

Only use through hecated is seen, so only a plugin used through hecated is
stopped: a plugin nobody has asked through hecated is left as it is.
hecated's own idle exit (``--idle-timeout``) waits while a deadline is set or
a stop runs (``pending``), so the stop is never lost with the daemon.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

from hecated.core.errors import HecateError

__all__ = ["IdleStops", "Stopper"]

log = logging.getLogger("hecated.http.forwarding")

# stop(unit, timeout): returns once the stop job is done, or raises a HecateError.
Stopper = Callable[[str, float], None]


class IdleStops:
    """Per-plugin idle deadlines, one timer thread, the stops it makes."""

    def __init__(
        self,
        stop: Stopper,
        job_timeout: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stop = stop
        self.job_timeout = job_timeout
        self._clock = clock
        self._cond = threading.Condition()
        self._open: dict[str, int] = {}
        self._due: dict[str, tuple[float, str]] = {}  # name -> (deadline, unit)
        self._stopping: set[str] = set()
        self._guards: dict[str, threading.Lock] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self.stops = 0  # stop jobs asked for (the tests read it)

    def begin(self, name: str, unit: str, after: float) -> Callable[[], None]:
        """A forwarded request to ``name`` starts; call what is returned when it ends
        (once: later calls do nothing). Its deadline waits until the last one ends."""
        with self._cond:
            self._open[name] = self._open.get(name, 0) + 1
            self._due.pop(name, None)
        ended = threading.Event()

        def end() -> None:
            if not ended.is_set():
                ended.set()
                self._end(name, unit, after)

        return end

    def _end(self, name: str, unit: str, after: float) -> None:
        with self._cond:
            left = self._open.get(name, 0) - 1
            if left > 0:
                self._open[name] = left
                return
            self._open.pop(name, None)
            if self._closed:
                return
            self._due[name] = (self._clock() + after, unit)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="hecated-idle-stop", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def pending(self) -> bool:
        """A deadline is set or a stop runs: hecated must not exit idle now."""
        with self._cond:
            return bool(self._due or self._stopping)

    @contextlib.contextmanager
    def guard(self, name: str, timeout: float = -1) -> Iterator[None]:
        """Held by a stop of ``name`` and by a start of it: a start waits for the stop, for
        at most ``timeout`` seconds (then ``TimeoutError``: the request's time is up)."""
        with self._cond:
            lock = self._guards.setdefault(name, threading.Lock())
        if not lock.acquire(timeout=timeout):
            raise TimeoutError(f"an idle stop of {name} is still under way")
        try:
            yield
        finally:
            lock.release()

    def settle(self, name: str, timeout: float) -> None:
        """A forwarded request to ``name`` is about to connect (after ``begin``): if an
        idle stop of it is under way, wait for it to end (its guard, at most ``timeout``
        seconds, then ``TimeoutError``). The plugin still accepts while its stop job
        runs, and a request that connected now would be cut when the job ends it; once
        the stop is over the request finds it stopped and starts it on demand. A stop
        not sent yet needs no wait: it sees the request open (``begin``) and is called off.
        """
        with self._cond:
            if name not in self._stopping:
                return
        log.info("%s: a forwarded request waits for its idle stop to end", name)
        with self.guard(name, timeout):
            pass

    def _next(self) -> tuple[str, str] | None:
        """Sleep until a deadline passes; that plugin and its unit (None: closed)."""
        with self._cond:
            while not self._closed:
                if not self._due:
                    self._cond.wait()
                    continue
                name, (when, unit) = min(self._due.items(), key=lambda item: item[1][0])
                left = when - self._clock()
                if left > 0:
                    self._cond.wait(left)
                    continue
                del self._due[name]
                self._stopping.add(name)
                return name, unit
            return None

    def _run(self) -> None:
        while (due := self._next()) is not None:
            name, unit = due
            try:
                with self.guard(name):
                    with self._cond:
                        if self._open.get(name) or name in self._due or self._closed:
                            continue  # a request came meanwhile: not idle after all
                        self.stops += 1
                    log.info("%s: unused; stopping %s", name, unit)
                    self._stop(unit, self.job_timeout)
            except HecateError as exc:
                log.warning("%s: the idle stop of %s failed: %s", name, unit, exc.message)
            except Exception:
                log.exception("%s: the idle stop of %s failed", name, unit)
            finally:
                with self._cond:
                    self._stopping.discard(name)

    def close(self) -> None:
        """hecated stops: deadlines are dropped (the plugins run on), the thread ends."""
        with self._cond:
            self._closed = True
            self._due.clear()
            self._cond.notify_all()

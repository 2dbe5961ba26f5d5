"""A pidfd per live plugin process, so an exit is an event.

A ``kill -9`` leaves no file behind to notice: the pid file stays and names a
dead process. The liveness adapter tracks each live plugin's pid here; one
thread polls every pidfd (``os.pidfd_open``) and calls back once per exit, so
the index learns of it at once instead of at the next probe. On a kernel
without pidfds (before 5.3) it re-checks the tracked pids every
``fallback_interval`` seconds instead.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import threading
from collections.abc import Callable

__all__ = ["ProcessWatcher"]

log = logging.getLogger("hecated.adapters.procwatch")


class ProcessWatcher:
    """Calls ``on_exit(key)`` once when the process tracked under ``key`` exits."""

    def __init__(
        self,
        on_exit: Callable[[str], None],
        alive: Callable[[int], bool],
        fallback_interval: float = 2.0,
        pidfds: bool = hasattr(os, "pidfd_open"),
    ) -> None:
        """``pidfds`` False: poll ``alive`` every ``fallback_interval`` seconds instead
        (what a kernel before 5.3 gets; the tests ask for it on any kernel)."""
        self._on_exit = on_exit
        self._alive = alive
        self._fallback_interval = fallback_interval
        self._lock = threading.Lock()
        self._by_key: dict[str, tuple[int, int | None]] = {}  # key -> (pid, pidfd)
        self._by_fd: dict[int, str] = {}
        self._exited: list[str] = []
        self._poll = select.poll()
        self._wake_r = self._wake_w = -1  # made with the thread: an idle registry holds no fds
        self._thread: threading.Thread | None = None
        self._closed = False
        self._pidfds = pidfds

    def track(self, key: str, pid: int) -> None:
        """Watch ``pid`` for ``key``; replaces whatever ``key`` tracked before."""
        with self._lock:
            if self._closed:
                return
            current = self._by_key.get(key)
            if current is not None and current[0] == pid:
                return
            self._drop(key)
            fd = self._open(pid)
            if fd == -1:
                # It died between the liveness check and now. Told from the thread,
                # never from here: the caller may hold the lock on_exit needs.
                self._exited.append(key)
            else:
                self._by_key[key] = (pid, fd)
                if fd is not None:
                    self._by_fd[fd] = key
                    self._poll.register(fd, select.POLLIN)
            self._start()
        self._wake()

    def untrack(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for key in list(self._by_key):
                self._drop(key)
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._wake_r != -1:
            with contextlib.suppress(OSError):
                os.close(self._wake_r)
                os.close(self._wake_w)

    def tracked(self) -> dict[str, int]:
        with self._lock:
            return {key: pid for key, (pid, _fd) in self._by_key.items()}

    # -- inside ------------------------------------------------------------------------

    def _open(self, pid: int) -> int | None:
        """A pidfd for ``pid``; -1 when it is already gone; None when pidfds are unavailable."""
        if not self._pidfds:
            return None
        try:
            return os.pidfd_open(pid)
        except ProcessLookupError:
            return -1
        except OSError as exc:
            if exc.errno in (errno.ENOSYS, errno.EPERM, errno.EINVAL):
                self._pidfds = False
                log.info(
                    "pidfd_open unavailable (%s); re-checking pids every %.0f s",
                    exc,
                    self._fallback_interval,
                )
                return None
            raise

    def _drop(self, key: str) -> None:
        found = self._by_key.pop(key, None)
        if found is None or found[1] is None:
            return
        fd = found[1]
        self._by_fd.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self._poll.unregister(fd)
        os.close(fd)

    def _start(self) -> None:
        if self._thread is None:
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._poll.register(self._wake_r, select.POLLIN)
            self._thread = threading.Thread(target=self._run, name="hecated-procwatch", daemon=True)
            self._thread.start()

    def _wake(self) -> None:
        if self._wake_w == -1:
            return
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                fallback = any(fd is None for _pid, fd in self._by_key.values())
                pending = bool(self._exited)
            timeout = int(self._fallback_interval * 1000) if fallback else None
            if pending:
                timeout = 0
            ready = self._poll.poll(timeout)
            with self._lock:
                if self._closed:
                    return
                exited, self._exited = self._exited, []
                for fd, _mask in ready:
                    if fd == self._wake_r:
                        with contextlib.suppress(OSError):
                            while os.read(self._wake_r, 512):
                                pass
                        continue
                    key = self._by_fd.get(fd)
                    if key is not None:
                        exited.append(key)
                        self._drop(key)
                if fallback:
                    for key, (pid, fd) in list(self._by_key.items()):
                        if fd is None and not self._alive(pid):
                            exited.append(key)
                            self._drop(key)
            for key in exited:
                try:
                    self._on_exit(key)
                except Exception:
                    log.exception("refreshing %s after its process exited failed", key)

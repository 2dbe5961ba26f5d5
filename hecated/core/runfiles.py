"""The primary's ``run/`` files: how shell scripts and a second instance find it.

``run/daemon.pid`` names the running daemon, ``run/daemon.state`` says what it
is doing (starting, running, stopping, stopped), and an ``flock`` on
``run/daemon.lock`` makes sure only one hecated serves a data dir at a time.
"""

from __future__ import annotations

import fcntl
import os

from hecated.core.files import atomic_write, open_dir, opened, remove_file, remove_stale_temps
from hecated.core.layout import INDEX_CACHE_FILE, LOCK_FILE, PID_FILE, RUN_DIR, STATE_FILE, Layout
from hecated.core.runstate import pid_in


class LockedError(RuntimeError):
    """Another hecated already serves this data dir."""


class RunFiles:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._lock_fd: int | None = None

    def _run_fd(self) -> int:
        with opened(self.layout.open_namespace(self.layout.primary_name)) as ns_fd:
            return open_dir(ns_fd, RUN_DIR, create=True)

    def acquire(self) -> None:
        """Take the data dir's lock, or say who holds it."""
        with opened(self._run_fd()) as run_fd:
            fd = os.open(
                LOCK_FILE,
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=run_fd,
            )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = pid_in(run_fd) or "?"
                raise LockedError(
                    f"another hecated (pid {holder}) is already serving {self.layout.data_dir}"
                ) from None
            # Holding the lock, no other writer is alive: temp files here are a crash's.
            for name in (PID_FILE, STATE_FILE, INDEX_CACHE_FILE):
                remove_stale_temps(run_fd, name)
        self._lock_fd = fd
        self.set_state("starting")
        with opened(self._run_fd()) as run_fd:
            atomic_write(run_fd, PID_FILE, f"{os.getpid()}\n".encode(), mode=0o644)

    def set_state(self, state: str) -> None:
        with opened(self._run_fd()) as run_fd:
            atomic_write(run_fd, STATE_FILE, f"{state}\n".encode(), mode=0o644)

    def release(self) -> None:
        """On exit: no pid file, state ``stopped``, lock released."""
        if self._lock_fd is None:
            return
        try:
            with opened(self._run_fd()) as run_fd:
                remove_file(run_fd, PID_FILE)
            self.set_state("stopped")
        finally:
            os.close(self._lock_fd)
            self._lock_fd = None

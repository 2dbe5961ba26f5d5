"""The forwarding wing's edge: which requests it takes, and where they run.

The serving layer asks ``claims`` once per request, when its head is read, with
the very path the router will see (PATH_INFO, slashes collapsed as waitress does
and dot segments already refused): a forwarded request is known then, before its
body arrives, so it may carry the larger body limit. Once it has arrived whole,
``run`` either takes it onto a stream thread of its own, out of the serving loop,
or refuses it at once when the stream cap is reached: the ``503 busy`` is decided
here, and answered without going through the fast path or the router.

A thread that has answered waits a moment (``settings.follow``) for the same
connection's next request and serves it too when it is forwarded: a client's
burst of requests on one kept-alive connection costs no hand-over to the loop and
back to another thread per request (issue 22). The slot is free while it waits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from hecated.http.forwarding.settings import ForwardSettings, is_forwarded
from hecated.http.forwarding.threads import HangUps, StreamThreads
from hecated.http.hooks import Job

log = logging.getLogger("hecated.http.forwarding")


class Edge:
    """The ``Detour`` the daemon hands the server: the stream cap, threads and hang-ups."""

    def __init__(self, settings: ForwardSettings | None = None) -> None:
        self.settings = settings = settings or ForwardSettings()
        self.body_limit = settings.body_limit
        self.send_timeout = settings.idle_timeout or None
        self.threads = StreamThreads(keep=settings.thread_keep)
        self.hangups = HangUps()
        self._lock = threading.Lock()
        self._open = 0
        self._following = 0  # threads waiting for their connection's next request

    @property
    def open_streams(self) -> int:
        """Forwarded requests being served now (at most ``settings.max_streams``)."""
        return self._open

    def claims(self, path: str) -> bool:
        return is_forwarded(path)

    def run(self, job: Job) -> str | None:
        """On a stream thread, with the client's hang-up watched; or why not."""
        if not self._take():
            return f"{self.settings.max_streams} forwarded streams are open; retry shortly"
        try:
            self.hangups.watch(job.fileno, job.hung_up)
        except (OSError, RuntimeError, TypeError, ValueError) as exc:
            # No epoll or thread to be had (out of fds), or the connection closed meanwhile.
            self._release()
            log.warning("cannot watch a forwarded request's client: %s", exc)
            return f"cannot run a forwarded request now: {exc}"
        try:
            self.threads.submit(lambda: self._serve(job))
        except RuntimeError as exc:  # no thread to be had
            self.hangups.forget(job.fileno)
            self._release()
            log.warning("cannot run a forwarded request on its own: %s", exc)
            return f"cannot run a forwarded request now: {exc}"
        return None

    def _serve(self, job: Job) -> Callable[[], None]:
        """Serve, then the connection's next forwarded requests while they come back to
        back (``settings.follow``): each on this thread, with no hand-over to the loop
        and back (issue 22: a third of a short forwarded request's cost). The slot is
        free while the thread waits, taken again for the next request. What to do once
        this thread is idle again: free the slot if held, hand the connection back."""
        job.serve()
        held = True
        while self._may_follow():
            self._release()
            held = False
            try:
                path = job.next_request(self.settings.follow)
            finally:
                with self._lock:
                    self._following -= 1
            if path is None or not self.claims(path) or not self._take():
                break  # done() dispatches a request read and not served, the usual way
            held = True
            job.serve()
        return lambda: self._ended(job, held)

    def _ended(self, job: Job, held: bool = True) -> None:
        self.hangups.forget(job.fileno)
        if held:
            self._release()
        job.done()

    def _may_follow(self) -> bool:
        """Wait for the connection's next request, unless as many threads wait already as
        the cap lets streams run: threads stay bounded (twice the cap at most) however
        many connections each ask once and then go quiet."""
        if self.settings.follow <= 0:
            return False
        with self._lock:
            if self._following >= self.settings.max_streams:
                return False
            self._following += 1
        return True

    def _take(self) -> bool:
        """A slot for one more forwarded request, if the cap leaves one."""
        with self._lock:
            if self._open >= self.settings.max_streams:
                return False
            self._open += 1
        return True

    def _release(self) -> None:
        with self._lock:
            self._open -= 1

    def close(self) -> None:
        self.hangups.close()

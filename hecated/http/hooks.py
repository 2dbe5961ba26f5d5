"""The one hook between the serving layer and a party that runs requests on threads of its own.

The serving layer (``server.py``) runs every request on its bounded pool of API
workers, except the ones a ``Detour`` claims: those run on the detour's own
threads, their connections out of the serving loop while they do, so a request
that streams for minutes never holds an API worker. The forwarding wing
(``hecated.http.forwarding``) is the one detour today; the daemon hands it to
``UnixServer``. Neither side imports the other (an import-linter contract says so):
they meet here, in two protocols and the environ keys a detoured request carries.
"""

from __future__ import annotations

from typing import Protocol

# What the serving layer puts in the environ of a detoured request.
ABORT_KEY = "hecated.abort"  # call to end the client's answer abruptly (no clean end)
# Call with a function to run when the client's connection closes: a stream whose
# source is silent must not hold its place until an idle timeout.
ON_CLOSE_KEY = "hecated.on_close"
# The request's headers as the server read them, by their environ names without "HTTP_"
# ("USER_AGENT"; Content-Type and -Length too): a few, where the environ holds ~30 keys.
HEADERS_KEY = "hecated.headers"


class Job(Protocol):
    """One claimed request, received whole; its connection is out of the serving loop."""

    fileno: int  # the client's connection, to watch for its hang-up
    path: str  # its PATH_INFO, as ``claims`` was asked with

    def serve(self) -> None:
        """Answer the request on the calling thread (never raises)."""

    def hung_up(self) -> None:
        """The client has gone: run the request's hang-up hooks."""

    def next_request(self, wait: float) -> str | None:
        """After ``serve``: wait up to ``wait`` s for the connection's next request; its
        PATH_INFO when it came whole and claimed (``serve`` then answers it on the
        calling thread), else None. One read and not served is dispatched by ``done``."""

    def done(self) -> None:
        """The thread that served is idle again: the connection goes back to the loop."""


class Detour(Protocol):
    """Who decides that a request runs on a thread of its own, and runs it there."""

    # The largest body a claimed request may carry (the server's own limit otherwise).
    body_limit: int
    # How long sending a claimed request's answer may wait for a client reading nothing.
    send_timeout: float | None

    def claims(self, path: str) -> bool:
        """Asked once per request, as soon as its head is read, with its PATH_INFO."""

    def run(self, job: Job) -> str | None:
        """Run ``job`` on a thread of yours (None), or refuse it now: the sentence for
        the ``503 busy`` the server then answers on a worker, with no routing."""

    def close(self) -> None:
        """The server has stopped: let go of threads and watches."""


class Detours:
    """Several detours as one: each request goes to the first that claims its path.

    The server takes one ``Detour``; the forwarding wing and the followed logs
    (``http/units.py``) are two. A claimed request may carry the largest body any
    of them takes, and sending to a silent client may wait as long as any allows."""

    def __init__(self, *detours: Detour) -> None:
        self.detours = detours
        self.body_limit = max(d.body_limit for d in detours)
        timeouts = [d.send_timeout for d in detours]
        self.send_timeout = None if None in timeouts else max(t for t in timeouts if t)

    def claims(self, path: str) -> bool:
        return any(d.claims(path) for d in self.detours)

    def send_timeout_of(self, path: str) -> float | None:
        """The send timeout of the detour that claims ``path``: a followed log keeps its
        minute whatever the forwarded streams' bound (even none) is."""
        for detour in self.detours:
            if detour.claims(path):
                return detour.send_timeout
        return self.send_timeout

    def run(self, job: Job) -> str | None:
        for detour in self.detours:
            if detour.claims(job.path):
                return detour.run(job)
        return "no detour claims this request"  # not reached: claims() said one did

    def close(self) -> None:
        for detour in self.detours:
            detour.close()


def send_timeout_of(detour: Detour, path: str) -> float | None:
    """How long sending a claimed request's answer may wait for a client reading nothing:
    as long as the detour that claims ``path`` allows (``Detours``: each its own)."""
    of = getattr(detour, "send_timeout_of", None)
    return of(path) if of is not None else detour.send_timeout

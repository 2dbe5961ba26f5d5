"""The hot GETs answered before Werkzeug: a small WSGI callable in front of the full app.

Issue 15 measured a list request at ~126 µs and a detail at ~190 µs inside
the app, most of it Werkzeug's ``Request``/routing/``Response`` objects, and
a cold start dominated by ``import werkzeug`` (whose ``__init__`` eagerly
imports ``werkzeug.serving`` and ``.test``). So the few answers that are plain
reads of cached bytes leave from here, and the full app (``app.py``) is
imported only when a request needs it or in the background after the first
answer (``load``, called by the daemon), whichever comes first.

What is answered here: ``GET``/``HEAD`` of ``/api/plugins`` without a query
string, ``/api/plugins/{name}`` for a registered plugin, ``/health`` and
``/api/health``, for the owner's uid only. Forwarded requests (``/plugin/…``)
go straight to the full app, which relays them without Werkzeug. Everything
else (long polls, 404s, 403s, writes, odd paths) falls through to the full
app, which owns every error. The bodies come from the same ``Views`` object the full app uses, so
both send the same bytes with the same headers (``tests/test_fast.py``).
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from hecated.core.layout import Layout
from hecated.http.forwarding.settings import PREFIX as FORWARDED
from hecated.http.views import BIG_BODY, Views
from hecated.protocol import PEER_ENVIRON_KEY, SEQ_HEADER, HealthStatus, Peer, encode

log = logging.getLogger("hecated.http.fast")

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]

OK = "200 OK"
CONTENT_TYPE = ("Content-Type", "application/json")
PLUGINS = "/api/plugins"
PLUGIN_PREFIX = PLUGINS + "/"
HEALTH_PATHS = frozenset({"/health", "/api/health"})
# Static routes under /api/plugins/ that are not plugin names: left to the full app's routing.
NOT_NAMES = frozenset({"register"})


class FastPath:
    """WSGI: the hot GETs from cached bytes, everything else to the lazily built full app."""

    def __init__(
        self, views: Views, load_app: Callable[[], WSGIApp], owner_uid: int | None = None
    ) -> None:
        self.views = views
        self.layout: Layout = views.layout
        self.owner_uid = os.getuid() if owner_uid is None else owner_uid
        self._load_app = load_app
        self._app: WSGIApp | None = None
        self._lock = threading.Lock()

    def set_status(self, phase: HealthStatus | str) -> None:
        """``/health``'s phase, kept in the ``Views`` both paths share."""
        self.views.set_status(phase)

    @property
    def loaded(self) -> bool:
        """The full app has been built (Werkzeug imported)."""
        return self._app is not None

    def load(self) -> WSGIApp:
        """The full app, built once however many threads ask at the same time."""
        app = self._app
        if app is None:
            with self._lock:
                if self._app is None:
                    self._app = self._load_app()
                app = self._app
        return app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith(FORWARDED):
            # Never one of the answers here: straight to the full app, whose relay takes
            # it without building Werkzeug's request or routing it (HecateApp.forwarded).
            return self.load()(environ, start_response)
        try:
            hit = self._answer(environ)
        except Exception:  # the full app answers it, with its error envelope and its log
            log.debug("fast path failed; the full app answers", exc_info=True)
            hit = None
        if hit is None:
            return self.load()(environ, start_response)
        body, extra = hit
        start_response(OK, [*extra, CONTENT_TYPE, ("Content-Length", str(len(body)))])
        if environ["REQUEST_METHOD"] == "HEAD":
            return []
        wrapper: Any = environ.get("wsgi.file_wrapper")
        if wrapper is not None and len(body) >= BIG_BODY:
            # As app.bytes_response: straight from the cached bytes, no copy per request.
            return wrapper(io.BytesIO(body))
        return [body]

    def _answer(self, environ: dict) -> tuple[bytes, list[tuple[str, str]]] | None:
        """The body and the headers before Content-Type, or None: the full app answers."""
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return None
        if environ.get("QUERY_STRING") or environ.get("SCRIPT_NAME"):
            return None
        peer = environ.get(PEER_ENVIRON_KEY)
        if not isinstance(peer, Peer) or peer.uid != self.owner_uid:
            return None  # the full app refuses, with its 403
        path = environ.get("PATH_INFO", "")
        if path == PLUGINS:
            seq, body = self.views.encoded_list()
            return body, [(SEQ_HEADER, str(seq))]
        if path in HEALTH_PATHS:
            return encode(self.views.health()), []
        if path.startswith(PLUGIN_PREFIX):
            name = path[len(PLUGIN_PREFIX) :]
            if name in NOT_NAMES or not self.layout.is_plugin_name(name):
                return None
            body = self.views.encoded_detail(name)
            return None if body is None else (body, [])
        return None

"""The HTTP/JSON API: Werkzeug routing in, JSON out, one error shape for everything.

This is the edge. It turns requests into registry calls and registry answers
(and failures) into JSON; it holds no state of its own beyond what a response
cache needs and the daemon's phase for ``/health``. Every error, from a bad
route to a full disk, leaves as the ecosystem's envelope
``{"ok": false, "error": "<message>", "code": "<code>"}`` (``hecated.protocol``)
with the status that fits it; successful writes carry ``"ok": true``.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import (
    Forbidden,
    HTTPException,
    RequestEntityTooLarge,
    UnsupportedMediaType,
)
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from hecated.core.errors import (
    HecateError,
    InvalidFieldError,
    NotFoundError,
    NoUnitError,
    SystemdUnavailableError,
)
from hecated.core.index import Index
from hecated.core.units import unit_of
from hecated.http import openapi
from hecated.http.events import EventStreams, resume_cursor
from hecated.http.forwarding.settings import PREFIX
from hecated.http.hooks import ON_CLOSE_KEY
from hecated.http.install import Installer, UnitVerifier
from hecated.http.units import LINES_DEFAULT, LINES_MAX, FollowStreams, UnitControl, sse
from hecated.http.views import BIG_BODY, Views
from hecated.protocol import (
    MAX_BODY,
    PEER_ENVIRON_KEY,
    SEQ_HEADER,
    Code,
    HealthStatus,
    Peer,
    code_of_status,
    encode,
    error_body,
    error_headers,
    status_of,
)

log = logging.getLogger("hecated.http.app")

MAX_WAIT = 60.0  # seconds a long poll may hold a worker; longer asks are capped
REGISTER_FIELDS = frozenset({"name", "version", "description", "unit"})


class ApiError(HTTPException):
    """An HTTP error with our own machine-readable code; its status is the code's."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = status_of(code)
        self.error_code = code


FORWARD_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

URL_MAP = Map(
    [
        Rule("/health", endpoint="health", methods=["GET"]),
        Rule("/api/health", endpoint="health", methods=["GET"]),
        Rule("/api/plugins", endpoint="list_plugins", methods=["GET"]),
        Rule("/api/plugins/register", endpoint="register", methods=["POST"]),
        Rule("/api/plugins/<name>", endpoint="get_plugin", methods=["GET"]),
        Rule("/api/plugins/<name>", endpoint="deregister", methods=["DELETE"]),
        Rule("/api/plugins/<name>/purge", endpoint="purge", methods=["POST"]),
        # The plugin's unit, through the user's systemd manager (http/units.py).
        Rule("/api/plugins/<name>/start", endpoint="control", methods=["POST"]),
        Rule("/api/plugins/<name>/stop", endpoint="control", methods=["POST"]),
        Rule("/api/plugins/<name>/restart", endpoint="control", methods=["POST"]),
        Rule("/api/plugins/<name>/logs", endpoint="logs", methods=["GET"]),
        Rule("/api/rescan", endpoint="rescan", methods=["POST"]),
        # Plugins as unit files in the gitops tree (http/install.py).
        Rule("/api/plugins/install", endpoint="install", methods=["POST"]),
        Rule("/api/plugins/<name>/uninstall", endpoint="uninstall", methods=["POST"]),
        Rule("/api/openapi.json", endpoint="openapi", methods=["GET"]),
        # Every change as a server-sent event (http/events.py), on the detour's threads.
        Rule("/api/events", endpoint="events", methods=["GET"]),
        # Relayed to the plugin's own socket (forwarding/relay.py), on the wing's threads.
        Rule(f"{PREFIX}<name>/<path:rest>", endpoint="forward", methods=FORWARD_METHODS),
    ],
    strict_slashes=False,
    # No redirects: a 308 to a merged path helps no client of a Unix socket, and
    # Werkzeug's redirect would leave here as an error body without a Location.
    merge_slashes=False,
)


def bytes_response(request: Request, body: bytes, headers: list[tuple[str, str]]) -> Response:
    """A JSON body already encoded (the cached list), sent without copying it.

    Handed over as bytes, waitress copies a body into its output buffer and,
    past 1 MB, on into a temp file: at 10,000 plugins (2 MB) that is two copies
    a request, made on worker threads whose malloc arenas keep the memory (RSS
    grew 37 MB over 20 requests). Through ``wsgi.file_wrapper`` it sends
    straight from the cached bytes (``BytesIO`` shares them, it does not copy).
    """
    wrapper = request.environ.get("wsgi.file_wrapper")
    if wrapper is None or len(body) < BIG_BODY:
        return Response(body, status=200, headers=headers, mimetype="application/json")
    response = Response(
        wrapper(io.BytesIO(body)),
        status=200,
        headers=headers,
        mimetype="application/json",
        direct_passthrough=True,
    )
    response.content_length = len(body)
    return response


def json_response(
    body: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()
) -> Response:
    return Response(encode(body), status=status, headers=list(headers), mimetype="application/json")


def error_response(
    status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = ()
) -> Response:
    """The envelope, with the headers its code always carries (Retry-After on busy)."""
    return json_response(error_body(code, message), status, [*headers, *error_headers(code)])


def hecate_error_response(exc: HecateError) -> Response:
    """A registry or forwarding error in the envelope, with its fields and status."""
    body = {**error_body(exc.code, exc.message), **exc.fields()}
    return json_response(body, status_of(exc.code), error_headers(exc.code))


def forward_parts(environ: dict) -> tuple[str, str] | None:
    """``(name, rest)`` of ``{PREFIX}<name>/<path:rest>`` as the router would match them
    (a name of no '/', a rest that does not start with '/', both decoded from the WSGI
    string as Werkzeug decodes them), or None: not that shape, or not a method forwarded."""
    if environ.get("REQUEST_METHOD") not in FORWARD_METHODS or environ.get("SCRIPT_NAME"):
        return None
    path = environ.get("PATH_INFO", "")
    if not path.startswith(PREFIX):
        return None
    name, sep, rest = path[len(PREFIX) :].partition("/")
    if not (name and sep and rest) or rest[0] == "/":
        return None
    if not path.isascii():  # WSGI's latin-1 string of the raw bytes, as UTF-8
        name = name.encode("latin-1").decode(errors="replace")
        rest = rest.encode("latin-1").decode(errors="replace")
    return name, rest


class HecateApp:
    """The WSGI application over one registry."""

    def __init__(
        self,
        registry: Index,
        owner_uid: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        rescan: Callable[[], int] | None = None,
        views: Views | None = None,
        forward: Callable[..., Callable] | None = None,
        units: UnitControl | None = None,
        verifier: UnitVerifier | None = None,
        events: EventStreams | None = None,
    ) -> None:
        self.registry = registry
        # GET /api/events (http/events.py, built by the daemon); None: not served.
        self.events = events
        # The plugins' units (adapters/unitapi.py, built by the daemon); None: no control.
        self.units = units
        self.follow_streams = FollowStreams()
        # Relays forwarded requests (hecated.http.forwarding.relay.Forwarder); None: not served.
        self.forward = forward
        self.layout = registry.layout
        self.owner_uid = os.getuid() if owner_uid is None else owner_uid
        # The whole tree again: the daemon hands in its coalesced rescan (the one
        # SIGHUP uses, which also rebuilds the watches); alone, a plain scan.
        self.rescan: Callable[[], int] = rescan or registry.scan
        # The bodies and their caches (views.py); the daemon shares one with the fast path.
        self.views = Views(registry, clock) if views is None else views
        # Install/uninstall into the gitops tree; ``verifier``: systemd-analyze, from the daemon.
        self.installer = Installer(self.layout, self.layout.gitops_dir, units, verifier)

    @property
    def phase(self) -> HealthStatus:
        return self.views.phase

    def set_status(self, phase: HealthStatus | str) -> None:
        """What ``/health`` says the daemon is doing (kept in the shared ``Views``)."""
        self.views.set_status(phase)

    # -- WSGI -------------------------------------------------------------------------

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "").startswith(PREFIX):
            answer = self.forwarded(environ, start_response)
            if answer is not None:
                return answer
        request = Request(environ)
        # One byte over the limit must be readable to be noticed: Werkzeug 3 would
        # otherwise cut a chunked body at exactly MAX_BODY and hide that it was longer.
        request.max_content_length = MAX_BODY + 1
        return self.dispatch(request)(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        try:
            peer = self._check_peer(request)
            endpoint, args = URL_MAP.bind_to_environ(request.environ).match()
            return getattr(self, f"on_{endpoint}")(request, peer, **args)
        except HecateError as exc:
            return hecate_error_response(exc)
        except ApiError as exc:
            return error_response(exc.code or 400, exc.error_code, exc.description or "")
        except HTTPException as exc:
            status = exc.code or 500
            allow = [(k, v) for k, v in exc.get_headers(request.environ) if k.lower() == "allow"]
            return error_response(status, code_of_status(status), _describe(exc, request), allow)
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            return error_response(500, Code.INTERNAL_ERROR, "internal error; see the daemon's log")

    def forwarded(self, environ: dict, start_response: Callable) -> Iterable[bytes] | None:
        """A forwarded request of the plain shape relayed without Werkzeug's ``Request``
        and routing (issue 22: ~18 % of a forwarded request's cost); None for any other
        shape, which ``dispatch`` answers (its 403, 404 and 405 stay the router's).

        The name and rest are cut as the router's rule cuts them (``forward_parts``);
        the peer is checked as ``dispatch`` checks it; a ``HecateError`` leaves in the
        same envelope."""
        parts = forward_parts(environ)
        peer = environ.get(PEER_ENVIRON_KEY)
        if parts is None or self.forward is None or not isinstance(peer, Peer):
            return None
        if peer.uid != self.owner_uid:
            return None
        try:
            relay = self.forward(environ, peer, *parts)
        except HecateError as exc:
            return hecate_error_response(exc)(environ, start_response)
        except Exception:
            log.exception(
                "internal error on %s %s", environ["REQUEST_METHOD"], environ["PATH_INFO"]
            )
            answer = error_response(
                500, Code.INTERNAL_ERROR, "internal error; see the daemon's log"
            )
            return answer(environ, start_response)
        return relay(environ, start_response)

    def _check_peer(self, request: Request) -> Peer | None:
        """Only the user who owns the daemon may talk to it, whatever the socket's mode."""
        peer = request.environ.get(PEER_ENVIRON_KEY)
        if not isinstance(peer, Peer):
            raise Forbidden("the peer's credentials could not be read; refusing")
        if peer.uid != self.owner_uid:
            raise Forbidden(
                f"uid {peer.uid} may not use this daemon (it belongs to uid {self.owner_uid})"
            )
        return peer

    # -- endpoints --------------------------------------------------------------------

    def on_health(self, request: Request, peer: Peer) -> Response:
        return json_response(self.views.health())

    def on_forward(self, request: Request, peer: Peer, name: str, rest: str) -> Callable:
        """The plugin's answer, streamed; the peer was checked like any other's."""
        if self.forward is None:
            raise NotFoundError("forwarding to plugins is not enabled")
        return self.forward(request.environ, peer, name, rest)

    def on_openapi(self, request: Request, peer: Peer) -> Response:
        return json_response(openapi.spec())

    def on_list_plugins(self, request: Request, peer: Peer) -> Response:
        """The list; with ``since``/``wait``, a long poll that answers once ``seq`` moved on."""
        since = _query_number(request, "since", int, 0, None)
        wait = _query_number(request, "wait", float, 0.0, None)
        if wait is not None and wait > 0:
            self.registry.wait(self.registry.seq if since is None else since, min(wait, MAX_WAIT))
        seq, body = self.views.encoded_list()
        return bytes_response(request, body, [(SEQ_HEADER, str(seq))])

    def _encoded_list(self) -> tuple[int, bytes]:
        """The cached list (views.py); kept for callers of the app."""
        return self.views.encoded_list()

    def on_rescan(self, request: Request, peer: Peer) -> Response:
        count = self.rescan()
        seq = self.registry.seq
        log.info(
            "rescanned the tree on request of pid %s: %d plugin(s)",
            peer.pid if peer else "?",
            count,
            extra=_fields("rescan", "", peer),
        )
        return json_response({"ok": True, "plugins": count}, headers=[(SEQ_HEADER, str(seq))])

    def on_get_plugin(self, request: Request, peer: Peer, name: str) -> Response:
        self.layout.check_plugin_name(name)
        body = self.views.encoded_detail(name)
        if body is None:
            raise NotFoundError(f"plugin {name!r} is not registered")
        return Response(body, status=200, mimetype="application/json")

    def on_register(self, request: Request, peer: Peer) -> Response:
        body = _json_object(request)
        unknown = sorted(set(body) - REGISTER_FIELDS)
        if unknown:
            raise InvalidFieldError(f"unknown field(s): {', '.join(unknown)}")
        if "name" not in body:
            raise InvalidFieldError("missing required field 'name'")
        version, description = self._from_live_manifest(body)
        unit = body.get("unit")
        entry, created = self.registry.register(body["name"], version, description, unit)
        version = entry.manifest.version if entry.manifest else ""
        verb = "registered" if created else "re-registered"
        _audit(logging.INFO, "register", entry.name, peer, f"{verb} plugin {entry.name} {version}")
        return json_response({"ok": True, **self.views.paths(entry.name)}, 201 if created else 200)

    def _from_live_manifest(self, body: dict[str, Any]) -> tuple[Any, Any]:
        """``version`` and ``description`` from the body, else from what the plugin's own
        ``GET /manifest`` said (a discovered plugin registered as it runs), else empty."""
        version, description = body.get("version"), body.get("description")
        if version is None or description is None:
            name = body["name"]
            plugin = self.registry.get(name) if isinstance(name, str) else None
            live = None if plugin is None else plugin.live.manifest
            if live is not None:
                version = live.version if version is None else version
                description = live.description if description is None else description
        return ("" if version is None else version), ("" if description is None else description)

    def on_deregister(self, request: Request, peer: Peer, name: str) -> Response:
        self.registry.deregister(name)
        _audit(logging.INFO, "deregister", name, peer, f"deregistered plugin {name} (data kept)")
        return json_response({"ok": True})

    def on_purge(self, request: Request, peer: Peer, name: str) -> Response:
        self.registry.purge(name)
        _audit(logging.WARNING, "purge", name, peer, f"purged the namespace of {name}")
        return json_response({"ok": True, "purged": self.layout.namespace_str(name)})

    # -- installing plugins as unit files (http/install.py) ----------------------------

    def on_install(self, request: Request, peer: Peer) -> Response:
        answer, replaced = self.installer.install(_json_object(request))
        name, verb = answer["name"], "replaced" if replaced else "installed"
        _audit(logging.INFO, "install", name, peer, f"{verb} plugin {name}: {answer['path']}")
        return json_response(answer, 200 if replaced else 201)

    def on_uninstall(self, request: Request, peer: Peer, name: str) -> Response:
        answer = self.installer.uninstall(name)
        _audit(logging.INFO, "uninstall", name, peer, f"uninstalled plugin {name} (data kept)")
        return json_response(answer)

    # -- the plugins' units ---------------------------------------------------------------

    def _unit(self, name: str) -> tuple[UnitControl, str]:
        """The control object and the registered plugin's unit; 400, 404 or 503 first."""
        self.layout.check_plugin_name(name)
        plugin = self.registry.get(name)
        if plugin is None or not plugin.registered:
            raise NotFoundError(f"plugin {name!r} is not registered")
        if plugin.entry.manifest is None:
            # Its unit cannot be known: never act on the convention's unit instead of
            # the one a broken plugin.toml names (the watcher and on-demand agree).
            raise NoUnitError(
                f"plugin {name!r} has an invalid plugin.toml, so its unit is unknown; "
                "fix the file (hecatectl doctor says what is wrong)"
            )
        if self.units is None:
            raise SystemdUnavailableError("this daemon does not control plugin units")
        return self.units, unit_of(plugin, name)

    def on_control(self, request: Request, peer: Peer, name: str) -> Response:
        """start, stop or restart (the path's last part); the answer waits for the job."""
        verb = request.path.rstrip("/").rsplit("/", 1)[-1]
        units, unit = self._unit(name)
        state = getattr(units, verb)(unit)
        _audit(logging.INFO, verb, name, peer, f"{verb} of plugin {name} ({unit}) done")
        return json_response({"ok": True, "unit": unit, "state": state})

    def on_logs(self, request: Request, peer: Peer, name: str) -> Response:
        """The unit's last lines (``lines``, default 100, at most 10,000); with ``follow``,
        those lines and then each new one as server-sent events."""
        lines = _query_number(request, "lines", int, 0, LINES_MAX)
        # A HEAD gets the plain answer's head: a stream with no body would never end.
        follow = _query_flag(request, "follow") and request.method != "HEAD"
        units, unit = self._unit(name)
        count = LINES_DEFAULT if lines is None else lines
        if not follow:
            return json_response({"ok": True, "unit": unit, "lines": units.logs(unit, count)})
        streams = self.follow_streams
        streams.take()
        try:
            stop = threading.Event()
            source = units.follow(unit, stop, count)
        except BaseException:
            streams.give_back()
            raise
        on_close = request.environ.get(ON_CLOSE_KEY)
        if callable(on_close):  # a serving layer that says when the client hangs up
            on_close(stop.set)
        stopping = lambda: self.phase == HealthStatus.STOPPING  # noqa: E731
        body = sse(source, stop, streams.give_back, stopping)
        return Response(
            body,
            status=200,
            mimetype="text/event-stream",
            headers=[("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")],
            direct_passthrough=True,
        )

    # -- the change feed as events ----------------------------------------------------------

    def on_events(self, request: Request, peer: Peer) -> Response:
        """Server-sent events of every change, from after ``Last-Event-ID`` (or ``since``);
        neither: from now. 503 busy when ``events_clients`` streams are open."""
        if self.events is None:
            raise NotFoundError("this daemon does not serve events")
        since = _last_event_id(request, self.events.events.run)
        headers = [("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")]
        if request.method == "HEAD":  # the head only: a stream with no body would never end
            return Response(b"", status=200, mimetype="text/event-stream", headers=headers)
        stop = threading.Event()
        stopping = lambda: self.phase == HealthStatus.STOPPING  # noqa: E731
        body = self.events.open(since, stop, stopping)
        on_close = request.environ.get(ON_CLOSE_KEY)
        if callable(on_close):  # a serving layer that says when the client hangs up
            on_close(self.events.hang_up(stop))
        return Response(
            body,
            status=200,
            mimetype="text/event-stream",
            headers=headers,
            direct_passthrough=True,
        )


def _last_event_id(request: Request, run: str) -> int | None:
    """Where a stream resumes: the ``Last-Event-ID`` header (an EventSource reconnecting),
    else ``since`` (curl, hecatectl watch): an id the stream sent (``RUN-SEQ``; one of
    another run: a resync), or for ``since`` also a plain ``seq`` of this run; else 400."""
    raw = request.headers.get("Last-Event-ID")
    plain = raw is None  # ?since=: a plain seq of this run is taken too
    if raw is None:
        raw = request.args.get("since")
        if raw is None:
            return None
    try:
        return resume_cursor(raw if plain else raw.strip(" \t"), run, plain)
    except ValueError:
        who = "'since'" if plain else "Last-Event-ID"
        what = f"{who} must be an event id (RUN-SEQ){' or a seq' if plain else ''}"
        raise ApiError(
            Code.INVALID_PARAMETER, f"{what}, at most 19 digits (got {raw[:40]!r})"
        ) from None


def _describe(exc: HTTPException, request: Request) -> str:
    if exc.code == 404:
        return f"no such endpoint: {request.path}"
    if exc.code == 405:
        return f"method {request.method} is not allowed on {request.path}"
    return exc.description or exc.name


# At most 19 digits (a seq, a count: never past 2**63): int() of a longer string costs
# time, and past 4,300 digits raises ValueError (Python's int-string limit), a 500.
_WHOLE = re.compile(r"[0-9]{1,19}")
# The SDK sends waits with "%g": "0.5", "1e-05", "1e+06".
_DECIMAL = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _query_number(request: Request, key: str, kind: type, low: float, high: float | None):
    """A numeric query parameter, or the 400 that says what is wrong with it."""
    raw = request.args.get(key)
    if raw is None:
        return None
    # ASCII digits as written: int() and float() also take "1_0", " 5", "+5" and
    # other scripts' digits.
    value = kind(raw) if (_WHOLE if kind is int else _DECIMAL).fullmatch(raw) else None
    if value is None or value != value or value < low or value in (float("inf"),):
        raise ApiError(
            Code.INVALID_PARAMETER,
            f"{key!r} must be a {'whole ' if kind is int else ''}number >= {low:g}"
            f"{' of at most 19 digits' if kind is int else ''} (got {raw[:40]!r})",
        )
    if high is not None and value > high:
        value = kind(high)
    return value


_TRUE, _FALSE = frozenset({"1", "true", "yes"}), frozenset({"0", "false", "no", ""})


def _query_flag(request: Request, key: str) -> bool:
    """A yes/no query parameter (``1``/``true``/``yes``, ``0``/``false``/``no``), else 400."""
    raw = request.args.get(key)
    if raw is None or raw.lower() in _FALSE:
        return False
    if raw.lower() in _TRUE:
        return True
    raise ApiError(Code.INVALID_PARAMETER, f"{key!r} must be 1 or 0 (got {raw!r})")


def _json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or the 4xx that says what is wrong with it."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise RequestEntityTooLarge(f"the body is over {MAX_BODY} bytes")
    if request.mimetype != "application/json":
        raise UnsupportedMediaType(
            "send a JSON body with 'Content-Type: application/json' "
            f"(got {request.mimetype or 'no content type'!r})"
        )
    raw = _read_at_most(request.stream, MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise RequestEntityTooLarge(f"the body is over {MAX_BODY} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise ApiError(Code.INVALID_JSON, f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(Code.INVALID_BODY, "the body must be a JSON object")
    return body


def _read_at_most(stream: Any, limit: int) -> bytes:
    """Read until EOF or ``limit`` bytes, whatever the server's stream (chunked or not).

    Bounded by us, not by the Werkzeug version: bookworm's 2.2 does not cap a
    chunked body, so an unbounded read would let a client fill the memory.
    """
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = stream.read(min(remaining, 65536))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _audit(level: int, action: str, name: str, peer: Peer, what: str) -> None:
    """Log a registry change with who made it; the fields feed the journal (systemd.py)."""
    fields = _fields(action, name, peer)
    log.log(level, "%s by pid %d uid %d", what, peer.pid, peer.uid, extra=fields)


def _fields(action: str, name: str, peer: Peer) -> dict[str, Any]:
    """Structured fields for the journal (systemd.py turns them into PLUGIN= and friends)."""
    return {
        "hecate_action": action,
        "hecate_plugin": name,
        "hecate_peer_pid": peer.pid,
        "hecate_peer_uid": peer.uid,
    }

"""The bodies of the read answers (list, detail, health) and their caches: no Werkzeug.

Moved out of ``app.py`` unchanged so that the full app and the fast path
(``fast.py``, which answers the hot GETs before Werkzeug is imported) build
every body in one place: what one sends, the other sends byte for byte.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from json.encoder import encode_basestring as _json_str
from typing import Any

from hecated import __version__
from hecated.core.index import Index, Plugin
from hecated.protocol import (
    PLUGIN_DEGRADED,
    PLUGIN_FAILED,
    PLUGIN_OK,
    PLUGIN_REASON_MAX,
    PLUGIN_STOPPED,
    PLUGIN_STOPPING,
    SERVICE,
    HealthStatus,
    PluginStatus,
    encode,
)

# One encoder for every list fragment: json.dumps with options builds a new one per call,
# a fifth of encoding the list's 10,000 fragments at start.
_FRAGMENT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _fragment_encoder() -> Callable[[Any], str]:
    """``_FRAGMENT.encode``, the same text, with its C encoder made once: ``encode`` makes
    a new one at every call (and the Python frames around it), a third of the cost of
    each of the 10,000 entries of the first list. Without the C accelerator (another
    interpreter), ``encode`` itself. No check for cycles: an entry is plain data."""
    from json.encoder import c_make_encoder, encode_basestring

    if c_make_encoder is None:  # pragma: no cover - CPython always has it
        return _FRAGMENT.encode
    f = _FRAGMENT
    encoder = c_make_encoder(
        None, f.default, encode_basestring, None, f.key_separator, f.item_separator,
        f.sort_keys, f.skipkeys, f.allow_nan,
    )  # fmt: skip
    return lambda value: "".join(encoder(value, 0))


_ENCODE = _fragment_encoder()

# What ``Views.summary`` says after ``status`` of a registered plugin with nothing live to
# tell (no socket manifest, no word from the user manager, not installed): 10,000 such
# entries make a first list, and ``quiet_fragment`` writes them without a dict each.
_QUIET_TAIL = (
    ',"registered":true,"display_name":null,"icon":null,"tag":null,"ui":false,'
    '"problems":[],"unit":null,"installed":false,"desired":null}'
)


def _json_text(value: str | None) -> str:
    return "null" if value is None else _json_str(value)


def _str_or_none(value: object) -> bool:
    return value is None or isinstance(value, str)


def quiet_fragment(plugin: Plugin, socket: str) -> bytes | None:
    """``plugin``'s list entry, byte for byte what encoding its ``summary`` gives, when
    it is quiet (registered, nothing live to tell): the common entry, at half the cost
    of a dict encoded. None for any other entry (the caller encodes its summary)."""
    live, m = plugin.live, plugin.entry.manifest
    if not plugin.registered or live.manifest is not None or live.unit is not None:
        return None
    if plugin.installed is not None:
        return None
    version, description = (m.version, m.description) if m else (None, None)
    if not (_str_or_none(version) and _str_or_none(description)):
        return None
    text = (
        f'{{"name":{_json_text(plugin.name)},"version":{_json_text(version)},'
        f'"description":{_json_text(description)},"socket":{_json_text(socket)},'
        f'"status":{_json_text(plugin.status)}{_QUIET_TAIL}'
    )
    return text.encode()


# Bodies above this go out through the server's wsgi.file_wrapper (see app.bytes_response).
BIG_BODY = 64 * 1024


def _isoformat(value: Any) -> str | None:
    return None if value is None else value.isoformat()


class Views:
    """The read answers over one registry, with the caches that make them cheap.

    Shared by the full app and the fast path (one object, so one cache and
    one phase for ``/health``), and holds no Werkzeug object.
    """

    def __init__(self, registry: Index, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.layout = registry.layout
        self._clock = clock
        self._started = clock()
        self._list_cache: tuple[int, bytes] | None = None
        self._fragments: dict[str, tuple[Plugin, bytes]] = {}
        self._fragments_lock = threading.Lock()
        self._health_cache: tuple[int, dict[str, str]] | None = None
        self._detail_cache: tuple[int, dict[str, bytes]] = (-1, {})
        self.phase = HealthStatus.STARTING

    def set_status(self, phase: HealthStatus | str) -> None:
        """What ``/health`` says the daemon is doing: the daemon sets ``healthy`` once it
        serves and ``stopping`` when it begins to shut down (one attribute write: safe
        from any thread)."""
        self.phase = HealthStatus(phase)

    # -- health ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The ecosystem's health shape (hecate-web, hecate-tui), then hecated's extras.

        ``uptime_seconds`` is whole seconds: hecate-tui decodes it into an ``int``.
        """
        seq, plugins = self.plugin_health()
        phase = self.phase
        return {
            "status": phase,
            "ready": phase == HealthStatus.HEALTHY,
            "service": SERVICE,
            "version": __version__,
            "uptime_seconds": int(self._clock() - self._started),
            "plugins": plugins,
            "plugin_count": len(plugins),
            "seq": seq,
            "pid": os.getpid(),
            "socket": str(self.layout.api_socket),
            "data_dir": str(self.layout.data_dir),
        }

    def plugin_health(self) -> tuple[int, dict[str, str]]:
        """name -> ok | degraded | stopped | a short reason, built once per ``seq``."""
        cached = self._health_cache
        if cached is not None and cached[0] == self.registry.seq:
            return cached
        seq, plugins = self.registry.snapshot()
        self._health_cache = (seq, {p.name: plugin_word(p) for p in plugins})
        return self._health_cache

    # -- the list ---------------------------------------------------------------------------

    def encoded_list(self) -> tuple[int, bytes]:
        """The list as JSON, encoded once per ``seq``, and then only the entries that changed.

        An unchanged list costs no encoding at all; after one hand edit among
        10,000 plugins, one entry is encoded and the rest are joined as bytes.
        """
        cached = self._list_cache
        if cached is not None and cached[0] == self.registry.seq:
            return cached
        seq, plugins = self.registry.snapshot()
        with self._fragments_lock:
            fragments = self._fragments
            parts = []
            for plugin in plugins:
                hit = fragments.get(plugin.name)
                if hit is None or hit[0] is not plugin:
                    hit = fragments[plugin.name] = (plugin, self._encode_entry(plugin))
                parts.append(hit[1])
            if len(fragments) > len(plugins):  # names went away
                present = {p.name for p in plugins}
                for name in [n for n in fragments if n not in present]:
                    del fragments[name]
        self._list_cache = (seq, b"[" + b",".join(parts) + b"]\n")
        return self._list_cache

    def fragment(self, plugin: Plugin) -> bytes:
        """One entry of the list as JSON (an event's data, http/events.py): the list's own
        cached bytes when they are of this very plugin, else encoded as the list does."""
        hit = self._fragments.get(plugin.name)
        if hit is not None and hit[0] is plugin:
            return hit[1]
        return self._encode_entry(plugin)

    def _encode_entry(self, plugin: Plugin) -> bytes:
        """``summary`` as JSON bytes; a quiet entry without building its dict."""
        quiet = quiet_fragment(plugin, self.layout.plugin_socket_str(plugin.name))
        return quiet if quiet is not None else _ENCODE(self.summary(plugin)).encode()

    # -- one plugin --------------------------------------------------------------------------

    def encoded_detail(self, name: str) -> bytes | None:
        """``name``'s detail as JSON (None: not registered), encoded once per ``seq``.

        Encoding it was most of a detail request's cost in the app (it was slower
        than the cached list). The cache is dropped whole when ``seq`` moves on, so
        it never holds more than the plugins asked for since the last change. ``seq``
        is read before the plugin: a plugin stored under a ``seq`` is never older
        than it (at worst newer, which only a request racing the change sees).
        """
        seq = self.registry.seq
        cache = self._detail_cache
        if cache[0] != seq:
            cache = self._detail_cache = (seq, {})
        body = cache[1].get(name)
        if body is None:
            plugin = self.registry.get(name)
            if plugin is None:
                return None
            body = cache[1][name] = encode(self.detail(plugin))
        return body

    # -- shapes -------------------------------------------------------------------------

    def paths(self, name: str) -> dict[str, Any]:
        """The spec's registration answer, exactly: name, base_dir, paths."""
        return {
            "name": name,
            "base_dir": self.layout.namespace_str(name),
            "paths": self.layout.paths(name),
        }

    def summary(self, plugin: Plugin) -> dict[str, Any]:
        """The spec's four keys, then what the plugin's socket and manifest say (live)."""
        m, live = plugin.entry.manifest, plugin.live.manifest
        if plugin.registered:
            version, description = (m.version, m.description) if m else (None, None)
        else:  # discovered: only its own manifest tells
            version = live.version if live else None
            description = live.description if live else None
        return {
            "name": plugin.name,
            "version": version,
            "description": description,
            "socket": self.layout.plugin_socket_str(plugin.name),
            "status": plugin.status,
            "registered": plugin.registered,
            "display_name": live.display_name if live else None,
            "icon": live.icon if live else None,
            "tag": live.tag if live else None,
            "ui": live.ui if live else False,
            "problems": list(live.problems) if live else [],
            "unit": _unit_block(plugin),
            "installed": plugin.installed is not None,
            "desired": None if plugin.installed is None else plugin.installed.as_dict(),
        }

    def detail(self, plugin: Plugin) -> dict[str, Any]:
        m, err = plugin.entry.manifest, plugin.entry.error
        return {
            **self.summary(plugin),
            **self.paths(plugin.name),
            "manifest": self.layout.manifest_str(plugin.name) if plugin.registered else None,
            "registered_at": _isoformat(m.registered_at) if m else None,
            "updated_at": _isoformat(m.updated_at) if m else None,
            "pid": plugin.live.pid,
            "state": plugin.live.state,
            "reason": plugin.live.detail,
            "error": None
            if err is None
            else {"file": err.path, "line": err.line, "message": err.message},
        }


def _unit_block(plugin: Plugin) -> dict[str, Any] | None:
    """The plugin's unit as the user manager last said (None: no word from it)."""
    unit = plugin.live.unit
    return None if unit is None else unit.as_dict()


def plugin_word(plugin: Plugin) -> str:
    """A plugin in the health answer: running -> ok, stopped -> stopped, stopping ->
    stopping, an invalid plugin.toml or a failed unit -> why (short), any other live
    state (unhealthy, starting) -> degraded."""
    status = plugin.status
    if status == PluginStatus.RUNNING:
        return PLUGIN_OK
    if status == PluginStatus.STOPPED:
        return PLUGIN_STOPPED
    if status == PluginStatus.STOPPING:
        return PLUGIN_STOPPING
    if status == PluginStatus.FAILED:
        why = plugin.live.detail
        return _short(f"{PLUGIN_FAILED}: {why}" if why else PLUGIN_FAILED)
    if status == PluginStatus.INVALID:
        err = plugin.entry.error
        reason = "invalid plugin.toml"
        if err is not None:
            where = f" line {err.line}" if err.line else ""
            reason = f"invalid plugin.toml{where}: {err.message}"
        return _short(reason)
    return PLUGIN_DEGRADED


def _short(reason: str) -> str:
    if len(reason) > PLUGIN_REASON_MAX:
        return reason[: PLUGIN_REASON_MAX - 1] + "\u2026"
    return reason

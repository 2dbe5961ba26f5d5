"""The OpenAPI 3 description of the whole HTTP API, served at ``GET /api/openapi.json``.

Kept as a Python dict rather than a YAML file so it ships with the package
without package data or a YAML parser at run time. It is not decoration: the
route-coverage test holds it equal to ``api.URL_MAP``, and the fuzz test
generates requests from it and validates every answer against it, so a route,
field or status that changes without this file changing fails the suite.
"""

from __future__ import annotations

import copy
from typing import Any

from hecated import __version__
from hecated.core.manifest import DESCRIPTION_MAX, VERSION_MAX
from hecated.core.unitfile import KINDS, UNIT_FILE_MAX
from hecated.http.forwarding.settings import PREFIX
from hecated.http.units import FOLLOW_STREAMS, LINES_MAX
from hecated.protocol import (
    BUSY_RETRY_AFTER,
    MAX_BODY,
    NAME_MAX,
    NAME_PATTERN,
    PLUGIN_DEGRADED,
    PLUGIN_FAILED,
    PLUGIN_OK,
    PLUGIN_STOPPED,
    PLUGIN_STOPPING,
    RETRY_AFTER_HEADER,
    SEQ_HEADER,
    SERVICE,
    SUN_PATH_MAX,
    UNIT_NAME_MAX,
    UNIT_PATTERN,
    Code,
    HealthStatus,
    PluginStatus,
)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _resp(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


SEQ_HEADERS = {
    SEQ_HEADER: {
        "description": "The registry's change sequence number when the answer was made.",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
}

RETRY_HEADERS = {
    RETRY_AFTER_HEADER: {
        "description": f"Seconds to wait before retrying ({BUSY_RETRY_AFTER}).",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    }
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "Every error, from a bad route to a full disk, has this shape: the "
        "Hecate ecosystem's envelope.",
        "required": ["ok", "error", "code"],
        "additionalProperties": False,
        "properties": {
            "ok": {"type": "boolean", "enum": [False]},
            "error": {"type": "string", "description": "What went wrong, for people."},
            "code": {
                "type": "string",
                "enum": [str(code) for code in Code],
                "description": "Stable machine-readable code, e.g. invalid_name, "
                "not_found, storage_error, forbidden, busy.",
            },
            # unit_failed only: what systemd said, and why, without a second request.
            "result": {
                "type": "string",
                "description": "unit_failed: systemd's job result (failed, timeout, ...).",
            },
            "state": _ref("Unit"),
            "logs": {"type": "array", "items": _ref("LogLine")},
            # invalid_unit_file only: where the unit file's first problem is.
            "line": {
                "type": ["integer", "null"],
                "description": "invalid_unit_file: the line of the first problem (null: the "
                "file as a whole, e.g. its size).",
            },
        },
    },
    "Name": {
        "type": "string",
        "pattern": NAME_PATTERN,
        "minLength": 1,
        "maxLength": NAME_MAX,
        "description": "Lowercase, hyphenated daemon name; its socket path must also fit "
        f"in a Unix socket address ({SUN_PATH_MAX} bytes).",
    },
    "Status": {
        "type": "string",
        "enum": [status.value for status in PluginStatus],
        "description": "running: sockets/api.sock answers GET /health with a 2xx; starting: "
        "run/daemon.pid names a live process whose socket does not answer (no socket file, "
        "nothing accepting, or not probed yet); unhealthy: the socket accepts but answers "
        "something else, garbage, or nothing within 2 s (see reason); stopped: no socket, or "
        "nothing accepts on it; invalid: plugin.toml is not a valid entry. Probed off the "
        "request path on socket events, process exits, edits, and every probe_interval "
        "seconds (default 10). With a systemd user unit (see unit), the user manager's word "
        "comes first, from its signals: failed: the unit failed (the reason in words); "
        "starting: activating (or active, the socket not answering yet); stopping: "
        "deactivating; stopped: inactive (unless the plugin answers anyway, started by "
        "hand). running still needs the socket's 2xx. No word from the manager (no unit "
        "file, the manager away): the probes alone.",
    },
    "Unit": {
        "type": ["object", "null"],
        "description": "The plugin's systemd user unit as the user manager last said "
        "(plugin.toml's unit, else {name}.service); null: no word from the manager (none "
        "reachable, not asked yet, or an invalid plugin.toml). load_state not-found: no "
        "unit file by that name.",
        "required": [
            "name",
            "load_state",
            "active_state",
            "sub_state",
            "result",
            "restarts",
            "since",
            "main_pid",
            "reason",
        ],
        "properties": {
            "name": {"type": "string", "pattern": UNIT_PATTERN, "maxLength": UNIT_NAME_MAX},
            "load_state": {"type": "string", "description": "loaded, not-found, masked..."},
            "active_state": {
                "type": "string",
                "description": "active, activating, deactivating, inactive, failed...",
            },
            "sub_state": {"type": "string", "description": "running, auto-restart, dead..."},
            "result": {"type": "string", "description": "systemd's word: success, exit-code..."},
            "restarts": {"type": "integer", "minimum": 0, "description": "NRestarts"},
            "since": {
                "type": ["number", "null"],
                "description": "The last state change, seconds since the epoch.",
            },
            "main_pid": {"type": ["integer", "null"]},
            "reason": {
                "type": ["string", "null"],
                "description": "The unit's story in words when it decides the status "
                '("exited with status 1; restarted 5 times; start limit hit").',
            },
        },
    },
    "Health": {
        "type": "object",
        "description": "The ecosystem's health shape (hecate-web, hecate-tui), then "
        "hecated's own extras.",
        "required": [
            "status",
            "ready",
            "service",
            "version",
            "uptime_seconds",
            "plugins",
            "plugin_count",
            "seq",
            "pid",
            "socket",
            "data_dir",
        ],
        "properties": {
            "status": {
                "type": "string",
                "enum": [str(s) for s in HealthStatus],
                "description": "healthy while serving; starting before, stopping after.",
            },
            "ready": {"type": "boolean", "description": "true exactly when healthy"},
            "service": {"type": "string", "enum": [SERVICE]},
            "version": {"type": "string"},
            "uptime_seconds": {"type": "integer", "minimum": 0},
            "plugins": {
                "type": "object",
                "description": f"name -> {PLUGIN_OK} (running), {PLUGIN_STOPPED} (stopped), "
                f"{PLUGIN_STOPPING} (stopping), {PLUGIN_DEGRADED} (unhealthy or starting: "
                "alive but not answering as it should), or a short reason (invalid: what is "
                f"wrong with plugin.toml; failed: '{PLUGIN_FAILED}: ' and the unit's story). "
                "Discovered plugins are included.",
                "additionalProperties": {"type": "string", "minLength": 1},
            },
            "plugin_count": {"type": "integer", "minimum": 0},
            "seq": {"type": "integer", "minimum": 0},
            "pid": {"type": "integer"},
            "socket": {"type": "string"},
            "data_dir": {"type": "string"},
        },
    },
    "RegisterRequest": {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": _ref("Name"),
            "version": {
                "type": "string",
                "maxLength": VERSION_MAX,
                "description": "Left out: the version of the plugin's own GET /manifest when "
                "it answers (a discovered plugin), else empty.",
            },
            "description": {
                "type": "string",
                "maxLength": DESCRIPTION_MAX,
                "description": "Left out: as version.",
            },
            "unit": {
                "type": ["string", "null"],
                "maxLength": UNIT_NAME_MAX,
                "pattern": UNIT_PATTERN,
                "description": "The systemd user unit that runs the plugin, written to its "
                "plugin.toml. Left out or null: plugin.toml's own unit is kept (none: "
                "{name}.service). Not a .service unit name: 400 invalid_field.",
            },
        },
    },
    "Registered": {
        "allOf": [
            _ref("Paths"),
            {
                "type": "object",
                "required": ["ok"],
                "properties": {"ok": {"type": "boolean", "enum": [True]}},
            },
        ]
    },
    "Paths": {
        "type": "object",
        "required": ["name", "base_dir", "paths"],
        "properties": {
            "name": _ref("Name"),
            "base_dir": {"type": "string"},
            "paths": {
                "type": "object",
                "required": ["sqlite", "reckon_db", "sockets", "run", "connectors"],
                "additionalProperties": {"type": "string"},
            },
        },
    },
    "PluginSummary": {
        "type": "object",
        "required": [
            "name",
            "version",
            "description",
            "socket",
            "status",
            "registered",
            "display_name",
            "icon",
            "tag",
            "ui",
            "problems",
            "unit",
            "installed",
            "desired",
        ],
        "properties": {
            "name": _ref("Name"),
            "version": {
                "type": ["string", "null"],
                "description": "From plugin.toml (null when invalid); for a discovered plugin, "
                "from its own GET /manifest.",
            },
            "description": {"type": ["string", "null"], "description": "as version"},
            "socket": {"type": "string"},
            "status": _ref("Status"),
            "registered": {
                "type": "boolean",
                "description": "false: discovered, a namespace with no plugin.toml whose socket "
                "answers; listed only while it does (a discovered plugin that stops is gone).",
            },
            "display_name": {
                "type": ["string", "null"],
                "description": "From the plugin's GET /manifest (its name when it has none); "
                "null until the plugin has answered. Live data, never written to plugin.toml.",
            },
            "icon": {"type": ["string", "null"], "description": "The manifest's icon (an emoji)."},
            "tag": {
                "type": ["string", "null"],
                "description": "The custom element the UI mounts (the manifest's tag).",
            },
            "ui": {
                "type": "boolean",
                "description": "GET /ui/component.js answered 2xx when the plugin became "
                "reachable; false also while it has not answered.",
            },
            "problems": {
                "type": "array",
                "items": {"type": "string"},
                "description": "Plain sentences: a manifest name that fits none of the "
                "namespace's conventions, missing fields, no /ui/component.js.",
            },
            "unit": _ref("Unit"),
            "installed": {
                "type": "boolean",
                "description": "A desired-state file in the gitops tree (gitops_dir, "
                "~/.hecate/gitops/{system,apps}/NAME.container or NAME.service) installs it: "
                "hecated links it into the user manager and lists the plugin, registered or "
                "not, answering or not.",
            },
            "desired": _ref("Desired"),
        },
    },
    "Desired": {
        "type": ["object", "null"],
        "description": "The plugin's desired-state file as the reconciler last found it; "
        "null: not installed.",
        "required": ["path", "kind", "unit", "linked", "problem"],
        "properties": {
            "path": {"type": "string", "description": "The file under the gitops tree."},
            "kind": {"type": "string", "enum": ["container", "service"]},
            "unit": {"type": "string", "description": "The unit it makes (NAME.service)."},
            "linked": {
                "type": "boolean",
                "description": "hecated's link to it is in place in the unit directory "
                "(~/.config/containers/systemd/ or ~/.config/systemd/user/).",
            },
            "problem": {
                "type": ["string", "null"],
                "description": "Why it cannot run here, in a sentence (Quadlet missing, a "
                "file in the way, no user manager); null: nothing known to be wrong.",
            },
        },
    },
    "PluginDetail": {
        "allOf": [
            _ref("PluginSummary"),
            _ref("Paths"),
            {
                "type": "object",
                "required": [
                    "manifest",
                    "registered_at",
                    "updated_at",
                    "pid",
                    "state",
                    "reason",
                    "error",
                ],
                "properties": {
                    "manifest": {
                        "type": ["string", "null"],
                        "description": "The plugin.toml path; null for a discovered plugin.",
                    },
                    "reason": {
                        "type": ["string", "null"],
                        "description": "Why the status is what it is (unhealthy, starting, "
                        "stopped; failed, stopping: the unit's story), when the probe or the "
                        "user manager said.",
                    },
                    "registered_at": {"type": ["string", "null"]},
                    "updated_at": {"type": ["string", "null"]},
                    "pid": {"type": ["integer", "null"]},
                    "state": {"type": ["string", "null"]},
                    "error": {
                        "oneOf": [
                            {"type": "null"},
                            {
                                "type": "object",
                                "required": ["file", "line", "message"],
                                "properties": {
                                    "file": {"type": "string"},
                                    "line": {"type": ["integer", "null"]},
                                    "message": {"type": "string"},
                                },
                            },
                        ],
                        "description": "Why plugin.toml is not a valid entry (status invalid).",
                    },
                },
            },
        ]
    },
    "PluginList": {"type": "array", "items": _ref("PluginSummary")},
    "Ok": {
        "type": "object",
        "required": ["ok"],
        "properties": {"ok": {"type": "boolean", "enum": [True]}},
    },
    "Purged": {
        "type": "object",
        "required": ["ok", "purged"],
        "properties": {"ok": {"type": "boolean", "enum": [True]}, "purged": {"type": "string"}},
    },
    # -- plugin units (issue 20) -----------------------------------------------------------
    "UnitControlled": {
        "type": "object",
        "required": ["ok", "unit", "state"],
        "properties": {
            "ok": {"type": "boolean", "enum": [True]},
            "unit": {"type": "string"},
            "state": _ref("Unit"),
        },
    },
    "LogLine": {
        "type": "object",
        "required": ["time", "message"],
        "properties": {
            "time": {"type": ["number", "null"], "description": "Seconds since the epoch."},
            "message": {"type": "string"},
            "pid": {"type": ["integer", "null"]},
            "identifier": {"type": ["string", "null"]},
            "priority": {"type": ["integer", "null"]},
        },
    },
    "Logs": {
        "type": "object",
        "required": ["ok", "unit", "lines"],
        "properties": {
            "ok": {"type": "boolean", "enum": [True]},
            "unit": {"type": "string"},
            "lines": {"type": "array", "items": _ref("LogLine")},
        },
    },
    # -- installing plugins as unit files (issue 21) ---------------------------------------
    "InstallRequest": {
        "oneOf": [
            {
                "type": "object",
                "required": ["unit", "kind", "name"],
                "additionalProperties": False,
                "properties": {
                    "unit": {
                        "type": "string",
                        "description": f"The unit file's text (at most {UNIT_FILE_MAX} bytes "
                        "as UTF-8).",
                    },
                    "kind": {"type": "string", "enum": list(KINDS)},
                    "name": _ref("Name"),
                    "replace": {"type": "boolean", "default": False},
                },
            },
            {
                "type": "object",
                "required": ["path"],
                "additionalProperties": False,
                "properties": {
                    "path": {
                        "type": "string",
                        "description": "An absolute path to NAME.service or NAME.container, "
                        "read by hecated as its user: a regular file, not a symlink.",
                    },
                    "replace": {"type": "boolean", "default": False},
                },
            },
        ]
    },
    "InstallResult": {
        "type": "object",
        "required": ["ok", "name", "kind", "unit", "path", "replaced", "verified"],
        "properties": {
            "ok": {"type": "boolean", "enum": [True]},
            "name": _ref("Name"),
            "kind": {"type": "string", "enum": list(KINDS)},
            "unit": {"type": "string", "description": "The unit it runs as: NAME.service."},
            "path": {"type": "string", "description": "The file written, in gitops/apps/."},
            "replaced": {
                "type": "array",
                "items": {"type": "string"},
                "description": "The files of the plugin that were there before (replace).",
            },
            "verified": {
                "type": ["string", "null"],
                "description": "What verified it besides hecated's own check "
                "(systemd-analyze), or null (not installed here; a .container).",
            },
        },
    },
    "Uninstalled": {
        "type": "object",
        "required": ["ok", "name", "unit", "stopped", "state", "removed"],
        "properties": {
            "ok": {"type": "boolean", "enum": [True]},
            "name": _ref("Name"),
            "unit": {"type": "string"},
            "stopped": {
                "type": "boolean",
                "description": "A stop job ran (false: the manager had no such unit, or "
                "none could be reached; the reconciler stops it when it sees the file gone).",
            },
            "state": _ref("Unit"),
            "removed": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Rescanned": {
        "type": "object",
        "required": ["ok", "plugins"],
        "properties": {
            "ok": {"type": "boolean", "enum": [True]},
            "plugins": {"type": "integer", "minimum": 0},
        },
    },
}


def _error(description: str, headers: dict | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if headers:
        out["headers"] = headers
    return out


RESPONSES: dict[str, Any] = {
    "BadRequest": _error(
        "Invalid name, field, JSON or body shape; a path with a '.' or '..' segment."
    ),
    "Forbidden": _error("The peer is not the user who owns the daemon (SO_PEERCRED)."),
    "NotFound": _error("No such plugin or endpoint."),
    "MethodNotAllowed": _error("The method is not allowed on this path."),
    "Conflict": _error(
        "The tree refuses the operation: a symlink or non-directory in the way "
        "(unsafe_path), still registered or installed (still_registered: a desired-state "
        "file in the gitops tree installs it), or the plugin is running."
    ),
    "TooLarge": _error(f"The request body is over {MAX_BODY // 1024} KiB."),
    "UnsupportedMediaType": _error("The body is not sent as application/json."),
    "Storage": _error("The disk refused the write (full, read-only, permissions)."),
    "Busy": _error(
        "Too many long polls already wait; retry after the Retry-After seconds.", RETRY_HEADERS
    ),
    "ForwardBusy": _error(
        "As many forwarded requests are open as hecated serves at once (forward_streams, "
        "default 256); retry after the Retry-After seconds.",
        RETRY_HEADERS,
    ),
    "ForwardTooLarge": _error(
        "The request body is over the forwarding limit (forward_body_limit, default 16 MiB)."
    ),
    "PluginUnreachable": _error(
        "plugin_unreachable: the plugin has no socket, nothing accepts on it (a stale "
        "socket file), its socket is not a socket inside its namespace (a symlink), it "
        "closed the connection before answering, or its answer cannot be relayed as it came "
        "(conflicting framing, 101 or another interim status, a folded header, a control "
        "character in the status line). Or unit_failed: the plugin was not running, and its "
        "unit, started for this request, failed or ended (result, state and its last lines)."
    ),
    "NoUnit": _error(
        "no_unit: the user manager has no unit file for the plugin's unit (its plugin.toml's "
        "unit, else NAME.service); the message says how to install or name one."
    ),
    "UnitFailed": _error(
        "unit_failed: the job did not end done (or not within unit_job_timeout, default "
        "30 s); result, the unit's state and the plugin's last log lines are in the body."
    ),
    "SystemdUnavailable": _error(
        "systemd_unavailable: no systemd user manager can be reached (no session bus, none "
        "on it, not ours); the registry keeps working."
    ),
    "LogsUnavailable": _error(
        "systemd_unavailable: the journal cannot be read (no systemd-python, no journal); "
        f"or busy: as many followed logs are open as hecated serves ({FOLLOW_STREAMS}), "
        "retry after the Retry-After seconds.",
        {RETRY_AFTER_HEADER: {**RETRY_HEADERS[RETRY_AFTER_HEADER], "required": False}},
    ),
    "InstallConflict": _error(
        "already_installed: the plugin has a file in gitops/apps/ already (send replace: "
        "true); unsafe_path: apps/ is a symlink or not a directory, or the path is a symlink."
    ),
    "UninstallConflict": _error(
        "still_registered: the plugin is installed by gitops/system/NAME.kind, which "
        "hecated does not write; remove it from the tree. unsafe_path: apps/ is a symlink "
        "or not a directory, or its file there is a directory."
    ),
    "InvalidUnitFile": _error(
        "invalid_unit_file (the line of the first problem in line and the message), or an "
        "invalid name, field, JSON or body shape; nothing was written."
    ),
    "EventsBusy": _error(
        "busy: as many event streams are open as hecated serves (events_clients, default "
        "16); retry after the Retry-After seconds.",
        RETRY_HEADERS,
    ),
    "PluginTimeout": _error(
        "plugin_timeout: the plugin sent no first byte within forward_timeout (default 30 s)."
    ),
}

COMMON_ERRORS = {
    "403": _resp("Forbidden"),
    "405": _resp("MethodNotAllowed"),
}

NAME_PARAM = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": _ref("Name"),
}


def _json(schema: dict[str, Any], description: str, headers: dict | None = None) -> dict:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if headers:
        out["headers"] = headers
    return out


def _op(op_id: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "operationId": op_id,
        "summary": summary,
        "responses": {**responses, **COMMON_ERRORS},
        **extra,
    }


_health = _op(
    "health",
    "Is the daemon serving (status, ready), and how is each plugin",
    {"200": _json(_ref("Health"), "The daemon's health")},
)

PATHS: dict[str, Any] = {
    "/health": {"get": _health},
    "/api/health": {"get": {**_health, "operationId": "api_health"}},
    "/api/openapi.json": {
        "get": _op(
            "openapi",
            "This document",
            {"200": _json({"type": "object", "required": ["openapi", "paths"]}, "The spec")},
        )
    },
    "/api/plugins": {
        "get": _op(
            "list_plugins",
            "List registered plugins; with since, long-poll for a change",
            {
                "200": _json(_ref("PluginList"), "The plugins, sorted by name", SEQ_HEADERS),
                "400": _resp("BadRequest"),
                "503": _resp("Busy"),
            },
            parameters=[
                {
                    "name": "since",
                    "in": "query",
                    "required": False,
                    "description": "Answer as soon as the registry's seq is greater than this.",
                    "schema": {"type": "integer", "minimum": 0},
                },
                {
                    "name": "wait",
                    "in": "query",
                    "required": False,
                    "description": "Long-poll: wait at most this many seconds (capped at 60) "
                    "for seq to pass since, or without since for the next change.",
                    "schema": {"type": "number", "minimum": 0},
                },
            ],
        )
    },
    "/api/plugins/register": {
        "post": _op(
            "register",
            "Register (or re-register) a plugin daemon and create its namespace",
            {
                "200": _json(_ref("Registered"), "Re-registered: the entry was updated"),
                "201": _json(_ref("Registered"), "Registered: a new entry"),
                "400": _resp("BadRequest"),
                "409": _resp("Conflict"),
                "413": _resp("TooLarge"),
                "415": _resp("UnsupportedMediaType"),
                "507": _resp("Storage"),
            },
            requestBody={
                "required": True,
                "content": {"application/json": {"schema": _ref("RegisterRequest")}},
            },
        )
    },
    "/api/plugins/{name}": {
        "parameters": [NAME_PARAM],
        "get": _op(
            "get_plugin",
            "One plugin, with its paths, timestamps, liveness and any file error",
            {
                "200": _json(_ref("PluginDetail"), "The plugin"),
                "400": _resp("BadRequest"),
                "404": _resp("NotFound"),
            },
        ),
        "delete": _op(
            "deregister",
            "Deregister: remove plugin.toml only; the data directories stay",
            {
                "200": _json(_ref("Ok"), "Deregistered"),
                "400": _resp("BadRequest"),
                "404": _resp("NotFound"),
                "409": _resp("Conflict"),
                "507": _resp("Storage"),
            },
        ),
    },
    "/api/plugins/{name}/purge": {
        "parameters": [NAME_PARAM],
        "post": _op(
            "purge",
            "Delete a deregistered, stopped plugin's namespace and all its data",
            {
                "200": _json(_ref("Purged"), "Purged"),
                "400": _resp("BadRequest"),
                "404": _resp("NotFound"),
                "409": _resp("Conflict"),
                "507": _resp("Storage"),
            },
        ),
    },
    **{
        f"/api/plugins/{{name}}/{verb}": {
            "parameters": [NAME_PARAM],
            "post": _op(
                verb,
                f"{summary}; the answer waits for the job (unit_job_timeout, default 30 s)",
                {
                    "200": _json(_ref("UnitControlled"), "The job ended done: the unit's state"),
                    "400": _resp("BadRequest"),
                    "404": _resp("NotFound"),
                    "409": _resp("NoUnit"),
                    "502": _resp("UnitFailed"),
                    "503": _resp("SystemdUnavailable"),
                },
            ),
        }
        for verb, summary in (
            ("start", "Start the plugin's systemd user unit (a failed state cleared first)"),
            ("stop", "Stop the plugin's systemd user unit"),
            ("restart", "Restart the plugin's systemd user unit (a failed state cleared first)"),
        )
    },
    "/api/plugins/{name}/logs": {
        "parameters": [NAME_PARAM],
        "get": _op(
            "logs",
            "The plugin's unit's journal lines; with follow, then each new one (SSE)",
            {
                "200": {
                    "description": "The last lines, oldest first. With follow=1: "
                    "text/event-stream, the last lines and then each new one as it is written, "
                    "each a `data:` event holding one LogLine as JSON; a comment line every "
                    "15 s of silence; it ends when the client goes or the daemon stops.",
                    "content": {
                        "application/json": {"schema": _ref("Logs")},
                        "text/event-stream": {"schema": {"type": "string"}},
                    },
                },
                "400": _resp("BadRequest"),
                "404": _resp("NotFound"),
                "503": _resp("LogsUnavailable"),
            },
            parameters=[
                {
                    "name": "lines",
                    "in": "query",
                    "required": False,
                    "description": "How many of the last lines (default 100; more than "
                    f"{LINES_MAX} reads {LINES_MAX}).",
                    "schema": {"type": "integer", "minimum": 0},
                },
                {
                    "name": "follow",
                    "in": "query",
                    "required": False,
                    "description": "1: stream the lines and each new one as server-sent events.",
                    "schema": {"type": "string", "enum": ["1", "0", "true", "false", "yes", "no"]},
                },
            ],
        ),
    },
    f"{PREFIX}{{name}}/{{rest}}": {
        "parameters": [
            {
                "name": "name",
                "in": "path",
                "required": True,
                "description": "The registry name (hecate-app-traderd); when no plugin or "
                "namespace has it, hecate-app-{name}d, then hecate-{name}d.",
                "schema": _ref("Name"),
            },
            {
                "name": "rest",
                "in": "path",
                "required": True,
                "description": "Forwarded as /{rest} with the query string.",
                "schema": {"type": "string", "minLength": 1},
            },
        ],
        **{
            method: _op(
                f"forward_{method}",
                "Forward to the plugin's own socket, ~/.hecate/NAME/sockets/api.sock",
                {
                    "200": {
                        "description": "The plugin's own answer (any status), streamed as it "
                        "comes: method, body and end-to-end headers are forwarded, hop-by-hop "
                        "ones dropped, Host is localhost and X-Hecate-Peer-Pid / "
                        "X-Hecate-Peer-Uid carry the caller's credentials. A plugin that dies "
                        "mid-answer ends the stream (the connection closes); a stream that "
                        "carries nothing for forward_idle_timeout (300 s) is ended.",
                        "content": {"*/*": {}},
                    },
                    "400": _resp("BadRequest"),
                    "404": _resp("NotFound"),
                    "413": _resp("ForwardTooLarge"),
                    "502": _resp("PluginUnreachable"),
                    "503": _resp("ForwardBusy"),
                    "504": _resp("PluginTimeout"),
                },
            )
            for method in ("get", "post", "put", "patch", "delete")
        },
    },
    "/api/plugins/install": {
        "post": _op(
            "install",
            "Install a plugin: check its unit file, then write it into gitops/apps/ (the "
            "reconciler links, reloads and starts it)",
            {
                "200": _json(_ref("InstallResult"), "Replaced (replace: true)"),
                "201": _json(_ref("InstallResult"), "Installed"),
                "400": _resp("InvalidUnitFile"),
                "409": _resp("InstallConflict"),
                "413": _resp("TooLarge"),
                "415": _resp("UnsupportedMediaType"),
                "507": _resp("Storage"),
            },
            requestBody={
                "required": True,
                "content": {"application/json": {"schema": _ref("InstallRequest")}},
            },
        )
    },
    "/api/plugins/{name}/uninstall": {
        "parameters": [NAME_PARAM],
        "post": _op(
            "uninstall",
            "Uninstall a plugin: stop its unit and remove its file from gitops/apps/; "
            "its data and registration stay",
            {
                "200": _json(_ref("Uninstalled"), "Uninstalled"),
                "400": _resp("BadRequest"),
                "404": _resp("NotFound"),
                "409": _resp("UninstallConflict"),
                "502": _resp("UnitFailed"),
                "507": _resp("Storage"),
            },
        ),
    },
    # The change feed as server-sent events (http/events.py).
    "/api/events": {
        "get": _op(
            "events",
            "Every change of the registry as a server-sent event, as it happens",
            {
                "200": {
                    "description": "text/event-stream. Each change is one event: `id:` "
                    "RUN-SEQ, the daemon's run (a token fixed at its start) and the registry's "
                    "seq (one event per seq, no gap), `event:` its kind (registered, "
                    "deregistered, installed, removed, discovered, gone, status, unit, updated), "
                    "`data:` the plugin's entry as the list shows it (a name the change took "
                    "out of the list: its last entry with listed: false). A resumed stream "
                    "that cannot be given what it missed (older than events_backlog, or from "
                    "another run) first gets one `resync` event, data {seq, plugins: the "
                    "list}. A comment line every events_heartbeat (15 s) of silence; it ends "
                    "when the client goes or the daemon stops.",
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                "400": _resp("BadRequest"),
                "503": _resp("EventsBusy"),
            },
            parameters=[
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "description": "Resume after this event id, RUN-SEQ (an EventSource "
                    "sends it itself). An id of another run of the daemon (its seq starts "
                    "again at each run), or a plain number: a resync first.",
                    "schema": {"type": "string", "pattern": "^[0-9a-z]{1,16}-[0-9]{1,19}$"},
                },
                {
                    "name": "since",
                    "in": "query",
                    "required": False,
                    "description": "Resume after this event id, RUN-SEQ, or after this seq of "
                    "the daemon's current run (a plain number, as GET /api/plugins gives "
                    "it); for clients that cannot set the header; the header wins. "
                    "Neither: from now.",
                    "schema": {"type": "string", "pattern": "^([0-9a-z]{1,16}-)?[0-9]{1,19}$"},
                },
            ],
        )
    },
    "/api/rescan": {
        "post": _op(
            "rescan",
            "Rebuild the index from the tree",
            {"200": _json(_ref("Rescanned"), "Rescanned", SEQ_HEADERS)},
        )
    },
}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "hecated",
        "version": __version__,
        "description": "The primary Hecate daemon's API, served over the Unix socket "
        "~/.hecate/hecate-daemon/sockets/api.sock (never TCP). Only the user who owns "
        "the daemon may use it. Every error is {ok: false, error: <message>, code: <code>} "
        "with a 4xx (507 for a full disk, 503 when busy); never a 5xx for bad input. "
        "Successful writes carry ok: true.",
    },
    "servers": [{"url": "http://localhost", "description": "over the Unix socket"}],
    "paths": PATHS,
    "components": {"schemas": SCHEMAS, "responses": RESPONSES},
}


def spec() -> dict[str, Any]:
    """A fresh copy, so no caller can alter what the next one is served."""
    return copy.deepcopy(SPEC)

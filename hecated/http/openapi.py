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

NAME_PATTERN = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _resp(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


SEQ_HEADER = {
    "X-Hecate-Seq": {
        "description": "The registry's change sequence number when the answer was made.",
        "schema": {"type": "integer", "minimum": 0},
    }
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "description": "Every error, from a bad route to a full disk, has this shape.",
        "required": ["error"],
        "additionalProperties": False,
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "additionalProperties": False,
                "properties": {
                    "code": {
                        "type": "string",
                        "pattern": "^[a-z][a-z_]*$",
                        "description": "Stable machine-readable code, e.g. invalid_name, "
                        "not_found, storage_error, forbidden, busy.",
                    },
                    "message": {"type": "string"},
                },
            }
        },
    },
    "Name": {
        "type": "string",
        "pattern": NAME_PATTERN,
        "minLength": 1,
        "maxLength": 64,
        "description": "Lowercase, hyphenated daemon name; its socket path must also fit "
        "in a Unix socket address (107 bytes).",
    },
    "Status": {"type": "string", "enum": ["running", "stopped", "invalid"]},
    "Health": {
        "type": "object",
        "required": ["status", "version", "pid", "plugins"],
        "properties": {
            "status": {"type": "string", "enum": ["ok"]},
            "version": {"type": "string"},
            "pid": {"type": "integer"},
            "plugins": {"type": "integer", "minimum": 0},
            "seq": {"type": "integer", "minimum": 0},
            "uptime_seconds": {"type": "number", "minimum": 0},
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
            "version": {"type": "string", "maxLength": 64},
            "description": {"type": "string", "maxLength": 1024},
        },
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
        "required": ["name", "version", "description", "socket", "status"],
        "properties": {
            "name": _ref("Name"),
            "version": {"type": ["string", "null"], "description": "null when invalid"},
            "description": {"type": ["string", "null"], "description": "null when invalid"},
            "socket": {"type": "string"},
            "status": _ref("Status"),
        },
    },
    "PluginDetail": {
        "allOf": [
            _ref("PluginSummary"),
            _ref("Paths"),
            {
                "type": "object",
                "required": ["manifest", "registered_at", "updated_at", "pid", "state", "error"],
                "properties": {
                    "manifest": {"type": "string"},
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
    "Rescanned": {
        "type": "object",
        "required": ["ok", "plugins"],
        "properties": {
            "ok": {"type": "boolean", "enum": [True]},
            "plugins": {"type": "integer", "minimum": 0},
        },
    },
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error")}},
    }


RESPONSES: dict[str, Any] = {
    "BadRequest": _error("Invalid name, field, JSON or body shape."),
    "Forbidden": _error("The peer is not the user who owns the daemon (SO_PEERCRED)."),
    "NotFound": _error("No such plugin or endpoint."),
    "MethodNotAllowed": _error("The method is not allowed on this path."),
    "Conflict": _error(
        "The tree refuses the operation: a symlink or non-directory in the way "
        "(unsafe_path), still registered, or the plugin is running."
    ),
    "TooLarge": _error("The request body is over 64 KiB."),
    "UnsupportedMediaType": _error("The body is not sent as application/json."),
    "Storage": _error("The disk refused the write (full, read-only, permissions)."),
    "Busy": _error("Every worker is busy; retry after the Retry-After seconds."),
}

COMMON_ERRORS = {
    "403": _resp("Forbidden"),
    "405": _resp("MethodNotAllowed"),
    "503": _resp("Busy"),
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


_health = _op("health", "Liveness and counters", {"200": _json(_ref("Health"), "Healthy")})

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
                "200": _json(_ref("PluginList"), "The plugins, sorted by name", SEQ_HEADER),
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
                "200": _json(_ref("Paths"), "Re-registered: the entry was updated"),
                "201": _json(_ref("Paths"), "Registered: a new entry"),
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
    "/api/rescan": {
        "post": _op(
            "rescan",
            "Rebuild the index from the tree",
            {"200": _json(_ref("Rescanned"), "Rescanned", SEQ_HEADER)},
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
        "the daemon may use it. Every error is {error: {code, message}} with a 4xx "
        "(507 for a full disk, 503 when busy); never a 5xx for bad input.",
    },
    "servers": [{"url": "http://localhost", "description": "over the Unix socket"}],
    "paths": PATHS,
    "components": {"schemas": SCHEMAS, "responses": RESPONSES},
}


def spec() -> dict[str, Any]:
    """A fresh copy, so no caller can alter what the next one is served."""
    return copy.deepcopy(SPEC)

"""A forwarded request skips Werkzeug's routing (issue 22); the cut it makes instead
(``app.forward_parts``) must be the router's own, path for path, or a request would
reach another plugin path than the one the router would have routed it to."""

from __future__ import annotations

import pytest

from hecated.http.app import FORWARD_METHODS, URL_MAP, forward_parts

PATHS = [
    "/plugin/x/a",
    "/plugin/x/a/",
    "/plugin/x/",
    "/plugin/x//a",
    "/plugin/x/a//b",
    "/plugin/x",
    "/plugin/",
    "/plugin//x/a",
    "/plugin/x/a/b/c/",
    "/plugin/hecate-app-benchd/manifest",
    "/plugin/\xc3\xa9/a",  # WSGI's latin-1 string of UTF-8 bytes
    "/plugin/x/\xc3\xa9t\xc3\xa9",
    "/plugin/x/\xff",  # not UTF-8: replaced, as Werkzeug does
    "/plugin/x/%2F",
    "/plugin/x/ a",
    "/plugin/x/a?b",
    "/plugin/a b/c",
    "/plugins/x/a",
    "/api/plugins/x",
]


def routed(path: str, method: str) -> tuple[str, str] | None:
    environ = {
        "PATH_INFO": path,
        "REQUEST_METHOD": method,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "0",
        "SCRIPT_NAME": "",
        "wsgi.url_scheme": "http",
    }
    try:
        endpoint, args = URL_MAP.bind_to_environ(environ).match()
    except Exception:  # 404, 405: not forwarded
        return None
    return (args["name"], args["rest"]) if endpoint == "forward" else None


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", ["GET", "POST", "TRACE", "CONNECT"])
def test_the_forwarded_cut_is_the_routers(path: str, method: str) -> None:
    environ = {"PATH_INFO": path, "REQUEST_METHOD": method, "SCRIPT_NAME": ""}
    assert forward_parts(environ) == routed(path, method)


def test_every_forwarded_method_is_cut() -> None:
    for method in FORWARD_METHODS:
        assert forward_parts({"PATH_INFO": "/plugin/x/a", "REQUEST_METHOD": method}) == ("x", "a")

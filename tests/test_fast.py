"""The fast path (http/fast.py) answers exactly what the full app would, and lets Werkzeug wait.

Every route it answers is compared with the full app's answer to the same
request (status, headers in order, body); every request it must not answer
(404, 403, long polls, odd paths) is shown to reach the full app. The cold
start is checked on a real daemon: the first answers leave before Werkzeug is
imported, which then happens on the after-first-answer thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemon, UnixHTTPConnection, http_request, wait_for
from spy_support import release, spied_daemon
from watch_support import manifest_text
from werkzeug.test import EnvironBuilder

from hecated.adapters.liveness import Prober
from hecated.core.index import Index
from hecated.core.layout import Layout
from hecated.http.app import HecateApp
from hecated.http.fast import FastPath
from hecated.http.views import BIG_BODY, Views
from hecated.protocol import PEER_ENVIRON_KEY, Peer

ME = Peer(os.getpid(), os.getuid(), os.getgid())
STRANGER = Peer(1, os.getuid() + 4242, 4242)

Answer = tuple[str, list[tuple[str, str]], bytes]


class Front:
    """A FastPath over the same Views as a full app, counting what reached the full app."""

    def __init__(self, registry: Index) -> None:
        self.views = Views(registry, clock=lambda: 100.0)  # one uptime for both paths
        self.full = HecateApp(registry, views=self.views)
        self.loads = 0
        self.reached_full = 0

        def counting(environ: dict, start_response: Callable) -> Iterable[bytes]:
            self.reached_full += 1
            return self.full(environ, start_response)

        def load() -> Callable:
            self.loads += 1
            return counting

        self.fast = FastPath(self.views, load)


def call(app: Callable, method: str, path: str, peer: Peer | None = ME, **kw: Any) -> Answer:
    """One request through a WSGI app, the way waitress hands it over (a file_wrapper too)."""
    environ = EnvironBuilder(path=path, method=method, **kw).get_environ()
    environ["wsgi.file_wrapper"] = FileWrapper
    if peer is not None:
        environ[PEER_ENVIRON_KEY] = peer
    seen: list[tuple[str, list[tuple[str, str]]]] = []
    chunks = app(environ, lambda status, headers, exc_info=None: seen.append((status, headers)))
    try:
        body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    (status, headers) = seen[0]
    return status, list(headers), body


class FileWrapper:
    """PEP 3333's optional file wrapper, as a server provides it: iterates over a file."""

    def __init__(self, filelike: Any, block_size: int = 8192) -> None:
        self.filelike = filelike
        self.block_size = block_size

    def __iter__(self) -> Iterable[bytes]:
        return iter(lambda: self.filelike.read(self.block_size), b"")

    def close(self) -> None:
        self.filelike.close()


@pytest.fixture
def registry(home: Path) -> Index:
    layout = Layout.at(home / ".hecate")
    layout.ensure_layout()
    registry = Index(layout)
    Prober(registry)
    registry.scan()
    registry.register("alpha", "1.0", "the first")
    registry.register("beta-two", "2.0", "déjà vu ✓")  # non-ASCII: the bytes must agree
    broken = layout.root / "broken"
    broken.mkdir()
    (broken / "plugin.toml").write_text('name = "broken"\n\nversion = [\n')
    registry.scan()
    return registry


@pytest.fixture
def front(registry: Index) -> Front:
    return Front(registry)


HITS = [
    ("GET", "/api/plugins"),
    ("HEAD", "/api/plugins"),
    ("GET", "/api/plugins/alpha"),
    ("HEAD", "/api/plugins/alpha"),
    ("GET", "/api/plugins/beta-two"),
    ("GET", "/api/plugins/broken"),
    ("GET", "/health"),
    ("GET", "/api/health"),
    ("HEAD", "/health"),
]


@pytest.mark.parametrize(("method", "path"), HITS)
def test_a_hit_is_the_full_apps_answer_byte_for_byte(front: Front, method: str, path: str) -> None:
    fast = call(front.fast, method, path)
    assert front.reached_full == 0, "the fast path did not answer it"
    assert front.loads == 0, "a hot GET built the full app"
    full = call(front.full, method, path)
    assert fast == full
    assert fast[0] == "200 OK"
    assert (fast[2] == b"") == (method == "HEAD")
    names = [k for k, _ in fast[1]]
    assert "Content-Type" in names and "Content-Length" in names


def test_the_list_carries_the_seq_and_follows_changes(front: Front, registry: Index) -> None:
    _, headers, body = call(front.fast, "GET", "/api/plugins")
    assert dict(headers)["X-Hecate-Seq"] == str(registry.seq)
    registry.register("gamma", "3.0", "new")
    after = call(front.fast, "GET", "/api/plugins")
    assert dict(after[1])["X-Hecate-Seq"] == str(registry.seq) != dict(headers)["X-Hecate-Seq"]
    assert b'"gamma"' in after[2] and b'"gamma"' not in body
    assert after == call(front.full, "GET", "/api/plugins")
    assert front.reached_full == 0


def test_the_detail_follows_changes_of_its_plugin(front: Front, registry: Index) -> None:
    first = call(front.fast, "GET", "/api/plugins/alpha")
    registry.register("alpha", "1.1", "changed")
    second = call(front.fast, "GET", "/api/plugins/alpha")
    assert b'"1.1"' in second[2] and b'"1.1"' not in first[2]
    assert second == call(front.full, "GET", "/api/plugins/alpha")
    registry.deregister("alpha")
    gone = call(front.fast, "GET", "/api/plugins/alpha")
    assert gone[0].startswith("404")  # answered by the full app: the fast path has no hit
    assert front.reached_full == 1


def test_a_big_list_goes_out_through_the_file_wrapper_like_the_app(
    front: Front, registry: Index
) -> None:
    for i in range(BIG_BODY // 150 + 1):
        registry.register(f"p{i:04d}", "1.0", "x" * 40)
    fast = call(front.fast, "GET", "/api/plugins")
    assert len(fast[2]) >= BIG_BODY
    assert fast == call(front.full, "GET", "/api/plugins")
    assert front.reached_full == 0


MISSES: list[tuple[str, str, dict[str, Any]]] = [
    ("GET", "/api/plugins/nobody", {}),  # 404
    ("GET", "/api/plugins/hecate-daemon", {}),  # the primary's own name: 400
    ("GET", "/api/plugins/Not_A_Name", {}),  # 400
    ("GET", "/api/plugins/register", {}),  # a static route's name
    ("GET", "/api/plugins", {"query_string": "since=0&wait=0"}),  # a (non-blocking) long poll
    ("GET", "/api/plugins", {"query_string": "wait=abc"}),  # 400
    ("GET", "/api/plugins/", {}),  # strict_slashes=False: the full app's routing decides
    ("GET", "/api/plugins/alpha/", {}),
    ("GET", "/api/plugins/alpha", {"query_string": "x=1"}),
    ("GET", "/health/", {}),
    ("POST", "/api/plugins", {}),  # 405
    ("DELETE", "/api/plugins/nobody", {}),  # 404 of a write
    ("GET", "/api/openapi.json", {}),
    ("GET", "/nowhere", {}),
]


@pytest.mark.parametrize(("method", "path", "kw"), MISSES)
def test_anything_else_reaches_the_full_app(
    front: Front, method: str, path: str, kw: dict[str, Any]
) -> None:
    answer = call(front.fast, method, path, **kw)
    assert front.reached_full == 1
    assert answer == call(front.full, method, path, **kw)


@pytest.mark.parametrize("path", ["/api/plugins", "/api/plugins/alpha", "/health"])
@pytest.mark.parametrize("peer", [STRANGER, None], ids=["other-uid", "no-credentials"])
def test_another_uid_gets_the_full_apps_403(front: Front, path: str, peer: Peer | None) -> None:
    answer = call(front.fast, "GET", path, peer=peer)
    assert front.reached_full == 1
    assert answer[0] == "403 FORBIDDEN"
    assert b'"code":"forbidden"' in answer[2]
    assert answer == call(front.full, "GET", path, peer=peer)


def test_the_phase_is_shared_by_both_paths(front: Front) -> None:
    front.fast.set_status("healthy")
    assert front.full.phase == "healthy"
    assert b'"ready":true' in call(front.fast, "GET", "/health")[2]
    assert call(front.fast, "GET", "/health") == call(front.full, "GET", "/health")


def test_two_first_requests_at_once_build_the_full_app_once(registry: Index) -> None:
    views = Views(registry)
    entered = threading.Event()
    second_entered = threading.Event()
    loads: list[str] = []

    def load() -> Callable:
        loads.append(threading.current_thread().name)
        if len(loads) == 1:
            entered.set()
            # Proving an absence needs a bound: without the lock the second thread
            # enters here while the first is still building, and the test fails.
            second_entered.wait(2.0)
        else:
            second_entered.set()
        return HecateApp(registry, views=views)

    fast = FastPath(views, load)
    answers: dict[str, Answer] = {}

    def first() -> None:
        answers["first"] = call(fast, "GET", "/api/openapi.json")

    def second() -> None:
        answers["second"] = call(fast, "GET", "/api/plugins/nobody")

    t1 = threading.Thread(target=first, name="first")
    t1.start()
    assert entered.wait(10)
    t2 = threading.Thread(target=second, name="second")
    t2.start()
    t1.join(10)
    t2.join(10)
    assert loads == ["first"]
    assert answers["first"][0] == "200 OK"
    assert answers["second"][0] == "404 NOT FOUND"
    assert fast.loaded


def test_a_failing_fast_path_leaves_the_answer_to_the_full_app(front: Front) -> None:
    """A bug or a failure under the fast path is the full app's to answer (its 500, its log)."""

    def broken() -> tuple[int, bytes]:
        raise OSError("disk on fire")

    front.views.encoded_list = broken  # type: ignore[method-assign]
    answer = call(front.fast, "GET", "/api/plugins")
    assert front.reached_full == 1
    assert answer[0] == "500 INTERNAL SERVER ERROR"
    assert b'"code":"internal_error"' in answer[2]


# -- cold start, on a real daemon -------------------------------------------------------------

# Loaded through PYTHONPATH before hecated. It notes which thread first imports Werkzeug
# and holds that import on the after-first-answer thread until the test opens the FIFO,
# so "the first answers need no Werkzeug" does not depend on which thread runs first.
# find_spec returns None: the normal import goes on.
SPY = """\
import os, sys, threading

class _Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "werkzeug":
            thread = threading.current_thread().name
            with open(os.environ["HECATE_TEST_SPY"], "a") as out:
                out.write(thread + "\\n")
            if thread == "hecated-deferred":
                with open(os.environ["HECATE_TEST_HOLD"], "rb"):
                    pass  # opening a FIFO to read waits for its writer
        return None

sys.meta_path.insert(0, _Spy())
"""


def _spied_daemon(home: Path) -> tuple[Daemon, Path, Path]:
    return spied_daemon(home, SPY, "werkzeug-imported-by")


def _first_request(daemon: Daemon, method: str, path: str, body: Any = None) -> Any:
    """The daemon's first request, sent as soon as its socket accepts."""
    assert daemon.proc is None
    daemon.start(wait=False)

    def answered() -> Any:
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()
        try:
            return daemon.request(method, path, body)
        except OSError:
            return None

    return wait_for(answered, timeout=15)


@pytest.mark.parametrize("path", ["/health", "/api/plugins"])
def test_the_first_answers_leave_before_werkzeug_is_imported(home: Path, path: str) -> None:
    daemon, spy, hold = _spied_daemon(home)
    (home / ".hecate" / "gamma").mkdir(parents=True)
    (home / ".hecate" / "gamma" / "plugin.toml").write_text(manifest_text("gamma", "3.0"))
    try:
        assert _first_request(daemon, "GET", path)[0] == 200
        assert daemon.request("GET", "/api/plugins")[2][0]["name"] == "gamma"
        assert daemon.request("GET", "/api/plugins/gamma")[2]["version"] == "3.0"
        assert daemon.request("GET", "/api/health")[2]["plugins"] == {"gamma": "stopped"}
        # No worker imported Werkzeug to answer those; at most the deferred thread began to.
        imported_by = spy.read_text().split() if spy.exists() else []
        assert imported_by in ([], ["hecated-deferred"])
        release(hold)
        assert spy.read_text().split() == ["hecated-deferred"]
        status, _, body = daemon.register("late-one")
        assert status == 201, body
        assert daemon.request("GET", "/api/plugins/late-one")[0] == 200
        assert "Traceback" not in daemon.log()
    finally:
        assert daemon.stop() == 0


def test_a_first_request_the_fast_path_cannot_answer_builds_the_full_app(home: Path) -> None:
    daemon = Daemon(home)
    try:
        body = {"name": "first-one", "version": "1", "description": ""}
        assert _first_request(daemon, "POST", "/api/plugins/register", body)[0] == 201
        status, _, listed = daemon.request("GET", "/api/plugins")
        assert status == 200 and [p["name"] for p in listed] == ["first-one"]
        assert daemon.request("GET", "/api/plugins/nobody")[0] == 404
        assert "Traceback" not in daemon.log()
    finally:
        assert daemon.stop() == 0


def test_over_the_socket_the_fast_and_full_answers_agree(home: Path) -> None:
    """Through waitress: the same bytes for a hit (fast) and for a long poll that returns
    at once (full app), keep-alive on one connection as a client would."""
    daemon = Daemon(home).start()
    try:
        daemon.register("alpha", "1.0", "the first")
        conn = UnixHTTPConnection(daemon.socket)
        answers = []
        for target in ("/api/plugins", "/api/plugins?since=0&wait=0"):
            conn.request("GET", target)
            resp = conn.getresponse()
            answers.append((resp.status, resp.getheader("Content-Type"), resp.read()))
            assert resp.getheader("Content-Length") == str(len(answers[-1][2]))
        conn.close()
        assert answers[0] == answers[1]
        assert http_request(daemon.socket, "GET", "/api/plugins/alpha")[2]["name"] == "alpha"
    finally:
        assert daemon.stop() == 0

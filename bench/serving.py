"""The serving layer alone: every candidate on the same handed-in Unix socket.

Each serves a constant 17 KB JSON body from the same trivial WSGI app on a
pre-bound Unix socket (bound here, handed to the server the way systemd hands
one in), so the only difference is the server. This is the measurement a choice
of serving layer rests on (see hecated/http/server.py and bench/NOTE-perf.md).

Candidates:

- ``bare``: accept, read, send a prepared answer, close: the floor.
- ``werkzeug``: Werkzeug's own threaded server (what hecated used first).
- ``waitress``: hecated's ``UnixServer`` exactly as the daemon builds it.
- ``waitress-t1``, ``waitress-lookahead``, ``waitress-select``: waitress's own
  server on the same socket with one knob changed (``threads=1``,
  ``channel_request_lookahead=5``, ``asyncore_use_poll=False``), to see what
  each knob buys without our loop around it.
- ``cheroot``: CherryPy's server (a thread pool; each connection's request is
  read by a worker thread), handed the socket.
- ``gunicorn``: gunicorn's ``gthread`` worker, one worker process, 4 threads,
  ``--bind fd://N``.

Third-party candidates that are not installed are skipped (``make bench``
installs cheroot and gunicorn into the venv; they are bench-only).

    .venv/bin/python bench/serving.py <kind> <socket>   # serve (used by run.py)
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

BODY = b'{"blob":"' + b"x" * 17_000 + b'"}\n'
KINDS = (
    "bare",
    "werkzeug",
    "waitress",
    "waitress-t1",
    "waitress-lookahead",
    "waitress-select",
    "cheroot",
    "gunicorn",
)
# What each candidate needs beyond hecated's own dependencies.
NEEDS = {"cheroot": "cheroot", "gunicorn": "gunicorn"}
# Stock waitress with one knob changed from hecated's settings.
WAITRESS_KNOBS = {
    "waitress-t1": {"threads": 1},
    "waitress-lookahead": {"threads": 4, "channel_request_lookahead": 5},
    "waitress-select": {"threads": 4, "asyncore_use_poll": False},
}


def available(kind: str) -> bool:
    """Whether this candidate can run here (its package is installed)."""
    need = NEEDS.get(kind)
    return need is None or importlib.util.find_spec(need) is not None


def app(environ: dict, start_response) -> list[bytes]:
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]
    )
    return [BODY]


def _stock_waitress(sock: socket.socket, knobs: dict) -> None:
    """waitress's own Unix server and loop on the handed-in socket (never create_server)."""
    from waitress.adjustments import Adjustments
    from waitress.server import UnixWSGIServer

    adj = Adjustments(**{"asyncore_use_poll": True, "ident": "bench", **knobs})
    sock.setblocking(False)
    server = UnixWSGIServer(
        app,
        map={},
        _sock=sock,
        adj=adj,
        sockinfo=(socket.AF_UNIX, socket.SOCK_STREAM, None, None),
        bind_socket=False,
    )
    server.run()


def _cheroot(sock: socket.socket) -> None:
    """cheroot's one way to take a socket from outside: systemd's LISTEN_PID and fd 3.

    (``prepare`` then wraps fd 3 as AF_INET whatever it is, and ignores
    LISTEN_FDS/LISTEN_FDNAMES: it works for one Unix socket, but see NOTE-perf.md.)
    """
    from cheroot import wsgi

    if sock.fileno() != 3:
        os.dup2(sock.fileno(), 3)
    os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1")
    server = wsgi.Server(("localhost", 0), app, numthreads=4, request_queue_size=128)
    server.prepare()  # adopts fd 3 (as AF_INET) and starts the worker threads
    # Its connection manager tells Unix from TCP by ``bind_addr`` alone: say it is a path.
    server.bind_addr = sock.getsockname()
    server.serve()


def _gunicorn(sock: socket.socket) -> None:
    """gunicorn's gthread worker on ``fd://N`` (its documented way to take a socket)."""
    fd = sock.fileno()
    os.set_inheritable(fd, True)
    os.execv(
        sys.executable,
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--worker-class",
            "gthread",
            "--workers",
            "1",
            "--threads",
            "4",
            "--bind",
            f"fd://{fd}",
            "--log-level",
            "warning",
            "--chdir",
            str(Path(__file__).resolve().parent),
            "serving:app",
        ],
    )


def serve(kind: str, path: str) -> None:
    from hecated.http.server import UnixServer, bind_unix

    sock = bind_unix(Path(path))
    if kind == "werkzeug":  # Werkzeug's own threaded server on the pre-bound socket
        from werkzeug.serving import make_server

        make_server(f"unix://{path}", 0, app, threaded=True, fd=sock.fileno()).serve_forever()
    elif kind == "waitress":  # hecated's serving layer, as the daemon configures it
        UnixServer(sock, app, workers=4).serve()
    elif kind in WAITRESS_KNOBS:
        _stock_waitress(sock, WAITRESS_KNOBS[kind])
    elif kind == "cheroot":
        _cheroot(sock)
    elif kind == "gunicorn":
        _gunicorn(sock)
    else:  # the floor: accept, read, send a prepared answer, close
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY) + BODY
        while True:
            conn, _ = sock.accept()
            try:
                conn.recv(65536)
                conn.sendall(answer)
            except OSError:
                pass
            conn.close()


def start(kind: str, path: str, cpus: set[int] | None) -> subprocess.Popen:
    """The candidate in its own process; pinned to ``cpus`` only in a pinned run."""
    return subprocess.Popen(
        [sys.executable, __file__, kind, path],
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        stderr=subprocess.DEVNULL,
    )


def probe(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])

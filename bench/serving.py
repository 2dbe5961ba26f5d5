"""The serving layer alone: Werkzeug's threaded server vs waitress vs a bare accept loop.

Each serves a constant 17 KB JSON body on the same kind of pre-bound Unix
socket, pinned to the server CPU, so the only difference is the server: this
is the measurement the choice of waitress rests on (see hecated/http/server.py).

    .venv/bin/python bench/serving.py <kind> <socket>   # serve (used by run.py)
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

BODY = b'{"blob":"' + b"x" * 17_000 + b'"}\n'
KINDS = ("bare", "werkzeug", "waitress")


def app(environ: dict, start_response) -> list[bytes]:
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]
    )
    return [BODY]


def serve(kind: str, path: str) -> None:
    from hecated.http.server import UnixServer, bind_unix

    sock = bind_unix(Path(path))
    if kind == "werkzeug":  # Werkzeug's own threaded server on the pre-bound socket
        from werkzeug.serving import make_server

        make_server(f"unix://{path}", 0, app, threaded=True, fd=sock.fileno()).serve_forever()
    elif kind == "waitress":  # hecated's serving layer, as the daemon configures it
        UnixServer(sock, app, workers=4).serve()
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


def start(kind: str, path: str, cpus: set[int]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, kind, path],
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
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

"""What the application costs a request, without any server: the floor under table 2.

Table 0 measures servers with a trivial app; table 2 measures hecated through
waitress. The difference is the app: Werkzeug's ``Request``, routing and
``Response`` plus hecated's own handler. This script calls the real
``HecateApp`` in-process (no socket, no thread hand-off) for ``GET
/api/plugins`` (``--plugins`` registered) and ``GET /api/plugins/{name}``,
beside the trivial app of bench/serving.py, and prints µs per call (median of
rounds) and a cProfile of the list request by own time.

    .venv/bin/python bench/app_cost.py [--plugins 100] [--calls 3000]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from wsgiref.util import FileWrapper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from procs import make_plugins, remove, temp_home  # noqa: E402
from serving import app as trivial_app  # noqa: E402

from hecated.core.index import Index  # noqa: E402
from hecated.core.layout import Layout  # noqa: E402
from hecated.http.app import HecateApp  # noqa: E402
from hecated.protocol import PEER_ENVIRON_KEY, Peer  # noqa: E402


def environ_for(path: str) -> dict:
    """What waitress hands the app for ``GET path`` from a local peer (the same user)."""
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "localhost",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.file_wrapper": FileWrapper,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        PEER_ENVIRON_KEY: Peer(os.getpid(), os.getuid(), os.getgid()),
    }


def call(app: Callable, path: str) -> int:
    """One request through ``app``, its body consumed as a server would; returns the size."""
    status: list[str] = []

    def start_response(s: str, headers: list, exc_info=None) -> Callable:
        status.append(s)
        return lambda data: None

    body = app(environ_for(path), start_response)
    size = sum(len(chunk) for chunk in body)
    if hasattr(body, "close"):
        body.close()
    if not status or not status[0].startswith("200"):
        raise RuntimeError(f"GET {path}: {status}")
    return size


def per_call(app: Callable, path: str, calls: int, rounds: int = 5) -> float:
    spent = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls // rounds):
            call(app, path)
        spent.append((time.perf_counter() - t0) / (calls // rounds))
    return statistics.median(spent)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plugins", type=int, default=100)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    home = temp_home("happ")
    try:
        names = make_plugins(home, args.plugins)
        registry = Index(Layout.at(home / ".hecate"))
        registry.scan()
        app = HecateApp(registry)
        one = f"/api/plugins/{names[len(names) // 2]}"
        rows = [
            ("trivial app (bench/serving.py)", trivial_app, "/"),
            (f"GET /api/plugins ({args.plugins} plugins)", app, "/api/plugins"),
            ("GET /api/plugins/{name}", app, one),
        ]
        print(
            "In-process WSGI calls, no server; µs per call, "
            f"median of 5 rounds of {args.calls // 5}\n"
        )
        print("| request | bytes | µs per call |\n|---|---|---|")
        for label, target, path in rows:
            size = call(target, path)
            print(f"| {label} | {size:,} | {per_call(target, path, args.calls) * 1e6:.0f} |")
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.calls // 3):
            call(app, "/api/plugins")
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(args.top)
        print(f"\ncProfile of {args.calls // 3} `GET /api/plugins`, by own time:\n")
        print("```\n" + out.getvalue().strip() + "\n```")
        registry.close()
    finally:
        remove(home)


if __name__ == "__main__":
    main()

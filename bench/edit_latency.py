"""Hand edit -> visible through ``GET /api/plugins``: latency, beside raw inotify latency.

Starts a real hecated on a tree of ``plugins`` namespaces, then ``samples`` times
per edit kind (rename-over as ``os.replace`` does it, in-place as ``open(w)``
does it) changes one ``plugin.toml`` and measures, from the moment the edit
began:

- ``raw``: until this process's own inotify watch on the same directory reports
  the event (what the kernel and a reader can do at best), and
- ``api``: until a long poll on ``GET /api/plugins?since=N&wait=..`` that was
  waiting before the edit answers with the new version.

It also counts the inotify watches the daemon holds (from
``/proc/PID/fdinfo``) for trees of 1,000 and 10,000 plugins, beside the number
of directories a recursive watch would need.

    .venv/bin/python bench/edit_latency.py [--samples 200] [--plugins 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from procs import Hecated, inotify_watches
from unit_support import http_request
from watchdog.observers.inotify_c import InotifyConstants as IN
from watchdog.observers.inotify_c import inotify_add_watch, inotify_init

SUBDIRS = ("sqlite", "reckon-db", "sockets", "run", "connectors")


def get(sock: str, path: str) -> tuple[int, Any]:
    """The answer's ``X-Hecate-Seq`` and its JSON body."""
    _, headers, body = http_request(Path(sock), "GET", path, timeout=30.0)
    return int(headers.get("X-Hecate-Seq", "0")), body


def make_tree(root: Path, plugins: int, data_dirs: int = 3) -> int:
    """``plugins`` namespaces, each with the full layout and some data dirs; returns dir count."""
    dirs = 1
    for i in range(plugins):
        ns = root / f"bench-{i}"
        for sub in SUBDIRS:
            (ns / sub).mkdir(parents=True)
        for j in range(data_dirs):  # what plugins put in their data dirs: never watched
            (ns / "sqlite" / f"db{j}").mkdir()
        (ns / "plugin.toml").write_text(f'name = "bench-{i}"\nversion = "0"\n')
        dirs += 1 + len(SUBDIRS) + data_dirs
    return dirs


def wait_watching(daemon: Hecated, timeout: float = 300.0) -> float:
    """Seconds from start until the watcher has set up its watches and rescanned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert daemon.proc is not None
        if daemon.proc.poll() is not None:
            raise RuntimeError(daemon.log())
        text = daemon.log()
        if "watching" in text and "watcher: watches " in text:  # built, and read
            return time.perf_counter() - daemon.started
        time.sleep(0.01)
    raise TimeoutError("hecated did not start watching")


def write_rename_over(path: Path, text: str) -> None:
    tmp = path.with_name(".plugin.toml.bench")
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_in_place(path: Path, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(ms: list[float]) -> dict:
    return {
        "median_ms": round(statistics.median(ms), 3),
        "p99_ms": round(percentile(ms, 0.99), 3),
        "max_ms": round(max(ms), 3),
    }


def measure_edits(daemon: Hecated, root: Path, kind: str, samples: int) -> dict:
    writer = write_rename_over if kind == "rename-over" else write_in_place
    ns = root / "bench-0"
    ifd = inotify_init()
    mask = IN.IN_MOVED_TO | IN.IN_CLOSE_WRITE
    inotify_add_watch(ifd, os.fsencode(ns), mask)
    raw_ms: list[float] = []
    api_ms: list[float] = []
    try:
        for i in range(samples):
            version = f"{kind}-{i}"
            seq = get(daemon.socket, "/health")[1]["seq"]
            done: dict = {}

            def poll(since: int = seq, want: str = version, out: dict = done) -> None:
                while True:
                    new_seq, body = get(daemon.socket, f"/api/plugins?since={since}&wait=10")
                    if any(p["version"] == want for p in body if p["name"] == "bench-0"):
                        out["t"] = time.perf_counter()
                        return
                    since = new_seq

            poller = threading.Thread(target=poll)
            poller.start()
            time.sleep(0.01)  # the long poll is waiting in the daemon before the edit
            t0 = time.perf_counter()
            writer(ns / "plugin.toml", f'name = "bench-0"\nversion = "{version}"\n')
            select.select([ifd], [], [], 5)
            raw_ms.append((time.perf_counter() - t0) * 1000)
            os.read(ifd, 65536)
            poller.join(15)
            api_ms.append((done["t"] - t0) * 1000)
    finally:
        os.close(ifd)
    return {"raw_inotify": summary(raw_ms), "api": summary(api_ms), "samples": samples}


def watch_count(plugins: int) -> dict:
    home = Path(tempfile.mkdtemp(prefix="hcb", dir="/tmp"))
    try:
        root = home / ".hecate"
        dirs = make_tree(root, plugins)
        daemon = Hecated(home, None).start()
        try:
            ready = wait_watching(daemon)
            assert daemon.proc is not None
            return {
                "plugins": plugins,
                "directories_in_tree": dirs,
                "inotify_watches": inotify_watches(daemon.proc.pid),
                "seconds_to_watching": round(ready, 2),
            }
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def run(samples: int = 200, plugins: int = 1000, counts: tuple[int, ...] = (1000, 10000)) -> dict:
    home = Path(tempfile.mkdtemp(prefix="hcb", dir="/tmp"))
    try:
        root = home / ".hecate"
        make_tree(root, plugins)
        daemon = Hecated(home, None).start()
        try:
            wait_watching(daemon)
            latency = {
                kind: measure_edits(daemon, root, kind, samples)
                for kind in ("rename-over", "in-place")
            }
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {
        "plugins_in_tree": plugins,
        "latency": latency,
        "watches": [watch_count(n) for n in counts],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--plugins", type=int, default=1000)
    parser.add_argument("--counts", default="1000,10000", help="tree sizes for watch counts")
    args = parser.parse_args()
    counts = tuple(int(n) for n in args.counts.split(",") if n)
    print(json.dumps(run(args.samples, args.plugins, counts), indent=2))


if __name__ == "__main__":
    main()

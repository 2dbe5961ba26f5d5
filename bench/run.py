"""Every hecated benchmark, each beside a baseline measured in the same run.

    make bench                      # = .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --smoke --out /tmp/bench.md   # tiny, no baselines

Writes markdown tables to docs/benchmarks.md (or ``--out``): cold start
(bench/cold_start.py), warm latency/throughput vs nginx, durable registrations
vs etcd, change visibility (bench/edit_latency.py) vs etcd watch, and scale at
1,000 and 10,000 plugins. It installs nginx-light and etcd-server with apt when
they are missing, starts them in temporary directories and stops them by pid.
Machines here are noisy: read the ratios, which compare figures taken minutes
apart on the same machine, not the absolute numbers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import baselines  # noqa: E402
import procs  # noqa: E402
from procs import (  # noqa: E402
    Hecated,
    cpu_split,
    inotify_watches,
    loadavg,
    make_plugins,
    median,
    open_fds,
    percentile,
    placement,
    remove,
    rss_mb,
    stop_pid,
    temp_home,
)
from rawhttp import Client, fetch, run_clients  # noqa: E402

REPO = HERE.parent
DOCS = REPO / "docs" / "benchmarks.md"


@dataclass
class Sizes:
    """How much of everything: the full run, or a smoke run that only proves the bench works."""

    warm_plugins: int = 100
    # Per configuration, split among the clients: 4000 puts 40 samples above the p99.
    warm_requests: int = 4000
    serving_requests: int = 3000
    registrations: int = 400
    scale: tuple[int, ...] = (100, 1000, 10000)
    scale_requests: int = 20
    cold_rounds: int = 20
    edit_samples: int = 200
    watch_samples: int = 200
    liveness_idle: float = 30.0  # seconds of idle CPU measured, 100 live plugins
    liveness_rounds: int = 20  # alternating rounds of 100 list requests, none / all live
    forward_runs: int = 3
    forward_samples: int = 2000
    baselines: bool = True

    @classmethod
    def smoke(cls) -> Sizes:
        return cls(
            warm_plugins=5,
            warm_requests=40,
            serving_requests=40,
            registrations=16,
            scale=(50,),
            scale_requests=3,
            cold_rounds=0,
            edit_samples=0,
            watch_samples=0,
            liveness_idle=0.5,
            liveness_rounds=1,
            forward_runs=1,
            forward_samples=200,
            baselines=False,
        )


# -- formatting -------------------------------------------------------------------------


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.1f} ms"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a"


def verdict(ok: bool) -> str:
    return "✅" if ok else "❌"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Stats:
    p50: float
    p99: float
    rps: float

    @classmethod
    def of(cls, lat: list[float], wall: float) -> Stats:
        return cls(median(lat), percentile(lat, 0.99), len(lat) / wall)


def measure(make: Callable[[int], Client], clients: int, total: int) -> Stats:
    _, client_cpus = cpu_split()
    lat, wall = run_clients(make, clients, max(1, total // clients), client_cpus)
    return Stats.of(lat, wall)


def measure_pair(
    ours: Callable[[int], Client],
    base: Callable[[int], Client] | None,
    clients: int,
    total: int,
    rounds: int = 4,
) -> tuple[Stats, Stats | None]:
    """Ours and the baseline in alternating rounds, so a burst of noise hits both alike."""
    _, client_cpus = cpu_split()
    per = max(1, total // clients // rounds)
    pooled: dict[str, tuple[list[float], float]] = {"ours": ([], 0.0), "base": ([], 0.0)}
    for _ in range(rounds):
        for key, make in (("ours", ours), ("base", base)):
            if make is None:
                continue
            lat, wall = run_clients(make, clients, per, client_cpus)
            acc, spent = pooled[key]
            pooled[key] = (acc + lat, spent + wall)
    a = Stats.of(*pooled["ours"])
    b = Stats.of(*pooled["base"]) if base is not None else None
    return a, b


# -- 1. cold start ------------------------------------------------------------------------


def optional_module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return None


def _cold_results(cold, rounds: int) -> list[tuple[str, str, dict]]:
    """Both ways of starting, for each way users install hecated (bench/installs.py),
    then the development venv apart: its editable finder costs every start ~20 ms."""
    import installs

    kinds = [installs.pip_venv]
    if installs.deb_possible():
        kinds.append(installs.deb)
    results = []
    for kind in kinds:
        with kind() as install:
            results.extend(_cold_pair(cold, rounds, install))
    results.extend(_cold_pair(cold, rounds, installs.development()))
    return results


def _cold_pair(cold, rounds: int, install) -> list[tuple[str, str, dict]]:
    got = [
        (
            f"{install.label}: `systemd-socket-activate … hecated serve`",
            f"bare accept-and-reply child on {install.python}, started the same way",
            cold.run(rounds, install),
        )
    ]
    if cold.user_manager_available():
        got.append(
            (
                f"{install.label}: private `systemd --user`, shipped units",
                "bare child as a service with the same hardening options, same manager",
                cold.run_user_manager(rounds, install),
            )
        )
    return got


LIBRARIES_ROW = "libraries child: the bare child after hecated's libraries, none of its code"


def section_cold_start(sizes: Sizes) -> str:
    title = "## 1. Cold start: the first request while nothing runs\n\n"
    cold = optional_module("cold_start")
    if cold is None or not sizes.cold_rounds:
        why = "smoke run" if cold is not None else "bench/cold_start.py is not on this branch"
        return title + f"_Skipped: {why}._\n"
    rows = []
    for ours, bare, r in _cold_results(cold, sizes.cold_rounds):
        h, b = r["hecated"], r["bare_child"]
        x = h["median_ms"] / b["median_ms"]
        rows.append([f"hecated, {ours}", f"{h['median_ms']:.1f}", f"{h['p90_ms']:.1f}", ""])
        rows.append([bare, f"{b['median_ms']:.1f}", f"{b['p90_ms']:.1f}", ""])
        rows[-2][3] = f"**{x:.2f}x** {verdict(x <= 3)}"
        if "libraries" in r:
            lib = r["libraries"]
            ratio = f"{r['libraries_ratio_median']:.2f}x (the floor of these libraries)"
            rows.append([LIBRARIES_ROW, f"{lib['median_ms']:.1f}", f"{lib['p90_ms']:.1f}", ratio])
    return (
        title + "Connect → full response of `GET /api/plugins` while nothing runs, rounds "
        f"alternating with the baselines'; n = {sizes.cold_rounds} each "
        "(bench/cold_start.py), for each way users install hecated (bench/installs.py: a "
        "non-editable `pip install` into a fresh venv of `/usr/bin/python3`, and the .deb "
        "run by `/usr/bin/python3`), each beside a bare child on the same interpreter and, "
        "through `systemd-socket-activate`, a libraries child: the bare child after importing "
        "every module outside hecated that `hecated serve` imports (the standard library's "
        "and waitress's), which tells their cost from hecated's own. The "
        "development venv (editable install) is shown last: its finder costs every start, "
        "the bare child's too. Target: median ≤ 3x the bare child's.\n\n"
        + table(["", "median ms", "p90 ms", "ratio (median)"], rows)
        + "\n"
    )


# -- 0. the serving layer ----------------------------------------------------------------


def section_serving(sizes: Sizes, work: Path) -> str:
    import serving

    server_cpus, _ = cpu_split()
    rows = []
    got: dict[tuple[str, bool, int], Stats] = {}
    skipped = [kind for kind in serving.KINDS if not serving.available(kind)]
    for kind in serving.KINDS:
        if kind in skipped:
            continue
        path = str(work / f"serve-{kind}.sock")
        proc = serving.start(kind, path, server_cpus)
        try:
            deadline = time.monotonic() + 20
            while not serving.probe(path):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"{kind} server did not start")
                time.sleep(0.02)
            for keep in (False, True) if kind != "bare" else (False,):
                for clients in (1, 8):
                    st = measure(
                        lambda _i, k=keep, p=path: Client(p, "/", k),
                        clients,
                        sizes.serving_requests,
                    )
                    got[kind, keep, clients] = st
                    rows.append(
                        [
                            kind,
                            "keep-alive" if keep else "new per request",
                            str(clients),
                            us(st.p50),
                            us(st.p99),
                            f"{st.rps:,.0f}",
                        ]
                    )
        finally:
            stop_pid(proc)
    return (
        "## 0. Choosing the serving layer\n\n"
        f"A constant {len(serving.BODY):,}-byte JSON body from a trivial WSGI app on a pre-bound "
        "Unix socket: Werkzeug's own threaded server (`make_server(threaded=True, fd=...)`, "
        "what hecated used before; it closes every connection), hecated's `UnixServer` "
        "(waitress, 4 threads), stock waitress with one knob changed each (`waitress-t1`: "
        "`threads=1`; `waitress-lookahead`: `channel_request_lookahead=5`; "
        "`waitress-select`: `asyncore_use_poll=False`), cheroot (4 threads) and gunicorn's "
        "`gthread` worker (1 process, 4 threads, `--bind fd://N`), and a bare Python "
        "accept/send loop as the floor (bench/serving.py). "
        f"{sizes.serving_requests} requests per row, {placement()}.\n\n"
        + table(["server", "connection", "clients", "p50", "p99", "req/s"], rows)
        + "\n\n"
        + (f"_Not installed here, so not measured: {', '.join(skipped)}._\n\n" if skipped else "")
        + _serving_gain(got)
    )


def _serving_gain(got: dict[tuple[str, bool, int], Stats]) -> str:
    """What the switch from Werkzeug's server to waitress bought, in this run."""
    lines = []
    for keep, clients in ((False, 1), (True, 1), (False, 8), (True, 8)):
        if ("werkzeug", keep, clients) not in got or ("waitress", keep, clients) not in got:
            continue
        w, z = got["waitress", keep, clients], got["werkzeug", keep, clients]
        lines.append(
            f"- {'keep-alive' if keep else 'new connection'}, {clients} client(s): p50 "
            f"{z.p50 / w.p50:.1f}x lower, {w.rps / z.rps:.1f}x the requests/s"
        )
    return "waitress against Werkzeug's threaded server, this run:\n\n" + "\n".join(lines) + "\n"


# -- 2. warm latency and throughput -------------------------------------------------------


def section_warm(sizes: Sizes, work: Path) -> str:
    server_cpus, _ = cpu_split()
    home = work / "warm"
    home.mkdir()
    names = make_plugins(home, sizes.warm_plugins)
    one = names[len(names) // 2]
    daemon = Hecated(home, server_cpus).start()
    nginx = None
    try:
        daemon.wait_answer()
        paths = {"list": "/api/plugins", "one": f"/api/plugins/{one}"}
        bodies = {}
        bodies = {key: fetch(daemon.socket, path) for key, path in paths.items()}
        if sizes.baselines:
            baselines.ensure_installed(["nginx"])
            ndir = work / "nginx"
            ndir.mkdir()
            nginx = baselines.Nginx(ndir, server_cpus).start(
                {"list.json": bodies["list"], "one.json": bodies["one"]}
            )
        rows = []
        for key, label in (
            ("list", f"GET /api/plugins ({sizes.warm_plugins} plugins)"),
            ("one", "GET /api/plugins/{name}"),
        ):
            for keep in (False, True):
                for clients in (1, 8):
                    ours, base = measure_pair(
                        lambda _i, p=paths[key], k=keep: Client(daemon.socket, p, k),
                        None
                        if nginx is None
                        else (lambda _i, p=f"/{key}.json", k=keep: Client(nginx.socket, p, k)),
                        clients,
                        sizes.warm_requests,
                    )
                    rows.append(_warm_row(label, len(bodies[key]), keep, clients, ours, base))
    finally:
        daemon.stop()
        if nginx is not None:
            nginx.stop()
    return (
        "## 2. Warm latency and throughput over the Unix socket\n\n"
        f"Raw-socket client (one `sendall`, read to Content-Length; not `http.client`), "
        f"{sizes.warm_requests} requests per row, in 4 rounds alternating with the "
        f"baseline's, each after a warm-up; {placement()}. "
        "Baseline: nginx-light, one worker, serving the same JSON bytes from a file on a Unix "
        "socket. Targets: p50 ≤ 5x nginx's p50, p99 ≤ 3x our own p50.\n\n"
        + table(
            [
                "request",
                "bytes",
                "connection",
                "clients",
                "hecated p50",
                "hecated p99",
                "hecated req/s",
                "nginx p50",
                "nginx p99",
                "nginx req/s",
                "p50 vs nginx (≤ 5x)",
                "p99 / p50 (≤ 3x)",
            ],
            rows,
        )
        + "\n"
    )


def _warm_row(label, size, keep, clients, ours: Stats, base: Stats | None) -> list[str]:
    tail = ours.p99 / ours.p50
    row = [
        label,
        f"{size:,}",
        "keep-alive" if keep else "new per request",
        str(clients),
        us(ours.p50),
        us(ours.p99),
        f"{ours.rps:,.0f}",
    ]
    tail_cell = f"{tail:.1f}x {verdict(tail <= 3)}"
    if base is None:
        row += ["-", "-", "-", "-"]
    else:
        x = ours.p50 / base.p50
        row += [us(base.p50), us(base.p99), f"{base.rps:,.0f}", f"{x:.1f}x {verdict(x <= 5)}"]
        tail_cell += f" (nginx {base.p99 / base.p50:.1f}x)"
    return [*row, tail_cell]


# -- 3. durable registrations -------------------------------------------------------------


def registration_body(client: int) -> Callable[[int], bytes]:
    def body(i: int) -> bytes:
        return json.dumps(
            {"name": f"reg-{client}-{i}", "version": "1.0.0", "description": "a plugin"}
        ).encode()

    return body


def section_registrations(sizes: Sizes, work: Path) -> str:
    server_cpus, _ = cpu_split()
    rows = []
    etcd = None
    try:
        if sizes.baselines:
            baselines.ensure_installed(["etcd"])
            edir = work / "etcd"
            edir.mkdir()
            etcd = baselines.Etcd(edir, server_cpus).start()
        for clients in (1, 8):
            home = work / f"reg{clients}"
            home.mkdir()
            daemon = Hecated(home, server_cpus).start()
            ours = {}
            try:
                daemon.wait_answer()
                # New names (a namespace, its five directories and plugin.toml made),
                # then the same names again (a plugin restarting: plugin.toml replaced).
                for kind, expect in (("new", 201), ("again", 200)):
                    ours[kind] = measure(
                        lambda i, sock=daemon.socket, expect=expect: Client(
                            sock,
                            "/api/plugins/register",
                            True,
                            expect=expect,
                            method="POST",
                            body_of=registration_body(i),
                        ),
                        clients,
                        sizes.registrations,
                    )
            finally:
                daemon.stop()
                remove(home)
            for kind in ("new", "again"):
                base = None
                if etcd is not None:
                    base = measure(
                        lambda i: Client(
                            etcd.address,
                            "/v3/kv/put",
                            True,
                            method="POST",
                            body_of=lambda n, c=i: baselines.put_body(
                                f"plugins/reg-{c}-{n}", registration_body(c)(n)
                            ),
                        ),
                        clients,
                        sizes.registrations,
                    )
                got = ours[kind]
                label = "new names" if kind == "new" else "same names again"
                row = [label, str(clients), f"{got.rps:,.0f}", ms(got.p50), ms(got.p99)]
                if base is None:
                    row += ["-", "-", "-", "-"]
                else:
                    x = got.rps / base.rps
                    row += [
                        f"{base.rps:,.0f}",
                        ms(base.p50),
                        ms(base.p99),
                        f"{x:.2f}x {verdict(x >= 1)}",
                    ]
                rows.append(row)
    finally:
        if etcd is not None:
            etcd.stop()
    return (
        "## 3. Durable registration throughput\n\n"
        f"`POST /api/plugins/register`, keep-alive, {sizes.registrations} per row: new names "
        "(namespace, five directories, `plugin.toml`), then the same names again (a plugin "
        "restarting: `plugin.toml` replaced); "
        "each answered registration is on disk (file fsynced, renamed, directory fsynced). "
        "Baseline: etcd (Debian's etcd-server, one member, data dir in a temp dir, "
        "HTTP/JSON gateway on loopback TCP) doing `PUT` of the same JSON payload under a "
        "new key, then the same keys again, same client concurrency; etcd answers a put "
        "once its WAL is fsynced. "
        f"{placement()}. Target: ≥ etcd.\n\n"
        + table(
            [
                "registrations",
                "clients",
                "hecated reg/s",
                "hecated p50",
                "hecated p99",
                "etcd put/s",
                "etcd p50",
                "etcd p99",
                "hecated vs etcd (≥ 1x)",
            ],
            rows,
        )
        + "\n"
    )


# -- 4. change visibility -----------------------------------------------------------------


def section_visibility(sizes: Sizes, work: Path) -> str:
    title = "## 4. Change visibility\n\n"
    parts = []
    edit = optional_module("edit_latency")
    if edit is None or not sizes.edit_samples:
        why = "smoke run" if edit is not None else "bench/edit_latency.py is not on this branch"
        parts.append(f"_hecated figures skipped: {why}._\n")
    else:
        r = edit.run(samples=sizes.edit_samples, plugins=1000, counts=())
        rows = []
        for kind, res in r["latency"].items():
            raw, api = res["raw_inotify"], res["api"]
            rows.append(
                [
                    kind,
                    f"{raw['median_ms']:.2f}",
                    f"{raw['p99_ms']:.2f}",
                    f"{api['median_ms']:.2f}",
                    f"{api['p99_ms']:.2f}",
                    verdict(api["p99_ms"] <= 50),
                ]
            )
        parts.append(
            f"Hand edit of a `plugin.toml` in a tree of {r['plugins_in_tree']} plugins → a "
            "long poll on `GET /api/plugins?since=N` answers with it "
            f"({sizes.edit_samples} samples per kind), beside this process's own inotify watch "
            "on the same directory.\n\n"
            + table(
                ["edit", "raw inotify p50 ms", "p99 ms", "API p50 ms", "API p99 ms", "p99 ≤ 50 ms"],
                rows,
            )
            + "\n"
        )
    if sizes.baselines and sizes.watch_samples:
        server_cpus, _ = cpu_split()
        baselines.ensure_installed(["etcd"])
        edir = work / "etcd-watch"
        edir.mkdir()
        etcd = baselines.Etcd(edir, server_cpus).start()
        try:
            lat = baselines.etcd_watch_latency(etcd.address, sizes.watch_samples)
        finally:
            etcd.stop()
        parts.append(
            "\nBaseline: etcd put → event on an open watch (put start to event received, "
            f"durable put included), {sizes.watch_samples} samples: "
            f"p50 **{ms(median(lat))}**, p99 **{ms(percentile(lat, 0.99))}**.\n"
        )
    return title + "".join(parts)


# -- 5. scale -----------------------------------------------------------------------------


def section_scale(sizes: Sizes, work: Path) -> str:
    server_cpus, _ = cpu_split()
    rows = []
    for count in sizes.scale:
        home = work / f"scale{count}"
        home.mkdir()
        names = make_plugins(home, count)
        daemon = Hecated(home, server_cpus).start()
        try:
            first = daemon.wait_answer()
            client = Client(daemon.socket, "/api/plugins", keep_alive=False)
            size = client.one(None, bytearray())[1]
            lat = client.run(sizes.scale_requests)
            one = Client(daemon.socket, f"/api/plugins/{names[len(names) // 2]}", False)
            detail = one.run(sizes.scale_requests)
            pid = daemon.proc.pid
            # The watcher starts after the first answer: wait until every namespace and
            # run/ is watched, then read the figures of the daemon as it runs for good.
            deadline = time.monotonic() + 60
            while inotify_watches(pid) < 2 * count and time.monotonic() < deadline:
                time.sleep(0.05)
            watching = time.perf_counter() - daemon.started
            rss, fds, watches = rss_mb(pid), open_fds(pid), inotify_watches(pid)
        finally:
            daemon.stop()
        # Again on the same tree: the manifests the first run parsed come from its cache.
        daemon = Hecated(home, server_cpus).start()
        try:
            again = daemon.wait_answer()
        finally:
            daemon.stop()
        try:
            idle, idle_cpu, idle_watches = idle_after_answer(home, server_cpus)
        finally:
            remove(home)
        big = count >= 10000
        idle_goal = 3.0 if big else 0.5 if count <= 100 else None
        rows.append(
            [
                f"{count:,}",
                ms(first) + (f" {verdict(first <= 1)}" if big else ""),
                ms(again) + (f" {verdict(again <= 1)}" if big else ""),
                ms(watching),
                f"{ms(idle)} ({idle_cpu:.2f} CPU-s, {idle_watches:,} watches)"
                + (f" {verdict(idle <= idle_goal)}" if idle_goal else ""),
                ms(median(lat)) + (f" {verdict(median(lat) <= 0.1)}" if big else ""),
                ms(max(lat)),  # of scale_requests samples: a maximum, not a p99
                ms(median(detail)) + (f" {verdict(median(detail) <= 0.1)}" if big else ""),
                f"{size / 1024:,.0f} KiB",
                f"{rss:.1f} MB" + (f" {verdict(rss <= 80)}" if big else ""),
                str(watches),
                str(fds),
            ]
        )
    return (
        "## 5. Scale\n\n"
        "Plugins registered on disk before start (namespace, five data dirs, `plugin.toml`). "
        "Start = spawn of `hecated` → first complete answer to `GET /api/plugins`, on a tree "
        "it never saw (every `plugin.toml` parsed) and again after a clean stop (restart: "
        "unchanged manifests come from the cache the first run saved); list latency "
        f"and the detail of one plugin over {sizes.scale_requests} requests each, new "
        "connection each, right after the first answer (while the watcher starts); then "
        "the wait until the watcher has every namespace and `run/` watched; RSS, "
        f"inotify watches and open fds from /proc once it has. Idle: a third start on the "
        "tree made never seen again (the manifest cache deleted), no request after its first "
        "answer: from that answer to the start of the first second in which hecated (all "
        "threads, /proc schedstat sampled every 20 ms) used under 1 % of a core, the "
        "CPU-seconds it spent meanwhile, and the inotify watches it then held "
        "(3 per plugin, and a few of the daemon's own; bench/settle.py). "
        f"{placement()}. "
        "Targets at 10,000: start ≤ 1 s, idle ≤ 3 s after the first answer, list and "
        "detail ≤ 100 ms, RSS ≤ 80 MB; at 100, idle ≤ 0.5 s.\n\n"
        + table(
            [
                "plugins",
                "start → first answer",
                "restart → first answer",
                "start → all watches in place",
                "first answer → idle",
                "list p50",
                f"list max of {sizes.scale_requests}",
                "`GET /api/plugins/{name}` p50",
                "list size",
                "RSS",
                "inotify watches",
                "open fds",
            ],
            rows,
        )
        + "\n"
    )


def idle_after_answer(home: Path, cpus: set[int] | None) -> tuple[float, float, int]:
    """A start on ``home`` made never seen again: seconds from its first answer until it
    is idle (under 1 % of a core for a second), the CPU-seconds meanwhile, and the
    inotify watches it holds then."""
    from first_list import CACHE
    from settle import until_idle

    (home / CACHE).unlink(missing_ok=True)
    log = home / "hecated.log"
    log.write_bytes(b"")
    daemon = Hecated(home, cpus).start()
    try:
        daemon.wait_answer()
        assert daemon.proc is not None
        found = until_idle(daemon.proc.pid, log, window=1.0, split=False)
        watches = inotify_watches(daemon.proc.pid)
    finally:
        daemon.stop()
    return float(found["idle"]), float(found["cpu"]), watches


# -- 6. liveness probes, 7. forwarding (their own scripts, one table each) -----------------


def section_liveness(sizes: Sizes) -> str:
    import liveness

    plugins = sizes.warm_plugins
    result = liveness.measure(plugins, sizes.liveness_idle, sizes.liveness_rounds, 100)
    return liveness.table(result).replace("## Liveness", "## 6. Liveness", 1)


def section_forwarding(sizes: Sizes) -> str:
    import forward

    load_before = loadavg()
    runs = [forward.run(sizes.forward_samples) for _ in range(sizes.forward_runs)]
    text = forward.table(runs, sizes.forward_samples, load_before, loadavg())
    # bench/forward.py's own page, one level down: a section of this one.
    text = "\n".join("#" + line if line.startswith("#") else line for line in text.splitlines())
    return text.replace("## Forwarding", "## 7. Forwarding", 1) + "\n"


# -- the whole run ------------------------------------------------------------------------


SECTIONS: list[tuple[str, Callable]] = [
    ("serving", section_serving),
    ("cold start", lambda sizes, work: section_cold_start(sizes)),
    ("warm", section_warm),
    ("registrations", section_registrations),
    ("visibility", section_visibility),
    ("scale", section_scale),
    ("liveness", lambda sizes, work: section_liveness(sizes)),
    ("forwarding", lambda sizes, work: section_forwarding(sizes)),
]


def header(sizes: Sizes) -> str:
    return (
        "# Benchmarks\n\n"
        f"_Generated by `make bench` (`bench/run.py`) on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {platform.node()}, "
        f"{len(__import__('os').sched_getaffinity(0))} CPUs, Python {platform.python_version()}, "
        f"waitress {_version('waitress')}, load average at start "
        f"{loadavg()}; {placement()}. "
        "Each figure stands beside its baseline measured in the same run; this VM is noisy, "
        "so compare ratios, not absolute numbers._\n\n"
        + (
            "**This is the pinned extra run (`--pinned`), not the headline: nobody runs "
            "hecated pinned, and pinning hides the cost of handing requests between "
            "threads.**\n\n"
            if procs.PINNED
            else ""
        )
    )


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def splice(out: Path, sections: list[str], only: str) -> None:
    """Each measured section in place of its own in ``out``, saying which run it came from:
    the page then holds tables from several runs, each labelled with its own."""
    import docsection

    said = (
        f"_This section from `make bench ARGS='--only \"{only}\" --splice'` on "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC at commit {_commit()}; {platform.node()}, "
        f"{len(__import__('os').sched_getaffinity(0))} CPUs, Python "
        f"{platform.python_version()}, waitress {_version('waitress')}._\n\n"
    )
    for text in sections:
        heading, _, rest = text.partition("\n\n")
        docsection.write(str(out), heading, f"{heading}\n\n{said}{rest}")


def _commit() -> str:
    import subprocess

    done = subprocess.run(
        ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no baselines")
    parser.add_argument(
        "--pinned",
        action="store_true",
        help="an extra, labelled run with servers and clients on separate CPUs (not headline)",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"default {DOCS}")
    parser.add_argument("--only", default="", help="comma-separated section names")
    parser.add_argument("--note", type=Path, default=HERE / "NOTE.md", help="appended as is")
    parser.add_argument(
        "--splice",
        action="store_true",
        help="with --only: replace just those sections in the existing page (bench/docsection)",
    )
    args = parser.parse_args(argv)
    procs.PINNED = args.pinned
    sizes = Sizes.smoke() if args.smoke else Sizes()
    out = args.out or (DOCS.with_name("benchmarks-pinned.md") if args.pinned else DOCS)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    work = temp_home("hbench")
    parts = [header(sizes)]
    failed = False
    try:
        for name, fn in SECTIONS:
            if only and name not in only:
                continue
            t0 = time.monotonic()
            print(f"bench: {name} …", file=sys.stderr, flush=True)
            load_before = loadavg()
            try:
                parts.append(
                    fn(sizes, work)
                    + f"\n_Load average (1 / 5 / 15 min) at this table's start {load_before}, "
                    f"at its end {loadavg()}; {placement()}._\n"
                )
            except Exception:
                failed = True
                traceback.print_exc()
                parts.append(
                    f"## {name}\n\n_Failed in this run:_\n\n```\n{traceback.format_exc()}```\n"
                )
            print(f"bench: {name} done in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    finally:
        remove(work)
    if args.splice:
        splice(out, parts[1:], args.only)
    else:
        if args.note.exists() and not args.smoke:
            parts.append(args.note.read_text())
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(parts))
    print(f"bench: wrote {out}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

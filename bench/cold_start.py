"""Cold start through socket activation: connect → full response while nothing is running.

Each round starts ``systemd-socket-activate -l SOCK -- hecated serve`` (the way
systemd starts hecate.service from hecate.socket), waits until it listens,
then times one ``GET /api/plugins`` from connect to the last byte: that
includes exec'ing Python, importing hecated, loading the index and answering.
Beside it, in the same run and started the same way, a bare Python child that
accepts on fd 3 and replies: the floor for any Python daemon; and a "libraries"
child, the bare child after importing every module outside hecated that ``hecated
serve`` imports (the standard library's and waitress's): the floor for a daemon
built on those libraries, so the table tells their cost from hecated's own code.
Rounds alternate among the three so that machine noise falls on all alike.

``run_user_manager`` does the same the way users meet it: a private
``systemd --user`` (its own HOME under /home and XDG_RUNTIME_DIR) with the
shipped ``hecate.socket``/``hecate.service`` (ExecStart pointed at this venv's
hecated, exactly as ``hecated install-units`` writes them), and beside them a
``bare.socket``/``bare.service`` pair whose service is the shipped
``hecate.service`` with only ExecStart (the bare child), ``Type=simple`` and
the watchdog changed: the same hardening options. Each round stops the service
(the socket stays), then times connect → last byte of the first request.

Both take an ``installs.Install``: which ``hecated`` runs and which interpreter the
bare child runs on (the same one), so the headline figures are measured as users
install hecated (a .deb, a non-editable pip install), never through the
development venv's editable finder (bench/installs.py says why).

    .venv/bin/python bench/cold_start.py [N] [--user-manager] [--install deb|pip|dev]
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from installs import Install, deb, development, pip_venv

BARE_CHILD = (
    "import socket\n"
    "s = socket.socket(fileno=3)\n"
    "c, _ = s.accept()\n"
    "c.recv(65536)\n"
    "c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n"
    "Content-Length: 3\\r\\nConnection: close\\r\\n\\r\\n[]\\n')\n"
    "c.close()\n"
)
REQUEST = b"GET /api/plugins HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
# Prints every module outside hecated that ``hecated serve`` has imported once its
# modules are loaded: the libraries (stdlib, waitress) it stands on.
LIBRARY_NAMES = (
    "import sys\n"
    "before = set(sys.modules)\n"
    "try:\n"
    "    from hecated.cli import flags\n"
    "    flags(['serve'])\n"
    "except ImportError:\n"  # an older hecated (a baseline): its cli imports all it needs
    "    import hecated.cli\n"
    "import hecated.daemon\n"
    "print(' '.join(m for m in sys.modules if m not in before and m.split('.')[0] != 'hecated'))\n"
)


def libraries_child(python: Path) -> str:
    """The bare child after importing what hecated imports but none of hecated's own
    modules (with the collector off, as hecated starts): the floor of any daemon built on
    the same libraries, so that a table can tell their cost from hecated's own."""
    names = subprocess.run(
        [str(python), "-c", LIBRARY_NAMES], capture_output=True, text=True, check=True
    ).stdout.split()
    return (
        f"import gc, importlib\ngc.disable()\nfor name in {names!r}:\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except ImportError:\n        pass\n" + BARE_CHILD
    )


def _activate(sock: Path, home: Path, cmd: list[str], log: Path) -> subprocess.Popen:
    activate = shutil.which("systemd-socket-activate")
    if activate is None:
        raise SystemExit("systemd-socket-activate is not installed (Debian: systemd)")
    with log.open("wb") as out:
        return subprocess.Popen(
            [activate, "-l", str(sock), "-E", f"HOME={home}", "--", *cmd],
            stdout=out,
            stderr=out,
        )


def _wait_listening(log: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 10
    while b"Listening on" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"systemd-socket-activate did not listen: {log.read_text()}")
        time.sleep(0.005)


def _one_request(sock: Path) -> tuple[float, bytes]:
    start = time.perf_counter()
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(30)
    conn.connect(os.fspath(sock))
    conn.sendall(REQUEST)
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    elapsed = time.perf_counter() - start
    conn.close()
    return elapsed, b"".join(chunks)


def _round(home: Path, cmd: list[str]) -> float:
    sock = home / ".hecate" / "hecate-daemon" / "sockets" / "api.sock"
    sock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock.unlink(missing_ok=True)
    log = home / "activate.log"
    proc = _activate(sock, home, cmd, log)
    try:
        _wait_listening(log, proc)
        elapsed, response = _one_request(sock)
        if not response.startswith(b"HTTP/1.") or b" 200 " not in response.split(b"\r\n")[0]:
            raise RuntimeError(f"bad response: {response[:200]!r}\n{log.read_text()}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return elapsed


def _summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p90_ms": round(p90 * 1000, 1),
        "min_ms": round(ordered[0] * 1000, 1),
    }


def _stats(samples: dict[str, list[float]], n: int) -> dict:
    result: dict = {name: _summary(values) for name, values in samples.items()}
    result["n"] = n
    bare = result["bare_child"]["median_ms"]
    result["ratio_median"] = round(result["hecated"]["median_ms"] / bare, 2)
    if "libraries" in result:
        result["libraries_ratio_median"] = round(result["libraries"]["median_ms"] / bare, 2)
    return result


def run(n: int = 20, install: Install | None = None) -> dict:
    """Median and p90 of ``n`` cold starts of hecated, of the bare child and of the
    libraries child (``libraries_child``), in ms; rounds alternate among the three."""
    install = install or development()
    home = Path(tempfile.mkdtemp(prefix="hcb", dir="/tmp"))
    python = str(install.python)
    commands = {
        "hecated": [str(install.hecated), "serve"],
        "bare_child": [python, "-c", BARE_CHILD],
        "libraries": [python, "-c", libraries_child(install.python)],
    }
    try:
        for command in commands.values():
            _round(home, command)  # warm the page cache for all before measuring
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(n):
            for name, command in commands.items():
                samples[name].append(_round(home, command))
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return _stats(samples, n)


# -- through a private systemd --user with the shipped units ------------------------------

SYSTEMD = Path("/usr/lib/systemd/systemd")
HOMES = Path(os.environ.get("HECATE_BENCH_HOMES", "/home/hecate-bench"))
# Both services alike: output to a file (no journald here), no start rate limit (the
# rounds start each service far more often than StartLimitBurst= allows).
COMMON_DROP_IN = (
    "[Unit]\nStartLimitIntervalSec=0\n"
    "[Service]\nStandardOutput=append:%h/svc.log\nStandardError=append:%h/svc.log\n"
)


def user_manager_available() -> bool:
    return SYSTEMD.exists() and shutil.which("systemctl") is not None and os.geteuid() == 0


def _bare_service(hecate_service: str, script: Path, python: Path) -> str:
    """The shipped service with the bare child as ExecStart: every hardening line kept."""
    out = []
    for line in hecate_service.splitlines():
        if line.startswith("ExecStart="):
            line = f"ExecStart={python} {script}"
        elif line.startswith("Type="):
            line = "Type=simple"
        elif line.startswith(("NotifyAccess=", "WatchdogSec=", "ExecReload=")):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


def _bare_socket(path: Path) -> str:
    return (
        "[Socket]\n"
        f"ListenStream={path}\nSocketMode=0600\nDirectoryMode=0700\nService=bare.service\n"
    )


class _Manager:
    """A private ``systemd --user``: its own HOME and runtime dir, stopped by pid."""

    def __init__(self, install: Install) -> None:
        self.install_ = install
        HOMES.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.base = Path(tempfile.mkdtemp(prefix="cs", dir=HOMES))
        self.home = self.base / "home"
        self.runtime = self.base / "run"
        self.home.mkdir(mode=0o700)
        self.runtime.mkdir(mode=0o700)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.runtime),
            "LANG": "C.UTF-8",
        }
        self.units = self.home / ".config" / "systemd" / "user"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        Path("/run/systemd/system").mkdir(parents=True, exist_ok=True)
        with (self.base / "manager.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [str(SYSTEMD), "--user", "--log-target=console", "--log-level=warning"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.home,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while self.ctl("is-system-running", check=False).strip() not in ("running", "degraded"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("systemd --user did not come up")
            time.sleep(0.05)

    def ctl(self, *args: str, check: bool = True) -> str:
        res = subprocess.run(
            ["systemctl", "--user", *args], env=self.env, capture_output=True, text=True
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"systemctl --user {' '.join(args)}: {res.stdout}{res.stderr}")
        return res.stdout

    def install(self) -> tuple[Path, Path]:
        """The shipped units (as install-units renders them) and the bare pair."""
        from hecated.tools.units import hidden_from_service, render

        hecated, python = self.install_.hecated, self.install_.python
        self.units.mkdir(parents=True)
        for name in ("hecate.socket", "hecate.service"):
            (self.units / name).write_text(render(name, hecated))
        script = self.home / "bare_child.py"
        script.write_text(BARE_CHILD)
        bare_sock = self.home / "bare" / "api.sock"
        (self.units / "bare.socket").write_text(_bare_socket(bare_sock))
        (self.units / "bare.service").write_text(
            _bare_service(render("hecate.service", hecated), script, python)
        )
        for service in ("hecate.service", "bare.service"):
            drop = self.units / f"{service}.d"
            drop.mkdir()
            (drop / "00-bench.conf").write_text(COMMON_DROP_IN)
            if hidden_from_service(hecated):  # a venv under /tmp: same relaxation for both
                (drop / "01-tmp.conf").write_text("[Service]\nPrivateTmp=no\n")
        self.ctl("daemon-reload")
        self.ctl("start", "hecate.socket", "bare.socket")
        return self.home / ".hecate" / "hecate-daemon" / "sockets" / "api.sock", bare_sock

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.ctl("stop", "hecate.socket", "hecate.service", "bare.socket", check=False)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.base, ignore_errors=True)


def _manager_round(um: _Manager, sock: Path, service: str) -> float:
    um.ctl("stop", service)  # synchronous: nothing of it runs when this returns
    if um.ctl("is-active", service, check=False).strip() == "active":
        raise RuntimeError(f"{service} still active after stop")
    elapsed, response = _one_request(sock)
    if b" 200 " not in response.split(b"\r\n")[0]:
        raise RuntimeError(f"{service}: bad response {response[:200]!r}")
    return elapsed


def run_user_manager(n: int = 20, install: Install | None = None) -> dict:
    """Median and p90 of ``n`` first requests through a private ``systemd --user``, in ms."""
    um = _Manager(install or development())
    try:
        um.start()
        hecate_sock, bare_sock = um.install()
        _manager_round(um, hecate_sock, "hecate.service")  # warm the page cache
        _manager_round(um, bare_sock, "bare.service")
        samples: dict[str, list[float]] = {"hecated": [], "bare_child": []}
        for _ in range(n):
            samples["hecated"].append(_manager_round(um, hecate_sock, "hecate.service"))
            samples["bare_child"].append(_manager_round(um, bare_sock, "bare.service"))
    finally:
        um.stop()
    return _stats(samples, n)


def _installed(how: str):
    if how == "deb":
        return deb()
    if how == "pip":
        return pip_venv()
    return contextlib.nullcontext(development())


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    rounds = int(args[0]) if args else 20
    how = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--install=")), "dev")
    via = "systemd --user" if "--user-manager" in sys.argv else "systemd-socket-activate"
    with _installed(how) as install:
        measure = run_user_manager if "--user-manager" in sys.argv else run
        outcome = measure(rounds, install)
    print(json.dumps(outcome, indent=2))
    h, b = outcome["hecated"], outcome["bare_child"]
    print(
        f"cold start via {via}, {install.label}, n={rounds}: hecated median {h['median_ms']} ms "
        f"(p90 {h['p90_ms']}), bare child on {install.python} median {b['median_ms']} ms "
        f"(p90 {b['p90_ms']}): {outcome['ratio_median']}x",
        file=sys.stderr,
    )
    if "libraries" in outcome:
        lib = outcome["libraries"]
        print(
            f"libraries child (hecated's libraries, none of its code) median {lib['median_ms']}"
            f" ms: {outcome['libraries_ratio_median']}x the bare child",
            file=sys.stderr,
        )

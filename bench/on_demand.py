"""On-demand start: a forwarded request to a stopped plugin, beside the plugin's own start.

Usage: .venv/bin/python bench/on_demand.py [--rounds 15]

A private ``systemd --user`` (tests/systemd_support.py, under the machine-wide
manager lock) with the example plugin (examples/hecate-exampled.py) as a real
``.service``, and a real hecated beside it (the manager's XDG_RUNTIME_DIR). Each
round, the unit stopped first (hecated sees it stopped):

- **forwarded**: ``GET /plugin/hecate-exampled/health`` through hecated's socket,
  from the request sent to its answer read: hecated finds no socket, starts the
  unit, holds the request until the plugin's socket answers (its finding, from
  the watcher and the prober), then relays it;
- **own start**: the same unit started by this process (``unitcontrol``: the start
  job, waited for), then the plugin's own socket asked ``GET /health`` every
  millisecond until it answers 2xx: the start job -> socket answers.

Both include what the example does when it starts (a Python start-up, its
registration with hecated). Goal (issue 20): forwarded <= own start + 100 ms.
The first round of each is a warm-up (the D-Bus library's first import) and is
not counted.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from systemd_support import UserManager  # noqa: E402

from hecated.adapters.unitcontrol import UserManager as Control  # noqa: E402
from hecated.adapters.units import SystemdUnavailable  # noqa: E402

NAME = "hecate-exampled"
UNIT = f"{NAME}.service"
EXAMPLED = HERE.parent / "examples" / "hecate-exampled.py"
HECATED = Path(sys.executable).parent / "hecated"


class Unix(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 60.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path_ = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(os.fspath(self.path_))
        self.sock = sock


def get(path: Path, target: str, timeout: float = 60.0) -> tuple[int, bytes]:
    conn = Unix(path, timeout)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def until(predicate, timeout: float = 60.0, step: float = 0.001) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("condition not met in time")
        time.sleep(step)


def answers(sock: Path) -> bool:
    try:
        return 200 <= get(sock, "/health", 5.0)[0] < 300
    except OSError:
        return False


def status(api: Path) -> str:
    import json

    return json.loads(get(api, f"/api/plugins/{NAME}")[1]).get("status", "")


def stopped(control: Control, api: Path) -> None:
    control.stop(UNIT)
    until(lambda: status(api) == "stopped", step=0.01)


def forwarded(api: Path) -> float:
    began = time.perf_counter()
    code, body = get(api, f"/plugin/{NAME}/health")
    took = time.perf_counter() - began
    if code != 200:
        raise RuntimeError(f"forwarded: {code} {body!r}")
    return took


def own_start(control: Control, plugin_sock: Path) -> float:
    began = time.perf_counter()
    control.start(UNIT)
    until(lambda: answers(plugin_sock))
    return time.perf_counter() - began


def setup(um: UserManager) -> tuple[subprocess.Popen, Control]:
    um.unit_dir.mkdir(parents=True, exist_ok=True)
    (um.unit_dir / UNIT).write_text(
        f"[Service]\nExecStart={sys.executable} {EXAMPLED} --name {NAME}\n"
    )
    um.systemctl("daemon-reload")
    env = {**os.environ, "HOME": str(um.home), "XDG_RUNTIME_DIR": str(um.runtime)}
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    log = (um.base / "hecated.log").open("ab")
    hecated = subprocess.Popen([str(HECATED)], env=env, stdout=log, stderr=log)
    control = Control(address=um.bus_address)

    def on_bus() -> bool:
        try:
            return control.state("dbus.service").active_state == "active"
        except SystemdUnavailable:
            return False

    until(on_bus, step=0.05)
    until(lambda: um.socket.exists() and answers(um.socket), step=0.01)
    return hecated, control


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    um = UserManager().start()
    hecated = None
    try:
        hecated, control = setup(um)
        api = um.socket
        control.start(UNIT)  # it registers itself
        until(lambda: status(api) == "running", step=0.01)
        plugin_sock = um.home / ".hecate" / NAME / "sockets" / "api.sock"
        fwd, own = [], []
        for _ in range(args.rounds + 1):
            stopped(control, api)
            fwd.append(forwarded(api))
            stopped(control, api)
            own.append(own_start(control, plugin_sock))
        fwd, own = fwd[1:], own[1:]
        report(fwd, own)
    finally:
        if hecated is not None:
            hecated.send_signal(signal.SIGTERM)
            hecated.wait(15)
        um.stop()
    return 0


def report(fwd: list[float], own: list[float]) -> None:
    def ms(values: list[float]) -> str:
        return (
            f"median {statistics.median(values) * 1000:.0f} ms, "
            f"min {min(values) * 1000:.0f}, max {max(values) * 1000:.0f}"
        )

    extra = [f - o for f, o in zip(fwd, own, strict=True)]
    print(f"rounds: {len(fwd)}")
    print(f"forwarded request to a stopped plugin -> its answer: {ms(fwd)}")
    print(f"the plugin's own start (start job -> socket answers): {ms(own)}")
    print(
        f"hecated's part (forwarded - own, median of medians): "
        f"{(statistics.median(fwd) - statistics.median(own)) * 1000:+.0f} ms (goal <= +100 ms)"
    )
    print(f"per round (forwarded - the next own start): {ms(extra)}")


if __name__ == "__main__":
    sys.exit(main())

"""Helpers of the reliability suite: other users, fewer capabilities, small disks, snapshots.

Tests run as root here, and root reads files whatever their mode; so where
permissions matter the daemon runs as root *without* CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH (then mode bits bind it like any user), and "another user"
is ``nobody`` through ``setpriv``.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HECATED, Daemon

SETPRIV = shutil.which("setpriv")
AS_NOBODY = [SETPRIV or "setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
WITHOUT_DAC = [SETPRIV or "setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv (util-linux)"
)


def nobody_python() -> str | None:
    """A Python interpreter the user ``nobody`` can run (the venv's may sit under /root)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            ok = subprocess.run(
                [*AS_NOBODY, candidate, "-c", "pass"], capture_output=True, timeout=20
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if ok.returncode == 0:
            return candidate
    return None


class PrefixedDaemon(Daemon):
    """A hecated started under a wrapper command (setpriv)."""

    def __init__(self, home: Path, prefix: list[str], **kw) -> None:
        super().__init__(home, **kw)
        self.prefix = prefix

    def start(self, wait: bool = True) -> PrefixedDaemon:
        from conftest import wait_for

        self._stderr = self.stderr_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.prefix, str(HECATED), *self.args],
            env=self.env,
            stdout=self._stderr,
            stderr=self._stderr,
        )
        if wait:
            wait_for(self._ready, timeout=15)
        return self


def snapshot(path: Path) -> dict[str, tuple]:
    """Every entry below ``path`` with its type, mode and content hash: to prove no change."""
    out: dict[str, tuple] = {}
    for dirpath, dirs, files in os.walk(path):
        for entry in dirs + files:
            full = Path(dirpath) / entry
            st = full.lstat()
            digest = ""
            if full.is_file() and not full.is_symlink():
                digest = hashlib.sha256(full.read_bytes()).hexdigest()
            out[str(full.relative_to(path))] = (st.st_mode, st.st_size, digest)
    return out


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at ``path``: a disk that really fills up."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def stop(daemon: Daemon) -> None:
    if daemon.proc is not None and daemon.proc.poll() is None:
        daemon.stop()
    elif daemon.proc is not None:
        daemon._stderr.close()


def raw_exchange(
    sock_path: Path, data: bytes, timeout: float = 20
) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes (however malformed) and read one HTTP response."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(os.fspath(sock_path))
        # The server may answer and close before reading everything: that is fine.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, dict(resp.getheaders()), resp.read()

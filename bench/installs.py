"""hecated as users install it, for the benchmarks: a .deb and a non-editable pip install.

The development venv's interpreter pays ~20 ms at every start for the editable
install's finder (``site`` imports ``__editable___hecated_*_finder``), and so does
a bare child run with it: a cold-start ratio measured there flatters hecated. Users
get hecated one of two ways, and the headline figures come from those:

- ``deb()``: the package built by ``packaging/debian/build.sh``, installed with
  ``apt-get install ./hecated_*.deb`` (Debian's own python3-werkzeug &c.), run by
  ``/usr/bin/python3``; removed again afterwards when it was not installed before.
- ``pip_venv()``: ``pip install .[systemd]`` (not ``-e``) into a fresh venv made by
  ``/usr/bin/python3 -m venv``.

Each ``Install`` names its ``hecated`` and the interpreter a bare child of the same
install would run on, so baseline and hecated pay the same interpreter start-up.

    .venv/bin/python bench/installs.py deb|pip   # builds it and prints its paths
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Under /home, not /tmp: the shipped hecate.service has PrivateTmp=yes, which would
# hide a venv under /tmp from the service (the benchmark would need a relaxation).
HOMES = Path(os.environ.get("HECATE_BENCH_HOMES", "/home/hecate-bench"))
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


@dataclass(frozen=True)
class Install:
    """One way hecated is installed: its ``hecated`` and the interpreter it runs on."""

    label: str
    hecated: Path
    python: Path
    headline: bool = True  # False: the development venv, shown apart


def development() -> Install:
    """This venv (editable install): what ``make run`` uses; never a headline figure."""
    python = Path(sys.executable)
    return Install("development venv (editable)", python.parent / "hecated", python, False)


@contextlib.contextmanager
def pip_venv() -> Iterator[Install]:
    """A fresh venv of ``/usr/bin/python3`` with ``pip install .[systemd]`` (not editable)."""
    HOMES.mkdir(mode=0o755, parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="venv", dir=HOMES))
    os.chmod(base, 0o755)
    try:
        venv = base / "venv"
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "-q"]
        subprocess.run([*pip, f"{REPO}[systemd]"], check=True, cwd=base)
        yield Install(
            "pip install (venv, not editable)", venv / "bin" / "hecated", venv / "bin" / "python"
        )
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _installed(package: str) -> bool:
    got = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    return got.returncode == 0 and got.stdout.strip() == "install ok installed"


@contextlib.contextmanager
def deb() -> Iterator[Install]:
    """The .deb, built from this tree and installed with apt; purged afterwards unless
    it was installed before (then it is left as found: only that version is measured)."""
    was_installed = _installed("hecated")
    out = Path(tempfile.mkdtemp(prefix="hecated-deb-out"))
    try:
        if not was_installed:
            build = REPO / "packaging" / "debian" / "build.sh"
            subprocess.run([str(build), "--out", str(out), "--no-lintian"], check=True)
            debs = sorted(out.glob("hecated_*.deb"))
            if not debs:
                raise RuntimeError("packaging/debian/build.sh made no .deb")
            subprocess.run(
                ["apt-get", "install", "-y", "-qq", str(debs[-1])], check=True, env=APT_ENV
            )
        yield Install(
            "Debian package (apt, /usr/bin/python3)",
            Path("/usr/bin/hecated"),
            Path("/usr/bin/python3"),
        )
    finally:
        if not was_installed and _installed("hecated"):
            subprocess.run(["apt-get", "purge", "-y", "-qq", "hecated"], check=False, env=APT_ENV)
        shutil.rmtree(out, ignore_errors=True)


def deb_possible() -> bool:
    """Building and installing the .deb needs root and Debian's tools."""
    return os.geteuid() == 0 and shutil.which("dpkg-buildpackage") is not None


if __name__ == "__main__":
    how = sys.argv[1] if len(sys.argv) > 1 else "pip"
    with deb() if how == "deb" else pip_venv() as install:
        print(install)
        script = Path(__file__).resolve().parent / "importtime.py"
        subprocess.run([sys.executable, str(script), "--python", str(install.python)])

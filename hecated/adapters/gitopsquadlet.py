"""Can this machine run a ``.container``? Podman's Quadlet generator, or why not.

A ``.container`` file becomes a unit only through Quadlet, the systemd generator
podman ships since 4.4 (``podman-user-generator`` in the user generator directory).
Debian 12 ships podman 4.3.1, which has none: linking the file there makes nothing,
silently. The reconciler and ``hecatectl doctor`` ask here and say so instead.
Stdlib only (doctor imports it), and it runs ``podman --version`` only when the
generator is missing, to say which podman is there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence

GENERATOR = "podman-user-generator"
# systemd's user generator directories (systemd.generator(7)), the vendor's last.
GENERATOR_DIRS: tuple[str, ...] = (
    "/run/systemd/user-generators",
    "/etc/systemd/user-generators",
    "/usr/local/lib/systemd/user-generators",
    "/usr/lib/systemd/user-generators",
    "/lib/systemd/user-generators",
)
MINIMUM = (4, 4)
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def generator_dirs(environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Where the user manager looks for generators: ``$SYSTEMD_GENERATOR_PATH`` when set
    (systemd's own override; a trailing ":" appends the defaults), else the defaults."""
    env = os.environ if environ is None else environ
    path = env.get("SYSTEMD_GENERATOR_PATH")
    if not path:
        return GENERATOR_DIRS
    dirs = tuple(d for d in path.split(":") if d)
    return dirs + GENERATOR_DIRS if path.endswith(":") else dirs


def generator(dirs: Sequence[str] | None = None) -> str | None:
    """The Quadlet generator's path, if one is installed."""
    for folder in generator_dirs() if dirs is None else dirs:
        path = os.path.join(folder, GENERATOR)
        if os.access(path, os.X_OK):
            return path
    return None


def podman_version(podman: str | None = None, timeout: float = 10.0) -> str | None:
    """``podman --version``'s number ("4.3.1"); None when podman is not installed."""
    podman = podman or shutil.which("podman")
    if podman is None:
        return None
    try:
        out = subprocess.run(
            [podman, "--version"], capture_output=True, text=True, timeout=timeout, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = _VERSION.search(out)
    return found.group(0) if found else "an unknown version"


def quadlet_problem(dirs: Sequence[str] | None = None) -> str | None:
    """Why a ``.container`` cannot run here, in a sentence; None when Quadlet is there."""
    dirs = generator_dirs() if dirs is None else dirs
    if generator(dirs) is not None:
        return None
    version = podman_version()
    if version is None:
        return "needs podman 4.4 or later for Quadlet; podman is not installed"
    found = _VERSION.match(version)
    if found is not None and tuple(int(n) for n in found.groups()[:2]) >= MINIMUM:
        return (
            f"needs Quadlet's generator ({GENERATOR}); podman {version} is installed "
            f"without it (looked in {', '.join(dirs)})"
        )
    return f"needs podman 4.4 or later for Quadlet; this machine has {version}"

"""``systemd-analyze verify``: the second check of a unit file, where it is installed.

``core/unitfile`` checks the syntax systemd reads and the keys a plugin cannot
run without; it does not know systemd's hundreds of keys and their values.
``systemd-analyze --user verify`` does: "Unknown key 'ExecStrat'", "Failed to
parse service restart specifier". systemd itself only warns and ignores such a
line, so the unit would run otherwise than written; here each one is a 400
naming the line, and nothing is written (the app calls this before the write,
through ``http/install.UnitVerifier``: the edge does not import adapters).

What verify does and does not do, and so what this module decides:
- It never runs the unit's commands (nor ``ExecCondition=``); ``--man=no`` keeps
  it from running ``man`` for ``Documentation=``, and generators stay off (its
  default). hecated never executes anything a unit file says.
- It fails (exit 1) when ``ExecStart=``'s program does not exist *here, now*.
  That is not the file's fault: a plugin's unit may be installed before its
  program (a package, a build, a container image to pull), so "Command ... is
  not executable" is not a finding.
- It runs a throwaway manager that writes into ``$XDG_RUNTIME_DIR``: it gets a
  private one in the temp directory that holds the file, removed afterwards.
  The user's unit directories are still read, so dependencies resolve.
- A verify that cannot run (not installed, no ``--user`` manager possible, a
  sandbox that refuses it, over ``VERIFY_TIMEOUT``) says nothing about the
  file: the install goes on with the first check alone, logged, and its answer
  says ``"verified": null``.
- ``.container`` files are Quadlet's, which systemd-analyze cannot read: they
  get the first check only.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile

from hecated.core.errors import InvalidUnitFileError
from hecated.core.unitfile import UnitFile

log = logging.getLogger("hecated.unitverify")

TOOL = "systemd-analyze"
VERIFY_TIMEOUT = 30.0  # seconds, as a unit job; verify takes ~15 ms, a loaded machine far more
OUTPUT_MAX = 64 * 1024  # characters of its output read for findings
# What verify says that is no fault of the file's (see the module's docstring).
_NOT_FINDINGS = (
    re.compile(r"Command .* is not executable"),
    re.compile(r"Unit \S+ has a bad unit file setting\.?$"),  # the summary of a finding
)
_IGNORING = re.compile(r",? ignoring( line)?\.?| Ignoring\.?", re.IGNORECASE)


class SystemdAnalyze:
    """The second check (``http/install.UnitVerifier``) by ``systemd-analyze --user verify``."""

    def __init__(
        self,
        binary: str | None = None,
        timeout: float = VERIFY_TIMEOUT,
        scratch: str | None = None,
    ) -> None:
        self.binary = shutil.which(TOOL) if binary is None else binary
        self.timeout = timeout
        self.scratch = scratch  # where its temp directories go (None: $TMPDIR, /tmp)

    def verify(self, unit: UnitFile) -> str | None:
        """``"systemd-analyze"`` when it verified ``unit``, None when it could not say;
        its first finding as ``InvalidUnitFileError`` (with the line where it names one)."""
        if unit.kind != "service" or not self.binary:
            return None
        try:
            with tempfile.TemporaryDirectory(prefix="hecated-verify-", dir=self.scratch) as tmp:
                path = os.path.join(tmp, unit.filename)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
                with open(os.open(path, flags, 0o600), "wb") as f:
                    f.write(unit.data)
                runtime = os.path.join(tmp, "runtime")
                os.mkdir(runtime, 0o700)
                output, code = self._run(path, runtime)
        except OSError as exc:  # no room for the temp copy (a full or read-only /tmp)
            log.warning("%s verify could not run: %s", TOOL, exc)
            return None
        if output is None:
            return None
        finding, spoke = first_finding(output, path, unit.filename)
        if finding is not None:
            raise finding
        # Failing without a word about this file (its manager could not start here).
        if code != 0 and not spoke:
            log.warning("%s verify of %s could not say: %s", TOOL, unit.filename, output[-300:])
            return None
        return TOOL

    def _run(self, path: str, runtime: str) -> tuple[str | None, int]:
        env = {**os.environ, "XDG_RUNTIME_DIR": runtime, "SYSTEMD_COLORS": "0", "LC_ALL": "C"}
        argv = [str(self.binary), "--user", "--man=no", "verify", path]
        try:
            done = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("%s verify could not run: %s", TOOL, exc)
            return None, -1
        return done.stdout[:OUTPUT_MAX].decode("utf-8", "replace"), done.returncode


def first_finding(
    output: str, path: str, filename: str
) -> tuple[InvalidUnitFileError | None, bool]:
    """verify's first complaint about *this* file, as the error the client gets, and
    whether it said anything about this file at all.

    ``PATH:LINE: message`` names a line; ``NAME.service: message`` the unit as a
    whole. Complaints about other units (its dependencies) are not this file's."""
    at_line = re.compile(re.escape(path) + r":(\d+): (.*)")
    whole, spoke = None, False
    for line in output.splitlines():
        found = at_line.fullmatch(line)
        if found:
            number = int(found.group(1))
            message = _IGNORING.sub("", found.group(2))
            return InvalidUnitFileError(f"line {number}: {message} ({TOOL} verify)", number), True
        if line.startswith(f"{filename}: "):
            spoke = True
            message = line[len(filename) + 2 :]
            if whole is None and not any(p.search(message) for p in _NOT_FINDINGS):
                whole = InvalidUnitFileError(f"{_IGNORING.sub('', message)} ({TOOL} verify)")
    return whole, spoke

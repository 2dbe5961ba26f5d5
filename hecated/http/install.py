"""Install and uninstall through the API: a unit file checked, then written into the gitops tree.

``POST /api/plugins/install`` takes a unit file (its text, kind and plugin
name, or the path of a file hecated reads as its user), checks it
(``core/unitfile``: the first problem's line in a 400), has it verified where a
verifier is given (``UnitVerifier``; the daemon hands in
``adapters/unitverify.SystemdAnalyze``: the edge imports no adapter), and only
then writes it into ``apps/`` of the gitops tree (``core/desired``). The
reconciler does the rest (link, reload, start), as it does for a file a
``git pull`` brought. hecated never runs the file's commands itself.

``POST /api/plugins/{name}/uninstall`` removes the plugin's file from ``apps/``, then
stops its unit (through the ``UnitControl`` the app already has). It
never touches the plugin's namespace, and it does not deregister it: like
deregistration, uninstalling keeps the data (``purge`` is the one way to
remove that). A plugin registered by hand stays registered.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

from hecated.core import unitfile
from hecated.core.desired import SYSTEM_DIR, Apps
from hecated.core.errors import (
    InvalidFieldError,
    NotFoundError,
    NoUnitError,
    StillRegisteredError,
    SystemdUnavailableError,
    UnitFailedError,
    UnsafePathError,
)
from hecated.core.layout import Layout
from hecated.core.unitfile import UnitFile
from hecated.http.units import UnitControl

log = logging.getLogger("hecated.http.install")

TEXT_FIELDS = ("unit", "kind", "name")
INSTALL_FIELDS = frozenset({*TEXT_FIELDS, "path", "replace"})


class UnitVerifier(Protocol):
    """A second check of a unit file that passed the first (``core/unitfile``)."""

    def verify(self, unit: UnitFile) -> str | None:
        """The verifier's name when it found nothing wrong, None when it could not say;
        ``InvalidUnitFileError`` (with the line where it names one) for a finding."""


class Installer:
    """The gitops tree's ``apps/`` as the API writes it."""

    def __init__(
        self,
        layout: Layout,
        gitops_dir: Path,
        units: UnitControl | None = None,
        verifier: UnitVerifier | None = None,
    ) -> None:
        self.layout = layout
        self.apps = Apps(gitops_dir)
        self.system = Apps(gitops_dir, SYSTEM_DIR)  # looked at, never written
        self.units = units
        self.verifier = verifier

    def install(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """The answer's body, and whether a file was replaced; nothing is written
        unless both checks passed."""
        unit, replace = self.unit_file(body)
        verified = None if self.verifier is None else self.verifier.verify(unit)
        replaced = self.apps.install(unit, replace)
        answer = {
            "ok": True,
            "name": unit.name,
            "kind": unit.kind,
            "unit": unit.unit,
            "path": str(self.apps.path(unit.filename)),
            "replaced": [str(self.apps.path(f)) for f in replaced],
            "verified": verified,
        }
        return answer, bool(replaced)

    def unit_file(self, body: dict[str, Any]) -> tuple[UnitFile, bool]:
        """The checked unit file a request body names, and its ``replace``."""
        unknown = sorted(set(body) - INSTALL_FIELDS)
        if unknown:
            raise InvalidFieldError(f"unknown field(s): {', '.join(unknown)}")
        replace = body.get("replace", False)
        if not isinstance(replace, bool):
            raise InvalidFieldError(f"'replace' must be true or false (got {replace!r})")
        if "path" in body:
            if any(k in body for k in TEXT_FIELDS):
                raise InvalidFieldError("send either 'path' or 'unit', 'kind' and 'name'")
            name, kind, data = unitfile.read(body["path"])
        else:
            missing = [k for k in TEXT_FIELDS if k not in body]
            if missing:
                raise InvalidFieldError(
                    f"missing field(s) {', '.join(map(repr, missing))} (or send 'path')"
                )
            if not isinstance(body["unit"], str):
                raise InvalidFieldError("'unit' must be the unit file's text, a string")
            # A lone surrogate stays an invalid byte: the check names its line.
            data = body["unit"].encode("utf-8", "surrogatepass")
            name, kind = body["name"], unitfile.check_kind(body["kind"])
        self.layout.check_plugin_name(name)
        return unitfile.check(name, kind, data), replace

    def uninstall(self, name: str) -> dict[str, Any]:
        """Remove the file, then stop the unit. 404 when ``apps/`` has no file of the
        plugin; 409 when ``system/`` has one (the ecosystem's own: removing ``apps/``' file
        would not uninstall it).

        The file goes first: it is the desired state, and the reconciler, which checks a
        unit's file right before it starts it, then never starts this unit again, so no
        start of it is queued after this stop (one that was queued before, the reconciler's
        start of a file just installed, is what this stop replaces). The reconciler sees
        the file gone and stops the unit too (the same stop job), then unlinks and reloads.
        """
        self.layout.check_plugin_name(name)
        try:
            in_system = self.system.installed(name)
        except (UnsafePathError, OSError):  # a system/ the reconciler ignores too
            in_system = []
        if in_system:
            raise StillRegisteredError(
                f"plugin {name!r} is installed by gitops/{SYSTEM_DIR}/{in_system[0]}, which "
                "hecated does not write; remove it from the tree"
            )
        removed = self.apps.remove(name)
        if not removed:
            raise NotFoundError(
                f"plugin {name!r} is not installed: no {name}.service or {name}.container "
                f"in {self.apps.dir}"
            )
        unit = f"{name}.service"
        state, stopped = self._stop(unit)
        return {
            "ok": True,
            "name": name,
            "unit": unit,
            "stopped": stopped,
            "state": state,
            "removed": [str(self.apps.path(f)) for f in removed],
        }

    def _stop(self, unit: str) -> tuple[dict[str, Any] | None, bool]:
        """The unit's state after a stop, and whether one was made (its file already gone).

        Without a manager the answer is still 200: the reconciler stops the unit when it
        sees the file gone; its link stays until the stop is made (retried until a manager
        answers), so the unit is never left running with no file. A unit the manager does
        not know (never linked, already unlinked) has nothing to stop. A stop that fails
        is the 502 it is, saying the file is gone all the same."""
        if self.units is None:
            return None, False
        try:
            return self.units.stop(unit), True
        except NoUnitError:
            return None, False
        except SystemdUnavailableError as exc:
            log.warning("uninstall of %s: not stopped (%s); its file is removed", unit, exc)
            return None, False
        except UnitFailedError as exc:
            raise UnitFailedError(
                f"{exc.message}; its file is removed: the reconciler keeps its link and "
                "asks for the stop again",
                exc.result,
                exc.state,
                exc.logs,
            ) from exc

"""The plugins' units as the API wants them: the user manager and journald, in core errors.

The app (``hecated.http.units.UnitControl``) may not import the adapters; the
daemon builds this object and hands it in. It is a thin translation: each call
goes to ``unitcontrol.UserManager`` or ``journal``, and each of their exceptions
leaves as the core error the client is told about (``invalid_unit`` 400,
``no_unit`` 409, ``unit_failed`` 502 with the plugin's last log lines,
``systemd_unavailable`` 503). Neither jeepney nor systemd-python is imported
until a call needs it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from hecated.adapters import journal
from hecated.adapters.unitcontrol import JOB_TIMEOUT, JobOutcome, UserManager
from hecated.adapters.units import (
    InvalidUnitName,
    JobFailed,
    NoSuchUnit,
    SystemdUnavailable,
    UnitError,
    UnitState,
)
from hecated.adapters.unitstatus import unit_finding
from hecated.core.errors import (
    InvalidUnitError,
    NoUnitError,
    SystemdUnavailableError,
    UnitFailedError,
)
from hecated.core.status import UnitFinding

log = logging.getLogger("hecated.units")

FAILED_LINES = 20  # the plugin's last log lines a unit_failed answer carries
FOLLOW_WAIT = 0.5  # seconds a followed log sleeps in the journal before looking at `stop`


def no_unit_sentence(unit: str) -> str:
    """What to do about a plugin without a unit file, in one sentence."""
    return (
        f"the user manager has no unit {unit}: install one "
        f"(~/.config/systemd/user/{unit}, then systemctl --user daemon-reload) or name the "
        'plugin\'s unit with unit = "NAME.service" in its plugin.toml'
    )


class SystemdUnits:
    """``UnitControl`` over the current user's systemd manager and the journal."""

    def __init__(
        self,
        job_timeout: float = JOB_TIMEOUT,
        address: str | None = None,
        uid: int | None = None,
    ) -> None:
        self.manager = UserManager(address, job_timeout)
        self.uid = uid

    def start(self, unit: str) -> dict[str, Any] | None:
        return _as_block(self.job("start", unit))

    def stop(self, unit: str) -> dict[str, Any] | None:
        return _as_block(self.job("stop", unit))

    def restart(self, unit: str) -> dict[str, Any] | None:
        return _as_block(self.job("restart", unit))

    def job(self, action: str, unit: str, timeout: float | None = None) -> UnitFinding | None:
        """``start``, ``stop`` or ``restart`` of ``unit`` (within ``timeout``, else the
        job bound): the unit's finding just after the job, or the core error saying why
        not (a ``unit_failed`` carries the plugin's last lines). The control routes and
        the wing's on-demand start and idle stop (``wiring.OnDemandUnits``) both call
        this: one translation of the adapter's exceptions, one set of answers."""
        try:
            with translated(unit):
                outcome: JobOutcome = getattr(self.manager, action)(unit, timeout=timeout)
        except UnitFailedError as exc:
            exc.logs = self._last_lines(unit)
            raise
        return unit_finding(outcome.state)

    def logs(self, unit: str, lines: int) -> list[dict[str, Any]]:
        with translated(unit):
            return [line.as_dict() for line in journal.last_lines(unit, lines, self.uid)]

    def follow(self, unit: str, stop: threading.Event, backlog: int) -> Iterator[Any]:
        with translated(unit):
            reader = journal.open_reader(unit, self.uid)  # now: a failure is an error answer
        return _Followed(reader, _follow(reader, stop, backlog))

    def _last_lines(self, unit: str) -> list[dict[str, Any]]:
        """The plugin's last lines for a failure's answer; none when the journal is away."""
        try:
            return self.logs(unit, FAILED_LINES)
        except SystemdUnavailableError:
            return []


def _block(state: UnitState | None) -> dict[str, Any] | None:
    """A unit state as the API shows it everywhere: the ``unit`` block of a list entry."""
    return _as_block(unit_finding(state))


def _as_block(finding: UnitFinding | None) -> dict[str, Any] | None:
    return None if finding is None else finding.as_dict()


@contextlib.contextmanager
def translated(unit: str) -> Iterator[None]:
    """The adapter's exceptions as the core errors the API answers with."""
    try:
        yield
    except InvalidUnitName as exc:
        raise InvalidUnitError(str(exc)) from exc
    except NoSuchUnit as exc:
        raise NoUnitError(no_unit_sentence(unit)) from exc
    except JobFailed as exc:
        state = _block(exc.state)
        raise UnitFailedError(str(exc), exc.result, state) from exc
    except SystemdUnavailable as exc:
        raise SystemdUnavailableError(f"no systemd user manager: {exc}") from exc
    except journal.JournalUnavailable as exc:
        raise SystemdUnavailableError(f"the journal cannot be read: {exc}") from exc
    except UnitError as exc:  # any other refusal of the adapter: the manager's fault
        raise SystemdUnavailableError(str(exc)) from exc


class _Followed:
    """A followed log as the SSE body iterates it; ``close`` lets go of the journal
    reader even when no line was ever asked for (a client gone at the first write, a
    shutdown): a generator that never ran skips its ``finally``."""

    def __init__(self, reader: Any, lines: Iterator[dict[str, Any] | None]) -> None:
        self.reader = reader
        self.lines = lines

    def __iter__(self) -> _Followed:
        return self

    def __next__(self) -> dict[str, Any] | None:
        return next(self.lines)

    def close(self) -> None:
        self.lines.close()
        self.reader.close()  # again after the generator's own close: a no-op


def _follow(reader: Any, stop: threading.Event, backlog: int) -> Iterator[dict[str, Any] | None]:
    """As ``journal.follow``, but yielding None after each quiet wait: the SSE body then
    sends its heartbeats and sees the client gone or the daemon stopping."""
    try:
        for line in journal.backlog_of(reader, backlog):
            yield line.as_dict()
        while not stop.is_set():
            entry = reader.get_next()
            if entry:
                yield journal.line_of(entry).as_dict()
            else:
                reader.wait(FOLLOW_WAIT)
                yield None
    finally:
        reader.close()

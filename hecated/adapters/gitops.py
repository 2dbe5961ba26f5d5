"""hecated reconciles the gitops tree into the user manager: install and remove as files.

The ecosystem installs a plugin by putting its unit file into ``~/.hecate/gitops/``
(``hecate install``) and runs a bash loop beside the registry,
``hecate-reconciler.sh``, that links the files into the user manager's
directories. This is that loop, inside the registry, with the same semantics
(adapters/gitopslinks says which) so that both can run at once, and:

- one ``daemon-reload`` per burst of changes (adapters/gitopswatch: a ``git pull``
  that changes ten files reloads once), after the dangling links are gone (Quadlet's
  generator aborts on any);
- units whose file is new are started after the reload; a unit whose file is gone is
  stopped before its link goes; an edited file is reloaded, not restarted (the
  script does neither; a running plugin takes the new file at its next start,
  ``hecatectl restart`` applies it now);
- at start, whatever changed while hecated was not running: links made and removed,
  and a reload when a loaded unit's file changed (its NeedDaemonReload), so a
  socket-activated hecated catches up;
- each installed plugin gets its namespace and is listed with its file
  (``Index.set_installed``), registered or not, with a problem in words when its
  file cannot run here: no Quadlet (adapters/gitopsquadlet), something not ours in
  the way, no user manager (the links are made all the same, and the reload and
  starts are owed until one answers; a stop it could not make keeps the link and is
  owed too; a start that meets a stop job it did not make is owed and asked again
  until that stop has ended; owed starts and stops are kept in the primary's ``run/``
  for the next hecated, adapters/gitopsowed; ``pending`` says what keeps hecated from
  exiting idle).

It never runs a unit file's command, never follows a link out of the tree, never
touches a file in the unit directories that is not its own link into the tree,
and never deletes a plugin's data.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hecated.adapters.gitopslinks import (
    Plan,
    UnitDirs,
    Want,
    clean_tmp,
    config_home,
    dangles,
    is_own,
    linked,
    look,
    make_link,
    read_link,
    remove_link,
    replace_link,
    shown,
    unit_of_link,
)
from hecated.adapters.gitopsowed import STOPS, load_owed, save_owed
from hecated.adapters.gitopsquadlet import quadlet_problem
from hecated.adapters.gitopswatch import LONGEST, QUIET, Burst, TreeWatch
from hecated.adapters.units import (
    JobConflict,
    JobFailed,
    JobTimeout,
    NoSuchUnit,
    SystemdUnavailable,
    UnitError,
)
from hecated.core.errors import HecateError
from hecated.core.index import Index
from hecated.core.installed import SUBDIRS, Installed

log = logging.getLogger("hecated.adapters.gitops")

EVERY = 300.0  # a full look this often even when nothing was heard (the script's timeout)
RETRY_FIRST, RETRY_MOST = 1.0, 60.0  # seconds between tries while the manager is away
REARM = 5.0  # seconds between looks for a tree that is missing or was replaced
QUADLET_FOR = 60.0  # seconds a Quadlet finding stands (it runs podman --version)
WAIT_MOST = 120.0  # seconds starts waiting for another's job keep hecated up (then: on disk)


@dataclass
class Pass:
    """One reconciliation: the plan, and what was done of it."""

    plan: Plan
    touched: set[str]
    new: list[Want] = field(default_factory=list)  # linked now: started after the reload
    removed: list[Path] = field(default_factory=list)  # dangling links taken away
    restart: dict[str, Path] = field(default_factory=dict)  # stopped, file back: unit -> link
    failed: dict[str, str] = field(default_factory=dict)  # plugin -> why its link failed
    quadlet: str | None = None  # why no .container can run here (None: Quadlet is there)


class Reconciler:
    """Watches the gitops tree and keeps the unit directories and the manager in step.

    ``manager``: an ``adapters.unitcontrol.UserManager`` (reload, needs_reload, start,
    stop); ``dirs``: where links go (default: under ``$XDG_CONFIG_HOME``)."""

    def __init__(
        self,
        registry: Index,
        manager: Any,
        dirs: UnitDirs | None = None,
        quiet: float = QUIET,
        longest: float = LONGEST,
        every: float = EVERY,
    ) -> None:
        self.registry = registry
        self.layout = registry.layout
        self.gitops = registry.layout.gitops_dir
        self.manager = manager
        self.dirs = dirs or UnitDirs.of(config_home())
        self.every = every
        self.burst = Burst(quiet, max(longest, 3 * quiet))
        self.watch = TreeWatch(self.gitops, self.burst.touch)
        self.passes = 0
        self.reloads = 0  # daemon-reloads this reconciler asked for
        self._published: dict[str, Installed] = {}
        self._first = True
        self._owed_starts: set[str] = load_owed(self.layout)  # a hecated before this one's
        self._owed_reload = bool(self._owed_starts)
        self._kept = False  # the owed reload waits for an absent manager, the starts on disk
        self._waiting_until: float | None = None  # owed starts wait for a job: hold until
        # Stops not made (why, by unit; links kept), those a hecated before this one owed first.
        self._owed_stops: dict[str, UnitError] = {
            unit: SystemdUnavailable("owed by a hecated before this one")
            for unit in load_owed(self.layout, STOPS)
        }
        self._stops_kept = set(self._owed_stops)  # the owed stops on disk
        self._unverified = set(self._owed_stops)  # read from disk: whose unit is it now?
        self._unchecked = True  # units never loaded not yet looked for (at start)
        self._away: str | None = None  # why the manager could not be reached last
        self._retry_in = RETRY_FIRST
        self._retry_at: float | None = None
        self._quadlet: tuple[float, str | None] | None = None
        self._warned: set[str] = set()
        self._thread = threading.Thread(target=self._run, name="hecated-gitops", daemon=True)

    # -- life --------------------------------------------------------------------------------

    def start(self) -> Reconciler:
        """The tree's directories made (as ``hecate install`` does), watched, then a pass."""
        for folder in (self.gitops, *(self.gitops / sub for sub in SUBDIRS)):
            try:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                log.warning("cannot make %s: %s", folder, exc)
        self.watch.arm()
        self.burst.now()
        self._thread.start()
        log.info("reconciling %s into %s", self.gitops, ", ".join(map(str, self.dirs.all())))
        return self

    def close(self, timeout: float = 5.0) -> None:
        """No pass starts after this; one under way gets ``timeout`` seconds to end (a start
        job it waits for goes on in the manager all the same)."""
        self.burst.close()
        self.watch.stop()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def pending(self) -> bool:
        """Changes heard and not yet reconciled, a pass under way, a reload owed to a manager
        that failed it, or a stop owed for now (its job timed out or another's start
        canceled it; the manager away with the stop not on disk), or starts that wait for
        another's stop to end (WAIT_MOST at most; they are on disk): not a time to exit,
        what is owed would be lost. Not pending: a reload or a stop owed to a manager that
        is not there at all, kept on disk (adapters/gitopsowed: the next hecated's first
        pass makes them, staying up would do no more, and with no manager ever, forever),
        and a stop the manager refused for good (RefuseManualStop=yes...): its link stays,
        it is asked again at each pass."""
        waiting = self._waiting_until is not None and time.monotonic() < self._waiting_until
        return (
            self.burst.pending
            or (self._owed_reload and not self._kept)
            or any(self._stop_holds(unit, why) for unit, why in self._owed_stops.items())
            or (waiting and bool(self._owed_starts))
        )

    def _stop_holds(self, unit: str, why: UnitError) -> bool:
        """An owed stop that keeps hecated up: one that may be made soon, not on disk for
        the next hecated."""
        away = isinstance(why, SystemdUnavailable) and unit in self._stops_kept
        return _transient(why) and not away

    def request(self) -> None:
        """A pass now (a rescan: SIGHUP, ``POST /api/rescan``)."""
        self.burst.now()

    def _run(self) -> None:
        next_look = time.monotonic() + self.every
        while True:
            until = next_look if self._retry_at is None else min(next_look, self._retry_at)
            if not self.watch.current():  # no events can come: look again soon (a stat)
                until = min(until, time.monotonic() + REARM)
            touched = self.burst.take(until)
            if touched is None:
                return
            try:
                self.reconcile(touched)
            except Exception:
                log.exception("reconciling %s failed; the next change tries again", self.gitops)
            finally:
                self.burst.done()
            next_look = time.monotonic() + self.every

    # -- one pass ------------------------------------------------------------------------------

    def reconcile(self, touched: set[str]) -> Pass:
        """Look, remove what dangles (units stopped first), link what is wanted, publish,
        then one reload and the new units' starts when anything changed."""
        self.watch.arm()  # the tree replaced as a whole: watch the new one (read below)
        self._retry_at = None  # set again below while something is still owed
        p = Pass(look(self.layout, self.dirs), touched)
        self._warn_refused(p.plan)
        for tmp in p.plan.stale_tmp:  # no unit suffix: no reader took it, no reload
            if clean_tmp(tmp, self.gitops):
                log.info("removed %s (a link a pass before this one left half made)", tmp)
        self._remove(p)
        self._link(p)
        boxes = [w.desired.kind == "container" for w in p.plan.wants.values()]
        if any(boxes) or any(_box(dest) for dest in p.restart.values()):
            p.quadlet = self._quadlet_problem()
        self._publish(p)
        never = self._never_loaded(p)
        changed = p.removed or p.new or p.restart or never or self._edited(p)
        if changed or self._owed_reload or self._stale(p):
            self._reload_then_start(p, never)
        elif self._owed_starts:  # they met another's job: no reload, the starts again
            self._start_all(self._starts(p, set()))
        if any(map(_transient, self._owed_stops.values())) and self._retry_at is None:
            self._retry_later()  # a refused stop: asked again at the next pass, not sooner
        self._first = False
        self._publish(p)
        self.passes += 1
        return p

    def _remove(self, p: Pass) -> None:
        """Each dangling link: its unit stopped, then the link removed. A stop that fails
        keeps the link (harmless: its file is gone; without it the unit would run on with
        no file, never stopped) and is owed; a file back before the stop keeps both, one
        back during it keeps the link and the unit is started again. An owed stop is
        dropped only when its file is back, and its unit is then started again (the stop
        may still be under way, or have ended: either way the file says it runs); its link
        removed by hand, the unit would run on with no file, so it is still stopped."""
        owed, self._owed_stops = self._owed_stops, {}
        wants = {w.desired.unit: w.dest for w in p.plan.wants.values()}  # their file is there
        done = set(wants)
        for unit in sorted(owed.keys() & done):
            self._back_before_stop(p, unit, wants[unit])
        for dest in p.plan.dangling:
            unit = unit_of_link(dest)
            if not dangles(dest, self.gitops):  # its file came back, or the link went
                if unit is not None and os.path.lexists(dest):
                    done.add(unit)
                    if unit in owed:
                        self._back_before_stop(p, unit, dest)
                continue
            if unit is not None:
                done.add(unit)
                if not self._stop_or_owe(unit, owed):
                    continue
            if remove_link(dest, self.gitops):
                log.info("removed %s (its file left the gitops tree)", dest)
                p.removed.append(dest)
            elif unit is not None and not dangles(dest, self.gitops):
                p.restart[unit] = dest
        for unit in sorted(owed.keys() - done):  # its link is gone, its file is not back
            self._stop_or_owe(unit, owed)
        if set(self._owed_stops) != self._stops_kept:
            kept = save_owed(self.layout, set(self._owed_stops), STOPS)
            self._stops_kept = set(self._owed_stops) if kept else set()

    def _back_before_stop(self, p: Pass, unit: str, dest: Path) -> None:
        """A unit whose stop was owed has its file back: the stop is dropped and the unit
        started again (it may have stopped since, or be stopping: the start then waits)."""
        log.info("%s has its file back before its stop was made: started again", unit)
        p.restart[unit] = dest

    def _stop_or_owe(self, unit: str, owed: dict[str, UnitError]) -> bool:
        """Whether the unit is stopped; if not, its stop is owed."""
        failed = self._stop(unit, unit in owed)
        if failed is not None:
            self._owed_stops[unit] = failed
        return failed is None

    def _stop(self, unit: str, owed: bool) -> UnitError | None:
        """None when the unit is stopped (a unit the manager has not loaded is), else why
        not; logged the first time only (an owed stop is asked again at each pass)."""
        try:
            if unit in self._unverified and not self._still_ours(unit):
                return None  # dropped: not hecated's unit any more
            self.manager.stop(unit)
        except NoSuchUnit:
            return None
        except UnitError as exc:  # the manager away, or the stop refused, failed or timed out
            if isinstance(exc, SystemdUnavailable):
                self._away = str(exc)
            if not owed:
                when = "until it is made" if _transient(exc) else "at each pass"
                log.warning(
                    "stopping %s failed: %s; its link stays, asked again %s", unit, exc, when
                )
            return exc
        log.info("stopped %s: its file left the gitops tree", unit)
        return None

    def _still_ours(self, unit: str) -> bool:
        """A stop read from disk is made only on a unit still hecated's: its file our link
        into the tree (dangling or not), or no file at all (the link removed by hand: it
        runs on with none). Meanwhile the user may have put a file of their own in its
        place (the dangling link replaced by a hand-written unit): that one is not ours
        to stop. Asked once per unit; the manager's errors go to the caller (owed)."""
        fragment = self.manager.fragment(unit)
        self._unverified.discard(unit)
        if fragment is None:  # not in memory: not running, nothing to stop
            return False
        if not fragment or not os.path.lexists(fragment) or is_own(fragment, self.gitops):
            return True
        try:
            target = read_link(Path(fragment))
        except OSError:  # not a link: a file of someone else's
            target = None
        if target is not None and is_own(target, self.gitops):
            return True
        log.warning(
            "not stopping %s (a stop owed by a hecated before this one): it runs from %s, "
            "a file that is not hecated's link into the gitops tree",
            unit,
            shown(fragment),
        )
        return False

    def _link(self, p: Pass) -> None:
        for want, do in [(w, make_link) for w in p.plan.make] + [
            (w, replace_link) for w in p.plan.replace
        ]:
            name = want.desired.name
            try:
                done = do(want, self.gitops)
            except OSError as exc:
                p.failed[name] = f"cannot link it into {shown(want.dest.parent)}: {exc.strerror}"
                log.warning("cannot link %s to %s: %s", want.dest, want.src, exc)
                continue
            if done:
                log.info("linked %s -> %s", want.dest, want.src)
                p.new.append(want)
            else:
                p.plan.blocked[name] = want

    def _edited(self, p: Pass) -> bool:
        """A linked file changed since the last pass (not one linked just now)."""
        new = {w.src for w in p.new}
        return any(
            w.src in p.touched and w.src not in new and n not in p.plan.blocked
            for n, w in p.plan.wants.items()
        )

    def _stale(self, p: Pass) -> bool:
        """At start only: a loaded unit's file changed while hecated was not running."""
        if not self._first:
            return False
        new = {w.src for w in p.new}
        for name, want in p.plan.wants.items():
            if want.src in new or name in p.plan.blocked:
                continue
            try:
                if self.manager.needs_reload(want.desired.unit):
                    return True
            except UnitError as exc:
                log.debug("asking whether %s needs a reload: %s", want.desired.unit, exc)
                return isinstance(exc, SystemdUnavailable)
        return False

    def _quadlet_problem(self) -> str | None:
        now = time.monotonic()
        if self._quadlet is None or now - self._quadlet[0] > QUADLET_FOR:
            self._quadlet = (now, quadlet_problem())
        return self._quadlet[1]

    def _warn_refused(self, plan: Plan) -> None:
        for path, why in plan.refused.items():
            if path not in self._warned:
                self._warned.add(path)
                log.warning("%s is not linked: its name is no plugin's (%s)", path, why)
        for folder, why in plan.unsafe.items():
            if folder not in self._warned:  # no plugin to carry it: the log says it
                self._warned.add(folder)
                log.warning("%s is not read, none of its files is linked: %s", folder, why)

    # -- the manager ---------------------------------------------------------------------------

    def _never_loaded(self, p: Pass) -> set[str]:
        """Once, at start (the first pass the manager answers): wanted, linked units it has
        never loaded (LoadState not-found) are new, so started after the reload: their
        start was owed when a hecated before this one ended."""
        if not self._unchecked:
            return set()
        new = {w.src for w in p.new}
        units = set()
        for name, want in p.plan.wants.items():
            if want.src in new or name in p.plan.blocked or name in p.failed:
                continue
            try:
                if self.manager.state(want.desired.unit).load_state == "not-found":
                    units.add(want.desired.unit)
            except NoSuchUnit:  # it cannot be loaded (yet): never loaded
                units.add(want.desired.unit)
            except SystemdUnavailable as exc:
                log.debug("asking whether %s is loaded: %s", want.desired.unit, exc)
                return set()  # asked again at the next pass
            except UnitError as exc:
                log.debug("asking whether %s is loaded: %s", want.desired.unit, exc)
        self._unchecked = False
        return units

    def _starts(self, p: Pass, never: set[str]) -> dict[str, Path]:
        """The units to start, with their links: linked now, owed, never loaded, back."""
        links = {w.desired.unit: w.dest for w in p.plan.wants.values() if not _cannot_run(w, p)}
        starts = {w.desired.unit for w in p.new if not _cannot_run(w, p)} | self._owed_starts
        starts = (starts | never) & links.keys()
        for unit, dest in p.restart.items():  # their file came back after their stop
            if not (_box(dest) and p.quadlet is not None):
                starts.add(unit)
                links[unit] = dest
        return {unit: links[unit] for unit in starts}

    def _reload_then_start(self, p: Pass, never: set[str]) -> None:
        starts = self._starts(p, never)
        try:
            self.manager.reload()
        except UnitError as exc:
            self._owe(set(starts), exc)
            return
        self.reloads += 1
        self._back()
        log.info("reloaded the user manager (%d file(s) changed)", len(p.new) + len(p.removed))
        self._start_all(starts)

    def _start_all(self, starts: dict[str, Path]) -> None:
        """Each unit started, unless its file left the tree since the look (an uninstall,
        a ``git pull``, during the reload or an earlier start): that unit is stopped by the
        pass its removal brings, never started here. The start is systemd's mode ``fail``:
        it never cancels a stop queued meanwhile (an uninstall's, a person's, the wing's
        idle stop), which then ends as asked; the start is owed and asked again soon (the
        file is still there: the unit must run), until that stop has ended."""
        left: set[str] = set()
        waiting: set[str] = set()
        away: SystemdUnavailable | None = None
        for unit in sorted(starts):
            if not linked(starts[unit], self.gitops):
                log.info("not starting %s: its file left the gitops tree", unit)
                continue
            try:
                self.manager.start(unit, mode="fail")
                log.info("started %s: its file is new in the gitops tree", unit)
            except SystemdUnavailable as exc:
                left, away = left | {unit}, exc
            except JobConflict as exc:
                if unit not in self._owed_starts:
                    log.info("starting %s waits for a job already queued: %s", unit, exc)
                waiting.add(unit)
            except UnitError as exc:
                log.warning("starting %s failed: %s", unit, exc)
        self._settle(left, away, waiting)

    def _settle(self, left: set[str], away: SystemdUnavailable | None, waiting: set[str]) -> None:
        """After every start was tried, the owed starts are only those the manager went
        away for or that met another's job: the file rewritten (removed when none) last,
        so a hecated killed during the starts loses none of them (the next one makes them
        again; a start is no-op on a running unit). Those that wait keep hecated up for
        WAIT_MOST at most (a stop that never ends must not keep it forever): then they
        are on disk only, for the next hecated."""
        had, self._owed_starts = self._owed_starts, set()
        if away is not None:
            self._owe(left | waiting, away)
        elif waiting:
            self._owed_starts = waiting
            if waiting != had:
                save_owed(self.layout, waiting)
            self._retry_later()
        elif had:
            save_owed(self.layout, set())
        if not waiting:
            if self._waiting_until is not None and away is None:
                self._retry_in = RETRY_FIRST  # the backoff was theirs: the next wait starts short
            self._waiting_until = None
        elif self._waiting_until is None:
            self._waiting_until = time.monotonic() + WAIT_MOST

    def _owe(self, starts: set[str], exc: Exception) -> None:
        """The reload (and these starts) are owed: tried again, later and later, until the
        manager answers."""
        self._owed_reload = True
        if not starts <= self._owed_starts or not self._kept:
            self._owed_starts |= starts
            self._kept = save_owed(self.layout, self._owed_starts)
        self._kept = self._kept and isinstance(exc, SystemdUnavailable)
        if self._away is None:
            log.warning("the user manager did not reload: %s; retrying until it does", exc)
        self._away = str(exc)
        self._retry_later()

    def _retry_later(self) -> None:
        self._retry_at = time.monotonic() + self._retry_in
        self._retry_in = min(self._retry_in * 2, RETRY_MOST)

    def _back(self) -> None:
        if self._away is not None:
            log.info("the user manager answers again: what was owed is done")
        self._away, self._owed_reload, self._kept = None, False, False  # starts: _settle
        self._retry_in, self._retry_at = RETRY_FIRST, None

    # -- the index -----------------------------------------------------------------------------

    def _publish(self, p: Pass) -> None:
        """Each plugin's ``Installed`` into the index, its namespace made first; a plugin
        whose file went is published as not installed (its data stays)."""
        now = {name: self._installed(name, want, p) for name, want in p.plan.wants.items()}
        for name, want in p.plan.not_regular.items():
            now[name] = _entry(
                want,
                f"{shown(want.src)} is not a regular file: hecated links "
                "only regular files of the gitops tree, never a symlink",
            )
        for name in sorted(now.keys() - self._published.keys()):
            try:
                self.layout.ensure_namespace(name)
            except (OSError, HecateError) as exc:  # a file, a link or another user's in the way
                log.warning("cannot make the namespace of %s: %s", name, exc)
        for name in sorted(now):
            self.registry.set_installed(name, now[name])
        for name in sorted(self._published.keys() - now.keys()):
            self.registry.set_installed(name, None)
        self._published = now

    def _installed(self, name: str, want: Want, p: Pass) -> Installed:
        if name in p.plan.blocked:
            dest = shown(p.plan.blocked[name].dest)
            return _entry(want, f"a file that is not hecated's link is in the way: {dest}")
        if name in p.failed:
            return _entry(want, p.failed[name])
        if want.desired.kind == "container" and p.quadlet:
            return _entry(want, p.quadlet, linked=True)
        if self._away is not None:
            why = f"linked, but no systemd user manager has loaded it ({self._away}); " + (
                "hecated tries again until one answers"
            )
            return _entry(want, why, linked=True)
        return _entry(want, None, linked=True)


def _entry(want: Want, problem: str | None, linked: bool = False) -> Installed:
    d = want.desired
    return Installed(d.path, d.kind, d.unit, linked, problem)


def _transient(exc: UnitError) -> bool:
    """A failure that may pass by itself (the manager away, a job still running, a stop
    another's start canceled: a person's, the wing's on-demand one, as uninstall's 502
    says, the stop is asked again, so soon), as opposed to a refusal
    (RefuseManualStop=yes, a job that failed) that asking again soon would only repeat."""
    canceled = isinstance(exc, JobFailed) and exc.result == "canceled"
    return canceled or isinstance(exc, (SystemdUnavailable, JobTimeout))


def _box(link: Path) -> bool:
    """A link that makes a container's unit (Quadlet's), not a service's."""
    return link.suffix == ".container"


def _cannot_run(want: Want, p: Pass) -> bool:
    return want.desired.kind == "container" and p.quadlet is not None

"""The start scan's helpers: the manifest cache kept across restarts, and a forked
child that reads and parses part of a large tree never seen.

Only the daemon's first scan uses the child (``Index.scan(at_start=True)``):
nothing is served and nobody writes through the store yet, so no name's lock
needs holding between a read and its publication, and no other thread runs
(a fork copies locks other threads may hold). Everything the child finds is
checked by the parent; any failure of the child (refused fork, death, an answer
that makes no sense) costs only time: the parent reads those names itself.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from hecated.core.errors import StorageError, UnsafePathError
from hecated.core.files import open_dir, opened
from hecated.core.layout import INDEX_CACHE_FILE, RUN_DIR, Layout
from hecated.core.manifest import Manifest
from hecated.core.manifestcache import Key
from hecated.core.runstate import RunState, read_run
from hecated.core.store import Entry, Found, Raw, Root, Store

log = logging.getLogger("hecated.core.startscan")

# Below this many files a fork costs more than the parsing it shares (~100 µs a file).
PARALLEL_MIN = 1000
# The parent's share: it also publishes what it reads (the run dirs, the index) while
# the child only reads and parses, so the child takes the larger part.
PARENT_SHARE = 0.47


@dataclass(frozen=True)
class ChildRead:
    """One valid file as the child read it: its identity before and after, when the
    read started, its manifest, and the namespace's run dir, read through the same fd
    (the parent would otherwise open each namespace a second time to read it)."""

    before: Key | None
    after: Key | None
    started: int
    manifest: Manifest
    run: RunState


def split_point(count: int, cached: int) -> int:
    """Where the child's part of ``count`` names starts (``count``: no child).

    A child pays only with a second CPU, enough files to parse (a restart finds
    most of them in the manifest cache), and no other thread running.
    """
    if (
        count - cached < PARALLEL_MIN
        or len(os.sched_getaffinity(0)) < 2
        or threading.active_count() != 1
        or not hasattr(os, "fork")
    ):
        return count
    return int(count * PARENT_SHARE)


Read = tuple[str, Found, RunState | None]


def read_each(store: Store, names: list[str], root: Root) -> Iterator[Read]:
    """Each name's entry in order, the same as ``store.read(name, root, cached=True)``
    each, with its run dir read through the same namespace fd (None: not read, the
    caller reads it); on a large tree never seen, the later names read and parsed by
    a forked child while these are read here and published by the caller.

    The child is reaped and its pipe closed however the scan ends (an exception
    in the caller, a generator dropped half-way). The cyclic garbage collector is off
    meanwhile: a scan makes objects by the ten thousand and no cycles, and each
    collection it set off walked every object made so far (5 % of the scan's time).
    """
    split = split_point(len(names), len(store.cache))
    child = ReadChild.start(store, names[split:], root) if split < len(names) else None
    collecting = gc.isenabled()
    gc.disable()
    try:
        for name in names[:split]:
            yield read_here(store, name, root)
        theirs = child.results() if child is not None else None
        for i, name in enumerate(names[split:]):
            got = theirs[i] if theirs is not None else None
            if got is None:  # not read there, or not a plain valid file: read it here
                yield read_here(store, name, root)
                continue
            store.adopt(name, got.before, got.after, got.started, got.manifest)
            yield name, Found(Entry(name, manifest=got.manifest)), got.run
    finally:
        if collecting:
            gc.enable()
        if child is not None:
            child.discard()


def read_here(store: Store, name: str, root: Root) -> Read:
    """``store.read(name, root, cached=True)`` and the run dir, the namespace opened once."""
    try:
        ns_fd = root.namespace(name)
    except (OSError, UnsafePathError):  # the store says what a namespace like that means
        return name, store.read(name, root, cached=True), None
    with opened(ns_fd):
        return name, store.read_in(name, ns_fd, cached=True), read_run(ns_fd)


def read_valid(store: Store, name: str, root: Root) -> ChildRead | None:
    """For the child: a valid file's manifest, identity and run dir; None for anything
    else (absent, cached, invalid, unreadable), which the parent reads itself."""
    step = store.fetch(name, root, cached=True)
    if not isinstance(step, Raw):
        return None
    assert step.ns_fd is not None
    with opened(step.ns_fd):
        parsed = store.parse_raw(step)
        if not isinstance(parsed, Manifest):
            return None
        return ChildRead(step.before, step.after, step.started, parsed, read_run(step.ns_fd))


class ReadChild:
    """A forked child reading and parsing the later names while the parent does the rest.

    It sends back one pickled list, per name a ``ChildRead`` of a valid file, or
    None: the parent reads those names itself, so what an invalid, missing or odd
    file says is never the child's. Any failure of the child reads as "nothing
    read", and any entry that is not a ``ChildRead`` as "not read".
    """

    def __init__(self, pid: int, fd: int, count: int) -> None:
        self.pid, self.fd, self.count = pid, fd, count

    @classmethod
    def start(cls, store: Store, names: list[str], root: Root) -> ReadChild | None:
        try:
            rfd, wfd = os.pipe2(os.O_CLOEXEC)
        except OSError:
            return None
        try:
            pid = os.fork()
        except OSError:
            os.close(rfd)
            os.close(wfd)
            return None
        if pid == 0:  # pragma: no cover - the child; its output is checked by the parent
            os.close(rfd)
            _child_main(store, names, root, wfd)
        os.close(wfd)
        return cls(pid, rfd, len(names))

    def results(self) -> list[ChildRead | None] | None:
        """The child's findings, in order; None when it failed in any way."""
        import pickle  # here, not at the top: 2 ms of every cold start otherwise

        fd, self.fd = self.fd, -1  # the pipe's now: closed with it, whatever happens
        try:
            with os.fdopen(fd, "rb") as pipe:
                data = pipe.read()
        except OSError:
            data = b""
        status = self._reap()
        if status != 0 or not data:
            log.warning("the reading child failed (status %d); reading its part here", status)
            return None
        try:
            out = pickle.loads(data)
        except Exception:
            log.warning("the reading child's answer is unreadable; reading its part here")
            return None
        if not isinstance(out, list) or len(out) != self.count:
            log.warning("the reading child's answer is malformed; reading its part here")
            return None
        return [
            x if isinstance(x, ChildRead) and isinstance(x.manifest, Manifest) else None
            for x in out
        ]

    def discard(self) -> None:
        """However the scan ended: the pipe closed, the child stopped and reaped
        (nothing when ``results`` already took both)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        if self.pid > 0:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            self._reap()

    def _reap(self) -> int:
        pid, self.pid = self.pid, 0
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return 1
        return status


def _child_main(store: Store, names: list[str], root: Root, wfd: int) -> None:  # pragma: no cover
    """The child's whole life: read, parse, send one pickled list, exit."""
    import pickle

    code = 1
    try:
        gc.disable()  # a collection would touch, and so copy, every page shared with the parent
        logging.disable(logging.CRITICAL)  # the parent says it, if anything, once
        out: list[ChildRead | None] = []
        for name in names:
            try:
                out.append(read_valid(store, name, root))
            except Exception:
                out.append(None)
        with os.fdopen(wfd, "wb") as pipe:
            pipe.write(pickle.dumps(out, pickle.HIGHEST_PROTOCOL))
        code = 0
    finally:
        os._exit(code)


# -- the manifest cache, kept in the primary's run/ across restarts ------------------------


def load_cache(store: Store, layout: Layout) -> int:
    """Take the manifest cache a previous run saved; 0 entries when there is none."""
    try:
        with opened(_run_fd(layout)) as run_fd:
            return store.cache.load(run_fd, INDEX_CACHE_FILE)
    except (OSError, UnsafePathError):
        return 0


def save_cache(store: Store, layout: Layout) -> bool:
    """Save the manifest cache (atomically) if it changed; a failure only costs speed."""
    try:
        with opened(_run_fd(layout)) as run_fd:
            return store.cache.save(run_fd, INDEX_CACHE_FILE)
    except (OSError, UnsafePathError, StorageError) as exc:
        log.warning("cannot save the manifest cache: %s", exc)
        return False


def _run_fd(layout: Layout) -> int:
    with opened(layout.open_namespace(layout.primary_name)) as ns_fd:
        return open_dir(ns_fd, RUN_DIR)

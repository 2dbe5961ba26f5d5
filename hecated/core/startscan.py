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
import dataclasses
import gc
import logging
import mmap
import operator
import os
import signal
import struct
import threading
from collections.abc import Iterator

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
# Names the child claims at a time, from the end of the list: at most this many are read
# by both processes where they meet (the parent's read is the one kept).
BATCH = 32


@dataclasses.dataclass(frozen=True)
class ChildRead:
    """One valid file as the child read it: its identity before and after, when the
    read started, its manifest, and the namespace's run dir, read through the same fd
    (the parent would otherwise open each namespace a second time to read it)."""

    before: Key | None
    after: Key | None
    started: int
    manifest: Manifest
    run: RunState

    def wire(self) -> tuple:
        """As plain tuples for the pipe: half the pickling of the dataclasses, and a
        fifth of their unpickling, which the parent does while nothing is served."""
        run = (self.run.pid, self.run.state)
        return (self.before, self.after, self.started, _MANIFEST_FIELDS(self.manifest), run)

    @classmethod
    def unwire(cls, wired: object) -> ChildRead | None:
        """``wire``'s inverse; None for anything that is not what ``wire`` makes."""
        try:
            before, after, started, fields, (pid, state) = wired  # type: ignore[misc]
            return cls(before, after, started, Manifest(*fields), RunState(pid, state))
        except (TypeError, ValueError):
            return None


_MANIFEST_FIELDS = operator.attrgetter(*(f.name for f in dataclasses.fields(Manifest)))


def parallel(count: int, cached: int) -> bool:
    """Whether to read with a child: it pays only with a second CPU, enough files to
    parse (a restart finds most of them in the manifest cache), and no other thread
    running."""
    return not (
        count - cached < PARALLEL_MIN
        or len(os.sched_getaffinity(0)) < 2
        or threading.active_count() != 1
        or not hasattr(os, "fork")
    )


Read = tuple[str, Found, RunState | None]


def read_each(store: Store, names: list[str], root: Root) -> Iterator[Read]:
    """Each name's entry in order, the same as ``store.read(name, root, cached=True)``
    each, with its run dir read through the same namespace fd (None: not read, the
    caller reads it); on a large tree never seen, a forked child reads and parses
    names from the end of the list while this process reads (and the caller
    publishes) them from the start, until the two meet (``Board``): however busy
    either CPU is, neither waits long for the other.

    The child is reaped and its pipe closed however the scan ends (an exception
    in the caller, a generator dropped half-way). The cyclic garbage collector is off
    meanwhile: a scan makes objects by the ten thousand and no cycles, and each
    collection it set off walked every object made so far (5 % of the scan's time).
    """
    yield from read_with(store, names, root, start_child(store, names, root))


def start_child(store: Store, names: list[str], root: Root) -> ReadChild | None:
    """A child reading ``names`` from the end, when one pays (``parallel``); else None."""
    return ReadChild.start(store, names, root) if parallel(len(names), len(store.cache)) else None


def read_with(
    store: Store, names: list[str], root: Root, child: ReadChild | None
) -> Iterator[Read]:
    """``read_each`` with the child already started (or None: all read here), which
    this generator owns from now on: reaped however the scan ends."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        stop = len(names)
        for i, name in enumerate(names):
            if child is not None and not child.board.parent_takes(i):
                stop = i
                break
            yield read_here(store, name, root)
        yield from _theirs(store, names, stop, root, child)
    finally:
        if collecting:
            gc.enable()
        if child is not None:
            child.discard()


def _theirs(
    store: Store, names: list[str], stop: int, root: Root, child: ReadChild | None
) -> Iterator[Read]:
    """The names from ``stop`` on, as the child read them; the ones it did not (or could
    not: not a plain valid file, or the child failed) read here."""
    low, theirs = child.results() if child is not None else (len(names), [])
    for i in range(stop, len(names)):
        name = names[i]
        got = theirs[i - low] if i >= low else None
        if got is None:
            yield read_here(store, name, root)
            continue
        store.adopt(name, got.before, got.after, got.started, got.manifest)
        yield name, Found(Entry(name, manifest=got.manifest)), got.run


@dataclasses.dataclass
class HeadStart:
    """The start scan begun before the daemon's heavier imports (``Index.head_start``):
    the root opened, its names listed, the reading child forked over them.

    Forked from the command line's thread, before any other thread exists, the
    child reads from the end of the list while this process still imports the
    HTTP server and the adapters (~100 ms of a cold start); the scan then picks
    up where the board says. Listing the names this early is the same as a scan
    that took that much longer: the watcher's own rescan covers what changes after.
    """

    root: Root
    names: list[str]
    child: ReadChild | None

    @classmethod
    def begin(cls, store: Store) -> HeadStart:
        root = Root(store.layout)
        try:
            names = root.names()
            return cls(root, names, start_child(store, names, root))
        except BaseException:
            root.close()
            raise

    def child_for(self, names: list[str]) -> ReadChild | None:
        """The child, when it reads these very names (else it is stopped: None)."""
        child, self.child = self.child, None
        if child is not None and names != self.names:
            child.discard()
            return None
        return child

    def close(self) -> None:
        """A start that never scanned (it failed first): the child stopped, the root closed."""
        if self.child is not None:
            self.child.discard()
            self.child = None
        self.root.close()


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


class Board:
    """Where the two readers meet, in a page both processes share: the parent's next
    name and the lowest name the child has claimed.

    The parent takes names one by one from the start while they are below the
    child's claim; the child claims ``BATCH`` names at a time from the end, never
    below the parent's next. Both may read the names of the last claim (the parent
    looked before the child claimed); the parent keeps its own reads there. What
    either reads here only moves the meeting point: the parent reads whatever the
    child's answer does not cover, so the list never depends on this page.
    """

    _SLOT = struct.Struct("i")  # aligned 4-byte slots: each written in one store

    def __init__(self, count: int) -> None:
        self._page = mmap.mmap(-1, 2 * self._SLOT.size)  # anonymous and shared across fork
        self._SLOT.pack_into(self._page, 0, 0)
        self._SLOT.pack_into(self._page, self._SLOT.size, count)

    def parent_takes(self, i: int) -> bool:
        """Name ``i`` for the parent; False once the child has claimed it."""
        if i >= self._SLOT.unpack_from(self._page, self._SLOT.size)[0]:
            return False
        self._SLOT.pack_into(self._page, 0, i + 1)
        return True

    def child_claims(self, low: int) -> int:
        """The child's next claim below ``low``: its new lowest name (``low``: none left)."""
        new = max(low - BATCH, self._SLOT.unpack_from(self._page, 0)[0])
        if new < low:
            self._SLOT.pack_into(self._page, self._SLOT.size, new)
        return min(new, low)

    def close(self) -> None:
        self._page.close()


class ReadChild:
    """A forked child reading and parsing names from the end while the parent reads
    from the start (``Board``).

    It sends back one pickled pair: the first name it read, and per name from there
    on a ``ChildRead`` of a valid file (as ``ChildRead.wire`` makes it), or None: the
    parent reads those names itself, so what an invalid, missing or odd file says is
    never the child's. Any failure of the child reads as "nothing read", and any
    entry that is not what ``wire`` makes as "not read".
    """

    def __init__(self, pid: int, fd: int, count: int, board: Board) -> None:
        self.pid, self.fd, self.count, self.board = pid, fd, count, board

    @classmethod
    def start(cls, store: Store, names: list[str], root: Root) -> ReadChild | None:
        try:
            rfd, wfd = os.pipe2(os.O_CLOEXEC)
        except OSError:
            return None
        board = Board(len(names))
        try:
            pid = os.fork()
        except OSError:
            os.close(rfd)
            os.close(wfd)
            board.close()
            return None
        if pid == 0:  # pragma: no cover - the child; its output is checked by the parent
            try:
                os.close(rfd)
                _child_main(store, names, root, wfd, board)
            finally:
                os._exit(1)  # never back into the parent's code, whatever went wrong
        os.close(wfd)
        return cls(pid, rfd, len(names), board)

    def results(self) -> tuple[int, list[ChildRead | None]]:
        """The first name the child read and its findings from there, in order; nothing
        (``count``, []) when it failed in any way."""
        fd, self.fd = self.fd, -1  # the pipe's now: closed with it, whatever happens
        try:
            with os.fdopen(fd, "rb") as pipe:
                data = pipe.read()
        except OSError:
            data = b""
        status = self._reap()
        nothing: tuple[int, list[ChildRead | None]] = (self.count, [])
        if status != 0:  # (0 and nothing sent: the parent read every name first)
            log.warning("the reading child failed (status %d); reading its part here", status)
            return nothing
        try:
            answer = _claims(data, self.count)
        except Exception:
            log.warning("the reading child's answer is unreadable; reading its part here")
            return nothing
        if answer is None:
            log.warning("the reading child's answer is malformed; reading its part here")
            return nothing
        low, out = answer
        return low, [None if x is None else ChildRead.unwire(x) for x in out]

    def discard(self) -> None:
        """However the scan ended: the pipe closed, the child stopped and reaped
        (nothing when ``results`` already took both), the board unmapped."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        if self.pid > 0:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            self._reap()
        self.board.close()

    def _reap(self) -> int:
        pid, self.pid = self.pid, 0
        try:
            _, status = os.waitpid(pid, 0)
        except ChildProcessError:
            return 1
        return status


def _child_main(  # pragma: no cover - its output is checked by the parent
    store: Store, names: list[str], root: Root, wfd: int, board: Board
) -> None:
    """The child's whole life: claim, read and parse from the end until it meets the
    parent, send its claims, exit.

    Each claim is pickled as it is read, a pair (its first name, the findings from
    there): pickled at the end, all of it, the parent would wait for that too."""
    import pickle

    gc.disable()  # a collection would touch, and so copy, every page shared with the parent
    logging.disable(logging.CRITICAL)  # the parent says it, if anything, once
    low, claims = len(names), []
    while (new := board.child_claims(low)) < low:
        found = [_wired(store, name, root) for name in names[new:low]]
        claims.append(pickle.dumps((new, found), pickle.HIGHEST_PROTOCOL))
        low = new
    with os.fdopen(wfd, "wb") as pipe:
        pipe.write(b"".join(claims))
    os._exit(0)


def _claims(data: bytes, count: int) -> tuple[int, list] | None:
    """The child's claims (pickled pairs, from the end down) as one pair: the first name
    it read and its findings from there in order; None when they do not fit together."""
    import io
    import pickle  # here, not at the top: 2 ms of every cold start otherwise

    stream, parts, low = io.BytesIO(data), [], count
    while stream.tell() < len(data):
        first, found = pickle.Unpickler(stream).load()  # its own memo, as it was pickled
        if not (isinstance(first, int) and isinstance(found, list) and 0 <= first < low):
            return None
        if len(found) != low - first:
            return None
        parts.append(found)
        low = first
    return low, [x for part in reversed(parts) for x in part]


def _wired(store: Store, name: str, root: Root) -> tuple | None:  # pragma: no cover
    try:
        read = read_valid(store, name, root)
    except Exception:
        return None
    return None if read is None else read.wire()


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

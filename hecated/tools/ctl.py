"""``hecatectl``: everything the API offers, for people and shell scripts.

Built on the SDK (``hecated.client``): one client, not two. Every command
prints readable text by default and the API's JSON with ``--json``; errors are
one line on stderr, and the exit code says what kind of failure it was (see
``Exit``), so scripts can branch on it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

from hecated import __version__
from hecated.client import (
    ApiError,
    ClientError,
    DaemonUnavailableError,
    DesiredInfo,
    HecateClient,
    InvalidUnitFileError,
    LogLine,
    NotFoundError,
    PluginInfo,
    PluginSummary,
    Snapshot,
    UnitFailedError,
    UnitInfo,
)
from hecated.protocol import PLUGIN_OK, PLUGIN_STOPPED, PluginStatus

PROG = "hecatectl"
START_HINT = "start it with `systemctl --user start hecate.socket` (or run `hecated`)"
# Long enough to ride out a daemon restarting, short enough that "not running" is prompt.
CONNECT_RETRY = 0.5
UNIT_VERBS = ("start", "stop", "restart")
PATH_FIELDS = ("base_dir", "sqlite", "reckon_db", "sockets", "run", "connectors", "socket")


class Exit(IntEnum):
    """Exit codes scripts can rely on."""

    OK = 0
    ERROR = 1  # the API refused (invalid name, conflict, ...), or doctor found problems
    USAGE = 2  # bad command line (argparse's own code)
    NOT_RUNNING = 3  # nothing answers on the socket
    NOT_FOUND = 4  # no such plugin or namespace
    INTERRUPTED = 130


class CommandError(Exception):
    """A failure hecatectl itself detected; printed as one line."""

    def __init__(self, message: str, code: Exit = Exit.ERROR) -> None:
        super().__init__(message)
        self.code = code


# -- the command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Talk to hecated, the Hecate plugin registry.",
        epilog="Exit codes: 0 ok, 1 error (API refused, problems found), 2 usage, "
        "3 daemon not running, 4 no such plugin.",
    )
    _common_options(parser, json=False, socket=None)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        # Also accepted after the command; SUPPRESS keeps them from resetting the global ones.
        _common_options(p, json=argparse.SUPPRESS, socket=argparse.SUPPRESS)
        return p

    ls = add("list", "list registered plugins: name, version, status, socket")
    ls.add_argument("-q", "--quiet", action="store_true", help="print the names only")
    add("show", "everything about one plugin, with its paths").add_argument("name")
    paths = add("paths", "a plugin's directories, shell-friendly")
    paths.add_argument("name")
    paths.add_argument(
        "--field",
        type=lambda s: s.replace("-", "_"),
        choices=PATH_FIELDS,
        help="print just this one path",
    )
    _register_args(add("register", "register a plugin (creates its namespace) and print its paths"))
    add("deregister", "remove a registry entry (keeps the data)").add_argument("name")
    purge = add("purge", "delete a deregistered plugin's namespace and all its data")
    purge.add_argument("name")
    purge.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    add("status", "is hecated running: socket, pid, version, uptime, plugin count")
    doctor = add("doctor", "check ~/.hecate, sockets, pid files, plugin.toml files, units")
    doctor.add_argument(
        "--strict", action="store_true", help="warnings count as problems for the exit code"
    )
    _watch_args(add("watch", "print registry changes as they happen (Ctrl-C to stop)"))
    _unit_commands(add)
    _install_commands(add)
    comp = add("completion", "print the bash completion script")
    comp.add_argument("shell", choices=["bash"], nargs="?", default="bash")
    return parser


def _watch_args(watch: argparse.ArgumentParser) -> None:
    watch.add_argument(
        "--wait",
        type=float,
        default=30.0,
        metavar="S",
        help="long-poll seconds, for a daemon without /api/events (default 30)",
    )
    watch.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds between tries while the daemon is away (default 1)",
    )
    watch.add_argument(
        "--count", type=int, metavar="N", help="exit after N changes (default: run until Ctrl-C)"
    )


def _register_args(reg: argparse.ArgumentParser) -> None:
    reg.add_argument("name")
    # Left out: the plugin's own GET /manifest says (a discovered plugin), else empty.
    reg.add_argument("--version", dest="plugin_version", default=None, metavar="V")
    reg.add_argument("--description", default=None, metavar="D")
    reg.add_argument(
        "--unit",
        default=None,
        metavar="UNIT",
        help="the systemd user unit that runs it (default: NAME.service; kept when left out)",
    )


def _unit_commands(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """start, stop, restart and logs: the plugin's unit, through hecated (issue 20)."""
    for verb in UNIT_VERBS:
        add(verb, f"{verb} a plugin's systemd user unit and wait for the job").add_argument("name")
    logs = add("logs", "a plugin's unit's journal lines; -f: follow new ones (Ctrl-C to stop)")
    logs.add_argument("name")
    logs.add_argument(
        "-n", "--lines", type=int, default=None, metavar="N", help="last N lines (default 100)"
    )
    logs.add_argument("-f", "--follow", action="store_true", help="print new lines as they come")


def _install_commands(add: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """install and uninstall: plugins as unit files in the gitops tree (issue 21)."""
    install = add(
        "install",
        "install a plugin from NAME.service or NAME.container: checked, then written into "
        "the gitops tree, which hecated links, reloads and starts",
    )
    install.add_argument("file", metavar="FILE")
    install.add_argument(
        "--replace", action="store_true", help="replace the plugin's unit file if it has one"
    )
    add("uninstall", "stop a plugin's unit and remove its unit file (keeps its data)").add_argument(
        "name"
    )


def _common_options(parser: argparse.ArgumentParser, json: Any, socket: Any) -> None:
    parser.add_argument("--json", action="store_true", default=json, help="print JSON")
    parser.add_argument(
        "--socket",
        metavar="PATH",
        default=socket,
        help="the daemon's API socket (default: $HECATE_SOCKET_PATH, else "
        "~/.hecate/hecate-daemon/sockets/api.sock)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client = HecateClient(args.socket, connect_retry=CONNECT_RETRY)
    try:
        return int(COMMANDS[args.command](client, args) or Exit.OK)
    except DaemonUnavailableError as exc:
        return _fail(f"{exc}; {START_HINT}", Exit.NOT_RUNNING)
    except NotFoundError as exc:
        return _fail(exc.message, Exit.NOT_FOUND)
    except ApiError as exc:
        return _fail(f"{exc.message} ({exc.code})", Exit.ERROR)
    except CommandError as exc:
        return _fail(str(exc), exc.code)
    except ClientError as exc:
        return _fail(str(exc), Exit.ERROR)
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except BrokenPipeError:  # `hecatectl list | head`: not an error
        # Python's advice: point stdout at devnull so the final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return Exit.OK
    except OSError as exc:  # e.g. doctor meeting a directory it may not read: one line
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror or exc}{where}", Exit.ERROR)


def _fail(message: str, code: Exit) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return code


def _json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _fields(pairs: list[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in pairs) + 1
    for key, value in pairs:
        print(f"{(key + ':').ljust(width)}  {'-' if value in (None, '') else value}")


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}m")
    parts.append(f"{s}s")
    return " ".join(parts)


# -- commands --------------------------------------------------------------------------------


def cmd_list(client: HecateClient, args: argparse.Namespace) -> Exit:
    plugins = client.list()
    if args.json:
        _json([p.raw for p in plugins])
    elif args.quiet:
        for p in plugins:
            print(p.name)
    elif not plugins:
        print("no plugins registered")
    else:
        rows = [("NAME", "VERSION", "STATUS", "UNIT", "REGISTERED", "APP", "SOCKET")]
        rows += [_list_row(p) for p in plugins]
        _table(rows)
        for p in plugins:  # below the table: a sentence needs the whole line
            if p.status == PluginStatus.FAILED and p.unit is not None and p.unit.reason:
                print(f"{p.name}: failed: {p.unit.reason}")
            for problem in p.problems:
                print(f"{p.name}: {problem}")
            if p.desired is not None and p.desired.problem:
                print(f"{p.name}: {p.desired.problem}")
    return Exit.OK


def _list_row(p: PluginSummary) -> tuple[str, ...]:
    """One plugin: ``APP`` is the icon and display name its own manifest gave (``-``
    until it has answered); ``UNIT`` its systemd user unit (``-``: no word of one)."""
    app = " ".join(x for x in (p.icon, p.display_name) if x) or "-"
    unit = p.unit.name if p.unit is not None else "-"
    registered = "yes" if p.registered else "no"
    return (p.name, p.version or "-", p.status, unit, registered, app, p.socket)


def cmd_show(client: HecateClient, args: argparse.Namespace) -> Exit:
    info = client.get(args.name)
    if args.json:
        _json(info.raw)
        return Exit.OK
    status = info.status
    if info.pid:
        status += f" (pid {info.pid})"
    pairs: list[tuple[str, Any]] = [
        ("name", info.name),
        ("version", info.version),
        ("description", info.description),
        ("status", status),
        ("state", info.state),
        ("registered", _when(info.registered_at)),
        ("updated", _when(info.updated_at)),
        ("manifest", info.manifest),
        ("socket", info.socket),
        ("base_dir", info.base_dir),
    ]
    pairs += [(f"  {key}", value) for key, value in info.paths.items()]
    pairs += [
        ("registered_as", "plugin.toml" if info.registered else "no (discovered)"),
        ("app", " ".join(x for x in (info.icon, info.display_name) if x) or None),
        ("tag", info.tag),
        ("ui", "yes" if info.ui else "no"),
        ("reason", info.reason),
    ]
    pairs += _unit_fields(info.unit)
    pairs += _desired_fields(info.desired)
    pairs += [("problem", problem) for problem in info.problems]
    if info.error:
        pairs.append(("error", str(info.error)))
    _fields(pairs)
    return Exit.OK


def _unit_fields(unit: UnitInfo | None) -> list[tuple[str, Any]]:
    """The plugin's unit as the user manager said: "name (active/running)", its last
    result, restarts, main pid and since when (none when there is no word of one)."""
    if unit is None:
        return []
    since = None if unit.since is None else datetime.fromtimestamp(unit.since, UTC)
    return [
        ("unit", f"{unit.name} ({unit.load_state}, {unit.active_state}/{unit.sub_state})"),
        ("  result", unit.result),
        ("  restarts", unit.restarts),
        ("  main_pid", unit.main_pid),
        ("  since", _when(since)),
    ]


def _desired_fields(desired: DesiredInfo | None) -> list[tuple[str, Any]]:
    """The plugin's file in the gitops tree, whether hecated's link to it is in place, and
    why it cannot run here: what a person reads before editing the file."""
    if desired is None:
        return []
    return [
        ("installed", f"{desired.path} ({desired.kind} -> {desired.unit})"),
        ("  linked", "yes" if desired.linked else "no"),
        ("  problem", desired.problem),
    ]


def _path_fields(info: PluginInfo) -> dict[str, str]:
    return {"base_dir": info.base_dir, **info.paths, "socket": info.socket}


def cmd_paths(client: HecateClient, args: argparse.Namespace) -> Exit:
    fields = _path_fields(client.get(args.name))
    if args.field:
        value = fields[args.field]
        print(json.dumps(value) if args.json else value)
    elif args.json:
        _json(fields)
    else:
        for key, value in fields.items():
            print(f"{key}={shlex.quote(value)}")
    return Exit.OK


def cmd_register(client: HecateClient, args: argparse.Namespace) -> Exit:
    result = client.register(args.name, args.plugin_version, args.description, args.unit)
    if args.json:
        _json(result.raw)
        return Exit.OK
    verb = "registered" if result.created else "re-registered"
    print(f"{verb} {result.name} {args.plugin_version or ''}".rstrip())
    _fields([("base_dir", result.base_dir), *((f"  {k}", v) for k, v in result.paths.items())])
    return Exit.OK


def cmd_deregister(client: HecateClient, args: argparse.Namespace) -> Exit:
    client.deregister(args.name)
    if args.json:
        _json({"ok": True})
    else:
        print(f"deregistered {args.name}; its data is kept (`{PROG} purge {args.name}` deletes it)")
    return Exit.OK


def cmd_purge(client: HecateClient, args: argparse.Namespace) -> Exit:
    try:
        client.get(args.name)
    except NotFoundError:
        pass  # the normal case: deregistered; the daemon says whether there is a namespace
    else:
        raise CommandError(
            f"plugin {args.name!r} is still registered; run `{PROG} deregister {args.name}` "
            "first (still_registered)"
        )
    if not args.yes and not _confirm(
        f"Delete the namespace of {args.name!r} and ALL its data "
        "(sqlite, reckon-db, sockets, run, connectors)? This cannot be undone. [y/N] "
    ):
        raise CommandError("not purged (answer 'y' to confirm, or pass --yes)")
    result = client.purge(args.name)
    if args.json:
        _json(result.raw)
    else:
        print(f"purged {args.name}: removed {result.purged}")
    return Exit.OK


def cmd_unit(client: HecateClient, args: argparse.Namespace) -> Exit:
    """start / stop / restart NAME: the job's end, or why it failed with the last lines."""
    try:
        result = getattr(client, args.command)(args.name)
    except UnitFailedError as exc:
        if args.json:
            _json(exc.body)
        else:
            for line in exc.logs:
                print(_log_text(line), file=sys.stderr)
        raise
    if args.json:
        _json(result.raw)
        return Exit.OK
    state = result.state
    pid = f", pid {state['main_pid']}" if state.get("main_pid") else ""
    print(
        f"{args.command} {args.name}: {result.unit} is "
        f"{state.get('active_state', '?')} ({state.get('sub_state', '?')}){pid}"
    )
    return Exit.OK


def cmd_install(client: HecateClient, args: argparse.Namespace) -> Exit:
    """install FILE: the file is read here and sent; hecated checks it, then writes it."""
    try:
        result = client.install_file(args.file, replace=args.replace)
    except InvalidUnitFileError as exc:
        if args.json:
            _json(exc.body)
        raise CommandError(f"{args.file}: {exc.message} ({exc.code})") from None
    if args.json:
        _json(result.raw)
        return Exit.OK
    verb = "replaced" if result.replaced else "installed"
    verified = f", verified by {result.verified}" if result.verified else ""
    print(f"{verb} {result.name} ({result.unit}{verified}): {result.path}")
    return Exit.OK


def cmd_uninstall(client: HecateClient, args: argparse.Namespace) -> Exit:
    result = client.uninstall(args.name)
    if args.json:
        _json(result.raw)
        return Exit.OK
    stopped = f"stopped {result.unit}, " if result.stopped else ""
    print(f"uninstalled {args.name}: {stopped}removed {', '.join(result.removed)}; data kept")
    return Exit.OK


def cmd_logs(client: HecateClient, args: argparse.Namespace) -> Exit:
    """The unit's last lines; with -f, then each new one until Ctrl-C."""
    if args.lines is not None and args.lines < 0:
        raise CommandError("-n takes a number >= 0", Exit.USAGE)
    if args.follow:
        lines = client.follow_logs(args.name, 10 if args.lines is None else args.lines)
    else:
        lines = iter(client.logs(args.name, 100 if args.lines is None else args.lines))
    for line in lines:
        if args.json:
            print(json.dumps(dataclasses.asdict(line)), flush=True)
        else:
            print(_log_text(line), flush=True)
    return Exit.OK


def _log_text(line: LogLine) -> str:
    """journalctl's short format: time, identifier[pid]: message."""
    when = (
        datetime.fromtimestamp(line.time).strftime("%b %d %H:%M:%S")
        if line.time is not None
        else "-"
    )
    who = line.identifier or "?"
    return (
        f"{when} {who}[{line.pid}]: {line.message}" if line.pid else f"{when} {who}: {line.message}"
    )


def _confirm(prompt: str) -> bool:
    """Ask on stderr, read stdin: stdout stays clean for --json, and EOF means no."""
    print(prompt, end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    if not answer.endswith("\n"):
        print(file=sys.stderr)
    return answer.strip().lower() in ("y", "yes")


def cmd_status(client: HecateClient, args: argparse.Namespace) -> Exit:
    try:
        health = client.health()
    except DaemonUnavailableError as exc:
        if args.json:
            _json({"status": "not_running", "socket": str(client.socket_path), "error": exc.reason})
        print(
            f"{PROG}: hecated is not running: nothing answers on {client.socket_path} "
            f"({exc.reason}); {START_HINT}",
            file=sys.stderr,
        )
        return Exit.NOT_RUNNING
    if args.json:
        _json(health.raw)
        return Exit.OK
    print(f"hecated {health.version} is running")
    _fields(
        [
            ("  status", health.status + ("" if health.ready else " (not ready)")),
            ("  socket", health.socket or client.socket_path),
            ("  pid", health.pid),
            ("  uptime", _duration(health.uptime_seconds)),
            ("  plugins", health.plugin_count),
            ("  data dir", health.data_dir),
        ]
    )
    # Only what needs a look: a plugin that runs fine or is simply stopped is no news.
    for name, word in sorted(health.plugins.items()):
        if word not in (PLUGIN_OK, PLUGIN_STOPPED):
            print(f"  {name}: {word}")
    return Exit.OK


def cmd_doctor(client: HecateClient, args: argparse.Namespace) -> Exit:
    from hecated.tools.doctor import diagnose  # reads the disk; only this command needs it

    report = diagnose(client)
    if args.json:
        _json(report.to_json())
    else:
        report.print_text()
    failed = report.problems or (args.strict and report.warnings)
    return Exit.ERROR if failed else Exit.OK


def cmd_completion(client: HecateClient, args: argparse.Namespace) -> Exit:
    print(bash_completion(build_parser()), end="")
    return Exit.OK


# -- watch -----------------------------------------------------------------------------------


def diff(
    old: dict[str, PluginSummary], new: dict[str, PluginSummary]
) -> list[tuple[str, PluginSummary, PluginSummary | None]]:
    """What changed between two lists, in the events' words: (kind, plugin now, before)."""
    events: list[tuple[str, PluginSummary, PluginSummary | None]] = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if before is None and after is not None:
            events.append(("registered", after, None))
        elif after is None and before is not None:
            events.append(("deregistered", before, before))
        elif after is not None and before is not None and after.raw != before.raw:
            kind = "status" if after.status != before.status else "updated"
            events.append((kind, after, before))
    return events


def _describe(event: str, now: PluginSummary, before: PluginSummary | None) -> str:
    if before is not None and event not in GONE_KINDS:
        moved = [
            f"{key} {before.raw.get(key)!s} -> {now.raw.get(key)!s}"
            for key in sorted(now.raw.keys() | before.raw.keys())
            if now.raw.get(key) != before.raw.get(key)
        ]
        if moved:
            return ", ".join(moved)
    if event in GONE_KINDS:
        return event
    return f"{now.version or '-'} {now.status}"


GONE_KINDS = frozenset({"deregistered", "gone", "removed"})


class _Watch:
    """What ``watch`` has printed: the list as it knows it, and how many changes."""

    def __init__(self, args: argparse.Namespace, snap: Snapshot) -> None:
        self.args = args
        self.current = snap.by_name()
        self.seq = snap.seq if snap.seq is not None else 0
        self.seen = 0

    @property
    def done(self) -> bool:
        return self.args.count is not None and self.seen >= self.args.count

    def show(self, kind: str, plugin: PluginSummary, seq: int | None, listed: bool) -> None:
        before = self.current.get(plugin.name)
        if listed:
            self.current[plugin.name] = plugin
        else:
            self.current.pop(plugin.name, None)
        if self.args.json:
            record: dict[str, Any] = {"event": kind, "seq": seq, "plugin": plugin.raw}
            if before is not None and listed:
                record["before"] = before.raw
            _emit(record)
        else:
            stamp = datetime.now().astimezone().strftime("%H:%M:%S")
            print(f"{stamp}  {kind:<12} {plugin.name}  {_describe(kind, plugin, before)}")
            sys.stdout.flush()
        self.seen += 1

    def catch_up(self, snap: Snapshot) -> None:
        """A new list (after a resync or a reconnection): print what it changed."""
        latest = snap.by_name()
        for kind, plugin, _before in diff(self.current, latest):
            if self.done:
                break
            self.show(kind, plugin, snap.seq, kind != "deregistered")
        self.current = latest
        if snap.seq is not None:
            self.seq = snap.seq


def cmd_watch(
    client: HecateClient,
    args: argparse.Namespace,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Exit:
    """Follow ``GET /api/events``; a daemon without it (404): the long poll.

    After a broken stream (the daemon restarted, say) it lists the plugins again and
    prints what changed meanwhile, then follows from that list's ``seq``: a new run
    of the daemon numbers its changes anew, so a number alone cannot say what was
    missed. Nothing is printed twice, nothing is lost.
    """
    watch = _Watch(args, client.snapshot())
    if args.json:
        plugins = [p.raw for p in watch.current.values()]
        _emit({"event": "snapshot", "seq": watch.seq, "plugins": plugins})
    else:
        print(f"watching {len(watch.current)} plugin(s) on {client.socket_path}; Ctrl-C to stop")
        sys.stdout.flush()
    lost = False
    while not watch.done:
        try:
            if lost:
                watch.catch_up(client.snapshot())
                print(f"{PROG}: hecated answers again", file=sys.stderr, flush=True)
                lost = False
            _follow(client, watch)
        except NotFoundError:  # a daemon from before /api/events
            return _poll(client, args, watch, clock, sleep)
        except DaemonUnavailableError as exc:
            if not lost:
                print(f"{PROG}: {exc}; retrying", file=sys.stderr, flush=True)
            lost = True
            sleep(args.interval)
    return Exit.OK


def _follow(client: HecateClient, watch: _Watch) -> None:
    """The event stream from ``watch.seq`` until it ends (the daemon stopping) or
    ``--count`` is reached; a stream that ends is a lost daemon, found again."""
    for event in client.events(since=watch.seq):
        if event.kind == "resync":
            watch.catch_up(Snapshot(event.seq, event.plugins or []))
        elif event.plugin is not None:
            watch.show(event.kind, event.plugin, event.seq, event.listed)
            watch.seq = event.seq
        if watch.done:
            return
    raise DaemonUnavailableError(client.socket_path, "the event stream ended")


def _poll(
    client: HecateClient,
    args: argparse.Namespace,
    watch: _Watch,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> Exit:
    """The long poll (``GET /api/plugins?since=N&wait=S``), each answer compared with the
    last list; a daemon that ignores since/wait answers at once: then a pause of
    ``--interval`` after an answer with no change."""
    lost = False
    while not watch.done:
        started = clock()
        try:
            snap = client.wait_for_change(watch.seq, args.wait)
        except DaemonUnavailableError as exc:
            if not lost:
                print(f"{PROG}: {exc}; retrying", file=sys.stderr, flush=True)
                lost = True
            sleep(args.interval)
            continue
        if lost:
            print(f"{PROG}: hecated answers again", file=sys.stderr, flush=True)
            lost = False
        seen = watch.seen
        watch.catch_up(snap)
        if watch.seen == seen and clock() - started < min(args.interval, args.wait):
            sleep(args.interval)  # answered at once with nothing new: no long poll here
    return Exit.OK


def _emit(record: dict[str, Any]) -> None:
    """One JSON object per line, flushed: ``watch --json`` is a stream for scripts."""
    print(json.dumps(record, ensure_ascii=False), flush=True)


# -- bash completion -------------------------------------------------------------------------


def _completion_case(name: str, p: argparse.ArgumentParser) -> str:
    """One subcommand's branch of the completion script: its options, then names."""
    opts = sorted(o for a in p._actions for o in a.option_strings if o.startswith("--"))
    takes_name = any(a.dest == "name" for a in p._actions)
    field = next((a for a in p._actions if a.dest == "field"), None)
    lines = [f"        {name})"]
    if field is not None:
        lines.append(
            '            if [[ "$prev" == --field ]]; then '
            f'COMPREPLY=($(compgen -W "{" ".join(field.choices)}" -- "$cur")); return; fi'
        )
    lines.append(
        '            if [[ "$prev" == --socket ]]; then '
        'COMPREPLY=($(compgen -f -- "$cur")); return; fi'
    )
    lines.append(
        '            if [[ "$cur" == -* ]]; then '
        f'COMPREPLY=($(compgen -W "{" ".join(opts)}" -- "$cur"))'
    )
    if takes_name:
        lines.append('            else COMPREPLY=($(compgen -W "$(_hecatectl_names)" -- "$cur"))')
    elif name == "completion":
        lines.append('            else COMPREPLY=($(compgen -W "bash" -- "$cur"))')
    elif any(a.dest == "file" for a in p._actions):  # install FILE
        lines.append('            else COMPREPLY=($(compgen -f -- "$cur"))')
    lines.append("            fi;;")
    return "\n".join(lines)


def bash_completion(parser: argparse.ArgumentParser) -> str:
    """A bash completion script generated from the parser, so it cannot drift from it."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    cases = [_completion_case(name, p) for name, p in sub.choices.items()]
    globals_ = " ".join(sorted(o for a in parser._actions for o in a.option_strings))
    commands = " ".join(sub.choices)
    return f"""# bash completion for {PROG}; generated by `{PROG} completion bash`.
_hecatectl_names() {{
    local sock=()
    local i
    for ((i = 1; i < ${{#COMP_WORDS[@]}} - 1; i++)); do
        [[ "${{COMP_WORDS[i]}}" == --socket ]] && sock=(--socket "${{COMP_WORDS[i+1]}}")
    done
    {PROG} "${{sock[@]}}" list --quiet 2>/dev/null
}}

_hecatectl() {{
    local cur prev cmd i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            --socket) ((i++));;
            -*) ;;
            *) cmd="${{COMP_WORDS[i]}}"; break;;
        esac
    done
    case "$cmd" in
        "")
            if [[ "$prev" == --socket ]]; then COMPREPLY=($(compgen -f -- "$cur")); return; fi
            if [[ "$cur" == -* ]]; then COMPREPLY=($(compgen -W "{globals_}" -- "$cur"))
            else COMPREPLY=($(compgen -W "{commands}" -- "$cur")); fi;;
{chr(10).join(cases)}
    esac
}}
complete -F _hecatectl {PROG}
"""


COMMANDS: dict[str, Callable[[HecateClient, argparse.Namespace], Exit]] = {
    "list": cmd_list,
    "show": cmd_show,
    "paths": cmd_paths,
    "register": cmd_register,
    "deregister": cmd_deregister,
    "purge": cmd_purge,
    "status": cmd_status,
    "doctor": cmd_doctor,
    "watch": cmd_watch,
    "completion": cmd_completion,
    "start": cmd_unit,
    "stop": cmd_unit,
    "restart": cmd_unit,
    "logs": cmd_logs,
    "install": cmd_install,
    "uninstall": cmd_uninstall,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["Exit", "build_parser", "diff", "main"]

"""Entry points: ``hecated`` (the daemon) and ``hecatectl`` (the client CLI)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__


def _daemon_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hecated", description="The primary Hecate daemon and plugin registry."
    )
    parser.add_argument("--version", action="version", version=f"hecated {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the daemon (the default)")
    for p in (parser, serve):
        p.add_argument(
            "--data-dir", help="the primary's data dir (default ~/.hecate/hecate-daemon)"
        )
        p.add_argument("--socket", dest="socket_path", help="API socket path")
        p.add_argument("--config", help="config file (default ~/.config/hecate/hecated.toml)")
        p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
        p.add_argument(
            "--idle-timeout", type=float, help="exit after this many idle seconds (0: never)"
        )
        p.add_argument("--workers", type=int, help="worker threads (default 16)")
    units = sub.add_parser(
        "install-units",
        help="install the systemd user units for this installation",
        description="Write hecate.socket and hecate.service into the systemd user unit "
        "directory, with ExecStart= pointing at this installation's hecated.",
    )
    units.add_argument("--dir", help="where to write them (default $XDG_CONFIG_HOME/systemd/user)")
    units.add_argument(
        "--force", action="store_true", help="replace unit files install-units did not write"
    )
    return parser


def hecated_main(argv: Sequence[str] | None = None) -> int:
    args = _daemon_parser().parse_args(argv)
    if args.command == "install-units":
        from .units import main as install_units

        return install_units(args.dir, args.force)
    from .config import ConfigError, resolve
    from .daemon import run

    try:
        config = resolve(vars(args))
    except ConfigError as exc:
        print(f"hecated: {exc}", file=sys.stderr)
        return 2
    return run(config)


def _ctl_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hecatectl", description="Talk to hecated.")
    parser.add_argument("--socket", help="API socket (default: $HECATE_SOCKET_PATH or well-known)")
    parser.add_argument("--json", action="store_true", help="print the API's JSON")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="list registered plugins")
    sub.add_parser("status", help="the daemon's health")
    show = sub.add_parser("show", help="one plugin, with its paths")
    show.add_argument("name")
    reg = sub.add_parser("register", help="register a plugin (creates its namespace)")
    reg.add_argument("name")
    reg.add_argument("--version", dest="plugin_version", default="")
    reg.add_argument("--description", default="")
    dereg = sub.add_parser("deregister", help="remove a registry entry (keeps the data)")
    dereg.add_argument("name")
    purge = sub.add_parser("purge", help="delete a deregistered plugin's data")
    purge.add_argument("name")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    return parser


def hecatectl_main(argv: Sequence[str] | None = None) -> int:
    from .client import ClientError, HecateClient

    args = _ctl_parser().parse_args(argv)
    client = HecateClient(args.socket)
    try:
        result = _ctl(client, args)
    except ClientError as exc:
        print(f"hecatectl: {exc}", file=sys.stderr)
        return 1
    if result is None:
        return 1
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_text(args.command, result)
    return 0


def _ctl(client: Any, args: argparse.Namespace) -> Any:
    if args.command == "list":
        return client.list()
    if args.command == "status":
        return client.health()
    if args.command == "show":
        return client.get(args.name)
    if args.command == "register":
        paths = client.register(args.name, args.plugin_version, args.description)
        return {"name": paths.name, "base_dir": paths.base_dir, "paths": paths.paths}
    if args.command == "deregister":
        client.deregister(args.name)
        return {"ok": True}
    if args.command == "purge":
        if not args.yes:
            answer = input(f"Delete {args.name}'s namespace and all its data? [y/N] ")
            if answer.strip().lower() not in ("y", "yes"):
                print("hecatectl: not purged", file=sys.stderr)
                return None
        return client.purge(args.name)
    raise AssertionError(args.command)


def _print_text(command: str, result: Any) -> None:
    if command == "list":
        rows = [("NAME", "VERSION", "STATUS", "SOCKET")]
        rows += [(p["name"], p["version"] or "-", p["status"], p["socket"]) for p in result]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[3])
        return
    flat: dict[str, Any] = {}
    for key, value in result.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    width = max((len(k) for k in flat), default=0)
    for key, value in flat.items():
        print(f"{key.ljust(width)}  {'-' if value is None else value}")

"""Entry point of ``hecated``, the daemon (``hecatectl`` lives in ctl.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hecated import __version__


def _daemon_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hecated", description="The primary Hecate daemon and plugin registry."
    )
    parser.add_argument("--version", action="version", version=f"hecated {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the daemon (the default)")
    # The options go on both, so `hecated --log-level debug serve` and `hecated serve
    # --log-level debug` both work; the subcommand's copies default to SUPPRESS so that
    # they never overwrite what was given before the subcommand with None.
    for p, default in ((parser, None), (serve, argparse.SUPPRESS)):
        p.add_argument(
            "--data-dir",
            default=default,
            help="the primary's data dir (default ~/.hecate/hecate-daemon)",
        )
        p.add_argument("--socket", dest="socket_path", default=default, help="API socket path")
        p.add_argument(
            "--config", default=default, help="config file (default ~/.config/hecate/hecated.toml)"
        )
        p.add_argument(
            "--log-level", default=default, choices=["debug", "info", "warning", "error"]
        )
        p.add_argument(
            "--idle-timeout",
            type=float,
            default=default,
            help="exit after this many idle seconds (0: never)",
        )
        p.add_argument("--workers", type=int, default=default, help="worker threads (default 16)")
        p.add_argument(
            "--probe-interval",
            type=float,
            default=default,
            help="seconds between probes of each plugin socket (default 10; 0: on events only)",
        )
        p.add_argument(
            "--forward-body-limit",
            type=int,
            default=default,
            help="largest request body forwarded to a plugin, in bytes (default 16 MiB)",
        )
        p.add_argument(
            "--forward-streams",
            type=int,
            default=default,
            help="forwarded requests served at once; beyond, 503 busy (default 256)",
        )
        p.add_argument(
            "--forward-idle-timeout",
            type=float,
            default=default,
            help="end a forwarded stream that carries nothing this many seconds (default 300)",
        )
        p.add_argument(
            "--forward-timeout",
            type=float,
            default=default,
            help="seconds to wait for a plugin's first byte before a 504 (default 30)",
        )
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
        from hecated.tools.units import main as install_units

        return install_units(args.dir, args.force)
    from hecated.core.config import ConfigError, resolve
    from hecated.daemon import run

    try:
        config = resolve(vars(args))
    except ConfigError as exc:
        print(f"hecated: {exc}", file=sys.stderr)
        return 2
    return run(config)

"""Entry point of ``hecated``, the daemon (``hecatectl`` lives in ctl.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hecated import __version__
from hecated.core.settings import SETTINGS


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
        _add_settings(p, default)
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


def _add_settings(parser: argparse.ArgumentParser, default: object) -> None:
    """One option per row of the settings table (hecated.core.settings), plus --config."""
    parser.add_argument(
        "--config", default=default, help="config file (default ~/.config/hecate/hecated.toml)"
    )
    for s in SETTINGS:
        parser.add_argument(
            s.option,
            dest=s.key,
            default=default,
            choices=s.choices or None,
            help=f"{s.help} (default {s.default_text})",
        )


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

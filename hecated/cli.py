"""Entry point of ``hecated``, the daemon (``hecatectl`` lives in ctl.py).

``hecated serve`` is what socket activation starts on a client's first connection,
so this module imports next to nothing: argparse (and a parser of every setting,
twice) only when there are options to parse, the daemon only when it is to run.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from hecated import __version__

if TYPE_CHECKING:
    import argparse

# What argparse would make of these, made without it: see ``flags``.
_PLAIN: dict[tuple[str, ...], str | None] = {(): None, ("serve",): "serve"}


def _daemon_parser() -> argparse.ArgumentParser:
    import argparse

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
    from hecated.core.settings import SETTINGS

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


def flags(argv: Sequence[str]) -> dict[str, Any]:
    """The command line as a dict, as argparse parses it; ``hecated`` and ``hecated
    serve`` without options (what ``systemd-socket-activate`` and most units run) are
    answered without importing argparse: the command, and None for every setting."""
    if tuple(argv) in _PLAIN:
        from hecated.core.settings import SETTINGS

        return {"command": _PLAIN[tuple(argv)], "config": None} | {s.key: None for s in SETTINGS}
    return vars(_daemon_parser().parse_args(argv))


def hecated_main(argv: Sequence[str] | None = None) -> int:
    args = flags(sys.argv[1:] if argv is None else argv)
    if args["command"] == "install-units":
        from hecated.tools.units import main as install_units

        return install_units(args["dir"], args["force"])
    # Start-up allocates much and frees next to nothing: the cyclic collector, run every
    # few hundred allocations, would only slow it (imports, the start scan). Off until the
    # daemon's first answer is out (``Lifecycle._after_first_answer`` turns it back on).
    gc.disable()
    try:
        return _serve(args)
    finally:
        gc.enable()


def _serve(args: dict[str, Any]) -> int:
    """The daemon, its start scan begun before ``hecated.daemon`` is imported.

    The index needs only core modules; its reading child, forked here while no
    other thread exists, reads the tree's last names while this process imports
    the HTTP server and the adapters (``Index.head_start``): on a large tree never
    seen, the first list comes that much sooner.
    """
    from hecated.core.config import ConfigError, resolve
    from hecated.core.index import Index

    try:
        config = resolve(args)
    except ConfigError as exc:
        print(f"hecated: {exc}", file=sys.stderr)
        return 2
    registry = Index(config.layout)
    registry.head_start()
    try:
        from hecated.daemon import run

        return run(config, registry)
    finally:
        registry.drop_head_start()  # a start that failed before its scan

"""Where the 10,000-plugin first list goes: a profile of the scan, and the TOML parsers.

On a tree hecated never saw, start → first list is dominated by the scan, and
the scan by parsing every ``plugin.toml``. This script, in one process:

1. builds ``--count`` namespaces the way hecated writes them (bench/procs.py);
2. profiles ``Index.scan()`` on that tree with cProfile, cold cache of parsed
   manifests (what a first start does), and prints the top entries by own time;
3. reads every file's bytes into memory once, then times each parser over all
   of them, median of ``--rounds``: the standard library's ``tomllib``, ``tomli``
   (the same parser, whose PyPI wheels are compiled with mypyc), ``rtoml``
   (Rust), each only if installed; ``manifest.parse`` (tomllib plus
   validation) for the whole cost per file; and checks that every parser gives
   the very same document as ``tomllib`` (a faster parser that differs is no use);
4. times the whole never-seen ``Index.scan()`` with each parser in place of
   ``tomllib`` (swapped in this process only, for the estimate; rounds interleaved).

    .venv/bin/python bench/toml_parse.py [--count 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import io
import pstats
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from procs import make_plugins, remove, temp_home  # noqa: E402

from hecated.core import manifest  # noqa: E402
from hecated.core.index import Index  # noqa: E402
from hecated.core.layout import Layout  # noqa: E402


def parsers() -> dict[str, Callable[[str], dict]]:
    """Every TOML parser installed here, by name (the standard library's always)."""
    found: dict[str, Callable[[str], dict]] = {}
    for name in ("tomllib", "tomli", "rtoml"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        found[name] = module.loads
    return found


def compiled(name: str) -> str:
    """Whether a parser ships a compiled extension (mypyc, Rust) or is Python source."""
    module = importlib.import_module(name)
    origin = Path(getattr(module, "__file__", "") or "")
    if not origin.name:
        return "built in"
    if origin.suffix == ".so" or (origin.name == "__init__.py" and any(origin.parent.glob("*.so"))):
        return "compiled"
    return "pure Python"


def time_parsers(
    funcs: dict[str, Callable[[str], object]], texts: list[str], rounds: int
) -> dict[str, float]:
    """Median seconds per parser over all texts; rounds interleave the parsers (noise)."""
    spent: dict[str, list[float]] = {name: [] for name in funcs}
    for _ in range(rounds):
        for name, loads in funcs.items():
            t0 = time.perf_counter()
            for text in texts:
                loads(text)
            spent[name].append(time.perf_counter() - t0)
    return {name: statistics.median(values) for name, values in spent.items()}


class _Swap:
    """``manifest.tomllib`` replaced by another parser for the duration (bench only)."""

    def __init__(self, name: str) -> None:
        self.module = importlib.import_module(name)

    def __enter__(self) -> None:
        self.saved = manifest.tomllib
        manifest.tomllib = types.SimpleNamespace(
            loads=self.module.loads, TOMLDecodeError=self.saved.TOMLDecodeError
        )

    def __exit__(self, *exc: object) -> None:
        manifest.tomllib = self.saved


def scan_with_each(home: Path, rounds: int) -> dict[str, float]:
    """Median seconds of a never-seen scan (empty cache) with each installed parser."""
    spent: dict[str, list[float]] = {name: [] for name in parsers()}
    for _ in range(rounds):
        for name in spent:
            registry = Index(Layout.at(home / ".hecate"))
            with _Swap(name):
                t0 = time.perf_counter()
                registry.scan()
                spent[name].append(time.perf_counter() - t0)
            registry.close()
    return {name: statistics.median(values) for name, values in spent.items()}


def profile_scan(home: Path, top: int) -> tuple[float, str]:
    registry = Index(Layout.at(home / ".hecate"))
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    registry.scan()
    profiler.disable()
    wall = time.perf_counter() - t0
    registry.close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return wall, out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--top", type=int, default=18)
    args = parser.parse_args()
    home = temp_home("htoml")
    try:
        names = make_plugins(home, args.count)
        wall, report = profile_scan(home, args.top)
        plain = Index(Layout.at(home / ".hecate"))
        t0 = time.perf_counter()
        plain.scan()
        unprofiled = time.perf_counter() - t0
        plain.close()
        datas = [(home / ".hecate" / n / "plugin.toml").read_bytes() for n in names]
        scans = scan_with_each(home, args.rounds)
    finally:
        remove(home)
    texts = [d.decode() for d in datas]
    print(f"## Index.scan() of {args.count:,} never-seen plugin.toml files\n")
    print(f"without the profiler: {unprofiled * 1e3:,.0f} ms; under cProfile {wall * 1e3:,.0f} ms")
    print("\n```\n" + report.strip() + "\n```\n")
    print(f"## Parsing the same {args.count:,} files from memory, median of {args.rounds}\n")
    print("| parser | kind | ms for all | µs per file | same documents as tomllib |")
    print("|---|---|---|---|---|")
    print(f"## Index.scan() of the same tree with each parser, median of {args.rounds}\n")
    print("| parser | scan |\n|---|---|")
    for name, seconds in scans.items():
        print(f"| `{name}` | {seconds * 1e3:,.0f} ms |")
    print()
    reference = [manifest.tomllib.loads(t) for t in texts]
    found = parsers()
    by_text = dict(zip(texts, names, strict=True))
    funcs: dict[str, Callable[[str], object]] = dict(found)
    # The whole per-file cost hecated pays: decode, tomllib, the checks, the dataclass.
    funcs["manifest.parse"] = lambda t: manifest.parse(t.encode(), by_text[t], "x")
    spent = time_parsers(funcs, texts, args.rounds)
    for name, seconds in spent.items():
        if name in found:
            same = all(found[name](t) == r for t, r in zip(texts, reference, strict=True))
            kind, same_cell = compiled(name), "yes" if same else "**no**"
        else:
            kind, same_cell = "tomllib + checks", "-"
        print(
            f"| `{name}` | {kind} | {seconds * 1e3:,.0f} | "
            f"{seconds / len(texts) * 1e6:.1f} | {same_cell} |"
        )


if __name__ == "__main__":
    main()

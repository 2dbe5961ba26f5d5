"""Keeps the benchmark runnable: a smoke run with tiny sizes and no baselines.

It asserts only that every section produced its table (no speed is asserted
anywhere in the tests; the figures live in docs/benchmarks.md).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import short_tempdir

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_bench_smoke_run_writes_every_table() -> None:
    out_dir = short_tempdir("hb")
    out = out_dir / "bench.md"
    try:
        proc = subprocess.run(
            [sys.executable, str(REPO / "bench" / "run.py"), "--smoke", "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        text = out.read_text()
        for title in ("## 0.", "## 2.", "## 3.", "## 5.", "## 6. Liveness", "## 7. Forwarding"):
            assert title in text, text
        assert "Failed in this run" not in text
        assert "| waitress |" in text and "| 50 |" in text
        # A handful of samples' worst is labelled a maximum, never a p99.
        assert "list max of" in text and "list p99" not in text
        # Headline tables are unpinned, each with the load average it was measured under.
        assert "unpinned" in text and "**pinned**" not in text
        assert text.count("_Load average (1 / 5 / 15 min) at this table's start") == 8, text
        assert "nginx" not in proc.stderr  # smoke runs install and start no baseline
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


@pytest.mark.slow
def test_first_list_compares_trees_and_checks_the_lists() -> None:
    """bench/first_list.py runs, times both trees and finds their first lists identical."""
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "first_list.py"),
            "--base",
            str(REPO),
            "--count",
            "30",
            "--rounds",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "first lists byte-identical across trees and rounds: True" in proc.stdout
    assert proc.stdout.count("median") == 2

"""Helpers for the hecatectl, SDK and example-plugin tests: run the real programs."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conftest import HECATECTL

ROOT = Path(__file__).resolve().parent.parent
EXAMPLED = ROOT / "examples" / "hecate-exampled.py"


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The user's environment with a temp HOME and no HECATE_* leaking in from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HECATE_")}
    env.update(HOME=str(home), **extra)
    env.pop("XDG_CONFIG_HOME", None)
    return env


class Result:
    def __init__(self, proc: subprocess.CompletedProcess) -> None:
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def json(self) -> Any:
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"Result(code={self.code}, out={self.out!r}, err={self.err!r})"


def ctl(home: Path, *args: str, env: dict[str, str] | None = None, input: str = "") -> Result:
    """Run ``hecatectl`` the way a person does: a subprocess with its own HOME."""
    proc = subprocess.run(
        [str(HECATECTL), *args],
        env=env or clean_env(home),
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Result(proc)


def one_line_error(result: Result) -> str:
    """Errors are exactly one line on stderr, prefixed with the program name."""
    lines = result.err.splitlines()
    assert len(lines) == 1, result
    assert lines[0].startswith("hecatectl: "), result
    return lines[0]


class LineReader:
    """Read a child's stdout line by line with a deadline, never blocking for ever."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self._buf = b""
        self._sel = selectors.DefaultSelector()
        self._sel.register(proc.stdout, selectors.EVENT_READ)

    def line(self, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line within {timeout}s; so far {self._buf!r}")
            if self._sel.select(left):
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"stdout closed; so far {self._buf!r}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def close(self) -> None:
        self._sel.close()


def stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Teardown: end a child we started, by its pid."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    for stream in (proc.stdout, proc.stderr):
        if stream:
            stream.close()


def python() -> str:
    return sys.executable

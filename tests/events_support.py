"""An events client that speaks to hecated exactly as hecate-web's desktop app does.

hecate-web (``src-tauri/src/daemon_streaming.rs``, v0.14.7) opens ``GET /api/events``
on the primary's socket with a hand-written request, reads the status line (>= 400:
an error, retried in 3 s), the headers (chunked or not), then each chunk (its size
line in hex, the bytes, the trailing CRLF), splits lines, and dispatches an event at
each blank line: ``event:``/``data:`` set the type and the data, ``:`` lines are
comments, anything else (``id:``) is ignored. Known types become Tauri events; an
unknown one is logged ("unknown event type") and dropped. ``WebClient`` does the
same, step for step, and also keeps the ``id:`` lines the app ignores, so the tests
can check the numbering.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# hecate-web's request, byte for byte (daemon_streaming.rs, connect_and_stream).
REQUEST = (
    "GET {} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n"
    "Connection: keep-alive\r\n{}\r\n"
)
# dispatch_event's table: the only types hecate-web turns into Tauri events.
KNOWN = {
    "realm_join_status": "daemon-realm-join-status",
    "identity_changed": "daemon-identity-changed",
    "settings_changed": "daemon-settings-changed",
}


@dataclass
class Dispatched:
    """One event as hecate-web dispatches it, plus the ``id:`` it ignores."""

    type: str
    data: str
    id: str | None
    tauri: str | None  # the Tauri event it emits; None: "unknown event type", dropped

    def json(self) -> Any:
        return json.loads(self.data)

    @property
    def run(self) -> str:
        """The daemon run the ``id:`` (``RUN-SEQ``) names."""
        return (self.id or "").rpartition("-")[0]

    @property
    def seq(self) -> int:
        """The index's ``seq`` the ``id:`` (``RUN-SEQ``) carries."""
        return int((self.id or "").rpartition("-")[2])


class WebClient:
    """One stream, read as hecate-web reads it."""

    def __init__(
        self,
        sock_path: Path,
        path: str = "/api/events",
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(os.fspath(sock_path))
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall(REQUEST.format(path, extra).encode())
        self.reader = self.sock.makefile("rb")
        self.status = parse_status(self.reader.readline().decode())
        self.headers: dict[str, str] = {}
        self.chunked = False
        while True:
            line = self.reader.readline().decode()
            if not line:
                raise ConnectionError("connection closed during headers")
            if not line.strip():
                break
            key, _, value = line.partition(":")
            self.headers[key.strip().lower()] = value.strip()
            lower = line.lower()
            if "transfer-encoding" in lower and "chunked" in lower:
                self.chunked = True
        self.comments: list[str] = []
        self._lines: list[str] = []
        self._leftover = ""
        self._type: str | None = None
        self._data: str | None = None
        self._id: str | None = None
        self.ended = False

    def body(self) -> bytes:
        """The whole body of a refusal (a JSON envelope with Content-Length)."""
        return self.reader.read(int(self.headers.get("content-length", "0")))

    def next(self, within: float = 30.0) -> Dispatched:
        """The next dispatched event; EOFError when the stream ended, TimeoutError when
        none came ``within`` seconds (heartbeats do not count: a bound, not a timing)."""
        deadline = time.monotonic() + within
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no event within {within:g} s")
            line = self._line()
            got = self._process(line)
            if got is not None:
                return got

    def next_comment(self) -> str:
        """Read on until a comment line arrives (heartbeats); events read meanwhile are lost."""
        seen = len(self.comments)
        while len(self.comments) == seen:
            self._process(self._line())
        return self.comments[-1]

    def _line(self) -> str:
        if self.chunked:
            while not self._lines:
                self._read_chunk()
            return self._lines.pop(0)
        raw = self.reader.readline()
        if not raw:
            self.ended = True
            raise EOFError("the stream ended")
        return raw.decode("utf-8", "replace").rstrip("\n").rstrip("\r")

    def _read_chunk(self) -> None:
        """read_sse_chunked: a size line in hex, the chunk, its CRLF; lines split."""
        size_line = self.reader.readline()
        if not size_line:
            self.ended = True
            raise EOFError("the stream ended")
        try:
            size = int(size_line.decode().strip(), 16)
        except ValueError:
            return  # `Err(_) => continue`
        if size == 0:
            self.ended = True
            raise EOFError("the final chunk")
        chunk = self.reader.read(size)
        if len(chunk) != size:
            raise EOFError("a cut chunk")
        self.reader.readline()  # the trailing CRLF
        self._leftover += chunk.decode("utf-8", "replace")
        while "\n" in self._leftover:
            line, self._leftover = self._leftover.split("\n", 1)
            self._lines.append(line.rstrip("\r"))

    def _process(self, line: str) -> Dispatched | None:
        """process_sse_line, with the ``id:`` line kept (hecate-web ignores it)."""
        if not line:
            got = None
            if self._data is not None:
                kind = self._type or ""
                got = Dispatched(kind, self._data, self._id, KNOWN.get(kind))
                self._data = None
            self._type = None
            return got
        if line.startswith(":"):
            self.comments.append(line[1:].strip())
        elif line.startswith("event: "):
            self._type = line[len("event: ") :].strip()
        elif line.startswith("event:"):
            self._type = line[len("event:") :].strip()
        elif line.startswith("data: "):
            self._data = line[len("data: ") :]
        elif line.startswith("data:"):
            self._data = line[len("data:") :].strip()
        elif line.startswith("id:"):
            self._id = line[3:].strip()
        return None

    def close(self) -> None:
        self.reader.close()
        self.sock.close()

    def __enter__(self) -> WebClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def parse_status(status_line: str) -> int:
    """parse_status: the second word as a number, else 500."""
    parts = status_line.split()
    try:
        return int(parts[1])
    except (IndexError, ValueError):
        return 500

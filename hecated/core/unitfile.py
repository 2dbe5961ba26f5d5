"""Is this text a unit file hecated may put in the gitops tree? Checked before any write.

A unit file installed through the API ends up in the user's systemd manager (a
``.service``) or Podman's Quadlet generator (a ``.container``), both of which
*ignore* what they cannot parse, with a warning in a log nobody reads: a typo
in a key, a line without ``=``, a section header without its ``]``. The plugin
would then run otherwise than written, or not at all. So the text is checked
here first, and the first problem is named by its line ("line 7: ...") in a
400; nothing is written.

The rules are systemd's own (``systemd.syntax(5)``, ``src/shared/conf-parser.c``):
lines are stripped of surrounding whitespace; empty lines and lines whose first
character is ``#`` or ``;`` are comments, also between continued lines; a line
ending in an unescaped backslash continues on the next one (the backslash
becomes a space); ``[Section]`` headers; ``Key=value`` assignments, only inside
a section. Where systemd merely warns and ignores (an unknown section, an
assignment outside a section, a line without ``=``, a line that is not UTF-8),
this check refuses. Key names are not looked up (``systemd-analyze verify``
does that where it is installed, ``adapters/unitverify.py``); the keys each kind
cannot run without are: a ``.service`` needs ``[Service]`` with ``ExecStart=``,
a ``.container`` needs ``[Container]`` with ``Image=`` (or ``Rootfs=``).

Where systemd would accept and hecated does not: a byte-order mark, carriage
returns (a file saved with CRLF line ends) and control characters, each of
which the Quadlet generator or a later edit would trip over. Line numbers are
systemd's: a continued line is named by its last physical line, so this check
and ``systemd-analyze verify`` name the same line. Standard library only.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from hecated.core.errors import InvalidFieldError, InvalidUnitFileError
from hecated.core.files import opened, read_regular

UNIT_FILE_MAX = 32 * 1024  # bytes; a plugin's unit file is a few hundred
KINDS = ("service", "container")
COMMENTS = "#;"
WHITESPACE = " \t"
# The sections each kind may have; "X-" sections are the user's own (systemd ignores them).
SECTIONS: dict[str, frozenset[str]] = {
    "service": frozenset({"Unit", "Service", "Install"}),
    # Quadlet passes [Unit], [Service] and [Install] through; [Quadlet] is its own (podman 5).
    "container": frozenset({"Unit", "Container", "Service", "Install", "Quadlet"}),
}
# The section each kind needs, and the keys of which it needs one.
REQUIRED: dict[str, tuple[str, tuple[str, ...]]] = {
    "service": ("Service", ("ExecStart",)),
    "container": ("Container", ("Image", "Rootfs")),
}
_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
# C0 controls but the tab, and DEL: never in a unit file written by hand.
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True)
class UnitFile:
    """A checked unit file: what is written to ``apps/{name}.{kind}``."""

    name: str  # the plugin's name, the file's stem and its unit's
    kind: str  # "service" | "container"
    data: bytes

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.kind}"

    @property
    def unit(self) -> str:
        """The unit it runs as: Quadlet makes ``x.service`` of ``x.container``."""
        return f"{self.name}.service"


@dataclass
class _Reading:
    """What a pass over the lines has seen so far."""

    kind: str
    section: str | None = None
    # section -> the line of its first header; key -> the lines of its non-empty assignments
    headers: dict[str, int] | None = None
    values: dict[tuple[str, str], list[int]] | None = None
    oneshot: bool = False


def check_kind(kind: object) -> str:
    if kind not in KINDS:
        raise InvalidUnitFileError(f"'kind' must be one of {', '.join(KINDS)} (got {kind!r})")
    return str(kind)


def split_filename(filename: str) -> tuple[str, str]:
    """``("x", "service")`` of ``x.service``; the name's own rule is the layout's to check."""
    stem, dot, kind = filename.rpartition(".")
    if not dot or not stem or kind not in KINDS:
        raise InvalidUnitFileError(
            f"a unit file is named NAME.service or NAME.container (got {filename!r})"
        )
    return stem, kind


def read(path: object) -> tuple[str, str, bytes]:
    """``(name, kind, data)`` of the unit file at ``path``, read as hecated's user.

    The file the user names (``{"path": ...}``): absolute, its last step not a
    symlink (the name says which plugin it is, so it must be the file's own),
    a regular file (a FIFO never hangs the read), at most ``UNIT_FILE_MAX``
    bytes. Its owner may be anyone: a packaged unit file is root's. The
    directories on the way are the user's business and are followed."""
    if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
        raise InvalidFieldError(f"'path' must be an absolute path (got {path!r})")
    try:
        os.fsencode(path)
    except UnicodeEncodeError:  # a lone surrogate from the JSON: no file has that name
        raise InvalidFieldError(f"'path' is not a file name (got {path!r})") from None
    directory, filename = os.path.split(path)
    name, kind = split_filename(filename)
    try:
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidFieldError(f"cannot open {directory}: {exc.strerror}") from None
    with opened(dir_fd):
        try:
            st = os.stat(filename, dir_fd=dir_fd, follow_symlinks=False)
            if st.st_size > UNIT_FILE_MAX:
                raise InvalidUnitFileError(_too_big(st.st_size))
            data = read_regular(dir_fd, filename, UNIT_FILE_MAX, any_owner=True)
        except FileNotFoundError:
            data = None
        except OSError as exc:  # not allowed, a name too long, ...: the request's fault
            raise InvalidFieldError(f"cannot read {path}: {exc.strerror}") from None
    if data is None:
        raise InvalidFieldError(f"there is no file {path}")
    return name, kind, data


def _too_big(size: int) -> str:
    return f"the unit file is {size} bytes; at most {UNIT_FILE_MAX} are accepted"


def check(name: str, kind: str, data: bytes) -> UnitFile:
    """``data`` as a checked ``UnitFile``, or ``InvalidUnitFileError`` naming the first problem.

    ``name`` must already be a valid plugin name (``Layout.check_plugin_name``)."""
    kind = check_kind(kind)
    if len(data) > UNIT_FILE_MAX:
        raise InvalidUnitFileError(_too_big(len(data)))
    if data.startswith(b"\xef\xbb\xbf"):
        raise InvalidUnitFileError("line 1: a byte-order mark; save the file without one", 1)
    reading = _Reading(kind, headers={}, values={})
    for number, line in _logical_lines(data):
        _check_line(reading, number, line)
    # The last line's number, for what is missing at the end ("a\n" has one line).
    _check_required(reading, max(1, data.count(b"\n") + (not data.endswith(b"\n"))))
    return UnitFile(name, kind, data)


def _logical_lines(data: bytes):
    """(its last physical line, the logical line) for each non-comment line, continued."""
    pending: list[str] = []
    number = 0
    for number, raw in enumerate(data.split(b"\n"), 1):
        line = _decode(raw, number)
        stripped = line.strip(WHITESPACE)
        if (stripped and stripped[0] in COMMENTS) or not (stripped or pending):
            # A comment, also between continued lines (systemd.syntax(5)); an empty
            # line ends a continued one (systemd 252 reads it so).
            continue
        if _continues(line):
            pending.append(line[:-1] + " ")
            continue
        yield number, "".join(pending) + line
        pending = []
    if pending:  # the file ends in a backslash: systemd reads what it has
        yield number, "".join(pending)


def _decode(raw: bytes, number: int) -> str:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidUnitFileError(
            f"line {number}: not UTF-8 (byte {exc.start + 1} of the line)", number
        ) from None
    bad = _CONTROL_RE.search(line)
    if bad:
        cr = bad.group() == "\r"
        what = "a carriage return (CRLF line ends?)" if cr else "a control character"
        raise InvalidUnitFileError(
            f"line {number}: {what} at column {bad.start() + 1}; unit files are plain text "
            "with Unix line ends",
            number,
        )
    return line


def _continues(line: str) -> bool:
    """An odd run of backslashes at the very end: systemd's ``escaped`` flag left set."""
    run = len(line) - len(line.rstrip("\\"))
    return run % 2 == 1


def _check_line(reading: _Reading, number: int, line: str) -> None:
    text = line.strip(WHITESPACE)
    if text.startswith("["):
        _section(reading, number, text)
        return
    if reading.section is None:
        raise InvalidUnitFileError(
            f"line {number}: an assignment before any [Section] header: {_short(text)}", number
        )
    key, eq, value = text.partition("=")
    key, value = key.strip(WHITESPACE), value.strip(WHITESPACE)
    if not eq:
        raise InvalidUnitFileError(
            f"line {number}: not a Key=value line, a [Section] header or a comment: {_short(text)}",
            number,
        )
    if not _KEY_RE.fullmatch(key):
        raise InvalidUnitFileError(f"line {number}: {_short(key)!r} is not a key name", number)
    _assign(reading, number, key, value)


def _section(reading: _Reading, number: int, text: str) -> None:
    if not text.endswith("]") or len(text) < 3:
        raise InvalidUnitFileError(
            f"line {number}: a section header is [Name] on a line of its own: {_short(text)}",
            number,
        )
    name = text[1:-1]
    allowed = SECTIONS[reading.kind]
    if name not in allowed and not (name.startswith("X-") and _KEY_RE.fullmatch(name)):
        names = ", ".join(f"[{s}]" for s in sorted(allowed))
        raise InvalidUnitFileError(
            f"line {number}: a .{reading.kind} file has no section [{_short(name)}] "
            f"(it may have {names} and [X-...] ones of its own)",
            number,
        )
    reading.section = name
    assert reading.headers is not None
    reading.headers.setdefault(name, number)


def _assign(reading: _Reading, number: int, key: str, value: str) -> None:
    """Keep the lines of the assignments the kind needs; an empty value resets a list."""
    assert reading.section is not None and reading.values is not None
    where = (reading.section, key)
    if reading.section == "Service" and key == "Type":
        reading.oneshot = value == "oneshot"
    if value:
        reading.values.setdefault(where, []).append(number)
    else:
        reading.values.pop(where, None)  # "ExecStart=" empties the list, as in systemd


def _check_required(reading: _Reading, last: int) -> None:
    assert reading.headers is not None and reading.values is not None
    section, keys = REQUIRED[reading.kind]
    header = reading.headers.get(section)
    needs = "=, ".join(keys) + "="
    if header is None:
        raise InvalidUnitFileError(
            f"line {last}: the file ends without a [{section}] section "
            f"(a .{reading.kind} needs one, with {needs.replace(', ', ' or ')})",
            last,
        )
    if not any((section, key) in reading.values for key in keys):
        raise InvalidUnitFileError(
            f"line {header}: [{section}] has no {needs.replace(', ', ' or ')} "
            f"(a .{reading.kind} cannot run without it)",
            header,
        )
    starts = reading.values.get(("Service", "ExecStart"), [])
    if reading.kind == "service" and len(starts) > 1 and not reading.oneshot:
        raise InvalidUnitFileError(
            f"line {starts[1]}: a second ExecStart=; only a Type=oneshot service may have "
            "more than one (systemd refuses the unit)",
            starts[1],
        )


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."

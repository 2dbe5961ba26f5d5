"""Which headers cross the wing, each way: end-to-end ones pass, hop-by-hop ones stop,
and the peer's credentials are hecated's to vouch for, never the client's."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from hecated.http.hooks import HEADERS_KEY
from hecated.protocol import Peer

PEER_PID_HEADER = "X-Hecate-Peer-Pid"
PEER_UID_HEADER = "X-Hecate-Peer-Uid"
# In a header or a reason phrase: what cannot be written back on one line, as it came.
_UNSAFE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded. Host is ours
# to set, the peer headers are ours to vouch for (a client must not forge them).
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
NOT_FORWARDED = HOP_BY_HOP | {
    "host",
    "content-length",
    "expect",
    PEER_PID_HEADER.lower(),
    PEER_UID_HEADER.lower(),
}


def request_headers(environ: dict[str, Any], peer: Peer) -> list[tuple[str, str]]:
    """End-to-end headers of the client's request, plus Host and the peer's credentials."""
    connection = environ.get("HTTP_CONNECTION")
    listed = {t.strip().lower() for t in connection.split(",")} if connection else ()
    out = [("Host", "localhost")]
    if environ.get("CONTENT_TYPE"):
        out.append(("Content-Type", environ["CONTENT_TYPE"]))
    headers = environ.get(HEADERS_KEY)  # the few headers alone, when the server gives them
    pairs = environ.items() if headers is None else (("HTTP_" + k, v) for k, v in headers.items())
    for key, value in pairs:
        known = _KEYS.get(key, _UNSEEN)
        if known is _UNSEEN:
            known = _learn(key)
        if known is not None and known[1] not in listed:
            out.append((known[0], value))
    out.append((PEER_PID_HEADER, str(peer.pid)))
    out.append((PEER_UID_HEADER, str(peer.uid)))
    return out


# An environ key -> the header it forwards as (its name, lower-cased), or None: not a
# header, or one never forwarded. Learnt once per key (a request's environ has ~25
# keys, most of them waitress's own); bounded, as clients choose their headers' names.
_KEYS: dict[str, tuple[str, str] | None] = {}
_KEYS_MAX = 4096
_UNSEEN: Any = object()


def _learn(key: str) -> tuple[str, str] | None:
    known = None
    if key.startswith("HTTP_"):
        name = key[5:].replace("_", "-").title()
        # Content-Type is the environ's CONTENT_TYPE (sent above), never an HTTP_ key.
        if name.lower() not in NOT_FORWARDED and name != "Content-Type":
            known = (name, name.lower())
    if len(_KEYS) < _KEYS_MAX:
        _KEYS[key] = known
    return known


def response_headers(
    headers: Iterable[tuple[str, str]], chunked: bool = False
) -> list[tuple[str, str]]:
    """The plugin's answer's headers without the hop-by-hop ones (WSGI forbids them);
    without Content-Length when the answer came chunked (it leaves un-chunked, and the
    serving layer frames it anew)."""
    pairs = list(headers)
    listed = {
        t.strip().lower() for k, v in pairs if k.lower() == "connection" for t in v.split(",")
    }
    if chunked:
        listed.add("content-length")
    return [(k, v) for k, v in pairs if k.lower() not in HOP_BY_HOP and k.lower() not in listed]


def answer_problem(response: Any) -> str | None:
    """Why the plugin's answer (``wire.Reply``, head read) cannot be passed
    on faithfully, as the end of a sentence; or None.

    An answer whose framing two readers could take two ways (RFC 9112 6.3: chunked
    with a length, lengths that differ) would be cut or run on at the client, and a
    pipelined next answer lost; a folded header or a control character in the status
    line cannot be written back as it came; ``101`` would switch the client's
    connection to a protocol hecated does not relay.
    """
    if 100 <= response.status < 200:
        return f"answered {response.status}: upgrades and interim answers are not forwarded"
    if _UNSAFE.search(response.reason or ""):
        return "sent a control character in its status line's reason phrase"
    pairs = response.getheaders()
    if _UNSAFE.search("\t".join(k + "\t" + v for k, v in pairs)):  # one search: per answer
        return "sent a header folded over lines (obs-fold) or holding a control character"
    lengths = set()
    codings = []
    for k, v in pairs:
        low = k.lower()
        if low == "content-length":
            lengths.add(v.strip())
        elif low == "transfer-encoding":
            codings += [t.strip().lower() for t in v.split(",")]
    if codings and codings != ["chunked"]:
        return f"sent Transfer-Encoding {', '.join(codings)!r}: only chunked is relayed"
    if codings and lengths:
        return "sent both Transfer-Encoding: chunked and Content-Length: conflicting framing"
    if len(lengths) > 1:
        return f"sent Content-Lengths that differ ({', '.join(sorted(lengths))})"
    length = lengths.pop() if lengths else "0"
    if not (length.isascii() and length.isdigit()):
        return f"sent a Content-Length that is not a number ({length!r})"
    return None

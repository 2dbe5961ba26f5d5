"""Which headers cross the wing, each way: end-to-end ones pass, hop-by-hop ones stop,
and the peer's credentials are hecated's to vouch for, never the client's."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hecated.protocol import Peer

PEER_PID_HEADER = "X-Hecate-Peer-Pid"
PEER_UID_HEADER = "X-Hecate-Peer-Uid"

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
    listed = {t.strip().lower() for t in environ.get("HTTP_CONNECTION", "").split(",")}
    out = [("Host", "localhost")]
    if environ.get("CONTENT_TYPE"):
        out.append(("Content-Type", environ["CONTENT_TYPE"]))
    for key, value in environ.items():
        if not key.startswith("HTTP_"):
            continue
        name = key[5:].replace("_", "-").title()
        if name.lower() in NOT_FORWARDED or name.lower() in listed:
            continue
        out.append((name, value))
    out.append((PEER_PID_HEADER, str(peer.pid)))
    out.append((PEER_UID_HEADER, str(peer.uid)))
    return out


def response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The plugin's answer's headers without the hop-by-hop ones (WSGI forbids them)."""
    pairs = list(headers)
    listed = {
        t.strip().lower() for k, v in pairs if k.lower() == "connection" for t in v.split(",")
    }
    return [(k, v) for k, v in pairs if k.lower() not in HOP_BY_HOP and k.lower() not in listed]

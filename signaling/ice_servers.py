"""STUN/TURN servers handed to clients, with short-lived TURN credentials.

`ice_servers` (settings) lists STUN/TURN URLs (RFC 7064 `stun:`/`stuns:`,
RFC 7065 `turn:`/`turns:`, e.g. "turn:turn.example.org:3478?transport=udp").
TURN URLs get credentials from the shared `turn_secret` as coturn's REST
API ("TURN REST API", draft-uberti-behave-turn-rest-00 s2.2; coturn's
`use-auth-secret` + `static-auth-secret`) expects:

    username = "<expiry unix seconds>:<id>"
    password = base64(HMAC-SHA1(turn_secret, username))

valid until the expiry (now + `turn_credential_ttl_s`). The secret never
leaves the node: only derived, expiring credentials reach clients.

Clients receive them as RTCIceServer dictionaries (W3C webrtc-pc s4.2.1:
{"urls", "username", "credential"}) in the socket.io `join` ack, and as
WHIP/WHEP `Link: <url>; rel="ice-server"; username=...; credential=...;
credential-type="password"` headers on the 201 (RFC 9725 s4.6, RFC 8829
s5 for the link relation's attributes).

The server's own peers stay host-only (DESIGN.md "TURN and STUN").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass

TURN_SCHEMES = ("turn:", "turns:")
STUN_SCHEMES = ("stun:", "stuns:")


@dataclass(frozen=True)
class IceServer:
    """One RTCIceServer: `urls` as given, username/credential for TURN."""

    url: str
    username: str | None = None
    credential: str | None = None

    def to_json(self) -> dict[str, str]:
        server = {"urls": self.url}
        if self.username is not None and self.credential is not None:
            server.update(username=self.username, credential=self.credential)
        return server

    def link_header(self) -> str:
        """RFC 9725 s4.6: one Link header value."""
        value = f'<{self.url}>; rel="ice-server"'
        if self.username is not None and self.credential is not None:
            value += (f'; username="{_quoted(self.username)}"; credential="{_quoted(self.credential)}"'
                      '; credential-type="password"')
        return value


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def turn_credentials(secret: str, holder_id: str, expires_at: int) -> tuple[str, str]:
    """(username, password) for coturn's use-auth-secret: username is
    "<expires_at>:<holder_id>" (unix seconds), password the base64 of
    HMAC-SHA1 over the username keyed with the shared secret."""
    username = f"{expires_at}:{holder_id}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


class IceServers:
    """What a node tells clients. `now` is injectable (unix seconds)."""

    def __init__(self, urls: tuple[str, ...], turn_secret: str | None, ttl_s: int,
                 now: Callable[[], float] = time.time) -> None:
        self._urls = urls
        self._secret = turn_secret
        self._ttl_s = ttl_s
        self._now = now

    def __repr__(self) -> str:  # never the secret
        return f"IceServers(urls={self._urls!r}, ttl_s={self._ttl_s})"

    def for_holder(self, holder_id: str) -> list[IceServer]:
        """The servers for one client; TURN entries carry fresh credentials
        naming `holder_id` (a token's subject: coturn logs it)."""
        servers = []
        expires = int(self._now()) + self._ttl_s
        for url in self._urls:
            if url.startswith(TURN_SCHEMES) and self._secret:
                username, password = turn_credentials(self._secret, holder_id, expires)
                servers.append(IceServer(url, username, password))
            else:
                servers.append(IceServer(url))
        return servers

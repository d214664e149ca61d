"""The one error type the domain raises. Every edge (socket.io ack, HTTP
response, CLI) turns it into `{"error": {"code", "message"}}`."""

from __future__ import annotations

# code -> HTTP status, for the edges that answer over HTTP
HTTP_STATUS = {
    "invalid": 400,
    "token_missing": 401,
    "token_invalid": 401,
    "token_expired": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "unsupported_media_type": 415,
    "ice_failed": 410,  # a WHIP/WHEP session that ended by itself: why (streaming/peer_end.py)
    "connection_lost": 410,
    "ended_by_operator": 410,  # an operator ended someone else's publish
    "full": 429,
    "too_many_seats": 429,  # the token's holder has its seats already
    "too_many_sources": 429,  # the token's holder, or the forum, has its sources already
    "rate_limited": 429,
    "moved": 307,  # another node hosts the forum: the answer carries its URL (signaling/ownership.py)
    "unavailable": 503,
    "internal": 500,  # a bug of ours, never the input's fault (the fuzz test keeps inputs from it)
}


class RoomError(Exception):
    """A refused request, with a stable machine-readable `code` and a
    message a person can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 400)

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}

"""The one refusal type of the media plane."""

from __future__ import annotations

CODES = ("invalid_sdp", "unsupported_codec", "not_found", "unavailable")


class MediaError(Exception):
    """A refused media request: `code` is one of CODES, `message` says what
    to fix. Edges map it like rooms.errors.RoomError."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}

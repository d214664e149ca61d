"""The status wall's alerts per forum (signaling/status_wall.alerts), a
pure function of the forum's status parts."""

from __future__ import annotations

from signaling.status_wall import alerts

LIVE = {"name": "Ada", "state": "live"}
LOST = {"name": "Venue", "state": "lost"}
RETRYING = {"name": "YouTube", "state": "retrying", "last_error": "Connection refused"}
PUSHING = {"name": "Bilibili", "state": "live", "last_error": None}
RECORDING = {"state": "recording", "alert": ""}
FAILED = {"state": "failed", "alert": "the disk is full: recording stopped"}


def test_a_calm_forum_has_no_alert() -> None:
    assert alerts([LIVE], [PUSHING], RECORDING, disk_low=False) == []
    assert alerts([], [], None, disk_low=True) == []  # a low disk matters where a forum records


def test_each_kind_of_alert() -> None:
    assert alerts([LIVE, LOST], [PUSHING, RETRYING], RECORDING, disk_low=True) == [
        {"kind": "source_lost", "name": "Venue"},
        {"kind": "restream_retrying", "name": "YouTube", "detail": "Connection refused"},
        {"kind": "disk_low"},
    ]
    assert alerts([], [], FAILED, disk_low=True) == [
        {"kind": "recording_failed", "detail": "the disk is full: recording stopped"}]
    finalized_early = {"state": "finalized", "alert": "the disk failed (EIO): recording stopped"}
    assert alerts([], [], finalized_early, disk_low=False)[0]["kind"] == "recording_failed"

"""Fixtures shared by the streaming tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from streaming.media_config import MediaConfig
from streaming.media_plane import MediaPlane
from tests.aiortc_peers import LOOPBACK


@pytest.fixture
async def plane() -> AsyncIterator[MediaPlane]:
    """A started media plane offering loopback ICE candidates only, with
    the default settings (a test that needs others defines its own
    `plane`); stopped after the test."""
    started = MediaPlane(MediaConfig(ice_addresses=LOOPBACK))
    await started.start()
    try:
        yield started
    finally:
        await started.stop()

"""200 viewers join and leave (in batches): nothing is left behind."""

from __future__ import annotations

import asyncio
import gc
import os

import pytest

from aiortc import RTCPeerConnection

from streaming.downtrack import Downtrack
from streaming.media_config import MediaConfig
from streaming.media_plane import MediaPlane
from streaming.viewer import WebRtcViewer
from tests.aiortc_peers import TestPublisher, TestViewer, connect_publisher, connect_viewer
from tests.eventually import eventually

pytestmark = pytest.mark.timeout(240)

TOTAL = 200
BATCH = 20


def live_objects(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def udp_sockets() -> int:
    """UDP sockets this process holds (inodes of /proc/self/fd that are in
    /proc/net/udp)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with open(table) as f:
            next(f)
            for line in f:
                if line.split()[9] in inodes:
                    count += 1
    return count


async def test_200_viewers_join_and_leave_without_leaks() -> None:
    plane = MediaPlane(MediaConfig(ice_addresses=("127.0.0.1",)))
    await plane.start()
    publisher = TestPublisher(fps=15)
    try:
        await connect_publisher(plane, "f1", "cam", publisher)
        probe = TestViewer(audio=False)
        await connect_viewer(plane, "f1", "probe", probe)
        await probe.wait_frames(3)
        await probe.close()
        await eventually(lambda: plane.stats()["viewers"] == 0, timeout=20, what="the probe to be cleaned up")
        # the baseline is taken with a publisher streaming and one viewer
        # having come and gone (aiortc's lazily created objects exist now)
        base_tasks = len(asyncio.all_tasks())
        base_fds = open_fds()
        base_udp = udp_sockets()
        gc.collect()
        base_pcs = live_objects(RTCPeerConnection)  # the publisher's two ends
        forwarded_before = plane.stats()["packets_forwarded"]

        for batch in range(TOTAL // BATCH):
            viewers = [TestViewer(decode=False) for _ in range(BATCH)]
            ids = [f"b{batch}-v{i}" for i in range(BATCH)]
            await asyncio.gather(
                *(connect_viewer(plane, "f1", vid, v) for vid, v in zip(ids, viewers))
            )
            await eventually(lambda: plane.stats()["bus_subscribers"] == 2 * BATCH, timeout=20,
                             what="all viewers subscribed")
            # half leave through the plane, half just close their browser
            await asyncio.gather(*(plane.leave(vid) for vid in ids[: BATCH // 2]))
            await asyncio.gather(*(v.close() for v in viewers))
            await eventually(lambda: plane.stats()["viewers"] == 0, timeout=20, what="closed viewers to be cleaned up")
            del viewers  # the test's own (closed) client peers

        stats = plane.stats()
        assert stats["viewers"] == 0
        assert stats["bus_subscribers"] == 0
        assert stats["peers"] == 1  # the publisher
        assert stats["packets_forwarded"] > forwarded_before
        assert stats["decoders_created"] == 0
        # tasks: aiortc tasks finish as their peers close; allow the few
        # short-lived ones in flight at any moment (a PLI being sent, the
        # plane's own leave tasks finishing)
        await eventually(lambda: len(asyncio.all_tasks()) <= base_tasks + 3, timeout=20, what="tasks to settle")
        assert open_fds() <= base_fds + 2
        assert udp_sockets() <= base_udp
        # and no memory: every viewer session, downtrack and peer is garbage
        gc.collect()
        assert live_objects(WebRtcViewer) == 0
        assert live_objects(Downtrack) == 0
        assert live_objects(RTCPeerConnection) <= base_pcs
    finally:
        await publisher.close()
        await plane.stop()
    assert plane.stats()["peers"] == 0


async def test_a_viewer_whose_dtls_fails_is_cleaned_up_by_itself() -> None:
    import re

    plane = MediaPlane(MediaConfig(ice_addresses=("127.0.0.1",)))
    await plane.start()
    publisher = TestPublisher(fps=15, audio=False)
    viewer = TestViewer(decode=False)
    try:
        await connect_publisher(plane, "f1", "cam", publisher)
        base_tasks = len(asyncio.all_tasks())
        offer = await viewer.offer()
        # a fingerprint that will not match the viewer's certificate
        forged = re.sub(r"(a=fingerprint:sha-256 )([0-9A-F:]+)", lambda m: m.group(1) + ":".join(["AB"] * 32), offer)
        assert forged != offer
        answer = await plane.watch("f1", "forged", forged)
        await viewer.accept(answer)
        assert plane.stats()["viewers"] == 1
        await eventually(lambda: plane.stats()["viewers"] == 0, timeout=20, what="the failed viewer to be dropped")
        assert plane.stats()["bus_subscribers"] == 0
        await viewer.close()
        await eventually(lambda: len(asyncio.all_tasks()) <= base_tasks + 3, timeout=20, what="tasks to settle")
    finally:
        await viewer.close()
        await publisher.close()
        await plane.stop()

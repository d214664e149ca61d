"""The load tester's counting (streaming/light_viewer.py) from clear RTP
headers: sequence gaps across the 16-bit wrap (RFC 3550 A.1, A.3)."""

from __future__ import annotations

from streaming.light_viewer import LightViewer, payload_kinds
from signaling.loadtest import _percentiles


def rtp(seq: int, pt: int = 102, ssrc: int = 0x1234) -> bytes:
    return bytes([0x80, pt]) + seq.to_bytes(2, "big") + bytes(4) + ssrc.to_bytes(4, "big") + bytes(100)


async def test_gaps_across_the_wrap_are_counted_as_loss() -> None:
    viewer = LightViewer("v0", sample_every=10**9)
    try:
        viewer._kinds = payload_kinds("m=video 9 UDP/TLS/RTP/SAVPF 102\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n")
        for seq in (65534, 65535, 0, 2, 1, 3):  # 1 arrives late: not lost
            viewer._on_datagram(rtp(seq), ("127.0.0.1", 1))
        viewer._on_datagram(rtp(10, pt=111, ssrc=7), ("127.0.0.1", 1))
        viewer._on_datagram(rtp(12, pt=111, ssrc=7), ("127.0.0.1", 1))  # 11 lost
        counts = viewer.counts()
        assert (counts.video, counts.audio) == (6, 2)
        assert counts.expected == 6 + 3 and counts.lost == 1
        assert counts.rtp_bytes == 8 * 112
        assert viewer.first_video_at > 0
    finally:
        await viewer.close()


async def test_a_short_or_empty_datagram_is_dropped_and_counted_not_raised() -> None:
    """A runt on a viewer's socket raised IndexError in the reader thread,
    which ended the counting of every viewer of the worker process."""
    viewer = LightViewer("v0", sample_every=10**9)
    try:
        viewer._kinds = payload_kinds("m=video 9 UDP/TLS/RTP/SAVPF 102\r\n")
        for runt in (b"", bytes([0x80]), bytes([0x80, 102, 0, 1])):
            viewer._on_datagram(runt, ("127.0.0.1", 1))
        viewer._on_datagram(rtp(5), ("127.0.0.1", 1))
        counts = viewer.counts()
        assert (counts.malformed, counts.video, counts.lost) == (3, 1, 0)
    finally:
        await viewer.close()


def test_percentiles_are_nearest_rank() -> None:
    assert _percentiles([]) == {"p50": None, "p95": None, "p99": None, "max": None}
    values = [float(v) for v in range(1, 101)]
    assert _percentiles(values) == {"p50": 50.0, "p95": 95.0, "p99": 99.0, "max": 100.0}

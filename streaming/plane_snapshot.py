"""What a node's media plane is doing, read at one instant (for /metrics).

Everything here is read from counters the per-packet path already keeps
(RtpSource's history ring, Downtrack.packets/octets, viewers' RTCP
receiver reports): taking a snapshot adds no work per packet. A snapshot
walks every source's history (1,024 slots) and every viewer once, so it
costs O(sources x 1024 + viewers): call it per scrape, not per packet.
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW_S = 2.0  # bitrate, loss and jitter are measured over the last 2 s of history


@dataclass(frozen=True)
class SourceWindow:
    """One track's receive side over the last WINDOW_S seconds.

    bitrate_kbps: RTP payload + 12-byte header, kilobits per second.
    loss_ratio: 0..1, sequence numbers missing in the window (RFC 3550
    A.3 "expected minus received", late retransmissions counted received).
    jitter_ms: RFC 3550 6.4.1 interarrival jitter, milliseconds, computed
    over the window's packets in sequence order. None when the window
    holds fewer than two packets."""

    packets: int
    bitrate_kbps: float
    loss_ratio: float | None
    jitter_ms: float | None


@dataclass(frozen=True)
class SourceSnapshot:
    forum_id: str
    source_id: str
    kind: str  # "video" or "audio"
    source_kind: str  # live, venue, recorded, slate (rooms.models.SourceKind)
    packets_received: int  # since the track started
    window: SourceWindow


@dataclass(frozen=True)
class ForumSnapshot:
    forum_id: str
    viewers: int
    program_source: str | None  # the source on the program bus; None: nothing on air
    worst_viewer_loss_ratio: float | None  # the highest fraction lost a viewer's RTCP reported (RFC 3550 6.4.1)


@dataclass(frozen=True)
class PlaneSnapshot:
    forums: tuple[ForumSnapshot, ...]
    sources: tuple[SourceSnapshot, ...]
    publishers: int
    viewers: int
    packets_out: int  # RTP packets sent to viewers since start (retransmissions included)
    bytes_out: int  # their RTP bytes before SRTP, since start
    retransmitted: int  # of packets_out, answers to viewers' NACKs
    dropped_frames: int  # video frames not sent to a viewer whose socket was backed up (DESIGN.md)
    send_errors: int  # packets to live viewers that SRTP or the socket refused (viewers gone before are not kept)
    udp_port_dropped: tuple[tuple[str, int], ...] = ()  # (reason, datagrams) the shared udp_port dropped (udp_mux.py)

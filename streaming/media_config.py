"""Settings of one node's media plane."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MediaConfig:
    ice_addresses: tuple[str, ...] = ()
    """Host addresses ICE gathers on and accepts from remotes; () = every
    local interface. Tests pass ("127.0.0.1",)."""
    udp_port: int = 0
    """One UDP port for every peer connection's ICE, DTLS and SRTP (bound
    on each ICE address at start; streaming/udp_mux.py); 0 = a socket per
    connection on an ephemeral port."""
    fanout_batch: bool = True
    """Steady-state viewers are sent to in one C call per packet (header,
    SRTP protect, send/sendmmsg: streaming/fanout_batch.py) when the
    extension is built; False: one Python call per viewer per packet."""
    ice_tcp: bool = True
    """With `udp_port`: also listen for ICE-TCP (RFC 6544 passive host
    candidates) on the same port number, for peers whose network drops UDP
    (streaming/ice_tcp.py). No effect without `udp_port`."""
    keyframe_request_interval: float = 0.5
    """Seconds; keyframe requests sent upstream are coalesced per source."""
    history_packets: int = 1024
    """Packets kept per source to answer NACKs (libsrtp's replay window is 1024)."""
    ffmpeg: str = ""
    """ffmpeg binary path ("" = imageio-ffmpeg's)."""
    slate_grace: float = 1.0
    """Seconds before the slate covers a lost program source."""
    ice_timeout: float = 30.0
    """Seconds a publisher may take to connect (ICE + DTLS) after its
    answer; then it is ended with the reason "ice_failed". Viewers use
    `connect_timeout` (shorter: a seat must come back fast)."""
    publisher_timeout: float = 20.0
    """Seconds without any datagram from a WebRTC/WHIP publisher (RTP, RTCP,
    STUN) before its peer is closed. Replaces RFC 7675 consent for
    publishers, which ffmpeg's WHIP muxer does not answer."""
    media_timeout: float = 2.0
    """Seconds without packets before a source counts as lost."""
    track_timeout: float = 5.0
    """Seconds one track of a flowing source may send nothing before the
    slate's picture or silence stands in (a camera turned off); longer than
    media_timeout so that a static screen share's sparse frames do not flash
    the slate."""
    write_buffer_limit: int = 64 * 1024
    """Bytes queued on a viewer's socket before its video drops to the next keyframe."""
    connect_timeout: float = 10.0
    """Seconds a viewer's ICE and DTLS may take to connect; one still not
    connected then is ended with the reason "ice_failed" (its seat is given
    back), so a player that posts an offer and never completes holds
    nothing for long."""

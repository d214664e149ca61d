"""One viewer's copy of one lane (its video or its audio): the per-packet
hot path.

Per packet and viewer the server only rewrites the 12-byte header (SSRC,
sequence number with this viewer's offset, timestamp, payload type),
SRTP-protects it in place in the session's buffer with this viewer's keys
and sends it with send() on the nominated pair's socket, connected to the
viewer (no address per packet; see aiortc_internals.connected_send). No
task, no coroutine, no packetizing, no header extensions.

In the steady state (forwarding, a direct send path) the lane sends to
the viewer through its LaneBatch instead (streaming/fanout_batch.py: the
same steps for every viewer in one C call); this class is then only the
viewer's state and counts, and the path below runs for the rest (waiting
for a keyframe, dropping, late packets, or `batched` off).

A viewer starts at a keyframe; its sequence offset is chosen then, so its
stream has no gap. When its socket backs up, its video stops until the next
keyframe (one is requested) and the offset is re-based so the skipped
packets are never NACKed; audio keeps going.
"""

from __future__ import annotations

import enum
import logging
import random
import struct
from typing import TYPE_CHECKING, Any

from streaming.aiortc_internals import SendPath
from streaming.rtcp_reports import sender_report
from streaming.rtp_source import MAX_PACKET_SIZE, ForwardPacket

if TYPE_CHECKING:
    from streaming.fanout_batch import LaneBatch
    from streaming.program_bus import Lane

logger = logging.getLogger(__name__)

_pack_header = struct.Struct("!BBHII").pack_into
_MAX_PACKET = MAX_PACKET_SIZE  # RtpSource drops larger ones; re-checked off the fast path


class DowntrackState(enum.IntEnum):
    WAITING = 0  # for its first keyframe
    FORWARDING = 1
    DROPPING = 2  # socket backed up: video skipped until the next keyframe


class Downtrack:
    """`pt_by_codec` maps a codec family ('h264', 'vp8', 'opus') to the
    payload type this viewer negotiated for it; a lane carrying a codec the
    viewer lacks sends it nothing."""

    __slots__ = (
        "kind", "ssrc", "pt_by_codec", "pt", "state", "seq_off", "next_out",
        "start_lane_seq", "lane", "write_limit", "_packets", "_octets",
        "_skipped", "dropped_frames", "retransmitted", "_send_errors", "batched", "batch",
        "_buf", "_length", "_protect", "_srtp", "_cdata", "_sendto",
        "_addr", "_buffer_size", "_sock_send", "path", "sdes", "reports",
    )

    def __init__(
        self, kind: str, ssrc: int, pt_by_codec: dict[str, int], write_limit: int, batched: bool = True
    ) -> None:
        self.kind = kind
        self.ssrc = ssrc
        self.pt_by_codec = pt_by_codec
        self.pt: int | None = None
        self.state = DowntrackState.WAITING
        self.seq_off = 0
        # aiortc starts in the lower half so receivers don't see an early
        # wrap-around (SRTP rollover guess); do the same
        self.next_out = random.randrange(0, 0x8000)
        self.start_lane_seq = 0
        self.lane: Lane | None = None
        self.write_limit = write_limit
        self._packets = 0
        self._octets = 0
        self._skipped = 0
        self.dropped_frames = 0
        self.retransmitted = 0
        self._send_errors = 0
        self.batched = batched  # may join its lane's LaneBatch (setting fanout_batch)
        self.batch: LaneBatch | None = None  # the lane's batch while in it
        self.path: SendPath | None = None
        self.sdes = b""  # this SSRC's SDES CNAME, appended to sender reports
        self.reports = 0
        self._buf: Any = None  # memoryview over the SRTP session buffer
        self._length: Any = None
        self._protect: Any = None
        self._srtp: Any = None
        self._cdata: Any = None
        self._sendto: Any = None
        self._addr: tuple[str, int] | None = None
        self._buffer_size: Any = None
        self._sock_send: Any = None

    # --- counts (the batch's while batched, plus this object's) -------------

    def _in_batch(self, index: int) -> int:
        """One of the batch's counts for this viewer (0 when not batched):
        0 packets, 1 octets, 2 send errors, 3 would-block drops."""
        return self.batch.counts(self)[index] if self.batch is not None else 0

    @property
    def packets(self) -> int:
        """RTP packets sent (RFC 3550 SR sender's packet count)."""
        return self._packets + self._in_batch(0)

    @property
    def octets(self) -> int:
        """RTP payload octets sent (RFC 3550 SR sender's octet count)."""
        return self._octets + self._in_batch(1)

    @property
    def send_errors(self) -> int:
        return self._send_errors + self._in_batch(2)

    @property
    def skipped(self) -> int:
        """Packets not sent: not ready yet, or the socket would block."""
        return self._skipped + self._in_batch(3)

    def add_counts(self, packets: int, octets: int, errors: int, would_block: int) -> None:
        """What the batch sent for this viewer (when it leaves it)."""
        self._packets += packets
        self._octets += octets
        self._send_errors += errors
        self._skipped += would_block

    def can_batch(self) -> bool:
        """Forwarding normally over a direct path: the lane may batch it."""
        path = self.path
        return (
            self.batched and self.batch is None and self.state == DowntrackState.FORWARDING
            and self.pt is not None and path is not None and path.fd >= 0 and bool(path.srtp_address)
            and not path.relayed
        )

    # --- wiring ------------------------------------------------------------

    def connect(self, path: SendPath) -> None:
        """Bind the send path (after DTLS connected); hoists every lookup.
        A batched viewer leaves the batch (its socket may have changed) and
        rejoins at the lane's next packet."""
        lane = self.lane
        if self.batch is not None and lane is not None:
            lane.unbatch(self)
        self.path = path
        self._buf = path.buffer
        self._length = path.length
        self._protect = path.protect
        self._srtp = path.srtp
        self._cdata = path.cdata
        self._sendto = path.transport.sendto
        self._addr = path.remote_addr
        self._buffer_size = path.transport.get_write_buffer_size
        self._sock_send = path.sock_send

    def set_codec(self, key: str | None) -> None:
        """The lane now carries codec `key` (None: nothing). A viewer that
        cannot take it waits for a keyframe of one it can, with its
        sequence kept continuous."""
        pt = self.pt_by_codec.get(key) if key is not None else None
        lane = self.lane
        if self.batch is not None:
            if pt is None and lane is not None:
                lane.unbatch(self)
            elif pt is not None:
                self.batch.set_pt(self, pt)
        if pt is None and self.state == DowntrackState.FORWARDING:
            if lane is not None:
                self.next_out = (lane.next_seq + self.seq_off) & 0xFFFF
            self.state = DowntrackState.WAITING
        self.pt = pt

    # --- the hot path --------------------------------------------------

    def forward(self, fp: ForwardPacket, seq: int, ts: int) -> None:
        """One packet of the lane, `seq`/`ts` already in lane space."""
        if self.state != 1 or fp.late:
            if not self._admit(fp, seq, ts):
                return
        pt = self.pt
        if pt is None:
            return
        if self._buffer_size():
            self._forward_queued(fp, seq, ts, pt)
            return
        buf = self._buf
        n = fp.size
        try:
            buf[12:n] = fp.payload
        except TypeError:  # not connected (no buffer yet)
            self._skipped += 1
            return
        _pack_header(buf, 0, 0x80, fp.marker | pt, (seq + self.seq_off) & 0xFFFF, ts, self.ssrc)
        length = self._length
        length[0] = n
        if self._protect(self._srtp, self._cdata, length):
            self._send_errors += 1
            return
        try:
            self._sock_send(buf[: length[0]])  # connected: no address per packet
        except (BlockingIOError, InterruptedError):
            self._sendto(buf[: length[0]], self._addr)  # asyncio buffers a copy
        except OSError:
            self._send_errors += 1
            return
        self._packets += 1
        self._octets += n - 12

    def _forward_queued(self, fp: ForwardPacket, seq: int, ts: int, pt: int) -> None:
        """The socket has a backlog: video drops to the next keyframe once
        it exceeds the limit; otherwise queue behind it, in order."""
        if self.kind == "video" and self._buffer_size() > self.write_limit:
            self._start_dropping(seq)
            return
        buf = self._buf
        n = fp.size
        if buf is None or n > _MAX_PACKET:
            self._skipped += 1
            return
        buf[12:n] = fp.payload
        _pack_header(buf, 0, 0x80, fp.marker | pt, (seq + self.seq_off) & 0xFFFF, ts, self.ssrc)
        self._length[0] = n
        if self._protect(self._srtp, self._cdata, self._length):
            self._send_errors += 1
            return
        self._sendto(buf[: self._length[0]], self._addr)
        self._packets += 1
        self._octets += n - 12

    def _admit(self, fp: ForwardPacket, seq: int, ts: int) -> bool:
        """Slow path: not forwarding yet, or a late packet."""
        if self.state == DowntrackState.FORWARDING:
            # a retransmission from upstream: only if inside this viewer's stream
            return ((seq - self.start_lane_seq) & 0xFFFF) < 0x8000
        if not fp.key or fp.late or self.pt is None or self._buf is None:
            self._skipped += 1
            return False
        # start (or resume) at this keyframe: the frame's first packet gets
        # next_out, so the viewer sees no gap
        first_seq = (seq - ((fp.seq - fp.head[0].seq) & 0xFFFF)) & 0xFFFF if fp.head else seq
        self.seq_off = (self.next_out - first_seq) & 0xFFFF
        self.start_lane_seq = first_seq
        self.state = DowntrackState.FORWARDING
        lane = self.lane
        if fp.head and lane is not None:
            for h in fp.head:
                self.forward(h, (h.seq + lane.seq_off) & 0xFFFF, ts)
        if lane is not None and self.batched:
            lane.ready(self)  # batched from the lane's next packet
        return True

    def blocked(self, seq: int) -> None:
        """The batch could not send lane packet `seq` (the socket would
        block): video drops to the next keyframe as on the Python path
        (the lane has taken it out of the batch); audio goes on."""
        if self.kind == "video":
            self._start_dropping(seq)

    def _start_dropping(self, seq: int) -> None:
        self.state = DowntrackState.DROPPING
        self.next_out = (seq + self.seq_off) & 0xFFFF
        self.dropped_frames += 1
        lane = self.lane
        if lane is not None:
            lane.request_keyframe()

    # --- RTCP out ------------------------------------------------------

    def send_report(self) -> bool:
        """An RTCP sender report with this viewer's true counts and the
        lane's clock (about once a second, from housekeeping)."""
        lane = self.lane
        if lane is None or self.packets == 0:
            return False
        wall, rtp_timestamp = lane.report_clock()
        data = sender_report(self.ssrc, wall, rtp_timestamp, self.packets, self.octets)
        if self.send_rtcp(data + self.sdes):
            self.reports += 1
            return True
        return False

    def send_rtcp(self, data: bytes) -> bool:
        """SRTCP-protect and send a compound RTCP packet."""
        path = self.path
        buf = self._buf
        n = len(data)
        if path is None or buf is None or n > _MAX_PACKET - 16:
            return False
        buf[:n] = data
        length = self._length
        length[0] = n
        if path.protect_rtcp(self._srtp, self._cdata, length):
            self._send_errors += 1
            return False
        self._sendto(buf[: length[0]], self._addr)  # through asyncio: rare, keeps order
        return True

    # --- NACK ----------------------------------------------------------

    def retransmit(self, out_seqs: list[int]) -> int:
        """Answer a NACK from the lane's source history with this viewer's
        header. Returns how many packets were resent."""
        lane = self.lane
        if lane is None or self.state != DowntrackState.FORWARDING or self.pt is None:
            return 0
        resent = 0
        for out in out_seqs:
            lane_seq = (out - self.seq_off) & 0xFFFF
            if ((lane_seq - self.start_lane_seq) & 0xFFFF) >= 0x8000:
                continue  # before this viewer started
            found = lane.lookup(lane_seq)
            if found is None:
                continue
            fp, ts = found
            n = fp.size
            buf = self._buf
            if buf is None or n > _MAX_PACKET:
                continue
            buf[12:n] = fp.payload
            _pack_header(buf, 0, 0x80, fp.marker | self.pt, out, ts, self.ssrc)
            self._length[0] = n
            if self._protect(self._srtp, self._cdata, self._length):
                self._send_errors += 1
                continue
            self._sendto(buf[: self._length[0]], self._addr)
            resent += 1
        self.retransmitted += resent
        return resent

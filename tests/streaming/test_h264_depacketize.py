"""RFC 6184 payloads back into Annex B access units (pure, no I/O)."""

from __future__ import annotations

from streaming.h264_depacketize import START_CODE, H264Depacketizer

SPS = bytes([0x67, 0x42, 0xC0, 0x1E])
PPS = bytes([0x68, 0xCE, 0x3C, 0x80])
IDR = bytes([0x65]) + bytes(range(1, 200))
SLICE = bytes([0x41, 9, 9, 9])


def fu_a(nal: bytes, parts: int) -> list[bytes]:
    indicator = (nal[0] & 0xE0) | 28
    body = nal[1:]
    step = -(-len(body) // parts)
    chunks = [body[i:i + step] for i in range(0, len(body), step)]
    out = []
    for i, chunk in enumerate(chunks):
        header = (nal[0] & 0x1F) | (0x80 if i == 0 else 0) | (0x40 if i == len(chunks) - 1 else 0)
        out.append(bytes([indicator, header]) + chunk)
    return out


def stap_a(*nals: bytes) -> bytes:
    return bytes([24]) + b"".join(len(n).to_bytes(2, "big") + n for n in nals)


def test_an_idr_in_a_stap_a_and_fu_a_becomes_one_access_unit() -> None:
    d = H264Depacketizer()
    assert d.push(stap_a(SPS, PPS), 1, 900, False) == []
    fragments = fu_a(IDR, 3)
    assert d.push(fragments[0], 2, 900, False) == []
    assert d.push(fragments[1], 3, 900, False) == []
    assert d.push(fragments[2], 4, 900, True) == [(900, START_CODE + SPS + START_CODE + PPS + START_CODE + IDR, True)]
    assert d.push(SLICE, 5, 3900, True) == [(3900, START_CODE + SLICE, False)]


def test_a_lost_fragment_drops_that_nal_unit_and_a_lost_marker_ends_the_unit_at_the_next_timestamp() -> None:
    d = H264Depacketizer()
    fragments = fu_a(IDR, 3)
    d.push(SPS, 1, 900, False)
    d.push(fragments[0], 2, 900, False)
    d.push(fragments[2], 4, 900, False)  # seq 3 lost, and the marker packet too
    assert d.push(SLICE, 5, 3900, True) == [(900, START_CODE + SPS, False), (3900, START_CODE + SLICE, False)]

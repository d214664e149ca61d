"""The H.264 sequence parameter set, read: what a source's encoder sends.

Pure functions on the bytes of one SPS NAL unit (ITU-T H.264 (08/2021)
7.3.2.1.1 seq_parameter_set_data, E.1.1 vui_parameters, E.1.2
hrd_parameters): profile, constraint flags, level, coded size with the
frame cropping applied, interlacing, chroma format and bit depth, the
picture order count type, and from the VUI (when present) the frame rate
(timing_info) and max_num_reorder_frames (bitstream_restriction).

`reorder_frames` is what decides whether a stream has B-frames (frames
sent before a frame they precede in display order): WebRTC has no
decode/presentation time split, so receivers of such a stream see RTP
timestamps go backwards and drop or stall on those frames.

No I/O, no state; `parse_sps` raises SpsError on bytes that are not a
well-formed SPS.
"""

from __future__ import annotations

from dataclasses import dataclass

# profiles whose SPS carries chroma_format_idc and friends (7.3.2.1.1)
_HIGH_PROFILES = frozenset((100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135))

PROFILE_NAMES = {
    66: "baseline", 77: "main", 88: "extended", 100: "high", 110: "high 10", 122: "high 4:2:2",
    244: "high 4:4:4", 44: "cavlc 4:4:4",
}


class SpsError(ValueError):
    """The bytes are not a well-formed H.264 SPS."""


@dataclass(frozen=True)
class H264Sps:
    """One SPS, decoded. Sizes in pixels, frame rate in frames per second."""

    profile_idc: int
    constraint_flags: int  # constraint_set0..5 flags and 2 reserved bits: the middle byte of profile-level-id
    level_idc: int
    chroma_format_idc: int  # 1 = 4:2:0 (0 monochrome, 2 = 4:2:2, 3 = 4:4:4)
    bit_depth: int  # luma bits per sample (8 for every browser)
    frame_mbs_only: bool  # False: may be interlaced (field or MBAFF coding)
    pic_order_cnt_type: int  # 2: output order is decoding order (no reordering possible)
    width: int  # after cropping
    height: int  # after cropping
    max_num_ref_frames: int
    frame_rate: float | None  # from VUI timing_info (time_scale / 2 num_units_in_tick), if present
    max_num_reorder_frames: int | None  # from VUI bitstream_restriction, if present

    @property
    def profile_level_id(self) -> str:
        """The SDP profile-level-id (RFC 6184 8.1): profile_idc,
        constraint flags, level_idc as six hex digits, e.g. "42c01e"."""
        return f"{self.profile_idc:02x}{self.constraint_flags:02x}{self.level_idc:02x}"

    @property
    def constrained_baseline(self) -> bool:
        """Baseline with constraint_set1 (RFC 6184 Table 5: what every
        WebRTC H.264 implementation decodes)."""
        return self.profile_idc == 66 and bool(self.constraint_flags & 0x40) or (
            self.profile_idc == 77 and bool(self.constraint_flags & 0x80))

    @property
    def profile_name(self) -> str:
        if self.constrained_baseline:
            return "constrained baseline"
        if self.profile_idc == 100 and self.constraint_flags & 0x0C == 0x0C:
            return "constrained high"
        return PROFILE_NAMES.get(self.profile_idc, f"profile {self.profile_idc}")

    @property
    def level(self) -> str:
        """The level as written in the standard: "3.1", "1b", "4"."""
        if self.level_idc == 11 and self.constraint_flags & 0x10 and self.profile_idc in (66, 77, 88):
            return "1b"
        if self.level_idc == 9:
            return "1b"
        major, minor = divmod(self.level_idc, 10)
        return f"{major}.{minor}" if minor else str(major)

    @property
    def reorder_frames(self) -> int | None:
        """How many frames the decoder may have to hold back for display
        order: 0 means no B-frames; None means the SPS does not say (a
        main/high stream without VUI bitstream_restriction: watch the RTP
        timestamps instead). Baseline has no B slices (A.2.1) and POC
        type 2 forbids reordering (8.2.1.3)."""
        if self.max_num_reorder_frames is not None:
            return self.max_num_reorder_frames
        if self.profile_idc == 66 or self.pic_order_cnt_type == 2:
            return 0
        return None


def unescape(nal: bytes) -> bytes:
    """The RBSP: the NAL without its emulation prevention bytes (7.4.1)."""
    if b"\x00\x00\x03" not in nal:
        return nal
    out = bytearray()
    zeros = 0
    for byte in nal:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


class _Bits:
    """Big-endian bit reader with Exp-Golomb codes (9.1)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0
        self._end = len(data) * 8

    def u(self, n: int) -> int:
        if self._pos + n > self._end:
            raise SpsError("the SPS ends early")
        value = 0
        for _ in range(n):
            byte = self._data[self._pos >> 3]
            value = (value << 1) | ((byte >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value

    def flag(self) -> bool:
        return self.u(1) == 1

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise SpsError("an Exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + (self.u(zeros) if zeros else 0)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _skip_scaling_list(bits: _Bits, size: int) -> None:
    last, next_scale = 8, 8
    for _ in range(size):
        if next_scale != 0:
            next_scale = (last + bits.se()) % 256
        last = next_scale if next_scale != 0 else last


def _skip_hrd(bits: _Bits) -> None:
    count = bits.ue() + 1
    bits.u(8)  # bit_rate_scale, cpb_size_scale
    for _ in range(count):
        bits.ue()
        bits.ue()
        bits.u(1)
    bits.u(20)  # four 5-bit lengths


def parse_sps(nal: bytes) -> H264Sps:
    """Decode one SPS NAL unit (with its one-byte NAL header, type 7; no
    start code). Raises SpsError."""
    if len(nal) < 4 or nal[0] & 0x1F != 7:
        raise SpsError("not an SPS NAL unit (type 7)")
    bits = _Bits(unescape(nal[1:]))
    profile_idc, constraint_flags, level_idc = bits.u(8), bits.u(8), bits.u(8)
    bits.ue()  # seq_parameter_set_id
    chroma_format_idc, bit_depth, separate_planes = 1, 8, False
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = bits.ue()
        if chroma_format_idc > 3:
            raise SpsError(f"chroma_format_idc {chroma_format_idc}")
        if chroma_format_idc == 3:
            separate_planes = bits.flag()
        bit_depth = bits.ue() + 8
        bits.ue()  # bit_depth_chroma_minus8
        bits.u(1)  # qpprime_y_zero_transform_bypass_flag
        if bits.flag():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if bits.flag():
                    _skip_scaling_list(bits, 16 if i < 6 else 64)
    bits.ue()  # log2_max_frame_num_minus4
    poc_type = bits.ue()
    if poc_type == 0:
        bits.ue()  # log2_max_pic_order_cnt_lsb_minus4
    elif poc_type == 1:
        bits.u(1)  # delta_pic_order_always_zero_flag
        bits.se()
        bits.se()
        for _ in range(bits.ue()):
            bits.se()
    elif poc_type != 2:
        raise SpsError(f"pic_order_cnt_type {poc_type}")
    max_num_ref_frames = bits.ue()
    bits.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = bits.ue() + 1
    height_map_units = bits.ue() + 1
    frame_mbs_only = bits.flag()
    if not frame_mbs_only:
        bits.u(1)  # mb_adaptive_frame_field_flag
    bits.u(1)  # direct_8x8_inference_flag
    width = width_mbs * 16
    height = (2 - frame_mbs_only) * height_map_units * 16
    if bits.flag():  # frame_cropping_flag (7.4.2.1.1: units depend on chroma)
        left, right, top, bottom = bits.ue(), bits.ue(), bits.ue(), bits.ue()
        chroma_array_type = 0 if separate_planes else chroma_format_idc
        if chroma_array_type == 0:
            unit_x, unit_y = 1, 2 - frame_mbs_only
        else:
            sub_width = 1 if chroma_format_idc == 3 else 2
            sub_height = 2 if chroma_format_idc == 1 else 1
            unit_x, unit_y = sub_width, sub_height * (2 - frame_mbs_only)
        width -= unit_x * (left + right)
        height -= unit_y * (top + bottom)
        if width <= 0 or height <= 0:
            raise SpsError("the cropping leaves no picture")
    frame_rate: float | None = None
    reorder: int | None = None
    if bits.flag():  # vui_parameters_present_flag
        frame_rate, reorder = _vui(bits)
    return H264Sps(
        profile_idc=profile_idc, constraint_flags=constraint_flags, level_idc=level_idc,
        chroma_format_idc=chroma_format_idc, bit_depth=bit_depth, frame_mbs_only=frame_mbs_only,
        pic_order_cnt_type=poc_type, width=width, height=height, max_num_ref_frames=max_num_ref_frames,
        frame_rate=frame_rate, max_num_reorder_frames=reorder,
    )


def _vui(bits: _Bits) -> tuple[float | None, int | None]:
    """(frame rate, max_num_reorder_frames) from vui_parameters (E.1.1).
    A VUI cut short (some encoders end it early) yields what was read."""
    frame_rate: float | None = None
    try:
        if bits.flag():  # aspect_ratio_info_present_flag
            if bits.u(8) == 255:  # Extended_SAR
                bits.u(32)
        if bits.flag():  # overscan_info_present_flag
            bits.u(1)
        if bits.flag():  # video_signal_type_present_flag
            bits.u(4)
            if bits.flag():  # colour_description_present_flag
                bits.u(24)
        if bits.flag():  # chroma_loc_info_present_flag
            bits.ue()
            bits.ue()
        if bits.flag():  # timing_info_present_flag
            units, scale = bits.u(32), bits.u(32)
            bits.u(1)  # fixed_frame_rate_flag
            if units and scale:
                frame_rate = scale / (2 * units)  # a tick is a field (E.2.1)
        nal_hrd = bits.flag()
        if nal_hrd:
            _skip_hrd(bits)
        vcl_hrd = bits.flag()
        if vcl_hrd:
            _skip_hrd(bits)
        if nal_hrd or vcl_hrd:
            bits.u(1)  # low_delay_hrd_flag
        bits.u(1)  # pic_struct_present_flag
        if bits.flag():  # bitstream_restriction_flag
            bits.u(1)  # motion_vectors_over_pic_boundaries_flag
            for _ in range(4):
                bits.ue()  # max_bytes_per_pic_denom .. log2_max_mv_length_vertical
            return frame_rate, bits.ue()  # max_num_reorder_frames
    except SpsError:
        pass
    return frame_rate, None


def sps_from_rtp(payload: bytes) -> bytes | None:
    """The SPS NAL unit an H.264 RTP payload carries (single NAL unit or
    STAP-A, RFC 6184 5.6-5.7), or None."""
    if not payload:
        return None
    nal_type = payload[0] & 0x1F
    if nal_type == 7:
        return payload
    if nal_type == 24:
        at = 1
        while at + 2 < len(payload):
            size = int.from_bytes(payload[at:at + 2], "big")
            if payload[at + 2] & 0x1F == 7:
                return payload[at + 2:at + 2 + size]
            at += 2 + size
    return None

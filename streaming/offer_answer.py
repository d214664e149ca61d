"""Offer/answer around aiortc (RFC 3264): which payload format of a
publisher's offer forumcast receives, the offer aiortc is shown, and an
answer that follows the offer.

Why: aiortc matches H.264 by profile (it only has constrained baseline
and baseline, packetization-mode 1) because it decodes what it receives.
forumcast never decodes a publisher's video, so any H.264 a browser can
play is fine to receive. The chosen format is shown to aiortc under the
fmtp it knows, and the answer then carries the offer's own fmtp for that
payload type (RFC 6184 s8.2.2: packetization-mode must match; the answer
mirrors profile-level-id). aiortc also writes `a=group:BUNDLE` with every
mid whatever the offer said; RFC 8843 s7.3.2 lets an answer bundle only
mids the offer bundled, so the group is rewritten from the offer's.

Pure text in, text out; no I/O.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiortc import sdp

logger = logging.getLogger(__name__)

# aiortc's own H.264 fmtp (codecs/__init__.py): what it can match
AIORTC_H264_FMTP = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"

# H.264 profiles every browser decodes (profile_idc 66, 77, 100), in the
# order forumcast prefers to receive them
_PLAYABLE_H264 = (
    sdp.H264Profile.PROFILE_CONSTRAINED_BASELINE,
    sdp.H264Profile.PROFILE_BASELINE,
    sdp.H264Profile.PROFILE_MAIN,
    sdp.H264Profile.PROFILE_CONSTRAINED_HIGH,
    sdp.H264Profile.PROFILE_HIGH,
)
_PROFILE_NAMES = {
    sdp.H264Profile.PROFILE_CONSTRAINED_BASELINE: "constrained baseline",
    sdp.H264Profile.PROFILE_BASELINE: "baseline",
    sdp.H264Profile.PROFILE_MAIN: "main",
    sdp.H264Profile.PROFILE_CONSTRAINED_HIGH: "constrained high",
    sdp.H264Profile.PROFILE_HIGH: "high",
    sdp.H264Profile.PROFILE_PREDICTIVE_HIGH_444: "high 4:4:4",
}

# profile_idc of profiles browsers do not decode (for error messages)
_OTHER_PROFILES = {"6e": "high 10", "7a": "high 4:2:2", "f4": "high 4:4:4", "2c": "CAVLC 4:4:4", "58": "extended"}


def fmtp_parameters(fmtp: str) -> dict[str, str]:
    """`a=fmtp` value -> {name: value} (names lower-case; a bare name maps
    to "")."""
    out: dict[str, str] = {}
    for part in fmtp.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            out[name.strip().lower()] = value.strip()
    return out


@dataclass(frozen=True)
class CodecFormat:
    """One payload format of an m-line, as offered (RFC 4566 s6
    `a=rtpmap` and `a=fmtp`). `fmtp` is the offer's text, "" if none."""

    payload_type: int
    name: str  # encoding name as written ("H264", "opus", "VP8")
    clock_rate: int  # Hz
    channels: int | None = None
    fmtp: str = ""

    @property
    def key(self) -> str:
        """Codec family, lower case ("h264", "vp8", "opus", "rtx")."""
        return self.name.lower()

    @property
    def parameters(self) -> Mapping[str, str]:
        return fmtp_parameters(self.fmtp)

    @property
    def packetization_mode(self) -> int:
        """RFC 6184 s8.1; absent means 0."""
        try:
            return int(self.parameters.get("packetization-mode", "0"))
        except ValueError:
            return -1

    @property
    def profile_level_id(self) -> str:
        """H.264 profile-level-id (6 hex digits, lower case); RFC 6184 says
        absent means 42000a, but WebRTC peers mean 42e01f (as aiortc)."""
        return self.parameters.get("profile-level-id", "42e01f").lower()

    @property
    def h264_profile(self) -> str | None:
        """"constrained baseline", "baseline", "main", "constrained high",
        "high", "high 4:4:4"; None if not H.264 or not a known profile."""
        if self.key != "h264":
            return None
        try:
            profile, _level = sdp.parse_h264_profile_level_id(self.profile_level_id)
        except ValueError:
            return None
        return _PROFILE_NAMES.get(profile)

    @property
    def h264_level(self) -> int | None:
        """level_idc x 10 (31 = level 3.1); None if not parsable."""
        try:
            return int(sdp.parse_h264_profile_level_id(self.profile_level_id)[1])
        except ValueError:
            return None

    def receivable(self) -> bool:
        """Whether forumcast receives this format from a publisher and
        forwards it: H.264 that browsers play (any level, packetization
        mode 0 or 1), VP8, Opus."""
        if self.key == "h264":
            if self.packetization_mode not in (0, 1):
                return False
            try:
                profile, _level = sdp.parse_h264_profile_level_id(self.profile_level_id)
            except ValueError:
                return False
            return profile in _PLAYABLE_H264
        return self.key in ("vp8", "opus")

    def describe(self) -> str:
        """How an error message names it: "H.264 high 4:4:4 (f4001f)"."""
        if self.key == "h264":
            profile = self.h264_profile or _OTHER_PROFILES.get(self.profile_level_id[:2])
            name = f"H.264 {profile}" if profile else "H.264"
            mode = self.packetization_mode
            extra = f", packetization-mode {mode}" if mode not in (0, 1) else ""
            return f"{name} ({self.profile_level_id}{extra})"
        if self.key == "h265":
            return "H.265"
        return self.name


@dataclass
class Section:
    """One m-line and its attribute lines (the `m=` line first)."""

    lines: list[str]
    kind: str
    port: int
    payload_types: list[int]
    mid: str | None
    formats: dict[int, CodecFormat] = field(default_factory=dict)

    def receivable_format(self, h264_packetization: int | None = None) -> CodecFormat | None:
        """The format forumcast would receive on this m-line: H.264 before
        VP8 (then Opus); within H.264 the preferred profile, then
        packetization-mode 1, then offer order. With `h264_packetization`,
        only H.264 of that mode (viewers: 1) is considered."""
        usable = [f for f in self.ordered_formats() if f.receivable()]
        if h264_packetization is not None:
            usable = [f for f in usable if f.key == "h264" and f.packetization_mode == h264_packetization]
        if not usable:
            return None

        def rank(f: CodecFormat) -> tuple[int, int, int]:
            family = {"h264": 0, "vp8": 1, "opus": 2}.get(f.key, 3)
            profile = 9
            if f.key == "h264":
                parsed, _ = sdp.parse_h264_profile_level_id(f.profile_level_id)
                profile = _PLAYABLE_H264.index(parsed)
            return family, profile, 0 if f.packetization_mode == 1 else 1

        return min(usable, key=rank)  # min() keeps offer order among equals

    def ordered_formats(self) -> list[CodecFormat]:
        return [self.formats[pt] for pt in self.payload_types if pt in self.formats]


@dataclass
class SessionShape:
    """An SDP split into its session lines and m-line sections."""

    session: list[str]
    sections: list[Section]

    def bundle_groups(self) -> list[list[str]]:
        """The mids of each `a=group:BUNDLE` line (RFC 8843 s7)."""
        groups = []
        for line in self.session:
            if line.startswith("a=group:"):
                parts = line[len("a=group:"):].split()
                if parts and parts[0] == "BUNDLE":
                    groups.append(parts[1:])
        return groups

    def text(self) -> str:
        lines = list(self.session)
        for section in self.sections:
            lines += section.lines
        return "\r\n".join(lines) + "\r\n"


def split(description: str) -> SessionShape:
    """Split an SDP into session and m-line sections (lines kept as
    written, CRLF or LF). Never raises on odd lines: the caller has parsed
    the offer with aiortc already (offer_check.parse_offer)."""
    session: list[str] = []
    sections: list[Section] = []
    for raw in description.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith("m="):
            parts = line[2:].split()
            port = int(parts[1].split("/")[0]) if len(parts) > 1 and parts[1].split("/")[0].isdigit() else 0
            pts = [int(p) for p in parts[3:] if p.isdigit()]
            sections.append(Section([line], parts[0] if parts else "", port, pts, None))
            continue
        if not sections:
            session.append(line)
            continue
        section = sections[-1]
        section.lines.append(line)
        if line.startswith("a=mid:"):
            section.mid = line[len("a=mid:"):].strip()
    for section in sections:
        _read_formats(section)
    return SessionShape(session, sections)


def _read_formats(section: Section) -> None:
    rtpmap: dict[int, tuple[str, int, int | None]] = {}
    fmtp: dict[int, str] = {}
    for line in section.lines:
        name, _, value = line.partition(":")
        pt_text, _, rest = value.partition(" ")
        if not pt_text.isdigit():
            continue
        pt = int(pt_text)
        if name == "a=rtpmap":
            bits = rest.strip().split("/")
            try:
                rate = int(bits[1]) if len(bits) > 1 else 0
                channels = int(bits[2]) if len(bits) > 2 else None
            except ValueError:
                continue
            rtpmap[pt] = (bits[0], rate, channels)
        elif name == "a=fmtp":
            fmtp[pt] = rest.strip()
    for pt, (encoding, rate, channels) in rtpmap.items():
        section.formats[pt] = CodecFormat(pt, encoding, rate, channels, fmtp.get(pt, ""))


def tolerated(offer: str) -> str:
    """The offer as aiortc can take it, meaning the same: without `a=fmtp`
    lines for payload types the m-line does not map (aiortc's parser
    raises StopIteration on them), and with an `a=mid` on each m-line that
    has none (offers from before RFC 8843; aiortc cannot answer them;
    shape_answer takes the mids out again). Everything else is kept."""
    shape = split(offer)
    taken = {s.mid for s in shape.sections if s.mid is not None}
    for index, section in enumerate(shape.sections):
        if section.mid is None:
            mid = str(index)
            while mid in taken:
                mid += "x"
            taken.add(mid)
            section.mid = mid
            section.lines.append(f"a=mid:{mid}")
        mapped = set(section.formats) | {pt for pt in section.payload_types if pt < 96}
        kept = []
        for line in section.lines:
            if line.startswith("a=fmtp:") and _attribute_pt(line) not in mapped:
                logger.debug("offer: dropped %r (no such payload type)", line)
                continue
            kept.append(line)
        section.lines = kept
    return shape.text()


def offer_for_aiortc(offer: str, chosen: Mapping[int, CodecFormat]) -> str:
    """The offer as aiortc should see it. In each section (by m-line
    index) with a chosen format: the other formats of the same family are removed (with
    their RTX), and a chosen H.264 gets aiortc's own fmtp, so aiortc's
    profile match (which exists for its decoder) selects exactly it."""
    shape = split(offer)
    for index, section in enumerate(shape.sections):
        format_ = chosen.get(index)
        if format_ is None:
            continue
        drop = {pt for pt, f in section.formats.items() if f.key == format_.key and pt != format_.payload_type}
        drop |= {
            pt for pt, f in section.formats.items()
            if f.key == "rtx" and _apt(f) in drop
        }
        keep_pts = [pt for pt in section.payload_types if pt not in drop]
        if not keep_pts:
            continue
        lines = [_m_line(section.lines[0], keep_pts)]
        for line in section.lines[1:]:
            pt = _attribute_pt(line)
            if pt is not None and pt in drop:
                continue
            if format_.key == "h264" and pt == format_.payload_type and line.startswith("a=fmtp:"):
                continue  # replaced below
            lines.append(line)
        if format_.key == "h264":
            lines.append(f"a=fmtp:{format_.payload_type} {AIORTC_H264_FMTP}")
        section.lines = lines
    return shape.text()


def shape_answer(answer: str, offer: str, chosen: Mapping[int, CodecFormat]) -> str:
    """aiortc's answer, made to follow the offer:

    - mids only where the offer had them (RFC 3264 s6: the answer's
      m-lines mirror the offer's).
    - `a=group:BUNDLE` only as offered: the offer's groups, each with the
      offered mids the answer accepts (port not 0), RFC 8843 s7.3.2; no
      group if the offer had none (each m-line then has its own
      transport, which aiortc set up from the offer).
    - a chosen H.264 format (by m-line index: an answer has the offer's
      m-lines in the offer's order, RFC 3264 s6) carries the offer's fmtp
      for its payload type (profile-level-id, packetization-mode: RFC 6184
      s8.2.2).
    """
    offered = split(offer)
    shape = split(answer)
    for index, section in enumerate(shape.sections):
        if index < len(offered.sections) and offered.sections[index].mid is None:
            # the offer had no mid here (tolerated() added one for aiortc)
            section.lines = [line for line in section.lines if not line.startswith("a=mid:")]
    accepted = {s.mid for s in shape.sections if s.mid is not None and s.port != 0}
    session = [line for line in shape.session if not line.startswith("a=group:BUNDLE")]
    groups = []
    for mids in offered.bundle_groups():
        kept = [mid for mid in mids if mid in accepted]
        if kept:
            groups.append("a=group:BUNDLE " + " ".join(kept))
    # group lines go after t= (RFC 8866 s5: session attributes follow timing)
    at = next((i + 1 for i, line in enumerate(session) if line.startswith("t=")), len(session))
    shape.session = session[:at] + groups + session[at:]
    for index, section in enumerate(shape.sections):
        format_ = chosen.get(index)
        if format_ is None or format_.key != "h264":
            continue
        lines = [line for line in section.lines if _attribute_pt(line) != format_.payload_type
                 or not line.startswith("a=fmtp:")]
        if format_.fmtp:
            at = next((i + 1 for i, line in enumerate(lines)
                       if line.startswith(f"a=rtpmap:{format_.payload_type} ")), len(lines))
            lines.insert(at, f"a=fmtp:{format_.payload_type} {format_.fmtp}")
        section.lines = lines
    return shape.text()


def _apt(format_: CodecFormat) -> int | None:
    value = format_.parameters.get("apt", "")
    return int(value) if value.isdigit() else None


def _attribute_pt(line: str) -> int | None:
    """The payload type an `a=rtpmap/fmtp/rtcp-fb:PT ...` line is about."""
    for prefix in ("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:"):
        if line.startswith(prefix):
            head = line[len(prefix):].split(" ", 1)[0]
            return int(head) if head.isdigit() else None
    return None


def _m_line(line: str, pts: list[int]) -> str:
    parts = line.split()
    return " ".join(parts[:3] + [str(pt) for pt in pts])

"""Offers real encoders send, and answers that follow them (issue 14
items 3 and 7): every H.264 a browser plays is received and the answer
mirrors its fmtp; harmless SDP variants are accepted; an offer with no
usable codec is refused naming its codecs; BUNDLE, mids and directions
follow the offer, and a no-BUNDLE publisher gets both its media over its
own transports. Real aiortc peers on loopback whose SDP is edited."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from aiortc import sdp

from streaming.media_plane import MediaError, MediaPlane
from streaming.offer_answer import CodecFormat, offer_for_aiortc, shape_answer, split
from tests.aiortc_peers import TestPublisher, TestViewer, connect_viewer
from tests.eventually import eventually

pytestmark = pytest.mark.timeout(120)

Edit = Callable[[str], str]


def h264_only(profile_level_id: str, mode: int = 1) -> Edit:
    """Every H.264 payload type of the offer becomes `profile_level_id`
    with packetization-mode `mode` (what an encoder with that profile offers)."""
    def edit(offer: str) -> str:
        offer = re.sub(r"profile-level-id=[0-9a-fA-F]{6}", f"profile-level-id={profile_level_id}", offer)
        return offer.replace("packetization-mode=1", f"packetization-mode={mode}")
    return edit


def add_lines(after: str, *lines: str) -> Edit:
    def edit(offer: str) -> str:
        return offer.replace(after, "\r\n".join([after, *lines]), 1)
    return edit


def add_video_payloads(*pts: int) -> Edit:
    def edit(offer: str) -> str:
        return re.sub(r"(m=video \d+ UDP/TLS/RTP/SAVPF[\d ]+)", lambda m: m.group(1) + "".join(f" {p}" for p in pts), offer)
    return edit


def chain(*edits: Edit) -> Edit:
    def edit(offer: str) -> str:
        for e in edits:
            offer = e(offer)
        return offer
    return edit


def video_fmtp(answer: str) -> dict[str, str]:
    """{param: value} of the answer's first H.264 payload type."""
    for media in sdp.SessionDescription.parse(answer).media:
        for codec in media.rtp.codecs:
            if codec.mimeType.lower() == "video/h264":
                return {k: str(v) for k, v in codec.parameters.items()}
    raise AssertionError("no H.264 in the answer:\n" + answer)


def back_to_aiortc(answer: str) -> str:
    """What an aiortc test client can apply: its own H.264 fmtp (it sends
    constrained baseline pm 1 whatever the offer claimed; the server
    forwards it either way)."""
    answer = re.sub(r"profile-level-id=[0-9a-fA-F]{6}", "profile-level-id=42e01f", answer)
    return answer.replace("packetization-mode=0", "packetization-mode=1")


async def publish_edited(plane: MediaPlane, source_id: str, publisher: TestPublisher, edit: Edit) -> str:
    answer = await plane.publish("f1", source_id, edit(await publisher.offer()))
    plane.set_program("f1", source_id)  # the switcher's choice: the plane follows no source by itself
    return answer


# --- item 3: every H.264 a browser plays ------------------------------------


async def test_an_h264_high_only_offer_is_received_mirrored_and_forwarded(plane: MediaPlane) -> None:
    publisher = TestPublisher()
    viewer = TestViewer()
    try:
        answer = await publish_edited(plane, "high", publisher, h264_only("64001e"))
        fmtp = video_fmtp(answer)
        assert fmtp["profile-level-id"] == "64001e" and fmtp["packetization-mode"] == "1", answer
        await publisher.accept(back_to_aiortc(answer))
        await connect_viewer(plane, "f1", "guest", viewer)
        await viewer.wait_frames(10, timeout=30)
        feed = plane.feed("high")
        assert feed is not None and feed.video is not None and feed.video.format is not None
        assert feed.video.format.profile_level_id == "64001e"
        assert feed.video.format.h264_profile == "high" and feed.video.format.h264_level == 30
    finally:
        await viewer.close()
        await publisher.close()


@pytest.mark.parametrize(
    "name, edit, expect",
    [
        ("main", h264_only("4d001f"), {"profile-level-id": "4d001f", "packetization-mode": "1"}),
        ("constrained-high", h264_only("640c1f"), {"profile-level-id": "640c1f"}),
        ("high-level-4.2", h264_only("64002a"), {"profile-level-id": "64002a"}),
        ("baseline-level-1", h264_only("42000a"), {"profile-level-id": "42000a"}),
        ("packetization-mode-0", h264_only("42e01f", mode=0), {"packetization-mode": "0"}),
        ("no-level-asymmetry", lambda o: o.replace("level-asymmetry-allowed=1;", ""),
         {"profile-level-id": "42e01f"}),
        # no fmtp at all: RFC 6184 defaults (pm 0); WebRTC peers mean 42e01f
        ("no-fmtp", lambda o: re.sub(r"a=fmtp:\d+ level-asymmetry[^\r\n]*\r\n", "", o), {}),
    ],
)
async def test_h264_variants_are_received_with_their_fmtp_mirrored(
        plane: MediaPlane, name: str, edit: Edit, expect: dict[str, str]) -> None:
    publisher = TestPublisher()
    try:
        answer = await publish_edited(plane, name, publisher, edit)
        fmtp = video_fmtp(answer)
        for key, value in expect.items():
            assert fmtp.get(key) == value, (key, fmtp)
        if not expect:
            assert not fmtp, answer  # nothing offered, nothing claimed
        feed = plane.feed(name)
        assert feed is not None and feed.video is not None and feed.video.format is not None
    finally:
        await publisher.close()


async def test_a_publisher_offering_several_profiles_gets_constrained_baseline_first(plane: MediaPlane) -> None:
    publisher = TestPublisher()
    try:
        # aiortc offers 42e01f (pt 101) then 42001f (pt 99): make the first High
        answer = await publish_edited(plane, "both", publisher,
                                      lambda o: o.replace("profile-level-id=42e01f", "profile-level-id=64001f"))
        assert video_fmtp(answer)["profile-level-id"] == "42001f"
        codecs = [c for m in sdp.SessionDescription.parse(answer).media for c in m.rtp.codecs
                  if c.mimeType.lower() == "video/h264"]
        assert len(codecs) == 1  # one H.264 format answered, the one received
    finally:
        await publisher.close()


VARIANTS: list[tuple[str, Edit]] = [
    ("vp8-with-params", lambda o: o),  # publisher made with codec="vp8", fmtp added below
    ("opus-stereo-fec-minptime", add_lines("a=rtpmap:96 opus/48000/2",
                                           "a=fmtp:96 minptime=10;useinbandfec=1;stereo=1;sprop-stereo=1;usedtx=1")),
    ("red-ulpfec-rtx", chain(add_video_payloads(116, 117, 118),
                             add_lines("a=mid:0", "a=rtpmap:116 red/90000", "a=rtpmap:117 ulpfec/90000",
                                       "a=rtpmap:118 rtx/90000", "a=fmtp:118 apt=116"))),
    ("extmap-variants", add_lines("a=mid:0", "a=extmap-allow-mixed",
                                  "a=extmap:4/sendonly urn:ietf:params:rtp-hdrext:toffset",
                                  "a=extmap:16 http://www.webrtc.org/experiments/rtp-hdrext/playout-delay")),
    ("fmtp-on-unknown-payload-type", add_lines("a=mid:0", "a=fmtp:127 apt=125", "a=rtcp-fb:127 transport-cc",
                                               "a=rtcp-fb:* ccm fir")),
    ("setup-active", lambda o: o.replace("a=setup:actpass", "a=setup:active")),
    ("setup-passive", lambda o: o.replace("a=setup:actpass", "a=setup:passive")),
    ("ice-options-and-ice-lite", lambda o: o.replace("a=msid-semantic", "a=ice-options:trickle\r\na=ice-lite\r\na=msid-semantic")),
    ("lf-line-endings", lambda o: o.replace("\r\n", "\n")),
]


@pytest.mark.parametrize("name, edit", VARIANTS, ids=[v[0] for v in VARIANTS])
async def test_harmless_sdp_variants_connect(plane: MediaPlane, name: str, edit: Edit) -> None:
    publisher = TestPublisher(codec="vp8" if name.startswith("vp8") else "h264")
    try:
        offer = await publisher.offer()
        if name.startswith("vp8"):
            pt = re.search(r"a=rtpmap:(\d+) VP8/90000", offer)
            assert pt is not None
            offer = add_lines(pt.group(0), f"a=fmtp:{pt.group(1)} max-fr=30;max-fs=3600")(offer)
        answer = await plane.publish("f1", name, edit(offer))
        await publisher.accept(answer)
        await eventually(lambda: publisher.connected.is_set(), timeout=30, what=f"{name} connected")
        feed = plane.feed(name)
        assert feed is not None and feed.video is not None and feed.audio is not None
        await eventually(lambda: feed.video is not None and feed.video.ssrc is not None, timeout=30,
                         what=f"{name}'s video packets at the server")
    finally:
        await publisher.close()


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda o: o.replace("H264/90000", "H265/90000"), "H.265"),
        (h264_only("f4001f"), "H.264 high 4:4:4 (f4001f)"),
        (h264_only("6e001f"), "H.264 high 10 (6e001f)"),
        (h264_only("42e01f", mode=2), "packetization-mode 2"),
        (lambda o: o.replace("opus/48000/2", "G729/8000"), "its audio codecs are G729, G722, PCMU, PCMA"),
    ],
)
async def test_an_offer_with_no_usable_codec_is_refused_naming_its_codecs(
        plane: MediaPlane, edit: Edit, named: str) -> None:
    publisher = TestPublisher()
    try:
        with pytest.raises(MediaError) as refused:
            await plane.publish("f1", "bad", edit(await publisher.offer()))
        assert refused.value.code == "unsupported_codec"
        assert named in refused.value.message, refused.value.message
        assert "Failed to set remote" not in refused.value.message
    finally:
        await publisher.close()


async def test_a_viewer_offering_only_h264_high_gets_the_stream(plane: MediaPlane) -> None:
    """The same kind on the viewer side: a player whose offer lists only
    High profile H.264 (hardware WHEP players) decodes what publishers send
    (constrained baseline is a subset); it was refused unsupported_codec."""
    publisher = TestPublisher()
    viewer = TestViewer(codecs=("h264",))
    try:
        await publisher.accept(await plane.publish("f1", "speaker", await publisher.offer()))
        plane.set_program("f1", "speaker")  # the switcher's choice: the plane follows no source by itself
        answer = await plane.watch("f1", "player", h264_only("64001f")(await viewer.offer()))
        assert video_fmtp(answer)["profile-level-id"] == "64001f"
        await viewer.accept(back_to_aiortc(answer))
        await viewer.wait_frames(10, timeout=30)
    finally:
        await viewer.close()
        await publisher.close()


async def test_a_viewer_offering_only_packetization_mode_0_is_refused_naming_it(plane: MediaPlane) -> None:
    viewer = TestViewer(codecs=("h264",))
    try:
        with pytest.raises(MediaError) as refused:
            await plane.watch("f1", "old", h264_only("42e01f", mode=0)(await viewer.offer()))
        assert refused.value.code == "unsupported_codec" and "packetization-mode 1" in refused.value.message
    finally:
        await viewer.close()


# --- item 7: the answer follows the offer ------------------------------------


async def test_a_no_bundle_publisher_gets_no_bundle_and_both_media_arrive(plane: MediaPlane) -> None:
    """GStreamer webrtcbin bundle-policy none: one transport per m-line.
    The answer must not claim BUNDLE, or the client sends audio over the
    video transport and the audio is lost."""
    publisher = TestPublisher()
    viewer = TestViewer()
    try:
        answer = await publish_edited(plane, "nobundle", publisher,
                                      lambda o: re.sub(r"a=group:BUNDLE[^\r\n]*\r\n", "", o))
        assert "a=group:" not in answer, answer
        media = sdp.SessionDescription.parse(answer).media
        assert [m.rtp.muxId for m in media] == ["0", "1"]
        assert media[0].port != media[1].port  # each m-line its own transport
        await publisher.accept(answer)
        await connect_viewer(plane, "f1", "guest", viewer)
        await viewer.wait_frames(10, timeout=30)
        await eventually(lambda: viewer.received.audio_frames >= 25, timeout=30,
                         what="the no-BUNDLE publisher's audio at a viewer")
    finally:
        await viewer.close()
        await publisher.close()


async def test_a_no_bundle_viewer_gets_no_bundle(plane: MediaPlane) -> None:
    publisher = TestPublisher()
    viewer = TestViewer()
    try:
        answer = await plane.publish("f1", "speaker", await publisher.offer())
        plane.set_program("f1", "speaker")  # the switcher's choice: the plane follows no source by itself
        await publisher.accept(answer)
        offer = re.sub(r"a=group:BUNDLE[^\r\n]*\r\n", "", await viewer.offer())
        watched = await plane.watch("f1", "guest", offer)
        assert "a=group:" not in watched
        await viewer.accept(watched)
        await viewer.wait_frames(10, timeout=30)
        await eventually(lambda: viewer.received.audio_frames >= 25, timeout=30, what="audio at the viewer")
    finally:
        await viewer.close()
        await publisher.close()


async def test_answer_mids_directions_and_groups_follow_the_offer(plane: MediaPlane) -> None:
    publisher = TestPublisher()
    try:
        offer = await publisher.offer()
        offer = offer.replace("a=mid:0", "a=mid:video0").replace("a=mid:1", "a=mid:audio1")
        offer = offer.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE video0")  # only video bundled
        offer = offer.replace("a=sendonly", "a=sendrecv", 1)  # the video says sendrecv
        answer = await plane.publish("f1", "mids", offer)
        plane.set_program("f1", "mids")  # the switcher's choice: the plane follows no source by itself
        parsed = sdp.SessionDescription.parse(answer)
        assert [m.rtp.muxId for m in parsed.media] == ["video0", "audio1"]
        assert [m.direction for m in parsed.media] == ["recvonly", "recvonly"]  # RFC 3264 s6.1
        assert [(g.semantic, g.items) for g in parsed.group] == [("BUNDLE", ["video0"])]
        assert all(m.rtcp_mux for m in parsed.media)
    finally:
        await publisher.close()


async def test_an_offer_without_mids_gets_an_answer_without_mids(plane: MediaPlane) -> None:
    """Offers from before RFC 8843 carry no a=mid (and so no BUNDLE):
    aiortc cannot answer them as they are; the answer mirrors them."""
    publisher = TestPublisher()
    try:
        offer = re.sub(r"a=mid:\d+\r\n", "", await publisher.offer())
        offer = re.sub(r"a=group:BUNDLE[^\r\n]*\r\n", "", offer)
        answer = await plane.publish("f1", "legacy", offer)
        plane.set_program("f1", "legacy")  # the switcher's choice: the plane follows no source by itself
        assert "a=mid:" not in answer and "a=group:" not in answer, answer
        assert [line.split()[0] for line in answer.splitlines() if line.startswith("m=")] == ["m=video", "m=audio"]
    finally:
        await publisher.close()


async def test_an_offer_without_rtcp_mux_is_refused_naming_it(plane: MediaPlane) -> None:
    publisher = TestPublisher()
    try:
        with pytest.raises(MediaError) as refused:
            await plane.publish("f1", "nomux", (await publisher.offer()).replace("a=rtcp-mux\r\n", ""))
        assert refused.value.code == "invalid_sdp" and "rtcp-mux" in refused.value.message
    finally:
        await publisher.close()


# --- the text functions on their own -------------------------------------------

OFFER = (
    "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE a v\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:a\r\na=sendonly\r\na=rtcp-mux\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=fmtp:111 minptime=10;useinbandfec=1\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99\r\na=mid:v\r\na=sendonly\r\na=rtcp-mux\r\n"
    "a=rtpmap:96 H264/90000\r\na=rtcp-fb:96 nack\r\na=fmtp:96 packetization-mode=1;profile-level-id=64001f\r\n"
    "a=rtpmap:97 rtx/90000\r\na=fmtp:97 apt=96\r\n"
    "a=rtpmap:98 H264/90000\r\na=fmtp:98 packetization-mode=0;profile-level-id=42e01f\r\n"
    "a=rtpmap:99 rtx/90000\r\na=fmtp:99 apt=98\r\n"
)


def test_the_offer_aiortc_sees_keeps_only_the_chosen_format_under_its_own_fmtp() -> None:
    video = split(OFFER).sections[1]
    chosen = video.receivable_format()
    assert chosen is not None and chosen.payload_type == 98  # constrained baseline before high
    shown = split(offer_for_aiortc(OFFER, {1: chosen})).sections[1]
    assert shown.payload_types == [98, 99]
    assert shown.formats[98].fmtp == "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
    assert "a=rtcp-fb:96 nack" not in shown.lines


def test_the_answer_gets_the_offered_fmtp_and_only_the_offered_bundle() -> None:
    chosen = CodecFormat(98, "H264", 90000, None, "packetization-mode=0;profile-level-id=42e01f")
    answer = (
        "v=0\r\no=- 2 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\na=group:BUNDLE a v x\r\n"
        "m=audio 5000 UDP/TLS/RTP/SAVPF 111\r\na=mid:a\r\na=recvonly\r\n"
        "m=video 5002 UDP/TLS/RTP/SAVPF 98 99\r\na=mid:v\r\na=recvonly\r\na=rtpmap:98 H264/90000\r\n"
        "a=fmtp:98 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n"
        "a=rtpmap:99 rtx/90000\r\na=fmtp:99 apt=98\r\n"
        "m=video 0 UDP/TLS/RTP/SAVPF 98\r\na=mid:x\r\n"
    )
    shaped = shape_answer(answer, OFFER, {1: chosen})
    assert "a=group:BUNDLE a v\r\n" in shaped and shaped.count("a=group:") == 1
    assert "a=fmtp:98 packetization-mode=0;profile-level-id=42e01f\r\n" in shaped
    assert "a=fmtp:99 apt=98" in shaped
    no_bundle = OFFER.replace("a=group:BUNDLE a v\r\n", "")
    assert "a=group" not in shape_answer(answer, no_bundle, {})

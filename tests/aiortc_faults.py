"""Fault injection and inspection on aiortc/aioice peers, for tests only
(moved out of streaming/aiortc_internals.py, which keeps what the server
runs). Each reaches a private name; `FAULT_NAMES` lists them and
tests/streaming/test_aiortc_internals.py checks they exist, as the
server's check does for its own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiortc import RTCIceTransport, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport

FAULT_NAMES = (
    (RTCRtpReceiver, "_RTCRtpReceiver__remote_streams"),
    (RTCRtpSender, "_send_keyframe"),
)


def unanswered_checks(ice: RTCIceTransport, ignore: Callable[[], bool]) -> None:
    """While ignore() is true, STUN requests reaching `ice` are dropped
    unanswered (fault injection for tests: a peer that, like ffmpeg's WHIP
    muxer, answers no consent checks once connected)."""
    connection = ice._connection
    request_received = connection.request_received

    def on_request(message: Any, addr: tuple[str, int], protocol: Any) -> None:
        if not ignore():
            request_received(message, addr, protocol)

    connection.request_received = on_request  # type: ignore[method-assign]


def remote_ssrcs(receiver: RTCRtpReceiver) -> list[int]:
    """SSRCs this receiver has seen packets from."""
    return list(receiver._RTCRtpReceiver__remote_streams)  # type: ignore[attr-defined]


def filter_incoming(dtls: RTCDtlsTransport, keep: Callable[[bytes], bool]) -> None:
    """Datagrams reaching this transport pass only if keep(data) (fault
    injection for tests: SRTP headers are in the clear)."""
    connection = dtls.transport._connection
    original = connection.data_received

    def data_received(data: bytes, component: int) -> None:
        if keep(data):
            original(data, component)

    connection.data_received = data_received  # type: ignore[method-assign]


def on_keyframe_request(sender: RTCRtpSender, callback: Callable[[], None]) -> None:
    """Call `callback` whenever aiortc's sender is asked for a keyframe
    (used by test peers to count PLIs/FIRs reaching a publisher)."""
    original = sender._send_keyframe

    def send_keyframe() -> None:
        callback()
        original()

    sender._send_keyframe = send_keyframe  # type: ignore[method-assign]

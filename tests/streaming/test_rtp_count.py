"""The load tester's receive counters (streaming/rtp_count.py): the C
extension (streaming/_rtp_rx.c) and the Python reference count the same
crafted datagram sequences alike, per SSRC from the clear RTP header
(RFC 3550 A.1/A.3), RTCP apart (RFC 5761 s4), STUN/DTLS and 1-in-N
samples handed back (RFC 7983); the C side also straight off real UDP
sockets (recvmmsg) and through its epoll Poller."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator

import pytest

from streaming import rtp_count
from streaming.rtp_count import PyRtpCounter, RtpCounting, kind_table, new_counter
from streaming.rx_thread import RxThread
from tests.eventually import eventually_blocking

VIDEO_PT, AUDIO_PT = 102, 111
KINDS = {VIDEO_PT: "video", AUDIO_PT: "audio"}
native = pytest.mark.skipif(rtp_count._rtp_rx is None, reason="streaming._rtp_rx not built (python3 setup.py build_ext --inplace)")
STUN = bytes([0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xA4, 0x42]) + bytes(12)  # binding request header
DTLS = bytes([22, 0xFE, 0xFD]) + bytes(10)  # a handshake record


def rtp(seq: int, pt: int = VIDEO_PT, ssrc: int = 0x1234, size: int = 100, marker: bool = False) -> bytes:
    return (bytes([0x80, pt | (0x80 if marker else 0)]) + (seq & 0xFFFF).to_bytes(2, "big") + bytes(4)
            + ssrc.to_bytes(4, "big") + bytes(size))


def rtcp(packet_type: int = 201) -> bytes:
    return bytes([0x80, packet_type, 0, 1]) + bytes(4)


def both(sample_every: int = 10**9) -> Iterator[RtpCounting]:
    yield PyRtpCounter(kind_table(KINDS), sample_every)
    if rtp_count._rtp_rx is not None:
        yield rtp_count._rtp_rx.RtpCounter(kind_table(KINDS), sample_every)


def feed_all(counter: RtpCounting, datagrams: list[bytes]) -> list[bytes]:
    return [back for data in datagrams if (back := counter.feed(data)) is not None]


def state(counter: RtpCounting) -> tuple[object, ...]:
    return counter.streams(), counter.rtcp, counter.malformed, counter.first_video_at > 0


@pytest.mark.parametrize("name,datagrams,streams", [
    ("the 16-bit wrap, a late packet", [rtp(s) for s in (65534, 65535, 0, 2, 1, 3)],
     [(0x1234, "video", 6, 6 * 112, 65534, 65536 + 3)]),
    ("a gap: expected counts the missing", [rtp(s) for s in (10, 11, 15)],
     [(0x1234, "video", 3, 336, 10, 15)]),
    ("reordered before the first: not newer", [rtp(s) for s in (100, 99, 101)],
     [(0x1234, "video", 3, 336, 100, 101)]),
    ("a duplicate", [rtp(s) for s in (7, 7, 8)], [(0x1234, "video", 3, 336, 7, 8)]),
    ("two wraps", [rtp(s) for s in range(0, 3 * 65536, 1000)],
     [(0x1234, "video", 197, 197 * 112, 0, 196000)]),
    ("audio and video SSRCs, the marker bit, an unknown payload type",
     [rtp(1, marker=True), rtp(5, AUDIO_PT, ssrc=7), rtp(6, AUDIO_PT, ssrc=7), rtp(9, 96, ssrc=8)],
     [(0x1234, "video", 1, 112, 1, 1), (7, "audio", 2, 224, 5, 6), (8, "?", 1, 112, 9, 9)]),
])
def test_sequences_are_counted_alike_in_c_and_python(name: str, datagrams: list[bytes],
                                                     streams: list[tuple[int, str, int, int, int, int]]) -> None:
    for counter in both():
        assert feed_all(counter, datagrams) == [], name
        assert counter.streams() == streams, (type(counter), name)


def test_rtcp_is_counted_apart_and_stun_and_dtls_are_handed_back() -> None:
    datagrams = [STUN, rtcp(200), rtcp(201), rtcp(206), rtcp(192), rtcp(223), DTLS, rtp(1), bytes([0x40, 0, 0, 0])]
    for counter in both():
        back = feed_all(counter, datagrams)
        assert back == [STUN, DTLS, bytes([0x40, 0, 0, 0])], type(counter)
        assert counter.rtcp == 5 and len(counter.streams()) == 1


def test_one_rtp_packet_in_n_is_handed_back_for_the_srtp_check() -> None:
    datagrams = [rtp(s) for s in range(25)] + [rtcp()] * 3 + [STUN]
    for counter in both(sample_every=10):
        back = feed_all(counter, datagrams)
        assert back == [rtp(9), rtp(19), STUN], type(counter)  # the 10th and 20th RTP packets; RTCP never
    for counter in both(sample_every=1):
        assert len(feed_all(counter, [rtp(s) for s in range(5)])) == 5


def test_short_datagrams_are_dropped_and_counted_never_raised() -> None:
    datagrams = [b"", bytes([0x80]), bytes([0x80, VIDEO_PT, 0, 1, 0, 0, 0, 0]), bytes([0x80, 201]), rtp(4)]
    for counter in both():
        assert feed_all(counter, datagrams) == []
        assert counter.malformed == 3 and counter.rtcp == 1, type(counter)
        assert counter.streams() == [(0x1234, "video", 1, 112, 4, 4)]


def test_first_video_time_is_set_by_video_only() -> None:
    for counter in both():
        counter.feed(rtp(1, AUDIO_PT, ssrc=7))
        assert counter.first_video_at == 0.0
        counter.feed(rtp(1))
        first = counter.first_video_at
        assert first > 0
        counter.feed(rtp(2, ssrc=9))  # a second video SSRC does not move it
        assert counter.first_video_at == first


def test_random_sequences_agree() -> None:
    if rtp_count._rtp_rx is None:
        pytest.skip("streaming._rtp_rx not built")
    rng = random.Random(7)
    for _ in range(20):
        ssrcs = [rng.getrandbits(32) for _ in range(3)]
        next_seq = {s: rng.randrange(65536) for s in ssrcs}
        datagrams: list[bytes] = []
        for _ in range(2000):
            roll = rng.random()
            if roll < 0.05:
                datagrams.append(rng.choice([STUN, DTLS, rtcp(rng.randrange(192, 224)), b"", bytes(rng.randrange(1, 12))]))
                continue
            ssrc = rng.choice(ssrcs)
            next_seq[ssrc] += rng.choice([1, 1, 1, 1, 2, 5, -3, 0, 40000])  # in order, gaps, late, duplicate, jump
            datagrams.append(rtp(next_seq[ssrc], rng.choice([VIDEO_PT, AUDIO_PT, 96]), ssrc, rng.randrange(0, 1200)))
        py, c = PyRtpCounter(kind_table(KINDS), 13), rtp_count._rtp_rx.RtpCounter(kind_table(KINDS), 13)
        assert feed_all(c, datagrams) == feed_all(py, datagrams)
        assert state(c) == state(py)


def test_new_counter_is_c_unless_switched_off() -> None:
    assert isinstance(new_counter(KINDS, 5, native=False), PyRtpCounter)
    if rtp_count._rtp_rx is not None:
        assert isinstance(new_counter(KINDS, 5, native=True), rtp_count._rtp_rx.RtpCounter)
    with pytest.raises(ValueError):
        PyRtpCounter(b"short", 5)
    if rtp_count._rtp_rx is not None:
        with pytest.raises(ValueError):
            rtp_count._rtp_rx.RtpCounter(b"short", 5)


@pytest.fixture
def udp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    rx.setblocking(False)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    try:
        yield rx, tx
    finally:
        rx.close()
        tx.close()


@native
def test_drain_reads_a_real_socket_past_one_recvmmsg_batch(udp_pair: tuple[socket.socket, socket.socket]) -> None:
    rx, tx = udp_pair
    assert rtp_count._rtp_rx is not None
    datagrams = [rtp(s, size=1100) for s in range(65500, 65500 + 3 * rtp_count._rtp_rx.BATCH)] + [STUN, rtcp()]
    for data in datagrams:
        tx.send(data)
    counter = rtp_count._rtp_rx.RtpCounter(kind_table(KINDS), 50)
    reference = PyRtpCounter(kind_table(KINDS), 50)
    expected_back = feed_all(reference, datagrams)
    back: list[bytes] = []

    def drained_all() -> bool:
        back.extend(counter.drain(rx) or [])
        return sum(row[2] for row in counter.streams()) + counter.rtcp == len(datagrams) - 1

    eventually_blocking(drained_all, timeout=10, what="every datagram counted")
    assert back == expected_back and state(counter) == state(reference)
    assert counter.drain(rx.fileno()) is None and counter.recv_errors == 0  # empty: nothing, no error


@native
def test_the_poller_drains_each_socket_into_its_own_counter(udp_pair: tuple[socket.socket, socket.socket]) -> None:
    assert rtp_count._rtp_rx is not None
    rx1, tx1 = udp_pair
    rx2 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx2.bind(("127.0.0.1", 0))
    poller = rtp_count._rtp_rx.Poller()
    try:
        c1, c2 = (rtp_count._rtp_rx.RtpCounter(kind_table(KINDS), 3) for _ in range(2))
        poller.add(rx1.fileno(), c1)
        poller.add(rx2.fileno(), c2)
        for s in range(6):
            tx1.send(rtp(s))
        tx1.sendto(STUN, rx2.getsockname())
        tx1.sendto(rtp(40, AUDIO_PT, ssrc=5), rx2.getsockname())
        back: list[tuple[int, bytes]] = []

        def polled_all() -> bool:
            back.extend(poller.poll() or [])
            return len(c1.streams()) == 1 and c1.streams()[0][2] == 6 and len(c2.streams()) == 1

        eventually_blocking(polled_all, timeout=10, what="both sockets drained")
        assert sorted(back) == sorted([(rx1.fileno(), rtp(2)), (rx1.fileno(), rtp(5)), (rx2.fileno(), STUN)])
        assert c2.streams() == [(5, "audio", 1, 112, 40, 40)]
        poller.remove(rx2.fileno())
        poller.remove(rx2.fileno())  # twice: fine
        tx1.sendto(rtp(41, AUDIO_PT, ssrc=5), rx2.getsockname())
        tx1.send(rtp(6))
        eventually_blocking(lambda: (poller.poll(), c1.streams()[0][2] == 7)[1], timeout=10, what="rx1 again")
        assert c2.streams()[0][2] == 1  # removed: not read any more
    finally:
        poller.close()
        poller.close()
        rx2.close()
    with pytest.raises(ValueError):
        poller.poll()


@pytest.mark.parametrize("path", ["C", "Python"])
def test_the_reader_thread_counts_and_hands_back_on_both_paths(
        path: str, udp_pair: tuple[socket.socket, socket.socket]) -> None:
    if path == "C" and rtp_count._rtp_rx is None:
        pytest.skip("streaming._rtp_rx not built")
    rx, tx = udp_pair
    thread = RxThread(native=path == "C")
    assert thread.native == (path == "C")
    counter = new_counter(KINDS, 4, native=thread.native)
    handed: list[bytes] = []
    failures = iter([True])  # the first handed-back datagram makes the handler raise

    def handler(data: bytes, peer: object) -> None:
        assert peer == ("127.0.0.1", 9)
        handed.append(data)
        if next(failures, False):
            raise RuntimeError("a viewer's handler failed")

    try:
        thread.add(rx, counter, handler, ("127.0.0.1", 9))
        for data in [STUN, b"", bytes([0x80])] + [rtp(s) for s in range(8)]:
            tx.send(data)
        eventually_blocking(lambda: len(handed) == 3, timeout=10, what="STUN and two samples handed back")
        assert handed == [STUN, rtp(3), rtp(7)]
        assert thread.handler_errors == 1 and counter.malformed == 2  # neither ended the thread
        thread.remove(rx)
    finally:
        thread.stop()


def test_without_the_extension_the_python_path_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """A machine where pip could not build streaming._rtp_rx (no compiler):
    the import fails, and counters and the reader thread fall back."""
    import streaming.rx_thread as rx_thread

    monkeypatch.setattr(rtp_count, "_rtp_rx", None)
    monkeypatch.setattr(rx_thread, "_rtp_rx", None)
    assert isinstance(new_counter(KINDS, 5, native=True), PyRtpCounter)
    thread = RxThread(native=True)
    try:
        assert not thread.native
    finally:
        thread.stop()

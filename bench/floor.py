"""The floor under the fan-out on this machine: what one packet to one viewer costs
in its two unavoidable steps, measured alone (CPU time of this process).

    python -m bench.floor

sendto: 1,100-byte datagrams from 300 sockets to 300 loopback sockets that a
child process drains (on lo, the sender's syscall also runs the receiver's
UDP stack, which a real NIC would not). protect: pylibsrtp AES-GCM and
AES-CM-SHA1 on the same size.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from collections.abc import Iterator

import pylibsrtp

from bench import procstat

VIEWERS = 300
ROUNDS = 200
SIZE = 1100


def _drain(sockets: list[socket.socket], seconds: float) -> None:
    poller = select.epoll()
    for s in sockets:
        poller.register(s.fileno(), select.EPOLLIN)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.005)  # batched like bench/rx_thread.py: no reader waits, so no wake-up per packet
        while ready := poller.poll(0):
            for fd, _ in ready:
                try:
                    os.read(fd, 2048)
                except OSError:
                    pass


@contextlib.contextmanager
def drained_receivers(count: int, seconds: float = 30) -> Iterator[list[socket.socket]]:
    """`count` UDP sockets on 127.0.0.1 that a forked child drains for up
    to `seconds` (sends to them never find a full buffer); on exit the
    child is killed and reaped and the sockets closed."""
    receivers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    for r in receivers:
        r.bind(("127.0.0.1", 0))
        r.setblocking(False)
    child = os.fork()
    if child == 0:  # the drain: never returns to the caller's code
        try:
            _drain(receivers, seconds)
        finally:
            os._exit(0)
    try:
        yield receivers
    finally:
        os.kill(child, 15)
        os.waitpid(child, 0)
        for r in receivers:
            r.close()


def sendto_us(connected: bool = False) -> float:
    """connected: each socket connected to its receiver, send() without an
    address (what the fan-out does since the sockets are connected)."""
    with drained_receivers(VIEWERS) as receivers:
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(VIEWERS)]
        for s in senders:
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
        pairs = [(s.sendto, r.getsockname()) for s, r in zip(senders, receivers)]
        sends = []
        if connected:
            for s, r in zip(senders, receivers):
                s.connect(r.getsockname())
                sends.append(s.send)
        payload = bytes(SIZE)
        start = procstat.cpu_seconds(os.getpid())
        for _ in range(ROUNDS):
            if connected:
                for one in sends:
                    try:
                        one(payload)
                    except BlockingIOError:
                        pass
            else:
                for send, addr in pairs:
                    try:
                        send(payload, addr)
                    except BlockingIOError:
                        pass
            time.sleep(0.004)  # a packet every ~4 ms, as a 235 pkt/s stream
        cost = procstat.cpu_seconds(os.getpid()) - start
        for s in senders:
            s.close()
        return 1e6 * cost / (ROUNDS * VIEWERS)


def protect_us(profile: int) -> float:
    key_len = {pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM: 28,
               pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80: 30}[profile]
    policy = pylibsrtp.Policy(key=bytes(range(key_len)), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                              srtp_profile=profile)
    session = pylibsrtp.Session(policy)
    header = bytes([0x80, 0x66]) + bytes(10)
    count = 60000
    packets = [header[:2] + (i & 0xFFFF).to_bytes(2, "big") + header[4:] + bytes(SIZE - 12) for i in range(count)]
    start = time.process_time()
    for packet in packets:
        session.protect(packet)
    return 1e6 * (time.process_time() - start) / count


def c_batch_us(shared: bool, profile: int = pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM) -> float | None:
    """The floor of the C fan-out (streaming._fanout): per viewer the header,
    libsrtp protect and the send, all in C, for 300 viewers each with its
    own SRTP session; shared: one socket and one sendmmsg per packet, else
    a connected socket and one send() per viewer. None if not built."""
    from streaming import fanout_batch
    from streaming.aiortc_internals import SRTP_PROTECT_ADDRESS

    if not fanout_batch.available():
        return None
    from streaming import _fanout

    key_len = {pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM: 28,
               pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80: 30}[profile]
    senders: list[socket.socket] = []
    with drained_receivers(VIEWERS) as receivers:
        try:
            from pylibsrtp._binding import ffi

            sessions = [pylibsrtp.Session(pylibsrtp.Policy(key=bytes(range(key_len)), srtp_profile=profile,
                                                           ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
                        for _ in range(VIEWERS)]
            batch = _fanout.Fanout(SRTP_PROTECT_ADDRESS)
            if shared:
                one = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                one.bind(("127.0.0.1", 0))
                one.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
                senders.append(one)
            for i, (session, r) in enumerate(zip(sessions, receivers)):
                address = int(ffi.cast("uintptr_t", session._srtp[0]))
                if shared:
                    batch.add(i, address, senders[0].fileno(), r.getsockname(), 0x1000 + i, 102, i)
                else:
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    s.bind(("127.0.0.1", 0))
                    s.connect(r.getsockname())
                    senders.append(s)
                    batch.add(i, address, s.fileno(), None, 0x1000 + i, 102, i)
            payload = bytes(SIZE - 12)
            start = procstat.cpu_seconds(os.getpid())
            for n in range(ROUNDS):
                batch.send(payload, 0, n, n * 3000)
                time.sleep(0.004)
            cost = procstat.cpu_seconds(os.getpid()) - start
            return 1e6 * cost / (ROUNDS * VIEWERS)
        finally:
            for sock in senders:
                sock.close()


def main() -> None:
    print(f"sendto {SIZE} B on lo, one socket per viewer: {sendto_us():.2f} us")
    print(f"send {SIZE} B on lo, connected sockets:      {sendto_us(connected=True):.2f} us")
    print(f"SRTP protect AES-128-GCM:     {protect_us(pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM):.2f} us")
    print(f"SRTP protect AES-CM-SHA1-80:  {protect_us(pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80):.2f} us")
    for shared in (False, True):
        us = c_batch_us(shared)
        label = "one socket, sendmmsg" if shared else "connected sockets, send()"
        print(f"C fan-out (header + AES-GCM protect + send in C), {label}: "
              + (f"{us:.2f} us" if us is not None else "not built"))


if __name__ == "__main__":
    main()

"""The load tester's receive cost per packet: the C path against the Python path.

    nice -n 10 python -m bench.rx_cost --sockets 200 --seconds 5

A sender process sends RTP-shaped 1,200-byte datagrams (video and audio
SSRCs, a STUN request now and then) to `--sockets` loopback UDP sockets
at `--pps` each, paced in 10 ms ticks; this process reads them with the
real streaming/rx_thread.py RxThread, once with the C counters
(streaming._rtp_rx: epoll + recvmmsg + counting in C) and once with the
Python ones, and reads the reader thread's own CPU clock
(pthread_getcpuclockid): microseconds of reader-thread CPU per datagram
received, i.e. ms per 1,000 packets. The sender's CPU is not in it.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time

from streaming import rtp_count
from streaming.rtp_count import new_counter
from streaming.rx_thread import RxThread

KINDS = {102: "video", 111: "audio"}

SENDER = r"""
import json, socket, sys, time
spec = json.loads(sys.stdin.read())
ports, pps, seconds = spec["ports"], spec["pps"], spec["seconds"]
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def rtp(seq, pt, ssrc, size):
    return bytes([0x80, pt]) + (seq & 0xFFFF).to_bytes(2, "big") + bytes(4) + ssrc.to_bytes(4, "big") + bytes(size)
stun = bytes([0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42]) + bytes(12)
tick, seq, sent, due = 0.01, 0, 0, 0.0
start = time.monotonic()
while time.monotonic() - start < seconds:
    due += pps * tick
    while due >= 1:
        due -= 1
        seq += 1
        # 5 video packets in 6, as a 1.5 Mb/s video + Opus stream; a STUN check per 500 packets
        data = rtp(seq, 111, 7, 100) if seq % 6 == 0 else stun if seq % 500 == 0 else rtp(seq, 102, 9, 1188)
        for port in ports:
            tx.sendto(data, ("127.0.0.1", port))
            sent += 1
    time.sleep(max(0.0, start + tick * (int((time.monotonic() - start) / tick) + 1) - time.monotonic()))
print(json.dumps({"sent": sent}))
"""


def thread_cpu_s(thread: RxThread) -> float:
    ident = thread._thread.ident
    assert ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(ident))


def measure(native: bool, count: int, pps: float, seconds: float) -> dict[str, float | str]:
    sockets = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        sockets.append(sock)
    rx = RxThread(native=native)
    stun = [0]

    def handler(data: bytes, peer: object) -> None:
        if data[0] < 128:  # STUN; the rest are the sampled RTP packets, already counted
            stun[0] += 1

    counters = [new_counter(KINDS, 50, native=rx.native) for _ in sockets]
    try:
        for sock, counter in zip(sockets, counters):
            rx.add(sock, counter, handler, ("127.0.0.1", 1))
        spec = {"ports": [s.getsockname()[1] for s in sockets], "pps": pps, "seconds": seconds}
        cpu0 = thread_cpu_s(rx)
        sender = subprocess.run([sys.executable, "-c", SENDER], input=json.dumps(spec).encode(),
                                capture_output=True, timeout=seconds + 60, check=True)
        time.sleep(0.2)  # the last tick's datagrams: read by the thread's next wake-ups
        cpu = thread_cpu_s(rx) - cpu0
        sent = json.loads(sender.stdout)["sent"]
        received = sum(row[2] for c in counters for row in c.streams()) + stun[0]
    finally:
        for sock in sockets:
            rx.remove(sock)
            sock.close()
        rx.stop()
    return {"path": "C" if rx.native else "Python", "sent": sent, "received": received,
            "reader_cpu_s": round(cpu, 3), "us_per_packet": round(1e6 * cpu / max(1, received), 3),
            "reader_cores": round(cpu / seconds, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sockets", type=int, default=200, help="viewer sockets in one reader thread")
    parser.add_argument("--pps", type=float, default=233.0, help="datagrams per second per socket")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    paths = [True, False] if rtp_count._rtp_rx is not None else [False]
    results = [measure(native, args.sockets, args.pps, args.seconds) for native in paths]
    for r in results:
        print(json.dumps(r), flush=True)
    print(f"{args.sockets} sockets x {args.pps:.0f} datagrams/s for {args.seconds:.0f} s: reader-thread CPU per "
          "1,000 datagrams " + ", ".join(f"{r['path']} {r['us_per_packet']} ms" for r in results))


if __name__ == "__main__":
    main()

"""What the kernel send costs per datagram, three ways, for one packet fanned out
to N loopback receivers (CPU time of this process, median of several rounds):

    python -m bench.sendmmsg                 # 300 receivers, 1,200-byte datagrams
    python -m bench.sendmmsg --viewers 100 --repeats 7

- connected send(): one socket per viewer, connect()ed, one send() each
  (what the fan-out does today).
- shared sendto(): one unconnected socket, one sendto(addr) per viewer (what
  a single-port fan-out does without batching).
- shared sendmmsg(): one unconnected socket, one sendmmsg(2) per packet for
  all viewers, through ctypes; the mmsghdr/iovec/sockaddr_in arrays and the
  per-viewer payload buffers are built once and reused, so a packet costs
  one ctypes call (plus the retries of a partial send).
- shared sendmmsg() + fill: the same, plus what a fan-out must do per
  datagram to build the batch in Python: copy the protected packet into
  the slot's buffer and write its length and destination (three
  memoryview stores into the preallocated arrays; no allocation).
- shared sendmmsg() + stores: without the copy, as if libsrtp protected
  each viewer's packet in place in its batch slot (srtp_protect takes any
  buffer): the floor of a Python-built batch.

sendmmsg over per-viewer connected sockets is not measured: sendmmsg batches
datagrams of ONE socket, so with one packet per viewer per socket it is one
call per datagram again, send() with more argument marshalling.

On lo the sender's system call also runs the receiver's UDP stack (the
softirq is billed to the sender), so the kernel share here is larger than
on a NIC, and the batch's saving (one syscall entry instead of N) is
diluted by the per-datagram receive work it cannot remove.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import socket
import statistics
import struct
import time

from bench.floor import drained_receivers

SIZE = 1200
ROUNDS = 200  # packets per measurement
PACE_S = 0.004  # a packet every ~4 ms, as a ~235 pkt/s stream


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint)]


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.POINTER(_Mmsghdr), ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int
MSG_DONTWAIT = 0x40


def _sockaddr_in(addr: tuple[str, int]) -> ctypes.Array[ctypes.c_char]:
    raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", addr[1]) + socket.inet_aton(addr[0]) + bytes(8)
    return ctypes.create_string_buffer(raw, len(raw))


class Batch:
    """One datagram per destination, sent in one sendmmsg(2) call; all
    arrays built once. buffers[i] is destination i's payload (written in
    place by the caller), lengths set with set_length()."""

    def __init__(self, fd: int, destinations: list[tuple[str, int]], size: int) -> None:
        n = len(destinations)
        self.fd = fd
        self.names = [_sockaddr_in(d) for d in destinations]
        self.buffers = [ctypes.create_string_buffer(size) for _ in range(n)]
        self.iovecs = (_Iovec * n)()
        self.msgs = (_Mmsghdr * n)()
        for i in range(n):
            self.iovecs[i].iov_base = ctypes.addressof(self.buffers[i])
            self.iovecs[i].iov_len = size
            hdr = self.msgs[i].msg_hdr
            hdr.msg_name = ctypes.addressof(self.names[i])
            hdr.msg_namelen = 16
            hdr.msg_iov = ctypes.pointer(self.iovecs[i])
            hdr.msg_iovlen = 1
        self.n = n
        self.base = ctypes.addressof(self.msgs)
        self.stride = ctypes.sizeof(_Mmsghdr)
        # the per-datagram stores a fan-out would make (8-byte words of the arrays)
        self.iov_words = memoryview(self.iovecs).cast("B").cast("Q")
        self.msg_words = memoryview(self.msgs).cast("B").cast("Q")
        self.slots = [memoryview(b).cast("B") for b in self.buffers]
        self.name_addrs = [ctypes.addressof(name) for name in self.names]

    def store(self, n: int) -> None:
        """Only the length and destination stores (the packet is already in its slot)."""
        iov, msg, names = self.iov_words, self.msg_words, self.name_addrs
        stride = self.stride // 8
        for k in range(self.n):
            iov[2 * k + 1] = n
            msg[stride * k] = names[k]

    def fill(self, packet: bytes) -> None:
        """Build the batch as a fan-out would: per destination, copy the
        (protected) packet into its slot, set its length and address."""
        n = len(packet)
        iov, msg, slots, names = self.iov_words, self.msg_words, self.slots, self.name_addrs
        stride = self.stride // 8
        for k in range(self.n):
            slots[k][:n] = packet
            iov[2 * k + 1] = n
            msg[stride * k] = names[k]

    def send(self) -> int:
        """Send all; returns datagrams the kernel refused (EAGAIN or an
        error on one destination: skipped, the rest still go)."""
        sent = 0
        dropped = 0
        while sent < self.n:
            got = _sendmmsg(self.fd, ctypes.cast(self.base + sent * self.stride, ctypes.POINTER(_Mmsghdr)),
                            self.n - sent, MSG_DONTWAIT)
            if got < 0:
                sent += 1  # the first datagram failed (EAGAIN, ECONNREFUSED...): skip it
                dropped += 1
            else:
                sent += got
        return dropped


def _measure(viewers: int, repeats: int) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"connected send()": [], "shared sendto()": [], "shared sendmmsg()": [],
                                       "shared sendmmsg() + fill": [], "shared sendmmsg() + stores": []}
    dropped = {k: 0 for k in results}
    with drained_receivers(viewers, 600) as receivers:
        addrs = [r.getsockname() for r in receivers]
        connected = []
        for a in addrs:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            s.connect(a)
            connected.append(s)
        sends = [s.send for s in connected]
        shared = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        shared.bind(("127.0.0.1", 0))
        shared.setblocking(False)
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        pairs = [(shared.sendto, a) for a in addrs]
        batch = Batch(shared.fileno(), addrs, SIZE)
        payload = bytes(SIZE)

        def run_connected() -> int:
            lost = 0
            for one in sends:
                try:
                    one(payload)
                except OSError:
                    lost += 1
            return lost

        def run_sendto() -> int:
            lost = 0
            for send, addr in pairs:
                try:
                    send(payload, addr)
                except OSError:
                    lost += 1
            return lost

        def run_filled() -> int:
            batch.fill(payload)
            return batch.send()

        def run_stored() -> int:
            batch.store(SIZE)
            return batch.send()

        ways = {"connected send()": run_connected, "shared sendto()": run_sendto, "shared sendmmsg()": batch.send,
                "shared sendmmsg() + fill": run_filled, "shared sendmmsg() + stores": run_stored}
        for _ in range(repeats):
            for name, way in ways.items():  # interleaved: drift in the machine's load hits all three
                start = time.process_time()  # ns resolution (procstat's /proc ticks are 10 ms)
                for _ in range(ROUNDS):
                    dropped[name] += way()
                    time.sleep(PACE_S)
                cost = time.process_time() - start
                results[name].append(1e6 * cost / (ROUNDS * viewers))
        for s in connected:
            s.close()
        shared.close()
    for name, count in dropped.items():
        if count:
            print(f"  ({name}: {count} datagrams refused by the kernel)")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--viewers", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results = _measure(args.viewers, args.repeats)
    print(f"{args.viewers} loopback receivers, {SIZE} B datagrams, {ROUNDS} packets x {args.repeats} rounds")
    for name, values in results.items():
        print(f"  {name:<27} {statistics.median(values):5.2f} us/datagram (median; "
              f"{min(values):.2f}-{max(values):.2f})")


if __name__ == "__main__":
    main()

"""One reader thread for all the light viewers' sockets.

asyncio reads one datagram per readiness event and runs a Handle for it:
about as much Python per packet as the server spends forwarding it. Worse,
waking for each datagram costs a context switch per packet. This thread
instead sleeps `batch` seconds, then reads every ready socket of one epoll
set until none is ready: the thread wakes a few hundred times a second
whatever the packet rate (the sockets' receive buffers hold the few
milliseconds in between). Each datagram goes to its viewer's counter
(streaming/rtp_count.py); what the counter hands back (STUN consent
checks, DTLS, the sampled RTP packets to SRTP-verify) goes to the viewer's
handler, which sends STUN and DTLS back to the event loop.

Two paths, one behaviour: with the C extension (`native`), one call per
wake-up polls the epoll set and drains each ready socket with recvmmsg,
counting in C (streaming._rtp_rx.Poller): no Python per datagram. Without
it, the epoll loop, one recv and the counter's feed() are Python.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from streaming.rtp_count import NATIVE, RtpCounting, _rtp_rx

logger = logging.getLogger(__name__)
Handler = Callable[[bytes, Any], None]
_MAX_DATAGRAM = 2048


class RxThread:
    def __init__(self, batch: float = 0.005, native: bool = NATIVE) -> None:
        self._batch = batch
        self.native = native and _rtp_rx is not None
        self._poller = _rtp_rx.Poller() if self.native else None
        self._epoll = None if self.native else select.epoll()
        # fd -> (socket, counter, handler, peer)
        self._sockets: dict[int, tuple[socket.socket, RtpCounting, Handler, Any]] = {}
        self._lock = threading.Lock()  # guards _sockets against add/remove while draining
        self._stop = False
        self.handler_errors = 0
        self._thread = threading.Thread(target=self._run, name="light-viewer-rx", daemon=True)
        self._thread.start()

    def add(self, sock: socket.socket, counter: RtpCounting, handler: Handler, peer: Any) -> None:
        """Count `sock`'s datagrams with `counter` (one of new_counter(native=self.native));
        what it hands back goes to `handler(data, peer)`. `peer` is the source address:
        the socket of a nominated pair only hears its peer, and recv() is cheaper than recvfrom()."""
        fd = sock.fileno()
        with self._lock:
            self._sockets[fd] = (sock, counter, handler, peer)
        if self._poller is not None:
            assert isinstance(counter, _rtp_rx.RtpCounter), "a native RxThread needs new_counter(native=True)"
            self._poller.add(fd, counter)
        else:
            assert self._epoll is not None
            self._epoll.register(fd, select.EPOLLIN)

    def remove(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        with self._lock:
            if self._sockets.pop(fd, None) is None:
                return
        if self._poller is not None:
            self._poller.remove(fd)
            return
        assert self._epoll is not None
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass  # already closed: the kernel dropped it from the epoll set

    def _run(self) -> None:
        if self._poller is not None:
            self._run_native(self._poller)
        else:
            self._run_python()

    def _deliver(self, entry: tuple[socket.socket, RtpCounting, Handler, Any], data: bytes) -> None:
        try:
            entry[2](data, entry[3])
        except Exception:  # one viewer's handler must not end every viewer's counting
            self.handler_errors += 1
            logger.exception("light viewer handler failed (%d so far)", self.handler_errors)

    def _run_native(self, poller: _rtp_rx.Poller) -> None:
        sockets = self._sockets
        while not self._stop:
            time.sleep(self._batch)
            back = poller.poll(1000)  # bounded rounds, so stop() is seen even under a flood
            if back is None:
                continue
            for fd, data in back:
                entry = sockets.get(fd)
                if entry is not None:  # None: removed since; its datagram goes nowhere
                    self._deliver(entry, data)

    def _run_python(self) -> None:
        sockets = self._sockets
        assert self._epoll is not None
        poll = self._epoll.poll
        while not self._stop:
            time.sleep(self._batch)
            # level-triggered: a socket with more queued stays ready for the next poll
            for _ in range(1000):  # bounded, so stop() is seen even under a flood
                ready = poll(0)
                if not ready:
                    break
                with self._lock:
                    entries = [sockets.get(fd) for fd, _ in ready]
                for entry in entries:
                    if entry is None:
                        continue
                    try:
                        data = entry[0].recv(_MAX_DATAGRAM)
                    except OSError:
                        continue  # would block, or closed under us by the viewer's teardown
                    back = entry[1].feed(data)
                    if back is not None:
                        self._deliver(entry, back)

    def stop(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        if self._poller is not None:
            self._poller.close()
        if self._epoll is not None:
            self._epoll.close()

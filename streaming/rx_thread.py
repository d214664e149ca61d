"""One reader thread for all the light viewers' sockets.

asyncio reads one datagram per readiness event and runs a Handle for it:
about as much Python per packet as the server spends forwarding it. Worse,
waking for each datagram costs a context switch per packet. This thread
instead sleeps `batch` seconds, then polls one epoll of every viewer socket
without blocking and reads one datagram per ready socket, until none is
ready: a packet costs one recvfrom and a few counter updates, and the
thread wakes a few hundred times a second whatever the packet rate (the
sockets' receive buffers hold the few milliseconds in between). Packets that are not RTP/RTCP (STUN consent checks, DTLS)
go back to the event loop with call_soon_threadsafe.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

Handler = Callable[[bytes, Any], None]
_MAX_DATAGRAM = 2048


class RxThread:
    def __init__(self, batch: float = 0.005) -> None:
        self._batch = batch
        self._epoll = select.epoll()
        self._sockets: dict[int, tuple[socket.socket, Handler, Any]] = {}
        self._lock = threading.Lock()  # guards _sockets against add/remove while draining
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="light-viewer-rx", daemon=True)
        self._thread.start()

    def add(self, sock: socket.socket, handler: Handler, peer: Any) -> None:
        """`peer` is handed to `handler` as the source address: the socket of a
        nominated pair only hears its peer, and recv() is cheaper than recvfrom()."""
        fd = sock.fileno()
        with self._lock:
            self._sockets[fd] = (sock, handler, peer)
        self._epoll.register(fd, select.EPOLLIN)

    def remove(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        with self._lock:
            if self._sockets.pop(fd, None) is None:
                return
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass  # already closed: the kernel dropped it from the epoll set

    def _run(self) -> None:
        sockets = self._sockets
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
                    entry[1](data, entry[2])

    def stop(self) -> None:
        self._stop = True
        self._thread.join(timeout=2)
        self._epoll.close()

"""signaling/push_coalescer.py without a server: the first change goes out
at once, later ones coalesced, and a value the clients already have is
not pushed again (two nodes' events for one join pushed the same count
twice: tests/test_sio_server.py's exactly-once test saw [2, 2, 1])."""

from __future__ import annotations

from signaling.push_coalescer import PushCoalescer
from tests.eventually import eventually


async def test_a_value_read_again_at_sending_time_that_did_not_change_is_not_pushed_twice() -> None:
    sent: list[int] = []
    now = {"count": 2}

    async def send(key: str, value: int) -> None:
        sent.append(value)

    async def read(key: str, offered: int) -> int:
        return now["count"]

    coalescer = PushCoalescer[int](send, 0.01, read)
    coalescer.offer("forum", 2)
    coalescer.offer("forum", 2)  # a second event of the same join, while the first push is out
    await eventually(lambda: not coalescer._tasks, timeout=5, what="the push task to end")
    assert sent == [2]
    now["count"] = 1
    coalescer.offer("forum", 1)
    coalescer.offer("forum", 2)  # stale by sending time: the count read then is 1
    await eventually(lambda: not coalescer._tasks, timeout=5, what="the push task to end")
    assert sent == [2, 1]
    await coalescer.stop()


async def test_without_read_the_latest_offered_value_goes_out_and_each_change_once() -> None:
    sent: list[int] = []

    async def send(key: str, value: int) -> None:
        sent.append(value)

    coalescer = PushCoalescer[int](send, 0.01)
    coalescer.offer("forum", 1)
    await eventually(lambda: sent == [1], timeout=5, what="the first change at once")
    coalescer.offer("forum", 2)
    coalescer.offer("forum", 3)  # within the interval: one push of the latest
    await eventually(lambda: not coalescer._tasks, timeout=5, what="the push task to end")
    assert sent == [1, 3]  # the first at once, the rest as one push of the latest
    coalescer.offer("forum", 3)
    await eventually(lambda: not coalescer._tasks, timeout=5, what="the push task to end")
    assert sent == [1, 3]
    await coalescer.stop()

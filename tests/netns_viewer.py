"""An aiortc viewer run inside a network namespace by tests/test_turn.py
and tests/streaming/test_udp_port.py (`ip netns exec NS python -m
tests.netns_viewer`). Line protocol on stdin/stdout, one JSON object per
line: in {"url", "username", "credential", "host"} (the TURN server, or
no "url" for none; the namespace's own address), out {"offer"}; in {"answer"}; out
{"frames": n} once it decoded 10 frames, or {"error"}."""

from __future__ import annotations

import asyncio
import json
import sys

from aiortc import RTCConfiguration, RTCIceServer

from streaming.ice_policy import gathering_on
from tests.aiortc_peers import TestViewer


async def main() -> None:
    loop = asyncio.get_running_loop()
    read = lambda: loop.run_in_executor(None, sys.stdin.readline)  # noqa: E731
    turn = json.loads(await read())
    viewer = TestViewer(configuration=RTCConfiguration(iceServers=[
        RTCIceServer(urls=turn["url"], username=turn["username"], credential=turn["credential"])]
        if turn.get("url") else []))
    try:
        with gathering_on((turn["host"],)):  # host candidates on the namespace's address, never 127.0.0.1
            await viewer.pc.setLocalDescription(await viewer.pc.createOffer())
        print(json.dumps({"offer": viewer.pc.localDescription.sdp}), flush=True)
        await viewer.accept(json.loads(await read())["answer"])
        await viewer.wait_frames(10, timeout=40)
        print(json.dumps({"frames": len(viewer.received.numbers)}), flush=True)
    except Exception as exc:  # reported to the test, which fails with it
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
    finally:
        await viewer.close()


if __name__ == "__main__":
    asyncio.run(main())

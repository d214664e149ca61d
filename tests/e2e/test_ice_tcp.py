"""ICE-TCP through a firewall that drops all UDP: a real chromium (Debian's,
driven by Playwright, fake camera) runs in a network namespace whose
nftables rules let out only TCP to the node's media port. It publishes
its camera and watches the forum back; both peer connections must
connect over the node's passive TCP candidate (RFC 6544) and the watcher
must decode frames.

Signaling goes through Playwright (evaluate/return), not HTTP, so the
namespace reaches the node on that one TCP port and nothing else; the
page is served by Playwright's router (an https origin: getUserMedia
wants a secure context)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from streaming.media_config import MediaConfig
from streaming.media_plane import MediaPlane
from tests.e2e.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.eventually import eventually
from tests.processes import free_port_block
from tests.test_turn import Namespace, netns_usable

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

ORIGIN = "https://forumcast.test/"

OFFER = """async (kind) => {
  const pc = new RTCPeerConnection();
  if (kind === 'publish') {
    const stream = await navigator.mediaDevices.getUserMedia({video: {width: 640, height: 360}, audio: true});
    stream.getTracks().forEach(track => pc.addTrack(track, stream));
  } else {
    pc.addTransceiver('video', {direction: 'recvonly'});
    pc.addTransceiver('audio', {direction: 'recvonly'});
  }
  window[kind] = pc;
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(done => {
    if (pc.iceGatheringState === 'complete') done();
    pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && done());
  });
  return pc.localDescription.sdp;
}"""

ANSWER = "async ([kind, sdp]) => { await window[kind].setRemoteDescription({type: 'answer', sdp}); }"

PATH = """async (kind) => {
  const pc = window[kind];
  const stats = await pc.getStats();
  let pair = null, frames = 0;
  stats.forEach(s => {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    if (s.type === 'inbound-rtp' && s.kind === 'video') frames = s.framesDecoded || 0;
  });
  const local = pair && stats.get(pair.localCandidateId);
  const remote = pair && stats.get(pair.remoteCandidateId);
  return {state: pc.connectionState, frames,
          local: local ? local.protocol : null, remote: remote ? [remote.protocol, remote.port, remote.tcpType || null] : null};
}"""


def tcp_only_firewall(namespace: str, port: int) -> None:
    """Inside the browser's namespace, drop every packet but loopback and
    TCP to or from `port`: no UDP at all (a network that blocks UDP)."""
    rules = f"""
table inet fc_firewall {{
  chain out {{ type filter hook output priority 0; policy drop; oif lo accept; tcp dport {port} accept; }}
  chain in {{ type filter hook input priority 0; policy drop; iif lo accept; tcp sport {port} accept; }}
}}
"""
    subprocess.run(["ip", "netns", "exec", namespace, "nft", "-f", "-"], input=rules.encode(),
                   check=True, capture_output=True, timeout=10)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no /usr/bin/chromium")
@pytest.mark.skipif(not netns_usable() or shutil.which("nft") is None,
                    reason="needs root, `ip netns` and nft (Debian's nftables)")
@pytest.mark.parametrize("hold_s", [0, pytest.param(40, marks=pytest.mark.slow, id="past-consent")])
async def test_a_browser_whose_network_drops_udp_publishes_and_watches_over_ice_tcp(
        tmp_path: Path, hold_s: int) -> None:
    """hold_s 40: the watcher still plays after aioice's RFC 7675 consent
    would have ended it (6 unanswered checks, ~30 s): consent runs over TCP."""
    from playwright.async_api import async_playwright

    namespace = Namespace()
    plane = None
    try:
        port = free_port_block(0)
        tcp_only_firewall(namespace.name, port)
        # chromium itself runs inside the namespace; Playwright drives it over its pipe
        launcher = tmp_path / "chromium-in-namespace"
        launcher.write_text(f'#!/bin/sh\nexec ip netns exec {namespace.name} {CHROMIUM} "$@"\n')
        launcher.chmod(0o755)
        plane = MediaPlane(MediaConfig(ice_addresses=(namespace.outer,), udp_port=port))
        await plane.start()
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=str(launcher), headless=True,
                                                       args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                await page.route(ORIGIN + "**", lambda route: route.fulfill(
                    status=200, content_type="text/html", body="<!doctype html><title>ice-tcp</title>"))
                await page.goto(ORIGIN)

                offer = await page.evaluate(OFFER, "publish")
                answer = await plane.publish("main", "speaker", offer)
                assert " tcp " in answer and f" {port} typ host tcptype passive" in answer, answer
                plane.set_program("main", "speaker")
                await page.evaluate(ANSWER, ["publish", answer])

                offer = await page.evaluate(OFFER, "watch")
                answer = await plane.watch("main", "guest", offer)
                await page.evaluate(ANSWER, ["watch", answer])

                async def watched() -> dict[str, Any]:
                    path: dict[str, Any] = await page.evaluate(PATH, "watch")
                    assert path["frames"] >= 30, path
                    return path

                watch = await eventually(watched, timeout=90, what="the watcher decodes 30 frames")
                if hold_s:
                    await asyncio.sleep(hold_s)  # nothing to wait on: time must pass for consent to run
                    later = await page.evaluate(PATH, "watch")
                    assert later["state"] == "connected" and later["frames"] > watch["frames"] + 10 * hold_s, later
                publish = await page.evaluate(PATH, "publish")
                for path in (watch, publish):
                    assert path["state"] == "connected"
                    assert path["local"] == "tcp" and path["remote"][:2] == ["tcp", port], path
                stats = plane.stats()
                assert stats["ice_tcp_connections"] >= 2, stats
                assert not any(k.startswith("ice_tcp_dropped_") and k != "ice_tcp_dropped_no_connection"
                               for k in stats), stats
            finally:
                await browser.close()
    finally:
        if plane is not None:
            await plane.stop()
        namespace.delete()

"""/metrics on a real node: a real WHIP publisher (aiortc) and a WHEP
viewer (aiortc), then a scrape parsed with prometheus_client's parser."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rooms.models import Role
from tests.aiortc_peers import TestPublisher, TestViewer
from tests.eventually import eventually
from tests.server_process import ServerProcess, start_server

FORUM = "digital-economy"
SDP = "application/sdp"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(http: aiohttp.ClientSession, server: ServerProcess, token: str | None) -> Samples:
    headers = bearer(token) if token else {}
    async with http.get(server.url + "/metrics", headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def series(samples: Samples, name: str, **labels: str) -> list[float]:
    want = set(labels.items())
    return [value for (n, lab), value in samples.items() if n == name and want <= set(lab)]


async def test_metrics_after_a_real_publish_and_viewer(server: ServerProcess, http: aiohttp.ClientSession) -> None:
    admin = server.token(Role.ADMIN, None, "Prometheus")
    publisher = TestPublisher()
    viewer = TestViewer()
    try:
        response = await http.post(f"{server.url}/whip/{FORUM}", data=await publisher.offer(),
                                   headers={**bearer(server.token(Role.SPEAKER, [FORUM])), "Content-Type": SDP})
        assert response.status == 201, await response.text()
        await publisher.accept(await response.text())
        response = await http.post(f"{server.url}/whep/{FORUM}", data=await viewer.offer(),
                                   headers={**bearer(server.token(Role.VIEWER, [FORUM])), "Content-Type": SDP})
        assert response.status == 201, await response.text()
        await viewer.accept(await response.text())
        await viewer.wait_frames(10, timeout=30)  # the publisher's numbered frames: it is on air

        async def live_source_measured() -> bool:
            samples = await scrape(http, server, admin)
            return any(v > 0 for v in series(samples, "forumcast_source_bitrate_kbps",
                                             forum=FORUM, kind="video", source_kind="live"))
        measured: bool = await eventually(live_source_measured, timeout=20, what="a live source's bitrate in /metrics")
        assert measured
        samples = await scrape(http, server, admin)

        assert series(samples, "forumcast_viewers", forum=FORUM) == [1.0]
        assert series(samples, "forumcast_publishers") == [1.0]
        packets_out = series(samples, "forumcast_packets_out_total")
        bytes_out = series(samples, "forumcast_bytes_out_total")
        assert packets_out and packets_out[0] > 10
        assert bytes_out and bytes_out[0] > 12 * packets_out[0]  # header + payload
        assert series(samples, "forumcast_viewer_dropped_frames_total")[0] >= 0
        assert series(samples, "forumcast_retransmitted_packets_total")[0] >= 0
        live_video = series(samples, "forumcast_source_bitrate_kbps", forum=FORUM, kind="video", source_kind="live")
        assert len(live_video) == 1 and 1 < live_video[0] < 50_000  # kb/s of a test picture
        assert series(samples, "forumcast_source_packets_received_total", forum=FORUM, kind="audio",
                      source_kind="live")[0] > 0
        loss = series(samples, "forumcast_source_loss_ratio", forum=FORUM, kind="video", source_kind="live")
        assert len(loss) == 1 and 0.0 <= loss[0] <= 1.0
        jitter = series(samples, "forumcast_source_jitter_ms", forum=FORUM, kind="video", source_kind="live")
        assert len(jitter) == 1 and 0.0 <= jitter[0] < 10_000
        on_air = [dict(lab)["source"] for (n, lab), v in samples.items()
                  if n == "forumcast_program_info" and dict(lab)["forum"] == FORUM and v == 1]
        assert len(on_air) == 1 and on_air[0] != ""
        assert series(samples, "process_cpu_seconds_total")[0] > 0
        assert series(samples, "forumcast_event_loop_lag_seconds_count")[0] >= 1
        assert series(samples, "forumcast_event_loop_lag_max_seconds")[0] >= 0
    finally:
        await viewer.close()
        await publisher.close()


async def test_metrics_need_an_admin_token(server: ServerProcess, http: aiohttp.ClientSession) -> None:
    async with http.get(server.url + "/metrics") as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "token_missing"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    async with http.get(server.url + "/metrics", headers=bearer(server.token(Role.OPERATOR, [FORUM]))) as response:
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "forbidden"


async def test_metrics_open_to_loopback_when_set(http: aiohttp.ClientSession) -> None:
    open_node = start_server(extra_env={"FORUMCAST_METRICS_LOOPBACK_OPEN": "true"})
    try:
        samples = await scrape(http, open_node, None)
        assert series(samples, "forumcast_publishers") == [0.0]
    finally:
        open_node.cleanup()

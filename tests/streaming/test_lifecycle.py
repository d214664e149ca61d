"""Every media object on the shared lifecycle (streaming/lifecycle.py)
keeps its promises: one stop however many callers, a caller cancelled
mid-stop does not cut it short, every later caller returns only once the
stop is done, the state ends stopped, each transition is logged and heard
by the state listeners.

Real parts throughout: real ffmpeg children, real sockets, aiortc peers."""

from __future__ import annotations

import asyncio
import importlib
import logging
import pkgutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ffmpeg
import pytest

from config.settings import Settings, ffmpeg_path
from rooms.memory_store import MemoryStore
from rooms.models import Event, Forum, ForumKind, SourceState, Text
from rooms.service import RoomService
from signaling.supervised_process import SupervisedProcess
from streaming import aiortc_internals
import streaming
from streaming.edge_links import EdgeLinks
from streaming.edge_pull import EdgePull
from streaming.ffmpeg_process import FfmpegProcess, RestartPolicy, Supervisor
from streaming.forum_host import ForumHost, HostSettings
from streaming.forum_outputs import ProgramOutputs
from streaming.hls_output import HlsOutput
from streaming.ingest_transcoder import IngestTranscoder, TsTap
from streaming.lifecycle import Lifecycle
from streaming.media_bridge import MediaBridge
from streaming.media_config import MediaConfig
from streaming.media_library import MediaLibrary
from streaming.media_plane import MediaPlane
from streaming.playout import FilePlayout
from streaming.program_bus import ProgramBus
from streaming.program_encoder import OutputProfile, ProgramEncoder, private_directory
from streaming.program_tee import ProgramTee
from streaming.publisher import WebRtcPublisher
from streaming.restream import Restream
from streaming.rtmp_gate import FlvSink, RtmpKeyGate
from streaming.rtp_source import RtpSource
from streaming.rtp_udp_ingest import RtpUdpIngest, h264_codec, opus_codec
from streaming.slate import Slate
from streaming.venue_ingest import VenueIngest
from streaming.viewer import WebRtcViewer
from tests.eventually import eventually
from tests.processes import free_port

pytestmark = pytest.mark.timeout(120)

CONFIG = MediaConfig(ice_addresses=("127.0.0.1",))
KEY = "lifecycle-test-key-0123"


def _video() -> RtpSource:
    return RtpSource("video", h264_codec(), name="lifecycle/video")


def _audio() -> RtpSource:
    return RtpSource("audio", opus_codec(), name="lifecycle/audio")


def _endless_args() -> list[str]:
    return ffmpeg.input("anullsrc", f="lavfi", re=None).output("-", f="null").get_args()


async def _no_flv_sink() -> FlvSink:
    raise ConnectionRefusedError("no publisher expected in this test")


@dataclass(frozen=True)
class Case:
    """How to make one class's object (started where that is cheap and
    real) and the state its stop leaves."""

    cls: type[Lifecycle[Any]]
    make: Callable[[Path], Awaitable[Lifecycle[Any]]]
    stopped: str


async def _ffmpeg(_: Path) -> Lifecycle[Any]:
    process = FfmpegProcess(_endless_args(), name="lifecycle")
    await process.start()
    return process


async def _supervisor(_: Path) -> Lifecycle[Any]:
    supervisor = Supervisor(_endless_args, name="lifecycle", policy=RestartPolicy(initial=0.1))
    await supervisor.start()
    await eventually(lambda: supervisor.current is not None and supervisor.current.pid, what="a child running")
    return supervisor


async def _plane(_: Path) -> Lifecycle[Any]:
    plane = MediaPlane(CONFIG)
    await plane.start()
    return plane


async def _publisher(_: Path) -> Lifecycle[Any]:
    return WebRtcPublisher("f", "speaker", CONFIG, lambda publisher, state: None, aiortc_internals.DecoderCount())


async def _viewer(_: Path) -> Lifecycle[Any]:
    return WebRtcViewer("f", "v1", None, CONFIG, lambda viewer: None)


async def _slate(_: Path) -> Lifecycle[Any]:
    return Slate("Lifecycle", _video(), _audio())


async def _playout(tmp: Path) -> Lifecycle[Any]:
    return FilePlayout(tmp / "talk.ts", "playout-1", _video(), _audio())


async def _venue(tmp: Path) -> Lifecycle[Any]:
    venue = VenueIngest("lifecycle", free_port(), free_port(), KEY, _video(), _audio(), secrets_dir=tmp / "secrets")
    await venue.start()
    return venue


async def _gate(_: Path) -> Lifecycle[Any]:
    gate = RtmpKeyGate(0, KEY, _no_flv_sink, name="lifecycle")
    await gate.start()
    return gate


async def _transcoder(tmp: Path) -> Lifecycle[Any]:
    return IngestTranscoder("lifecycle", TsTap("lifecycle"), str(tmp / "rtp.sock"), None)


async def _encoder(_: Path) -> Lifecycle[Any]:
    encoder = ProgramEncoder("lifecycle", ProgramBus("lifecycle"), OutputProfile(preset="ultrafast"))
    await encoder.start()
    return encoder


async def _tee(tmp: Path) -> Lifecycle[Any]:
    tee = ProgramTee("lifecycle", private_directory("tee-", tmp / "run"))
    await tee.start()
    return tee


async def _hls(tmp: Path) -> Lifecycle[Any]:
    hls = HlsOutput("lifecycle", tmp / "hls", f"tcp://127.0.0.1:{free_port()}")
    await hls.start()
    return hls


async def _restream(_: Path) -> Lifecycle[Any]:
    restream = Restream("r1", "nowhere", f"rtmp://127.0.0.1:{free_port()}/live", KEY,
                        source_url=lambda: f"tcp://127.0.0.1:{free_port()}")
    await restream.start()
    return restream


async def _forum_host(tmp: Path) -> Lifecycle[Any]:
    forum = Forum("lifecycle", Text("Lifecycle"), ForumKind.SUB, capacity=10)
    rooms = RoomService(Event(id="e", name=Text("E"), timezone="UTC", days=(), forums=(forum,)),
                        MemoryStore(node_id="n1"), "n1")
    plane = MediaPlane(CONFIG)
    ffmpeg = ffmpeg_path(Settings())
    settings = HostSettings(ffmpeg=ffmpeg, slate_grace=0.05, ingest_host="127.0.0.1", public_host="127.0.0.1",
                            rtmp_port=free_port(), srt_port=free_port(), venue_secret="test-secret",
                            secrets_dir=tmp / "secrets")
    return ForumHost(forum, rooms, plane, MediaBridge(plane, rooms, "n1"), MediaLibrary(tmp / "media", ffmpeg=ffmpeg),
                     ProgramOutputs(plane.program_bus, OutputProfile(preset="ultrafast")).forum(forum.id), settings)


async def _rtp_ingest(_: Path) -> Lifecycle[Any]:
    ingest = RtpUdpIngest(_video(), kind="video", name="lifecycle")
    await ingest.start()
    return ingest


async def _edge_pull(_: Path) -> Lifecycle[Any]:
    plane = MediaPlane(CONFIG)  # nothing reaches it: the origin never answers
    pull = EdgePull("f", f"http://127.0.0.1:{free_port()}/whep/f", None, plane, CONFIG, plane.decoders,
                    backoff_initial=0.05)
    await pull.start()
    await eventually(lambda: pull.state == "retrying", what="the pull to retry an origin that is not there")
    return pull


async def _edge_links(_: Path) -> Lifecycle[Any]:
    async def locate(forum_id: str) -> str | None:
        return None

    links = EdgeLinks(MediaPlane(CONFIG), locate, lambda forum_id: "token", check_interval_s=0.05)
    await links.start()
    return links


async def _supervised(_: Path) -> Lifecycle[Any]:
    process = SupervisedProcess("lifecycle", ["sleep", "600"], stop_grace=5.0)  # a node worker's shape
    await process.start()
    return process


CASES = [
    Case(FfmpegProcess, _ffmpeg, "stopped"),
    Case(Supervisor, _supervisor, "stopped"),
    Case(MediaPlane, _plane, "stopped"),
    Case(WebRtcPublisher, _publisher, "closed"),
    Case(WebRtcViewer, _viewer, "closed"),
    Case(Slate, _slate, "stopped"),
    Case(FilePlayout, _playout, "stopped"),
    Case(VenueIngest, _venue, SourceState.ENDED.value),
    Case(RtmpKeyGate, _gate, "stopped"),
    Case(IngestTranscoder, _transcoder, "stopped"),
    Case(ProgramEncoder, _encoder, "stopped"),
    Case(ProgramTee, _tee, "stopped"),
    Case(HlsOutput, _hls, "stopped"),
    Case(Restream, _restream, "stopped"),
    Case(RtpUdpIngest, _rtp_ingest, "stopped"),
    Case(ForumHost, _forum_host, "stopped"),
    Case(EdgePull, _edge_pull, "stopped"),
    Case(EdgeLinks, _edge_links, "stopped"),
    Case(SupervisedProcess, _supervised, "stopped"),
]


def _subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    subs: list[type] = cls.__subclasses__()
    for sub in subs:
        found |= {sub} | _subclasses(sub)
    return found


def test_every_class_on_the_base_is_walked() -> None:
    for module in pkgutil.iter_modules(streaming.__path__):
        importlib.import_module(f"streaming.{module.name}")
    importlib.import_module("recorder.recorder")
    importlib.import_module("signaling.supervised_process")  # serve --workers' children
    on_base = {cls for cls in _subclasses(Lifecycle) if cls.__module__.split(".")[0] != "tests"}
    assert on_base == {case.cls for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.cls.__name__)
async def test_one_stop_for_every_caller(case: Case, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.DEBUG)
    thing = await case.make(tmp_path)
    assert type(thing) is case.cls
    heard: list[str] = []
    thing.add_state_listener(lambda state: heard.append(state.value))
    runs: list[str] = []
    body = thing._stop

    async def counted(*args: object, **kwargs: object) -> None:
        runs.append("began")
        await body(*args, **kwargs)
        runs.append("done")

    monkeypatch.setattr(thing, "_stop", counted)

    # the first caller is cancelled as soon as its stop is under way ...
    first = asyncio.ensure_future(thing.stop())
    await asyncio.sleep(0)  # it is inside stop(): the stop task exists, not yet run
    assert thing.stop_requested
    first.cancel()
    # ... and the stop goes on for everyone else, who return only once it is done
    await asyncio.gather(thing.stop(), thing.stop(), thing.stop())
    assert runs == ["began", "done"]
    with pytest.raises(asyncio.CancelledError):
        await first
    await thing.stop()  # once more, later: nothing runs again
    assert runs == ["began", "done"]

    assert getattr(thing, "state") == case.stopped
    assert heard and heard[-1] == case.stopped
    transitions = [r.getMessage() for r in caplog.records if r.name == case.cls.__module__ and " -> " in r.getMessage()]
    assert any(m.endswith(f"-> {case.stopped}") for m in transitions), transitions
    assert len(transitions) >= len(heard)


async def test_a_listener_that_raises_does_not_stop_the_others(caplog: pytest.LogCaptureFixture,
                                                               tmp_path: Path) -> None:
    tee = ProgramTee("listeners", private_directory("tee-", tmp_path / "run"))
    heard: list[str] = []

    def broken(state: object) -> None:
        raise RuntimeError("listener bug")

    tee.add_state_listener(broken)
    remove = tee.add_state_listener(lambda state: heard.append(state.value))
    await tee.start()
    remove()
    await tee.stop()
    assert heard == ["running"]
    assert tee.state == "stopped"
    assert any("state listener failed" in r.getMessage() for r in caplog.records)


async def test_a_cancelled_stop_still_reaps_the_child() -> None:
    """ffmpeg that does not read 'q' (-nostdin) waits out the grace: the
    caller that started the stop gives up (a wait_for around it); a second
    caller must still get a reaped child, not a return while it runs."""
    process = FfmpegProcess(["-nostdin", *_endless_args()], name="nostdin")
    await process.start()
    first = asyncio.ensure_future(process.stop(grace=1.0))
    await eventually(lambda: process.state == "stopping", what="the stop under way")
    first.cancel()
    await process.stop()
    assert process.returncode is not None, "stop() returned with the child still running"
    assert process.state == "stopped"


async def test_a_second_stop_returns_only_once_the_first_is_done(tmp_path: Path) -> None:
    """HlsOutput's stop: ffmpeg reaped, then the segments deleted. A second
    caller (the forum closing while the idle timer stops it) must not
    return before that."""
    hls = HlsOutput("second", tmp_path / "hls", f"tcp://127.0.0.1:{free_port()}")
    await hls.start()
    first = asyncio.ensure_future(hls.stop())
    await asyncio.sleep(0)  # the first caller is inside stop()
    await hls.stop()
    assert not hls.directory.exists(), "the second stop() returned before the first had finished"
    await first

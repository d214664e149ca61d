"""aiortc's private names fail safe: the pins in pyproject.toml are the
versions the check was tested with; the check knows every private name
the code touches, and a missing one stops the node at start with a clear
error; a publisher whose packets would reach aiortc's decoder is refused
at start."""

from __future__ import annotations

import ast
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCRtpReceiver
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from streaming import aiortc_internals
from streaming.aiortc_internals import PRIVATE_NAMES, PrivateName
from streaming.media_config import MediaConfig
from streaming.media_error import MediaError
from streaming.media_plane import MediaPlane
from tests import aiortc_faults
from tests.aiortc_peers import TestPublisher

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
# the modules allowed to reach aiortc/aioice/pylibsrtp/asyncio privates
REACHING = ("streaming/aiortc_internals.py", "streaming/wire_path.py")
# names reached through these module aliases are internals even without an underscore
INTERNAL_MODULES = {"_srtp_lib", "_srtp_ffi", "_rtcrtpreceiver"}


def test_pyproject_pins_exactly_the_tested_versions() -> None:
    """A pin wider than TESTED lets pip install a version the node then
    refuses to start on (aiortc>=1.16,<1.17 admitted 1.16.1; pylibsrtp>=1.0
    admitted 2.x)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    requirements = {Requirement(line).name: Requirement(line) for line in project["project"]["dependencies"]}
    for name, tested in aiortc_internals.TESTED.items():
        assert name in requirements, f"{name} is not a dependency in pyproject.toml"
        assert requirements[name].specifier == SpecifierSet(f"=={tested}"), (
            f"pyproject.toml pins {name}{requirements[name].specifier}, the check was tested with {tested}"
        )


def touched_private_names(path: Path) -> set[str]:
    """Every private name a module's code reaches: attributes with one
    leading underscore (and name-mangled ones, also as strings), names
    imported from private modules or with a leading underscore, and
    whatever it takes from aioice.ice/aioice.utils and the internal module
    aliases."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = node.value
            if node.attr.startswith("_") and not node.attr.endswith("__"):
                found.add(node.attr)
            elif isinstance(owner, ast.Name) and owner.id in INTERNAL_MODULES:
                found.add(node.attr)
            elif (isinstance(owner, ast.Attribute) and isinstance(owner.value, ast.Name)
                  and owner.value.id == "aioice" and owner.attr in ("ice", "utils")):
                found.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if re.fullmatch(r"_RTC\w+__\w+", node.value):
                found.add(node.value)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
            private_module = any(part.startswith("_") for part in node.module.split("."))
            found.update(a.name for a in node.names if private_module or a.name.startswith("_"))
    return found


def test_touched_names_are_read_from_the_code() -> None:
    names = touched_private_names(ROOT / REACHING[0])
    assert {"_RTCRtpReceiver__jitter_buffer", "_RTCRtpReceiver__decoder_queue", "_connection",
            "srtp_protect_rtcp", "decoder_worker"} <= names


@pytest.mark.parametrize("module", REACHING)
def test_the_check_covers_every_private_name_the_code_touches(module: str) -> None:
    checked = {p.name for p in PRIVATE_NAMES}
    assert touched_private_names(ROOT / module) - checked == set()


def test_the_check_passes_on_the_installed_versions() -> None:
    assert aiortc_internals.missing_names() == []
    aiortc_internals.check()


def _hide(monkeypatch: pytest.MonkeyPatch, private: PrivateName) -> None:
    """Make `private` missing as a release that dropped it would: deleted
    from its class or module, or (set in __init__) popped from each new
    instance."""
    owner = private.owner
    if private.name in vars(owner):
        monkeypatch.delattr(owner, private.name)
        return
    assert isinstance(owner, type)
    original: Callable[..., None] = owner.__init__  # type: ignore[misc]

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        self.__dict__.pop(private.name, None)

    monkeypatch.setattr(owner, "__init__", init)


# libsrtp's cffi objects are C-level (nothing to delete); asyncio's transport
# has no probe instance without a loop and a socket (checked from its source);
# without _remove_reader no event loop closes (the check's own included)
UNHIDEABLE = {"srtp_protect", "srtp_protect_rtcp", "new", "addressof", "cast", "_sock", "_loop", "_remove_reader"}


@pytest.mark.parametrize("private", [p for p in PRIVATE_NAMES if p.name not in UNHIDEABLE],
                         ids=lambda p: p.name)
def test_a_missing_name_fails_the_check_naming_it(private: PrivateName, monkeypatch: pytest.MonkeyPatch) -> None:
    _hide(monkeypatch, private)
    with pytest.raises(RuntimeError, match=re.escape(f"has no {private.name} ({private.why})")):
        aiortc_internals.check()


async def test_a_missing_name_stops_the_media_plane_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    jitter_buffer = next(p for p in PRIVATE_NAMES if p.name.endswith("__jitter_buffer"))
    _hide(monkeypatch, jitter_buffer)
    plane = MediaPlane(MediaConfig(ice_addresses=("127.0.0.1",)))
    with pytest.raises(RuntimeError, match="RTCRtpReceiver has no _RTCRtpReceiver__jitter_buffer"):
        await plane.start()
    assert plane.state == "new"


async def test_a_publisher_that_would_be_decoded_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """The names moved after the node started (or the check was skipped):
    tapping would assign a jitter buffer aiortc no longer reads, and the
    publisher's RTP would be decoded. publish() refuses it instead."""
    plane = MediaPlane(MediaConfig(ice_addresses=("127.0.0.1",)))
    await plane.start()
    publisher = TestPublisher()
    try:
        _hide(monkeypatch, next(p for p in PRIVATE_NAMES if p.name.endswith("__jitter_buffer")))
        with pytest.raises(MediaError) as refused:
            await plane.publish("f", "speaker", await publisher.offer())
        assert refused.value.code == "unavailable"
        assert "jitter_buffer" in str(refused.value) and "decoded" in str(refused.value)
        assert plane.stats()["publishers"] == 0
    finally:
        await publisher.close()
        await plane.stop()


def test_the_test_hooks_reach_names_that_exist() -> None:
    """The fault-injection hooks moved to tests/aiortc_faults.py keep their
    own list of the private names they reach."""
    instances = aiortc_internals._instances()
    for owner, name in aiortc_faults.FAULT_NAMES:
        assert hasattr(instances.get(owner, owner), name), f"{owner.__name__} has no {name}"


async def test_no_decoder_thread_decodes_for_a_forwarded_receiver() -> None:
    """A receiver we forward never decodes, even when its packets get past
    the tap: aiortc's decoder thread for it drops what reaches it and
    counts it (the count is what stats() reports and tests assert 0)."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    from streaming.ice_policy import gathering_on
    from tests.aiortc_peers import LOOPBACK
    from tests.eventually import eventually

    publisher = TestPublisher(audio=False)
    server = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    count = aiortc_internals.DecoderCount()
    try:
        server.addTransceiver("video", direction="recvonly")
        await server.setRemoteDescription(RTCSessionDescription(sdp=await publisher.offer(), type="offer"))
        receiver: RTCRtpReceiver = server.getTransceivers()[0].receiver
        aiortc_internals.mark_server_receiver(receiver, count)  # marked, not tapped: frames reach the thread
        with gathering_on(LOOPBACK):
            await server.setLocalDescription(await server.createAnswer())
        await publisher.accept(server.localDescription.sdp)
        # several frames reached the thread (aiortc 1.16's own worker counted
        # one decoder, then decoded every frame into the track)
        await eventually(lambda: count.value >= 5, what="frames reaching the decoder thread")
        assert receiver.track._queue.empty(), "a frame was decoded"
    finally:
        await publisher.close()
        await server.close()

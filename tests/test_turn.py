"""TURN and STUN for clients: settings, coturn REST-API credentials, the
pages' join ack and WHIP/WHEP Link headers (RFC 9725 s4.6), and a real
coturn (Debian's `coturn`, use-auth-secret) relaying a forum's media to an
aiortc viewer whose ICE may use relay candidates only."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
import socketio
from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from config.settings import SettingsError, load_settings
from rooms.models import Role
from signaling.ice_servers import IceServers, turn_credentials
from tests.aiortc_peers import TestPublisher, TestViewer
from tests.eventually import eventually_blocking
from tests.processes import free_port
from tests.server_process import ServerProcess, start_server

FORUM = "digital-economy"
SDP = "application/sdp"
LINK_RE = re.compile(r'<([^>]+)>; rel="ice-server"(?:; username="([^"]*)"; credential="([^"]*)"; '
                     r'credential-type="password")?')


def test_turn_credentials_are_coturn_rest_api_shaped() -> None:
    username, password = turn_credentials("s3cret-shared-with-coturn", "alice", 1_800_000_000)
    assert username == "1800000000:alice"
    expected = base64.b64encode(hmac.new(b"s3cret-shared-with-coturn", b"1800000000:alice", hashlib.sha1).digest())
    assert password == expected.decode()
    servers = IceServers(("stun:stun.example.org:3478", "turn:turn.example.org:3478?transport=udp"),
                         "s3cret-shared-with-coturn", 600, now=lambda: 1_000.4)
    stun, turn = servers.for_holder("alice")
    assert stun.to_json() == {"urls": "stun:stun.example.org:3478"}
    assert turn.to_json()["username"] == "1600:alice"
    assert turn.link_header().startswith('<turn:turn.example.org:3478?transport=udp>; rel="ice-server"; username="1600:alice"')
    assert "s3cret" not in repr(servers)


def test_ice_server_settings_are_checked_and_the_secret_never_echoed(tmp_path: Path) -> None:
    settings = load_settings(None, data_dir=tmp_path, ice_servers="stun:127.0.0.1:3478, turn:[::1]:3478?transport=tcp",
                             turn_secret="0123456789abcdef-secret")
    assert settings.ice_servers == ("stun:127.0.0.1:3478", "turn:[::1]:3478?transport=tcp")
    with pytest.raises(SettingsError, match="not a STUN/TURN URL"):
        load_settings(None, data_dir=tmp_path, ice_servers="http://turn.example.org")
    with pytest.raises(SettingsError, match="turn_secret is not set"):
        load_settings(None, data_dir=tmp_path, ice_servers="turn:turn.example.org")
    with pytest.raises(SettingsError) as refused:
        load_settings(None, data_dir=tmp_path, turn_secret="short-secret")
    assert "short-secret" not in str(refused.value)


# --- a real coturn on loopback ------------------------------------------------------


class Coturn:
    """turnserver with use-auth-secret on 127.0.0.1; the secret in a 0600
    config file, never on argv."""

    def __init__(self, secret: str, listening_ip: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.listening_ip = listening_ip
        self.dir = Path(tempfile.mkdtemp(prefix="forumcast-coturn-"))
        config = self.dir / "turnserver.conf"
        config.touch(mode=0o600)
        config.write_text("\n".join([
            f"listening-port={self.port}", f"listening-ip={listening_ip}", "relay-ip=127.0.0.1",
            "use-auth-secret", f"static-auth-secret={secret}", "realm=forumcast.test",
            "allow-loopback-peers", "no-tls", "no-dtls", "no-cli", "fingerprint",
            "min-port=49152", "max-port=65535", f"pidfile={self.dir / 'turn.pid'}",
            f"log-file={self.dir / 'turn.log'}", "simple-log", "verbose", f"userdb={self.dir / 'turndb'}",
        ]) + "\n")
        self.log = self.dir / "turn.log"
        self.process = subprocess.Popen(["turnserver", "-c", str(config)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.dir.glob("turn*.log"))

    def wait_listening(self) -> None:
        def listening() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"turnserver exited {self.process.returncode}:\n{self.text()}")
            return f"{self.listening_ip}:{self.port}" in self.text()
        eventually_blocking(listening, timeout=20, what="coturn listening")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def turn_secret() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def coturn(turn_secret: str) -> Iterator[Coturn]:
    if shutil.which("turnserver") is None:
        pytest.fail("coturn is not installed: apt-get install coturn")
    server = Coturn(turn_secret)
    try:
        server.wait_listening()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(coturn: Coturn, turn_secret: str) -> Iterator[ServerProcess]:
    process = start_server(extra_env={
        "FORUMCAST_ICE_SERVERS": f"stun:127.0.0.1:{coturn.port},turn:127.0.0.1:{coturn.port}?transport=udp",
        "FORUMCAST_TURN_SECRET": turn_secret,
    })
    try:
        yield process
    finally:
        process.cleanup()


def links(headers: "aiohttp.typedefs.LooseHeaders") -> list[tuple[str, str, str]]:
    found = []
    for value in headers.getall("Link", []):  # type: ignore[union-attr]
        match = LINK_RE.fullmatch(value)
        assert match, value
        found.append((match.group(1), match.group(2) or "", match.group(3) or ""))
    return found


async def test_a_relay_only_viewer_gets_the_forum_through_coturn(
        coturn: Coturn, server: ServerProcess, http: aiohttp.ClientSession, turn_secret: str) -> None:
    speaker = server.token(Role.SPEAKER, [FORUM], "Relay speaker")
    viewer_token = server.token(Role.VIEWER, [FORUM], "Relay viewer")
    # the pages' path: the socket.io join ack carries RTCConfiguration.iceServers
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(server.url, auth={"token": viewer_token}, transports=["websocket"], wait_timeout=10)
    try:
        ack = await sio.call("join", {"forum_id": FORUM}, timeout=10)
    finally:
        await sio.disconnect()
    assert ack["ice_servers"][0] == {"urls": f"stun:127.0.0.1:{coturn.port}"}
    turn = ack["ice_servers"][1]
    assert turn["urls"] == f"turn:127.0.0.1:{coturn.port}?transport=udp"
    assert re.fullmatch(r"\d+:.+", turn["username"]) and turn["credential"]
    # WHEP: OPTIONS with the token answers the same servers (a client gathers before it POSTs)
    response = await http.options(f"{server.url}/whep/{FORUM}", headers={"Authorization": f"Bearer {viewer_token}"})
    assert response.status == 204
    offered = links(response.headers)
    assert [url for url, _, _ in offered] == [f"stun:127.0.0.1:{coturn.port}", f"turn:127.0.0.1:{coturn.port}?transport=udp"]
    anonymous = await http.options(f"{server.url}/whep/{FORUM}")  # a CORS preflight: no credentials
    assert anonymous.status == 204 and links(anonymous.headers) == []
    turn_url, username, credential = offered[1]
    assert credential == base64.b64encode(hmac.new(turn_secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    assert turn_secret not in str(ack) and turn_secret not in str(response.headers)

    publisher = TestPublisher()
    viewer = TestViewer(configuration=RTCConfiguration(
        iceServers=[RTCIceServer(urls=turn_url, username=username, credential=credential)],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY))
    try:
        published = await http.post(f"{server.url}/whip/{FORUM}", data=await publisher.offer(),
                                    headers={"Authorization": f"Bearer {speaker}", "Content-Type": SDP})
        assert published.status == 201, await published.text()
        assert len(links(published.headers)) == 2  # WHIP's 201 carries them too
        await publisher.accept(await published.text())
        offer = await viewer.offer()
        candidates = re.findall(r"^a=candidate:.* typ (\w+)", offer, re.MULTILINE)
        assert candidates and set(candidates) == {"relay"}, offer  # relay policy: nothing else offered
        watched = await http.post(f"{server.url}/whep/{FORUM}", data=offer,
                                  headers={"Authorization": f"Bearer {viewer_token}", "Content-Type": SDP})
        assert watched.status == 201, await watched.text()
        assert links(watched.headers)[1][0] == turn_url
        await viewer.accept(await watched.text())
        await viewer.wait_frames(10, timeout=40)  # the speaker's numbered frames, relayed by coturn
        log = coturn.text()  # coturn accepted the derived credentials and relayed to the node
        assert "ALLOCATE processed, success" in log and username in log, log[-3000:]
        assert "CHANNEL_BIND processed, success" in log or "CREATE_PERMISSION processed, success" in log
    finally:
        await viewer.close()
        await publisher.close()


# --- the viewer in a network namespace that reaches only coturn -----------------------


class Namespace:
    """A network namespace joined to this one by a veth pair: inside, the
    viewer has 10.213.N.2 and its namespace's own loopback; outside,
    10.213.N.1 is where coturn listens. forumcast (HTTP and media) binds
    127.0.0.1 here, which the namespace cannot reach, so its only way to
    the node's media is the TURN port. (No iptables/nft on this machine to
    filter ports on 10.213.N.1 too: nothing else of the test listens there.)"""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name = f"fc-turn-{tag}"
        self.outer_if, self.inner_if = f"fct{tag}a", f"fct{tag}b"
        octet = int(tag[:2], 16) % 250 + 1
        self.outer, self.inner = f"10.213.{octet}.1", f"10.213.{octet}.2"
        commands = [
            ["ip", "netns", "add", self.name],
            ["ip", "link", "add", self.outer_if, "type", "veth", "peer", "name", self.inner_if],
            ["ip", "link", "set", self.inner_if, "netns", self.name],
            ["ip", "addr", "add", f"{self.outer}/30", "dev", self.outer_if],
            ["ip", "link", "set", self.outer_if, "up"],
            ["ip", "-n", self.name, "addr", "add", f"{self.inner}/30", "dev", self.inner_if],
            ["ip", "-n", self.name, "link", "set", self.inner_if, "up"],
            ["ip", "-n", self.name, "link", "set", "lo", "up"],
        ]
        try:
            for command in commands:
                subprocess.run(command, check=True, capture_output=True, timeout=10)
        except BaseException:
            self.delete()
            raise

    def delete(self) -> None:
        # deleting the namespace deletes its end of the veth, and with it the pair
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", self.outer_if], capture_output=True, timeout=10)


def netns_usable() -> bool:
    if shutil.which("ip") is None:
        return False
    probe = f"fc-probe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, timeout=10).returncode == 0
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10)
    return made


@pytest.mark.skipif(not netns_usable(), reason="needs root and `ip netns` (network namespaces)")
async def test_a_viewer_that_reaches_only_the_turn_port_watches_through_it(
        http: aiohttp.ClientSession, turn_secret: str) -> None:
    namespace = Namespace()
    coturn = None
    node = None
    viewer = None
    publisher = TestPublisher()
    try:
        coturn = Coturn(turn_secret, listening_ip=namespace.outer)
        coturn.wait_listening()
        turn_url = f"turn:{namespace.outer}:{coturn.port}?transport=udp"
        node = start_server(extra_env={"FORUMCAST_ICE_SERVERS": turn_url, "FORUMCAST_TURN_SECRET": turn_secret})
        viewer_token = node.token(Role.VIEWER, [FORUM], "Firewalled viewer")
        published = await http.post(f"{node.url}/whip/{FORUM}", data=await publisher.offer(), headers={
            "Authorization": f"Bearer {node.token(Role.SPEAKER, [FORUM])}", "Content-Type": SDP})
        assert published.status == 201, await published.text()
        await publisher.accept(await published.text())
        options = await http.options(f"{node.url}/whep/{FORUM}", headers={"Authorization": f"Bearer {viewer_token}"})
        [(url, username, credential)] = links(options.headers)
        assert url == turn_url
        viewer = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", namespace.name, sys.executable, "-m", "tests.netns_viewer",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=str(Path(__file__).resolve().parent.parent))
        assert viewer.stdin is not None and viewer.stdout is not None

        async def say(message: dict[str, str]) -> None:
            assert viewer is not None and viewer.stdin is not None
            viewer.stdin.write((json.dumps(message) + "\n").encode())
            await viewer.stdin.drain()

        async def hear() -> dict[str, str]:
            assert viewer is not None and viewer.stdout is not None
            line = await asyncio.wait_for(viewer.stdout.readline(), 60)
            if not line:
                assert viewer.stderr is not None
                raise AssertionError("the namespaced viewer ended: " + (await viewer.stderr.read()).decode()[-3000:])
            answer: dict[str, str] = json.loads(line)
            return answer

        await say({"url": url, "username": username, "credential": credential, "host": namespace.inner})
        offer = (await hear())["offer"]
        kinds = set(re.findall(r"^a=candidate:.* (\S+) \d+ typ (\w+)", offer, re.MULTILINE))
        assert ("relay" in {k for _, k in kinds}) and all(
            addr in (namespace.inner, "127.0.0.1") or typ == "relay" for addr, typ in kinds), offer
        watched = await http.post(f"{node.url}/whep/{FORUM}", data=offer,
                                  headers={"Authorization": f"Bearer {viewer_token}", "Content-Type": SDP})
        assert watched.status == 201, await watched.text()
        await say({"answer": await watched.text()})
        result = await hear()
        assert "frames" in result, result
        log = coturn.text()
        assert "ALLOCATE processed, success" in log and username in log, log[-3000:]
    finally:
        if viewer is not None and viewer.returncode is None:
            viewer.kill()
            await viewer.wait()
        await publisher.close()
        if node is not None:
            node.cleanup()
        if coturn is not None:
            coturn.stop()
        namespace.delete()

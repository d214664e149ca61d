"""Stand-in webcast platforms for the restream tests: a real ffmpeg RTMP
listener (`-listen 1`) writing what it receives to a file, optionally
behind a real TLS endpoint (Python's ssl with a self-signed certificate,
since ffmpeg's RTMP listener cannot do RTMPS: "rtmp_listen not available
for rtmps")."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import socket
import ssl
from pathlib import Path

import ffmpeg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from streaming.ffmpeg_process import FfmpegProcess


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    import ipaddress

    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Platform:
    """`url` is what a forum restreams to (without the key)."""

    def __init__(self, name: str, directory: Path, key: str, *, tls: bool = False) -> None:
        self.name = name
        self.directory = directory
        self.key = key
        self.tls = tls
        self.rtmp_port = free_tcp_port()
        self.port = free_tcp_port() if tls else self.rtmp_port
        self.url = f"{'rtmps' if tls else 'rtmp'}://127.0.0.1:{self.port}/live"
        self.files: list[Path] = []
        self.listener: FfmpegProcess | None = None
        self._tls_server: asyncio.Server | None = None
        self.cert: Path | None = None
        self.loglevel = "error"

    async def start(self) -> Path:
        """(Re)start listening; returns the file this run writes."""
        target = self.directory / f"{self.name}-{len(self.files)}.flv"
        self.files.append(target)
        args = (
            ffmpeg.input(f"rtmp://127.0.0.1:{self.rtmp_port}/live/{self.key}", listen=1)
            .output(str(target), c="copy", f="flv").overwrite_output().get_args()
        )
        self.listener = FfmpegProcess(args, name=f"platform-{self.name}", loglevel=self.loglevel)
        await self.listener.start()
        if self.tls and self._tls_server is None:
            self.cert, key = self_signed(self.directory)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self.cert, key)
            self._tls_server = await asyncio.start_server(self._terminate_tls, "127.0.0.1", self.port, ssl=context)
        return target

    async def _terminate_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.rtmp_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def crash(self) -> None:
        """The platform goes away at once (SIGKILL)."""
        if self.listener is not None:
            await self.listener.kill()

    async def stop(self) -> None:
        if self.listener is not None:
            await self.listener.stop(grace=3.0)
        if self._tls_server is not None:
            self._tls_server.close()

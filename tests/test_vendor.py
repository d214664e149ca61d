"""Third-party browser files ship inside the package (signaling/vendor.py):
committed, licensed, pinned to package-lock.json, identical to npm's copy."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from signaling import vendor
from signaling.pages import setup_pages


def test_every_vendored_file_is_committed_with_its_licence() -> None:
    files = vendor.load_manifest()
    assert {file.name for file in files} >= {"socket.io.min.js"}
    assert vendor.problems(files) == []


def test_vendored_versions_are_the_locked_ones() -> None:
    for file in vendor.load_manifest():
        assert vendor.locked_version(file.package) == file.version, (
            f"{file.name}: package-lock.json pins another {file.package}; "
            "run `npm ci` in signaling/web, then `python -m signaling.vendor`")


def test_vendored_files_are_byte_identical_to_npm_ci() -> None:
    files = vendor.load_manifest()
    installed = [file for file in files if file.npm_path().is_file()]
    if not installed:
        pytest.skip("no node_modules (npm ci in signaling/web) to compare with")
    for file in installed:
        assert file.path.read_bytes() == file.npm_path().read_bytes(), (
            f"{file.name} differs from {file.npm_path()}: run `python -m signaling.vendor`")


async def test_vendored_files_are_served_from_the_package() -> None:
    # the real check is tests/test_wheel.py (an installed wheel, no node_modules)
    app = web.Application()
    setup_pages(app)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for file in vendor.load_manifest():
            response = await client.get(f"/static/vendor/{file.name}")
            assert response.status == 200
            assert await response.read() == file.path.read_bytes()

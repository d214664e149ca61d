"""Debian's chromium for the browser tests, driven by Playwright (never a
downloaded browser): its path and the one set of flags every test uses."""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--allow-loopback-in-peer-connection",
    # a fake camera and microphone; with the media permission granted chromium
    # offers raw host candidates (127.0.0.1 among them), not mDNS names
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
]

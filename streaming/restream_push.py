#!/usr/bin/env python3
"""One restream push: copy the program (MPEG-TS from the tee) to one
RTMP/RTMPS destination as FLV, without re-encoding.

Run by `streaming/restream.py` under the ffmpeg Supervisor, in place of
the ffmpeg binary. Why not the ffmpeg CLI: a stream key must never be in
argv (any local user reads /proc/*/cmdline), ffmpeg 9's `-/option file`
loads CLI options only (not protocol options such as rtmp_playpath:
"Unrecognized option"), and an output URL is positional. This child is
the same libavformat (PyAV, already a dependency of aiortc) reading the
key from a 0600 file; the key lives only in its memory.

It accepts ffmpeg's house flags (-hide_banner -nostats -loglevel L) so
FfmpegProcess runs it unchanged, stops on 'q' on stdin (writes the FLV
trailer), and reports on stderr, one line each, with the key redacted:
`push: live` once the destination accepted the stream header,
`push: sent N` (bytes so far) each second, `push: error WORDS` before a
non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time


def in_words(error: BaseException) -> str:
    """What went wrong, as an operator reads it on the control page (not
    a Python class name). PyAV's errors subclass the builtin ones."""
    detail = getattr(error, "strerror", None) or str(error) or type(error).__name__
    if isinstance(error, ConnectionRefusedError):
        return f"the platform refused the connection: nothing answers at that address and port ({detail})"
    if isinstance(error, TimeoutError):
        return f"the platform did not answer in time ({detail})"
    if isinstance(error, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return f"the platform closed the connection: check the stream key, or the platform ended the stream ({detail})"
    if isinstance(error, PermissionError):
        return f"the platform refused the stream: check the stream key and that the stream is enabled ({detail})"
    if "resolve" in detail.lower() or "name or service not known" in detail.lower():
        return f"the platform's host name does not resolve ({detail})"
    if "ssl" in type(error).__name__.lower() or "tls" in detail.lower() or "certificate" in detail.lower():
        return f"the secure (RTMPS) connection failed ({detail})"
    return f"the push failed: {detail}"


def _redact(text: str, secret: str) -> str:
    return text.replace(secret, "***") if secret else text


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("-hide_banner", action="store_true")
    parser.add_argument("-nostats", action="store_true")
    parser.add_argument("-loglevel", default="warning")
    parser.add_argument("--input", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--key-file", required=True)
    args = parser.parse_args(argv)
    with open(args.key_file, encoding="utf-8") as f:
        key = f.read().strip()
    quit_asked = threading.Event()

    def watch_stdin() -> None:
        while True:
            try:
                data = os.read(0, 1)  # unbuffered: no lock held at interpreter exit
            except OSError:
                data = b""
            if not data or data == b"q":
                quit_asked.set()
                return

    threading.Thread(target=watch_stdin, daemon=True).start()
    import av  # deferred: startup of the flags above stays cheap
    import av.logging

    av.logging.set_level(None)  # libav's own log lines could carry the URL
    target = args.url.rstrip("/") + "/" + key if key else args.url
    try:
        with av.open(args.input, format="mpegts", options={"timeout": "10000000", "analyzeduration": "300000", "probesize": "32768", "fpsprobesize": "0"}) as source:
            streams = [s for s in source.streams if s.type in ("video", "audio")]
            out = av.open(target, "w", format="flv")
            try:
                mapping = {s.index: out.add_stream_from_template(s) for s in streams}
                base: float | None = None
                sent = 0
                last_report = 0.0
                live = False
                live_at = 0.0
                media_s = 0.0
                for packet in source.demux(streams):
                    if quit_asked.is_set():
                        break
                    if packet.dts is None or packet.pts is None or packet.time_base is None:
                        continue
                    # start the destination at 0 whatever the tee's clock says
                    if base is None:
                        base = float(packet.dts * packet.time_base)
                    offset = round(base / packet.time_base)
                    packet.dts -= offset
                    packet.pts -= offset
                    if packet.dts < 0:
                        continue
                    packet.stream = mapping[packet.stream.index]
                    out.mux(packet)
                    sent += packet.size
                    if not live:
                        live = True
                        live_at = time.monotonic()
                        print("push: live", file=sys.stderr, flush=True)
                    media_s = float(packet.dts * packet.time_base)
                    now = time.monotonic()
                    if now - last_report >= 1.0:
                        last_report = now
                        print(f"push: sent {sent}", file=sys.stderr, flush=True)
            finally:
                out.close()
                if live:
                    print(f"push: done {media_s:.2f} s of media in {time.monotonic() - live_at:.2f} s",
                          file=sys.stderr, flush=True)
    except Exception as error:  # report in words, key redacted, then exit non-zero
        words = _redact(in_words(error), key)
        print(f"push: error {words}", file=sys.stderr, flush=True)
        return 1
    if not quit_asked.wait(0.5):  # a stop closes our input just after its 'q'
        print("push: error the program ended", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stderr.flush()
    os._exit(code)  # not sys.exit: the stdin thread may still be blocked in read

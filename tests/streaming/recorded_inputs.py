"""The recorded talks of issue 15, made with the bundled ffmpeg the way
each device writes them (short and small: the machine is shared). Used
by tests/streaming/test_recorded_talks.py and bench/normalize.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

from streaming.ffmpeg_process import ffmpeg_binary

NAMES = ("mediarecorder.webm", "still_and_voice.mp4", "song_with_cover.mp3", "voice.m4a", "voice.mp3",
         "interpretation.mkv", "spatial.mov", "sparse_screen.mkv", "phone_vfr.mp4", "size_change.ts",
         "viewer_ready.mp4", "hlg.mp4", "pq.mp4", "cut_short.mkv", "camera_720p_high.mp4", "camera_720p_ready.mp4")


def ff(*args: str, stdout: Path | None = None) -> None:
    """Run the bundled ffmpeg (input generation only)."""
    command = [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y", *args]
    if stdout is None:
        subprocess.run(command, check=True, timeout=300)
    else:
        with stdout.open("wb") as handle:
            subprocess.run(command, check=True, timeout=300, stdout=handle)


class RecordedInputs:
    """`inputs(name)`: the file, made on first use under `base`."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.made: dict[str, Path] = {}
        self.base.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str) -> Path:
        return self.make(name)

    def make(self, name: str) -> Path:
        if name in self.made:
            return self.made[name]
        base, sine = self.base, ["-f", "lavfi", "-i", "sine=f=440:r=48000:d=4"]
        path = self.base / name
        if name == "mediarecorder.webm":  # written to a pipe: no duration, no cues, as MediaRecorder does
            ff("-f", "lavfi", "-i", "testsrc2=s=320x180:d=4", *sine, "-c:v", "libvpx-vp9", "-deadline", "realtime",
               "-cpu-used", "8", "-c:a", "libopus", "-f", "webm", "pipe:1", stdout=path)
        elif name == "picture.mp4":
            ff("-f", "lavfi", "-i", "testsrc2=s=320x180:d=1", "-frames:v", "1", "-c:v", "libx264", str(path))
        elif name == "voice.m4a":
            ff(*sine, "-c:a", "aac", str(path))
        elif name == "voice.mp3":
            ff(*sine, "-c:a", "libmp3lame", str(path))
        elif name == "still_and_voice.mp4":  # one frame of video muxed with 4 s of AAC voice
            ff("-i", str(self.make("picture.mp4")), "-i", str(self.make("voice.m4a")), "-c", "copy", str(path))
        elif name == "cover.png":
            ff("-f", "lavfi", "-i", "testsrc2=s=320x180:d=1", "-frames:v", "1", str(path))
        elif name == "song_with_cover.mp3":
            ff(*sine, "-i", str(self.make("cover.png")), "-map", "0:a", "-map", "1:v", "-c:a", "libmp3lame",
               "-c:v", "mjpeg", "-disposition:v", "attached_pic", str(path))
        elif name == "interpretation.mkv":  # the talk (440 Hz, eng) and its interpretation (880 Hz, fra, default)
            ff("-f", "lavfi", "-i", "testsrc2=s=320x180:d=4", *sine, "-f", "lavfi", "-i", "sine=f=880:r=48000:d=4",
               "-map", "0:v", "-map", "1:a", "-map", "2:a", "-c:v", "libx264", "-preset", "veryfast", "-c:a", "aac",
               "-metadata:s:a:0", "language=eng", "-metadata:s:a:0", "title=Talk",
               "-metadata:s:a:1", "language=fra", "-metadata:s:a:1", "title=Interpretation",
               "-disposition:a:0", "0", "-disposition:a:1", "default", str(path))
        elif name == "spatial.mov":  # an iPhone's second, "spatial audio" track: apple_apac has no decoder
            plain = self.base / "spatial-pcm.mov"
            ff("-f", "lavfi", "-i", "testsrc2=s=320x180:d=4", *sine, "-f", "lavfi", "-i", "sine=f=1000:d=4",
               "-map", "0:v", "-map", "1:a", "-map", "2:a", "-c:v", "libx264", "-preset", "ultrafast",
               "-c:a:0", "aac", "-c:a:1", "pcm_s16le", str(plain))
            data = plain.read_bytes()
            assert data.count(b"sowt") == 1  # the PCM track's sample entry, renamed to Apple's APAC
            path.write_bytes(data.replace(b"sowt", b"apac"))
        elif name == "sparse_screen.mkv":  # 30 fps for 3 s, then a frame only on change (every 5 s)
            ff("-f", "lavfi", "-i", "testsrc2=s=320x180:r=30:d=10", "-f", "lavfi", "-i", "sine=d=10",
               "-vf", "select='lt(t,3)+not(mod(n,150))'", "-fps_mode", "vfr", "-c:v", "libx264",
               "-preset", "ultrafast", "-c:a", "aac", str(path))
        elif name == "phone_vfr.mp4":  # 30 fps, then 15, then 30 again (average 24)
            ff("-f", "lavfi", "-i", "testsrc2=s=320x180:r=30:d=6", "-f", "lavfi", "-i", "sine=d=6",
               "-vf", "select='not(between(t,2,4))+not(mod(n,2))'", "-fps_mode", "vfr", "-c:v", "libx264",
               "-preset", "ultrafast", "-c:a", "aac", str(path))
        elif name == "size_change.ts":  # a 16:9 camera, then a 4:3 screen share in the same file
            parts = []
            for n, size in enumerate(("320x180", "240x180")):
                part = self.base / f"part{n}.ts"
                ff("-f", "lavfi", "-i", f"color=c=white:s={size}:r=30:d=2", "-f", "lavfi", "-i", "sine=d=2",
                   "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(part))
                parts.append(part)
            ff("-i", f"concat:{parts[0]}|{parts[1]}", "-c", "copy", str(path))
        elif name == "viewer_ready.mp4":  # already H.264 constrained baseline, no B-frames, 1 s GOP
            ff("-f", "lavfi", "-i", "testsrc2=s=320x180:r=30:d=4", *sine, "-c:v", "libx264", "-preset", "ultrafast",
               "-profile:v", "baseline", "-bf", "0", "-g", "30", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path))
        elif name == "video_with_cover.mp4":  # a moving picture with cover art
            ff("-i", str(self.make("cover.png")), "-f", "lavfi", "-i", "testsrc2=s=320x180:r=30:d=4", *sine,
               "-map", "0:v", "-map", "1:v", "-map", "2:a", "-c:v:0", "png", "-disposition:v:0", "attached_pic",
               "-c:v:1", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(path))
        elif name == "cut_short.mkv":  # the header says 4 s, the file holds 2 (a copy that stopped)
            whole = self.base / "whole.mkv"
            ff("-f", "lavfi", "-i", "testsrc2=s=320x180:r=30:d=4", *sine, "-c:v", "libx264", "-preset", "ultrafast",
               "-c:a", "aac", str(whole))
            data = whole.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        elif name == "pq.mp4":  # HDR10: PQ 10-bit HEVC, a white picture at 203 cd/m2 (BT.2408 reference white)
            ff("-f", "lavfi", "-i", "color=c=white:s=320x180:r=30:d=2", "-f", "lavfi", "-i", "sine=d=2",
               "-vf", "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv,"
                      "zscale=t=smpte2084:p=bt2020:m=bt2020nc:r=tv:npl=203,format=yuv420p10le",
               "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error",
               "-color_primaries", "bt2020", "-color_trc", "smpte2084", "-colorspace", "bt2020nc",
               "-c:a", "aac", str(path))
        elif name == "hlg.mp4":  # a phone's HLG 10-bit HEVC: a white picture
            ff("-f", "lavfi", "-i", "color=c=white:s=320x180:r=30:d=2", "-f", "lavfi", "-i", "sine=d=2",
               "-vf", "setparams=color_primaries=bt709:color_trc=bt709:colorspace=bt709:range=tv,"
                      "zscale=t=arib-std-b67:p=bt2020:m=bt2020nc:r=tv:npl=203,format=yuv420p10le",
               "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error",
               "-color_primaries", "bt2020", "-color_trc", "arib-std-b67", "-colorspace", "bt2020nc",
               "-c:a", "aac", str(path))
        elif name in ("camera_720p_high.mp4", "camera_720p_ready.mp4"):  # 10 s of 720p30: the cost of each path
            codec = (["-profile:v", "high", "-bf", "3"] if "high" in name
                     else ["-profile:v", "baseline", "-bf", "0", "-g", "30"])
            ff("-f", "lavfi", "-i", "testsrc2=s=1280x720:r=30:d=10", "-f", "lavfi", "-i", "sine=d=10",
               "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", *codec, "-c:a", "aac", str(path))
        else:
            raise KeyError(name)
        self.made[name] = path
        return path


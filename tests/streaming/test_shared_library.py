"""One media library shared by the nodes of `serve --workers` (one data
dir, several processes): a node's start never removes another's uploads
and conversions in progress, and no node's index write drops another's
item or choice; each node reads what the others changed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from streaming.media_library import MediaItem, MediaLibrary

REPO = Path(__file__).resolve().parents[2]
TRACKS = [{"index": n, "language": lang, "title": "", "default": n == 0, "codec": "opus", "channels": 2}
          for n, lang in enumerate(("en", "zh"))]


def _library_with_two_items(root: Path) -> None:
    (root / "media").mkdir(parents=True)
    items = []
    for name in ("a", "b"):
        (root / "media" / f"{name}.ts").write_bytes(b"\x47" * 188)
        items.append(MediaItem(id=name, forum_id="main", name=f"{name}.mp4", duration=1.0, width=640, height=360,
                               created_at=1.0, content_hash=name, file=f"media/{name}.ts",
                               audio_tracks=TRACKS).to_json())
    (root / "index.json").write_text(json.dumps({"version": 2, "items": items}))


async def test_nodes_sharing_a_library_keep_each_others_changes(tmp_path: Path) -> None:
    _library_with_two_items(tmp_path)
    one, two = MediaLibrary(tmp_path), MediaLibrary(tmp_path)  # two nodes, each loaded it at its start
    await one.select_audio("a", 1)
    await two.select_audio("b", 1)  # wrote its own memory: "a" back to track 0
    fresh = MediaLibrary(tmp_path)
    assert (fresh.get("a").audio_track, fresh.get("b").audio_track) == (1, 1)
    assert one.get("b").audio_track == 1  # each sees the other's change


def test_a_node_starting_leaves_another_nodes_conversions_alone(tmp_path: Path) -> None:
    running = MediaLibrary(tmp_path)  # this process: a node converting an upload
    in_progress = running.tmp_dir / "upload-0123"
    in_progress.write_bytes(b"half an upload")
    dead = tmp_path / "tmp" / "999999999-1"  # a run that crashed mid-upload
    dead.mkdir()
    (dead / "upload-4567").write_bytes(b"left behind")
    # another node starts on the same data dir (another process)
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                    "from streaming.media_library import MediaLibrary; MediaLibrary(Path(sys.argv[1]))",
                    str(tmp_path)], cwd=REPO, check=True, timeout=120)
    assert in_progress.read_bytes() == b"half an upload"
    assert not dead.exists()


def _complete_upload(root: Path, upload_id: str, run: str, *, node: str = "w-1", complete: bool = True) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{upload_id}.bin").write_bytes(b"not a video, but complete"[:25 if complete else 5])
    (root / f"{upload_id}.json").write_text(json.dumps({
        "id": upload_id, "forum_id": "main", "owner": "op", "uploader": "Op", "filename": "talk.mp4",
        "length": 25, "created_at": 1.0, "job": "job-of-its-node" if complete else None,
        "content_hash": "c" * 64 if complete else "", "run": run, "node": node}))


async def test_a_node_starting_takes_over_only_the_uploads_of_a_dead_run(tmp_path: Path) -> None:
    from rooms.errors import RoomError
    from rooms.models import Role
    from rooms.tokens import Grant
    from signaling.tus_uploads import TusStore
    from streaming.child_processes import run_id, start_ticks

    other = subprocess.Popen(["sleep", "600"])  # another node, converting its upload
    library = MediaLibrary(tmp_path / "library")
    try:
        uploads = tmp_path / "library" / "uploads"
        _complete_upload(uploads, "theirs", f"{other.pid}-{start_ticks(other.pid)}")
        _complete_upload(uploads, "orphan", "999999999-1")  # its node crashed: any node converts it
        # unfinished uploads of crashed runs: their clients resume them at their own node's URL
        _complete_upload(uploads, "half-mine", "999999999-1", node="w-0", complete=False)
        _complete_upload(uploads, "half-theirs", "999999999-1", node="w-1", complete=False)
        store = TusStore(uploads, library, node="w-0")
        store.start()  # converts again what it took over, and only that
        assert [job.name for job in library.jobs("main")] == ["talk.mp4"]
        operator = Grant(Role.OPERATOR, None, "Op", "op", 4102444800.0)
        assert store.get("main", "orphan", operator).run == run_id()
        assert store.get("main", "half-mine", operator).run == run_id()
        for not_ours in ("theirs", "half-theirs"):
            try:
                store.get("main", not_ours, operator)
                raise AssertionError(f"{not_ours}: another node's upload was taken over")
            except RoomError as error:
                assert error.code == "not_found", error
        assert json.loads((uploads / "orphan.json").read_text())["run"] == run_id()
        assert (uploads / "theirs.bin").exists() and json.loads((uploads / "theirs.json").read_text())["run"] != run_id()
        await store.stop()
    finally:
        await library.stop()
        other.kill()
        other.wait()


async def test_nodes_preparing_the_same_video_convert_it_once(tmp_path: Path) -> None:
    """Every node prepares the agenda's upcoming videos: with one library
    shared by the workers, each converted the same file at once."""
    import asyncio

    from tests.streaming.test_media_library import make_video

    video = make_video(tmp_path / "talk.mp4", 2)  # H.264 High with B-frames: converted, not copied
    nodes = [MediaLibrary(tmp_path / "library") for _ in range(2)]  # two flock holders, as two processes
    try:
        items = await asyncio.gather(*(node.add_file("main", video) for node in nodes))
        assert items[0].file == items[1].file
        assert sum(node.normalizations for node in nodes) == 1
    finally:
        for node in nodes:
            await node.stop()

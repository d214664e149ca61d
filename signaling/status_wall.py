"""The status wall: every forum the token operates at a glance.

    GET /status?token=   the page (signaling/web/templates/status.html)
    GET /api/status      {"now", "forums": [{"id", "name": {"en","zh"}, "room",
                          "program": <program>, "viewers": {"forum_id","viewers","total"},
                          "sources": [<source> + "tracks"], "live": <session>|null,
                          "next": <session>|null, "restreams": [<restream status>],
                          "recording": <recording>|null, "alerts": [<alert>]}],
                          "disk": {"free_bytes", "low"}|null}

Each source's `tracks` are what this node receives of it over the last
2 s: [{"kind": "video"|"audio", "bitrate_kbps", "loss_ratio" (0..1 or
null), "jitter_ms" (RFC 3550 6.4.1, or null)}]; empty when another node
holds the source (that node's /metrics has it).

`restreams` are this node's destinations of the forum (restream_api's
status, without URLs); `recording` is the forum's recording on this node
(the running one, else the latest: a failed one keeps its `alert`). An
<alert> is {"kind", "name"?, "detail"?}: kind `source_lost` (name: the
source), `restream_retrying` (name: the destination, detail: its last
error), `recording_failed` (detail: why), `disk_low` (the forum records
and the recordings' disk has under DISK_LOW_FACTOR x the recorder's
minimum free space; the recorder stops at that minimum). `disk` is the
recordings' disk on this node (null without a recorder).

`Authorization: Bearer <token>` of an operator or admin; the forums are
those the token opens with that role (all for `forums = *`). 401
token_missing/token_invalid/token_expired, 403 forbidden when it opens
none. Read from the Store, so a wall on one node shows forums served by
every node. The page polls every STATUS_POLL_S (3 s).
"""

from __future__ import annotations

import asyncio
import shutil
from typing import Any

from aiohttp import web

from rooms.agenda import session_json
from rooms.errors import RoomError
from rooms.models import Forum, Role
from signaling import protocol
from signaling.app_keys import AGENDA, EVENT, HOSTS, MEDIA, ROOMS, TOKENS
from signaling.http_api import bearer_token, json_response
from signaling.recording_api import RECORDER
from streaming.plane_snapshot import PlaneSnapshot

DISK_LOW_FACTOR = 4  # warn at 4x the recorder's minimum free space (1 GiB by default), before it stops


def alerts(sources: list[dict[str, Any]], restreams: list[dict[str, Any]], recording: dict[str, Any] | None,
           disk_low: bool) -> list[dict[str, str]]:
    """What needs an operator's eye in one forum, from its status parts
    (pure: shapes as in this module's docstring)."""
    found = [{"kind": "source_lost", "name": str(s["name"])} for s in sources if s.get("state") == "lost"]
    found += [{"kind": "restream_retrying", "name": str(r["name"]), "detail": str(r.get("last_error") or "")}
              for r in restreams if r.get("state") == "retrying"]
    if recording is not None and recording.get("state") == "failed":
        found.append({"kind": "recording_failed", "detail": str(recording.get("alert") or "")})
    elif recording is not None and recording.get("alert"):
        found.append({"kind": "recording_failed", "detail": str(recording["alert"])})
    if disk_low and recording is not None and recording.get("state") == "recording":
        found.append({"kind": "disk_low"})
    return found


def _disk(app: web.Application) -> dict[str, Any] | None:
    """The recordings' disk: free bytes and whether that is low."""
    recorder = app.get(RECORDER)
    if recorder is None:
        return None
    try:
        recorder.root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(recorder.root).free
    except OSError:
        return {"free_bytes": 0, "low": True}
    return {"free_bytes": free, "low": free < DISK_LOW_FACTOR * recorder.min_free_bytes}


def _recordings(app: web.Application) -> dict[str, dict[str, Any]]:
    """forum id -> its running recording, else its latest."""
    recorder = app.get(RECORDER)
    if recorder is None:
        return {}
    found: dict[str, dict[str, Any]] = {}
    for info in recorder.recordings():  # oldest first: the latest wins
        found[info.forum_id] = info.to_json()
    for forum_id in list(found):
        active = recorder.active(forum_id)
        if active is not None:
            found[forum_id] = active.to_json()
    return found


def _tracks(app: web.Application) -> dict[str, list[dict[str, Any]]]:
    """source id -> its tracks' receive windows on this node's media plane."""
    plane = app.get(MEDIA)
    if plane is None or plane.state != "running":
        return {}
    found: dict[str, list[dict[str, Any]]] = {}
    snapshot: PlaneSnapshot = plane.snapshot()
    for source in snapshot.sources:
        found.setdefault(source.source_id, []).append({
            "kind": source.kind, "bitrate_kbps": round(source.window.bitrate_kbps, 1),
            "loss_ratio": source.window.loss_ratio, "jitter_ms": source.window.jitter_ms})
    return found


async def _forum_status(request: web.Request, forum: Forum, tracks: dict[str, list[dict[str, Any]]],
                        recordings: dict[str, dict[str, Any]], disk: dict[str, Any] | None) -> dict[str, Any]:

    rooms = request.app[ROOMS]
    sources, program, counts = await asyncio.gather(
        rooms.sources(forum.id), rooms.program(forum.id), rooms.viewer_count(forum.id))
    status = request.app[AGENDA].status(forum.id)
    shown = [{**protocol.source_json(s), "tracks": tracks.get(s.id, [])} for s in sources]
    hosts = request.app.get(HOSTS)  # the restreams of the forums this node hosts
    listed = hosts.restreams_json(forum.id, urls=False)["restreams"] if hosts is not None else []
    restreams = [dict(item) for item in listed if isinstance(item, dict)] if isinstance(listed, list) else []
    recording = recordings.get(forum.id)
    return {
        "id": forum.id, "name": forum.name.to_json(), "room": forum.room.to_json(),
        "program": protocol.program_json(program, sources),
        "viewers": protocol.counts_json(forum.id, counts),
        "sources": shown,
        "live": session_json(status.live) if status.live else None,
        "next": session_json(status.next) if status.next else None,
        "restreams": restreams,
        "recording": recording,
        "alerts": alerts(shown, restreams, recording, bool(disk and disk["low"])),
    }


async def status(request: web.Request) -> web.Response:
    grant = request.app[TOKENS].verify(bearer_token(request))
    event = request.app[EVENT]
    forums = [f for f in event.forums if grant.allows(f.id, Role.OPERATOR)]
    if not forums:
        raise RoomError("forbidden", "the status wall needs an operator's or an admin's token")
    tracks = _tracks(request.app)
    disk = _disk(request.app)
    recordings = _recordings(request.app)
    return json_response({
        "now": request.app[AGENDA].now().isoformat(),
        "forums": list(await asyncio.gather(*(_forum_status(request, f, tracks, recordings, disk) for f in forums))),
        "disk": disk,
    })


def setup_status_wall(app: web.Application, page: Any) -> None:
    """`page` is the handler that renders the HTML (signaling/pages.py)."""
    app.router.add_get("/api/status", status)
    app.router.add_get("/status", page)

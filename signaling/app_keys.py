"""The typed service registry of the aiohttp application: one AppKey per
long-lived object, set by build_app or by the cleanup context that owns it.
Handlers read `request.app[ROOMS]`; nothing is a module-level singleton."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from config.settings import Settings
from rooms.agenda import AgendaClock
from rooms.models import Event
from rooms.tokens import TokenService
from signaling.ice_servers import IceServers

if TYPE_CHECKING:  # their modules may import aiohttp pieces; keep this file a leaf
    import socketio

    from rooms.forum_control import ForumControl, ForumNotifier
    from rooms.service import RoomService
    from rooms.store import Store
    from streaming.agenda_scheduler import AgendaScheduler
    from streaming.forum_hosts import ForumHosts
    from streaming.forum_outputs import ProgramOutputs
    from streaming.media_library import MediaLibrary

SETTINGS = web.AppKey("settings", Settings)
EVENT = web.AppKey("event", Event)
TOKENS = web.AppKey("tokens", TokenService)
AGENDA = web.AppKey("agenda", AgendaClock)
ICE_SERVERS = web.AppKey("ice_servers", IceServers)  # STUN/TURN for clients, TURN credentials derived per holder
STORE: web.AppKey["Store"] = web.AppKey("store")
ROOMS: web.AppKey["RoomService"] = web.AppKey("rooms")
MEDIA: web.AppKey[Any] = web.AppKey("media")  # the node's media plane (streaming/)
SIO: web.AppKey["socketio.AsyncServer"] = web.AppKey("sio")
# the forums' side (signaling/hosting.py sets them): every operator command goes
# through CONTROL, the facade (rooms/forum_control.py); HOSTS is this node's registry
CONTROL: web.AppKey["ForumControl"] = web.AppKey("forum_control")
HOSTS: web.AppKey["ForumHosts"] = web.AppKey("forum_hosts")
NOTIFIER: web.AppKey["ForumNotifier"] = web.AppKey("forum_notifier")
LIBRARY: web.AppKey["MediaLibrary"] = web.AppKey("media_library")
OUTPUTS: web.AppKey["ProgramOutputs"] = web.AppKey("program_outputs")
SCHEDULER: web.AppKey["AgendaScheduler"] = web.AppKey("agenda_scheduler")

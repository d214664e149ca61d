"""What logs, errors and answers may show of a string that holds a secret.

Secrets (venue stream keys, SRT passphrases, restream keys, Redis
passwords, the token secret) never reach logs, argv or answers; text that
may carry one (a URL, a command line, a line of ffmpeg's stderr) goes
through these first. Imports nothing from the project.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
# an SRT passphrase, an RTMP stream key (the path after the app), key=/token= parameters
_SECRET_PARTS = re.compile(r"(passphrase=|streamid=|/live2?/|[?&](?:key|token|secret|password)=)[^&\s'\"]+",
                           re.IGNORECASE)
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@]*@", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """`text` with SRT passphrases, RTMP stream keys, key=/token=
    parameters and URL user:password parts replaced by '***'."""
    text = _USERINFO.sub(lambda match: match.group(1) + MASK + "@", text)
    return _SECRET_PARTS.sub(lambda match: match.group(1) + MASK, text)


def redact_url(url: str) -> str:
    """`url` without its password (redis://:pw@host/0 -> redis://:***@host/0)
    and with its secret parameters masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        parts = parts._replace(netloc=f"{user}:{MASK}@{host}")
    text = urlunsplit(parts)
    if not parts.netloc and url.startswith(f"{parts.scheme}://"):
        text = f"{parts.scheme}://{text[len(parts.scheme) + 1:]}"  # unix:///path: urlunsplit drops the //
    return _SECRET_PARTS.sub(lambda match: match.group(1) + MASK, text)

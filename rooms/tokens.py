"""Signed tokens and the grants they carry.

A token is a JWT (HS256) naming a role, the forums it opens (or every
forum), the holder's display name and an expiry. Verification accepts
HS256 only, checks issuer and audience, and turns every failure into a
RoomError a person can act on: token_missing, token_expired, token_invalid.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from rooms import validation
from rooms.errors import RoomError
from rooms.models import Role

logger = logging.getLogger(__name__)

ISSUER = "forumcast"
AUDIENCE = "forumcast"
ALGORITHM = "HS256"
DEFAULT_TTL_SECONDS = 7 * 24 * 3600
ALL_FORUMS = "*"
EDGE_LINK_TTL_SECONDS = 60.0
MAX_TOKEN_LENGTH = 8192  # ours are ~400 bytes; refuse to parse megabytes of junk


@dataclass(frozen=True)
class Grant:
    """What a verified token lets its holder do."""

    role: Role
    forums: frozenset[str] | None  # None: every forum
    name: str
    subject: str  # stable id of the holder (the token's `sub`)
    expires_at: float  # unix seconds
    language: str = ""  # preferred UI / caption language, e.g. "zh"
    edge_link: bool = False
    """A node's pull of the forum's program (`issue_edge_link`): WHEP takes
    no seat for it and does not end it at the token's expiry."""

    def allows(self, forum_id: str, at_least: Role) -> bool:
        return self.role.at_least(at_least) and (self.forums is None or forum_id in self.forums)

    def require(self, forum_id: str, at_least: Role) -> None:
        """Raise RoomError("forbidden") unless this grant covers the forum
        with at least the given role."""
        if self.forums is not None and forum_id not in self.forums:
            granted = ", ".join(sorted(self.forums)) or "none"
            raise RoomError(
                "forbidden",
                f"your token does not open forum {forum_id!r} (it opens: {granted})",
            )
        if not self.role.at_least(at_least):
            raise RoomError(
                "forbidden",
                f"this needs the {at_least.value} role in forum {forum_id!r}; "
                f"your token grants {self.role.value}",
            )


class TokenService:
    """Issues and verifies tokens with one shared secret. `now` is injectable
    so tests can move time."""

    def __init__(self, secret: str, now: Callable[[], float] = time.time) -> None:
        if not secret:
            raise ValueError("TokenService needs a non-empty secret")
        self._secret = secret
        self._now = now

    def issue(
        self,
        role: Role | str,
        forums: Iterable[str] | None,
        name: str,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        subject: str | None = None,
        language: str = "",
        *,
        edge_link: bool = False,
    ) -> str:
        """A signed token. `forums=None` opens every forum. RoomError
        ("invalid") for a role, name or forum list rooms/validation.py
        refuses."""
        # the rules every edge applies, so no token is minted for a holder the server refuses
        role = validation.check_role(role)
        name = validation.check_name(name)
        if not ttl_seconds > 0:
            raise RoomError("invalid", f"ttl_seconds={ttl_seconds}: must be positive")
        checked = validation.check_forums(forums)
        forum_list: list[str] | str = ALL_FORUMS if checked is None else sorted(checked)
        now = self._now()
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject or uuid.uuid4().hex,
            "iat": int(now),
            "exp": int(now + ttl_seconds),
            "jti": uuid.uuid4().hex,
            "role": role.value,
            "forums": forum_list,
            "name": name,
        }
        if language:
            claims["lang"] = language
        if edge_link:
            claims["edge"] = True
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def issue_edge_link(self, forum_id: str, node_id: str, ttl_seconds: float = EDGE_LINK_TTL_SECONDS) -> str:
        """A node's credential for pulling one forum's program from its
        origin over WHEP (streaming/edge_links.py mints one per request):
        the viewer role in `forum_id` only, marked `edge_link`, expiring
        in `ttl_seconds` (60 s: only a request must fit in it, the pull's
        session outlives it). Only holders of the shared secret (the
        nodes) can mint it. RoomError("invalid") for a bad forum id."""
        return self.issue(Role.VIEWER, [forum_id], "Edge node", ttl_seconds=ttl_seconds,
                          subject=f"edge-link:{node_id}", edge_link=True)

    def derive_key(self, purpose: str, length: int = 32) -> bytes:
        """A key for one other `purpose` (e.g. "hls-segment-urls"), derived
        from the token secret with HKDF-SHA256 (RFC 5869; `purpose` is its
        info): every node holding the same secret derives the same key,
        and the key tells nothing about the secret or other purposes."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        hkdf = HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=f"forumcast {purpose}".encode())
        return hkdf.derive(self._secret.encode())

    def verify(self, token: str | None) -> Grant:
        """The grant a token carries, or RoomError (token_missing,
        token_expired, token_invalid)."""
        if token is None or not token.strip():
            raise RoomError("token_missing", "this needs a token: open your invite link again")
        token = token.strip()
        if len(token) > MAX_TOKEN_LENGTH:
            raise RoomError("token_invalid", f"the token is longer than {MAX_TOKEN_LENGTH} characters")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise RoomError("token_invalid", "the token is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg != ALGORITHM:
            raise RoomError(
                "token_invalid", f"the token is signed with {alg!r}; only {ALGORITHM} is accepted"
            )
        try:
            # expiry is checked below against the injectable clock, not PyJWT's
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                issuer=ISSUER,
                options={"verify_exp": False, "verify_iat": False,
                         "require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.InvalidSignatureError:
            raise RoomError(
                "token_invalid", "the token's signature does not match: it was altered or signed elsewhere"
            ) from None
        except jwt.InvalidAudienceError:
            raise RoomError("token_invalid", "the token was issued for another service") from None
        except jwt.InvalidIssuerError:
            raise RoomError("token_invalid", "the token was issued by someone else") from None
        except jwt.MissingRequiredClaimError as exc:
            raise RoomError("token_invalid", f"the token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            raise RoomError("token_invalid", f"the token cannot be read ({exc})") from None
        return self._grant(claims)

    def _grant(self, claims: dict[str, Any]) -> Grant:
        exp = claims["exp"]
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise RoomError("token_invalid", "the token's expiry is not a number")
        if self._now() >= exp:
            raise RoomError(
                "token_expired",
                "the token has expired: ask the organizers for a new invite link",
            )
        raw_role = claims.get("role")
        try:
            if not isinstance(raw_role, str):  # absent, or not a string: no role's value
                raise ValueError(raw_role)
            role = Role(raw_role)
        except ValueError:
            raise RoomError("token_invalid", f"the token names an unknown role {raw_role!r}") from None
        raw_forums = claims.get("forums")
        forums: frozenset[str] | None
        if raw_forums == ALL_FORUMS:
            forums = None
        elif isinstance(raw_forums, list) and raw_forums and all(isinstance(f, str) for f in raw_forums):
            forums = frozenset(raw_forums)
        else:
            raise RoomError("token_invalid", "the token does not say which forums it opens")
        name = claims.get("name")
        if not isinstance(name, str) or not name:
            raise RoomError("token_invalid", "the token carries no holder name")
        language = claims.get("lang", "")
        return Grant(
            role=role,
            forums=forums,
            name=name,
            subject=str(claims["sub"]),
            expires_at=float(exp),
            language=language if isinstance(language, str) else "",
            edge_link=claims.get("edge") is True,
        )

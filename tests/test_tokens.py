from __future__ import annotations

import base64
import json

import jwt
import pytest

from rooms.errors import RoomError
from rooms.models import Role
from rooms.tokens import AUDIENCE, ISSUER, Grant, TokenService

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tokens(clock: Clock) -> TokenService:
    return TokenService(SECRET, now=clock)


def refused(tokens: TokenService, token: str | None) -> RoomError:
    with pytest.raises(RoomError) as caught:
        tokens.verify(token)
    return caught.value


def b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_issue_and_verify_round_trip(tokens: TokenService, clock: Clock) -> None:
    token = tokens.issue(Role.SPEAKER, ["ai", "main"], "Chen Jing", ttl_seconds=3600, subject="s-1", language="zh")
    grant = tokens.verify(token)
    assert grant == Grant(Role.SPEAKER, frozenset({"ai", "main"}), "Chen Jing", "s-1", clock.now + 3600, "zh")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience=AUDIENCE, options={"verify_exp": False, "verify_iat": False})
    assert claims["iss"] == ISSUER and claims["jti"] and claims["iat"] == int(clock.now)


def test_every_forum_and_unique_ids(tokens: TokenService) -> None:
    first = tokens.issue("admin", None, "Root")
    second = tokens.issue("admin", None, "Root")
    assert tokens.verify(first).forums is None
    assert tokens.verify(first).allows("anything", Role.ADMIN)
    assert tokens.verify(first).subject != tokens.verify(second).subject


def test_missing_token(tokens: TokenService) -> None:
    for value in (None, "", "   "):
        error = refused(tokens, value)
        assert error.code == "token_missing" and error.http_status == 401
        assert "needs a token" in error.message


def test_expired_token(tokens: TokenService, clock: Clock) -> None:
    token = tokens.issue(Role.VIEWER, ["ai"], "Guest", ttl_seconds=60)
    assert tokens.verify(token).role is Role.VIEWER
    clock.now += 60
    error = refused(tokens, token)
    assert error.code == "token_expired"
    assert "expired" in error.message


def test_forged_signature(tokens: TokenService) -> None:
    forged = TokenService("another-secret-that-is-long-enough-too!!").issue(Role.ADMIN, None, "Mallory")
    error = refused(tokens, forged)
    assert error.code == "token_invalid" and "signature does not match" in error.message


def test_tampered_payload(tokens: TokenService) -> None:
    header, _, signature = tokens.issue(Role.VIEWER, ["ai"], "Guest").split(".")
    payload = b64({"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "iat": 1, "exp": 2_000_000_000,
                   "role": "admin", "forums": "*", "name": "Guest"})
    error = refused(tokens, f"{header}.{payload}.{signature}")
    assert error.code == "token_invalid" and "signature" in error.message


def test_alg_none_is_refused(tokens: TokenService) -> None:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "iat": 1, "exp": 2_000_000_000,
              "role": "admin", "forums": "*", "name": "Mallory"}
    unsigned = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."
    error = refused(tokens, unsigned)
    assert error.code == "token_invalid"
    assert "'none'" in error.message and "HS256" in error.message


def test_other_algorithm_is_refused(tokens: TokenService) -> None:
    token = jwt.encode({"sub": "x"}, SECRET * 2, algorithm="HS512")
    error = refused(tokens, token)
    assert error.code == "token_invalid" and "'HS512'" in error.message


def test_garbage(tokens: TokenService) -> None:
    assert "longer than" in refused(tokens, "x" * 100_000).message
    for garbage in ("not-a-token", "a.b.c", "🙂"):
        error = refused(tokens, garbage)
        assert error.code == "token_invalid", garbage
        assert "JWT" in error.message or "cannot be read" in error.message


def test_wrong_audience_and_issuer(tokens: TokenService, clock: Clock) -> None:
    base = {"sub": "x", "iat": int(clock.now), "exp": int(clock.now) + 60, "role": "viewer",
            "forums": ["ai"], "name": "G"}
    wrong_aud = jwt.encode({**base, "iss": ISSUER, "aud": "someone-else"}, SECRET, algorithm="HS256")
    assert "another service" in refused(tokens, wrong_aud).message
    wrong_iss = jwt.encode({**base, "iss": "evil", "aud": AUDIENCE}, SECRET, algorithm="HS256")
    assert "someone else" in refused(tokens, wrong_iss).message
    no_exp = jwt.encode({k: v for k, v in {**base, "iss": ISSUER, "aud": AUDIENCE}.items() if k != "exp"},
                        SECRET, algorithm="HS256")
    assert "'exp'" in refused(tokens, no_exp).message


def test_unknown_role_and_bad_forums(tokens: TokenService, clock: Clock) -> None:
    base = {"iss": ISSUER, "aud": AUDIENCE, "sub": "x", "iat": int(clock.now),
            "exp": int(clock.now) + 60, "name": "G"}
    bad_role = jwt.encode({**base, "role": "emperor", "forums": ["ai"]}, SECRET, algorithm="HS256")
    error = refused(tokens, bad_role)
    assert error.code == "token_invalid" and "unknown role 'emperor'" in error.message
    bad_forums = jwt.encode({**base, "role": "viewer", "forums": 7}, SECRET, algorithm="HS256")
    assert "which forums" in refused(tokens, bad_forums).message


def test_grant_require_names_roles_and_forums(tokens: TokenService) -> None:
    grant = tokens.verify(tokens.issue(Role.SPEAKER, ["ai"], "Chen"))
    assert grant.allows("ai", Role.VIEWER) and grant.allows("ai", Role.SPEAKER)
    assert not grant.allows("ai", Role.OPERATOR)
    assert not grant.allows("main", Role.VIEWER)
    grant.require("ai", Role.SPEAKER)  # no error
    with pytest.raises(RoomError) as caught:
        grant.require("ai", Role.OPERATOR)
    assert caught.value.code == "forbidden" and caught.value.http_status == 403
    assert "needs the operator role" in caught.value.message and "grants speaker" in caught.value.message
    with pytest.raises(RoomError) as caught:
        grant.require("main", Role.VIEWER)
    assert caught.value.code == "forbidden"
    assert "does not open forum 'main'" in caught.value.message and "ai" in caught.value.message


def test_issue_refuses_bad_requests(tokens: TokenService) -> None:
    with pytest.raises(RoomError, match="unknown role 'boss'"):
        tokens.issue("boss", ["ai"], "X")
    with pytest.raises(RoomError, match="holder's name"):
        tokens.issue(Role.VIEWER, ["ai"], "  ")
    with pytest.raises(RoomError, match="at least one forum"):
        tokens.issue(Role.VIEWER, [], "X")
    with pytest.raises(RoomError, match="must be positive"):
        tokens.issue(Role.VIEWER, ["ai"], "X", ttl_seconds=0)


def test_an_edge_link_grant_opens_one_forum_to_a_node_and_is_short_lived(tokens: TokenService, clock: Clock) -> None:
    grant = tokens.verify(tokens.issue_edge_link("main", "node-b@1234abcd"))
    assert grant.edge_link and grant.role is Role.VIEWER and grant.forums == frozenset({"main"})
    assert grant.subject == "edge-link:node-b@1234abcd"
    assert grant.expires_at == clock.now + 60
    assert not grant.allows("other", Role.VIEWER)
    assert not tokens.verify(tokens.issue(Role.ADMIN, None, "Admin")).edge_link  # only issue_edge_link marks it
    old = tokens.issue_edge_link("main", "b")
    clock.now += 61
    assert refused(tokens, old).code == "token_expired"  # a request must fit in its minute
    assert tokens.verify(tokens.issue_edge_link("main", "b")).edge_link  # the pull mints one per request


def test_an_edge_claim_needs_the_shared_secret(tokens: TokenService) -> None:
    """Only a node (holder of the secret) can mint an edge link: a claim
    added by anyone else breaks the signature."""
    forged = TokenService("another-secret-that-is-long-enough-too").issue_edge_link("main", "x")
    assert refused(tokens, forged).code == "token_invalid"

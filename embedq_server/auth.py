"""Two token scopes: clients submit and read their own tasks; workers claim and complete.

A client token never opens a worker endpoint (it would let a client read other people's
texts), and the other way round. Tokens are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from aiohttp import web

from .errors import ApiError


def owner_of(token: str) -> str:
    """A stable, non-reversible name for the client behind a token."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()[:24]


class TokenSet:
    """The tokens of one scope. An *open* set (no tokens, loopback only: the server refuses
    to listen elsewhere without tokens) lets any caller in, for a local trial."""

    def __init__(self, tokens: Iterable[str], *, open_access: bool = False) -> None:
        self._tokens = [t.encode() for t in tokens if t]
        self.open_access = open_access and not self._tokens

    def __bool__(self) -> bool:
        return bool(self._tokens)

    def matches(self, presented: str) -> bool:
        """Constant time in the presented token; every configured token is compared."""
        # aiohttp hands undecodable header bytes over as surrogates: compare them as bytes.
        candidate = presented.encode("utf-8", "surrogateescape")
        found = False
        for token in self._tokens:
            found |= hmac.compare_digest(candidate, token)
        return found


def presented_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def require(request: web.Request, tokens: TokenSet, scope: str) -> str:
    """Return the presented token if it belongs to `scope`'s set, else answer 401."""
    token = presented_token(request)
    if tokens.open_access:
        return token or "anonymous"
    if token is None:
        raise ApiError(
            401,
            "missing bearer token: send 'Authorization: Bearer <token>'",
            code="missing_token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not tokens.matches(token):
        raise ApiError(
            401,
            f"invalid {scope} token",
            code="invalid_token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return token

"""Bearer tokens from the settings, each with a name (recorded as "who" in the audit trail) and
scopes: ``ci`` (markers and samples), ``operator`` (overrides), ``read``. Every valid token may read.

A presented token is compared with every configured token, in constant time (SHA-256 digests of
both sides through ``hmac.compare_digest``, so neither the content nor the length leaks), and no
early exit. Tokens are never logged or echoed. With no tokens configured, auth is off and every
request acts as ``anonymous`` with every scope (for local use only).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from guardrail.adapters.http.errors import Forbidden, Unauthorized
from guardrail.config import TokenConfig

Scope = Literal["ci", "operator", "read"]
ALL_SCOPES: frozenset[str] = frozenset({"ci", "operator", "read"})
REALM = 'Bearer realm="guardrail"'


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    scopes: frozenset[str]


ANONYMOUS = Principal("anonymous", ALL_SCOPES)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class Authenticator:
    def __init__(self, tokens: Sequence[TokenConfig]) -> None:
        self._tokens = [(_digest(t.token.get_secret_value()), t.name, frozenset(t.scopes)) for t in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal behind an ``Authorization`` header; :class:`Unauthorized` otherwise."""
        if not self.enabled:
            return ANONYMOUS
        if not authorization:
            raise Unauthorized(
                "missing bearer token: send the header Authorization: Bearer <token>",
                headers={"WWW-Authenticate": REALM},
            )
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized(
                "the Authorization header must be: Bearer <token>",
                headers={"WWW-Authenticate": f'{REALM}, error="invalid_request"'},
            )
        presented = _digest(token)
        found: Principal | None = None
        for digest, name, scopes in self._tokens:  # no early exit: the time does not depend on which
            if hmac.compare_digest(presented, digest) and found is None:
                found = Principal(name, scopes)
        if found is None:
            raise Unauthorized(
                "invalid bearer token", headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'}
            )
        return found

    @staticmethod
    def authorize(principal: Principal, scope: Scope) -> None:
        """``read`` is granted to every valid token; ``ci`` and ``operator`` need that scope."""
        if scope == "read" or scope in principal.scopes:
            return
        have = ", ".join(sorted(principal.scopes)) or "none"
        raise Forbidden(
            f"this needs a token with the {scope!r} scope; token {principal.name!r} has: {have}",
            headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{scope}"'},
        )

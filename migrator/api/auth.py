"""Bearer-token authentication, compared in constant time (``hmac.compare_digest``)."""

from __future__ import annotations

import hmac
import logging

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from migrator.errors import MigratorError

log = logging.getLogger(__name__)
bearer = HTTPBearer(auto_error=False, description="The token of `api.token` in the config.")


class Unauthorized(MigratorError):
    code = "unauthorized"


def token_matches(presented: str, accepted: list[str]) -> bool:
    """True if ``presented`` equals one of ``accepted``; every candidate is compared (constant time each)."""
    given = presented.encode("utf-8", "surrogatepass")
    ok = False
    for token in accepted:
        ok |= hmac.compare_digest(given, token.encode("utf-8", "surrogatepass"))
    return ok


def accepted_tokens(settings) -> list[str]:
    return [t for t in [settings.api.token, *settings.api.previous_tokens] if t]


def require_token(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
    """The dependency every protected route has: 401 unless the bearer token is right."""
    accepted = accepted_tokens(request.app.state.settings)
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing bearer token", "send the header `Authorization: Bearer <api.token>`")
    if not accepted or not token_matches(credentials.credentials, accepted):
        client = request.client.host if request.client else "?"
        log.warning("api: wrong bearer token from %s for %s %s", client, request.method, request.url.path)
        raise Unauthorized("wrong bearer token", "use the token of api.token in the migrator config")
    return "api"

"""`Authorization: Bearer <token>` for agent runtimes and scripts, against ApiToken's SHA-256 digests."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication
from rest_framework.request import Request

from .models import ApiToken
from .selectors import api_token_get_active
from .services import api_token_mark_used

KEYWORD = "bearer"


def authenticate_token(raw_token: str) -> tuple[Any, ApiToken]:
    """(user, token) for an active raw token, recording its use; AuthenticationFailed otherwise.

    Synchronous (it queries the database): async callers run it in a worker thread.
    """
    token = api_token_get_active(raw_token=raw_token)
    if token is None:
        raise exceptions.AuthenticationFailed("Invalid or revoked token.", code="invalid_token")
    api_token_mark_used(token=token)
    return token.user, token


class BearerTokenAuthentication(BaseAuthentication):
    """DRF authentication by API token; a request without a Bearer header is left to the others."""

    def authenticate(self, request: Request) -> tuple[Any, ApiToken] | None:
        header = request.headers.get("Authorization", "")
        parts = header.split()
        if not parts or parts[0].lower() != KEYWORD:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed(
                "Invalid Authorization header: use `Bearer <token>`.", code="invalid_token"
            )
        return authenticate_token(parts[1])

    def authenticate_header(self, request: Request) -> str:
        # Makes DRF answer 401 (not 403) to a request that is not authenticated.
        return 'Bearer realm="api"'


class BearerTokenScheme(OpenApiAuthenticationExtension):
    """The OpenAPI security scheme of BearerTokenAuthentication."""

    target_class = BearerTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "An API token: `Bearer ebt_...`"}

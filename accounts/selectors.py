"""Reads of the accounts app."""

from __future__ import annotations

from .models import ApiToken, hash_token

# Longer than any token ApiToken.generate() makes; hashing megabytes of header is pointless.
MAX_RAW_TOKEN_LENGTH = 256


def api_token_get_active(*, raw_token: str) -> ApiToken | None:
    """The active token (not revoked, its user active) whose digest matches `raw_token`, user loaded."""
    if not raw_token or len(raw_token) > MAX_RAW_TOKEN_LENGTH:
        return None
    return ApiToken.objects.active().select_related("user").filter(key_hash=hash_token(raw_token)).first()

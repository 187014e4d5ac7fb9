"""Client API keys: how they are made, hashed and checked against the snapshot."""

import hashlib
import secrets
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from routing.errors import AuthenticationFailed
from routing.models import ApiKey

KEY_PREFIX = "cv-"
VISIBLE_CHARS = 11  # "cv-" and the first 8 characters of the secret part


def hash_key(raw):
    """Return the stored hash of a raw key (SHA-256: keys are 256-bit random, so no slow hash is needed)."""
    return hashlib.sha256(raw.encode()).hexdigest()


def assign_new_secret(key):
    """Give an unsaved ApiKey a fresh secret (its prefix and hash); return the raw key, which is never stored."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key.prefix = raw[:VISIBLE_CHARS]
    key.key_hash = hash_key(raw)
    return raw


def api_key_create(*, name, models=(), expires_days=None, is_admin=False):
    """Create an API key; return (ApiKey, raw key)."""
    key = ApiKey(
        name=name,
        is_admin=is_admin,
        expires_at=timezone.now() + timedelta(days=expires_days) if expires_days else None,
    )
    raw = assign_new_secret(key)
    with transaction.atomic():
        key.save()
        if models:
            key.allowed_models.set(models)
    return key, raw


def bearer_token(header):
    """Return the token of an `Authorization: Bearer <token>` header, or None."""
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(header, snapshot, now):
    """Return the KeyConfig for an Authorization header; raise AuthenticationFailed otherwise."""
    token = bearer_token(header)
    if token is None:
        raise AuthenticationFailed("Missing API key: send 'Authorization: Bearer <key>'.", code="missing_api_key")
    key = snapshot.keys_by_hash.get(hash_key(token))
    if key is None:
        raise AuthenticationFailed("Invalid API key.")
    if key.revoked:
        raise AuthenticationFailed("This API key has been revoked.", code="api_key_revoked")
    if key.expires_at is not None and key.expires_at <= now:
        raise AuthenticationFailed("This API key has expired.", code="api_key_expired")
    return key

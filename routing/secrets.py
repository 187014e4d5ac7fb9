"""Encryption of upstream API keys at rest, and `os.environ/NAME` key references.

Keys are Fernet tokens under `CHATVAULT_ENCRYPTION_KEYS`: the first key encrypts, every key decrypts, so keys rotate
by putting a new one first and running `manage.py rotate_upstream_secrets`.
"""

import base64
import functools
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

ENV_PREFIX = "os.environ/"
# A litellm_params name with one of these in it holds a credential.
SECRET_PARAM_WORDS = ("key", "secret", "token", "credentials", "password")


@functools.cache
def _fernet():
    """Return the MultiFernet built from the configured keys (a SECRET_KEY-derived one in DEBUG without keys)."""
    keys = list(settings.CHATVAULT_ENCRYPTION_KEYS)
    if not keys:
        # Only reachable in DEBUG (settings refuse to start otherwise): a stable dev key so `make run` just works.
        keys = [base64.urlsafe_b64encode(hashlib.sha256(settings.SECRET_KEY.encode()).digest()).decode()]
    try:
        return MultiFernet([Fernet(k) for k in keys])
    except ValueError as exc:
        raise ImproperlyConfigured(f"CHATVAULT_ENCRYPTION_KEYS holds an invalid Fernet key: {exc}") from None


def encrypt(value):
    """Return the ciphertext of a secret under the first encryption key."""
    return _fernet().encrypt(value.encode()).decode()


def decrypt(token):
    """Return the plaintext of a stored secret; raise ImproperlyConfigured if no configured key opens it."""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise ImproperlyConfigured(
            "An upstream API key cannot be decrypted with CHATVAULT_ENCRYPTION_KEYS (was a key removed?)."
        ) from None


def rotate(token):
    """Return the secret re-encrypted under the first key."""
    return _fernet().rotate(token.encode()).decode()


def env_reference_name(value):
    """Return NAME when value is an `os.environ/NAME` reference, else None."""
    if isinstance(value, str) and value.startswith(ENV_PREFIX):
        return value[len(ENV_PREFIX) :].strip() or None
    return None


def env_reference(name):
    """Return the `os.environ/NAME` form of an environment variable name."""
    return f"{ENV_PREFIX}{name}"


def resolve_env(name):
    """Return the value of the environment variable NAME in the gateway's environment, or None."""
    return settings.CHATVAULT_UPSTREAM_ENV.get(name) or None


def resolve_references(value):
    """Return value with every `os.environ/NAME` string in it (inside lists and mappings too) read from the
    environment; a reference to an unset variable becomes None (and is left out of a mapping)."""
    if isinstance(value, str):
        name = env_reference_name(value)
        return resolve_env(name) if name else value
    if isinstance(value, dict):
        resolved = {k: resolve_references(v) for k, v in value.items()}
        return {k: v for k, v in resolved.items() if v is not None}
    if isinstance(value, list):
        return [resolve_references(v) for v in value]
    return value


def is_secret_param(name):
    """Return whether a litellm_params name holds a credential (stored encrypted, masked, exported only as a
    reference)."""
    lowered = name.lower()
    return any(word in lowered for word in SECRET_PARAM_WORDS)

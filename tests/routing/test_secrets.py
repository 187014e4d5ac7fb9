"""Tests for encryption at rest and key rotation of upstream secrets."""

import io

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command

from routing import secrets
from routing.models import Provider


@pytest.fixture
def keys(settings):
    """Set the encryption keys for one test and return a setter that swaps them."""

    def use(*values):
        settings.CHATVAULT_ENCRYPTION_KEYS = list(values)
        secrets._fernet.cache_clear()

    yield use
    secrets._fernet.cache_clear()


def test_literal_keys_are_encrypted_and_env_references_kept(keys, settings):
    keys(Fernet.generate_key().decode())
    provider = Provider(name="p", kind="openai")
    provider.set_api_key("sk-live-abcd1234")
    assert "sk-live" not in provider.api_key_ciphertext
    assert provider.api_key_last4 == "1234"
    assert provider.api_key_display() == "…1234"
    assert provider.resolve_api_key() == "sk-live-abcd1234"

    settings.CHATVAULT_UPSTREAM_ENV = {"OPENAI_KEY": "sk-from-env"}
    provider.set_api_key("os.environ/OPENAI_KEY")
    assert provider.api_key_ciphertext == "" and provider.api_key_env == "OPENAI_KEY"
    assert provider.api_key_reference() == "os.environ/OPENAI_KEY"
    assert provider.resolve_api_key() == "sk-from-env"


def test_keys_rotate_first_encrypts_all_decrypt(keys):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    keys(old)
    token = secrets.encrypt("sk-secret")
    keys(new, old)
    assert secrets.decrypt(token) == "sk-secret"
    rotated = secrets.rotate(token)
    keys(new)
    assert secrets.decrypt(rotated) == "sk-secret"
    with pytest.raises(ImproperlyConfigured, match="cannot be decrypted"):
        secrets.decrypt(token)


def test_an_invalid_key_is_a_configuration_error(keys):
    keys("not-a-fernet-key")
    with pytest.raises(ImproperlyConfigured, match="invalid Fernet key"):
        secrets.encrypt("x")


@pytest.mark.django_db
def test_rotate_command_reencrypts_stored_keys(keys):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    keys(old)
    provider = Provider(name="p", kind="openai")
    provider.set_api_key("sk-rotate-me")
    provider.save()
    keys(new, old)
    call_command("rotate_upstream_secrets", stdout=io.StringIO())
    keys(new)
    provider.refresh_from_db()
    assert provider.resolve_api_key() == "sk-rotate-me"

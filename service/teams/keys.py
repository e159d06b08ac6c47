"""API key format: ``sa_<key id>_<secret>``; the secret is kept only as an HMAC-SHA256."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

PREFIX = "sa"
# What an unknown key id's secret is compared with: a digest as long as a real one, which
# no secret produces but that costs the same to check.
DUMMY_HASH = hashlib.sha256(b"shiftaudit: no key has this id").hexdigest()


@dataclass(frozen=True)
class IssuedKey:
    """A freshly made key: `plaintext` is shown once and never stored."""

    key_id: str
    plaintext: str
    secret_hash: str


def issue(pepper: str) -> IssuedKey:
    """A new random key (16 hex id, 43-character secret)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return IssuedKey(
        key_id=key_id, plaintext=f"{PREFIX}_{key_id}_{secret}", secret_hash=digest(secret, pepper)
    )


def digest(secret: str, pepper: str) -> str:
    return hmac.new(pepper.encode(), secret.encode(), hashlib.sha256).hexdigest()


def parse(plaintext: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, else None."""
    prefix, _, rest = plaintext.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != PREFIX or len(key_id) != 16 or not secret:
        return None
    return key_id, secret


def matches(secret: str, secret_hash: str, pepper: str) -> bool:
    return hmac.compare_digest(digest(secret, pepper), secret_hash)

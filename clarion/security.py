"""API keys (random, shown once, stored as SHA-256) and provider secrets (Fernet at rest).

Keys carry 128 bits of randomness, so an unsalted SHA-256 is enough to make a stolen database
useless for calling the API while keeping the lookup a single indexed equality; a slow password
hash would cost milliseconds on every request for no gain. See docs/decisions/0004-api-keys.md.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_rest_key() -> str:
    # Batch's REST keys: 32 lower-case hex characters (spec §1.3).
    return secrets.token_hex(16)


def new_live_key() -> str:
    # Batch's Live keys: upper-case hex; 32 characters seen.
    return secrets.token_hex(16).upper()


def new_dev_key() -> str:
    # Batch's Dev keys: "DEV" + 27 upper-case hex, 30 in all (its Swift sample checks the length).
    return "DEV" + secrets.token_hex(14).upper()[:27]


class SecretBox:
    """Encrypts provider credentials (APNs .p8, FCM service account, VAPID private key)."""

    def __init__(self, key: str) -> None:
        self._fernet = Fernet(key.encode())

    @classmethod
    def from_settings(cls, secret_key: str, var_dir: Path) -> SecretBox:
        if secret_key:
            return cls(secret_key)
        # Embedded default: a key generated once into var/, readable by its owner only.
        path = var_dir / "secret.key"
        if not path.exists():
            var_dir.mkdir(parents=True, exist_ok=True)
            path.write_bytes(Fernet.generate_key())
            path.chmod(0o600)
        return cls(path.read_text().strip())

    def encrypt(self, plaintext: bytes) -> str:
        return self._fernet.encrypt(plaintext).decode()

    def decrypt(self, token: str) -> bytes:
        try:
            return self._fernet.decrypt(token.encode())
        except InvalidToken as exc:
            raise ValueError(
                "credentials cannot be decrypted with this CLARION_SECRET_KEY"
            ) from exc

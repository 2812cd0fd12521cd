"""Private swarms: a shared secret (``swarmnode keygen``) that every member holds.

With a swarm key, a peer

- encrypts the records it stores (AES-GCM, the DHT key's id and the subkey as associated
  data), so peers without the key can neither read them nor forge ones that members accept;
- stores and returns only records encrypted under the key (its DHT validator), so outsiders
  cannot announce themselves into the swarm and nobody routes to them;
- proves on every call that it holds the key: a token bound to its own authenticated peer
  id (an HMAC of the id), which the node checks against the connection's peer id.

A key file holds one key per line (64 hex digits; ``#`` comments). The first key writes and
proves; every key in the file is accepted. To rotate: add the new key as a second line on
every member and restart them; then make it the first line everywhere and restart; then
remove the old line (docs/security.md).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from swarmnode.errors import ConfigError

KEY_BYTES = 32
KID_BYTES = 4  # which key of the file encrypted a record: rotation needs several at once
NONCE_BYTES = 12


def _derive(key: bytes, purpose: bytes) -> bytes:
    return hmac.new(key, b"swarmbee/" + purpose, hashlib.sha256).digest()


@dataclass(frozen=True)
class SwarmKey:
    """The keys of one private swarm: ``keys[0]`` writes and proves, all are accepted."""

    keys: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.keys or any(len(k) != KEY_BYTES for k in self.keys):
            raise ConfigError(f"a swarm key is {KEY_BYTES} bytes (64 hex digits); the file has none or a bad one")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> SwarmKey:
        try:
            lines = Path(path).expanduser().read_text().splitlines()
        except OSError as e:
            raise ConfigError(f"cannot read the swarm key file {path}: {e}") from e
        keys = []
        for number, line in enumerate(lines, 1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                keys.append(bytes.fromhex(text))
            except ValueError:
                raise ConfigError(f"{path}:{number}: a swarm key is 64 hex digits") from None
        return cls(tuple(keys))

    @staticmethod
    def _kid(key: bytes) -> bytes:
        return _derive(key, b"kid")[:KID_BYTES]

    def _by_kid(self, kid: bytes) -> bytes | None:
        return next((k for k in self.keys if hmac.compare_digest(self._kid(k), kid)), None)

    # ---- records -------------------------------------------------------------------------------
    def encrypt(self, plaintext: bytes, associated: bytes) -> bytes:
        key = self.keys[0]
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = AESGCM(_derive(key, b"records")).encrypt(nonce, plaintext, associated)
        return self._kid(key) + nonce + sealed

    def decrypt(self, blob: bytes, associated: bytes) -> bytes | None:
        """The plaintext, or None if no key of ours encrypted ``blob`` (or it was altered)."""
        key = self._by_kid(blob[:KID_BYTES])
        if key is None or len(blob) < KID_BYTES + NONCE_BYTES + 16:
            return None
        nonce, sealed = blob[KID_BYTES : KID_BYTES + NONCE_BYTES], blob[KID_BYTES + NONCE_BYTES :]
        try:
            return AESGCM(_derive(key, b"records")).decrypt(nonce, sealed, associated)
        except InvalidTag:
            return None

    # ---- calls ---------------------------------------------------------------------------------
    def token(self, peer_id: str) -> bytes:
        """What ``peer_id`` sends to prove it holds the key (useless to any other peer id)."""
        key = self.keys[0]
        return self._kid(key) + hmac.new(_derive(key, b"calls"), peer_id.encode(), hashlib.sha256).digest()[:16]

    def admits(self, peer_id: str, token: object) -> bool:
        """Whether ``token`` proves that the (authenticated) ``peer_id`` holds one of our keys."""
        if not isinstance(token, bytes) or len(token) != KID_BYTES + 16:
            return False
        key = self._by_kid(token[:KID_BYTES])
        if key is None:
            return False
        expected = hmac.new(_derive(key, b"calls"), peer_id.encode(), hashlib.sha256).digest()[:16]
        return hmac.compare_digest(expected, token[KID_BYTES:])


def generate_key_file(path: str | os.PathLike) -> Path:
    """Write a new random swarm key to ``path`` (mode 600); never overwrites a file."""
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"{target} exists: a swarm key is never overwritten (rotate by adding a line)") from None
    with os.fdopen(fd, "w") as f:
        f.write("# SwarmBee swarm key: give it only to the members of this swarm\n")
        f.write(secrets.token_hex(KEY_BYTES) + "\n")
    return target


def load_swarm_key(path: str | None) -> SwarmKey | None:
    return SwarmKey.from_file(path) if path else None

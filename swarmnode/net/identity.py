"""A peer's identity (its libp2p key) and the signed envelope every DHT record travels in.

A peer id is the hash of an RSA public key (libp2p's rule, as hivemind implements it). The
key file is the one p2pd uses, so the peer that signs a record is the peer others connect
to. A record is stored as ``{"signed": bytes, "pk": bytes, "sig": bytes}`` where ``signed``
is the msgpack of the record and the signature covers the DHT key, the subkey and those
bytes, so a signed record cannot be moved under another key or subkey. Readers recover the
signer's peer id from ``pk`` and decide whether that signer may say what the record says
(a node about itself, a member about a verdict it reports, a client about its observations).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import base58
import msgpack
import multihash
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.proto import crypto_pb2
from hivemind.utils.serializer import MSGPackSerializer

from swarmnode.net.swarmkey import SwarmKey

MAX_ENVELOPE_BYTES = 64 * 1024  # a record, its key and its signature: far below this
_PADDING = padding.PKCS1v15()
_HASH = hashes.SHA256()


def peer_id_of(public_der: bytes) -> str:
    """The base58 peer id of an RSA public key (DER SubjectPublicKeyInfo), as libp2p derives it."""
    encoded = crypto_pb2.PublicKey(key_type=crypto_pb2.RSA, data=public_der).SerializeToString()
    digest = multihash.encode(hashlib.sha256(encoded).digest(), multihash.coerce_code("sha2-256"))
    return base58.b58encode(digest).decode()


class Identity:
    """A peer's private key, read from a hivemind/p2pd identity file."""

    def __init__(self, private_key: rsa.RSAPrivateKey, swarm_key: SwarmKey | None = None):
        self._key = private_key
        self.swarm_key = swarm_key  # a private swarm's key: records are encrypted, calls carry a token
        self.public_der = private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.peer_id = peer_id_of(self.public_der)

    @classmethod
    def from_file(cls, path: str | Path, swarm_key: SwarmKey | None = None) -> Identity:
        key_data = crypto_pb2.PrivateKey.FromString(Path(path).read_bytes()).data
        key = serialization.load_der_private_key(key_data, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path}: expected an RSA identity")
        return cls(key, swarm_key)

    def call_token(self) -> bytes | None:
        """What this peer shows a node of a private swarm on every call (None: a public swarm)."""
        return self.swarm_key.token(self.peer_id) if self.swarm_key is not None else None

    def authenticate(self, meta: dict) -> dict:
        """``meta`` with this peer's call token under ``"auth"`` in a private swarm (unchanged in a
        public one): what every request to a node carries."""
        token = self.call_token()
        if token is not None:
            meta["auth"] = token
        return meta

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data, _PADDING, _HASH)

    def seal(self, key: str, subkey: str, value: Any) -> dict:
        """Wrap ``value`` in a signed envelope bound to (key, subkey); in a private swarm the
        record is encrypted under the swarm key first."""
        key_bytes = key_id(key)
        signed = msgpack.packb(value, use_bin_type=True)
        envelope: dict[str, Any] = {"pk": self.public_der}
        if self.swarm_key is not None:
            signed = self.swarm_key.encrypt(signed, _associated(key_bytes, subkey))
            envelope["enc"] = True
        envelope.update(signed=signed, sig=self.sign(_payload(key_bytes, subkey, signed)))
        return envelope


def key_id(key: str) -> bytes:
    """The DHT's id of ``key`` (what a DHT node storing the record sees instead of the key)."""
    return DHTID.generate(source=key).to_bytes()


def _associated(key_bytes: bytes, subkey: str) -> bytes:
    return key_bytes + subkey.encode()


def _payload(key_bytes: bytes, subkey: str, signed: bytes) -> bytes:
    return msgpack.packb([key_bytes, subkey, signed], use_bin_type=True)


class _Verified:
    """Verification results by signature (a record re-read every refresh is checked once)."""

    def __init__(self, size: int = 8192):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, sig: bytes) -> tuple[str, bytes] | None:
        with self._lock:
            found = self._items.get(sig)
            if found is not None:
                self._items.move_to_end(sig)
            return found

    def put(self, sig: bytes, value: tuple[str, bytes]) -> None:
        with self._lock:
            self._items[sig] = value
            if len(self._items) > self.size:
                self._items.popitem(last=False)


_verified = _Verified()


def open_envelope(key: str, subkey: str, envelope: Any, swarm_key: SwarmKey | None = None) -> tuple[str, Any] | None:
    """(signer's peer id, the record) if ``envelope`` is well formed and its signature over
    (key, subkey, record) is valid — and, with ``swarm_key``, the record was encrypted under
    it (without one, encrypted records are ignored); ``None`` otherwise (never raises)."""
    return _open(key_id(key), subkey, envelope, swarm_key)


def _open(key_bytes: bytes, subkey: str, envelope: Any, swarm_key: SwarmKey | None) -> tuple[str, Any] | None:
    if not isinstance(envelope, dict) or not isinstance(subkey, str):
        return None
    signed, public_der, sig = envelope.get("signed"), envelope.get("pk"), envelope.get("sig")
    if not all(isinstance(x, bytes) for x in (signed, public_der, sig)):
        return None
    if len(signed) + len(public_der) + len(sig) > MAX_ENVELOPE_BYTES:
        return None
    if bool(envelope.get("enc")) != (swarm_key is not None):
        return None  # a private swarm's record outside it, or a public record inside one: not worth a verify
    payload = _payload(key_bytes, subkey, signed)
    cached = _verified.get(sig)
    if cached is None or cached[1] != payload:
        try:
            public_key = serialization.load_der_public_key(public_der)
            if not isinstance(public_key, rsa.RSAPublicKey) or not 2048 <= public_key.key_size <= 8192:
                return None
            public_key.verify(sig, payload, _PADDING, _HASH)
        except (ValueError, TypeError, InvalidSignature):
            return None
        cached = (peer_id_of(public_der), payload)
        _verified.put(sig, cached)
    if swarm_key is not None:
        signed = swarm_key.decrypt(signed, _associated(key_bytes, subkey))
        if signed is None:
            return None
    try:
        return cached[0], msgpack.unpackb(signed, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.exceptions.ExtraData):  # unreadable: not a record
        return None


def is_peer_id(text: str) -> bool:
    try:
        multihash.decode(base58.b58decode(text))
        return True
    except (ValueError, TypeError):
        return False


def may_write(signer: str, subkey: str) -> bool:
    """Whether ``signer`` may store a value under ``subkey``: a subkey naming a peer (a node's
    record, a client's observations) only by that peer, ``subject@reporter`` (a verdict) only
    by the reporter; other subkeys (model ids) by anyone whose signature holds."""
    if "@" in subkey:
        return subkey.rsplit("@", 1)[1] == signer
    return subkey == signer or not is_peer_id(subkey)


class SignedRecordValidator(RecordValidatorBase):
    """hivemind validator run by every honest DHT peer (in its DHT process): a value is stored
    or returned only when it is a validly signed envelope whose signer may write its subkey
    (and, in a private swarm, encrypted under the swarm key). Forged records never reach the
    replicas, so they cannot even displace the real ones."""

    def __init__(self, swarm_key: SwarmKey | None = None):
        self.swarm_key = swarm_key

    def validate(self, record: DHTRecord) -> bool:
        try:
            subkey = MSGPackSerializer.loads(record.subkey)
            envelope = MSGPackSerializer.loads(record.value)
        except Exception:  # noqa: BLE001 - undecodable bytes from a peer: not a record of ours
            return False
        opened = _open(record.key, subkey, envelope, self.swarm_key)
        return opened is not None and may_write(opened[0], subkey)

    @property
    def priority(self) -> int:
        return 5  # before hivemind's own validators, if any are ever added

    def merge_with(self, other: RecordValidatorBase) -> bool:
        return isinstance(other, SignedRecordValidator)

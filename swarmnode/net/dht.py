"""Starting a hivemind DHT peer and reading/writing SwarmBee records through it.

The coroutines passed to ``DHT.run_coroutine`` run inside the DHT process, so they are
module-level functions (picklable) that touch only the DHT node.
"""

from __future__ import annotations

import contextlib
import pickle
import tempfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import hivemind
from hivemind.dht.node import DHTNode
from hivemind.p2p import P2P
from hivemind.utils import get_dht_time
from multiaddr import Multiaddr

from swarmnode.errors import ConfigError, SwarmUnavailable
from swarmnode.net.identity import Identity, SignedRecordValidator, open_envelope
from swarmnode.net.swarmkey import SwarmKey
from swarmnode.records import (
    MAX_CLOCK_SKEW_S,
    MODELS_KEY,
    DeadVerdict,
    ModelRecord,
    NodeRecord,
    SwarmSnapshot,
    corroborated_dead,
    dead_key,
    observations_key,
    servers_key,
    verdict_subkey,
)


def validate_maddrs(maddrs: tuple[str, ...] | list[str], *, need_peer_id: bool, what: str) -> list[str]:
    """Check user-given multiaddrs; ``need_peer_id`` for peers to dial (/p2p/<id> at the end)."""
    checked = []
    for text in maddrs:
        try:
            maddr = Multiaddr(text)
        except Exception as e:  # noqa: BLE001 - the multiaddr package raises several types
            raise ConfigError(f"invalid {what} {text!r}: {e}") from e
        if need_peer_id and "p2p" not in [p.name for p in maddr.protocols()]:
            raise ConfigError(f"{what} {text!r} lacks its peer id: expected .../p2p/<peer id>")
        checked.append(str(maddr))
    return checked


def start_dht(
    initial_peers: tuple[str, ...] | list[str],
    *,
    host_maddrs: tuple[str, ...] | list[str] = ("/ip4/0.0.0.0/tcp/0",),
    announce_maddrs: tuple[str, ...] | list[str] = (),
    identity_path: str = "",
    client_mode: bool = False,
    swarm_key: SwarmKey | None = None,
    relay_service: bool = False,
) -> tuple[hivemind.DHT, Identity]:
    """Start a DHT peer in a child process (hivemind runs p2pd under it); returns it and the
    peer's identity (from ``identity_path``, created there if missing; else a new one).

    ``relay_service``: this peer is reachable (a bootstrap peer) and relays for peers that are
    not. libp2p starts its relay service only on a peer AutoNAT found public, which a small
    swarm's few peers may never establish, so the peer is declared public."""
    peers = validate_maddrs(initial_peers, need_peer_id=True, what="initial peer")
    kwargs: dict[str, Any] = dict(
        initial_peers=peers or None,
        start=True,
        client_mode=client_mode,
        host_maddrs=validate_maddrs(host_maddrs, need_peer_id=False, what="host multiaddr"),
        num_workers=8,
        record_validators=[SignedRecordValidator(swarm_key)],  # forged or unsigned records are not stored here
    )
    if relay_service:
        kwargs.update(use_relay=True, force_reachability="public")
    if announce_maddrs:
        kwargs["announce_maddrs"] = validate_maddrs(announce_maddrs, need_peer_id=False, what="announce multiaddr")
    with _identity_file(identity_path) as path:
        kwargs["identity_path"] = str(path)
        try:
            dht = hivemind.DHT(**kwargs)
        except Exception as e:  # noqa: BLE001 - hivemind reports start failures with many types
            raise SwarmUnavailable(f"cannot start the DHT peer (initial peers {peers}): {e}") from e
        return dht, Identity.from_file(path, swarm_key)


@contextlib.contextmanager
def _identity_file(identity_path: str) -> Iterator[Path]:
    """The peer's key file: ``identity_path`` (created if missing: a stable peer id from now on),
    or a new key for this run only, deleted once p2pd has read it (hivemind creates it; no check
    that it is taken: it is new). We need the key itself, not only p2pd: it signs our records."""
    with tempfile.TemporaryDirectory(prefix="swarmnode-identity-") as scratch:
        if identity_path:
            path = Path(identity_path).expanduser()
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                P2P.generate_identity(str(path))
        else:
            path = Path(scratch) / "identity.key"  # written by hivemind as p2pd starts
        yield path


class _StaticRelayP2P(P2P):
    """hivemind's P2P with one more p2pd flag where reachability is private: ``-relayDiscovery=0``,
    so the initial peers are *static* relays. With discovery on (p2pd's default) libp2p's
    autorelay waits for four relay candidates or three minutes before reserving a slot; with
    static relays it reserves at once."""

    FORCE_REACHABILITY_MAPPING = {
        **P2P.FORCE_REACHABILITY_MAPPING,
        "private": {**P2P.FORCE_REACHABILITY_MAPPING["private"], "relayDiscovery": 0},
    }


async def start_dht_behind_relay(
    initial_peers: tuple[str, ...] | list[str],
    *,
    host_maddrs: tuple[str, ...] | list[str] = ("/ip4/0.0.0.0/tcp/0",),
    identity_path: str = "",
    swarm_key: SwarmKey | None = None,
) -> tuple[hivemind.DHT, Identity, P2P]:
    """A DHT peer that cannot be dialled (net/reachability.py): its p2pd reserves a slot on a
    relay — its initial peers, which relay for others (bootstrap peers do: ``relay_service``) —
    and announces the relayed address (libp2p's circuit relay v2, hivemind's ``use_auto_relay``;
    AutoNAT is told the peer is private rather than left to find out). The p2pd runs under this
    process (the returned P2P: shut it down after the DHT); the DHT process uses it."""
    peers = validate_maddrs(initial_peers, need_peer_id=True, what="initial peer")
    if not peers:
        raise ConfigError("a node behind a relay needs --initial-peers: they serve as its relays")
    with _identity_file(identity_path) as path:
        try:
            p2p = await _StaticRelayP2P.create(
                initial_peers=peers,
                host_maddrs=validate_maddrs(host_maddrs, need_peer_id=False, what="host multiaddr"),
                identity_path=str(path),
                use_relay=True,
                use_auto_relay=True,
                force_reachability="private",
                trusted_relays=peers,
            )
            dht = hivemind.DHT(
                initial_peers=peers,
                start=True,
                p2p=p2p,
                num_workers=8,
                record_validators=[SignedRecordValidator(swarm_key)],
            )
        except Exception as e:  # noqa: BLE001 - hivemind reports start failures with many types
            raise SwarmUnavailable(f"cannot start the DHT peer behind a relay (initial peers {peers}): {e}") from e
        return dht, Identity.from_file(path, swarm_key), p2p


def full_maddrs(dht: hivemind.DHT) -> list[str]:
    """The DHT peer's visible multiaddrs with its peer id (what others pass as --initial-peers)."""
    return [str(m) for m in dht.get_visible_maddrs()]


def relay_of(maddrs: list[str]) -> str:
    """The relay's peer id in the first relayed (``.../p2p/RELAY/p2p-circuit/...``) multiaddr, else ""."""
    for maddr in maddrs:
        parts = str(maddr).split("/")
        if "p2p-circuit" in parts:
            before = parts[: parts.index("p2p-circuit")]
            if len(before) >= 2 and before[-2] == "p2p":
                return before[-1]
    return ""


async def _store_records(_dht, node: DHTNode, items: list[tuple[str, str, Any]], expiration: float) -> bool:
    keys, subkeys, values = zip(*items, strict=True)
    results = await node.store_many(list(keys), list(values), expiration, subkeys=list(subkeys), num_workers=8)
    return all(results.values())


# The most bytes of records one call hands the DHT process. hivemind's DHT reads its command pipe
# non-blocking (uvloop polls it), and multiprocessing writes a message of over 16 KiB as a header
# and a body: a reader woken between the two fails with EAGAIN and the DHT process dies. A node
# announcing 30 blocks sends ~21 KB of signed records (each carries its public key and
# signature), so its DHT died on its first announce (found 2026-11-28). Chunks stay well below.
MAX_STORE_MESSAGE_BYTES = 12 * 1024


class StoreResult:
    """The stores of one ``store_records`` call (one or more DHT calls): awaitable, or
    ``result(timeout)`` from a thread; True when every record was stored."""

    def __init__(self, futures: list):
        self.futures = futures

    def __await__(self):
        return self._all().__await__()

    async def _all(self) -> bool:
        return all([await future for future in self.futures])

    def result(self, timeout: float | None = None) -> bool:
        return all([future.result(timeout) for future in self.futures])


def store_records(dht: hivemind.DHT, identity: Identity, items: list[tuple[str, str, Any]], ttl: float) -> StoreResult:
    """Store (key, subkey, value) triples, each signed by ``identity``, expiring in ``ttl``
    seconds, in as many DHT calls as keep each under MAX_STORE_MESSAGE_BYTES."""
    expiration = get_dht_time() + ttl
    sealed = [(key, subkey, identity.seal(key, subkey, value)) for key, subkey, value in items]
    return StoreResult(
        [
            dht.run_coroutine(partial(_store_records, items=chunk, expiration=expiration), return_future=True)
            for chunk in _chunks(sealed, MAX_STORE_MESSAGE_BYTES)
        ]
    )


def _chunks(items: list, limit: int) -> list[list]:
    """``items`` in consecutive groups of at most ``limit`` pickled bytes (an item alone may exceed it)."""
    chunks: list[list] = []
    size = 0
    for item in items:
        item_size = len(pickle.dumps(item))
        if not chunks or size + item_size > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += item_size
    return chunks


async def _get_subkeys(_dht, node: DHTNode, keys: list[str]) -> dict[str, dict[str, Any]]:
    found = await node.get_many(keys, sufficient_expiration_time=float("inf"), num_workers=8)
    result: dict[str, dict[str, Any]] = {}
    for key, entry in found.items():
        values: dict[str, Any] = {}
        if entry is not None and isinstance(entry.value, dict):
            for subkey, item in entry.value.items():
                values[str(subkey)] = getattr(item, "value", None)
        result[key] = values
    return result


def get_subkeys(dht: hivemind.DHT, keys: list[str]):
    """Fetch ``keys``; returns an awaitable MPFuture of {key: {subkey: raw value}}."""
    return dht.run_coroutine(partial(_get_subkeys, keys=keys), return_future=True)


def signed_values(found: dict[str, Any], key: str, swarm_key: SwarmKey | None = None) -> Iterator[tuple[str, str, Any]]:
    """(subkey, signer's peer id, record) for every validly signed value under ``key`` (in a
    private swarm: encrypted under its key)."""
    for subkey, envelope in found.get(key, {}).items():
        opened = open_envelope(key, subkey, envelope, swarm_key)
        if opened is not None:
            yield subkey, opened[0], opened[1]


def parse_models(found: dict[str, Any], swarm_key: SwarmKey | None = None) -> dict[str, ModelRecord]:
    models = {}
    for model_id, _signer, value in signed_values(found, MODELS_KEY, swarm_key):
        record = ModelRecord.from_wire(value)
        if record is not None and record.model_id == model_id:
            models[model_id] = record
    return models


async def fetch_models(dht: hivemind.DHT, swarm_key: SwarmKey | None = None) -> dict[str, ModelRecord]:
    return parse_models(await get_subkeys(dht, [MODELS_KEY]), swarm_key)


async def fetch_snapshot(
    dht: hivemind.DHT, model_id: str, num_blocks: int, swarm_key: SwarmKey | None = None
) -> SwarmSnapshot:
    """Read the node records, dead verdicts and shared observations of ``model_id`` (three
    keys, whatever its block count; bad records are skipped)."""
    key = servers_key(model_id)
    found = await get_subkeys(dht, [key, dead_key(model_id), observations_key(model_id)])
    shared = {
        publisher: value
        for publisher, signer, value in signed_values(found, observations_key(model_id), swarm_key)
        if signer == publisher  # a client speaks only for itself
        and isinstance(value, dict)
        and len(value) <= 4096
        and all(isinstance(v, dict) for v in value.values())
    }
    latest = get_dht_time() + MAX_CLOCK_SKEW_S  # a record from the future would win every comparison
    nodes: dict[str, NodeRecord] = {}
    for peer_id, signer, value in signed_values(found, key, swarm_key):
        record = NodeRecord.from_wire(value)
        if record is None or signer != peer_id or record.peer_id != peer_id:
            continue  # a record about a node counts only when that node signed it
        if record.end > num_blocks or record.timestamp > latest:
            continue
        nodes[peer_id] = record
    verdicts = []
    for subkey, signer, value in signed_values(found, dead_key(model_id), swarm_key):
        verdict = DeadVerdict.from_wire(value)
        if verdict is not None and signer == verdict.reporter and subkey == verdict_subkey(verdict.peer_id, signer):
            verdicts.append(verdict)
    dead = corroborated_dead(nodes, verdicts)
    return SwarmSnapshot(
        model_id=model_id, num_blocks=num_blocks, nodes=nodes, dead=dead, shared=shared, verdicts=tuple(verdicts)
    )

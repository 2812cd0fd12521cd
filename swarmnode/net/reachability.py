"""Is this peer reachable from outside? Peers dial each other back (like libp2p's AutoNAT).

A node behind a NAT or a firewall can dial out but cannot be dialled: it would join the DHT,
announce itself, and then no client could open a session with it. So before announcing, a
node asks a few peers (its initial peers first) to dial it back: it sends the TCP ports it
listens on, and each helper opens a plain TCP connection to *the address it sees the request
come from* on each port — never to an address the asker names, so a helper cannot be used to
probe third parties — and answers which ports accepted. A node that no helper could reach
serves through a relay instead (hivemind's circuit relay: ``server/node.py``).

Wire format on :data:`DIAL_BACK_HANDLE`: one frame each way, a 4-byte big-endian length and a
msgpack map — ``{"ports": [int, ...]}`` then ``{"observed": "ip", "reachable": [int, ...]}``
or ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from dataclasses import dataclass

import msgpack
from hivemind.p2p import P2P, PeerID

logger = logging.getLogger(__name__)
DIAL_BACK_HANDLE = "swarmnode.dial_back"
MAX_PORTS = 4
MAX_FRAME = 1024
DIAL_TIMEOUT_S = 2.0
IO_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class DialBack:
    """One helper's answer: the address it saw us at and the ports it could connect to."""

    helper: str
    observed: str
    reachable: tuple[int, ...]


def decide_reachable(answers: list[DialBack | None]) -> bool | None:
    """Reachable if a majority of the helpers that answered reached some port; None when no
    helper answered (nothing learned: the caller keeps its default)."""
    heard = [a for a in answers if a is not None]
    if not heard:
        return None
    return 2 * sum(bool(a.reachable) for a in heard) > len(heard)


def listening_ports(maddrs: list[str]) -> list[int]:
    """The TCP ports in our own (non-relayed) multiaddrs, without duplicates, at most MAX_PORTS."""
    ports: list[int] = []
    for maddr in maddrs:
        parts = maddr.split("/")
        if "p2p-circuit" in parts or "tcp" not in parts:
            continue
        port = int(parts[parts.index("tcp") + 1])
        if port not in ports:
            ports.append(port)
    return ports[:MAX_PORTS]


def observed_ip(maddr: str) -> str | None:
    """The IP address in a direct connection's multiaddr (None for a relayed one)."""
    parts = str(maddr).split("/")
    if "p2p-circuit" in parts:
        return None
    for proto in ("ip4", "ip6"):
        if proto in parts:
            return parts[parts.index(proto) + 1]
    return None


async def _write_frame(writer: asyncio.StreamWriter, message: dict) -> None:
    body = msgpack.packb(message, use_bin_type=True)
    writer.write(struct.pack(">I", len(body)) + body)
    await writer.drain()


async def _read_frame(reader: asyncio.StreamReader) -> dict:
    (size,) = struct.unpack(">I", await reader.readexactly(4))
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes is over {MAX_FRAME}")
    message = msgpack.unpackb(await reader.readexactly(size), raw=False)
    if not isinstance(message, dict):
        raise ValueError("a frame must hold a map")
    return message


async def _tcp_reaches(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), DIAL_TIMEOUT_S)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _handle_dial_back(stream_info, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Helper side: dial the asker back at the address its request came from."""
    try:
        request = await asyncio.wait_for(_read_frame(reader), IO_TIMEOUT_S)
        ports = request.get("ports")
        if not (isinstance(ports, list) and 0 < len(ports) <= MAX_PORTS) or not all(
            isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports
        ):
            await _write_frame(writer, {"error": f"ports must be 1..{MAX_PORTS} TCP port numbers"})
            return
        host = observed_ip(stream_info.addr)
        if host is None:
            await _write_frame(writer, {"error": f"cannot dial back a relayed connection ({stream_info.addr})"})
            return
        results = await asyncio.gather(*(_tcp_reaches(host, port) for port in ports))
        reachable = [port for port, ok in zip(ports, results, strict=True) if ok]
        await _write_frame(writer, {"observed": host, "reachable": reachable})
    except (OSError, ValueError, TimeoutError, asyncio.IncompleteReadError, msgpack.UnpackException) as e:
        logger.debug("dial-back request from %s failed: %s", stream_info.peer_id, e)
    finally:
        writer.close()


async def serve_dial_back(p2p: P2P) -> None:
    """Answer other peers' dial-back requests (every node and bootstrap peer does)."""
    await p2p.add_binary_stream_handler(DIAL_BACK_HANDLE, _handle_dial_back)


async def ask_dial_back(p2p: P2P, helper: str, ports: list[int], timeout: float = IO_TIMEOUT_S) -> DialBack | None:
    """Ask ``helper`` to dial us back on ``ports``; None if it did not answer properly."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            _, reader, writer = await p2p.call_binary_stream_handler(PeerID.from_base58(helper), DIAL_BACK_HANDLE)
            await _write_frame(writer, {"ports": ports})
            answer = await _read_frame(reader)
        reachable, observed = answer.get("reachable"), answer.get("observed")
        if not isinstance(reachable, list) or not isinstance(observed, str):
            logger.info("dial-back by %s: %s", helper, answer.get("error", "a malformed answer"))
            return None
        return DialBack(helper, observed, tuple(p for p in reachable if p in ports))
    except Exception as e:  # noqa: BLE001 - any failure: this helper tells us nothing
        logger.info("dial-back by %s failed: %s", helper, e)
        return None
    finally:
        if writer is not None:
            writer.close()


async def check_reachability(p2p: P2P, helpers: list[str], ports: list[int]) -> tuple[bool | None, list]:
    """Ask up to three ``helpers`` at once; the decision (:func:`decide_reachable`) and the answers."""
    answers = await asyncio.gather(*(ask_dial_back(p2p, helper, ports) for helper in helpers[:3]))
    return decide_reachable(list(answers)), list(answers)

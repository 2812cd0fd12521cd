"""The node's RPC interface and its message format.

Requests and responses are hivemind's ``ExpertRequest`` / ``ExpertResponse``:
tensors serialized by ``hivemind.compression`` plus msgpack metadata. An error is a
response whose metadata holds ``{"error": {"code": ..., "message": ..., "retry_after": ...}}``
(``retry_after``, seconds, only for retryable refusals); codes map onto :mod:`swarmnode.errors`.

``rpc_inference`` (bidirectional stream, one per session and hop) — each request holds
one hidden-states tensor [batch, seq, hidden] and metadata:
``session_id``, ``start``/``end`` (the blocks to run), ``max_length`` (first request),
``position`` (optional: the prefix length these tokens follow; a smaller value rolls
the cache back, e.g. to replay a step), ``step`` (echoed) and, on the first request,
``exact`` (optional: never batch this session's steps with others'). Each response holds
the output hidden states (in the dtype they came in: float32, or 16-bit when the client
asks) and ``{"cache_len_before", "cache_len", "step", "compute_ms", "queue_ms", "batch",
"busy", "draining"}``. A first request with ``stateless: true`` is a forward without a
session (no KV cache kept): the stream form of ``rpc_forward``, with no unary size cap.

A request may carry two more tensors after the hidden states: the attention mask of its
tokens [batch, seq] (0 = padding) and their position ids, for left-padded batches; the
node keeps the session's mask so padded keys are never attended to. The first request
may carry ``config_hash``: a node serving another checkpoint refuses (``model_mismatch``).

``rpc_forward`` (unary, stateless) — metadata ``start``/``end`` (and ``config_hash``), the
hidden states (and optionally mask and positions) in, the hidden states out.

``rpc_info`` (unary) — no input; metadata describing the node (span, state, load, ...).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import torch
from google.protobuf.message import DecodeError
from hivemind.p2p import P2P, P2PContext, ServicerBase
from hivemind.proto import runtime_pb2
from hivemind.proto.p2pd_pb2 import RPCError

from swarmnode.errors import InvalidRequest, RemoteError, remote_error_from_code

PROTOCOL_VERSION = 1
MAX_METADATA_BYTES = 64 * 1024


class SwarmNodeService(ServicerBase):
    """Unary RPC signatures of a node. The server registers an implementation of these
    methods with ``SwarmNodeService().add_p2p_handlers(p2p, wrapper=impl)``; clients call
    them through ``SwarmNodeService.get_stub(p2p, peer_id)``.

    A streaming ``rpc_*`` added to a ServicerBase must be annotated with ``typing.AsyncIterator``:
    hivemind recognizes streams by that annotation's name, and ``collections.abc``'s would make
    the method silently unary.

    ``rpc_inference`` is served as a raw stream under :data:`INFERENCE_HANDLE` with
    hivemind's protobuf framing, read and written directly on both sides: this avoids a
    task and a queue per message, which is most of a hop's overhead on loopback.
    """

    async def rpc_forward(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        raise NotImplementedError

    async def rpc_info(self, request: runtime_pb2.ExpertUID, context: P2PContext) -> runtime_pb2.ExpertResponse:
        raise NotImplementedError


class GossipService(ServicerBase):
    """RPC signatures of the SWIM failure detector among nodes (see swarmnode.membership.gossip).

    ``rpc_ping``: metadata ``{"from", "incarnation", "updates"}``; the answer carries the
    responder's piggybacked ``updates``. ``rpc_ping_req``: the same plus ``"target"``: the
    responder pings the target on the sender's behalf and answers ``{"ack": bool}``.
    """

    async def rpc_ping(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        raise NotImplementedError

    async def rpc_ping_req(self, request: runtime_pb2.ExpertRequest, context: P2PContext) -> runtime_pb2.ExpertResponse:
        raise NotImplementedError


INFERENCE_HANDLE = "SwarmNodeService.rpc_inference"


MAX_RESPONSE_BYTES = 1 << 30  # what a client reads from a node at most: a sanity bound, not a budget


async def receive_message(reader, message_type: type, limit: int, marker: bytes | None = None):
    """Read one framed protobuf message (hivemind's stream framing) of at most ``limit`` bytes;
    ``marker``: its first byte, when the caller has read it already.

    The length is checked before any of the message is read, so a peer cannot make us buffer
    a frame of any size it declares. Returns ``(message, None)``, or ``(None, RPCError)`` for an
    error frame; raises InvalidRequest for an oversized or unknown frame (the stream cannot be
    trusted past it), IncompleteReadError when the stream ends."""
    if marker is None:
        marker = await reader.readexactly(1)
    length = int.from_bytes(await reader.readexactly(P2P.HEADER_LEN), P2P.BYTEORDER)
    if length > limit:
        raise InvalidRequest(f"a message of {length} bytes exceeds this stream's limit of {limit} bytes")
    if marker not in (P2P.MESSAGE_MARKER, P2P.ERROR_MARKER):
        raise InvalidRequest(f"unknown frame marker {marker!r}")
    data = await reader.readexactly(length)
    try:
        if marker == P2P.MESSAGE_MARKER:
            return message_type.FromString(data), None
        return None, RPCError.FromString(data)
    except DecodeError as e:
        raise InvalidRequest(f"undecodable message on the stream: {e}") from e


async def send_message(message, writer: asyncio.StreamWriter) -> None:
    """Write one protobuf message (or ``P2P.END_OF_STREAM``, an error frame) in hivemind's stream
    framing, as one write. ``P2P.send_protobuf`` writes the marker, the length and the body
    separately: three sends, which the daemons may relay as three frames and the reader then
    wakes up for one by one — on every hop of every token."""
    marker = P2P.ERROR_MARKER if isinstance(message, RPCError) else P2P.MESSAGE_MARKER
    data = message.SerializeToString()
    writer.write(marker + len(data).to_bytes(P2P.HEADER_LEN, P2P.BYTEORDER) + data)
    await writer.drain()


async def read_requests(reader, limit: int) -> AsyncIterator[runtime_pb2.ExpertRequest]:
    """Requests from a raw inference stream (each at most ``limit`` bytes) until the client
    ends it (or it breaks)."""
    while True:
        try:
            request, _ = await receive_message(reader, runtime_pb2.ExpertRequest, limit)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            return  # the client went away
        if request is None:
            return  # END_OF_STREAM (an empty error frame)
        yield request


def pack_meta(meta: dict[str, Any]) -> bytes:
    return msgpack.packb(meta, use_bin_type=True)


def unpack_meta(raw: bytes) -> dict[str, Any]:
    """Decode request metadata; InvalidRequest if it is not a msgpack map."""
    if len(raw) > MAX_METADATA_BYTES:
        raise InvalidRequest(f"metadata of {len(raw)} bytes exceeds {MAX_METADATA_BYTES}")
    if not raw:
        return {}
    try:
        meta = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (ValueError, msgpack.UnpackException, TypeError) as e:
        raise InvalidRequest(f"metadata is not valid msgpack: {e}") from e
    if not isinstance(meta, dict):
        raise InvalidRequest("metadata must be a msgpack map")
    return meta


# The dtypes a tensor may have on the wire (hidden states, attention masks, position ids), by the
# names hivemind's ``runtime_pb2.Tensor`` carries. Anything else is refused before a byte is copied.
WIRE_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, name)
    for name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
}


def tensor_to_proto(tensor: torch.Tensor) -> runtime_pb2.Tensor:
    """A tensor as hivemind's uncompressed ``runtime_pb2.Tensor``: its raw bytes, shape and dtype
    name. Written here rather than through ``hivemind.compression`` because this runs on every
    hop of every token, where each layer of calls costs (docs/token_budget.md); bfloat16 goes as
    its own 2 bytes a value (hivemind's legacy mode widens it to 4)."""
    tensor = tensor.detach()
    if not tensor.is_contiguous():
        tensor = tensor.contiguous()
    raw = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor  # numpy has no bfloat16
    return runtime_pb2.Tensor(
        buffer=raw.numpy().tobytes(),
        size=tensor.shape,
        dtype=str(tensor.dtype)[6:],  # "torch.float32" -> "float32"
    )


def tensor_from_proto(proto: runtime_pb2.Tensor) -> torch.Tensor:
    """Decode one tensor; InvalidRequest on garbage. Only uncompressed tensors of a known dtype
    whose bytes match their shape are accepted (checked before anything is allocated): we never
    send compressed ones, and each decompressor is more code a peer could aim at. A bfloat16
    tensor of 4 bytes a value is hivemind's legacy form (float32 values)."""
    if proto.compression != runtime_pb2.CompressionType.NONE:
        raise InvalidRequest(f"compressed tensors are not accepted (compression {proto.compression})")
    dtype = WIRE_DTYPES.get(proto.dtype)
    if dtype is None:
        raise InvalidRequest(f"cannot decode tensor: unknown dtype {proto.dtype[:32]!r}")
    shape = tuple(proto.size)
    count, size = math.prod(shape), len(proto.buffer)
    if dtype == torch.bfloat16 and count and size == 4 * count:
        return _from_bytes(proto.buffer, torch.float32, shape).to(torch.bfloat16)
    if size != count * dtype.itemsize:
        raise InvalidRequest(f"cannot decode tensor: {size} bytes for shape {shape[:8]} of {proto.dtype}")
    return _from_bytes(proto.buffer, dtype, shape)


def _from_bytes(buffer: bytes, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    try:
        if not buffer:  # an empty tensor (some dimension is 0)
            return torch.empty(shape, dtype=dtype)
        # A writable copy: the message's bytes are immutable, and the tensor outlives the message.
        return torch.frombuffer(bytearray(buffer), dtype=dtype).view(shape)
    except (RuntimeError, ValueError) as e:  # e.g. dimensions whose strides overflow
        raise InvalidRequest(f"cannot decode tensor: {e}") from e


def step_tensors(tensors) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """A step's tensors: hidden states, or hidden states + attention mask + position ids
    (a padded batch: mask [batch, seq] with 0 for padding, positions [batch, seq])."""
    if len(tensors) == 1:
        return tensor_from_proto(tensors[0]), None, None
    if len(tensors) == 3:
        hidden, mask, positions = (tensor_from_proto(t) for t in tensors)
        return hidden, mask, positions
    raise InvalidRequest(
        f"expected 1 tensor (hidden states) or 3 (with attention mask and positions), got {len(tensors)}"
    )


def make_request(meta: dict[str, Any], tensors: tuple[torch.Tensor, ...] = ()) -> runtime_pb2.ExpertRequest:
    return runtime_pb2.ExpertRequest(metadata=pack_meta(meta), tensors=[tensor_to_proto(t) for t in tensors])


def make_response(meta: dict[str, Any], tensors: tuple[torch.Tensor, ...] = ()) -> runtime_pb2.ExpertResponse:
    return runtime_pb2.ExpertResponse(metadata=pack_meta(meta), tensors=[tensor_to_proto(t) for t in tensors])


MAX_RETRY_AFTER_S = 3600.0


def error_response(error: RemoteError) -> runtime_pb2.ExpertResponse:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.retry_after is not None:
        body["retry_after"] = float(error.retry_after)
    return make_response({"error": body})


def read_response(response: runtime_pb2.ExpertResponse, peer_id: str) -> tuple[dict[str, Any], list[torch.Tensor]]:
    """Decode a node's response; raises the matching RemoteError if it carries an error."""
    try:
        meta = msgpack.unpackb(response.metadata, raw=False) if response.metadata else {}
    except (ValueError, msgpack.UnpackException) as e:
        raise RemoteError(f"node sent undecodable metadata: {e}", peer_id) from e
    if not isinstance(meta, dict):
        raise RemoteError("node sent metadata that is not a map", peer_id)
    error = meta.get("error")
    if isinstance(error, dict):
        retry_after = error.get("retry_after")
        if isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)) or not math.isfinite(retry_after):
            retry_after = None  # absent or malformed: no hint
        else:
            retry_after = min(max(float(retry_after), 0.0), MAX_RETRY_AFTER_S)
        raise remote_error_from_code(str(error.get("code")), str(error.get("message")), peer_id, retry_after)
    try:
        tensors = [tensor_from_proto(t) for t in response.tensors]
    except InvalidRequest as e:  # remote bytes: the node's fault, not ours
        raise RemoteError(f"node sent an undecodable tensor: {e}", peer_id) from e
    return meta, tensors

"""The packed weight layout (models/layout.py): the same function as nn.Linear up to rounding,
chosen only where it applies, accounted in the node's weight bytes, and faster where it counts
(one decoding step and a batch of eight, on a block wide enough for the kernels to matter)."""

import time

import pytest
import torch
from torch import nn

from swarmnode.config import ClientConfig, NodeConfig
from swarmnode.errors import ConfigError
from swarmnode.models import load_blocks, load_client_head, load_model_spec
from swarmnode.models.layout import PACK_MIN_WEIGHTS, PackedLinear, pack_block, packing_works, resolve_layout
from swarmnode.models.quantize import measured_block_bytes
from swarmnode.models.tiny import tiny_checkpoint
from swarmnode.records import NodeRecord, NodeState


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_this_torch_build_packs():
    assert packing_works(), "the pinned torch CPU build has oneDNN: the default layout must apply here"


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (3, 1), (2, 40)], ids=str)
def test_packed_linear_computes_what_linear_does(bias, shape):
    torch.manual_seed(0)
    linear = nn.Linear(96, 80, bias=bias)
    x = torch.randn(*shape, 96)
    with torch.inference_mode():
        expected = linear(x)
        got = PackedLinear(linear)(x)
        flat = PackedLinear(linear)(x.reshape(-1, 96))
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert relative(got, expected) < 1e-5
    assert torch.equal(flat.reshape(expected.shape), got), "rows are independent of how they are shaped"
    assert not torch.equal(got, linear(x) + 1e-3), "sanity: the comparison can fail"


def test_packed_linear_refuses_what_it_cannot_compute():
    with pytest.raises(ValueError, match="float32 CPU"):
        PackedLinear(nn.Linear(8, 8).to(torch.bfloat16))
    packed = PackedLinear(nn.Linear(8, 4))
    with pytest.raises(ValueError, match="8 input features"):
        packed(torch.randn(1, 9))


def test_auto_packs_only_float32_cpu_weights_without_quantization():
    assert resolve_layout("auto", "cpu", torch.float32, "none") == "packed"
    assert resolve_layout("auto", "cpu", torch.bfloat16, "none") == "dense"
    assert resolve_layout("auto", "cpu", torch.float32, "int8") == "dense"
    assert resolve_layout("auto", "cuda:0", torch.float32, "none") == "dense"
    assert resolve_layout("dense", "cpu", torch.float32, "none") == "dense"
    with pytest.raises(ValueError, match="CPU nodes"):
        resolve_layout("packed", "cuda", torch.float32, "none")
    with pytest.raises(ValueError, match="nf4"):
        resolve_layout("packed", "cpu", torch.float32, "nf4")
    with pytest.raises(ValueError, match="auto, dense, packed"):
        resolve_layout("blocked", "cpu", torch.float32, "none")
    with pytest.raises(ConfigError, match="weight_layout"):
        NodeConfig(weight_layout="blocked")


def test_a_packed_block_holds_its_weights_once_and_counts_them():
    spec = load_model_spec(tiny_checkpoint("wide-llama"))
    dense = load_blocks(spec, 0, 1, "cpu", torch.float32)
    packed = load_blocks(spec, 0, 1, "cpu", torch.float32, layout="packed")
    for a, b in zip(dense.blocks, packed.blocks, strict=True):
        assert not any(isinstance(m, nn.Linear) for m in b.modules())
        linears = sum(isinstance(m, nn.Linear) for m in a.modules())
        assert sum(isinstance(m, PackedLinear) for m in b.modules()) == linears == 7
        assert measured_block_bytes(b) == measured_block_bytes(a)
    assert packed.loaded_parameters == dense.loaded_parameters


def test_layers_too_small_to_gain_stay_dense(llama_path):
    """tiny-llama's layers (hidden 64) are all under PACK_MIN_WEIGHTS: packed, they would be slower."""
    spec = load_model_spec(llama_path)
    block = load_blocks(spec, 0, 1, "cpu", torch.float32, layout="packed").blocks[0]
    assert all(m.weight.numel() < PACK_MIN_WEIGHTS for m in block.modules() if isinstance(m, nn.Linear))
    assert not any(isinstance(m, PackedLinear) for m in block.modules())
    assert any(isinstance(m, PackedLinear) for m in pack_block(block, min_weights=0).modules())
    assert pack_block(nn.Sequential(nn.ReLU())) is not None  # nothing to pack is fine


def test_records_carry_the_layout_and_refuse_nonsense():
    record = NodeRecord(peer_id="p", state=NodeState.ONLINE, start=0, end=2, layout="packed")
    assert NodeRecord.from_wire(record.to_wire()).layout == "packed"
    old = record.to_wire()
    del old["layout"]
    assert NodeRecord.from_wire(old).layout == "dense"  # an older node's record
    assert NodeRecord.from_wire({**record.to_wire(), "layout": "x" * 100}) is None


def _interleaved_medians(a, b, repeats: int) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, run alternately (after one warm-up each)."""
    a(), b()
    times = ([], [])
    for _ in range(repeats):
        for fn, kept in zip((a, b), times, strict=True):
            began = time.perf_counter()
            fn()
            kept.append(time.perf_counter() - began)
    return tuple(sorted(t)[repeats // 2] for t in times)


def test_packed_is_faster_for_a_decoding_step_and_a_batch_on_a_wide_block():
    """The reason the layout exists, checked where it matters (wide-llama, hidden 1024): one
    row and eight rows each at least 20% faster packed (measured ~1.7x and ~2.5x; medians of
    interleaved runs on one thread, so machine noise hits both alike)."""
    spec = load_model_spec(tiny_checkpoint("wide-llama"))
    dense = load_blocks(spec, 0, 1, "cpu", torch.float32).blocks[0].mlp
    packed = load_blocks(spec, 0, 1, "cpu", torch.float32, layout="packed").blocks[0].mlp
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            for rows in (1, 8):
                x = torch.randn(rows, 1, spec.hidden_size)
                assert relative(packed(x), dense(x)) < 1e-5
                dense_s, packed_s = _interleaved_medians(lambda x=x: dense(x), lambda x=x: packed(x), 15)
                assert packed_s < 0.8 * dense_s, (
                    f"{rows} rows: packed {packed_s * 1e3:.2f} ms, dense {dense_s * 1e3:.2f}"
                )
    finally:
        torch.set_num_threads(threads)


def test_a_packed_client_head_gives_the_dense_heads_logits():
    spec = load_model_spec(tiny_checkpoint("wide-llama"))
    dense, _ = load_client_head(spec)
    packed, parameters = load_client_head(spec, layout="packed")
    assert isinstance(packed.lm_head, PackedLinear) and isinstance(dense.lm_head, nn.Linear)
    assert parameters == sum(p.numel() for p in dense.parameters())
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.inference_mode():
        assert torch.equal(packed.embed(ids, None), dense.embed(ids, None))
        hidden = torch.randn(1, 5, spec.hidden_size)
        a, b = dense.logits(hidden), packed.logits(hidden)
    assert relative(b, a) < 1e-5 and torch.equal(a.argmax(-1), b.argmax(-1))
    with pytest.raises(ConfigError, match="head_layout"):
        ClientConfig(head_layout="blocked")

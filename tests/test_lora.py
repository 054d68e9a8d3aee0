import pytest
import torch
from torch import nn

from blora_export import gates
from blora_export.config import BLoRAConfig
from blora_export.lora import GatedLoRALinear, QuantizedEmbedding

FORCE = 100.0


def make_layer(cfg: BLoRAConfig, adapted=True) -> GatedLoRALinear:
    torch.manual_seed(0)
    layer = GatedLoRALinear(nn.Linear(12, 10), cfg, adapted=adapted)
    with torch.no_grad():
        layer.lora_B.normal_() if adapted else None
        if adapted:
            layer.lora_E.uniform_(0.5, 1.5)
    return layer


def open_everything(layer: GatedLoRALinear) -> None:
    with torch.no_grad():
        layer.rank_log_alpha.fill_(FORCE)
        layer.weight_quantizer.log_alpha.fill_(FORCE)
        layer.input_quantizer.log_alpha.fill_(FORCE)


@pytest.mark.parametrize("training", [True, False])
def test_open_gates_and_32_bits_equal_w0_plus_scaled_ba(training):
    layer = make_layer(BLoRAConfig(max_rank=4, lora_alpha=8))
    open_everything(layer)
    layer.train(training)
    assert layer.widths() == (32, 32) and layer.deterministic_rank() == 4
    x = torch.randn(3, 5, 12)
    w = layer.base.weight + 2.0 * layer.lora_B @ torch.diag(layer.lora_E) @ layer.lora_A
    expected = x @ w.T + layer.base.bias
    assert torch.allclose(layer(x), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(layer(x), layer.base(x), atol=1e-3)  # the adapter is non-zero


def test_lora_method_is_plain_fp32_lora():
    layer = make_layer(BLoRAConfig(method="lora", max_rank=4, lora_alpha=4))
    layer.train()
    x = torch.randn(2, 12)
    expected = x @ (layer.base.weight + layer.lora_B @ torch.diag(layer.lora_E) @ layer.lora_A).T + layer.base.bias
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert not layer.rank_log_alpha.requires_grad and not layer.weight_quantizer.log_alpha.requires_grad


@pytest.mark.parametrize("sampled", [False, True])
def test_rank_mask_is_a_prefix(sampled):
    layer = make_layer(BLoRAConfig(max_rank=8, deploy="adapter", gate_sampling=sampled))
    with torch.no_grad():
        layer.rank_log_alpha.copy_(torch.tensor([3.0, 2.0, -3.0, 4.0, 4.0, -1.0, 2.0]))
    layer.eval()
    assert layer.rank_mask().tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert layer.deterministic_rank() == 3
    layer.train()
    for _ in range(50):
        m = layer.rank_mask()
        assert m[0] == 1 and (m[1:] <= m[:-1]).all() and (m >= 0).all()
        if not sampled:  # straight-through: training runs the test-time mask
            assert m.tolist() == [1, 1, 1, 0, 0, 0, 0, 0]


def test_merged_deploy_keeps_every_rank_and_learns_none():
    layer = make_layer(BLoRAConfig(max_rank=4))
    assert not layer.learn_rank and not layer.rank_log_alpha.requires_grad
    assert layer.deterministic_rank() == 4 and float(layer.expected_rank()) == 4.0


def test_quantized_forward_uses_learned_widths_and_gradients_flow():
    layer = make_layer(BLoRAConfig(max_rank=4, init_weight_bits=4, init_act_bits=8, deploy="adapter"))
    layer.input_quantizer.calibrating = True
    layer.input_quantizer(torch.randn(100) * 3)
    layer.input_quantizer.calibrating = False
    layer.input_quantizer.finish_calibration()
    layer.eval()
    assert layer.widths() == (4, 8)
    w = layer.effective_weight()
    # 4-bit per-channel grid: each row holds at most 15 distinct values
    assert max(len(torch.unique(row)) for row in w) <= 15
    layer.train()
    with torch.no_grad():  # 4-bit weights with the 8-bit level closed but alive: it still learns
        layer.rank_log_alpha.fill_(1.0)
        layer.weight_quantizer.log_alpha.copy_(torch.tensor([-1.5, -1.5, -1.5]))  # levels 8, 16, 32
    for _ in range(3):
        layer(torch.randn(4, 12)).pow(2).sum().backward()
    for p in (layer.lora_A, layer.lora_B, layer.lora_E, layer.rank_log_alpha, layer.weight_quantizer.log_hi,
              layer.weight_quantizer.log_alpha, layer.input_quantizer.log_hi, layer.input_quantizer.log_lo):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert layer.base.weight.grad is None


@pytest.mark.parametrize("deploy", ["merged", "adapter"])
def test_deploy_target_decides_what_is_quantized(deploy):
    """Merged: the quantized merged weight; adapter: W0 quantized alone plus the fp32 branch on the same input."""
    layer = make_layer(BLoRAConfig(max_rank=4, init_weight_bits=4, deploy=deploy))
    layer.eval()
    x = torch.randn(3, 12)
    xq = layer.input_quantizer(x)
    if deploy == "merged":
        expected = xq @ layer.weight_quantizer(layer.merged_weight()).T + layer.base.bias
    else:
        branch = (xq @ layer.lora_A.T * layer.lora_E) @ layer.lora_B.T * layer.scaling
        expected = xq @ layer.weight_quantizer(layer.base.weight).T + layer.base.bias + branch
    assert torch.allclose(layer(x), expected, atol=1e-5)


def test_expected_rank_is_the_nested_sum():
    layer = make_layer(BLoRAConfig(max_rank=3, deploy="adapter"))
    with torch.no_grad():
        layer.rank_log_alpha.copy_(torch.tensor([0.5, -0.5]))
    p = gates.prob_open(layer.rank_log_alpha)
    assert torch.allclose(layer.expected_rank(), 1 + p[0] + p[0] * p[1])


def test_unadapted_layer_has_only_quantizers():
    layer = make_layer(BLoRAConfig(), adapted=False)
    assert layer.max_rank == 0 and layer.deterministic_rank() == 0
    assert not hasattr(layer, "lora_A")


def test_quantized_embedding_per_row_fixed_width():
    emb = nn.Embedding(20, 6)
    q = QuantizedEmbedding(emb, 4)
    rows = q.weight
    for r, orig in zip(rows, emb.weight, strict=True):
        assert len(torch.unique(r)) <= 15
        assert torch.allclose(r.abs().max(), orig.abs().max() * 14 / 15, rtol=1e-5)
    assert not any(p.requires_grad for p in q.parameters())
    assert torch.equal(QuantizedEmbedding(emb, 32).weight, emb.weight)


def test_quantized_embedding_cache_follows_loaded_tensors():
    emb = QuantizedEmbedding(nn.Embedding(10, 4), 8)
    first = emb.weight
    assert emb.weight is first  # cached while nothing changes
    state = {k: v.clone() for k, v in emb.state_dict().items()}
    state["weight_quantizer.log_hi"] = state["weight_quantizer.log_hi"] * 2
    emb.load_state_dict(state)
    assert not torch.equal(emb.weight, first)
    assert torch.equal(emb.weight, emb.weight_quantizer(emb.base.weight))

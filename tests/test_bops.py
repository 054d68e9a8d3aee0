import pytest
import torch

from blora_export import gated_model, gates, roles
from blora_export.base_model import load_base_model
from blora_export.bops import profile_macs, totals
from blora_export.config import ACT_WIDTHS, WIDTHS, BLoRAConfig
from blora_export.inject import inject, wrapped_linears
from blora_export.targets import encoder_linears, resolve_targets

T = 16


def test_macs_of_tiny_bert_by_hand(tiny_bert_dir):
    model = load_base_model(str(tiny_bert_dir), 2)
    p = profile_macs(model, T, encoder_linears(model), resolve_targets(model, "qkv"))
    # hidden 32, intermediate 64, 2 layers, 2 labels
    assert p.linears["bert.encoder.layer.0.attention.self.query"] == T * 32 * 32
    assert p.linears["bert.encoder.layer.1.intermediate.dense"] == T * 32 * 64
    assert p.linears["bert.pooler.dense"] == 32 * 32  # the pooler sees the [CLS] token only
    assert p.linears["classifier"] == 32 * 2
    assert p.attention == 2 * 2 * T * T * 32  # scores and context, per layer
    assert sum(p.linears.values()) == 2 * (4 * T * 32 * 32 + 2 * T * 32 * 64) + 32 * 32 + 64


def test_bops_of_tiny_bert_by_hand(tiny_bert_dir):
    model = load_base_model(str(tiny_bert_dir), 2)
    p = profile_macs(model, T, encoder_linears(model), resolve_targets(model, "qkv"))
    inject(model, BLoRAConfig(seq_len=T, weight_bits=WIDTHS, act_bits=ACT_WIDTHS))
    layers = wrapped_linears(model)
    chosen = {"bert.encoder.layer.0.attention.self.query": (2, 8), "bert.encoder.layer.0.output.dense": (16, 4)}
    for name, m in layers.items():
        w, a = chosen.get(name, (8, 8))
        m.weight_quantizer.set_width(w)
        m.input_quantizer.set_width(a)
    widths = gated_model.deterministic_widths(model)
    assert widths["bert.encoder.layer.0.attention.self.query"] == (2, 8)
    got = gated_model.deterministic_bops(model, p)
    q, ffn = T * 32 * 32, T * 32 * 64
    quantized = 2 * (4 * q + 2 * ffn)
    hand_whole = ((quantized - q - ffn) * 64 + q * 2 * 8 + ffn * 16 * 4
                  + (2 * 2 * T * T * 32 + 32 * 32 + 64) * 1024)
    assert got["whole_model"]["bops"] == hand_whole
    assert got["whole_model"]["bops_fp32"] == (quantized + 2 * 2 * T * T * 32 + 32 * 32 + 64) * 1024
    assert got["adapted"]["bops"] == 5 * q * 64 + q * 16
    assert got["adapted"]["bops_fp32"] == 6 * q * 1024
    assert got["w8a8_reference_bops"] == quantized * 64 + (2 * 2 * T * T * 32 + 32 * 32 + 64) * 1024


def test_expected_bops_is_differentiable_and_matches_hard_when_gates_saturate(tiny_bert_dir):
    model = load_base_model(str(tiny_bert_dir), 2)
    p = profile_macs(model, T, encoder_linears(model), resolve_targets(model, "qkv"))
    inject(model, BLoRAConfig(seq_len=T))
    with torch.no_grad():  # saturate every gate where it stands (what phase 2 does)
        for la in roles.gates(model):
            la.copy_(torch.where(gates.is_open(la), 30.0, -30.0))
    expected = gated_model.expected_bops(model, p)["whole_model"]["bops"]
    hard = gated_model.deterministic_bops(model, p)["whole_model"]["bops"]
    assert expected.item() == pytest.approx(hard, rel=1e-5)
    expected.backward()
    q = next(iter(wrapped_linears(model).values())).weight_quantizer
    assert q.log_alpha.grad is not None


def test_totals_treat_missing_layers_as_fp32():
    from blora_export.bops import MacProfile

    p = MacProfile(8, {"a": 100, "b": 50}, 10, ["a"], ["a"])
    t = totals(p, {})
    assert t["whole_model"]["reduction"] == 0.0 and t["whole_model"]["bops_fp32"] == 160 * 1024
    t = totals(p, {"a": (4, 8)})
    assert t["whole_model"]["bops"] == 100 * 32 + 60 * 1024
    assert t["adapted"]["reduction"] == pytest.approx(1 - 32 / 1024)

"""One BOP cost model: MACs per Linear and per attention MatMul at sequence length T, BOPs = MACs * b_w * b_a.

The same functions take float tensors (expected widths: the differentiable training penalty) or ints
(deterministic widths: the audit).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

FP32 = 32


@dataclass
class MacProfile:
    """MACs for one sequence of length `seq_len` (batch 1)."""

    seq_len: int
    linears: dict[str, int]  # every nn.Linear, by module name, summed over its calls
    attention: int  # every other MatMul (attention scores and context, relative-position terms)
    quantizable: list[str] = field(default_factory=list)  # encoder Linears (quantized in the model)
    adapted: list[str] = field(default_factory=list)  # the adapted projections

    @property
    def max_quantized_macs(self) -> int:
        return max((self.linears[n] for n in self.quantizable), default=1)

    def to_dict(self) -> dict:
        return {"seq_len": self.seq_len, "linears": self.linears, "attention": self.attention,
                "quantizable": self.quantizable, "adapted": self.adapted}

    @classmethod
    def from_dict(cls, d: Mapping) -> MacProfile:
        return cls(int(d["seq_len"]), {k: int(v) for k, v in d["linears"].items()}, int(d["attention"]),
                   list(d["quantizable"]), list(d["adapted"]))


def bops(macs, w_bits, a_bits):
    return macs * w_bits * a_bits


def profile_macs(model: nn.Module, seq_len: int, quantizable: list[str], adapted: list[str]) -> MacProfile:
    """Count MACs by running one batch-1 sequence: Linear MACs by hooks, the rest from torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    linears: dict[str, int] = {}

    def hook(name):
        def count(module, inputs, _output):
            tokens = inputs[0].numel() // inputs[0].shape[-1]
            linears[name] = linears.get(name, 0) + tokens * module.in_features * module.out_features
        return count

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    was_training = model.training
    model.eval()
    try:
        ids = torch.ones(1, seq_len, dtype=torch.long)
        with FlopCounterMode(display=False) as counter:
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    total_macs = counter.get_total_flops() // 2
    return MacProfile(seq_len, linears, int(total_macs - sum(linears.values())), list(quantizable), list(adapted))


def adapter_branch(name: str, tokens, d_in: int, d_out: int, rank, a_bits) -> dict[str, tuple]:
    """The two products of an adapter shipped unmerged, name -> (MACs, w_bits, a_bits): x_q A^T (fp32 weights on
    the layer's quantized input) and its product with B (fp32 x fp32). Training (expected rank and widths) and
    the export plan (deterministic ones) both count them here; the audit reads them from the graph."""
    return {f"{name}.lora_A": (tokens * d_in * rank, FP32, a_bits),
            f"{name}.lora_B": (tokens * d_out * rank, FP32, FP32)}


def totals(profile: MacProfile, widths: Mapping[str, tuple], branches: Mapping[str, tuple] | None = None) -> dict:
    """Whole-model and adapted-projection BOPs for per-Linear (w_bits, a_bits); missing names are fp32.

    `branches` adds the products of adapters that run unmerged, name -> (MACs, w_bits, a_bits): they cost
    BOPs, but the fp32 reference stays the base model's (the budget is a fraction of that).
    Works with int widths (audit) and tensor widths (expected BOPs for training).
    """
    fp32 = FP32 * FP32
    whole = bops(profile.attention, FP32, FP32)
    for name, macs in profile.linears.items():
        w, a = widths.get(name, (FP32, FP32))
        whole = whole + bops(macs, w, a)
    for macs, w, a in (branches or {}).values():
        whole = whole + bops(macs, w, a)
    adapted = 0
    for name in profile.adapted:
        w, a = widths.get(name, (FP32, FP32))
        adapted = adapted + bops(profile.linears[name], w, a)
    whole_fp32 = (profile.attention + sum(profile.linears.values())) * fp32
    adapted_fp32 = sum(profile.linears[n] for n in profile.adapted) * fp32
    w8a8 = whole_fp32 - sum(profile.linears[n] for n in profile.quantizable) * (fp32 - 64)
    return {
        "whole_model": {"bops": whole, "bops_fp32": whole_fp32, "reduction": 1 - whole / whole_fp32},
        "adapted": {"bops": adapted, "bops_fp32": adapted_fp32,
                    "reduction": 1 - adapted / adapted_fp32 if adapted_fp32 else 0.0},
        "w8a8_reference_bops": w8a8,
    }


def fraction(t: dict):
    """Whole-model BOPs as a fraction of the fp32 model's: the unit of the prior's price and of the budget."""
    return t["whole_model"]["bops"] / t["whole_model"]["bops_fp32"]

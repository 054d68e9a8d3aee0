"""Prune closed ranks, merge adapters into W0, snap weights to their learned grids; build the float model.

W = W0 + scaling * B[:, kept] diag(E[kept]) A[kept], in the same operation order as training's
GatedLoRALinear.merged_weight (the deterministic gates of kept ranks are exactly 1, pruned ones exactly 0),
then snapped with THE quantize function training uses (ste.quantize_codes on the weight clamped to its range,
as the residual quantizer does). The result is a plain transformers model with nn.Linear / nn.Embedding modules holding
the snapped values: what torch.onnx exports before the Q/DQ pass.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..residual_quant import bounds
from ..ste import FLOAT_BITS, clamp_range, quantize_codes
from .plan import CompressionPlan, EmbeddingPlan, LinearPlan, WeightPlan


@dataclass
class MergedTensor:
    """A snapped weight: its float values (codes * scale, or the fp32 weight) and integer codes (None at 32 bits)."""

    values: np.ndarray  # float32, (d_out, d_in) for Linears, (rows, cols) for embeddings
    codes: np.ndarray | None  # int32, same shape


@dataclass
class Merged:
    model: nn.Module
    linears: dict[str, MergedTensor] = field(default_factory=dict)
    embeddings: dict[str, MergedTensor] = field(default_factory=dict)


def merge_weight(w0: torch.Tensor, lora_a: torch.Tensor | None, lora_b: torch.Tensor | None,
                 lora_e: torch.Tensor | None, plan: LinearPlan) -> torch.Tensor:
    """W0 + scaling * B[:, kept] diag(E[kept]) A[kept] (the gate values of kept ranks are exactly 1)."""
    if not plan.max_rank:
        return w0
    kept = list(plan.kept)
    b, e, a = lora_b[:, kept], lora_e[kept], lora_a[kept]
    return w0 + plan.scaling * (b * e) @ a


def _column(values: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(-1, 1)


def snap(w: torch.Tensor, bits: int, signed: bool, scale: tuple[float, ...],
         beta: tuple[float, ...]) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(integer codes, codes * scale) on the learned grid; 32 bits: (None, w)."""
    if bits >= FLOAT_BITS:
        return None, w
    s = _column(scale)
    low, high, _ = bounds(_column(beta), signed)
    codes = quantize_codes(clamp_range(w, low, high), s, bits, signed)
    return codes, codes * s


def snap_weight(w: torch.Tensor, plan: WeightPlan) -> tuple[torch.Tensor | None, torch.Tensor]:
    return snap(w, plan.bits, plan.signed, plan.scale, plan.beta)


def snap_embedding(w: torch.Tensor, plan: EmbeddingPlan) -> tuple[torch.Tensor | None, torch.Tensor]:
    return snap(w, plan.bits, True, plan.scale, plan.beta)


def _to_numpy(codes: torch.Tensor | None, values: torch.Tensor) -> MergedTensor:
    np_codes = None if codes is None else codes.detach().numpy().astype(np.int32)
    return MergedTensor(values.detach().numpy().astype(np.float32), np_codes)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@torch.no_grad()
def build_float_model(model: nn.Module, plan: CompressionPlan) -> Merged:
    """A copy of the checkpoint model with every wrapped module replaced by a plain one holding snapped values."""
    float_model = copy.deepcopy(model).eval()
    merged = Merged(float_model)
    for lp in plan.linears:
        module = float_model.get_submodule(lp.name)
        if lp.role != "quantized":
            merged.linears[lp.name] = _to_numpy(None, module.weight)
            continue
        base = module.base
        lora = (module.lora_A, module.lora_B, module.lora_E) if lp.max_rank else (None, None, None)
        codes, values = snap_weight(merge_weight(base.weight, *lora, lp), lp.weight)
        linear = nn.Linear(lp.d_in, lp.d_out, bias=lp.has_bias)
        linear.weight = nn.Parameter(values.clone(), requires_grad=False)
        if lp.has_bias:
            linear.bias = nn.Parameter(base.bias.detach().clone(), requires_grad=False)
        _set_module(float_model, lp.name, linear)
        merged.linears[lp.name] = _to_numpy(codes, values)
    for ep in plan.embeddings:
        module = float_model.get_submodule(ep.name)
        base = module.base
        codes, values = snap_embedding(base.weight, ep)
        emb = copy.deepcopy(base)
        emb.weight = nn.Parameter(values.clone(), requires_grad=False)
        _set_module(float_model, ep.name, emb)
        merged.embeddings[ep.name] = _to_numpy(codes, values)
    for p in float_model.parameters():
        p.requires_grad_(False)
    return merged

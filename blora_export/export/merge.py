"""Prune closed ranks, merge adapters into W0, snap weights to their learned grids; build the float model.

W = W0 + lora.lora_delta(A[kept], B[:, kept], E[kept]), the formula training's GatedLoRALinear.merged_weight
evaluates (the deterministic gates of kept ranks are exactly 1, pruned ones exactly 0),
then snapped with THE quantize function training uses (ste.quantize_codes on the learned grid). The result is
a plain transformers model with nn.Linear / nn.Embedding modules holding the snapped values: what torch.onnx
exports before the Q/DQ pass.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..inject import replace_wrappers
from ..lora import kept_components, lora_delta, lora_factors
from ..ste import FLOAT_BITS, quantize_codes
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
    # unmerged adapters: layer -> (A[kept], scaling * B[:, kept] diag(E[kept])), the fp32 branch's two weights
    branches: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


class UnmergedAdapterLinear(nn.Module):
    """The snapped W0 and, beside it on the same input, the kept adapter as an fp32 branch: what a shared base
    with a separately shipped adapter computes (GatedLoRALinear's unmerged forward at the test-time gates)."""

    def __init__(self, linear: nn.Linear, lora_a: torch.Tensor, scaled_b: torch.Tensor):
        super().__init__()
        self.linear = linear
        self.lora_A = nn.Linear(lora_a.shape[1], lora_a.shape[0], bias=False)
        self.lora_A.weight = nn.Parameter(lora_a.detach().clone(), requires_grad=False)
        self.lora_B = nn.Linear(scaled_b.shape[1], scaled_b.shape[0], bias=False)
        self.lora_B.weight = nn.Parameter(scaled_b.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) + self.lora_B(self.lora_A(x))


def merge_weight(w0: torch.Tensor, lora_a: torch.Tensor | None, lora_b: torch.Tensor | None,
                 lora_e: torch.Tensor | None, plan: LinearPlan) -> torch.Tensor:
    """W0 + scaling * B[:, kept] diag(E[kept]) A[kept] (the gate values of kept ranks are exactly 1)."""
    if not plan.max_rank:
        return w0
    return w0 + lora_delta(*kept_components(lora_a, lora_b, lora_e, plan.kept), plan.scaling)


def _column(values: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).reshape(-1, 1)


def snap(w: torch.Tensor, bits: int, signed: bool, scale: tuple[float, ...]) -> tuple[torch.Tensor | None,
                                                                                        torch.Tensor]:
    """(integer codes, codes * scale) on the learned symmetric grid (training's quantize function); 32 bits:
    (None, w)."""
    if bits >= FLOAT_BITS:
        return None, w
    s = _column(scale)
    codes = quantize_codes(w, s, bits, signed)
    return codes, codes * s


def snap_weight(w: torch.Tensor, plan: WeightPlan) -> tuple[torch.Tensor | None, torch.Tensor]:
    return snap(w, plan.bits, plan.signed, plan.scale)


def snap_embedding(w: torch.Tensor, plan: EmbeddingPlan) -> tuple[torch.Tensor | None, torch.Tensor]:
    return snap(w, plan.bits, True, plan.scale)


def _to_numpy(codes: torch.Tensor | None, values: torch.Tensor) -> MergedTensor:
    np_codes = None if codes is None else codes.detach().numpy().astype(np.int32)
    return MergedTensor(values.detach().numpy().astype(np.float32), np_codes)


def _plain_linear(wrapper: nn.Module, lp: LinearPlan, merged: Merged) -> nn.Module:
    base = wrapper.base
    lora = (wrapper.lora_A, wrapper.lora_B, wrapper.lora_E) if lp.max_rank else (None, None, None)
    w = base.weight if lp.unmerged else merge_weight(base.weight, *lora, lp)
    codes, values = snap_weight(w, lp.weight)
    linear = nn.Linear(lp.d_in, lp.d_out, bias=lp.has_bias)
    linear.weight = nn.Parameter(values.clone(), requires_grad=False)
    if lp.has_bias:
        linear.bias = nn.Parameter(base.bias.detach().clone(), requires_grad=False)
    merged.linears[lp.name] = _to_numpy(codes, values)
    if not lp.unmerged:
        return linear
    folded_b, a = lora_factors(*kept_components(*lora, lp.kept))
    scaled_b = folded_b * lp.scaling
    merged.branches[lp.name] = (a.detach().numpy().astype(np.float32), scaled_b.detach().numpy().astype(np.float32))
    return UnmergedAdapterLinear(linear, a, scaled_b)


def _plain_embedding(wrapper: nn.Module, ep: EmbeddingPlan, merged: Merged) -> nn.Embedding:
    codes, values = snap_embedding(wrapper.base.weight, ep)
    emb = copy.deepcopy(wrapper.base)
    emb.weight = nn.Parameter(values.clone(), requires_grad=False)
    merged.embeddings[ep.name] = _to_numpy(codes, values)
    return emb


@torch.no_grad()
def build_float_model(model: nn.Module, plan: CompressionPlan) -> Merged:
    """A copy of the checkpoint model with every wrapped module replaced by a plain one holding snapped values."""
    merged = Merged(copy.deepcopy(model).eval())
    linears = {lp.name: lp for lp in plan.linears}
    embeddings = {ep.name: ep for ep in plan.embeddings}
    replace_wrappers(merged.model, lambda name, wrapper: _plain_embedding(wrapper, embeddings[name], merged)
                     if name in embeddings else _plain_linear(wrapper, linears[name], merged))
    for lp in plan.linears:
        if lp.role != "quantized":  # fp32 Linears (pooler, classifier): their values, for the graph pass
            merged.linears[lp.name] = _to_numpy(None, merged.model.get_submodule(lp.name).weight)
    for p in merged.model.parameters():
        p.requires_grad_(False)
    return merged

"""Gated LoRA linear layer: W_eff = W0 + (alpha/r) B diag(g * e) A, quantized as a whole, plus its input."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import gates, roles
from .config import BLoRAConfig, QuantizerSpec
from .quantizer import BayesianBitsQuantizer
from .sampled_linear import linear


def lora_factors(lora_a: torch.Tensor, lora_b: torch.Tensor,
                 gated_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The adapter as two factors (B diag(g * e), A): the gated diagonal folded into B (PEFT's lora_B, lora_A)."""
    return lora_b * gated_e, lora_a


def lora_delta(lora_a: torch.Tensor, lora_b: torch.Tensor, gated_e: torch.Tensor, scaling: float) -> torch.Tensor:
    """(alpha/r) B diag(g * e) A: the one formula of the adapter's weight update (training, merge and PEFT export).

    `gated_e` is g * e: the sampled or deterministic rank mask times E in training, E of the kept ranks at export
    (their gates are exactly 1). Training and merging evaluate it in this same operation order.
    """
    folded_b, a = lora_factors(lora_a, lora_b, gated_e)
    return scaling * folded_b @ a


def kept_components(lora_a: torch.Tensor, lora_b: torch.Tensor, lora_e: torch.Tensor,
                    kept: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(A[kept], B[:, kept], E[kept]): the rank components a pruned adapter keeps."""
    index = list(kept)
    return lora_a[index], lora_b[:, index], lora_e[index]


class GatedLoRALinear(nn.Module):
    """A frozen nn.Linear with an optional rank-gated adapter and Bayesian Bits weight/input quantizers.

    Deployed merged (the default) the adapter is folded into W0 and the merged weight is quantized at every step,
    so merging at export is exact; its rank costs no inference MACs and is not learned (all ranks kept).
    Deployed as an adapter (shipped unmerged on a shared base) W0 is quantized alone and the adapter runs as an
    fp32 branch on the same quantized input, y = x_q Q(W0)^T + (alpha/r) ((x_q A^T) diag(g e)) B^T, whose rank
    gates are learned and charged their BOPs. Without an adapter (``max_rank == 0``) it is a quantized Linear.
    """

    TRAINED = {roles.ADAPTER: ("lora_A", "lora_E", "lora_B"), roles.GATE: ("rank_log_alpha",)}

    def __init__(self, base: nn.Linear, cfg: BLoRAConfig, adapted: bool):
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        d_out, d_in = base.weight.shape
        self.max_rank = cfg.max_rank if adapted else 0
        self.learn_rank = cfg.learn_rank
        self.unmerged = cfg.deploy == "adapter"
        self.sampled_rank = cfg.gate_sampling
        # A quantized W0 alone (no merged adapter) needs its gradient only for its quantizer: a sampled estimate
        # serves, at a fraction of the product's cost. A merged weight's gradient also trains the adapter: exact.
        frozen = self.unmerged or not self.max_rank
        self.weight_grad_fraction = cfg.frozen_weight_grad_fraction if frozen else 1.0
        if self.max_rank:
            r = self.max_rank
            self.scaling = cfg.lora_alpha / r
            self.lora_A = nn.Parameter(torch.empty(r, d_in))
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            self.lora_E = nn.Parameter(torch.ones(r))
            self.lora_B = nn.Parameter(torch.zeros(d_out, r))
            # g_1 is always on: gates for ranks 2..r.
            self.rank_log_alpha = nn.Parameter(torch.full((r - 1,), cfg.gate_init), requires_grad=cfg.learn_rank)
        range_shape = (d_out, 1) if cfg.per_channel_weights else ()
        self.weight_quantizer = BayesianBitsQuantizer(cfg.weight_spec(), range_shape, cfg.gate_init)
        self.input_quantizer = BayesianBitsQuantizer(cfg.act_spec(), (), cfg.gate_init)
        self.weight_quantizer.init_range_from(base.weight)

    # ---- rank -----------------------------------------------------------------------------
    def rank_mask(self) -> torch.Tensor:
        """Nested rank mask: the test-time prefix of ones, with straight-through gradients (or samples) while the
        rank is learned."""
        la = self.rank_log_alpha
        if self.training and self.learn_rank:
            z = gates.sample(la) if self.sampled_rank else gates.straight_through(la)
        else:
            z = gates.deterministic(la)
        return torch.cat([la.new_ones(1), torch.cumprod(z, 0)])

    def deterministic_rank(self) -> int:
        return 1 + gates.nested_open_count(self.rank_log_alpha.detach()) if self.max_rank else 0

    def expected_rank(self) -> torch.Tensor:
        """E[rank] = 1 + sum_n prod_{j<=n} P(g_j > 0): differentiable while the rank is learned."""
        if not (self.max_rank and self.learn_rank):
            return torch.tensor(float(self.deterministic_rank()))
        return 1 + torch.cumprod(gates.chain_probabilities(self.rank_log_alpha), 0).sum()

    # ---- weights --------------------------------------------------------------------------
    def merged_weight(self) -> torch.Tensor:
        """W0 + (alpha/r) B diag(g * e) A, before quantization."""
        w = self.base.weight
        if self.max_rank:
            w = w + lora_delta(self.lora_A, self.lora_B, self.rank_mask() * self.lora_E, self.scaling)
        return w

    def effective_weight(self) -> torch.Tensor:
        """The quantized weight of the main product: the merged weight, or W0 alone for an unmerged adapter."""
        return self.weight_quantizer(self.base.weight if self.unmerged else self.merged_weight())

    def widths(self) -> tuple[int, int]:
        """(weight bits, input activation bits) under the deterministic gates."""
        return self.weight_quantizer.effective_bits(), self.input_quantizer.effective_bits()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quantizer(x)
        y = linear(x, self.effective_weight(), self.base.bias, self.weight_grad_fraction)
        if self.unmerged and self.max_rank:
            y = y + F.linear(F.linear(x, self.lora_A) * (self.rank_mask() * self.lora_E), self.lora_B) * self.scaling
        return y


class QuantizedEmbedding(nn.Module):
    """A frozen embedding table fake-quantized weight-only per row at a fixed width (no MACs, no BOPs)."""

    def __init__(self, base: nn.Embedding, bits: int, fit_range: bool = True):
        """`fit_range`: search each row's least-error range now (a few seconds for a word table); False when a
        checkpoint's stored ranges are loaded next."""
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        self.bits = bits
        spec = QuantizerSpec(allowed=(bits,), init_bits=bits, learn=False, relative_range=False)
        self.weight_quantizer = BayesianBitsQuantizer(spec, (base.num_embeddings, 1), learn_range=False)
        if fit_range:
            self.weight_quantizer.init_range_from(base.weight, least_error=True)
        self._cache: tuple[tuple, torch.Tensor] | None = None

    @property
    def weight(self) -> torch.Tensor:
        # The table is frozen and its width fixed: re-quantize only when a tensor was loaded, changed or moved
        # (a word table is ~12M values, 0.17 s per step on 2 cores otherwise).
        w, beta = self.base.weight, self.weight_quantizer.log_hi
        key = (w._version, w.data_ptr(), beta._version, beta.data_ptr())
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.weight_quantizer(w))
        return self._cache[1]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b = self.base
        return F.embedding(ids, self.weight, b.padding_idx, b.max_norm, b.norm_type, b.scale_grad_by_freq, b.sparse)

"""Gated LoRA linear layer: W_eff = W0 + (alpha/r) B diag(g * e) A, quantized as a whole, plus its input."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import gates, roles
from .config import BLoRAConfig, QuantizerSpec
from .quantizer import BayesianBitsQuantizer


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

    Without an adapter (``max_rank == 0``) it is a quantized Linear: the same quantizers, no LoRA factors.
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
        """Nested rank mask: a prefix of ones (deterministic) or the cumulative product of samples (training)."""
        la = self.rank_log_alpha
        z = gates.sample(la) if (self.training and self.learn_rank) else gates.deterministic(la)
        return torch.cat([la.new_ones(1), torch.cumprod(z, 0)])

    def deterministic_rank(self) -> int:
        return 1 + gates.nested_open_count(self.rank_log_alpha.detach()) if self.max_rank else 0

    def rank_regularizer(self, lambda_r: float) -> torch.Tensor:
        """lambda_r * sum_n prod_{j<=n} P(g_j > 0): the nested prior's penalty."""
        if not (self.max_rank and self.learn_rank):
            return self.base.weight.new_zeros(())
        return lambda_r * torch.cumprod(gates.prob_open(self.rank_log_alpha), 0).sum()

    # ---- weights --------------------------------------------------------------------------
    def merged_weight(self) -> torch.Tensor:
        """W0 + (alpha/r) B diag(g * e) A, before quantization."""
        w = self.base.weight
        if self.max_rank:
            w = w + lora_delta(self.lora_A, self.lora_B, self.rank_mask() * self.lora_E, self.scaling)
        return w

    def effective_weight(self) -> torch.Tensor:
        return self.weight_quantizer(self.merged_weight())

    def widths(self) -> tuple[int, int]:
        """(weight bits, input activation bits) under the deterministic gates."""
        return self.weight_quantizer.effective_bits(), self.input_quantizer.effective_bits()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_quantizer(x), self.effective_weight(), self.base.bias)


class QuantizedEmbedding(nn.Module):
    """A frozen embedding table fake-quantized weight-only per row at a fixed width (no MACs, no BOPs)."""

    def __init__(self, base: nn.Embedding, bits: int):
        super().__init__()
        self.base = base
        base.weight.requires_grad_(False)
        self.bits = bits
        spec = QuantizerSpec(allowed=(bits,), init_bits=bits, learn=False)
        self.weight_quantizer = BayesianBitsQuantizer(spec, (base.num_embeddings, 1), learn_range=False)
        self.weight_quantizer.init_range_from(base.weight)
        self._cache: tuple[tuple, torch.Tensor] | None = None

    @property
    def weight(self) -> torch.Tensor:
        # The table is frozen and its width fixed: re-quantize only when a tensor was loaded, changed or moved
        # (a word table is ~12M values, 0.17 s per step on 2 cores otherwise).
        w, beta = self.base.weight, self.weight_quantizer.beta
        key = (w._version, w.data_ptr(), beta._version, beta.data_ptr())
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.weight_quantizer(w))
        return self._cache[1]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b = self.base
        return F.embedding(ids, self.weight, b.padding_idx, b.max_norm, b.norm_type, b.scale_grad_by_freq, b.sparse)

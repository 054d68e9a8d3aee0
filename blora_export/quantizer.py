"""Bayesian Bits quantizer for one tensor: learned range, nested residual gates over 2/4/8/16/32 bits.

The residual at level b is the difference of consecutive grids, x_hat_b - x_hat_{b/2}, with
x_hat_b = fake_quantize(clip(x), s_b, b). This is Bayesian Bits' decomposition with the grids
clamped to the code range, so the nested sum at an effective width b equals the plain quantize
function at b exactly (up to float summation), including values clipped to the range ends.
"""

from __future__ import annotations

import torch
from torch import nn

from . import gates, roles
from .config import QuantizerSpec
from .residual_quant import bounds, residual_fake_quantize
from .ste import FLOAT_BITS, WIDTHS, step_size


class BayesianBitsQuantizer(nn.Module):
    TRAINED = {roles.GATE: ("log_alpha",), roles.RANGE: ("beta",), roles.RECORD: ("signed", "initialized")}

    def __init__(self, spec: QuantizerSpec, range_shape: tuple[int, ...] = (), gate_init: float = gates.INIT_OPEN,
                 learn_range: bool = True):
        super().__init__()
        allowed = sorted(spec.allowed)
        self.min_bits, self.max_bits = allowed[0], allowed[-1]
        self.learn = spec.learn
        # One gate per level above the minimum width; levels above the maximum do not exist.
        self.levels = [b for b in WIDTHS if self.min_bits < b <= self.max_bits]
        init = [gate_init if b <= spec.init_bits else -gate_init for b in self.levels]
        self.log_alpha = nn.Parameter(torch.tensor(init, dtype=torch.float32), requires_grad=spec.learn)
        self.beta = nn.Parameter(torch.ones(range_shape), requires_grad=learn_range)
        self.register_buffer("signed", torch.tensor(True))
        self.register_buffer("initialized", torch.tensor(False))
        self._calib_min: torch.Tensor | None = None
        self._calib_absmax: torch.Tensor | None = None
        self.calibrating = False

    # ---- range initialisation -------------------------------------------------------------
    @torch.no_grad()
    def init_range_from(self, x: torch.Tensor) -> None:
        """Weights: beta = max |x| (per output channel when beta has one row per channel)."""
        absmax = x.abs().amax(dim=tuple(range(1, x.dim())), keepdim=True) if self.beta.dim() else x.abs().max()
        self.beta.copy_(absmax.reshape(self.beta.shape).clamp_min(1e-8))
        self.signed.fill_(bool((x < 0).any()) or self.beta.dim() > 0)
        self.initialized.fill_(True)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Calibration: accumulate the range of activations over several batches."""
        lo, hi = x.detach().min().float(), x.detach().abs().max().float()
        self._calib_min = lo if self._calib_min is None else torch.minimum(self._calib_min, lo)
        self._calib_absmax = hi if self._calib_absmax is None else torch.maximum(self._calib_absmax, hi)

    @torch.no_grad()
    def finish_calibration(self) -> None:
        if self._calib_absmax is None:
            return  # never called during calibration (e.g. an unused layer): keep the default range
        self.beta.fill_(float(self._calib_absmax.clamp_min(1e-8)))
        self.signed.fill_(bool(self._calib_min < 0))
        self.initialized.fill_(True)
        self._calib_min = self._calib_absmax = None

    # ---- widths ---------------------------------------------------------------------------
    @property
    def is_identity(self) -> bool:
        return self.max_bits >= FLOAT_BITS and self.min_bits >= FLOAT_BITS

    def effective_bits(self) -> int:
        """The deterministic width: the minimum doubled once per consecutive open gate."""
        return self.min_bits * 2 ** gates.nested_open_count(self.log_alpha.detach())

    @torch.no_grad()
    def set_width(self, bits: int, strength: float = gates.INIT_OPEN) -> None:
        """Set the gates so that the deterministic width is `bits` (log_alpha = +/- strength)."""
        if not self.min_bits <= bits <= self.max_bits:
            raise ValueError(f"width {bits} is outside this quantizer's range {self.min_bits}..{self.max_bits}")
        self.log_alpha.copy_(torch.tensor([strength if b <= bits else -strength for b in self.levels]))

    def expected_bits(self) -> torch.Tensor:
        """E[width] under the gates' P(z > 0): differentiable (constant when widths are fixed)."""
        if not self.learn or not self.levels:
            return torch.tensor(float(self.effective_bits()), device=self.beta.device)
        increments = torch.tensor([b / 2 for b in self.levels], device=self.log_alpha.device)
        return self.min_bits + (increments * torch.cumprod(gates.prob_open(self.log_alpha), 0)).sum()

    def regularizer(self, macs_fraction: float, mu: float) -> torch.Tensor:
        """BOP-weighted chain penalty: lambda_k = mu * b_k * MACs / max MACs."""
        if not self.learn or not self.levels:
            return self.log_alpha.new_zeros(())
        weights = torch.tensor([mu * b * macs_fraction for b in self.levels], device=self.log_alpha.device)
        return gates.chain_regularizer(self.log_alpha, weights)

    # ---- forward --------------------------------------------------------------------------
    def positive_beta(self) -> torch.Tensor:
        return self.beta.abs() + 1e-12

    def range_bounds(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(low, high, R): [-beta, beta] with R = 2 beta when signed, [0, beta] with R = beta otherwise."""
        return bounds(self.positive_beta(), bool(self.signed))

    def scale(self, bits: int) -> torch.Tensor:
        """Step size s_b of the learned range at width b (what export writes as the Q/DQ scale)."""
        return step_size(self.range_bounds()[2], bits).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observe(x)
            return x
        if self.is_identity:
            return x
        if not (self.training and self.learn):
            bits, mask = (self.effective_bits(),), self.log_alpha.new_zeros(0)
        else:
            mask = torch.cumprod(gates.sample(self.log_alpha), 0)
            # An exactly-closed gate zeroes every higher residual and carries no gradient: stop there.
            closed = (mask == 0).nonzero()
            n = int(closed[0, 0]) if len(closed) else len(self.levels)
            bits, mask = (self.min_bits, *self.levels[:n]), mask[:n]
        if bits == (FLOAT_BITS,):
            return x
        return residual_fake_quantize(x, self.positive_beta(), mask, bits, bool(self.signed))

"""Bayesian Bits quantizer for one tensor: learned range, nested residual gates over 2/4/8/16/32 bits.

The residual at level b is the difference of consecutive grids, x_hat_b - x_hat_{b/2}, each grid clamped to its
code range, so the nested sum at an effective width b equals the plain quantize function at b exactly.

Ranges. Weights use a symmetric signed range [-beta, beta] (per output channel by default); activations an
affine unsigned one [lo, hi] with lo <= 0 <= hi and a zero point, as onnxruntime quantizes activations, so a
one-sided input (a GELU output, min -0.17) does not waste half the grid. Both ends are learned relative to a
reference scale set at initialisation: hi = reference * exp(log_hi) (lo likewise), so a range learning rate is
a relative change per step whatever the tensor's scale (`QuantizerSpec.relative_range`; off: the ends are
learned in absolute units). Activation ranges start from a calibration that minimises the quantization error
at the initial width over several batches (`calibration="mse"`; or max-abs).

Gates. In training the forward pass uses the deterministic test-time gates, so training sees the exported model,
and the gradient reaches log_alpha through P(z > 0) (straight-through); `sampled=True` draws hard-concrete samples
instead. Only the boundary gates of the nested chain learn at a time (the top open level and the first closed one,
gates.chain_probabilities), so a width moves one level at a time. A level whose gate is at or below
`gates.HARD_OFF` is exactly 0 and the levels above it are not computed (Bayesian Bits' hard-off rule); closed
gates above that line still get gradients and can reopen.
"""

from __future__ import annotations

import torch
from torch import nn

from . import gates, roles
from .config import QuantizerSpec
from .residual_quant import grid, residual_fake_quantize
from .ste import FLOAT_BITS, WIDTHS, fake_quantize

CALIBRATION_SAMPLES = 1 << 14  # values kept per batch, and in all, for the range search
_CLIP_RATIOS = torch.linspace(1.0, 0.2, 17)  # candidate range ends, as fractions of the observed extremes


class BayesianBitsQuantizer(nn.Module):
    TRAINED = {roles.GATE: ("log_alpha",), roles.RANGE: ("log_hi", "log_lo"),
               roles.RECORD: ("reference", "signed", "negative", "initialized")}

    def __init__(self, spec: QuantizerSpec, range_shape: tuple[int, ...] = (), gate_init: float = gates.INIT_OPEN,
                 learn_range: bool = True):
        super().__init__()
        allowed = sorted(spec.allowed)
        self.min_bits, self.max_bits = allowed[0], allowed[-1]
        self.learn = spec.learn
        self.relative = spec.relative_range
        self.calibration = spec.calibration
        self.affine = spec.affine
        self.sampled = spec.sampled
        self.hard_off = spec.hard_off
        # One gate per level above the minimum width; levels above the maximum do not exist. Levels above the
        # initial width start closed but alive (above the hard-off line), so the task can still open them.
        self.levels = [b for b in WIDTHS if self.min_bits < b <= self.max_bits]
        init = [gate_init if b <= spec.init_bits else gates.INIT_CLOSED for b in self.levels]
        self.log_alpha = nn.Parameter(torch.tensor(init, dtype=torch.float32), requires_grad=spec.learn)
        # hi = reference * exp(log_hi) (relative) or log_hi itself (absolute); lo likewise with a minus sign
        self.log_hi = nn.Parameter(torch.zeros(range_shape), requires_grad=learn_range)
        self.log_lo = nn.Parameter(torch.zeros(range_shape), requires_grad=learn_range)  # used when negative
        self.register_buffer("reference", torch.ones(range_shape))
        self.register_buffer("signed", torch.tensor(False))  # symmetric signed grid (weights, embeddings)
        self.register_buffer("negative", torch.tensor(False))  # affine grid: lo < 0 (else lo = 0)
        self.register_buffer("initialized", torch.tensor(False))
        self._samples: list[torch.Tensor] = []
        self._extremes: tuple[torch.Tensor, torch.Tensor] | None = None
        self.calibrating = False

    # ---- the range ------------------------------------------------------------------------
    def _end(self, param: torch.Tensor) -> torch.Tensor:
        return self.reference * torch.exp(param) if self.relative else param.abs() + 1e-12

    @torch.no_grad()
    def set_range(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """Put the learned ends at [low, high] (low <= 0 < high); the reference scale becomes the range."""
        high = high.clamp_min(1e-8)
        if self.relative:
            self.reference.copy_(high.reshape(self.reference.shape))
            self.log_hi.zero_()
            self.log_lo.copy_(torch.log((-low).clamp_min(1e-12) / high).reshape(self.log_lo.shape))
        else:
            self.log_hi.copy_(high.reshape(self.log_hi.shape))
            self.log_lo.copy_((-low).clamp_min(1e-12).reshape(self.log_lo.shape))
        self.negative.fill_(bool((low < 0).any()) and not bool(self.signed))
        self.initialized.fill_(True)

    def range_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(low, high): [-beta, beta] when signed; [lo, hi] with lo < 0 (negative) or lo = 0 otherwise."""
        high = self._end(self.log_hi)
        if bool(self.signed):
            return -high, high
        low = -self._end(self.log_lo) if bool(self.negative) else torch.zeros_like(high)
        return low, high

    def grid(self, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(step, zero point) at width b: what export writes as the Q/DQ scale and zero point."""
        low, high = self.range_bounds()
        scale, zero = grid(low, high, bits, bool(self.signed))
        return scale.detach(), zero.detach()

    def scale(self, bits: int) -> torch.Tensor:
        return self.grid(bits)[0]

    @torch.no_grad()
    def init_range_from(self, x: torch.Tensor, least_error: bool = False) -> None:
        """Weights: a symmetric range beta = max |x| per output channel (or per tensor); `least_error`: per row,
        the fraction of max |x| (_CLIP_RATIOS) with the least squared error at the initial width (fixed tables,
        whose range is never learned: clipping a few outliers buys a finer grid for the rest)."""
        self.signed.fill_(True)
        dims = tuple(range(1, x.dim()))
        absmax = x.abs().amax(dim=dims, keepdim=True) if self.log_hi.dim() else x.abs().max()
        if least_error:
            absmax = _least_error_range(x, absmax, self.effective_bits())
        absmax = absmax.reshape(self.log_hi.shape)
        self.set_range(-absmax, absmax)

    # ---- calibration (activations) --------------------------------------------------------
    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Calibration: keep the extremes and a random sample of the values of one more batch."""
        flat = x.detach().float().reshape(-1)
        lo, hi = flat.min(), flat.max()
        self._extremes = (lo, hi) if self._extremes is None else (torch.minimum(self._extremes[0], lo),
                                                                   torch.maximum(self._extremes[1], hi))
        if self.calibration == "mse":
            pick = torch.randint(0, flat.numel(), (min(flat.numel(), CALIBRATION_SAMPLES),), device=flat.device)
            self._samples.append(flat[pick])

    @torch.no_grad()
    def finish_calibration(self) -> None:
        if self._extremes is None:
            return  # never called during calibration (e.g. an unused layer): keep the default range
        lo = torch.minimum(self._extremes[0], torch.zeros(()))
        hi = self._extremes[1].clamp_min(1e-8)
        if not self.affine and bool(lo < 0):  # a symmetric signed grid over the larger magnitude
            self.signed.fill_(True)
            hi = torch.maximum(hi, -lo)
            lo = -hi
        if self.calibration == "mse" and self._samples and not bool(self.signed):
            values = torch.cat(self._samples)
            values = values[torch.randperm(values.numel())[:CALIBRATION_SAMPLES]]
            lo, hi = _mse_range(values, lo, hi, self.effective_bits())
        self.set_range(lo, hi)
        self._samples, self._extremes = [], None

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
            return torch.tensor(float(self.effective_bits()), device=self.log_hi.device)
        increments = torch.tensor([b / 2 for b in self.levels], device=self.log_alpha.device)
        return self.min_bits + (increments * torch.cumprod(gates.chain_probabilities(self.log_alpha), 0)).sum()

    # ---- forward --------------------------------------------------------------------------
    def _training_mask(self) -> tuple[tuple[int, ...], torch.Tensor, tuple[int, ...] | None]:
        """(widths, cumulative gate products, the products whose gradient a gate needs: None for all)."""
        la = self.log_alpha
        n = len(self.levels)
        if self.hard_off:
            dead = (la.detach() <= gates.HARD_OFF).nonzero()
            n = int(dead[0, 0]) if len(dead) else n
        z = gates.sample(la[:n]) if self.sampled else gates.straight_through(la[:n])
        mask = torch.cumprod(z, 0)
        if self.sampled:  # an exactly-closed sample zeroes every higher residual and carries no gradient
            closed = (mask == 0).nonzero()
            n = int(closed[0, 0]) if len(closed) else n
            mask = mask[:n]
        return (self.min_bits, *self.levels[:n]), mask, None if self.sampled else gates.boundary_reach(la[:n])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observe(x)
            return x
        if self.is_identity:
            return x
        if not (self.training and self.learn):
            bits, mask, mask_grad = (self.effective_bits(),), self.log_alpha.new_zeros(0), ()
        else:
            bits, mask, mask_grad = self._training_mask()
        if bits == (FLOAT_BITS,):
            return x
        low, high = self.range_bounds()
        return residual_fake_quantize(x, low, high, mask, bits, bool(self.signed), mask_grad)


def _least_error_range(x: torch.Tensor, absmax: torch.Tensor, bits: int) -> torch.Tensor:
    """Per row of x, the symmetric range end r * absmax (r in _CLIP_RATIOS) with the least squared error."""
    if bits >= FLOAT_BITS:
        return absmax
    dims = tuple(range(1, x.dim()))
    best, best_error = absmax, None
    for ratio in _CLIP_RATIOS:
        beta = (absmax * ratio).clamp_min(1e-8)
        scale, _ = grid(-beta, beta, bits, True)
        error = ((fake_quantize(x, scale, bits, True) - x) ** 2).sum(dim=dims, keepdim=True)
        if best_error is None:
            best, best_error = beta, error
        else:
            better = error < best_error
            best, best_error = torch.where(better, beta, best), torch.where(better, error, best_error)
    return best


def _mse_range(values: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> tuple[torch.Tensor,
                                                                                             torch.Tensor]:
    """The range [lo * a, hi * b] (a, b from _CLIP_RATIOS) with the least squared quantization error of `values`
    on the affine grid of width `bits`: the upper end first, then the lower end, then the upper end again
    (coordinate descent: the two ends barely interact)."""
    if bits >= FLOAT_BITS:
        return lo, hi

    def error(low: torch.Tensor, high: torch.Tensor) -> float:
        scale, zero = grid(low, high, bits, False)
        return float(((fake_quantize(values, scale, bits, False, zero) - values) ** 2).sum())

    low, high = lo, hi
    for end in ("high", "low", "high"):
        if end == "low" and not bool(lo < 0):
            continue
        candidates = [(lo * r, high) for r in _CLIP_RATIOS] if end == "low" else [(low, hi * r) for r in _CLIP_RATIOS]
        low, high = min(candidates, key=lambda c: error(*c))
    return low, high

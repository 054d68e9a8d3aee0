"""Fused, memory-lean Bayesian Bits fake quantization with straight-through gradients.

out = x_hat_{b_0} + sum_i M_i (x_hat_{b_i} - x_hat_{b_{i-1}}),  x_hat_b = (q_b - z_b) s_b,  x_hat_32 = x,
where M_i is the cumulative product of the level gates and each width b has its own grid over the range
[low, high] (`grid`): symmetric signed (z = 0, restricted codes; weights) or affine unsigned (zero point z_b;
activations). Composing this from autograd ops saves several full-size tensors per level for the backward pass
(gigabytes for a small encoder at batch 32 x 64); this Function saves only x and recomputes the grids in
backward. It evaluates the sum as sum_j (M_j - M_{j+1}) x_hat_j, skipping zero coefficients, with the values
of `ste.fake_quantize`: for a one-hot coefficient vector (every gate exactly 0 or 1) the output is bitwise the
plain quantizer's. The elementwise work runs in fused kernels (fused.py).

Gradients (round and the zero point straight-through): x passes where its code is not clamped; the step s gets
(q - z) - x/s inside the range and (q - z) - lo/s at a clamped value of an affine grid (which follows its range
end); the lower bound also gets 1 from the zero point there; mask entry i gets
<g, x_hat_{i+1} - x_hat_i>, only for the entries asked for (a straight-through chain needs those its boundary
gates reach: one to three).
"""

from __future__ import annotations

import torch

from . import fused
from .ste import FLOAT_BITS, code_range, quantize_codes, step_size, zero_point


def grid(low: torch.Tensor, high: torch.Tensor, bits: int, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(step s_b, zero point z_b) of width `bits` over [low, high]; z = 0 for a symmetric signed grid."""
    scale = step_size(high - low, bits)
    return scale, (torch.zeros_like(scale) if signed else zero_point(low, scale, bits))


def grid_quantize(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, bits: int,
                  signed: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, step, zero point) of x on the width-`bits` grid over [low, high]: THE quantize function on the
    range as training defines it (evaluation, merge and export call this)."""
    scale, zero = grid(low, high, bits, signed)
    return quantize_codes(x, scale, bits, signed, zero), scale, zero


def _coefficients(mask: torch.Tensor) -> torch.Tensor:
    """c_j = M_j - M_{j+1} (M_0 = 1, M_{n+1} = 0): out = sum_j c_j x_hat_j, the telescoped residual sum."""
    cumulative = torch.cat([mask.new_ones(1), mask, mask.new_zeros(1)])
    return cumulative[:-1] - cumulative[1:]


def _bounds(x: torch.Tensor, bits: int, signed: bool) -> tuple[torch.Tensor, torch.Tensor]:
    qmin, qmax = code_range(bits, signed)
    return x.new_tensor(float(qmin)), x.new_tensor(float(qmax))


def _grid_args(x, low, high, bits, signed) -> tuple[torch.Tensor, ...] | None:
    """(scale, zero, qmin, qmax) of width `bits`, the fused kernels' description of a grid; None at 32 bits."""
    if bits >= FLOAT_BITS:
        return None
    return (*grid(low, high, bits, signed), *_bounds(x, bits, signed))


class _ResidualFakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, low, high, mask, bits, signed, mask_grad):
        ctx.save_for_backward(x, low, high, mask)
        ctx.bits, ctx.signed, ctx.mask_grad = bits, signed, mask_grad
        # Only levels with a non-zero coefficient are computed: with deterministic gates the mask is one-hot,
        # and a one-hot mask gives that width's grid bitwise.
        coeff = _coefficients(mask)
        out = None
        for j, (b, c) in enumerate(zip(bits, coeff.tolist(), strict=True)):
            if c == 0:
                continue
            args = _grid_args(x, low, high, b, signed)
            level = x if args is None else fused.level(x, *args)
            term = level if c == 1 else coeff[j] * level
            out = term if out is None else out + term
        return x.clone() if out is x else out

    @staticmethod
    def backward(ctx, g):
        x, low, high, mask = ctx.saved_tensors
        bits, signed = ctx.bits, ctx.signed
        coeff = _coefficients(mask).tolist()
        learn_range = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        learn_mask = ctx.needs_input_grad[3]
        dx = gstep = glow = None  # gstep: dL/dhigh through the steps; glow: the zero points' share of dL/dlow
        dmask = torch.zeros_like(mask) if learn_mask else None
        # mask entry i: <g, x_hat_{i+1} - x_hat_i>, only where a learning gate needs it
        wanted = set(range(len(mask)) if ctx.mask_grad is None else ctx.mask_grad) if learn_mask else set()
        for j, (b, c) in enumerate(zip(bits, coeff, strict=True)):
            if c == 0:
                continue
            args = _grid_args(x, low, high, b, signed)
            if args is None:
                dx = _accumulate(dx, g, c)
                continue
            # the entries beside this level come from the same pass over x and g
            lower = _grid_args(x, low, high, bits[j - 1], signed) if j - 1 in wanted else None
            upper = _grid_args(x, low, high, bits[j + 1], signed) if j in wanted else False
            shift = torch.zeros_like(args[0]) if signed else low / args[0]
            g_inside, d_scale, g_clamped, below, above = fused.level_grads(x, g, args, shift, high.dim() > 0,
                                                                           lower, upper)
            if below is not None:
                dmask[j - 1] = below
                wanted.discard(j - 1)
            if above is not None:
                dmask[j] = above
                wanted.discard(j)
            dx = _accumulate(dx, g_inside, c)
            if learn_range:
                gstep = _accumulate(gstep, d_scale.sum_to_size(high.shape), c / (2**b - 1))
                if not signed:
                    glow = _accumulate(glow, g_clamped.sum_to_size(low.shape), c)
        for i in sorted(wanted):
            lower, upper = (_grid_args(x, low, high, bits[k], signed) for k in (i, i + 1))
            dmask[i] = fused.residual_dot(x, g, lower, upper)
        dlow = dhigh = None
        if learn_range:
            dhigh = gstep if gstep is not None else torch.zeros_like(high)
            dlow = -dhigh.sum_to_size(low.shape)
            if glow is not None:
                dlow = dlow + glow
        return dx if dx is not None else torch.zeros_like(x), dlow, dhigh, dmask, None, None, None


def _accumulate(total: torch.Tensor | None, term: torch.Tensor, factor: float) -> torch.Tensor:
    term = term if factor == 1.0 else term * factor
    return term if total is None else total + term


def residual_fake_quantize(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, mask: torch.Tensor,
                           bits: tuple[int, ...], signed: bool,
                           mask_grad: tuple[int, ...] | None = None) -> torch.Tensor:
    """Nested residual fake quantization over widths `bits` (ascending) on [low, high], with cumulative gate
    products `mask`. A symmetric signed range passes low = -high. `mask_grad` names the mask entries whose
    gradient is wanted (the others get 0 and their levels are not computed in backward); None: all."""
    return _ResidualFakeQuant.apply(x, low, high, mask, tuple(bits), signed,
                                    None if mask_grad is None else tuple(mask_grad))


__all__ = ["grid", "grid_quantize", "quantize_codes", "residual_fake_quantize"]

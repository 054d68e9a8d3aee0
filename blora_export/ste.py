"""Straight-through primitives and THE quantize function shared by training, evaluation and export."""

from __future__ import annotations

import torch

from .widths import FLOAT_BITS, WIDTHS

__all__ = ["FLOAT_BITS", "WIDTHS", "clamp_range", "code_range", "fake_quantize", "quantize_codes", "round_ste",
           "step_size", "zero_point"]


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even in the forward pass, identity gradient in the backward pass."""
    return x + (torch.round(x) - x).detach()


def clamp_range(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Clamp with gradients flowing to the bounds where x is clipped (PACT-style)."""
    return torch.minimum(torch.maximum(x, low), high)


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """Integer code range: restricted symmetric when signed, [0, 2^b - 1] when unsigned (affine)."""
    if signed:
        top = 2 ** (bits - 1) - 1
        return -top, top
    return 0, 2**bits - 1


def step_size(range_width: torch.Tensor, bits: int) -> torch.Tensor:
    """s_b = (hi - lo) / (2^b - 1): R = 2*beta for a symmetric signed range, hi - lo for an affine one."""
    return range_width / (2**bits - 1)


def zero_point(low: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """The integer code of 0 on an affine grid over [low, high] (low <= 0): round(-low / s), within the codes."""
    return torch.clamp(torch.round(-low / scale), 0, 2**bits - 1)


def quantize_codes(x: torch.Tensor, scale: torch.Tensor, bits: int, signed: bool,
                   zero: torch.Tensor | float = 0.0) -> torch.Tensor:
    """q = clamp(round_half_even(x / s) + z, qmin, qmax); straight-through in the backward pass.

    Signed grids are symmetric (z = 0, restricted codes); unsigned grids are affine with zero point z: this is
    onnxruntime's QuantizeLinear, saturation included."""
    qmin, qmax = code_range(bits, signed)
    return torch.clamp(round_ste(x / scale) + zero, qmin, qmax)


def fake_quantize(x: torch.Tensor, scale: torch.Tensor, bits: int, signed: bool,
                  zero: torch.Tensor | float = 0.0) -> torch.Tensor:
    """x_hat = (q - z) * s; bits == 32 returns x unchanged."""
    if bits >= FLOAT_BITS:
        return x
    return (quantize_codes(x, scale, bits, signed, zero) - zero) * scale

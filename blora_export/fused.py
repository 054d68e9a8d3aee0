"""The quantizer's elementwise maths as whole-tensor functions, fused by torch.compile on CPU.

Fake quantization is a chain of cheap elementwise ops over every weight and activation; run op by op, each one
is a pass over memory, and on a CPU these passes cost more than the model's matrix products. torch.compile
(inductor) fuses each function below into one loop. It needs a C++ compiler: without one, on another device,
or after a compilation error the same functions run eagerly (same values; slower). The forward value is the
plain quantize function's, bit for bit, compiled or not (tests/test_fused.py).
Training compiles; `compress` and `eval --ckpt` run them eagerly (`eager()`): one pass does not repay compiling.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import warnings
from collections.abc import Callable, Iterator

import torch

log = logging.getLogger(__name__)

_enabled: bool | None = None  # None: decided on first use (a C++ compiler is on PATH)
_compiled: dict[str, Callable] = {}


def set_enabled(enabled: bool | None) -> None:
    """Compile the kernels (True), never (False) or when a C++ compiler is found (None)."""
    global _enabled
    _enabled = enabled


@contextlib.contextmanager
def eager() -> Iterator[None]:
    """Within the block the kernels run eagerly: one-off passes (an export, an evaluation) spend more on
    compiling than compiled kernels save them (a word table: 3 s compiled, 0.3 s eager)."""
    global _enabled
    saved = _enabled
    _enabled = False
    try:
        yield
    finally:
        _enabled = saved


def enabled() -> bool:
    global _enabled
    if _enabled is None:
        _enabled = any(shutil.which(c) for c in ("g++", "c++", "clang++"))
    return _enabled


def _run(fn: Callable, *args):
    """fn(*args), compiled when enabled and the tensors are on the CPU; eager after a compilation failure."""
    if not (enabled() and args[0].device.type == "cpu"):
        return fn(*args)
    # plain tensors: a Parameter or a tensor that requires grad would be compiled once per shape and flag
    args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    compiled = _compiled.get(fn.__name__)
    if compiled is None:
        compiled = _compiled[fn.__name__] = torch.compile(fn, dynamic=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return compiled(*args)
    except Exception as error:  # noqa: BLE001 - any compiler failure: fall back to the same maths, eagerly
        log.warning("torch.compile failed (%s); quantizer kernels run eagerly", str(error).splitlines()[0][:200])
        set_enabled(False)
        return fn(*args)


def _level(x, scale, zero, qmin, qmax):
    return (torch.clamp(torch.round(x / scale) + zero, qmin, qmax) - zero) * scale


def level(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: torch.Tensor,
          qmax: torch.Tensor) -> torch.Tensor:
    """(clamp(round(x / s) + z, qmin, qmax) - z) * s: ste.fake_quantize's value."""
    return _run(_level, x, scale, zero, qmin, qmax)


def _level_grads(x, g, scale, zero, qmin, qmax, clamped_shift, lower_scale, lower_zero, lower_qmin, lower_qmax,
                 upper_scale, upper_zero, upper_qmin, upper_qmax, per_row: bool, with_lower: bool, with_upper: bool,
                 upper_is_float: bool):
    u = x / scale
    codes = torch.round(u) + zero
    clamped = torch.clamp(codes, qmin, qmax)
    inside = clamped == codes
    g_inside = torch.where(inside, g, 0.0)
    # d x_hat / d s: (q - z) - x/s inside the range, the clamped code minus z minus `clamped_shift` outside
    d_scale = g * (clamped - zero - torch.where(inside, u, clamped_shift))
    g_clamped = g - g_inside
    if per_row:
        d_scale, g_clamped = d_scale.sum(dim=-1, keepdim=True), g_clamped.sum(dim=-1, keepdim=True)
    else:
        d_scale, g_clamped = d_scale.sum(), g_clamped.sum()
    value = (clamped - zero) * scale if with_lower or with_upper else None
    below = above = None
    if with_lower:
        below = (g * (value - _level(x, lower_scale, lower_zero, lower_qmin, lower_qmax))).sum()
    if with_upper:
        upper = x if upper_is_float else _level(x, upper_scale, upper_zero, upper_qmin, upper_qmax)
        above = (g * (upper - value)).sum()
    return g_inside, d_scale, g_clamped, below, above


def level_grads(x: torch.Tensor, g: torch.Tensor, at: tuple, clamped_shift: torch.Tensor, per_row: bool,
                lower: tuple | None = None, upper: tuple | None | bool = False) -> tuple:
    """Backward of the level at grid `at` = (scale, zero, qmin, qmax) for the upstream gradient g (round
    straight-through), in one pass: (g where the code is not clamped, dL/ds summed to the range's shape, g summed
    over clamped values likewise, <g, x_hat - x_hat_lower> when `lower` is a grid, <g, x_hat_upper - x_hat> when
    `upper` is a grid or None (the float level); False: not wanted). `clamped_shift` is 0 for a symmetric grid,
    lo / s for an affine one (its zero point follows the range); `per_row` sums per output channel (per-channel
    weight ranges) instead of overall."""
    with_lower, with_upper = lower is not None, upper is not False
    upper_is_float = upper is None
    lower = lower if with_lower else at
    upper = upper if with_upper and not upper_is_float else at
    return _run(_level_grads, x, g, *at, clamped_shift, *lower, *upper, per_row, with_lower, with_upper,
                upper_is_float)


def _residual_dot(x, g, scale_a, zero_a, qmin_a, qmax_a, scale_b, zero_b, qmin_b, qmax_b, b_is_float: bool):
    lower = _level(x, scale_a, zero_a, qmin_a, qmax_a)
    upper = x if b_is_float else _level(x, scale_b, zero_b, qmin_b, qmax_b)
    return (g * (upper - lower)).sum()


def residual_dot(x: torch.Tensor, g: torch.Tensor, lower: tuple, upper: tuple | None) -> torch.Tensor:
    """<g, x_hat_upper - x_hat_lower>: a gate's gradient, both levels recomputed in one pass. `lower` and
    `upper` are (scale, zero, qmin, qmax); upper None is the float level (x itself)."""
    b_is_float = upper is None
    upper = lower if upper is None else upper
    return _run(_residual_dot, x, g, *lower, *upper, b_is_float)
